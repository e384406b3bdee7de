/// The in-flight table of outgoing calls, indexed by the 16-bit message id,
/// with a deadline queue.
///
/// - Storage is a flat array indexed by `id & mask`, allocated at the first
///   call (an endpoint that only answers owns none). It starts at 64 slots and
///   doubles only when the next id's slot is held by another live call (ids
///   are handed out in sequence, so live ids form a sliding window); at 65536
///   slots every id has its own. No dictionary, no hashing.
/// - Ids follow the reference: the counter starts at 65530 and wraps. A live
///   id is never reused: allocation skips live ids, and when all 65536 are
///   live it fails.
/// - Deadlines form an intrusive doubly linked list sorted by deadline. Most
///   calls use the same timeout, so insertion is at the tail in O(1); removal
///   on response is O(1). The endpoint keeps one timer armed for the head.
/// - A cancelled call (extension `cancel`) keeps its id reserved, out of the
///   deadline list, until the peer acknowledges the cancel
///   (``reserve(_:)`` / ``release(_:)``): only then can no late packet for it
///   arrive, so only then is the id handed out again.
struct CallTable<Completion> {
    /// A slot's bookkeeping: plain values only, so the per-call checks and the
    /// deadline list never copy (retain, or switch over) a completion.
    struct Slot {
        var deadline: UInt64 = 0
        var id: UInt16 = 0
        var isLive = false
        var closeOnError = true
        /// Cancelled, waiting for the peer's acknowledgement: the id stays taken.
        var reserved = false
        var prev: Int32 = -1
        var next: Int32 = -1
    }

    private var slots: [Slot] = []
    /// The completion of each live slot (same index), apart from `slots`.
    private var completions: [Completion?] = []
    private var mask = 0
    private let initialCapacity: Int
    private(set) var nextID: UInt16
    /// Number of live calls, reserved ids included.
    private(set) var count = 0
    /// Ids reserved by cancelled calls (part of `count`).
    private(set) var reservedCount = 0
    /// Calls in flight: live calls that are not reserved.
    var activeCount: Int { count - reservedCount }
    /// Head and tail ids of the deadline list, or -1.
    private(set) var head: Int32 = -1
    private var tail: Int32 = -1

    init(firstID: UInt16 = 65530, initialCapacity: Int = 64) {
        self.initialCapacity = initialCapacity
        nextID = firstID
    }

    /// True when all 65536 ids are in flight.
    var isExhausted: Bool { count == 65536 }

    /// Earliest deadline, if any call is live.
    var earliestDeadline: UInt64? { head >= 0 ? slots[Int(head) & mask].deadline : nil }

    @inline(__always) private func index(_ id: Int32) -> Int { Int(id) & mask }

    /// Whether `id` is a live call.
    @inline(__always)
    func isLive(_ id: UInt16) -> Bool {
        guard !slots.isEmpty else { return false }
        let i = Int(id) & mask
        return slots[i].isLive && slots[i].id == id
    }

    /// Whether `id` is a call waiting for its response (live, not cancelled).
    func isAwaited(_ id: UInt16) -> Bool {
        guard !slots.isEmpty else { return false }
        let i = Int(id) & mask
        return slots[i].isLive && slots[i].id == id && !slots[i].reserved
    }

    /// Registers a call and returns its id, or nil when every id is in flight.
    mutating func insert(_ completion: Completion, deadline: UInt64, closeOnError: Bool) -> UInt16? {
        guard count < 65536 else { return nil }
        if slots.isEmpty {
            slots = Array(repeating: Slot(), count: initialCapacity)
            completions = Array(repeating: nil, count: initialCapacity)
            mask = initialCapacity - 1
        }
        var id = nextID
        while isLive(id) { id &+= 1 } // never reuse a live id (bounded: count < 65536)
        while slots[Int(id) & mask].isLive { grow() }
        nextID = id &+ 1
        count += 1
        let i = Int(id) & mask
        completions[i] = completion
        slots[i] = Slot(deadline: deadline, id: id, isLive: true, closeOnError: closeOnError, reserved: false)
        linkSorted(Int32(id))
        return id
    }

    /// Removes a live call and returns its completion, or nil when `id` is
    /// not live (a late or unknown response). (Its closeOnError flag is
    /// ``closesOnError(_:)`` before.)
    mutating func remove(_ id: UInt16) -> Completion? {
        guard !slots.isEmpty else { return nil }
        let i = Int(id) & mask
        guard slots[i].isLive, slots[i].id == id, !slots[i].reserved else { return nil }
        unlink(Int32(id))
        slots[i].isLive = false
        count -= 1
        // Moved out, not copied: the table keeps no reference to it.
        return completions[i].take()
    }

    /// Ends live call `id` but keeps its id taken (a cancelled call, until the
    /// peer's acknowledgement); returns what ``remove(_:)`` returns.
    mutating func reserve(_ id: UInt16) -> Completion? {
        guard !slots.isEmpty else { return nil }
        let i = Int(id) & mask
        guard slots[i].isLive, slots[i].id == id, !slots[i].reserved else { return nil }
        unlink(Int32(id))
        slots[i].reserved = true
        reservedCount += 1
        return completions[i]
    }

    /// Frees reserved id `id`; false if it was not reserved.
    mutating func release(_ id: UInt16) -> Bool {
        guard !slots.isEmpty else { return false }
        let i = Int(id) & mask
        guard slots[i].isLive, slots[i].id == id, slots[i].reserved else { return false }
        slots[i] = Slot()
        completions[i] = nil
        count -= 1
        reservedCount -= 1
        return true
    }

    /// The closeOnError flag of live call `id`.
    func closesOnError(_ id: UInt16) -> Bool { slots[Int(id) & mask].closeOnError }

    /// Removes and returns the id of the earliest call if its deadline is at or before `now`.
    mutating func popExpired(now: UInt64) -> UInt16? {
        guard head >= 0, slots[index(head)].deadline <= now else { return nil }
        return UInt16(head)
    }

    /// Ids of every live call, in deadline order.
    func liveIDs() -> [UInt16] {
        var ids: [UInt16] = []
        ids.reserveCapacity(count)
        var cursor = head
        while cursor >= 0 {
            ids.append(UInt16(cursor))
            cursor = slots[index(cursor)].next
        }
        return ids
    }

    private mutating func linkSorted(_ id: Int32) {
        let deadline = slots[index(id)].deadline
        // Walk back from the tail past later deadlines (usually zero steps).
        var after = tail
        while after >= 0 && slots[index(after)].deadline > deadline { after = slots[index(after)].prev }
        slots[index(id)].prev = after
        if after >= 0 {
            let next = slots[index(after)].next
            slots[index(id)].next = next
            slots[index(after)].next = id
            if next >= 0 { slots[index(next)].prev = id } else { tail = id }
        } else {
            slots[index(id)].next = head
            if head >= 0 { slots[index(head)].prev = id } else { tail = id }
            head = id
        }
    }

    private mutating func unlink(_ id: Int32) {
        let i = index(id)
        let prev = slots[i].prev, next = slots[i].next
        if prev >= 0 { slots[index(prev)].next = next } else { head = next }
        if next >= 0 { slots[index(next)].prev = prev } else { tail = prev }
        slots[i].prev = -1
        slots[i].next = -1
    }

    private mutating func grow() {
        let newCapacity = slots.count * 2
        precondition(newCapacity <= 65536, "CallTable grew past 65536 slots")
        var newSlots = Array(repeating: Slot(), count: newCapacity)
        var newCompletions = [Completion?](repeating: nil, count: newCapacity)
        let newMask = newCapacity - 1
        for i in slots.indices where slots[i].isLive {
            let j = Int(slots[i].id) & newMask
            newSlots[j] = slots[i]
            newCompletions[j] = completions[i].take()
        }
        slots = newSlots
        completions = newCompletions
        mask = newMask
    }
}
