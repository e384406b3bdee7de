import CoreMetrics
import Logging
import UVLoop

/// Which connections a pool has: ``RPCClientPool/Configuration/connectionsPerAddress``
/// to every address its targets name now. A numeric target is its own
/// address; a name is resolved (``RPCClientPool/Configuration/resolver``)
/// when the pool starts, every ``RPCClientPool/Configuration/resolveInterval``,
/// when one of its connections is lost, and when the targets are replaced.
/// Connections to new addresses are made; those to addresses that
/// disappeared get no new calls and drain (their calls in flight finish).
/// A name that fails to resolve, or resolves to nothing, keeps its last answer.
actor PoolMembership {
    /// The connections calls go to, published for ``RPCClientPool``'s pick (any thread).
    nonisolated let live = LockedValue<[PooledConnection]>([])
    /// The targets, readable from any thread.
    nonisolated let publishedTargets: LockedValue<[SocketAddress]>
    private nonisolated let loops: [EventLoop]
    private nonisolated let configuration: RPCClientPool.Configuration
    private nonisolated let logger: Logger
    private nonisolated let onEndpoint: (@Sendable (RPCEndpoint) -> Void)?
    private nonisolated let report: @Sendable (String) -> Void
    /// Signalled whenever one of the connections opens.
    nonisolated let ready = ReadySignal()
    private nonisolated let resolutionsOK = Counter(label: "uvrpc_pool_resolutions_total", dimensions: [("outcome", "ok")])
    private nonisolated let resolutionsFailed = Counter(label: "uvrpc_pool_resolutions_total", dimensions: [("outcome", "failed")])
    private nonisolated let addressCount = Gauge(label: "uvrpc_pool_addresses")

    private var targets: [SocketAddress]
    /// Each name target's last answer.
    private var answers: [SocketAddress: [SocketAddress]] = [:]
    /// Connections whose address went away, draining.
    private var retired: [PooledConnection] = []
    private var nextLoop = 0
    private var closed = false
    private var refresher: Task<Void, Never>?
    /// Refreshes started and the last one applied: an older answer that
    /// arrives after a newer one was applied is dropped.
    private var started = 0
    private var applied = 0
    /// Refresh rounds in a row in which some name did not resolve.
    private var failedRounds = 0
    private var refreshRequested = false

    init(targets: [SocketAddress], loops: [EventLoop], configuration: RPCClientPool.Configuration, logger: Logger,
         onEndpoint: (@Sendable (RPCEndpoint) -> Void)?, report: @escaping @Sendable (String) -> Void) {
        self.targets = targets
        self.publishedTargets = LockedValue(targets)
        self.loops = loops
        self.configuration = configuration
        self.logger = logger
        self.onEndpoint = onEndpoint
        self.report = report
    }

    /// Whether the periodic refresh runs (for tests).
    var hasRefresher: Bool { refresher != nil }

    private var hasNames: Bool { targets.contains { !$0.isNumeric } }

    /// Resolves the names, applies the answer and returns once every new
    /// connection was tried once; starts the periodic refresh the first time.
    func refresh() async {
        guard !closed else { return }
        started += 1
        let round = started
        let targets = self.targets
        var answers: [SocketAddress: [SocketAddress]] = [:]
        var failed = false
        for target in targets where !target.isNumeric {
            guard let host = target.host, let port = target.port else { continue }
            do {
                let found = try await configuration.resolver.resolve(host: host, port: port, on: loops[0])
                if found.isEmpty { throw ResolveError(host: host, reason: "no address", code: 0) }
                answers[target] = found
                resolutionsOK.increment()
            } catch {
                failed = true
                resolutionsFailed.increment()
                report("\(error)")
                logger.warning("pool: a name did not resolve; its last answer stays", metadata: [
                    "rpc.target": "\(target)", "rpc.error": "\(error)",
                ])
            }
        }
        guard !closed, round > applied else { return }
        applied = round
        failedRounds = failed ? failedRounds + 1 : 0
        for (target, found) in answers { self.answers[target] = found }
        await apply(desired: desiredAddresses())?.wait()
        // close() may have come while the new connections were tried: it cancelled no refresher started after it.
        if refresher == nil && hasNames && !closed { startRefresher() }
    }

    /// Every address the targets name now, in order, without repeats, each
    /// with the name it was resolved from (nil for a numeric target; the
    /// first name when several resolve to it).
    private func desiredAddresses() -> [(address: SocketAddress, hostName: String?)] {
        var desired: [(address: SocketAddress, hostName: String?)] = []
        for target in targets {
            let hostName = target.isNumeric ? nil : target.host
            for address in target.isNumeric ? [target] : answers[target] ?? [] where !desired.contains(where: { $0.address == address }) {
                desired.append((address, hostName))
            }
        }
        return desired
    }

    /// Makes connections to the new addresses and drains those to addresses
    /// gone; returns what counts down when the new ones were tried once.
    private func apply(desired: [(address: SocketAddress, hostName: String?)]) -> Countdown? {
        let wanted = Set(desired.map(\.address))
        var current = live.withLock { $0 }
        let present = Set(current.map(\.address))
        let removed = current.filter { !wanted.contains($0.address) }
        var added: [PooledConnection] = []
        let firstAttempts = Countdown(desired.filter { !present.contains($0.address) }.count * configuration.connectionsPerAddress)
        for (address, hostName) in desired where !present.contains(address) {
            for _ in 0..<configuration.connectionsPerAddress {
                let loop = loops[nextLoop % loops.count]
                nextLoop += 1
                added.append(PooledConnection(address: address, hostName: hostName, loop: loop, configuration: configuration, logger: logger,
                                              onEndpoint: onEndpoint, firstAttempts: firstAttempts, report: report,
                                              onLost: { [weak self] in self?.connectionLost() },
                                              onOpen: { [ready] in ready.signal() }))
            }
        }
        current = current.filter { wanted.contains($0.address) } + added
        live.withLock { $0 = current }
        addressCount.record(desired.count)
        for connection in added where !connection.loop.execute({ connection.start() }) {
            connection.isConnecting.store(false, ordering: .releasing) // its loop takes no more work: no connect is coming
            firstAttempts.countDown()
        }
        if !removed.isEmpty {
            logger.info("pool: addresses gone; draining their connections",
                        metadata: ["rpc.addresses": "\(Set(removed.map(\.address)).map(\.description).sorted())"])
        }
        for connection in removed { retire(connection) }
        return added.isEmpty ? nil : firstAttempts
    }

    /// Stops reconnecting `connection` and lets its calls in flight finish
    /// (its endpoints drain for at most the shutdown grace period).
    private func retire(_ connection: PooledConnection) {
        retired.append(connection)
        let grace = configuration.endpoint.shutdownGracePeriod
        Task {
            if let stopped = await connection.loop.submitIfRunning({ connection.stop() }) {
                await withTaskGroup(of: Void.self) { group in
                    for endpoint in stopped.endpoints { group.addTask { await endpoint.close(gracePeriod: grace) } }
                    if let connecting = stopped.connecting { group.addTask { await connecting.wait() } }
                }
            }
            self.retirementEnded(connection)
        }
    }

    private func retirementEnded(_ connection: PooledConnection) {
        retired.removeAll { $0 === connection }
    }

    /// Re-resolves now (one request at a time), when a connection was lost.
    nonisolated func connectionLost() {
        Task { await self.refreshOnLoss() }
    }

    private func refreshOnLoss() async {
        guard hasNames, !refreshRequested, !closed else { return }
        refreshRequested = true
        await refresh()
        refreshRequested = false
    }

    private func startRefresher() {
        refresher = Task { [configuration] in
            while !Task.isCancelled {
                let failing = self.failedRounds
                let backoff = Swift.min(configuration.reconnectDelay * (1 << Swift.min(failing, 30)), configuration.maximumReconnectDelay)
                do { try await Task.sleep(for: failing > 0 ? backoff : configuration.resolveInterval) } catch { return }
                await self.refresh()
            }
        }
    }

    /// Replaces the targets and applies them (resolving names).
    func replaceTargets(_ new: [SocketAddress]) async {
        guard !closed else { return }
        targets = new
        publishedTargets.withLock { $0 = new }
        for stale in answers.keys where !new.contains(stale) { answers[stale] = nil }
        await refresh()
    }

    /// Stops changing the pool; returns every connection to stop and close.
    func close() -> [PooledConnection] {
        closed = true
        refresher?.cancel()
        refresher = nil
        ready.close() // calls waiting for a connection fail now, not at their deadline
        let current = live.withLock { list -> [PooledConnection] in
            defer { list.removeAll() }
            return list
        }
        return current + retired
    }
}
