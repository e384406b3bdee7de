/// Encodes efro.rpc packets straight into a caller's buffer (the
/// connection's outgoing buffer), choosing the short form for payloads up to
/// 65535 bytes and the *_BIG form above, as the reference does.
package enum PacketWriter {
    /// Bytes a MESSAGE or RESPONSE packet with `payloadCount` bytes takes.
    @inline(__always)
    package static func frameSize(payloadCount: Int) -> Int {
        (payloadCount > Wire.maximumShortPayload ? Wire.bigHeaderSize : Wire.shortHeaderSize) + payloadCount
    }

    /// The header of a MESSAGE (or RESPONSE when `isResponse`) with `id` and
    /// a payload of `payloadCount` bytes, as bytes in memory order in an
    /// integer (byte 0 lowest), and how many bytes it has (5 or 7).
    @inline(__always)
    package static func header(isResponse: Bool, id: UInt16, payloadCount n: Int) -> (bits: UInt64, count: Int) {
        if n <= Wire.maximumShortPayload {
            return (shortHeader(isResponse ? .response : .message, id: id, length: n), Wire.shortHeaderSize)
        }
        precondition(n <= Wire.maximumPayload, "payload of \(n) bytes exceeds the protocol's u32 length")
        return (wideHeader(isResponse ? .responseBig : .messageBig, id: id, length: n), Wire.bigHeaderSize)
    }

    /// `type`, u16 `id` (3 bytes, memory order in an integer): CANCEL, CANCEL_ACK.
    @inline(__always)
    static func idHeader(_ type: PacketType, id: UInt16) -> UInt64 {
        // Big-endian id in bytes 1-2: the byte-swapped id, one byte up.
        UInt64(type.rawValue) | UInt64(id.byteSwapped) << 8
    }

    /// `type`, u16 `id`, u16 `length` (5 bytes): MESSAGE, RESPONSE, ERROR, the CHUNKs.
    @inline(__always)
    static func shortHeader(_ type: PacketType, id: UInt16, length: Int) -> UInt64 {
        idHeader(type, id: id) | UInt64(UInt16(truncatingIfNeeded: length).byteSwapped) << 24
    }

    /// ERROR, u16 `id`, u8 `code`, u16 `length` (6 bytes).
    @inline(__always)
    static func errorHeader(id: UInt16, code: UInt8, length: Int) -> UInt64 {
        idHeader(.error, id: id) | UInt64(code) << 24 | UInt64(UInt16(truncatingIfNeeded: length).byteSwapped) << 32
    }

    /// `type`, u16 `id`, u32 `length` (7 bytes): the *_BIG packets and the STARTs.
    @inline(__always)
    static func wideHeader(_ type: PacketType, id: UInt16, length n: Int) -> UInt64 {
        idHeader(type, id: id) | UInt64(n >> 24 & 0xff) << 24 | UInt64(n >> 16 & 0xff) << 32
            | UInt64(n >> 8 & 0xff) << 40 | UInt64(n & 0xff) << 48
    }

    /// `type`, u32 `count` (5 bytes): CHUNK_ACK.
    @inline(__always)
    static func countHeader(_ type: PacketType, count n: Int) -> UInt64 {
        UInt64(type.rawValue) | UInt64(n >> 24 & 0xff) << 8 | UInt64(n >> 16 & 0xff) << 16
            | UInt64(n >> 8 & 0xff) << 24 | UInt64(n & 0xff) << 32
    }

    /// An extension packet as a new array: `type`, `id` and, by type, a
    /// u16 length and `payload` (the CHUNKs; ERROR has its `code` byte
    /// before the length), a u32 `total` (the
    /// STARTs) or nothing more (CANCEL, CANCEL_ACK; GOAWAY is the type
    /// byte alone; CHUNK_ACK carries `total` as its u32 count). For tests and
    /// tools; the endpoint encodes in place.
    package static func extensionPacket(_ type: PacketType, id: UInt16 = 0, total: Int = 0, code: UInt8 = 5,
                                        payload: [UInt8] = []) -> [UInt8] {
        let bits: UInt64, count: Int
        switch type {
        case .goAway: (bits, count) = (UInt64(type.rawValue), 1)
        case .chunkAcknowledged: (bits, count) = (countHeader(type, count: total), 5)
        case .cancel, .cancelAcknowledged: (bits, count) = (idHeader(type, id: id), 3)
        case .messageStart, .responseStart: (bits, count) = (wideHeader(type, id: id, length: total), 7)
        case .error: (bits, count) = (errorHeader(id: id, code: code, length: payload.count), 6)
        default: (bits, count) = (shortHeader(type, id: id, length: payload.count), 5)
        }
        return withUnsafeBytes(of: bits.littleEndian) { Array($0.prefix(count)) } + payload
    }

    /// Writes a MESSAGE (or RESPONSE when `isResponse`) with `id` and
    /// `payload` at `destination`, which must hold ``frameSize(payloadCount:)``
    /// bytes. Returns the bytes written.
    @inline(__always) @discardableResult
    package static func writeFrame(isResponse: Bool, id: UInt16, payload: UnsafeRawBufferPointer,
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
    package static func frame(isResponse: Bool, id: UInt16, payload: [UInt8]) -> [UInt8] {
        let size = frameSize(payloadCount: payload.count)
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            payload.withUnsafeBytes { p in
                initialized = writeFrame(isResponse: isResponse, id: id, payload: p, to: UnsafeMutableRawPointer(buffer.baseAddress!))
            }
        }
    }

    /// The one-byte KEEPALIVE packet.
    package static let keepalive: [UInt8] = [PacketType.keepalive.rawValue]
}
