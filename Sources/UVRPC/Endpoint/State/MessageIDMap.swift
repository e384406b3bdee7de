/// A map from a message id to a value, for the messages in flight on one
/// connection, without SipHash: an open-addressed table, probed linearly,
/// whose first slot for an id is a multiplicative hash of it (``home(_:)``).
/// A removed entry leaves a marker (so a removal costs one step even inside
/// a run), cleared when the table is rebuilt. A
/// `Dictionary<UInt16, _>` runs SipHash on every access: 8% of an async echo
/// server's CPU when it kept its running handlers there.
///
/// Until its first use it holds no memory (an idle connection pays nothing);
/// it is rebuilt (doubling when more than a quarter full, up to 2^18 slots,
/// where every possible id fills at most a quarter) once entries and
/// markers fill half of it. It never shrinks; ``removeAll()`` (at close)
/// gives its memory back.
struct MessageIDMap<Value> {
    private struct Entry {
        /// The message id, or ``empty`` or ``removed``.
        var id: Int32
        var value: Value?
    }

    /// The most slots: 2^18, four per possible id (ids are 16 bits), so the
    /// table stays at most a quarter full and rebuilds stay rare.
    static var maximumCapacity: Int { 1 << 18 }
    private static var empty: Int32 { -1 }
    private static var removed: Int32 { -2 }

    private var entries: [Entry] = []
    private var mask = -1
    /// 32 minus the table's size in bits, for ``home(_:)``.
    private var shift: UInt32 = 32
    /// How many ids have a value.
    private(set) var count = 0
    /// Slots holding a removal marker.
    private var markers = 0

    var isEmpty: Bool { count == 0 }

    /// Slots in the table (for tests).
    var capacity: Int { entries.count }

    /// The value of `id`; setting nil removes it.
    subscript(id: UInt16) -> Value? {
        get {
            guard let slot = find(id) else { return nil }
            return entries[slot].value
        }
        set {
            if let newValue { insert(id, newValue) } else { removeValue(forKey: id) }
        }
    }

    /// Removes `id`'s value and returns it (nil when there was none).
    @discardableResult
    mutating func removeValue(forKey id: UInt16) -> Value? {
        guard let slot = find(id) else { return nil }
        let removed = entries[slot].value
        count -= 1
        if entries[(slot + 1) & mask].id == Self.empty {
            entries[slot] = Entry(id: Self.empty, value: nil) // ends its run: no marker needed
        } else {
            entries[slot] = Entry(id: Self.removed, value: nil)
            markers += 1
        }
        return removed
    }

    /// Forgets every id and gives the memory back.
    mutating func removeAll() {
        entries = []
        mask = -1
        shift = 32
        count = 0
        markers = 0
    }

    /// Every (id, value), in no particular order.
    var elements: [(id: UInt16, value: Value)] {
        entries.compactMap { entry in entry.id >= 0 ? (UInt16(entry.id), entry.value!) : nil }
    }

    /// Where `id` goes first: its top bits after a multiplication by 2^32
    /// over the golden ratio (Fibonacci hashing: one multiply, no SipHash).
    /// Ids in order land spread out, so the runs probed stay short even when
    /// thousands are live and ids wrap around (with the ids' low bits as the
    /// slot, live ids in order formed one run that every new id crossing it
    /// scanned to its end).
    @inline(__always)
    func home(_ id: UInt16) -> Int {
        Int(truncatingIfNeeded: (UInt32(id) &* 0x9E37_79B9) >> shift)
    }

    @inline(__always)
    private func find(_ id: UInt16) -> Int? {
        guard count > 0 else { return nil }
        var slot = home(id)
        while true {
            let found = entries[slot].id
            if found == Int32(id) { return slot }
            if found == Self.empty { return nil }
            slot = (slot + 1) & mask
        }
    }

    private mutating func insert(_ id: UInt16, _ value: Value) {
        if let slot = find(id) {
            entries[slot].value = value
            return
        }
        if (count + markers + 1) * 2 > entries.count { rebuild() }
        var slot = home(id)
        while entries[slot].id >= 0 { slot = (slot + 1) & mask }
        if entries[slot].id == Self.removed { markers -= 1 }
        entries[slot] = Entry(id: Int32(id), value: value)
        count += 1
    }

    /// Re-inserts every entry into a table without markers, twice as big when
    /// more than a quarter of this one holds values, up to ``maximumCapacity``.
    private mutating func rebuild() {
        let old = entries
        let grows = (count + 1) * 4 > entries.count && entries.count < Self.maximumCapacity
        let capacity = max(16, grows ? entries.count * 2 : entries.count)
        entries = Array(repeating: Entry(id: Self.empty, value: nil), count: capacity)
        mask = capacity - 1
        shift = UInt32(32 - capacity.trailingZeroBitCount)
        count = 0
        markers = 0
        for entry in old where entry.id >= 0 { insert(UInt16(entry.id), entry.value!) }
    }
}
