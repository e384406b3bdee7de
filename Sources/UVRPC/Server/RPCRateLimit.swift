import UVLoop

/// A rate with a burst: up to `burst` events at once, then `perSecond` on
/// average (a token bucket).
public struct RPCRateLimit: Sendable, Equatable {
    /// Events allowed per second once the burst is used.
    public var perSecond: Double
    /// Events allowed at once (the bucket's size).
    public var burst: Int

    /// A limit of `perSecond` events a second with bursts of up to `burst`.
    public init(perSecond: Double, burst: Int) {
        precondition(perSecond >= 0 && burst >= 1, "RPCRateLimit: perSecond must be >= 0 and burst >= 1")
        self.perSecond = perSecond
        self.burst = burst
    }
}

/// Counts new connections per peer address against an ``RPCRateLimit``
/// (a server's TLS handshakes: each costs a signature, so a peer replaying
/// ClientHellos could keep a core busy). Shared by every loop of a server;
/// one lock per new connection, never per call.
package final class PeerRateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var refilledAt: UInt64
    }
    private let limit: RPCRateLimit
    private let buckets = LockedValue<[String: Bucket]>([:])
    /// Buckets kept before full ones (which hold nothing worth keeping) are dropped.
    private static let prunedAbove = 4096

    package init(_ limit: RPCRateLimit) { self.limit = limit }

    /// Takes one token for `peer`; false when its bucket is empty.
    package func allow(_ peer: String, now: UInt64 = EventLoop.monotonicNanoseconds) -> Bool {
        buckets.withLock { buckets in
            var bucket = buckets[peer] ?? Bucket(tokens: Double(limit.burst), refilledAt: now)
            let elapsed = Double(now &- bucket.refilledAt) / 1e9
            bucket.tokens = min(Double(limit.burst), bucket.tokens + elapsed * limit.perSecond)
            bucket.refilledAt = now
            let allowed = bucket.tokens >= 1
            if allowed { bucket.tokens -= 1 }
            buckets[peer] = bucket
            if buckets.count > Self.prunedAbove {
                let full = Double(limit.burst), rate = limit.perSecond
                buckets = buckets.filter { $0.value.tokens + Double(now &- $0.value.refilledAt) / 1e9 * rate < full }
            }
            return allowed
        }
    }
}
