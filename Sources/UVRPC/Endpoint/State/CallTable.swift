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

    /// The slots and the completions, in memory this table alone writes: no
    /// copy-on-write check per access, no value witness per move. Kept
    /// alive (and freed) by `storage`; the pointers are its, cached here.
    // Safe: `slots` and `completions` point into `storage`'s buffers, which
    // live as long as `storage` does, and only this table (one value, kept in
    // place by its owner, never copied and then mutated twice) touches them.
    private var storage: Storage?
    private var slots: UnsafeMutablePointer<Slot>
    private var completions: UnsafeMutablePointer<Completion>
    private var capacity = 0
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

    /// The buffers: `capacity` slots, and a completion initialised for each live one.
    final class Storage {
        let capacity: Int
        let slots: UnsafeMutablePointer<Slot>
        let completions: UnsafeMutablePointer<Completion>

        init(capacity: Int) {
            self.capacity = capacity
            slots = .allocate(capacity: capacity)
            slots.initialize(repeating: Slot(), count: capacity)
            completions = .allocate(capacity: capacity)
        }

        deinit {
            for i in 0..<capacity where slots[i].isLive { (completions + i).deinitialize(count: 1) }
            completions.deallocate()
            slots.deinitialize(count: capacity)
            slots.deallocate()
        }
    }

    init(firstID: UInt16 = 65530, initialCapacity: Int = 64) {
        self.initialCapacity = initialCapacity
        nextID = firstID
        // No memory until the first call (an endpoint that only answers owns none);
        // `capacity` 0 keeps every access from these placeholders.
        slots = UnsafeMutablePointer(bitPattern: MemoryLayout<Slot>.alignment)!
        completions = UnsafeMutablePointer(bitPattern: max(MemoryLayout<Completion>.alignment, 1))!
    }

    /// True when all 65536 ids are in flight.
    var isExhausted: Bool { count == 65536 }

    /// Earliest deadline, if any call is live.
    var earliestDeadline: UInt64? { head >= 0 ? slots[Int(head) & mask].deadline : nil }

    @inline(__always) private func index(_ id: Int32) -> Int { Int(id) & mask }

    /// Whether `id` is a live call.
    @inline(__always)
    func isLive(_ id: UInt16) -> Bool {
        guard capacity > 0 else { return false }
        let slot = slots + (Int(id) & mask)
        return slot.pointee.isLive && slot.pointee.id == id
    }

    /// Whether `id` is a call waiting for its response (live, not cancelled).
    func isAwaited(_ id: UInt16) -> Bool {
        guard capacity > 0 else { return false }
        let slot = slots + (Int(id) & mask)
        return slot.pointee.isLive && slot.pointee.id == id && !slot.pointee.reserved
    }

    /// Registers a call and returns its id, or nil when every id is in flight.
    mutating func insert(_ completion: Completion, deadline: UInt64, closeOnError: Bool) -> UInt16? {
        guard count < 65536 else { return nil }
        if capacity == 0 { adopt(Storage(capacity: initialCapacity)) }
        var id = nextID
        while isLive(id) { id &+= 1 } // never reuse a live id (bounded: count < 65536)
        while slots[Int(id) & mask].isLive { grow() }
        nextID = id &+ 1
        count += 1
        let i = Int(id) & mask
        (completions + i).initialize(to: completion)
        slots[i] = Slot(deadline: deadline, id: id, isLive: true, closeOnError: closeOnError, reserved: false)
        linkSorted(Int32(id))
        return id
    }

    /// Removes a live call and returns its completion, or nil when `id` is
    /// not live (a late or unknown response). (Its closeOnError flag is
    /// ``closesOnError(_:)`` before.)
    mutating func remove(_ id: UInt16) -> Completion? {
        guard capacity > 0 else { return nil }
        let i = Int(id) & mask
        guard slots[i].isLive, slots[i].id == id, !slots[i].reserved else { return nil }
        unlink(Int32(id))
        slots[i].isLive = false
        count -= 1
        // Moved out, not copied: the table keeps no reference to it.
        return (completions + i).move()
    }

    /// Ends live call `id` but keeps its id taken (a cancelled call, until the
    /// peer's acknowledgement); returns what ``remove(_:)`` returns.
    mutating func reserve(_ id: UInt16) -> Completion? {
        guard capacity > 0 else { return nil }
        let i = Int(id) & mask
        guard slots[i].isLive, slots[i].id == id, !slots[i].reserved else { return nil }
        unlink(Int32(id))
        slots[i].reserved = true
        reservedCount += 1
        return completions[i]
    }

    /// Frees reserved id `id`; false if it was not reserved.
    mutating func release(_ id: UInt16) -> Bool {
        guard capacity > 0 else { return false }
        let i = Int(id) & mask
        guard slots[i].isLive, slots[i].id == id, slots[i].reserved else { return false }
        slots[i] = Slot()
        (completions + i).deinitialize(count: 1)
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

    /// Takes `new` as the table's memory.
    private mutating func adopt(_ new: Storage) {
        storage = new
        slots = new.slots
        completions = new.completions
        capacity = new.capacity
        mask = new.capacity - 1
    }

    private mutating func grow() {
        let newCapacity = capacity * 2
        precondition(newCapacity <= 65536, "CallTable grew past 65536 slots")
        let new = Storage(capacity: newCapacity)
        let newMask = newCapacity - 1
        for i in 0..<capacity where slots[i].isLive {
            let j = Int(slots[i].id) & newMask
            new.slots[j] = slots[i]
            (new.completions + j).moveInitialize(from: completions + i, count: 1)
            slots[i].isLive = false // moved: the old storage's deinit must not deinitialise it
        }
        adopt(new)
    }
}
