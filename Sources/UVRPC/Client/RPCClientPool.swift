import CoreMetrics
import Logging
import ServiceLifecycle
import Synchronization
import UVLoop

/// Connections to one or more efro.rpc servers (a service of several
/// servers), spread over the loops of an `EventLoopGroup`, that calls are
/// spread over.
///
/// The pool keeps ``Configuration/connectionsPerAddress`` connections to each
/// address; connection `k` (counting over every address) lives on loop
/// `k % loops.count`. Each call goes to the open connection with the fewest
/// calls in flight (ties taken in turn). A connection that closes is made
/// again after a capped exponential backoff; its calls in flight fail as any
/// endpoint's do, and new calls go to the connections still open. With none
/// open, a call fails at once with code ``RPCError/Code/unavailable``.
///
/// A failed call never closes its pooled connection (unlike a single
/// endpoint's `closeOnError` default, the reference's): one slow call must
/// not fail the other calls that share the connection.
///
/// ```swift
/// let pool = await RPCClientPool.connect(to: [a, b, c], on: group)
/// let answer = try await pool.send(request)       // from any task or thread
/// await pool.close()
/// ```
public final class RPCClientPool: Sendable {
    /// Settings of a pool.
    ///
    /// Every setting of ``RPCEndpoint/Configuration`` is a setting of this
    /// one too, by the same name, for every connection of the pool
    /// (`configuration.tls`, `configuration.messageTimeout`...).
    @dynamicMemberLookup
    public struct Configuration: Sendable {
        /// Connections kept to each address. Default 1.
        public var connectionsPerAddress = 1
        /// Settings of every connection's endpoint (set each through this
        /// configuration, by its name).
        package var endpoint: RPCEndpoint.Configuration
        /// How long one connect attempt may take. Default 10 s.
        public var connectTimeout: Duration = .seconds(10)
        /// Wait before the first attempt to replace a lost connection (or
        /// retry a failed one); doubled after each failure up to
        /// ``maximumReconnectDelay``, and back to this after a success. Default 100 ms.
        public var reconnectDelay: Duration = .milliseconds(100)
        /// Longest wait between two attempts. Default 10 s.
        public var maximumReconnectDelay: Duration = .seconds(10)

        /// A setting of every connection's endpoint (``RPCEndpoint/Configuration``), by its name.
        public subscript<Value>(dynamicMember setting: WritableKeyPath<RPCEndpoint.Configuration, Value>) -> Value {
            get { endpoint[keyPath: setting] }
            set { endpoint[keyPath: setting] = newValue }
        }

        /// The defaults; every connection's endpoint starts from the settings
        /// `endpoint` (the same value a single client's `connect` takes),
        /// which this configuration's own properties then change.
        public init(endpoint: RPCEndpoint.Configuration = RPCEndpoint.Configuration()) {
            self.endpoint = endpoint
        }
    }

    /// One connection of the pool, as it is now.
    public struct ConnectionState: Sendable, Equatable {
        /// The server it goes to.
        public var address: SocketAddress
        /// The name of the loop it lives on.
        public var loop: String
        /// True while it is connected (false while it is being made again).
        public var isOpen: Bool
        /// Calls sent on it that have not ended yet.
        public var callsInFlight: Int
    }

    /// The servers, in the order given.
    public let addresses: [SocketAddress]
    /// The pool's settings.
    public let configuration: Configuration
    private let connections: [PooledConnection]
    private let turn = Atomic<Int>(0)
    private let lastError: LockedValue<String?>
    /// Calls that found no open connection: counted here, off any loop (a rare path).
    private let noConnectionFailures = Counter(label: "uvrpc_calls_failed_total",
                                               dimensions: [("error", CallFailureKind.noConnection.rawValue)])

    private init(addresses: [SocketAddress], configuration: Configuration, connections: [PooledConnection],
                 lastError: LockedValue<String?>) {
        self.addresses = addresses
        self.configuration = configuration
        self.connections = connections
        self.lastError = lastError
    }

    /// Opens the pool's connections and returns once each has been tried
    /// once (connected or failed; failed ones keep being retried). Callable
    /// from any thread or task.
    /// - Parameters:
    ///   - addresses: the servers (at least one).
    ///   - group: the loops the connections are spread over.
    ///   - configuration: connections per address, endpoint settings, reconnect delays.
    ///   - logger: where the pool and its endpoints log; nothing by default.
    ///   - handler: answers the messages the servers send here, on every
    ///     connection, each time one is made (before any byte is read);
    ///     without one, they wait (up to 1024 per connection) and are never answered.
    public static func connect(to addresses: [SocketAddress], on group: EventLoopGroup,
                               configuration: Configuration = Configuration(), logger: Logger? = nil,
                               handler: RPCHandler? = nil) async -> RPCClientPool {
        precondition(!addresses.isEmpty, "RPCClientPool: no address to connect to")
        precondition(configuration.connectionsPerAddress > 0,
                     "RPCClientPool: connectionsPerAddress must be at least 1, not \(configuration.connectionsPerAddress)")
        let logger = logger ?? Logger(label: "uvrpc", factory: { _ in SwiftLogNoOpLogHandler() })
        let lastError = LockedValue<String?>(nil)
        let firstAttempts = Countdown(addresses.count * configuration.connectionsPerAddress)
        var connections: [PooledConnection] = []
        for address in addresses {
            for _ in 0..<configuration.connectionsPerAddress {
                let loop = group.loops[connections.count % group.loops.count]
                connections.append(PooledConnection(address: address, loop: loop, configuration: configuration,
                                                    logger: logger, onEndpoint: handler?.install,
                                                    firstAttempts: firstAttempts) { error in
                    lastError.withLock { $0 = error }
                })
            }
        }
        for connection in connections {
            if !connection.loop.execute({ connection.start() }) { firstAttempts.countDown() }
        }
        await firstAttempts.wait()
        return RPCClientPool(addresses: addresses, configuration: configuration, connections: connections,
                             lastError: lastError)
    }

    /// The most recent reason a connection could not be made or was lost, if any.
    public var lastConnectError: String? { lastError.withLock { $0 } }

    /// Every connection's state, in the pool's order.
    public var connectionStates: [ConnectionState] {
        connections.map {
            ConnectionState(address: $0.address, loop: $0.loop.name, isOpen: $0.isOpen.load(ordering: .acquiring),
                            callsInFlight: $0.inFlight.load(ordering: .relaxed))
        }
    }

    /// Sends `payload` on the open connection with the fewest calls in
    /// flight and returns the response, with `metadata` and the call's
    /// deadline as ``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)``
    /// sends them. Callable from any thread or task.
    /// - Throws: an ``RPCError``: code ``RPCError/Code/unavailable`` at
    ///   once when no connection is open; otherwise what
    ///   ``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)`` throws (the
    ///   connection stays open whatever the call's fate).
    /// A call that meets a connection whose server just said it is draining
    /// (the call was not sent) is sent again on another connection.
    /// It runs on the caller's executor (`nonisolated(nonsending)`), as
    /// ``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)`` does.
    nonisolated(nonsending)
    public func send(_ payload: [UInt8], metadata: RPCMetadata = RPCMetadata(), timeout: Duration? = nil) async throws -> [UInt8] {
        var attempts = 0
        while true {
            guard let (connection, endpoint) = pick() else { throw noConnection }
            defer { connection.callEnded() }
            do {
                return try await endpoint.send(payload, metadata: metadata, timeout: timeout, closeOnError: false)
            } catch let error as RPCError {
                guard case .peerGoingAway = error.reason else { throw error }
                attempts += 1
                if attempts >= connections.count { throw error }
            }
        }
    }

    /// Sends `payload` on the open connection with the fewest calls in
    /// flight; `completion` runs on the calling loop with a copy of the
    /// response or the error. Must be called on an event loop (any: the call
    /// hops to its connection's loop when that is another one). A call that
    /// meets a connection whose server just went away fails with code
    /// ``RPCError/Code/unavailable`` (it was not sent, so it is retryable; the
    /// async `send` sends it again elsewhere). With no connection open the
    /// failure is reported before this returns. The connection stays open
    /// whatever the call's fate.
    public func send(_ payload: [UInt8], timeout: Duration? = nil,
                     completion: @escaping @Sendable (Result<[UInt8], RPCError>) -> Void) {
        guard let caller = EventLoop.current else {
            preconditionFailure("RPCClientPool.send(_:timeout:completion:) must be called on an event loop "
                                + "(its completion runs there); use the async send(_:timeout:) elsewhere")
        }
        guard let (connection, endpoint) = pick() else { return completion(.failure(noConnection)) }
        if connection.loop === caller {
            return endpoint.endpoint.send(payload, timeout: timeout, closeOnError: false) { result in
                connection.callEnded()
                completion(result)
            }
        }
        let sent = connection.loop.execute {
            endpoint.endpoint.send(payload, timeout: timeout, closeOnError: false) { result in
                connection.callEnded()
                caller.execute { completion(result) } // dropped only if the caller's loop is gone
            }
        }
        if !sent {
            connection.callEnded()
            completion(.failure(.closed(endpoint: endpoint.label, messageID: nil, reason: .local)))
        }
    }

    /// Closes every connection (their calls in flight fail) and stops
    /// making new ones; returns once all are closed. Callable from any thread or task.
    public func close() async {
        await closeEach { await $0.close() }
    }

    /// Stops every connection and runs `close` on each endpoint still open
    /// (those in use, and those whose server went away, still finishing
    /// their calls), at once; returns when they are closed and any connect
    /// under way has ended (the endpoint it made closed too).
    private func closeEach(_ close: @escaping @Sendable (RPCAsyncEndpoint) async -> Void) async {
        var endpoints: [RPCAsyncEndpoint] = []
        var connects: [Countdown] = []
        for connection in connections {
            guard let stopped = await connection.loop.submitIfRunning({ connection.stop() }) else { continue }
            endpoints += stopped.endpoints
            if let connect = stopped.connecting { connects.append(connect) }
        }
        await withTaskGroup(of: Void.self) { group in
            for endpoint in endpoints { group.addTask { await close(endpoint) } }
            for connect in connects { group.addTask { await connect.wait() } }
        }
    }

    /// Runs the pool as a `Service` (swift-service-lifecycle): waits until
    /// the `ServiceGroup` shuts down gracefully (SIGTERM, for example), then
    /// drains (``close(gracePeriod:)`` with the endpoint configuration's
    /// ``RPCEndpoint/Configuration/shutdownGracePeriod``) and returns. If
    /// the task is cancelled instead, closes at once.
    public func run() async {
        do {
            try await gracefulShutdown()
            await close(gracePeriod: configuration.endpoint.shutdownGracePeriod)
        } catch {
            await close()
        }
    }

    /// Stops making new connections and closes each one once its calls in
    /// flight have finished (``RPCAsyncEndpoint/close(gracePeriod:)``), or at
    /// `gracePeriod` at the latest, failing what is left with
    /// ``RPCCloseReason/drainTimedOut(_:)``; returns once all are closed.
    /// Callable from any thread or task.
    public func close(gracePeriod: Duration) async {
        await closeEach { await $0.close(gracePeriod: gracePeriod) }
    }

    /// The open connection with the fewest calls in flight, counted as
    /// carrying one more; ties go in turn. Nil when none is open.
    private func pick() -> (PooledConnection, RPCAsyncEndpoint)? {
        let count = connections.count
        let start = Int(UInt(bitPattern: turn.wrappingAdd(1, ordering: .relaxed).oldValue) % UInt(count))
        for _ in 0..<2 { // a second pass if the chosen one closed meanwhile
            var best: PooledConnection?
            var fewest = Int.max
            for offset in 0..<count {
                let connection = connections[(start + offset) % count]
                guard connection.isOpen.load(ordering: .acquiring) else { continue }
                let inFlight = connection.inFlight.load(ordering: .relaxed)
                if inFlight < fewest { (best, fewest) = (connection, inFlight) }
            }
            guard let best else { return nil }
            if let endpoint = best.callStarting() { return (best, endpoint) }
        }
        return nil
    }

    /// The error of a call with no connection open, counted (`uvrpc_calls_failed_total{error="no_connection"}`).
    private var noConnection: RPCError {
        noConnectionFailures.increment()
        return .noConnection(addresses: addresses.map(\.description), lastConnectError: lastConnectError)
    }
}

/// One connection of a pool: made on its loop, made again when it closes.
private final class PooledConnection: @unchecked Sendable { // loop-only fields below; the rest atomic or locked
    // Sendable invariant: `attempts`, `retryTimer`, `stopped`, `triedOnce`, `retiring` and
    // `connecting` are touched only on `loop`'s thread; `endpoint` only under its lock;
    // `isOpen` and `inFlight` are atomics; the other stored properties are immutable.
    let address: SocketAddress
    let loop: EventLoop
    let isOpen = Atomic<Bool>(false)
    let inFlight = Atomic<Int>(0)
    private let configuration: RPCClientPool.Configuration
    private let logger: Logger
    private let onEndpoint: (@Sendable (RPCEndpoint) -> Void)?
    private let report: @Sendable (String) -> Void
    private let endpoint = LockedValue<RPCAsyncEndpoint?>(nil)
    /// Counted down once, when the first connect attempt ended.
    private let firstAttempts: Countdown
    private var triedOnce = false
    private var attempts = 0
    private var retryTimer: LoopTimer?
    private var stopped = false
    /// Endpoints whose server went away: no new calls, still finishing theirs (until they close).
    private var retiring: [RPCEndpoint] = []
    /// Counted down when the connect under way has ended (with its endpoint closed, if the pool stopped meanwhile).
    private var connecting: Countdown?

    init(address: SocketAddress, loop: EventLoop, configuration: RPCClientPool.Configuration, logger: Logger,
         onEndpoint: (@Sendable (RPCEndpoint) -> Void)?, firstAttempts: Countdown,
         report: @escaping @Sendable (String) -> Void) {
        self.firstAttempts = firstAttempts
        self.address = address
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.onEndpoint = onEndpoint
        self.report = report
    }

    /// Makes the first connection (on the loop).
    func start() { connect() }

    private func connect() {
        let attempt = Countdown(1)
        connecting = attempt
        RPCClient.connect(to: address, on: loop, timeout: configuration.connectTimeout,
                          configuration: configuration.endpoint, logger: logger) { [self] result in
            defer {
                if !triedOnce { triedOnce = true; firstAttempts.countDown() }
            }
            if connecting === attempt { connecting = nil }
            if case .success(let endpoint) = result, stopped {
                endpoint.didCloseForOwner = { attempt.countDown() } // close() waits for this one too
                return endpoint.close()
            }
            attempt.countDown()
            switch result {
            case .success(let endpoint):
                attempts = 0
                endpoint.didCloseForOwner = { [self, unowned endpoint] in lost(endpoint, endpoint.closeReason ?? .local) }
                endpoint.didReceiveGoAwayForOwner = { [self, unowned endpoint] in goingAway(endpoint) }
                self.endpoint.withLock { $0 = endpoint.asyncEndpoint }
                isOpen.store(true, ordering: .releasing)
                onEndpoint?(endpoint)
            case .failure(let error):
                report("\(error)")
                retryLater()
            }
        }
    }

    /// Whether `endpoint` is the one calls are sent on now.
    private func isCurrent(_ endpoint: RPCEndpoint) -> Bool {
        self.endpoint.withLock { $0?.endpoint === endpoint }
    }

    /// The server said it is draining (GOAWAY): calls go elsewhere at once,
    /// and a new connection is made; the old one finishes its calls and closes.
    private func goingAway(_ endpoint: RPCEndpoint) {
        guard isCurrent(endpoint) else { return }
        isOpen.store(false, ordering: .releasing)
        self.endpoint.withLock { $0 = nil }
        retiring.append(endpoint)
        guard !stopped else { return }
        logger.info("pooled connection's server is draining; making a new connection", metadata: ["rpc.peer": "\(address)"])
        connect()
    }

    private func lost(_ closed: RPCEndpoint, _ reason: RPCCloseReason) {
        retiring.removeAll { $0 === closed }
        guard isCurrent(closed) else { return } // one that went away, already replaced
        isOpen.store(false, ordering: .releasing)
        endpoint.withLock { $0 = nil }
        guard !stopped else { return }
        report("the connection to \(address) ended: \(reason)")
        logger.info("pooled connection lost; making it again", metadata: [
            "rpc.peer": "\(address)", "rpc.reason": "\(reason)",
        ])
        retryLater()
    }

    private func retryLater() {
        guard !stopped else { return }
        let delay = min(configuration.reconnectDelay * (1 << min(attempts, 30)), configuration.maximumReconnectDelay)
        attempts += 1
        retryTimer = loop.scheduleTimer(after: delay) { [self] in
            retryTimer = nil
            if !stopped { connect() }
        }
    }

    /// Stops reconnecting (on the loop); returns every endpoint still open
    /// (the one in use and those going away) to close, and the connect under
    /// way, if any, to wait for.
    func stop() -> (endpoints: [RPCAsyncEndpoint], connecting: Countdown?) {
        stopped = true
        retryTimer?.cancel()
        retryTimer = nil
        let current = endpoint.withLock { $0 }
        return ((current.map { [$0] } ?? []) + retiring.map(\.asyncEndpoint), connecting)
    }

    /// Counts a call about to be sent and returns the endpoint to send it on,
    /// or nil if the connection just closed.
    func callStarting() -> RPCAsyncEndpoint? {
        inFlight.add(1, ordering: .relaxed)
        if let endpoint = endpoint.withLock({ $0 }) { return endpoint }
        inFlight.subtract(1, ordering: .relaxed)
        return nil
    }

    func callEnded() { inFlight.subtract(1, ordering: .relaxed) }
}

/// A pool runs as a `Service` (swift-service-lifecycle): see ``RPCClientPool/run()``.
extension RPCClientPool: Service {}
