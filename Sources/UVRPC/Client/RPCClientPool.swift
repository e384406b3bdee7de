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
/// `k % loops.count`. An address may be a host name
/// (`SocketAddress(parsing: "scores.internal:9000")`): the pool connects to
/// **every** address it resolves to (a Kubernetes headless service names
/// one per pod), resolves it again every ``Configuration/resolveInterval``
/// and whenever one of its connections is lost, makes connections to new
/// addresses and drains those to addresses that went away, without failing
/// calls in flight; a name that stops resolving keeps its last answer.
/// ``update(addresses:)`` replaces the list at run time.
///
/// A call that finds no connection open makes the closed ones connect at
/// once instead of waiting out their backoff, and waits for those attempts
/// (one connect time); it fails (code ``RPCError/Code/unavailable``, not
/// sent) only when they fail, or, waiting for ready
/// (``Configuration/waitsForReady``), waits for a connection up to its
/// timeout. A call that failed before it was written is sent again on
/// another connection. Each call goes to the open connection with the fewest
/// calls in flight (ties taken in turn). A connection that closes is made
/// again after a capped exponential backoff; its calls in flight fail as any
/// endpoint's do, and new calls go to the connections still open.
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
        /// Resolves the host names among the addresses. Default: the system
        /// resolver (/etc/hosts, then DNS), off the loops.
        public var resolver: any RPCResolver = RPCSystemResolver()
        /// How often host names are resolved again (also whenever a
        /// connection is lost; while one fails to resolve, as often as
        /// connects are retried). Default 30 s, as grpc's DNS resolver.
        public var resolveInterval: Duration = .seconds(30)
        /// Whether a call that finds no connection open waits for one, up to
        /// its timeout, instead of failing at once (gRPC's wait-for-ready;
        /// a call's `waitForReady` overrides it). Either way it makes every
        /// connection that is waiting out its backoff try again at once.
        /// Default false (fail fast, as in gRPC).
        public var waitsForReady = false
        /// How calls marked idempotent are retried after they were written. Default: ``RetryPolicy/init()``.
        public var retryPolicy = RetryPolicy()
        /// How each call's connection is chosen. Default ``Balancing/leastInFlight``.
        public var balancing = Balancing.leastInFlight
        /// When a server whose calls keep failing gets no new calls for a
        /// while; nil: never (the default, as in gRPC).
        public var outlierEjection: OutlierEjection?

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

    /// The servers, in the order given (names as given, not their addresses):
    /// those of ``connect(to:on:configuration:logger:handler:)``, or of the last ``update(addresses:)``.
    public var addresses: [SocketAddress] { membership.publishedTargets.withLock { $0 } }
    /// The pool's settings.
    public let configuration: Configuration
    let membership: PoolMembership
    private let budget: RetryBudget
    private let retries = Atomic<Int>(0)
    private let retryCounter = Counter(label: "uvrpc_pool_retries_total")
    private let ejectionCounter = Counter(label: "uvrpc_pool_ejections_total")
    private let waitCounter = Counter(label: "uvrpc_pool_calls_waited_total")
    let turn = Atomic<Int>(0)
    /// Where this pool's power-of-two choices start (one system random number
    /// per pool): pools made at once do not choose alike.
    let choiceSeed = UInt64.random(in: .min ... .max)
    private let lastError: LockedValue<String?>
    /// Calls that found no open connection: counted here, off any loop (a rare path).
    private let noConnectionFailures = Counter(label: "uvrpc_calls_failed_total",
                                               dimensions: [("error", CallFailureKind.noConnection.rawValue)])

    private let logger: Logger

    private init(configuration: Configuration, membership: PoolMembership, lastError: LockedValue<String?>, logger: Logger) {
        self.logger = logger
        self.configuration = configuration
        self.membership = membership
        self.lastError = lastError
        self.budget = RetryBudget(configuration.retryPolicy)
    }

    /// Retries made of calls marked idempotent (for tests; also counted as `uvrpc_pool_retries_total`).
    package var retriesMade: Int { retries.load(ordering: .relaxed) }

    /// Resolves the names among `addresses`, opens the pool's connections and
    /// returns once each has been tried once (connected or failed; failed
    /// ones keep being retried). Callable from any thread or task.
    /// - Parameters:
    ///   - addresses: the servers (at least one), numeric or host names.
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
        let membership = PoolMembership(targets: addresses, loops: group.loops, configuration: configuration, logger: logger,
                                        onEndpoint: handler?.install) { error in lastError.withLock { $0 = error } }
        await membership.refresh()
        return RPCClientPool(configuration: configuration, membership: membership, lastError: lastError, logger: logger)
    }

    /// Replaces the servers: resolves the names among `addresses`, makes
    /// connections to addresses that are new and drains those to addresses
    /// no longer named (their calls in flight finish); returns once the new
    /// connections were tried once. For discovery systems that push their
    /// lists: `for await list in lists { await pool.update(addresses: list) }`.
    /// Callable from any thread or task.
    public func update(addresses: [SocketAddress]) async {
        precondition(!addresses.isEmpty, "RPCClientPool.update(addresses:): no address to connect to")
        await membership.replaceTargets(addresses)
    }

    /// Calls waiting for a connection to open (for tests).
    package var callsWaitingForConnection: Int { membership.ready.waiting }

    /// The most recent reason a connection could not be made or was lost, if any.
    public var lastConnectError: String? { lastError.withLock { $0 } }

    /// Every connection's state, in the pool's order.
    public var connectionStates: [ConnectionState] {
        membership.live.withLock { $0 }.map {
            ConnectionState(address: $0.address, loop: $0.loop.name, isOpen: $0.isOpen.load(ordering: .acquiring),
                            callsInFlight: $0.inFlight.load(ordering: .relaxed))
        }
    }

    /// Sends `payload` on the open connection with the fewest calls in
    /// flight and returns the response, with `metadata` and the call's
    /// deadline as ``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)``
    /// sends them. Callable from any thread or task.
    ///
    /// A call that finds no connection open makes every connection waiting
    /// out its reconnect backoff try at once, then fails at once (code
    /// ``RPCError/Code/unavailable``), or, with `waitForReady` (default:
    /// ``Configuration/waitsForReady``), waits for a connection to open, up
    /// to its timeout (default ``RPCEndpoint/Configuration/messageTimeout``),
    /// and is sent with the time left. A call that failed before it was
    /// written (``RPCError/isRetryable``: the server said it is draining,
    /// the connection closed or was full) is sent again on another
    /// connection; once every connection lost it so, it fails, or with
    /// wait for ready it waits for the next connection to open, up to its
    /// timeout. A call that was written is sent twice only when it is
    /// marked `idempotent` (doing it twice is harmless): then one that failed
    /// with a code of ``Configuration/retryPolicy`` is retried, after a
    /// backoff, up to its attempts, while the pool's retry budget lasts, and
    /// within its timeout (which covers every attempt).
    /// - Throws: an ``RPCError``: ``RPCError/Code/unavailable`` with no
    ///   connection open (fail fast), ``RPCError/Code/deadlineExceeded`` when
    ///   none opened in time (wait for ready); otherwise what
    ///   ``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)`` throws (the
    ///   connection stays open whatever the call's fate).
    /// It runs on the caller's executor (`nonisolated(nonsending)`), as
    /// ``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)`` does.
    nonisolated(nonsending)
    public func send(_ payload: [UInt8], metadata: RPCMetadata = RPCMetadata(), timeout: Duration? = nil,
                     waitForReady: Bool? = nil, idempotent: Bool = false) async throws -> [UInt8] {
        if idempotent {
            return try await sendRetrying(payload, metadata: metadata, timeout: timeout, waitForReady: waitForReady)
        }
        return try await sendOnce(payload, metadata: metadata, timeout: timeout, waitForReady: waitForReady)
    }

    /// An idempotent call: attempts until one succeeds, the retry policy or
    /// budget says stop, or its timeout passes.
    @inline(never) nonisolated(nonsending) // its clock values would cost every call task allocations
    private func sendRetrying(_ payload: [UInt8], metadata: RPCMetadata, timeout: Duration?,
                              waitForReady: Bool?) async throws -> [UInt8] {
        let policy = configuration.retryPolicy
        let deadline = ContinuousClock.now.advanced(by: timeout ?? configuration.endpoint.messageTimeout)
        var retry = 0
        while true {
            let left = ContinuousClock.now.duration(to: deadline)
            do {
                let answer = try await sendOnce(payload, metadata: metadata, timeout: left, waitForReady: waitForReady)
                budget.recordSuccess()
                return answer
            } catch let error as RPCError where policy.retryableCodes.contains(error.code) {
                budget.recordFailure()
                retry += 1
                let backoff = policy.backoff(before: retry)
                guard retry < policy.maximumAttempts, budget.allowsRetry,
                      ContinuousClock.now.advanced(by: backoff) < deadline else { throw error }
                retries.add(1, ordering: .relaxed)
                retryCounter.increment()
                try await Task.sleep(for: backoff)
            }
        }
    }

    /// One attempt of a call: on a connection open now (or after waiting for one).
    ///
    /// The common case, a connection open and the call answered, is kept
    /// apart from the rest: a `ContinuousClock.Instant` (resilient, its size
    /// unknown to this module) in an async function costs task allocations
    /// per call just by being among its values.
    nonisolated(nonsending)
    private func sendOnce(_ payload: [UInt8], metadata: RPCMetadata, timeout: Duration?,
                          waitForReady: Bool?) async throws -> [UInt8] {
        let generation = membership.ready.generation
        guard let (connection, endpoint) = pick() else {
            return try await sendAfterWaiting(payload, metadata: metadata, timeout: timeout, waitForReady: waitForReady,
                                              generation: generation, attempts: 0)
        }
        let started = EventLoop.monotonicNanoseconds // a plain integer: no task allocation (see above)
        do {
            defer { connection.callEnded() }
            let answer = try await endpoint.send(payload, metadata: metadata, timeout: timeout, closeOnError: false)
            attemptSucceeded(on: connection)
            return answer
        } catch {
            try attemptFailed(on: connection, error) // throws unless the call was never written
            // No connection left to try (the pool closed meanwhile): this error, as the loop below gives.
            if membership.live.withLock({ $0.isEmpty }) { throw error }
        }
        // The first attempt's time counts against the call's timeout (it can have waited
        // for a handshake that never came): the rest has what is left, or this error.
        let spent = Duration.nanoseconds(Int64(clamping: EventLoop.monotonicNanoseconds &- started))
        let left = (timeout ?? configuration.endpoint.messageTimeout) - spent
        guard left > .zero else {
            noConnectionFailures.increment()
            throw RPCError.noConnectionInTime(addresses: addresses.map(\.description), waited: spent,
                                              lastConnectError: lastConnectError)
        }
        return try await sendAfterWaiting(payload, metadata: metadata, timeout: left, waitForReady: waitForReady,
                                          generation: membership.ready.generation, attempts: 1)
    }

    /// The rest of an attempt, once no connection was open or the first one
    /// failed the call before writing it: on another open connection, or
    /// after waiting for one (up to the timeout with wait for ready).
    @inline(never) nonisolated(nonsending) // its clock values would cost every call task allocations
    private func sendAfterWaiting(_ payload: [UInt8], metadata: RPCMetadata, timeout: Duration?,
                                  waitForReady: Bool?, generation first: UInt64, attempts done: Int) async throws -> [UInt8] {
        var attempts = done
        var waiting: Waiting? // once the call found no connection open
        var generation = first
        let waitsForReady = waitForReady ?? configuration.waitsForReady
        // Every attempt and wait from here shares the call's one deadline.
        let total = timeout ?? configuration.endpoint.messageTimeout
        let deadline = ContinuousClock.now.advanced(by: total)
        while true {
            guard let (connection, endpoint) = pick() else {
                waiting = try await waitForConnection(since: generation, timeout: ContinuousClock.now.duration(to: deadline),
                                                      total: total, waitForReady: waitsForReady, waiting)
                generation = membership.ready.generation
                continue
            }
            defer { connection.callEnded() }
            let left = ContinuousClock.now.duration(to: deadline)
            if left <= .zero { // a connection opened just as the time ran out
                noConnectionFailures.increment()
                throw RPCError.noConnectionInTime(addresses: addresses.map(\.description), waited: waiting?.waited ?? total,
                                                  lastConnectError: lastConnectError)
            }
            do {
                let answer = try await endpoint.send(payload, metadata: metadata, timeout: left, closeOnError: false)
                attemptSucceeded(on: connection)
                return answer
            } catch {
                try attemptFailed(on: connection, error)
                attempts += 1
                if attempts >= membership.live.withLock({ $0.count }) + 1 {
                    // Every connection lost it unwritten. Fail fast, or wait for a connection
                    // that opens after the attempt began (servers that drop new connections a
                    // few times before they serve would otherwise fail calls that waited for ready).
                    guard waitsForReady else { throw error }
                    attempts = 0
                    waiting = try await waitForConnection(since: generation, timeout: ContinuousClock.now.duration(to: deadline),
                                                          total: total, waitForReady: true, waiting)
                }
            }
            generation = membership.ready.generation
        }
    }

    /// A call on `connection` was answered (outlier ejection counts it).
    @inline(__always)
    private func attemptSucceeded(on connection: PooledConnection) {
        if configuration.outlierEjection != nil { _ = connection.callOutcome(nil, ejection: configuration.outlierEjection) }
    }

    /// A call on `connection` failed with `error`: counted for outlier
    /// ejection; rethrown unless the call was never written (it can have
    /// had no effect: another connection, or at the end none open, takes it).
    private func attemptFailed(on connection: PooledConnection, _ error: any Error) throws {
        if let ejection = configuration.outlierEjection, connection.callOutcome(error, ejection: ejection) {
            ejectionCounter.increment()
            logger.warning("pool: a server's calls keep failing; it gets no new calls for a while", metadata: [
                "rpc.peer": "\(connection.address)", "rpc.ejection-time": "\(ejection.ejectionTime)",
                "rpc.error": "\(error)",
            ])
        }
        guard let failure = error as? RPCError, failure.isRetryable else { throw error }
    }

    /// A call that found no connection open: until when it may wait.
    private struct Waiting {
        var deadline: ContinuousClock.Instant
        var waited: Duration
    }

    /// No connection is open. A call that waits for ready asks the closed
    /// connections to connect now (after a failed try, each at most every tenth of reconnectDelay) and
    /// waits for one to open, up to its timeout. A fail-fast call asks once,
    /// waits for the attempts it started to end (one connect time), and
    /// fails when none is under way any more.
    /// `timeout` is what the call has left; `total`, its whole timeout, is what an error names.
    private func waitForConnection(since generation: UInt64, timeout: Duration, total: Duration, waitForReady: Bool,
                                   _ waiting: Waiting?) async throws -> Waiting {
        let connections = membership.live.withLock { $0 }
        var underWay = false
        for connection in connections where !connection.isOpen.load(ordering: .relaxed) {
            if waitForReady || waiting == nil {
                if connection.requestConnect() { underWay = true }
            } else if connection.isConnecting.load(ordering: .acquiring) {
                underWay = true
            }
        }
        guard waitForReady || underWay else { throw noConnection }
        if waiting == nil && waitForReady { waitCounter.increment() }
        let current = waiting ?? Waiting(deadline: ContinuousClock.now.advanced(by: timeout), waited: total)
        if await !membership.ready.wait(after: generation, until: current.deadline) {
            try Task.checkCancellation()
            if membership.ready.isClosed {
                noConnectionFailures.increment()
                throw RPCError.noConnection(addresses: addresses.map(\.description), lastConnectError: "the pool is closed")
            }
            noConnectionFailures.increment()
            throw RPCError.noConnectionInTime(addresses: addresses.map(\.description), waited: current.waited,
                                              lastConnectError: lastConnectError)
        }
        return current
    }

    /// Sends `payload` on the open connection with the fewest calls in
    /// flight; `completion` runs on the calling loop with a copy of the
    /// response or the error. Must be called on an event loop (any: the call
    /// hops to its connection's loop when that is another one). A call that
    /// meets a connection whose server just went away fails with code
    /// ``RPCError/Code/unavailable`` (it was not sent, so it is retryable; the
    /// async `send` sends it again elsewhere). With no connection open the
    /// failure is reported before this returns: a completion that sends the
    /// next call after a failure should do so in a later job
    /// (`EventLoop.execute`), or it goes one call deeper into its own stack
    /// for every call while none is open. The connection stays open
    /// whatever the call's fate.
    public func send(_ payload: [UInt8], timeout: Duration? = nil,
                     completion: @escaping @Sendable (Result<[UInt8], RPCError>) -> Void) {
        guard let caller = EventLoop.current else {
            preconditionFailure("RPCClientPool.send(_:timeout:completion:) must be called on an event loop "
                                + "(its completion runs there); use the async send(_:timeout:) elsewhere")
        }
        guard let (connection, endpoint) = pick() else {
            for connection in membership.live.withLock({ $0 }) { _ = connection.requestConnect() }
            return completion(.failure(noConnection))
        }
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
    /// making new ones; calls waiting for a connection (and any made later)
    /// fail with ``RPCError/Code/unavailable``, not sent. Returns once all
    /// are closed. Callable from any thread or task.
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
        for connection in await membership.close() {
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

    /// The error of a call with no connection open, counted (`uvrpc_calls_failed_total{error="no_connection"}`).
    private var noConnection: RPCError {
        noConnectionFailures.increment()
        return .noConnection(addresses: addresses.map(\.description), lastConnectError: lastConnectError)
    }
}

/// A pool runs as a `Service` (swift-service-lifecycle): see ``RPCClientPool/run()``.
extension RPCClientPool: Service {}
