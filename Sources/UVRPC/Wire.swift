/// The efro.rpc wire format, protocol version 2 (see Docs/PROTOCOL.md).
///
/// A stream starts with a handshake (`u32` big-endian length + UTF-8 JSON
/// `{"p":2,"k":10.73}`), then carries packets, each starting with a one-byte
/// ``PacketType``. All integers are unsigned big-endian.
public enum Wire {
    /// The protocol version this library speaks and announces.
    public static let protocolVersion = 2
    /// Largest payload of the short MESSAGE / RESPONSE forms (u16 length).
    public static let maximumShortPayload = 65535
    /// Header bytes of MESSAGE / RESPONSE: type, u16 id, u16 length.
    public static let shortHeaderSize = 5
    /// Header bytes of MESSAGE_BIG / RESPONSE_BIG: type, u16 id, u32 length.
    public static let bigHeaderSize = 7
    /// Largest payload any packet can declare (u32 length).
    public static let maximumPayload = Int(UInt32.max)
    /// Largest reason an ERROR packet may carry, in UTF-8 bytes (longer
    /// reasons are cut by the sender; a longer declared length is a protocol violation).
    public static let maximumErrorReason = 1024
    /// Chunked transfers each side may have in progress at once, per kind
    /// (messages, responses); a sender starts more only as earlier ones end.
    public static let maximumTransfers = 4
}

/// The first byte of every packet after the handshake.
public enum PacketType: UInt8, Sendable, CustomStringConvertible {
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

    public var description: String {
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
        }
    }
}

/// What a side announces in its handshake: its protocol version (`p`),
/// keepalive interval in seconds (`k`) and, a UVRPC addition, the
/// extensions it speaks (`x`, absent when there are none).
public struct PeerInfo: Equatable, Sendable, CustomStringConvertible {
    /// The sender's protocol version (`p`).
    public var protocolVersion: Int
    /// The sender's keepalive interval in seconds (`k`).
    public var keepaliveInterval: Double
    /// The extensions the sender announced (`x`); empty for an efro.rpc peer.
    public var extensions: RPCExtensions

    /// Creates peer info; `protocolVersion` defaults to this library's.
    public init(protocolVersion: Int = Wire.protocolVersion, keepaliveInterval: Double, extensions: RPCExtensions = []) {
        self.protocolVersion = protocolVersion
        self.keepaliveInterval = keepaliveInterval
        self.extensions = extensions
    }

    public var description: String {
        "protocol \(protocolVersion), keepalive \(keepaliveInterval) s" + (extensions.isEmpty ? "" : ", extensions \(extensions)")
    }

    /// True when the peer can receive payloads over 65535 bytes (*_BIG packets):
    /// protocol 2 and newer.
    public var acceptsBigPayloads: Bool { protocolVersion >= 2 }

    /// The compact JSON the reference writes, `p` first: `{"p":2,"k":10.73}`.
    /// Whole intervals keep their `.0` (`5.0`), as Python's `json.dumps` does.
    /// Extensions follow as a third key, `"x":["error",...]`, only when there are any.
    public var json: String {
        let x = extensions.isEmpty ? "" : ",\"x\":\(extensions)"
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
    public var handshakeBytes: [UInt8] {
        let body = Array(json.utf8)
        let n = UInt32(body.count)
        return [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + body
    }

    /// Reads a handshake body liberally: any valid JSON object, keys in any
    /// order, whitespace, unknown keys ignored, `k` as an integer or a float.
    /// `x` is read as a list of extension names; names this library does not
    /// know, and an `x` that is not a list of strings, are ignored.
    /// - Throws: ``ProtocolViolation/malformedHandshake(_:)`` saying what is wrong.
    public init(json bytes: UnsafeRawBufferPointer) throws(ProtocolViolation) {
        var parser = JSONScanner(bytes)
        let (p, k, x) = try parser.parseHandshakeObject()
        guard let p else { throw .malformedHandshake("missing \"p\" (protocol version)") }
        guard let k else { throw .malformedHandshake("missing \"k\" (keepalive interval)") }
        guard let version = Int(exactly: p), version >= 0 else {
            throw .malformedHandshake("\"p\" is \(p), not a protocol version")
        }
        guard k.isFinite, k >= 0 else { throw .malformedHandshake("\"k\" is \(k), not a keepalive interval") }
        self.init(protocolVersion: version, keepaliveInterval: k, extensions: x)
    }
}

/// A way in which the peer broke the protocol; each closes that connection.
public enum ProtocolViolation: Error, Equatable, Sendable, CustomStringConvertible {
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
    /// A CHUNK_ACK for more chunk bytes than this side sent and had not seen acknowledged.
    case excessChunkAcknowledgement(acknowledged: Int, outstanding: Int)

    public var description: String {
        switch self {
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
        case .excessChunkAcknowledgement(let n, let outstanding):
            return "CHUNK_ACK for \(n) bytes while \(outstanding) were unacknowledged"
        }
    }
}

/// A small strict JSON reader, enough to validate any JSON text and pull
/// the numbers `p` and `k` and the extension names of `x` out of a top-level object. No allocation beyond
/// the key being compared; nesting depth is bounded, so hostile input cannot
/// exhaust the stack.
struct JSONScanner {
    private let bytes: UnsafeRawBufferPointer
    private var i = 0
    private static let maximumDepth = 64

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    private func fail(_ what: String) -> ProtocolViolation {
        .malformedHandshake("\(what) at byte \(i) of \(bytes.count)")
    }

    private mutating func skipWhitespace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D { i += 1 }
    }

    private mutating func expect(_ c: UInt8) throws(ProtocolViolation) {
        skipWhitespace()
        guard i < bytes.count, bytes[i] == c else { throw fail("expected '\(Character(Unicode.Scalar(c)))'") }
        i += 1
    }

    mutating func parseHandshakeObject() throws(ProtocolViolation) -> (p: Double?, k: Double?, x: RPCExtensions) {
        var p: Double?, k: Double?, x: RPCExtensions = []
        try expect(UInt8(ascii: "{"))
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
            i += 1
        } else {
            while true {
                skipWhitespace()
                let key = try parseString()
                try expect(UInt8(ascii: ":"))
                skipWhitespace()
                if key == "p" || key == "k" {
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "-") || (bytes[i] >= 0x30 && bytes[i] <= 0x39) else {
                        throw .malformedHandshake("\"\(key)\" is not a number")
                    }
                    let value = try parseNumber()
                    if key == "p" { p = value } else { k = value }
                } else if key == "x", i < bytes.count, bytes[i] == UInt8(ascii: "[") {
                    x = try parseExtensionNames()
                } else {
                    try skipValue(depth: 1)
                }
                skipWhitespace()
                guard i < bytes.count else { throw fail("unterminated object") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; break }
                throw fail("expected ',' or '}'")
            }
        }
        skipWhitespace()
        guard i == bytes.count else { throw fail("trailing bytes after the object") }
        return (p, k, x)
    }

    /// Parses the list of `x`: known names become extensions, anything else is skipped.
    private mutating func parseExtensionNames() throws(ProtocolViolation) -> RPCExtensions {
        var found: RPCExtensions = []
        i += 1 // "["
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return found }
        while true {
            skipWhitespace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "\"") {
                if let known = RPCExtensions(wireName: try parseString()) { found.insert(known) }
            } else {
                try skipValue(depth: 2)
            }
            skipWhitespace()
            guard i < bytes.count else { throw fail("unterminated array") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "]") { i += 1; return found }
            throw fail("expected ',' or ']'")
        }
    }

    /// Parses a string; returns it only when it is short (keys we care about), else "".
    private mutating func parseString() throws(ProtocolViolation) -> String {
        guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a string") }
        i += 1
        let start = i
        var plain = true
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                let s = plain && i - start <= 8
                    ? String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self) : ""
                i += 1
                return s
            }
            if c < 0x20 { throw fail("control character in string") }
            if c == UInt8(ascii: "\\") {
                plain = false
                i += 1
                guard i < bytes.count else { break }
                switch bytes[i] {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                     UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    i += 1
                case UInt8(ascii: "u"):
                    guard i + 4 < bytes.count else { throw fail("short \\u escape") }
                    for j in 1...4 where !Self.isHex(bytes[i + j]) { throw fail("bad \\u escape") }
                    i += 5
                default:
                    throw fail("bad escape")
                }
                continue
            }
            i += 1
        }
        throw fail("unterminated string")
    }

    private static func isHex(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66)
    }

    private mutating func parseNumber() throws(ProtocolViolation) -> Double {
        let start = i
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        func digits(_ s: inout JSONScanner) -> Int {
            let from = s.i
            while s.i < s.bytes.count, s.bytes[s.i] >= 0x30, s.bytes[s.i] <= 0x39 { s.i += 1 }
            return s.i - from
        }
        let intStart = i
        let intDigits = digits(&self)
        guard intDigits > 0 else { throw fail("expected digits") }
        if intDigits > 1 && bytes[intStart] == 0x30 { throw fail("leading zero in number") }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digits(&self) > 0 else { throw fail("expected digits after '.'") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits(&self) > 0 else { throw fail("expected exponent digits") }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
        guard let value = Double(text) else { throw fail("number out of range") }
        return value
    }

    private mutating func skipValue(depth: Int) throws(ProtocolViolation) {
        guard depth <= Self.maximumDepth else { throw fail("nesting deeper than \(Self.maximumDepth)") }
        skipWhitespace()
        guard i < bytes.count else { throw fail("expected a value") }
        switch bytes[i] {
        case UInt8(ascii: "\""):
            _ = try parseString()
        case UInt8(ascii: "{"):
            i += 1
            skipWhitespace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return }
            while true {
                skipWhitespace()
                _ = try parseString()
                try expect(UInt8(ascii: ":"))
                try skipValue(depth: depth + 1)
                skipWhitespace()
                guard i < bytes.count else { throw fail("unterminated object") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return }
                throw fail("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            i += 1
            skipWhitespace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return }
            while true {
                try skipValue(depth: depth + 1)
                skipWhitespace()
                guard i < bytes.count else { throw fail("unterminated array") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return }
                throw fail("expected ',' or ']'")
            }
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        default:
            _ = try parseNumber()
        }
    }

    private mutating func literal(_ word: StaticString) throws(ProtocolViolation) {
        let n = word.utf8CodeUnitCount
        guard i + n <= bytes.count else { throw fail("truncated literal") }
        for j in 0..<n where bytes[i + j] != word.utf8Start[j] { throw fail("bad literal") }
        i += n
    }
}
