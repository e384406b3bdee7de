import CLibUV

/// How a listener spread over several loops hands out new connections.
///
/// With a single loop both are one plain listener.
public enum ConnectionSpread: String, Sendable, CaseIterable, CustomStringConvertible {
    /// One listening socket per loop on the same address, with
    /// `SO_REUSEPORT`: the kernel picks a socket for each new connection by
    /// a hash of its addresses and ports. No work crosses loops, but a few
    /// long-lived connections can land unevenly. TCP only.
    case reusePort = "reuse-port"
    /// One loop accepts every connection and hands each to the next loop in
    /// turn (the descriptor travels through that loop's job queue): an even
    /// spread for one hop per connection, never per call. TCP and Unix sockets.
    case roundRobin = "round-robin"

    public var description: String { rawValue }
}

/// A listening address served by several loops: every accepted
/// ``Connection`` is made on one of them and stays there (see
/// ``ConnectionSpread``).
///
/// Made by ``EventLoopGroup/listen(on:spread:backlog:options:onAcceptError:onAccept:)``.
/// Sendable: ``close()`` and ``closed()`` work from any thread.
public final class GroupListener: Sendable {
    /// The bound address (with the chosen port when listening on port 0).
    public let address: SocketAddress
    /// How connections are spread (a single loop always has one plain listener).
    public let spread: ConnectionSpread
    /// The loops connections are made on.
    public let loops: [EventLoop]
    /// Each loop's share of the listening: the round-robin acceptor, or one acceptor per loop (reuse-port).
    private let parts: [LoopBound<RoundRobinAcceptor>]
    private let closing: Countdown

    private init(address: SocketAddress, spread: ConnectionSpread, loops: [EventLoop], parts: [LoopBound<RoundRobinAcceptor>],
                 closing: Countdown) {
        (self.address, self.spread, self.loops, self.parts, self.closing) = (address, spread, loops, parts, closing)
    }

    /// Stops accepting on every loop (from any thread; returns at once).
    /// Connections already accepted stay open. Idempotent.
    public func close() {
        for part in parts {
            let loop = part.loop
            if loop.inEventLoop { part.value.close() } else { loop.execute { part.value.close() } }
        }
    }

    /// Returns once no connection can arrive any more: every listening
    /// socket is closed and every connection accepted before was handed to
    /// its loop (or closed, when that loop was shut down).
    /// - Throws: `CancellationError` when the task is cancelled first.
    public func closed() async throws {
        let ended = await OneShot<Bool>().wait(orWhenCancelled: false) { waiter in
            closing.whenDone { waiter.resume(true) }
        }
        if !ended { throw CancellationError() }
    }

    /// Calls `body` (on some thread) once no connection can arrive any more;
    /// at once if that is already so.
    package func whenClosed(_ body: @escaping @Sendable () -> Void) {
        closing.whenDone(body)
    }

    // MARK: Making one

    /// Listens on `loop` alone, on its thread: an acceptor that opens each
    /// connection on the same loop.
    package static func listen(onCurrentLoop loop: EventLoop, address: SocketAddress, backlog: Int32,
                               options: ConnectionOptions, onAcceptError: @escaping @Sendable (UVError) -> Void,
                               onAccept: @escaping @Sendable (Connection) -> Void) throws(UVError) -> GroupListener {
        let closing = Countdown(1)
        let acceptor = try makeAcceptor(loops: [loop], address: address, backlog: backlog, options: options,
                                        closing: closing, onAcceptError: onAcceptError, onAccept: onAccept)
        return GroupListener(address: acceptor.address, spread: .roundRobin, loops: [loop],
                             parts: [LoopBound(acceptor, loop: loop)], closing: closing)
    }

    /// Listens on `address` for `loops` (from any thread or task).
    package static func listen(loops: [EventLoop], address: SocketAddress, spread: ConnectionSpread, backlog: Int32,
                               options: ConnectionOptions, onAcceptError: @escaping @Sendable (UVError) -> Void,
                               onAccept: @escaping @Sendable (Connection) -> Void) async throws(UVError) -> GroupListener {
        precondition(!loops.isEmpty, "GroupListener: no loops to listen for")
        if loops.count == 1 {
            let loop = loops[0]
            let made = await loop.submitIfRunning { () -> Result<GroupListener, UVError> in
                Result { () throws(UVError) in
                    try listen(onCurrentLoop: loop, address: address, backlog: backlog, options: options,
                               onAcceptError: onAcceptError, onAccept: onAccept)
                }
            }
            return try (made ?? .failure(.loopShutDown(operation: "listen", target: "\(address)"))).get()
        }
        switch spread {
        case .reusePort:
            return try await listenReusingPort(loops: loops, address: address, backlog: backlog, options: options,
                                               onAcceptError: onAcceptError, onAccept: onAccept)
        case .roundRobin:
            return try await listenRoundRobin(loops: loops, address: address, backlog: backlog, options: options,
                                              onAcceptError: onAcceptError, onAccept: onAccept)
        }
    }

    /// A `SO_REUSEPORT` listener on each loop; the first one picks the port.
    private static func listenReusingPort(loops: [EventLoop], address: SocketAddress, backlog: Int32,
                                          options: ConnectionOptions,
                                          onAcceptError: @escaping @Sendable (UVError) -> Void,
                                          onAccept: @escaping @Sendable (Connection) -> Void) async throws(UVError) -> GroupListener {
        if address.isUnix {
            throw UVError(code: UV_EINVAL.rawValue, operation: "listen with SO_REUSEPORT",
                          target: "\(address) (Unix socket servers spread connections round robin only)")
        }
        let closing = Countdown(loops.count)
        var parts: [LoopBound<RoundRobinAcceptor>] = []
        var bound = address
        for loop in loops {
            let target = bound
            // This library's acceptor, not libuv's listener: it reports connections refused for lack of descriptors.
            let made = await loop.submitIfRunning { () -> Result<LoopBound<RoundRobinAcceptor>, UVError> in
                Result { () throws(UVError) in
                    LoopBound(try makeAcceptor(loops: [loop], address: target, backlog: backlog, options: options,
                                               closing: closing, reusePort: true, onAcceptError: onAcceptError,
                                               onAccept: onAccept), loop: loop)
                }
            }
            switch made ?? .failure(.loopShutDown(operation: "listen", target: "\(target)")) {
            case .success(let acceptor):
                parts.append(acceptor)
                if parts.count == 1 { bound = await loop.submitIfRunning { acceptor.value.address } ?? bound }
            case .failure(let error):
                for part in parts { _ = await part.loop.submitIfRunning { part.value.close() } }
                throw error
            }
        }
        return GroupListener(address: bound, spread: .reusePort, loops: loops, parts: parts, closing: closing)
    }

    /// One acceptor on the first loop, handing descriptors to every loop in turn.
    private static func listenRoundRobin(loops: [EventLoop], address: SocketAddress, backlog: Int32,
                                         options: ConnectionOptions,
                                         onAcceptError: @escaping @Sendable (UVError) -> Void,
                                         onAccept: @escaping @Sendable (Connection) -> Void) async throws(UVError) -> GroupListener {
        let closing = Countdown(loops.count)
        let acceptorLoop = loops[0]
        let made = await acceptorLoop.submitIfRunning { () -> Result<LoopBound<RoundRobinAcceptor>, UVError> in
            Result { () throws(UVError) in
                LoopBound(try makeAcceptor(loops: loops, address: address, backlog: backlog, options: options,
                                           closing: closing, onAcceptError: onAcceptError, onAccept: onAccept),
                          loop: acceptorLoop)
            }
        }
        let acceptor = try (made ?? .failure(UVError.loopShutDown(operation: "listen", target: "\(address)"))).get()
        let bound = await acceptorLoop.submitIfRunning { acceptor.value.address } ?? address
        return GroupListener(address: bound, spread: .roundRobin, loops: loops, parts: [acceptor],
                             closing: closing)
    }

    /// An acceptor on `loops[0]` (called on its thread) that opens each
    /// accepted descriptor as a connection of the next loop in turn.
    private static func makeAcceptor(loops: [EventLoop], address: SocketAddress, backlog: Int32,
                                     options: ConnectionOptions, closing: Countdown, reusePort: Bool = false,
                                     onAcceptError: @escaping @Sendable (UVError) -> Void,
                                     onAccept: @escaping @Sendable (Connection) -> Void) throws(UVError) -> RoundRobinAcceptor {
        let acceptorLoop = loops[0]
        var turn = 0
        /// Opens a handed-over descriptor as a connection of `loop` and delivers it.
        let adopt: @Sendable (Int32, EventLoop, SocketAddress) -> Void = { fd, loop, listening in
            do throws(UVError) {
                let connection = try Connection.adopting(descriptor: fd, on: loop, unixDomain: listening.isUnix,
                                                         options: options, label: "\(listening) (accepted)")
                Listener.deliver(connection, acceptedOn: listening, to: onAccept)
            } catch {
                onAcceptError(error)
            }
        }
        let acceptor = try RoundRobinAcceptor(loop: acceptorLoop, address: address, backlog: backlog,
                                              reusePort: reusePort) { fd, listening in
            let target = loops[turn]
            turn = turn + 1 == loops.count ? 0 : turn + 1
            if target === acceptorLoop { return adopt(fd, target, listening) }
            let socket = HandedOffSocket(fd)
            // Refused (the loop is closed): the job is dropped and `socket` closes the descriptor.
            target.execute {
                // A loop already closing its handles takes no new connection.
                guard !target.isShuttingDown, let fd = socket.take() else { return }
                adopt(fd, target, listening)
            }
        }
        acceptor.onAcceptError = onAcceptError
        acceptor.onClose = {
            // Each loop's marker runs after every descriptor handed to it before
            // (one queue, in order): then no connection can arrive there any more.
            for loop in loops {
                if loop === acceptorLoop || !loop.execute({ closing.countDown() }) { closing.countDown() }
            }
        }
        return acceptor
    }
}

extension EventLoopGroup {
    /// Listens on `address` for every loop of the group: each accepted
    /// connection is made on one loop (chosen as `spread` says) and handed to
    /// `onAccept` on that loop's thread, where it stays. Callable from any
    /// thread or task.
    /// - Parameters:
    ///   - address: TCP (port 0 picks a free one) or a Unix socket path.
    ///   - spread: how connections are spread over the loops; round robin by
    ///     default (even, and the only choice for Unix sockets).
    ///   - backlog: the kernel's queue of not-yet-accepted connections (per
    ///     socket: with reuse-port, each loop has one).
    ///   - options: given to every accepted connection.
    ///   - onAcceptError: called (on a loop) when accepting or opening a
    ///     connection failed; listening goes on.
    ///   - onAccept: called on the connection's loop with each new connection;
    ///     set its callbacks here.
    /// - Throws: ``UVError`` naming the address when binding fails on any loop
    ///   (the listeners already made are closed again).
    public func listen(on address: SocketAddress, spread: ConnectionSpread = .roundRobin, backlog: Int32 = 511,
                       options: ConnectionOptions = ConnectionOptions(),
                       onAcceptError: @escaping @Sendable (UVError) -> Void = { _ in },
                       onAccept: @escaping @Sendable (Connection) -> Void) async throws(UVError) -> GroupListener {
        try await GroupListener.listen(loops: loops, address: address, spread: spread, backlog: backlog,
                                       options: options, onAcceptError: onAcceptError, onAccept: onAccept)
    }
}
