import Logging
import Synchronization
import UVLoop

/// One connection of a pool: made on its loop, made again when it closes.
final class PooledConnection: @unchecked Sendable { // loop-only fields below; the rest atomic or locked
    // Sendable invariant: `attempts`, `retryTimer`, `stopped`, `triedOnce`, `retiring` and
    // `connecting` are touched only on `loop`'s thread; `endpoint` only under its lock;
    // `isOpen` and `inFlight` are atomics; the other stored properties are immutable.
    let address: SocketAddress
    /// The name `address` was resolved from, if any: the TLS server name (unless configured).
    let hostName: String?
    let loop: EventLoop
    let isOpen = Atomic<Bool>(false)
    let inFlight = Atomic<Int>(0)
    /// True while a connect attempt is under way (or asked for by ``requestConnect()``).
    /// True from the start: a new connection's first connect is about to be
    /// made (a call that finds it closed waits for that one instead of failing).
    let isConnecting = Atomic<Bool>(true)
    /// Calls that failed in a row (outlier ejection), and until when (monotonic
    /// nanoseconds) the connection gets no new call.
    let consecutiveFailures = Atomic<Int>(0)
    let ejectedUntil = Atomic<UInt64>(0)
    private let configuration: RPCClientPool.Configuration
    private let logger: Logger
    private let onEndpoint: (@Sendable (RPCEndpoint) -> Void)?
    private let report: @Sendable (String) -> Void
    /// Told when an open connection was lost (the pool re-resolves its names).
    private let onLost: @Sendable () -> Void
    /// Told when a connect attempt ended, opened or not (calls waiting for one look again).
    private let onOpen: @Sendable () -> Void
    /// When the last connect attempt failed (monotonic nanoseconds, any
    /// thread; 0: none failed since the last success): after a failure,
    /// on-demand connects wait ``onDemandSpacing(_:)``.
    private let lastAttemptEnded = Atomic<UInt64>(0)
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

    init(address: SocketAddress, hostName: String? = nil, loop: EventLoop, configuration: RPCClientPool.Configuration, logger: Logger,
         onEndpoint: (@Sendable (RPCEndpoint) -> Void)?, firstAttempts: Countdown,
         report: @escaping @Sendable (String) -> Void, onLost: @escaping @Sendable () -> Void = {},
         onOpen: @escaping @Sendable () -> Void = {}) {
        self.onLost = onLost
        self.onOpen = onOpen
        self.firstAttempts = firstAttempts
        self.address = address
        self.hostName = hostName
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.onEndpoint = onEndpoint
        self.report = report
    }

    /// Makes the first connection (on the loop).
    func start() { connect() }

    /// How long after a failed connect a call may make the connection try
    /// again (nanoseconds): a tenth of ``RPCClientPool/Configuration/reconnectDelay``
    /// (10 ms by default), so a restarted server is found within about that,
    /// and callers failing fast through an outage make at most that many
    /// connects per second per connection, not one per call.
    static func onDemandSpacing(_ configuration: RPCClientPool.Configuration) -> UInt64 {
        let (spacing, overflow) = configuration.reconnectDelay.roundedUpMilliseconds.multipliedReportingOverflow(by: 100_000)
        return overflow ? .max : spacing
    }

    /// A call found no connection open (any thread): asks for a connect now
    /// instead of at the end of the backoff. Returns whether an attempt is
    /// under way (or was just asked for); its end is reported through `onOpen`.
    func requestConnect() -> Bool {
        if isOpen.load(ordering: .acquiring) { return false }
        if isConnecting.load(ordering: .acquiring) { return true }
        let failedAt = lastAttemptEnded.load(ordering: .relaxed)
        if failedAt != 0, EventLoop.monotonicNanoseconds &- failedAt < Self.onDemandSpacing(configuration) {
            return false // it just failed: the next try is the backoff's
        }
        guard isConnecting.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            return true // one is under way
        }
        if !loop.execute({ self.connectNow() }) {
            isConnecting.store(false, ordering: .releasing)
            return false
        }
        return true
    }

    /// Connects now, when the connection waits out its backoff (a connect
    /// ``requestConnect()`` asked for); else reports that no attempt is under
    /// way. The backoff still grows if this attempt fails.
    private func connectNow() {
        guard !stopped, connecting == nil, endpoint.withLock({ $0 }) == nil, let timer = retryTimer else {
            if connecting == nil {
                isConnecting.store(false, ordering: .releasing)
                onOpen()
            }
            return
        }
        timer.cancel()
        retryTimer = nil
        connect()
    }

    private func connect() {
        let attempt = Countdown(1)
        connecting = attempt
        isConnecting.store(true, ordering: .releasing)
        RPCClient.connect(to: address, hostName: hostName, on: loop, timeout: configuration.connectTimeout,
                          configuration: configuration.endpoint, logger: logger) { [self] result in
            defer {
                if !triedOnce { triedOnce = true; firstAttempts.countDown() }
            }
            if connecting === attempt { connecting = nil }
            if case .failure = result {
                lastAttemptEnded.store(Swift.max(1, EventLoop.monotonicNanoseconds), ordering: .relaxed)
            } else {
                lastAttemptEnded.store(0, ordering: .relaxed)
            }
            isConnecting.store(false, ordering: .releasing)
            if case .success(let endpoint) = result, stopped {
                endpoint.didCloseForOwner = { attempt.countDown() } // close() waits for this one too
                return endpoint.close()
            }
            attempt.countDown()
            switch result {
            case .success(let endpoint):
                // The backoff starts over once the peer's handshake came (see lost(_:_:)), not at connect.
                endpoint.didCloseForOwner = { [self, unowned endpoint] in lost(endpoint, endpoint.closeReason ?? .local) }
                endpoint.didReceiveGoAwayForOwner = { [self, unowned endpoint] in goingAway(endpoint) }
                self.endpoint.withLock { $0 = endpoint.asyncEndpoint }
                isOpen.store(true, ordering: .releasing)
                onEndpoint?(endpoint)
                onOpen()
            case .failure(let error):
                report("\(error)")
                retryLater()
                onOpen() // the attempt ended: a fail-fast call waiting for it fails now
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
        if closed._peerInfo != nil {
            attempts = 0 // it served: the next connect comes after the shortest delay
        } else {
            // Lost before the peer's handshake (a server that accepts and drops): a failed
            // attempt, so the backoff grows and calls cannot ask for a connect at once
            // (a call waiting for ready made about 200 connections a second).
            lastAttemptEnded.store(Swift.max(1, EventLoop.monotonicNanoseconds), ordering: .relaxed)
        }
        report("the connection to \(address) ended: \(reason)")
        onLost()
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

