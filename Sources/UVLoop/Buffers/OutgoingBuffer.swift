/// A growable outgoing byte buffer with read and write indices.
/// (`@usableFromInline`: the frame fast path of ``Connection`` is inlined into protocol code.)
@usableFromInline
struct OutgoingBuffer {
    /// Capacity of a buffer's first allocation; it doubles as needed.
    static let initialCapacity = 512

    /// Invariant: `storage` holds `capacity` bytes owned by this buffer (freed by `release`).
    @usableFromInline var storage: UnsafeMutableRawPointer?
    @usableFromInline var capacity = 0
    @usableFromInline var readIndex = 0
    @usableFromInline var writeIndex = 0

    init() {}

    var readableCount: Int { writeIndex - readIndex }
    var allocatedBytes: Int { capacity }
    var hasStorage: Bool { storage != nil }
    var readPointer: UnsafeMutablePointer<CChar>? {
        storage.map { ($0 + readIndex).assumingMemoryBound(to: CChar.self) }
    }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        reserve(bytes.count)
        (storage! + writeIndex).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        writeIndex += bytes.count
    }

    /// Whether `count` more bytes fit without growing.
    @inlinable
    func hasRoom(for count: Int) -> Bool { writeIndex &+ count <= capacity }

    /// Appends a frame that fits (``hasRoom(for:)`` with `payload.count + 8`).
    @inlinable @inline(__always)
    mutating func appendInPlace(header: UInt64, headerCount: Int, payload: UnsafeRawBufferPointer) {
        // Safe: the caller checked that payload.count + 8 bytes fit at writeIndex.
        let p = storage.unsafelyUnwrapped + writeIndex
        p.storeBytes(of: header.littleEndian, as: UInt64.self) // unaligned store
        if payload.count > 0 { (p + headerCount).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
        writeIndex &+= headerCount &+ payload.count
    }

    /// Appends `headerCount` bytes of `header` (memory order) and `payload`.
    @inline(__always)
    mutating func append(header: UInt64, headerCount: Int, payload: UnsafeRawBufferPointer) {
        // 8 bytes of room for the header store, whatever `headerCount` is.
        let room = payload.count + 8
        if writeIndex + room > capacity { reserve(room) }
        // Safe: reserve left at least payload.count + 8 bytes at writeIndex.
        let p = storage! + writeIndex
        p.storeBytes(of: header.littleEndian, as: UInt64.self) // unaligned store
        if payload.count > 0 { (p + headerCount).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
        writeIndex += headerCount + payload.count
    }

    /// Room for `count` more bytes, to be filled and then committed with ``didAppend(_:)``.
    mutating func reserveForAppend(_ count: Int) -> UnsafeMutableRawPointer {
        reserve(count)
        return storage! + writeIndex
    }

    /// Commits `count` bytes written into the room ``reserveForAppend(_:)`` gave.
    mutating func didAppend(_ count: Int) { writeIndex += count }

    mutating func consume(_ n: Int) { readIndex += n }

    mutating func reset() { readIndex = 0; writeIndex = 0 }

    mutating func release() {
        storage?.deallocate()
        storage = nil
        capacity = 0
        reset()
    }

    @inline(never)
    private mutating func reserve(_ extra: Int) {
        if writeIndex + extra <= capacity { return }
        // Compact first; grow (doubling) only if that is not enough.
        if readIndex > 0 && readableCount + extra <= capacity {
            storage!.copyMemory(from: storage! + readIndex, byteCount: readableCount)
            writeIndex = readableCount
            readIndex = 0
            return
        }
        // Small at first: a connection with one small call at a time (most of
        // them, on a server with many connections) never needs more.
        var newCapacity = max(capacity * 2, OutgoingBuffer.initialCapacity)
        while newCapacity < readableCount + extra { newCapacity *= 2 }
        let newStorage = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        if let storage {
            newStorage.copyMemory(from: storage + readIndex, byteCount: readableCount)
            storage.deallocate()
        }
        writeIndex = readableCount
        readIndex = 0
        storage = newStorage
        capacity = newCapacity
    }
}
