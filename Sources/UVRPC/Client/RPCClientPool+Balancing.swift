import Synchronization
import UVLoop

extension RPCClientPool {
    /// How a pool chooses the connection for each call.
    public struct Balancing: Sendable, Hashable, CustomStringConvertible {
        enum Kind: Hashable { case leastInFlight, roundRobin, powerOfTwoChoices }
        let kind: Kind

        /// The open connection with the fewest calls in flight (ties in turn):
        /// slow servers get fewer calls. Looks at every connection per call,
        /// which is nothing for tens of connections. The default.
        public static let leastInFlight = Balancing(kind: .leastInFlight)
        /// The next open connection in turn: an even spread whatever each
        /// server's speed; the cheapest. For servers that are all alike.
        public static let roundRobin = Balancing(kind: .roundRobin)
        /// The one with fewer calls in flight of two open connections chosen
        /// at random: nearly least-in-flight's spread at a constant cost per
        /// call, and many clients do not all rush to the same least-loaded
        /// server. For hundreds of connections or many clients.
        public static let powerOfTwoChoices = Balancing(kind: .powerOfTwoChoices)

        public var description: String {
            switch kind {
            case .leastInFlight: return "least in flight"
            case .roundRobin: return "round robin"
            case .powerOfTwoChoices: return "power of two choices"
            }
        }
    }

    /// When a pool stops sending new calls to a server whose calls keep
    /// failing (outlier ejection): after ``consecutiveFailures`` calls on a
    /// connection failed in a row with one of ``failureCodes``, it gets no new
    /// call for ``ejectionTime`` (calls in flight finish), unless every
    /// connection is ejected: then they are used as if none were. A
    /// connection that stops answering keepalives is closed
    /// (``RPCEndpoint/Configuration/keepaliveTimeout``) and so gets no calls either.
    public struct OutlierEjection: Sendable {
        /// Failures in a row that eject a connection. Default 5.
        public var consecutiveFailures = 5
        /// How long an ejected connection gets no new call. Default 10 s.
        public var ejectionTime: Duration = .seconds(10)
        /// The failures that count (others, such as a caller's cancel or an
        /// invalid argument, say nothing of the server). Default: unavailable,
        /// deadline exceeded, handler failed, internal error, resource exhausted.
        public var failureCodes: Set<RPCError.Code> = [.unavailable, .deadlineExceeded, .handlerFailed, .internalError,
                                                       .resourceExhausted]

        /// The defaults.
        public init() {}
    }
}

extension RPCClientPool {
    /// The connection for a call, as ``Configuration/balancing`` chooses
    /// among the open ones not ejected (all open ones when every one is
    /// ejected), counted as carrying one more call. Nil when none is open.
    func pick() -> (PooledConnection, RPCAsyncEndpoint)? {
        let connections = membership.live.withLock { $0 }
        let count = connections.count
        guard count > 0 else { return nil }
        let ticket = UInt(bitPattern: turn.wrappingAdd(1, ordering: .relaxed).oldValue)
        let start = Int(ticket % UInt(count))
        // Ejected connections are passed over, unless every open one is ejected.
        let now = configuration.outlierEjection == nil ? UInt64.max : EventLoop.monotonicNanoseconds
        for pass in 0..<3 { // again if the chosen one closed meanwhile; the last pass takes ejected ones too
            let usable: (PooledConnection) -> Bool = pass < 2 && now != .max
                ? { $0.isUsable(now: now) } : { $0.isOpen.load(ordering: .acquiring) }
            guard let best = choose(connections, from: start, ticket: UInt64(ticket), usable) else {
                if pass < 2 && now != .max { continue }
                return nil
            }
            if let endpoint = best.callStarting() { return (best, endpoint) }
        }
        return nil
    }

    /// The connection the balancing picks among the usable ones, looking
    /// from `start`; `ticket` is the call's turn (the two choices come from it).
    private func choose(_ connections: [PooledConnection], from start: Int, ticket: UInt64,
                        _ usable: (PooledConnection) -> Bool) -> PooledConnection? {
        let count = connections.count
        switch configuration.balancing.kind {
        case .roundRobin:
            for offset in 0..<count where usable(connections[(start + offset) % count]) {
                return connections[(start + offset) % count]
            }
            return nil
        case .powerOfTwoChoices:
            let (one, other) = Self.twoChoices(seed: choiceSeed, ticket: ticket, count: count)
            let first = connections[one], second = connections[other]
            switch (usable(first), usable(second)) {
            case (true, true):
                return first.inFlight.load(ordering: .relaxed) <= second.inFlight.load(ordering: .relaxed) ? first : second
            case (true, false): return first
            case (false, true): return second
            case (false, false): break // both out: look at all, as least-in-flight
            }
            fallthrough
        case .leastInFlight:
            var best: PooledConnection?
            var fewest = Int.max
            for offset in 0..<count {
                let connection = connections[(start + offset) % count]
                guard usable(connection) else { continue }
                let inFlight = connection.inFlight.load(ordering: .relaxed)
                if inFlight < fewest { (best, fewest) = (connection, inFlight) }
            }
            return best
        }
    }
}

extension RPCClientPool {
    /// The two indices below `count` a power-of-two-choices call looks at:
    /// its turn (`ticket`) mixed with the pool's seed (`splitMix64`),
    /// so they spread like random choices. Not `Int.random`: that asks the
    /// kernel (`getrandom`) on every use, two system calls per call.
    static func twoChoices(seed: UInt64, ticket: UInt64, count: Int) -> (Int, Int) {
        let z = splitMix64(seed &+ ticket)
        let span = UInt64(count)
        return (Int((z & 0xFFFF_FFFF) % span), Int((z >> 32) % span))
    }
}

extension PooledConnection {
    /// Whether the connection may take a new call now: open and not ejected.
    func isUsable(now: UInt64) -> Bool {
        isOpen.load(ordering: .acquiring) && ejectedUntil.load(ordering: .relaxed) <= now
    }

    /// A call on it ended: counts failures in a row, and ejects it at the threshold.
    func callOutcome(_ error: (any Error)?, ejection: RPCClientPool.OutlierEjection?) -> Bool {
        guard let ejection else { return false }
        guard let error = error as? RPCError, ejection.failureCodes.contains(error.code) else {
            if error == nil, consecutiveFailures.load(ordering: .relaxed) != 0 { consecutiveFailures.store(0, ordering: .relaxed) }
            return false
        }
        let failures = consecutiveFailures.add(1, ordering: .relaxed).newValue
        guard failures >= ejection.consecutiveFailures else { return false }
        consecutiveFailures.store(0, ordering: .relaxed)
        let (time, overflow) = ejection.ejectionTime.roundedUpMilliseconds.multipliedReportingOverflow(by: 1_000_000)
        let now = EventLoop.monotonicNanoseconds
        let until = overflow || time > .max - now ? UInt64.max : now + time
        ejectedUntil.store(until, ordering: .relaxed)
        return true
    }
}
