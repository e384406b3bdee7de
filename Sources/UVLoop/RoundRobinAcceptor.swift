import CLibUV
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `close(2)`, callable where a `close()` method would shadow it.
@discardableResult
func systemClose(_ fd: Int32) -> Int32 { close(fd) }

/// An accepted socket on its way to the loop that will own it.
///
/// Owns the descriptor until ``take()``: if the job carrying it is dropped
/// (its loop closed) or never takes it, deinit closes it, so a descriptor in
/// transit is never leaked.
final class HandedOffSocket: Sendable {
    let descriptor: Int32
    private let taken = Atomic<Bool>(false)

    init(_ descriptor: Int32) { self.descriptor = descriptor }

    /// The descriptor, now the caller's to close; nil if already taken.
    func take() -> Int32? {
        taken.exchange(true, ordering: .acquiringAndReleasing) ? nil : descriptor
    }

    deinit {
        if !taken.load(ordering: .acquiring) { systemClose(descriptor) }
    }
}

/// The accepting half of a round-robin ``GroupListener``: one listening
/// socket (TCP or Unix), watched with a `uv_poll_t` on one loop, whose
/// accepted descriptors are handed to the group's loops in turn.
///
/// libuv's own listener accepts into a handle of its loop; to hand a
/// connection to another loop the descriptor itself must travel, so this
/// accepts with `accept4` and gives each descriptor to the next loop, where
/// ``Connection`` opens it with `uv_tcp_open` / `uv_pipe_open`.
final class RoundRobinAcceptor: HandleOwner {
    /// The listening socket's descriptor; closed after the poll handle.
    private let descriptor: Int32
    let address: SocketAddress
    /// Receives each accepted descriptor (on this loop) and the listening address.
    private var handOff: ((Int32, SocketAddress) -> Void)?
    var onAcceptError: ((UVError) -> Void)?
    var onClose: (() -> Void)?
    /// A descriptor held in reserve (on /dev/null): when the process runs out
    /// of descriptors, closing it frees one to accept and close each waiting
    /// connection, so their clients learn at once instead of waiting in the
    /// kernel's queue (libuv's own listener does the same, silently).
    private var reserve: Int32
    /// Set while accepting is paused after running out of descriptors with no reserve.
    private var retryTimer: LoopTimer?
    private static let retryDelay = Duration.milliseconds(100)
    /// At most this many accepts per poll callback, so one burst cannot hold the loop.
    private static let acceptsPerWakeup = 256

    init(loop: EventLoop, address: SocketAddress, backlog: Int32, handOff: @escaping (Int32, SocketAddress) -> Void) throws(UVError) {
        let target = "listener \(address)"
        var fd: Int32 = -1
        switch address {
        case .unix(let path):
            var storage = sockaddr_un()
            var length = socklen_t(0)
            try UVError.check(uvrpc_unix_address(path, &storage, &length), "bind", target)
            fd = withUnsafePointer(to: &storage) { p in
                // Safe: a sockaddr_un begins with the sockaddr fields.
                uvrpc_listen_socket(UnsafePointer(OpaquePointer(p)), length, backlog)
            }
        case .ipv4, .ipv6:
            fd = try address.withSockAddr { addr in
                let length = socklen_t(addr.pointee.sa_family == sa_family_t(AF_INET6)
                                       ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
                return uvrpc_listen_socket(addr, length, backlog)
            }
        }
        if fd < 0 { throw UVError(code: fd, operation: "listen", target: target) } // -errno is libuv's code on Unix
        self.descriptor = fd
        self.reserve = open("/dev/null", O_RDONLY | O_CLOEXEC)
        self.address = address.isUnix ? address : (Self.boundAddress(of: fd) ?? address)
        self.handOff = handOff
        super.init(loop: loop, type: UV_POLL)
        let poll = UnsafeMutablePointer<uv_poll_t>(OpaquePointer(handle))
        let rc = uv_poll_init(loop.uvLoop, poll, fd)
        if rc < 0 {
            systemClose(fd)
            if reserve >= 0 { systemClose(reserve) }
            if case .unix(let path) = address { unlink(path) }
            throw UVError(code: rc, operation: "uv_poll_init", target: target)
        }
        adoptHandle()
        startPolling()
    }

    private static func boundAddress(of fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { p in
            // Safe: getsockname writes at most `length` bytes of sockaddr into the storage.
            getsockname(fd, UnsafeMutablePointer(OpaquePointer(p)), &length)
        }
        guard rc == 0 else { return nil }
        return withUnsafePointer(to: &storage) { SocketAddress($0) }
    }

    private func startPolling() {
        uv_poll_start(UnsafeMutablePointer<uv_poll_t>(OpaquePointer(handle)), Int32(UV_READABLE.rawValue)) { poll, status, _ in
            // Safe: the handle's data is this acceptor until its close callback.
            let owner = HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(poll))).takeUnretainedValue()
            unsafeDowncast(owner, to: RoundRobinAcceptor.self).acceptReady(status: status)
        }
    }

    private func acceptReady(status: Int32) {
        guard !isHandleClosing else { return }
        if status < 0 {
            onAcceptError?(UVError(code: status, operation: "poll", target: "listener \(address)"))
            return
        }
        if reserve < 0 { reserve = open("/dev/null", O_RDONLY | O_CLOEXEC) } // taken back if it could not be before
        for _ in 0..<Self.acceptsPerWakeup {
            let fd = uvrpc_accept(descriptor)
            if fd == -EMFILE || fd == -ENFILE, refuseWaitingConnections(fd) { return }
            if fd >= 0 {
                handOff?(fd, address)
                if isHandleClosing { return } // the hand-off closed the listener
                continue
            }
            switch -fd {
            case EAGAIN, EWOULDBLOCK:
                return
            case EINTR, ECONNABORTED, EPROTO:
                continue // that connection is gone; the next may be fine
            default:
                // Out of descriptors or memory: the pending connection stays in
                // the kernel's queue and the poll would fire again at once, so
                // pause accepting for a moment instead of spinning.
                onAcceptError?(UVError(code: fd, operation: "accept", target: "listener \(address)"))
                pauseAccepting()
                return
            }
        }
    }

    /// Out of descriptors (`error`): spends the reserve descriptor to accept
    /// and close every waiting connection, reporting each, then takes the
    /// reserve back. False when there is no reserve (the caller goes on as
    /// for any other error).
    private func refuseWaitingConnections(_ error: Int32) -> Bool {
        guard reserve >= 0 else { return false }
        systemClose(reserve)
        reserve = -1
        for _ in 0..<Self.acceptsPerWakeup where !isHandleClosing {
            let fd = uvrpc_accept(descriptor)
            guard fd >= 0 else { break } // EAGAIN: none left (or another error: retried at the next wakeup)
            systemClose(fd)
            onAcceptError?(UVError(code: error, operation: "accept", target: "listener \(address) (connection refused: out of descriptors)"))
        }
        reserve = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if reserve < 0 && !isHandleClosing { pauseAccepting() } // still out: wait instead of spinning
        return true
    }

    private func pauseAccepting() {
        uv_poll_stop(UnsafeMutablePointer<uv_poll_t>(OpaquePointer(handle)))
        retryTimer = loop.scheduleTimer(after: Self.retryDelay) { [weak self] in
            guard let self, !self.isHandleClosing else { return }
            self.retryTimer = nil
            self.startPolling()
        }
    }

    /// Stops accepting and closes the listening socket (idempotent).
    func close() {
        loop.preconditionInEventLoop("RoundRobinAcceptor.close()")
        closeHandle()
    }

    override func handleDidClose() {
        // libuv is done with the descriptor once the poll handle is closed.
        systemClose(descriptor)
        if reserve >= 0 { systemClose(reserve) }
        reserve = -1
        if case .unix(let path) = address { unlink(path) }
        retryTimer?.cancel()
        retryTimer = nil
        handOff = nil
        onAcceptError = nil
        let onClose = self.onClose
        self.onClose = nil
        onClose?()
    }
}
