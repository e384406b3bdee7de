import Logging
import Synchronization
import UVLoop

/// One connection of a pool: made on its loop, made again when it closes.
final class PooledConnection: @unchecked Sendable { // loop-only fields below; the rest atomic or locked
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
    /// Told when an open connection was lost (the pool re-resolves its names).
    private let onLost: @Sendable () -> Void
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
         report: @escaping @Sendable (String) -> Void, onLost: @escaping @Sendable () -> Void = {}) {
        self.onLost = onLost
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

