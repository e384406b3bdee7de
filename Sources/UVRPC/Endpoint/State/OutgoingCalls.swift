/// The calls an endpoint makes: those in flight (the ``CallTable``), those
/// waiting to be written (for the peer's handshake, or for writability),
/// and which deadline the endpoint's one timer is armed for. The endpoint
/// writes, completes and runs the timer (``RPCEndpoint+Sending.swift``).
///
/// - Deferred sends: big payloads and sends with metadata made before the
///   peer's handshake (whether it takes *_BIG packets or metadata is known
///   only from it); each keeps its deadline, and all still waiting start once
///   it arrives (`RPCEndpoint+Deferred.swift`).
/// - Blocked sends: async sends waiting for the connection to become
///   writable, oldest first from `blockedHead`, taken one by one.
/// - Deadlines: the timer is armed for the earliest deadline of the table
///   (``armEarliest(now:)``), and re-armed only when a new call's deadline
///   comes before it (``needsEarlierTimer(for:)``): completing a call never
///   touches the timer, and a timer that fires early simply re-arms.
struct OutgoingCalls {
    typealias Call = RPCEndpoint.PendingCall
    typealias Send = RPCEndpoint.QueuedSend

    /// The calls written (or being written in chunks) and not yet answered.
    private(set) var table = CallTable<Call>()
    /// Sends waiting for the peer's handshake.
    private(set) var deferred: [Send] = []
    /// Async sends waiting for writability, oldest first, from `blockedHead`.
    private(set) var blocked: [Send] = []
    private(set) var blockedHead = 0
    /// The deadline the timer is armed for (`UInt64.max`: none).
    private(set) var armedDeadline = UInt64.max

    /// Outgoing calls waiting for their response, written or not.
    var inFlightCount: Int { table.activeCount + deferred.count + (blocked.count - blockedHead) }

    /// No call in flight, none waiting to be written (for drain).
    var isIdle: Bool { table.activeCount == 0 && deferred.isEmpty && blockedHead == blocked.count }

    // MARK: The table

    /// Calls in flight in the table (reserved ids not counted).
    var activeCount: Int { table.activeCount }
    /// Ids held by cancelled calls until the peer's CANCEL_ACK.
    var reservedCount: Int { table.reservedCount }

    /// Registers a call; its id, or nil when every id is in flight.
    @inline(__always)
    mutating func insert(_ call: Call, deadline: UInt64, closeOnError: Bool) -> UInt16? {
        table.insert(call, deadline: deadline, closeOnError: closeOnError)
    }

    /// Takes call `id` out of the table; nil if it is not in flight.
    @inline(__always)
    mutating func remove(_ id: UInt16) -> Call? { table.remove(id) }

    /// Ends call `id` but keeps its id until the peer acknowledges the cancel.
    mutating func reserve(_ id: UInt16) -> Call? { table.reserve(id) }

    /// Frees the reserved id `id`; false if it was not reserved.
    mutating func release(_ id: UInt16) -> Bool { table.release(id) }

    /// Whether a response for `id` is awaited.
    func isAwaited(_ id: UInt16) -> Bool { table.isAwaited(id) }

    /// Every live call's id, in deadline order.
    func liveIDs() -> [UInt16] { table.liveIDs() }

    // MARK: Deadlines

    /// Whether a call with `deadline` needs the timer armed sooner than it is.
    @inline(__always)
    func needsEarlierTimer(for deadline: UInt64) -> Bool { deadline < armedDeadline }

    /// Arms for the earliest deadline: returns the milliseconds to start the
    /// timer with (0 when it has passed), or nil when no call has a deadline
    /// (what was armed is then left as it is).
    mutating func armEarliest(now: UInt64) -> UInt64? {
        guard let earliest = table.earliestDeadline else { return nil }
        armedDeadline = earliest
        return earliest > now ? earliest - now : 0
    }

    /// The timer fired: nothing is armed.
    mutating func deadlineTimerFired() { armedDeadline = .max }

    /// The earliest call whose deadline is at or before `now`, and whether
    /// it closes the endpoint when it fails; it stays in the table (the
    /// caller removes or reserves it).
    mutating func nextExpired(now: UInt64) -> (id: UInt16, closesOnError: Bool)? {
        guard let id = table.popExpired(now: now) else { return nil }
        return (id, table.closesOnError(id))
    }

    // MARK: Sends waiting to be written

    /// A send waits for the peer's handshake.
    mutating func deferUntilHandshake(_ send: Send) { deferred.append(send) }

    /// Takes every send that waited for the handshake, oldest first.
    mutating func takeDeferred() -> [Send] {
        let sends = deferred
        deferred.removeAll()
        return sends
    }

    /// Takes the sends that waited for the handshake until `now` or past their deadline.
    mutating func takeDeferred(expiredBy now: UInt64) -> [Send] {
        let expired = deferred.filter { ($0.deadline ?? .max) <= now }
        if !expired.isEmpty { deferred.removeAll { ($0.deadline ?? .max) <= now } }
        return expired
    }

    /// The earliest deadline of the sends waiting for the handshake, if any.
    var earliestDeferredDeadline: UInt64? { deferred.lazy.compactMap(\.deadline).min() }

    /// Forgets the deferred send of async `call` (it was cancelled).
    mutating func dropDeferred(_ call: AsyncCall) {
        deferred.removeAll { if case .async(let c) = $0.completion { return c === call } else { return false } }
    }

    /// Whether async sends wait for writability (a new one queues behind them).
    var hasBlockedSends: Bool { blockedHead < blocked.count }

    /// An async send waits for writability.
    mutating func block(_ send: Send) { blocked.append(send) }

    /// Takes the oldest blocked send, if any. Its slot lets go of the
    /// payload at once (the caller's bytes are held no longer than needed),
    /// and the queue's storage is reset once it is drained.
    mutating func takeBlocked() -> Send? {
        guard blockedHead < blocked.count else { return nil }
        let send = blocked[blockedHead]
        blocked[blockedHead].payload = []
        blockedHead += 1
        if blockedHead == blocked.count {
            blocked.removeAll(keepingCapacity: blocked.count <= 64)
            blockedHead = 0
        }
        return send
    }

    /// Takes every send not yet written (deferred, then blocked): the peer
    /// is going away or the endpoint is closing, and they fail.
    mutating func takeUnsent() -> [Send] {
        let waiting = deferred + blocked[blockedHead...]
        deferred.removeAll()
        blocked.removeAll()
        blockedHead = 0
        return waiting
    }
}
