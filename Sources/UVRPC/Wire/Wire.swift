/// The efro.rpc wire format, protocol version 2 (see Docs/PROTOCOL.md).
///
/// A stream starts with a handshake (`u32` big-endian length + UTF-8 JSON
/// `{"p":2,"k":10.73}`), then carries packets, each starting with a one-byte
/// `PacketType`. All integers are unsigned big-endian.
public enum Wire {
    /// The protocol version this library speaks and announces.
    public static let protocolVersion = 2
    /// Largest payload of the short MESSAGE / RESPONSE forms (u16 length).
    public static let maximumShortPayload = 65535
    /// Header bytes of MESSAGE / RESPONSE: type, u16 id, u16 length.
    package static let shortHeaderSize = 5
    /// Header bytes of MESSAGE_BIG / RESPONSE_BIG: type, u16 id, u32 length.
    package static let bigHeaderSize = 7
    /// Largest payload any packet can declare (u32 length).
    public static let maximumPayload = Int(UInt32.max)
    /// Largest reason an ERROR packet may carry, in UTF-8 bytes (longer
    /// reasons are cut by the sender; a longer declared length is a protocol violation).
    public static let maximumErrorReason = 1024
    /// Chunked transfers each side may have in progress at once, per kind
    /// (messages, responses); a sender starts more only as earlier ones end.
    public static let maximumTransfers = 4
    /// Largest METADATA packet body (its entries), in bytes (extension
    /// `meta`): a call's metadata must fit, and a longer declared length is a
    /// protocol violation.
    public static let maximumMetadata = 4096
}

/// The first byte of every packet after the handshake.
package enum PacketType: UInt8, Sendable, CustomStringConvertible {
    /// Never valid after the handshake: a second handshake is a protocol error.
    case handshake = 0
    /// Liveness only; the packet is this one byte.
    case keepalive = 1
    /// u16 id, u16 length, payload.
    case message = 2
    /// u16 id, u16 length, payload: the answer to MESSAGE `id`.
    case response = 3
    /// u16 id, u32 length, payload (payloads over 65535 bytes).
    case messageBig = 4
    /// u16 id, u32 length, payload (payloads over 65535 bytes).
    case responseBig = 5
    /// Extension `error`: u16 id, u16 length, UTF-8 reason: the answer to
    /// MESSAGE `id` when its handler failed.
    case error = 6
    /// Extension `cancel`: u16 id of the sender's own call, which it gave up.
    case cancel = 7
    /// Extension `cancel`: u16 id of the peer's cancelled call: nothing more
    /// will be sent for it, and the peer may reuse the id.
    case cancelAcknowledged = 8
    /// Extension `chunk`: u16 id, u32 total length: a chunked message begins.
    case messageStart = 9
    /// Extension `chunk`: u16 id, u32 total length: a chunked response begins.
    case responseStart = 10
    /// Extension `chunk`: u16 id, u16 length, the next bytes of message `id`.
    case messageChunk = 11
    /// Extension `chunk`: u16 id, u16 length, the next bytes of response `id`.
    case responseChunk = 12
    /// Extension `goaway`: the sender is draining; start no new call on this connection.
    case goAway = 13
    /// Extension `chunk`: u32 count: the sender has read this many more
    /// bytes of CHUNK payloads (flow control: the peer keeps the bytes it
    /// wrote and saw unacknowledged under a window).
    case chunkAcknowledged = 14
    /// Extension `meta`: u16 id, u16 length, entries (`u8` key length, key,
    /// `u16` value length, value): the metadata of message `id`, written
    /// right before its MESSAGE, MESSAGE_BIG or MESSAGE_START.
    case metadata = 15

    package var description: String {
        switch self {
        case .handshake: return "HANDSHAKE"
        case .keepalive: return "KEEPALIVE"
        case .message: return "MESSAGE"
        case .response: return "RESPONSE"
        case .messageBig: return "MESSAGE_BIG"
        case .responseBig: return "RESPONSE_BIG"
        case .error: return "ERROR"
        case .cancel: return "CANCEL"
        case .cancelAcknowledged: return "CANCEL_ACK"
        case .messageStart: return "MESSAGE_START"
        case .responseStart: return "RESPONSE_START"
        case .messageChunk: return "MESSAGE_CHUNK"
        case .responseChunk: return "RESPONSE_CHUNK"
        case .goAway: return "GOAWAY"
        case .chunkAcknowledged: return "CHUNK_ACK"
        case .metadata: return "METADATA"
        }
    }
}

/// What a side announces in its handshake: its protocol version (`p`),
/// keepalive interval in seconds (`k`) and, UVRPC additions, the
/// extensions it speaks (`x`) and the largest payload it takes (`m`), both
/// absent when it announces no extension.
public struct PeerInfo: Equatable, Sendable, CustomStringConvertible {
    /// The sender's protocol version (`p`).
    public var protocolVersion: Int
    /// The sender's keepalive interval in seconds (`k`).
    public var keepaliveInterval: Double
    /// The extensions the sender announced (`x`); empty for an efro.rpc peer.
    public var extensions: RPCExtensions
    /// The largest payload the sender takes (`m`, its
    /// ``RPCEndpoint/Configuration/maximumPayloadSize``); nil for an efro.rpc
    /// peer, which announces none. A call over it fails before it is sent.
    public var maximumPayloadSize: Int?

    /// Creates peer info; `protocolVersion` defaults to this library's.
    public init(protocolVersion: Int = Wire.protocolVersion, keepaliveInterval: Double, extensions: RPCExtensions = [],
                maximumPayloadSize: Int? = nil) {
        self.protocolVersion = protocolVersion
        self.keepaliveInterval = keepaliveInterval
        self.extensions = extensions
        self.maximumPayloadSize = maximumPayloadSize
    }

    public var description: String {
        "protocol \(protocolVersion), keepalive \(keepaliveInterval) s" + (extensions.isEmpty ? "" : ", extensions \(extensions)")
    }

    /// True when the peer can receive payloads over 65535 bytes (*_BIG packets):
    /// protocol 2 and newer.
    public var acceptsBigPayloads: Bool { protocolVersion >= 2 }

    /// The compact JSON the reference writes, `p` first: `{"p":2,"k":10.73}`.
    /// Whole intervals keep their `.0` (`5.0`), as Python's `json.dumps` does.
    /// Extensions follow as a third key, `"x":["error",...]`, and the largest
    /// payload as a fourth, `"m":67108864`, only when there are extensions
    /// (without, the handshake is byte for byte the reference's).
    package var json: String {
        var x = extensions.isEmpty ? "" : ",\"x\":\(extensions)"
        if !extensions.isEmpty, let m = maximumPayloadSize { x += ",\"m\":\(m)" }
        return "{\"p\":\(protocolVersion),\"k\":\(PeerInfo.pythonFloat(keepaliveInterval))\(x)}"
    }

    /// Python's `repr(float)`: the shortest round-tripping digits, with `.0`
    /// for whole numbers and exponents as `1e-05` / `1e+16`.
    static func pythonFloat(_ value: Double) -> String {
        // Swift's description is also shortest-round-trip; the two differ only in
        // the exponent form (Swift "1e-05" matches; large numbers need "+").
        let text = "\(value)"
        if let e = text.firstIndex(of: "e") {
            let mantissa = text[..<e]
            var exponent = String(text[text.index(after: e)...])
            var sign = "+"
            if exponent.hasPrefix("-") { sign = "-"; exponent.removeFirst() }
            else if exponent.hasPrefix("+") { exponent.removeFirst() }
            if exponent.count < 2 { exponent = "0" + exponent }
            let m = mantissa.hasSuffix(".0") ? String(mantissa.dropLast(2)) : String(mantissa)
            return "\(m)e\(sign)\(exponent)"
        }
        return text
    }

    /// The full handshake: u32 big-endian length, then ``json``.
    package var handshakeBytes: [UInt8] {
        let body = Array(json.utf8)
        let n = UInt32(body.count)
        return [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + body
    }

    /// Reads a handshake body liberally: any valid JSON object, keys in any
    /// order, whitespace, unknown keys ignored, `k` as an integer or a float.
    /// `x` is read as a list of extension names; names this library does not
    /// know, and an `x` that is not a list of strings, are ignored.
    /// - Throws: a ``ProtocolViolation`` (malformed handshake) saying what is wrong.
    package init(json bytes: UnsafeRawBufferPointer) throws(ProtocolViolation) {
        var parser = JSONScanner(bytes)
        let (p, k, x, m) = try parser.parseHandshakeObject()
        guard let p else { throw .malformedHandshake("missing \"p\" (protocol version)") }
        guard let k else { throw .malformedHandshake("missing \"k\" (keepalive interval)") }
        guard let version = Int(exactly: p), version >= 0 else {
            throw .malformedHandshake("\"p\" is \(p), not a protocol version")
        }
        guard k.isFinite, k >= 0 else { throw .malformedHandshake("\"k\" is \(k), not a keepalive interval") }
        // An `m` that is not a whole number within the protocol's limit is ignored, like unknown keys.
        let limit = m.flatMap { Int(exactly: $0) }.flatMap { $0 <= Wire.maximumPayload ? $0 : nil }
        self.init(protocolVersion: version, keepaliveInterval: k, extensions: x, maximumPayloadSize: limit)
    }
}

/// A way in which the peer broke the protocol; each closes that connection.
public struct ProtocolViolation: Error, Equatable, Sendable, CustomStringConvertible {
    /// What happened. Package-internal, so that a new kind never breaks a
    /// user's exhaustive `switch`; ``description`` says it.
    package enum Kind: Equatable, Sendable {
        /// A packet type byte that is not 0-5, at this offset of the stream.
        case unknownPacketType(UInt8, streamOffset: UInt64)
        /// A HANDSHAKE type byte after the handshake.
        case secondHandshake(streamOffset: UInt64)
        /// The handshake is not a JSON object with numeric `p` and `k`.
        case malformedHandshake(String)
        /// The handshake declares more bytes than the limit.
        case handshakeTooLarge(declared: UInt32, limit: Int)
        /// A packet declares a payload larger than the configured maximum.
        case payloadTooLarge(declared: Int, limit: Int, packet: PacketType)
        /// An ERROR packet declares a reason longer than ``Wire/maximumErrorReason``.
        case errorReasonTooLong(declared: Int, limit: Int)
        /// A CHUNK for an id whose transfer was never started (or already ended).
        case chunkNotStarted(packet: PacketType, id: UInt16)
        /// A CHUNK that goes past the total length its transfer announced.
        case chunkPastEnd(packet: PacketType, id: UInt16, total: Int, through: Int)
        /// A START for an id whose transfer is still in progress.
        case transferAlreadyStarted(packet: PacketType, id: UInt16)
        /// A START while ``Wire/maximumTransfers`` transfers of its kind are in progress.
        case tooManyTransfers(packet: PacketType, limit: Int)
        /// A CANCEL_ACK for an id this side never cancelled.
        case unexpectedCancelAcknowledgement(id: UInt16)
        /// A CANCEL when every message received was cancelled already (more
        /// cancels than messages: each one would make this side write an acknowledgement).
        case unexpectedCancel(id: UInt16)
        /// A CHUNK_ACK for more chunk bytes than this side sent and had not seen acknowledged.
        case excessChunkAcknowledgement(acknowledged: Int, outstanding: Int)
        /// A METADATA packet declares more than ``Wire/maximumMetadata`` bytes.
        case metadataTooLong(declared: Int, limit: Int)
        /// A METADATA packet whose entries do not parse (why).
        case malformedMetadata(id: UInt16, String)
        /// A METADATA packet for an id whose metadata still waits for its message,
        /// or while as many wait as messages may be in transfer.
        case unexpectedMetadata(id: UInt16, waiting: Int)
    }

    /// What happened.
    package let kind: Kind

    package init(_ kind: Kind) { self.kind = kind }

    public var description: String {
        switch kind {
        case .unknownPacketType(let b, let off):
            return "unknown packet type byte \(b) (0x\(String(b, radix: 16))) at stream offset \(off)"
        case .secondHandshake(let off): return "second handshake (type byte 0) at stream offset \(off)"
        case .malformedHandshake(let why): return "malformed handshake: \(why)"
        case .handshakeTooLarge(let n, let limit): return "handshake declares \(n) bytes, over the limit of \(limit)"
        case .payloadTooLarge(let n, let limit, let type):
            return "\(type) declares a payload of \(n) bytes, over the maximum of \(limit)"
        case .errorReasonTooLong(let n, let limit):
            return "ERROR declares a reason of \(n) bytes, over the limit of \(limit)"
        case .chunkNotStarted(let type, let id):
            return "\(type) for id \(id), whose transfer was never started"
        case .chunkPastEnd(let type, let id, let total, let through):
            return "\(type) for id \(id) runs to byte \(through) of a transfer announced as \(total) bytes"
        case .transferAlreadyStarted(let type, let id):
            return "\(type) for id \(id), whose transfer is still in progress"
        case .tooManyTransfers(let type, let limit):
            return "\(type) while \(limit) transfers of its kind are already in progress"
        case .unexpectedCancelAcknowledgement(let id):
            return "CANCEL_ACK for id \(id), which this side never cancelled"
        case .unexpectedCancel(let id):
            return "CANCEL for id \(id) when every message received was cancelled already"
        case .excessChunkAcknowledgement(let n, let outstanding):
            return "CHUNK_ACK for \(n) bytes while \(outstanding) were unacknowledged"
        case .metadataTooLong(let n, let limit):
            return "METADATA declares \(n) bytes, over the limit of \(limit)"
        case .malformedMetadata(let id, let why):
            return "malformed METADATA for id \(id): \(why)"
        case .unexpectedMetadata(let id, let waiting):
            return "METADATA for id \(id) while \(waiting) waited for their messages (one per id, at most \(Wire.maximumTransfers + 1))"
        }
    }
}

// The ways this library makes them, named as the kinds are.
extension ProtocolViolation {
    package static func unknownPacketType(_ v0: UInt8, streamOffset: UInt64) -> ProtocolViolation { ProtocolViolation(.unknownPacketType(v0, streamOffset: streamOffset)) }
    package static func secondHandshake(streamOffset: UInt64) -> ProtocolViolation { ProtocolViolation(.secondHandshake(streamOffset: streamOffset)) }
    package static func malformedHandshake(_ v0: String) -> ProtocolViolation { ProtocolViolation(.malformedHandshake(v0)) }
    package static func handshakeTooLarge(declared: UInt32, limit: Int) -> ProtocolViolation { ProtocolViolation(.handshakeTooLarge(declared: declared, limit: limit)) }
    package static func payloadTooLarge(declared: Int, limit: Int, packet: PacketType) -> ProtocolViolation { ProtocolViolation(.payloadTooLarge(declared: declared, limit: limit, packet: packet)) }
    package static func errorReasonTooLong(declared: Int, limit: Int) -> ProtocolViolation { ProtocolViolation(.errorReasonTooLong(declared: declared, limit: limit)) }
    package static func chunkNotStarted(packet: PacketType, id: UInt16) -> ProtocolViolation { ProtocolViolation(.chunkNotStarted(packet: packet, id: id)) }
    package static func chunkPastEnd(packet: PacketType, id: UInt16, total: Int, through: Int) -> ProtocolViolation { ProtocolViolation(.chunkPastEnd(packet: packet, id: id, total: total, through: through)) }
    package static func transferAlreadyStarted(packet: PacketType, id: UInt16) -> ProtocolViolation { ProtocolViolation(.transferAlreadyStarted(packet: packet, id: id)) }
    package static func tooManyTransfers(packet: PacketType, limit: Int) -> ProtocolViolation { ProtocolViolation(.tooManyTransfers(packet: packet, limit: limit)) }
    package static func unexpectedCancelAcknowledgement(id: UInt16) -> ProtocolViolation { ProtocolViolation(.unexpectedCancelAcknowledgement(id: id)) }
    package static func unexpectedCancel(id: UInt16) -> ProtocolViolation { ProtocolViolation(.unexpectedCancel(id: id)) }
    package static func excessChunkAcknowledgement(acknowledged: Int, outstanding: Int) -> ProtocolViolation { ProtocolViolation(.excessChunkAcknowledgement(acknowledged: acknowledged, outstanding: outstanding)) }
    package static func metadataTooLong(declared: Int, limit: Int) -> ProtocolViolation { ProtocolViolation(.metadataTooLong(declared: declared, limit: limit)) }
    package static func malformedMetadata(id: UInt16, _ why: String) -> ProtocolViolation { ProtocolViolation(.malformedMetadata(id: id, why)) }
    package static func unexpectedMetadata(id: UInt16, waiting: Int) -> ProtocolViolation { ProtocolViolation(.unexpectedMetadata(id: id, waiting: waiting)) }
}
