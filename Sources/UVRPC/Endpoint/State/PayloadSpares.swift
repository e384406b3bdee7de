/// Finished payload arrays kept by a loop for the next async requests, so
/// that an async handler's request costs no allocation in the steady state.
///
/// An async handler gets its message as an owned `[UInt8]`
/// (``RPCAsyncRequest/payload``): the bytes must outlive the read buffer
/// while the handler runs, and may outlive the handler. The loop copies each
/// message into an array taken from here (``copy(_:)``); when the handler
/// has returned and its answer is written, the worker gives the array back
/// (``recycle(_:)``). A spare carries only a message of its own size,
/// overwritten in place (emptying and refilling an array cost more than
/// malloc and free); one of another size is dropped. A handler that let the
/// array escape (stored it, sent it to another task) keeps its bytes: the
/// overwrite finds the buffer shared and copies on write, the one
/// allocation such a request costs, as every request did before (until
/// then the spare holds a reference to the handler's bytes).
///
/// Bounded per loop: at most ``maximumCount`` arrays, each of at most
/// ``maximumCapacity`` bytes, so about 600 KiB at worst with their headers
/// (bigger payloads are copied into arrays of their own and freed, as
/// before). Loop thread only.
final class PayloadSpares {
    /// Arrays kept at most.
    static let maximumCount = 1024
    /// The largest capacity of a kept array, in bytes.
    static let maximumCapacity = 512

    // @exclusivity(unchecked): touched on the loop thread only, never by overlapping accesses.
    @exclusivity(unchecked) private var spares: [[UInt8]] = []

    /// Arrays kept now (for tests).
    var count: Int { spares.count }

    /// The message's bytes in an owned array: a kept one of the same size
    /// when there is one, else a new one.
    @inline(__always)
    func copy(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        guard var spare = spares.popLast() else { return Array(bytes) }
        guard spare.count == bytes.count else { return Array(bytes) } // the spare is dropped: sizes vary
        // Copy-on-write: a spare the last handler kept a copy of gets a buffer of its own here.
        spare.withUnsafeMutableBytes { $0.copyMemory(from: bytes) }
        return spare
    }

    /// Keeps `payload` for a later message of the same size, when it is small
    /// and room is left.
    @inline(__always)
    func recycle(_ payload: inout [UInt8]) {
        guard payload.count > 0, payload.capacity <= Self.maximumCapacity, spares.count < Self.maximumCount else { return }
        var kept: [UInt8] = []
        swap(&kept, &payload) // moved, not copied
        spares.append(kept)
    }
}
