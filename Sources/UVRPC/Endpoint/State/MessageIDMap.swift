/// A map from a message id to a value, for the messages in flight on one
/// connection, without hashing: an open-addressed table whose slot is the
/// id's low bits (a peer numbers its messages in order, so the ids in flight
/// at once rarely share low bits), probed linearly. A removed entry leaves a
/// marker (so a removal costs one step even inside a run of ids that sit in
/// their own slots), cleared when the table is rebuilt. A
/// `Dictionary<UInt16, _>` runs SipHash on every access: 8% of an async echo
/// server's CPU when it kept its running handlers there.
///
/// Empty, it holds no memory (an idle connection pays nothing); it is
/// rebuilt (doubling when more than a quarter full) once entries and
/// markers fill half of it; ``removeAll()`` gives its memory back.
struct MessageIDMap<Value> {
    private struct Entry {
        /// The message id, or ``empty`` or ``removed``.
        var id: Int32
        var value: Value?
    }

    private static var empty: Int32 { -1 }
    private static var removed: Int32 { -2 }

    private var entries: [Entry] = []
    private var mask = -1
    /// How many ids have a value.
    private(set) var count = 0
    /// Slots holding a removal marker.
    private var markers = 0

    var isEmpty: Bool { count == 0 }

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
        count = 0
        markers = 0
    }

    /// Every (id, value), in no particular order.
    var elements: [(id: UInt16, value: Value)] {
        entries.compactMap { entry in entry.id >= 0 ? (UInt16(entry.id), entry.value!) : nil }
    }

    @inline(__always)
    private func find(_ id: UInt16) -> Int? {
        guard count > 0 else { return nil }
        var slot = Int(id) & mask
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
        var slot = Int(id) & mask
        while entries[slot].id >= 0 { slot = (slot + 1) & mask }
        if entries[slot].id == Self.removed { markers -= 1 }
        entries[slot] = Entry(id: Int32(id), value: value)
        count += 1
    }

    /// Re-inserts every entry into a table without markers, twice as big when
    /// more than a quarter of this one holds values (at most 2^17 slots: ids are 16 bits).
    private mutating func rebuild() {
        let old = entries
        let capacity = max(16, (count + 1) * 4 > entries.count ? entries.count * 2 : entries.count)
        entries = Array(repeating: Entry(id: Self.empty, value: nil), count: capacity)
        mask = capacity - 1
        count = 0
        markers = 0
        for entry in old where entry.id >= 0 { insert(UInt16(entry.id), entry.value!) }
    }
}
