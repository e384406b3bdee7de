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

/// The accepting half of a ``GroupListener``: one listening socket (TCP or
/// Unix), watched with a `uv_poll_t` on one loop, whose accepted
/// descriptors are handed to the group's loops in turn (round robin), or
/// kept on its own loop (one such socket per loop, with `SO_REUSEPORT`).
///
/// libuv's own listener accepts into a handle of its loop; to hand a
/// connection to another loop the descriptor itself must travel, so this
/// accepts with `accept4` and gives each descriptor to the next loop, where
/// ``Connection`` opens it with `uv_tcp_open` / `uv_pipe_open`. It also
/// reports every connection it refuses for lack of descriptors (libuv's
/// listener refuses them silently), whichever way connections are spread.
final class RoundRobinAcceptor: HandleOwner {
    /// The listening socket's descriptor; closed after the poll handle.
    private let descriptor: Int32
    let address: SocketAddress
    /// Receives each accepted descriptor (on this loop) and the listening address.
    private var handOff: ((Int32, SocketAddress) -> Void)?
    var onAcceptError: ((UVError) -> Void)?
    var onClose: (() -> Void)?
    /// Set while accepting is paused after running out of descriptors with no reserve.
    private var retryTimer: LoopTimer?
    /// True once connections waiting for a descriptor were reported (once
    /// until one is accepted again, not at every retry).
    private var reportedWaiting = false
    private static let retryDelay = Duration.milliseconds(100)
    /// At most this many accepts per poll callback, so one burst cannot hold the loop.
    private static let acceptsPerWakeup = 256

    init(loop: EventLoop, address: SocketAddress, backlog: Int32, reusePort: Bool = false,
         handOff: @escaping (Int32, SocketAddress) -> Void) throws(UVError) {
        let target = "listener \(address)"
        var fd: Int32 = -1
        switch address {
        case .unix(let path):
            var storage = sockaddr_un()
            var length = socklen_t(0)
            try UVError.check(uvrpc_unix_address(path, &storage, &length), "bind", target)
            fd = withUnsafePointer(to: &storage) { p in
                // Safe: a sockaddr_un begins with the sockaddr fields.
                uvrpc_listen_socket(UnsafePointer(OpaquePointer(p)), length, backlog, 0)
            }
        case .ipv4, .ipv6, .name:
            fd = try address.withSockAddr { addr in
                let length = socklen_t(addr.pointee.sa_family == sa_family_t(AF_INET6)
                                       ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
                return uvrpc_listen_socket(addr, length, backlog, reusePort ? 1 : 0)
            }
        }
        if fd < 0 { throw UVError(code: fd, operation: "listen", target: target) } // -errno is libuv's code on Unix
        self.descriptor = fd
        self.address = address.isUnix ? address : (Self.boundAddress(of: fd) ?? address)
        self.handOff = handOff
        super.init(loop: loop, type: UV_POLL)
        let poll = UnsafeMutablePointer<uv_poll_t>(OpaquePointer(handle))
        let rc = uv_poll_init(loop.uvLoop, poll, fd)
        if rc < 0 {
            systemClose(fd)
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
        for _ in 0..<Self.acceptsPerWakeup {
            // Out of descriptors, the process's reserve refuses the waiting connections (see DescriptorReserve).
            let (fd, refused) = DescriptorReserve.shared.accept(on: descriptor, refusingAtMost: Self.acceptsPerWakeup)
            for _ in 0..<refused where !isHandleClosing {
                onAcceptError?(UVError(code: UV_EMFILE.rawValue, operation: "accept",
                                       target: "listener \(address) (connection refused: out of descriptors)"))
            }
            if fd >= 0 {
                reportedWaiting = false
                handOff?(fd, address)
                if isHandleClosing { return } // the hand-off closed the listener
                continue
            }
            switch -fd {
            case EAGAIN, EWOULDBLOCK:
                return
            case EINTR, ECONNABORTED, EPROTO:
                continue // that connection is gone; the next may be fine
            case EMFILE where refused == 0, ENFILE where refused == 0:
                // Out of descriptors with no reserve to refuse with: the
                // connections wait in the kernel's queue. Said once, then
                // retried after a pause (the poll would fire again at once).
                if !reportedWaiting {
                    reportedWaiting = true
                    onAcceptError?(UVError(code: fd, operation: "accept",
                                           target: "listener \(address) (connections wait: no descriptor to refuse them with)"))
                }
                pauseAccepting()
                return
            default:
                // Out of memory, or more waiting than one turn refuses: pause a
                // moment instead of spinning on a poll that fires at once.
                if refused == 0 { onAcceptError?(UVError(code: fd, operation: "accept", target: "listener \(address)")) }
                pauseAccepting()
                return
            }
        }
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
