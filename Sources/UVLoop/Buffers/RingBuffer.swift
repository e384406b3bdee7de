/// A byte ring with a power-of-two capacity: the per-connection read buffer.
///
/// Reads land directly in its free space (``writableRegion()`` hands libuv
/// the contiguous span up to the wrap point), the read handler is given the
/// readable bytes as a borrowed view, consumes what it can, and the rest
/// stays for the next read.
///
/// Indices run freely modulo `capacity` (`head` is the first readable byte,
/// `count` bytes are readable). When the ring empties, both go back to 0 so
/// that the next read starts at the front and frames rarely straddle the
/// wrap point. When a frame does straddle it, ``linearize()`` rotates the
/// readable bytes to the front once (no allocation when the free gap is
/// large enough, otherwise through a scratch buffer that is kept).
///
/// Not thread-safe: a ring belongs to one connection on one loop.
package final class RingBuffer {
    /// The storage; `nil` until first needed (idle rings cost nothing).
    /// Invariant: when non-nil it holds `capacity` bytes, owned by this ring.
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses; the dynamic checks cost ~40% of the instructions per call.
    @exclusivity(unchecked) private var storage: UnsafeMutableRawPointer?
    /// Current capacity in bytes, always a power of two.
    @exclusivity(unchecked) package private(set) var capacity: Int
    /// Capacity the ring starts with and shrinks back to.
    package let initialCapacity: Int
    /// Largest capacity ``grow(toFit:)`` may reach.
    package let maximumCapacity: Int
    /// Offset of the first readable byte.
    @exclusivity(unchecked) private var head = 0
    /// Number of readable bytes.
    @exclusivity(unchecked) package private(set) var readableCount = 0
    /// Scratch space for ``linearize()`` when the gap is too small; kept for reuse.
    @exclusivity(unchecked) private var scratch: UnsafeMutableRawPointer?
    @exclusivity(unchecked) private var scratchCapacity = 0

    /// Creates a ring that starts at `initialCapacity` bytes and may grow to
    /// `maximumCapacity` bytes; both are rounded up to powers of two.
    package init(initialCapacity: Int = 8192, maximumCapacity: Int = 4 << 20) {
        precondition(initialCapacity > 0, "RingBuffer: initialCapacity must be positive")
        let initial = RingBuffer.roundUpToPowerOfTwo(initialCapacity)
        self.initialCapacity = initial
        self.capacity = initial
        self.maximumCapacity = max(initial, RingBuffer.roundUpToPowerOfTwo(maximumCapacity))
    }

    deinit {
        storage?.deallocate()
        scratch?.deallocate()
    }

    static func roundUpToPowerOfTwo(_ n: Int) -> Int {
        n <= 1 ? 1 : 1 << (Int.bitWidth - (n - 1).leadingZeroBitCount)
    }

    /// True while the ring owns storage.
    package var hasStorage: Bool { storage != nil }

    /// Free bytes in the ring.
    package var writableCount: Int { capacity - readableCount }

    /// True when the readable bytes straddle the end of the storage.
    package var isWrapped: Bool { head + readableCount > capacity }

    private var base: UnsafeMutableRawPointer {
        if let storage { return storage }
        let s = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        storage = s
        return s
    }

    /// The contiguous free span where the next read should land (up to the
    /// wrap point or the first readable byte). Empty only when the ring is full.
    package func writableRegion() -> UnsafeMutableRawBufferPointer {
        if readableCount == 0 { head = 0 }
        let tail = (head + readableCount) & (capacity - 1)
        let end = tail >= head && readableCount < capacity ? capacity : head
        let length = readableCount == capacity ? 0 : end - tail
        return UnsafeMutableRawBufferPointer(start: base + tail, count: length)
    }

    /// Marks `n` bytes written into ``writableRegion()`` as readable.
    package func didWrite(_ n: Int) {
        precondition(n >= 0 && n <= writableCount, "RingBuffer.didWrite(\(n)) exceeds free space \(writableCount)")
        readableCount += n
    }

    /// Copies `bytes` into the ring (possibly across the wrap point).
    /// Returns how many bytes fitted.
    @discardableResult
    package func write(_ bytes: UnsafeRawBufferPointer) -> Int {
        var written = 0
        while written < bytes.count {
            let region = writableRegion()
            if region.isEmpty { break }
            let n = min(region.count, bytes.count - written)
            region.baseAddress!.copyMemory(from: bytes.baseAddress! + written, byteCount: n)
            didWrite(n)
            written += n
        }
        return written
    }

    /// The readable bytes as at most two contiguous views, in order. The
    /// views are valid until the ring is next mutated.
    package var readableRegions: (first: UnsafeRawBufferPointer, second: UnsafeRawBufferPointer) {
        guard readableCount > 0 else {
            return (UnsafeRawBufferPointer(start: nil, count: 0), UnsafeRawBufferPointer(start: nil, count: 0))
        }
        let p = base
        let firstLength = min(readableCount, capacity - head)
        return (UnsafeRawBufferPointer(start: p + head, count: firstLength),
                UnsafeRawBufferPointer(start: p, count: readableCount - firstLength))
    }

    /// The first contiguous run of readable bytes (all of them unless wrapped).
    package var firstReadableRegion: UnsafeRawBufferPointer { readableRegions.first }

    /// Drops the first `n` readable bytes.
    package func consume(_ n: Int) {
        precondition(n >= 0 && n <= readableCount, "RingBuffer.consume(\(n)) exceeds readable \(readableCount)")
        readableCount -= n
        head = readableCount == 0 ? 0 : (head + n) & (capacity - 1)
    }

    /// Copies `count` readable bytes starting `offset` bytes past the first
    /// one into `destination`, across the wrap point if needed.
    package func copyBytes(at offset: Int, count: Int, into destination: UnsafeMutableRawPointer) {
        precondition(offset >= 0 && count >= 0 && offset + count <= readableCount,
                     "RingBuffer.copyBytes(at: \(offset), count: \(count)) exceeds readable \(readableCount)")
        guard count > 0 else { return }
        let start = (head + offset) & (capacity - 1)
        let firstLength = min(count, capacity - start)
        destination.copyMemory(from: base + start, byteCount: firstLength)
        if firstLength < count {
            (destination + firstLength).copyMemory(from: base, byteCount: count - firstLength)
        }
    }

    /// Moves the readable bytes to the front of the storage so that they are
    /// contiguous. Does nothing unless they are wrapped.
    package func linearize() {
        guard isWrapped else { return }
        let p = base
        let a = capacity - head            // bytes at the end of storage, read first
        let b = readableCount - a          // bytes at the front, read second
        let gap = capacity - readableCount
        if a <= gap {
            // Slide the front part right past where the end part will go, then
            // copy the end part to the front: the two never overlap.
            (p + a).copyMemory(from: p, byteCount: b)        // memmove semantics
            p.copyMemory(from: p + head, byteCount: a)
        } else {
            if scratchCapacity < b {
                scratch?.deallocate()
                scratch = .allocate(byteCount: b, alignment: 16)
                scratchCapacity = b
            }
            scratch!.copyMemory(from: p, byteCount: b)
            p.copyMemory(from: p + head, byteCount: a) // overlapping: copyMemory is memmove
            (p + a).copyMemory(from: scratch!, byteCount: b)
        }
        head = 0
    }

    /// Doubles the capacity until at least `bytes` fit (keeping the readable
    /// bytes), up to ``maximumCapacity``. Returns false when `bytes` exceeds it.
    @discardableResult
    package func grow(toFit bytes: Int) -> Bool {
        guard bytes > capacity else { return true }
        guard bytes <= maximumCapacity else { return false }
        resize(to: RingBuffer.roundUpToPowerOfTwo(bytes))
        return true
    }

    /// Returns to ``initialCapacity`` if the ring grew and is now empty enough.
    package func shrinkIfPossible() {
        guard capacity > initialCapacity, readableCount <= initialCapacity / 2 else { return }
        resize(to: initialCapacity)
        if scratchCapacity > initialCapacity {
            scratch?.deallocate()
            scratch = nil
            scratchCapacity = 0
        }
    }

    /// Frees the storage while the ring is empty (an idle ring then costs no
    /// memory); it is allocated again on the next write.
    package func releaseStorageIfEmpty() {
        guard readableCount == 0 else { return }
        storage?.deallocate()
        storage = nil
        capacity = initialCapacity
        head = 0
    }

    /// Frees the storage and scratch space, dropping any unread bytes (for
    /// a closed connection, whose object may outlive it).
    package func releaseStorage() {
        readableCount = 0
        releaseStorageIfEmpty()
        scratch?.deallocate()
        scratch = nil
        scratchCapacity = 0
    }

    private func resize(to newCapacity: Int) {
        let newStorage = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        if let storage {
            copyBytes(at: 0, count: readableCount, into: newStorage)
            storage.deallocate()
        }
        storage = newStorage
        capacity = newCapacity
        head = 0
    }
}

