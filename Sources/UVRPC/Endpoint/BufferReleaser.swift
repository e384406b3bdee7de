import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Frees big buffers off the loop thread. Freeing tens of MiB returns them
/// to the kernel (`munmap`), which takes milliseconds: done on the loop, it
/// would stall every connection of the loop that long after each big
/// payload. Small buffers are freed at once (that is cheaper than a hop).
enum BufferReleaser {
    /// Buffers at least this big are freed off the loop.
    static let threshold = 1 << 20
    private static let queue = DispatchQueue(label: "uvrpc.buffer-release", qos: .utility)

    /// Deallocates `buffer`, off the loop when it is big.
    static func deallocate(_ buffer: UnsafeMutableRawBufferPointer) {
        guard buffer.count >= threshold else { return buffer.deallocate() }
        // Safe to send: the caller gives up the buffer; nothing else refers to it.
        let address = UInt(bitPattern: buffer.baseAddress)
        queue.async { UnsafeMutableRawPointer(bitPattern: address)?.deallocate() }
    }

    /// Frees `buffer`, which came from `malloc` (``PayloadMemory``), off the loop when it is big.
    static func free(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress else { return }
        guard buffer.count >= threshold else { return Glibc.free(base) }
        // Safe to send: the caller gives up the buffer; nothing else refers to it.
        let address = UInt(bitPattern: base)
        queue.async { Glibc.free(UnsafeMutableRawPointer(bitPattern: address)) }
    }

    /// Drops `bytes`, so that its storage (if this was the last reference) is freed off the loop when it is big.
    static func release(_ bytes: consuming [UInt8]) {
        guard bytes.count >= threshold else { return }
        let moved = bytes
        queue.async { _ = moved.count }
    }
}
