import CoreMetrics
import Synchronization

extension RPCClientPool {
    /// How a pool retries calls marked idempotent
    /// (``RPCClientPool/send(_:metadata:timeout:waitForReady:idempotent:)``)
    /// after a failure that came after they were written, as gRPC's retry
    /// policy and retry throttling do. (A call that failed before it was
    /// written is sent again on another connection whatever this says: it
    /// cannot have had an effect.)
    public struct RetryPolicy: Sendable {
        /// Attempts per call, the first included. Default 3.
        public var maximumAttempts = 3
        /// Wait before the first retry; each retry waits a random time up to
        /// the current backoff (jitter), which grows by ``backoffMultiplier``
        /// up to ``maximumBackoff``. Default 50 ms.
        public var initialBackoff: Duration = .milliseconds(50)
        /// Longest backoff. Default 1 s.
        public var maximumBackoff: Duration = .seconds(1)
        /// Default 2.
        public var backoffMultiplier = 2.0
        /// The codes a call is retried after. Default: ``RPCError/Code/unavailable``
        /// (the connection or the server went away).
        public var retryableCodes: Set<RPCError.Code> = [.unavailable]
        /// The retry budget (gRPC's retry throttling): a pool holds this many
        /// tokens; each idempotent call that fails with a retryable code takes
        /// one, each that succeeds gives back ``budgetTokenRatio``; retries are made
        /// only while more than half the tokens are left, so that retries
        /// cannot multiply the load on servers that are down. Default 10.
        public var budgetTokens = 10.0
        /// Default 0.1.
        public var budgetTokenRatio = 0.1

        /// The defaults.
        public init() {}

        /// The backoff before retry `n` (1-based), jittered.
        func backoff(before retry: Int) -> Duration {
            let grown = initialBackoff * pow2(backoffMultiplier, retry - 1)
            let capped = grown < maximumBackoff ? grown : maximumBackoff
            return capped * Double.random(in: 0...1)
        }

        private func pow2(_ base: Double, _ exponent: Int) -> Double {
            var value = 1.0
            for _ in 0..<Swift.max(0, Swift.min(exponent, 64)) { value *= base }
            return value
        }
    }
}

/// A pool's retry budget (``RPCClientPool/RetryPolicy/budgetTokens``), in
/// thousandths of a token, lock-free: a success when the budget is full
/// costs one load.
final class RetryBudget: Sendable {
    private let milliTokens: Atomic<Int>
    private let maximum: Int
    private let ratio: Int

    init(_ policy: RPCClientPool.RetryPolicy) {
        maximum = Int(policy.budgetTokens * 1000)
        ratio = Int(policy.budgetTokenRatio * 1000)
        milliTokens = Atomic(maximum)
    }

    /// Whether a retry may be made now.
    var allowsRetry: Bool { milliTokens.load(ordering: .relaxed) > maximum / 2 }

    func recordFailure() { adjust(by: -1000) }

    func recordSuccess() {
        if milliTokens.load(ordering: .relaxed) >= maximum { return }
        adjust(by: ratio)
    }

    private func adjust(by delta: Int) {
        var current = milliTokens.load(ordering: .relaxed)
        while true {
            let next = Swift.min(maximum, Swift.max(0, current + delta))
            let (exchanged, original) = milliTokens.compareExchange(expected: current, desired: next, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }
}
