import Logging
import ServiceLifecycle
import UVLoop

/// Listens for connections and speaks efro.rpc on each: every accepted
/// connection becomes an ``RPCEndpoint``. One misbehaving connection closes
/// alone; the server keeps serving the others.
///
/// A server runs on one loop or on every loop of an `EventLoopGroup`: each
/// endpoint lives on one loop for its whole life, and its handlers run there
/// (`ConnectionSpread` says how connections are spread over the loops).
///
/// Two ways to use it:
/// - callback API: `RPCServer(loop:address:...) { endpoint in ... }` on the
///   loop thread, or `try await RPCServer.bind(on: group, ..., onEndpoint:)`
///   for a group; `onEndpoint` runs on each endpoint's loop and sets its
///   handlers (``RPCEndpoint/onMessage``) before any byte is read.
/// - async API: `try await RPCServer.bind(on: loop or group, ...) { request in ... }`
///   with an async message handler (given an ``RPCAsyncRequest``) for every endpoint.
///
/// Either way an `admit` hook may look at each new connection's address
/// first, refuse it (it is closed before any byte is read or written) or
/// attach a per-connection value that every handler call on it sees
/// (``RPCEndpoint/userValue``).
///
/// Either way ``endpoints`` yields every new endpoint, ``openEndpoints``
/// lists the open ones, ``close(closingEndpoints:)`` and ``shutdown()`` end
/// it on every loop, and ``run()`` waits until it is over; all of these work
/// from any thread.
///
/// A listening server keeps itself alive until ``close(closingEndpoints:)``,
/// ``shutdown()`` or loop shutdown, so dropping the reference does not stop it.
public final class RPCServer: Sendable {
    /// The loops its endpoints run on (one for a server made on a loop).
    public var loops: [EventLoop] { listener.loops }
    /// The bound address (with the chosen port when listening on port 0).
    public var address: SocketAddress { listener.address }
    /// How connections are spread over ``loops``.
    public var spread: ConnectionSpread { listener.spread }
    /// Settings of every endpoint it makes.
    public var configuration: RPCEndpoint.Configuration { core.configuration }
    /// New endpoints (their `Sendable` handles), in accept order, for
    /// `for await endpoint in server.endpoints`.
    /// Endpoints nobody consumed are kept up to the newest 1024 (older ones
    /// keep being served; they are only not delivered here; a closed one
    /// kept here has released its buffers). Ends once the server stopped accepting.
    public let endpoints: AsyncStream<RPCAsyncEndpoint>

    /// What the `admit` hook decides for a new connection.
    public enum Admission: Sendable {
        /// Serve the connection; `userValue` becomes its endpoint's ``RPCEndpoint/userValue``.
        case accept(userValue: (any Sendable)? = nil)
        /// Close it at once, before any byte is read or written.
        case refuse
    }

    private let core: ServerCore
    private let listener: GroupListener

    private init(core: ServerCore, listener: GroupListener, endpoints: AsyncStream<RPCAsyncEndpoint>) {
        self.core = core
        self.listener = listener
        self.endpoints = endpoints
        listener.whenClosed { core.listenerDidClose() }
    }

    /// The endpoints that are open now (their `Sendable` handles), on every
    /// loop, in no particular order. Callable from any thread.
    public var openEndpoints: [RPCAsyncEndpoint] { core.openEndpoints }

    /// Bytes its endpoints hold now against ``RPCEndpoint/Configuration/maximumServerPayloadMemory``
    /// (for tests and the attack tool). Callable from any thread.
    package var payloadMemoryInUse: Int { core.payloadBudget.usedBytes }

    /// Starts listening on `address` (TCP or `unix:` path) on `loop`; must be
    /// called on the loop thread (from another thread: `loop.submitAndWait { try RPCServer(loop: ...) }`).
    /// - Parameters:
    ///   - loop: the loop every endpoint runs on.
    ///   - address: TCP (port 0 picks a free one) or a Unix socket path.
    ///   - configuration: settings of every endpoint.
    ///   - backlog: the kernel's queue of connections not yet accepted.
    ///   - logger: where the server and its endpoints log; nothing by default.
    ///   - admit: called on the loop with each new connection's peer address,
    ///     before anything else: refuse it, or accept it with a user value.
    ///     Every connection is accepted without a value when it is nil.
    ///   - onEndpoint: called on the loop with each new endpoint
    ///     (its handshake already sent); set its handlers here.
    /// - Throws: `UVError` naming the address when binding fails.
    public convenience init(loop: EventLoop, address: SocketAddress,
                            configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                            backlog: Int32 = 511, logger: Logger? = nil,
                            admit: ((SocketAddress?) -> Admission)? = nil,
                            onEndpoint: @escaping (RPCEndpoint) -> Void) throws(UVError) {
        loop.preconditionInEventLoop("RPCServer.init")
        // Safe to send: every connection of this listener is accepted on `loop`, the
        // thread these closures were made on, so they are only ever called there.
        let handler = UncheckedSendable(onEndpoint)
        var sendableAdmit: (@Sendable (SocketAddress?) -> Admission)?
        if let admit {
            let admitter = UncheckedSendable(admit)
            sendableAdmit = { address in admitter.value(address) }
        }
        let (core, endpoints) = ServerCore.make(configuration: configuration, logger: logger,
                                                admit: sendableAdmit) { handler.value($0) }
        let listener = try GroupListener.listen(onCurrentLoop: loop, address: address, backlog: backlog,
                                                options: configuration.connectionOptions,
                                                onAcceptError: core.acceptFailed, onAccept: core.accept)
        self.init(core: core, listener: listener, endpoints: endpoints)
    }

    /// Starts listening on `address` for every loop of `group`, from any
    /// thread or task; each connection becomes an endpoint on one loop
    /// (spread as `spread` says) and stays there.
    /// - Parameters:
    ///   - group: the loops the endpoints run on.
    ///   - address: TCP (port 0 picks a free one) or a Unix socket path.
    ///   - spread: how connections are spread over the loops.
    ///   - configuration: settings of every endpoint.
    ///   - backlog: the kernel's queue of connections not yet accepted.
    ///   - logger: where the server and its endpoints log; nothing by default.
    ///   - handler: answers every incoming message of every endpoint (in
    ///     worker tasks on the endpoint's loop), if given.
    ///   - onEndpoint: called on each new endpoint's loop (its handshake
    ///     already sent), before any byte is read: set callback handlers here.
    ///   - admit: called on the connection's loop with each new connection's
    ///     peer address, before anything else: refuse it, or accept it with a
    ///     user value. Every connection is accepted without a value when nil.
    /// - Throws: `UVError` naming the address when binding fails.
    public static func bind(on group: EventLoopGroup, address: SocketAddress,
                            spread: ConnectionSpread = .roundRobin,
                            configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                            backlog: Int32 = 511, logger: Logger? = nil,
                            handler: (@Sendable (RPCAsyncRequest) async throws -> [UInt8])? = nil,
                            onEndpoint: (@Sendable (RPCEndpoint) -> Void)? = nil,
                            admit: (@Sendable (SocketAddress?) -> Admission)? = nil) async throws(UVError) -> RPCServer {
        try await bind(loops: group.loops, address: address, spread: spread, configuration: configuration,
                       backlog: backlog, logger: logger, handler: handler, onEndpoint: onEndpoint, admit: admit)
    }

    /// Starts listening on `address` on `loop`, from any thread or task;
    /// see ``bind(on:address:spread:configuration:backlog:logger:handler:onEndpoint:admit:)-(EventLoopGroup,_,_,_,_,_,_,_,_)``.
    public static func bind(on loop: EventLoop, address: SocketAddress,
                            configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                            backlog: Int32 = 511, logger: Logger? = nil,
                            handler: (@Sendable (RPCAsyncRequest) async throws -> [UInt8])? = nil,
                            onEndpoint: (@Sendable (RPCEndpoint) -> Void)? = nil,
                            admit: (@Sendable (SocketAddress?) -> Admission)? = nil) async throws(UVError) -> RPCServer {
        try await bind(loops: [loop], address: address, spread: .roundRobin, configuration: configuration,
                       backlog: backlog, logger: logger, handler: handler, onEndpoint: onEndpoint, admit: admit)
    }

    private static func bind(loops: [EventLoop], address: SocketAddress, spread: ConnectionSpread,
                             configuration: RPCEndpoint.Configuration, backlog: Int32, logger: Logger?,
                             handler: (@Sendable (RPCAsyncRequest) async throws -> [UInt8])?,
                             onEndpoint: (@Sendable (RPCEndpoint) -> Void)?,
                             admit: (@Sendable (SocketAddress?) -> Admission)?) async throws(UVError) -> RPCServer {
        let (core, endpoints) = ServerCore.make(configuration: configuration, logger: logger, admit: admit) { endpoint in
            onEndpoint?(endpoint)
            if let handler { endpoint.installAsyncHandler(handler) }
        }
        let listener = try await GroupListener.listen(loops: loops, address: address, spread: spread, backlog: backlog,
                                                      options: configuration.connectionOptions,
                                                      onAcceptError: core.acceptFailed, onAccept: core.accept)
        return RPCServer(core: core, listener: listener, endpoints: endpoints)
    }

    /// Stops accepting on every loop (connections accepted but not yet
    /// handed to their loop are closed too); with `closingEndpoints`, closes
    /// every open endpoint as well (each on its loop). Callable from any
    /// thread; returns at once (``run()`` waits for the end).
    public func close(closingEndpoints: Bool = true) {
        if closingEndpoints {
            stopAccepting { $0.close(reason: .local) }
        } else {
            stopAccepting(then: nil)
        }
    }

    /// Stops accepting on every loop and closes the listener, then runs
    /// `action` on each endpoint open now, on the endpoint's own loop.
    private func stopAccepting(then action: (@Sendable (RPCEndpoint) -> Void)?) {
        let open = core.stopAdmitting()
        listener.close()
        guard let action else { return }
        for handle in open {
            let loop = handle.loop
            if loop.inEventLoop { action(handle.endpoint) } else { loop.execute { action(handle.endpoint) } }
        }
    }

    /// Waits until the server is over: it stopped accepting on every loop
    /// and every one of its endpoints closed. Callable from any thread or task.
    ///
    /// As a `Service` under a `ServiceGroup` (swift-service-lifecycle), a
    /// graceful shutdown of the group (SIGTERM, for example) starts
    /// ``shutdown(gracePeriod:)`` with the configuration's
    /// ``RPCEndpoint/Configuration/shutdownGracePeriod``, and this returns
    /// when the drain is over.
    public func run() async {
        let gracePeriod = configuration.shutdownGracePeriod
        await withGracefulShutdownHandler {
            await waitUntilFinished()
        } onGracefulShutdown: {
            self.beginShutdown(gracePeriod: gracePeriod)
        }
    }

    private func waitUntilFinished() async {
        await withCheckedContinuation { continuation in core.whenFinished { continuation.resume() } }
    }

    /// Closes the server and every endpoint (see ``close(closingEndpoints:)``;
    /// each endpoint fails its in-flight calls and flushes what it owes),
    /// and returns when everything is closed. Callable from any thread or task.
    public func shutdown() async {
        close(closingEndpoints: true)
        await waitUntilFinished()
    }

    /// Shuts down gracefully: stops accepting at once (on every loop), lets
    /// every endpoint finish what is in flight (answer the messages it
    /// received, get the responses to its own calls) and close as soon as it
    /// has nothing in flight; at `gracePeriod` closes the rest, failing what
    /// is left with ``RPCCloseReason/drainTimedOut(_:)``. Returns when
    /// everything is closed. Callable from any thread or task. A message
    /// that arrives during the drain is handled like any other (an efro.rpc
    /// peer cannot be told to stop sending); see
    /// ``RPCEndpoint/close(gracePeriod:)``.
    public func shutdown(gracePeriod: Duration) async {
        beginShutdown(gracePeriod: gracePeriod)
        await waitUntilFinished()
    }

    /// Stops accepting and starts draining every endpoint; returns at once.
    private func beginShutdown(gracePeriod: Duration) {
        stopAccepting { $0.beginDrain(gracePeriod: gracePeriod) }
    }
}

/// A server runs as a `Service` (swift-service-lifecycle): see ``RPCServer/run()``.
extension RPCServer: Service {}

/// What a server's listener and endpoints share: the open endpoints and the
/// end of the server. Its methods are called on the endpoints' loops (accept,
/// close) and from any thread (listing, closing, waiting).
private final class ServerCore: Sendable {
    let configuration: RPCEndpoint.Configuration
    let logger: Logger
    /// The handshake every endpoint writes, made once.
    private let handshake: [UInt8]
    /// The memory budget all its endpoints share (``RPCEndpoint/Configuration/maximumServerPayloadMemory``).
    let payloadBudget: MemoryBudget
    /// New TLS connections per peer address (``RPCEndpoint/Configuration/tlsHandshakesPerPeer``), when serving TLS.
    private let handshakeLimiter: PeerRateLimiter?
    private let onEndpoint: @Sendable (RPCEndpoint) -> Void
    private let admit: (@Sendable (SocketAddress?) -> RPCServer.Admission)?
    private let continuation: AsyncStream<RPCAsyncEndpoint>.Continuation

    private struct State {
        var open: [ObjectIdentifier: RPCAsyncEndpoint] = [:]
        /// Set by close: connections still arriving are turned away.
        var admitting = true
        var listenerClosed = false
        var finishWaiters: [@Sendable () -> Void] = []
    }
    private let state = LockedValue(State())
    /// Connections refused for lack of descriptors since the last accepted one.
    private let refusedForDescriptors = LockedValue(0)

    private init(configuration: RPCEndpoint.Configuration, logger: Logger,
                 continuation: AsyncStream<RPCAsyncEndpoint>.Continuation,
                 admit: (@Sendable (SocketAddress?) -> RPCServer.Admission)?,
                 onEndpoint: @escaping @Sendable (RPCEndpoint) -> Void) {
        self.admit = admit
        self.configuration = configuration
        self.logger = logger
        self.handshake = configuration.handshakeBytes
        self.payloadBudget = MemoryBudget(limit: configuration.maximumServerPayloadMemory)
        self.handshakeLimiter = configuration.connectionOptions.tls == nil ? nil
            : configuration.tlsHandshakesPerPeer.map(PeerRateLimiter.init)
        self.continuation = continuation
        self.onEndpoint = onEndpoint
    }

    static func make(configuration: RPCEndpoint.Configuration, logger: Logger?,
                     admit: (@Sendable (SocketAddress?) -> RPCServer.Admission)?,
                     onEndpoint: @escaping @Sendable (RPCEndpoint) -> Void) -> (ServerCore, AsyncStream<RPCAsyncEndpoint>) {
        let (endpoints, continuation) = AsyncStream.makeStream(of: RPCAsyncEndpoint.self, bufferingPolicy: .bufferingNewest(1024))
        let logger = logger ?? Logger(label: "uvrpc", factory: { _ in SwiftLogNoOpLogHandler() })
        return (ServerCore(configuration: configuration, logger: logger, continuation: continuation,
                           admit: admit, onEndpoint: onEndpoint), endpoints)
    }

    var openEndpoints: [RPCAsyncEndpoint] { state.withLock { Array($0.open.values) } }

    /// Makes the endpoint of a new connection (on the connection's loop).
    func accept(_ connection: Connection) {
        LoopMetrics.of(connection.loop).connectionsAccepted &+= 1
        acceptRecovered()
        if let handshakeLimiter, let peer = connection.remoteAddress?.host, !handshakeLimiter.allow(peer) {
            LoopMetrics.of(connection.loop).connectionsRefused[RefusalKind.tlsHandshakeRate.rawValue, default: 0] &+= 1
            logger.info("connection refused: the peer opens TLS connections faster than its limit",
                        metadata: ["rpc.peer": "\(connection.label)"])
            return connection.abort() // before its handshake costs anything
        }
        var userValue: (any Sendable)?
        if let admit {
            switch admit(connection.remoteAddress) {
            case .accept(let value):
                userValue = value
            case .refuse:
                logger.debug("connection refused by the admit hook", metadata: ["rpc.peer": "\(connection.label)"])
                return connection.close()
            }
        }
        let endpoint = RPCEndpoint(connection: connection, configuration: configuration, label: nil, logger: logger,
                                   handshake: handshake, payloadBudget: payloadBudget)
        let key = ObjectIdentifier(endpoint)
        let admitted = state.withLock { state -> Bool in
            guard state.admitting else { return false }
            state.open[key] = endpoint.asyncEndpoint
            return true
        }
        guard admitted else { return endpoint.close() } // arrived after close(): turned away
        endpoint._userValue = userValue
        endpoint.didCloseForOwner = { [self] in endpointDidClose(key) }
        onEndpoint(endpoint)
        continuation.yield(endpoint.asyncEndpoint)
    }

    /// Counts a failed accept (on the listener's loop) and logs it: once per
    /// burst when the process is out of descriptors (libuv keeps a reserve
    /// descriptor to turn such connections away instead of spinning), else each time.
    func acceptFailed(_ error: UVError) {
        if let loop = EventLoop.current { LoopMetrics.of(loop).acceptErrors[error.name, default: 0] += 1 }
        guard error.isOutOfDescriptors else {
            return logger.warning("accept failed", metadata: ["rpc.error": "\(error)"])
        }
        let first = refusedForDescriptors.withLock { count -> Bool in
            count += 1
            return count == 1
        }
        if first {
            logger.warning("refusing connections: out of file descriptors", metadata: [
                "rpc.error": "\(error)", "rpc.open-files-limit": "\(openFilesLimit())",
            ])
        }
    }

    /// Ends a burst of connections refused for lack of descriptors (a connection was accepted).
    private func acceptRecovered() {
        let refused = refusedForDescriptors.withLock { count -> Int in
            defer { count = 0 }
            return count
        }
        if refused > 0 {
            logger.warning("accepting connections again", metadata: [
                "rpc.refused": "\(refused)", "rpc.open-files-limit": "\(openFilesLimit())",
            ])
        }
    }

    /// Turns later connections away; returns the endpoints open now.
    func stopAdmitting() -> [RPCAsyncEndpoint] {
        state.withLock { state in
            state.admitting = false
            return Array(state.open.values)
        }
    }

    private func endpointDidClose(_ key: ObjectIdentifier) {
        finishIfDone { $0.open[key] = nil }
    }

    func listenerDidClose() {
        continuation.finish()
        finishIfDone { $0.listenerClosed = true }
    }

    func whenFinished(_ body: @escaping @Sendable () -> Void) {
        finishIfDone { $0.finishWaiters.append(body) }
    }

    /// Applies `change`, then runs the finish waiters if the server is over.
    private func finishIfDone(_ change: (inout State) -> Void) {
        let waiters = state.withLock { state -> [@Sendable () -> Void] in
            change(&state)
            guard state.listenerClosed, state.open.isEmpty else { return [] }
            defer { state.finishWaiters.removeAll() }
            return state.finishWaiters
        }
        for waiter in waiters { waiter() }
    }
}

/// Carries a value the compiler cannot prove Sendable across a `@Sendable`
/// boundary; each use states why it is only touched on one thread.
struct UncheckedSendable<Value>: @unchecked Sendable { // see each use for the invariant
    let value: Value
    init(_ value: Value) { self.value = value }
}
