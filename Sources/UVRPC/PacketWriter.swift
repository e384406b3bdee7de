/// Encodes efro.rpc packets straight into a caller's buffer (the
/// connection's outgoing buffer), choosing the short form for payloads up to
/// 65535 bytes and the *_BIG form above, as the reference does.
public enum PacketWriter {
    /// Bytes a MESSAGE or RESPONSE packet with `payloadCount` bytes takes.
    @inline(__always)
    public static func frameSize(payloadCount: Int) -> Int {
        (payloadCount > Wire.maximumShortPayload ? Wire.bigHeaderSize : Wire.shortHeaderSize) + payloadCount
    }

    /// The header of a MESSAGE (or RESPONSE when `isResponse`) with `id` and
    /// a payload of `payloadCount` bytes, as bytes in memory order in an
    /// integer (byte 0 lowest), and how many bytes it has (5 or 7).
    @inline(__always)
    public static func header(isResponse: Bool, id: UInt16, payloadCount n: Int) -> (bits: UInt64, count: Int) {
        // Big-endian id in bytes 1-2: the byte-swapped id, one byte up.
        let idBits = UInt64(id.byteSwapped) << 8
        if n <= Wire.maximumShortPayload {
            let type = isResponse ? PacketType.response.rawValue : PacketType.message.rawValue
            return (UInt64(type) | idBits | UInt64(UInt16(truncatingIfNeeded: n).byteSwapped) << 24, Wire.shortHeaderSize)
        }
        precondition(n <= Wire.maximumPayload, "payload of \(n) bytes exceeds the protocol's u32 length")
        do {
            let type = isResponse ? PacketType.responseBig.rawValue : PacketType.messageBig.rawValue
            let length = UInt64(n >> 24 & 0xff) << 24 | UInt64(n >> 16 & 0xff) << 32
                | UInt64(n >> 8 & 0xff) << 40 | UInt64(n & 0xff) << 48
            return (UInt64(type) | idBits | length, Wire.bigHeaderSize)
        }
    }

    /// Writes a MESSAGE (or RESPONSE when `isResponse`) with `id` and
    /// `payload` at `destination`, which must hold ``frameSize(payloadCount:)``
    /// bytes. Returns the bytes written.
    @inline(__always) @discardableResult
    public static func writeFrame(isResponse: Bool, id: UInt16, payload: UnsafeRawBufferPointer,
                                  to destination: UnsafeMutableRawPointer) -> Int {
        let header = header(isResponse: isResponse, id: id, payloadCount: payload.count)
        withUnsafeBytes(of: header.bits.littleEndian) { bytes in
            destination.copyMemory(from: bytes.baseAddress!, byteCount: header.count)
        }
        if payload.count > 0 { (destination + header.count).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
        return header.count + payload.count
    }

    /// A MESSAGE / RESPONSE packet as a new array (for tests and tools; the
    /// endpoint encodes in place).
    public static func frame(isResponse: Bool, id: UInt16, payload: [UInt8]) -> [UInt8] {
        let size = frameSize(payloadCount: payload.count)
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            payload.withUnsafeBytes { p in
                initialized = writeFrame(isResponse: isResponse, id: id, payload: p, to: UnsafeMutableRawPointer(buffer.baseAddress!))
            }
        }
    }

    /// The one-byte KEEPALIVE packet.
    public static let keepalive: [UInt8] = [PacketType.keepalive.rawValue]
}
