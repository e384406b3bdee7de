import Logging
import ServiceLifecycle
import UVLoop

/// Listens for connections and speaks efro.rpc on each: every accepted
/// connection becomes an ``RPCEndpoint``. One misbehaving connection closes
/// alone; the server keeps serving the others.
///
/// Make it with its configuration and its handler, then ``run()`` it: the
/// server listens only inside `run()`, serves until it is closed, and
/// `run()` returns once every connection has closed. It is a `Service`
/// (swift-service-lifecycle): under a `ServiceGroup`, a graceful shutdown
/// (SIGTERM) drains it, and cancelling `run()`'s task closes it at once.
///
/// ```swift
/// let server = RPCServer(configuration: .init(address: .ipv4(host: "0.0.0.0", port: 7000)),
///                        on: group, handler: .async { request, context in request.payload })
/// try await withThrowingDiscardingTaskGroup { tasks in
///     tasks.addTask { try await server.run() }
///     print("listening on", await server.listeningAddress!)
/// }
/// ```
///
/// A server runs on one loop or on every loop of an `EventLoopGroup`: each
/// endpoint lives on one loop for its whole life, and its handlers run there
/// (``Configuration/spread`` says how connections are spread over the loops).
public final class RPCServer: Sendable {
    /// Where and how a server listens, and the settings of its endpoints.
    ///
    /// Every setting of ``RPCEndpoint/Configuration`` is a setting of this
    /// one too, by the same name, for every endpoint the server makes:
    ///
    /// ```swift
    /// var configuration = RPCServer.Configuration(address: .ipv4(host: "0.0.0.0", port: 7000))
    /// configuration.tls = try TLSContext(.server(certificateChain: .file("server.pem"), privateKey: .file("server.key")))
    /// configuration.keepaliveTimeout = .seconds(10)
    /// ```
    @dynamicMemberLookup
    public struct Configuration: Sendable {
        /// TCP (port 0 picks a free one; see ``RPCServer/listeningAddress``) or a Unix socket path.
        public var address: SocketAddress
        /// How connections are spread over the loops. Default round robin.
        public var spread: ConnectionSpread = .roundRobin
        /// The kernel's queue of connections not yet accepted (per socket). Default 511.
        public var backlog: Int32 = 511
        /// Settings of every endpoint: timeouts, limits, TLS, extensions
        /// (set each through this configuration, by its name).
        package var endpoint: RPCEndpoint.Configuration

        /// A setting of every endpoint (``RPCEndpoint/Configuration``), by its name.
        public subscript<Value>(dynamicMember setting: WritableKeyPath<RPCEndpoint.Configuration, Value>) -> Value {
            get { endpoint[keyPath: setting] }
            set { endpoint[keyPath: setting] = newValue }
        }

        /// Listens on `address`; every endpoint starts from the settings
        /// `endpoint` (the same value a client's `connect` takes), which this
        /// configuration's own properties then change.
        public init(address: SocketAddress, spread: ConnectionSpread = .roundRobin, backlog: Int32 = 511,
                    endpoint: RPCEndpoint.Configuration = RPCEndpoint.Configuration()) {
            self.address = address
            self.spread = spread
            self.backlog = backlog
            self.endpoint = endpoint
        }
    }

    /// What the `admit` hook decides for a new connection: ``accept(_:)``
    /// it (with its connection values) or ``refuse`` it.
    public struct Admission: Sendable {
        /// The decision, for the server.
        package enum Decision: Sendable {
            case accept(RPCConnectionValues)
            case refuse
        }
        package let decision: Decision

        /// Serve the connection; `values` become its endpoint's ``RPCEndpoint/connectionValues``.
        public static func accept(_ values: RPCConnectionValues = RPCConnectionValues()) -> Admission {
            Admission(decision: .accept(values))
        }
        /// Close it at once, before any byte is read or written.
        public static let refuse = Admission(decision: .refuse)
    }

    /// The server's configuration.
    public let configuration: Configuration
    /// The loops its endpoints run on.
    public let loops: [EventLoop]
    /// New endpoints (their `Sendable` handles), in accept order, for
    /// `for await endpoint in server.endpoints`.
    /// Endpoints nobody consumed are kept up to the newest 1024 (older ones
    /// keep being served; they are only not delivered here; a closed one
    /// kept here has released its buffers). Ends once the server stopped accepting.
    public let endpoints: AsyncStream<RPCAsyncEndpoint>

    private let core: ServerCore
    private let lifecycle = LockedValue(Lifecycle())

    /// Makes a server; nothing listens until ``run()``.
    /// - Parameters:
    ///   - configuration: the address, spread, backlog and endpoint settings.
    ///   - loops: one loop, or a group whose every loop serves connections.
    ///   - logger: where the server and its endpoints log; nothing by default.
    ///   - admit: called on the connection's loop with each new connection's
    ///     peer address, before anything else: refuse it, or accept it with its
    ///     connection values. Every connection is accepted without a value when nil.
    ///   - handler: how messages are answered.
    public init(configuration: Configuration, on loops: some EventLoopProvider, logger: Logger? = nil,
                admit: (@Sendable (SocketAddress?) -> Admission)? = nil, handler: RPCHandler) {
        self.configuration = configuration
        self.loops = loops.loops
        let install = handler.install
        (core, endpoints) = ServerCore.make(configuration: configuration.endpoint, logger: logger, admit: admit,
                                            onEndpoint: install)
    }

    /// The endpoints that are open now (their `Sendable` handles), on every
    /// loop, in no particular order. Callable from any thread.
    public var openEndpoints: [RPCAsyncEndpoint] { core.openEndpoints }

    /// Bytes its endpoints hold now against ``RPCEndpoint/Configuration/maximumServerPayloadMemory``
    /// (for tests and the attack tool). Callable from any thread.
    package var payloadMemoryInUse: Int { core.payloadBudget.usedBytes }

    /// The address the server listens on (with the chosen port when the
    /// configuration says port 0), once ``run()`` is listening. Waits until
    /// then; nil when the server stops (or binding fails, which ``run()``
    /// throws) before it listened, or when the waiting task is cancelled.
    public var listeningAddress: SocketAddress? {
        get async {
            await OneShot<SocketAddress?>().wait(orWhenCancelled: nil) { waiter in
                let known = lifecycle.withLock { state -> SocketAddress?? in
                    switch state.phase {
                    case .listening(let listener): return .some(listener.address)
                    case .stopped: return .some(nil)
                    case .idle, .binding:
                        state.addressWaiters.append(waiter)
                        return nil
                    }
                }
                if let known { waiter.resume(known) }
            }
        }
    }

    /// Listens, serves until the server is closed, and returns once every
    /// connection has closed. Callable once, from any task.
    ///
    /// - A graceful shutdown of the `ServiceGroup` running it (SIGTERM), or
    ///   ``close(gracePeriod:)``, drains: stops accepting, lets every endpoint
    ///   finish what is in flight, and closes the rest at the grace period
    ///   (``RPCEndpoint/Configuration/shutdownGracePeriod`` under a
    ///   `ServiceGroup`).
    /// - Cancelling the task, or ``close()``, closes at once: each endpoint
    ///   fails its in-flight calls, flushes what it owes and closes, without
    ///   waiting for its peer.
    /// - A server closed before `run()` returns at once, without listening.
    /// - Throws: `UVError` naming the address when binding fails.
    public func run() async throws {
        let start = lifecycle.withLock { state -> Bool in
            precondition(!state.hasRun, "RPCServer.run() called a second time: a server runs once")
            state.hasRun = true
            guard state.stopRequest == nil, !Task.isCancelled else {
                state.phase = .stopped
                return false
            }
            state.phase = .binding
            return true
        }
        guard start else { return finish() }
        let listener: GroupListener
        do {
            listener = try await GroupListener.listen(
                loops: loops, address: configuration.address, spread: configuration.spread,
                backlog: configuration.backlog, options: configuration.endpoint.connectionOptions,
                onAcceptError: core.acceptFailed, onAccept: core.accept)
        } catch {
            finish()
            throw error
        }
        listener.whenClosed { [core] in core.listenerDidClose() }
        let (waiters, pending) = lifecycle.withLock { state in
            state.phase = .listening(listener)
            defer { state.addressWaiters.removeAll() }
            return (state.addressWaiters, state.stopRequest)
        }
        for waiter in waiters { waiter.resume(listener.address) }
        if let pending { stop(listener, pending) }
        let gracePeriod = configuration.endpoint.shutdownGracePeriod
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withCheckedContinuation { continuation in core.whenFinished { continuation.resume() } }
            } onGracefulShutdown: {
                self.close(gracePeriod: gracePeriod)
            }
        } onCancel: {
            self.close()
        }
        finish()
    }

    /// Closes at once, from any thread, and returns at once: stops accepting
    /// on every loop, and every endpoint fails its in-flight calls, flushes
    /// what it owes and closes. ``run()`` returns when all are closed. A
    /// server not yet running never listens.
    public func close() {
        request(.now)
    }

    /// Closes gracefully, from any thread, and returns at once: stops
    /// accepting at once (on every loop), lets every endpoint finish what is
    /// in flight (answer the messages it received, get the responses to its
    /// own calls) and close as soon as it has nothing in flight; at
    /// `gracePeriod` closes the rest (a UVRPC caller's calls still in flight
    /// fail with code ``RPCError/Code/unavailable``). ``run()`` returns when
    /// all are closed. A message that arrives during the drain is handled
    /// like any other (an efro.rpc peer cannot be told to stop sending); see
    /// ``RPCEndpoint/close(gracePeriod:)``.
    public func close(gracePeriod: Duration) {
        request(.graceful(gracePeriod))
    }

    // MARK: Lifecycle

    private enum StopRequest {
        case now
        case graceful(Duration)
    }

    private enum Phase {
        case idle
        case binding
        case listening(GroupListener)
        case stopped
    }

    private struct Lifecycle {
        var phase = Phase.idle
        var hasRun = false
        /// The strongest stop asked for so far (at once beats graceful).
        var stopRequest: StopRequest?
        var addressWaiters: [OneShot<SocketAddress?>] = []
    }

    private func request(_ request: StopRequest) {
        let (listener, waiters) = lifecycle.withLock { state -> (GroupListener?, [OneShot<SocketAddress?>]) in
            switch (state.stopRequest, request) {
            case (nil, _), (.graceful?, .now): state.stopRequest = request
            default: return (nil, []) // asked already, as strongly
            }
            switch state.phase {
            case .idle:
                state.phase = .stopped // run() will return at once
                defer { state.addressWaiters.removeAll() }
                return (nil, state.addressWaiters)
            case .binding, .stopped: return (nil, []) // run() applies it once bound
            case .listening(let listener): return (listener, [])
            }
        }
        for waiter in waiters { waiter.resume(nil) }
        if let listener { stop(listener, request) }
    }

    /// Stops accepting on every loop (connections accepted but not yet
    /// handed to their loop are closed too) and closes or drains each open
    /// endpoint, on its own loop.
    private func stop(_ listener: GroupListener, _ request: StopRequest) {
        let open = core.stopAdmitting()
        listener.close()
        for handle in open {
            let action: @Sendable (RPCEndpoint) -> Void
            switch request {
            case .now: action = { $0.close(reason: .local, lingering: false) }
            case .graceful(let gracePeriod): action = { $0.beginDrain(gracePeriod: gracePeriod) }
            }
            let loop = handle.loop
            if loop.inEventLoop { action(handle.endpoint) } else { loop.execute { action(handle.endpoint) } }
        }
    }

    /// `run()` is over: address waiters learn that no address is coming.
    private func finish() {
        let waiters = lifecycle.withLock { state -> [OneShot<SocketAddress?>] in
            state.phase = .stopped
            defer { state.addressWaiters.removeAll() }
            return state.addressWaiters
        }
        for waiter in waiters { waiter.resume(nil) }
    }
}

/// A server runs as a `Service` (swift-service-lifecycle): see ``RPCServer/run()``.
extension RPCServer: Service {}
