/// Whether the peer is still there, and this connection's share of a loop
/// turn: the clocks and counters, and the verdict of each periodic check
/// (``check(now:handshakeReceived:readingPaused:)``). The endpoint runs the
/// timer and acts on the verdict (``RPCEndpoint+Closing.swift``). Times are
/// loop milliseconds.
struct Liveness {
    /// What a periodic check found; the endpoint acts on each part.
    struct Verdict: Equatable {
        /// The check ran long overdue: the loop itself was held up (a handler
        /// that blocked it), so the peer's packets, payloads and
        /// acknowledgements could not be read meanwhile, and their clocks
        /// start again (the keepalive clock already has).
        var loopWasHeldUp = false
        /// Nothing arrived for a whole period: the connection's idle buffers can go.
        var peerIdle = false
        /// The connection is to close for this, if anything.
        var timeout: Timeout?
    }

    enum Timeout: Equatable {
        /// No handshake from the peer within the handshake timeout.
        case handshake
        /// Nothing at all from the peer for longer than the keepalive timeout.
        case keepalive(silentFor: UInt64)
    }

    /// The period of the checks: a quarter of the shortest timeout they
    /// watch (keepalive, handshake, payload progress), at least 5 ms.
    static func checkPeriod(keepaliveTimeout: Duration, handshakeTimeout: Duration,
                            payloadProgressTimeout: Duration) -> Duration {
        max(min(keepaliveTimeout, handshakeTimeout, payloadProgressTimeout) / 4, .milliseconds(5))
    }

    /// When the connection opened.
    let openedAt: UInt64
    /// Milliseconds between checks.
    let period: UInt64
    let handshakeTimeout: UInt64
    let keepaliveTimeout: UInt64
    /// Packets this connection may handle per loop turn.
    let packetsPerTurn: Int
    /// When bytes last arrived (or the peer's silence last stopped counting).
    private(set) var lastReceived: UInt64
    /// When the last check ran.
    private(set) var lastCheck: UInt64
    /// Packets it may still handle in the loop turn `packetTurn`.
    private(set) var packetsLeftThisTurn = 0
    private(set) var packetTurn: UInt64 = 0

    /// Timeouts in milliseconds (rounded up).
    init(now: UInt64, period: UInt64, handshakeTimeout: UInt64, keepaliveTimeout: UInt64, packetsPerTurn: Int) {
        (openedAt, lastReceived, lastCheck) = (now, now, now)
        self.period = period
        self.handshakeTimeout = handshakeTimeout
        self.keepaliveTimeout = keepaliveTimeout
        self.packetsPerTurn = packetsPerTurn
    }

    /// Bytes arrived at `now`; also how the peer's silence stops counting
    /// (while reading was paused, the silence is this side's doing).
    @inline(__always)
    mutating func received(at now: UInt64) { lastReceived = now }

    /// The periodic check at `now`: restarts the clocks when the check is
    /// long overdue (more than two periods), and says what to do.
    /// `readingPaused`: reading is paused for backpressure, and then the
    /// write timeout, not the keepalive timeout, watches the peer.
    mutating func check(now: UInt64, handshakeReceived: Bool, readingPaused: Bool) -> Verdict {
        var verdict = Verdict()
        if now &- lastCheck > 2 &* period {
            verdict.loopWasHeldUp = true
            lastReceived = now // what the peer sent meanwhile is still unread
        }
        lastCheck = now
        verdict.peerIdle = now - lastReceived >= period
        if !handshakeReceived, now - openedAt > handshakeTimeout {
            verdict.timeout = .handshake
        } else if !readingPaused, now - lastReceived > keepaliveTimeout {
            verdict.timeout = .keepalive(silentFor: now - lastReceived)
        }
        return verdict
    }

    // MARK: The share of a loop turn

    /// A read in loop turn `turn`: a new turn gives a new share of packets.
    @inline(__always)
    mutating func enterTurn(_ turn: UInt64) {
        if turn != packetTurn { (packetTurn, packetsLeftThisTurn) = (turn, packetsPerTurn) }
    }

    /// Counts a packet handled against this turn's share; whether the share has room for more.
    @inline(__always)
    mutating func countPacket() -> Bool {
        packetsLeftThisTurn &-= 1
        return packetsLeftThisTurn > 0
    }

    /// The connection had its share of this turn: the loop's others go first.
    var usedTurnShare: Bool { packetsLeftThisTurn <= 0 }
}
