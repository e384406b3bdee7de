/// How typed messages become payloads and back: the envelope (a type id
/// beside the value) and the value's fields. ``RPCMessageJSONCodec``,
/// efro.message's JSON, is the default and the one Python peers speak;
/// another codec (a binary one between Swift peers, say) plugs into
/// ``RPCMessageProtocol/init(messages:responses:codec:)``.
public protocol RPCMessageCodec: Sendable {
    /// The payload that carries `value` as the type registered under `typeID`.
    func encode<Value: Encodable>(_ value: Value, typeID: Int) throws -> [UInt8]

    /// Reads `payload` as far as its type id; the value is decoded when the
    /// reader is asked for it as the type that id names.
    func reader(for payload: [UInt8]) throws -> any RPCMessageReader
}

/// One payload, read as far as its type id (``RPCMessageCodec/reader(for:)``).
public protocol RPCMessageReader {
    /// The payload's type id.
    var typeID: Int { get }
    /// The payload's value as `type`.
    func decode<Value: Decodable>(_ type: Value.Type) throws -> Value
}

/// efro.message's JSON (see Docs/TYPED_CALLS.md and MESSAGES.md): a payload is
/// `{"t":<type id>,"m":{<fields>}}`, compact, UTF-8. Fields are written as
/// the types' `Codable` conformances say, under their `CodingKey`s, with
/// efro's forms for three types: `Date` as `[year, month, day, hour,
/// minute, second, microsecond]` in UTC, `Duration` as `[days, seconds,
/// microseconds]` (Python's timedelta) and `Data` as base64 text. Keys a
/// type does not know are ignored; a missing `"m"` reads as `{}`.
///
/// It writes and reads bytes directly (no Foundation JSON, no tree of
/// values): a 64-byte echo encodes and decodes in about a microsecond.
public struct RPCMessageJSONCodec: RPCMessageCodec {
    public init() {}

    public func encode<Value: Encodable>(_ value: Value, typeID: Int) throws -> [UInt8] {
        let encoder = StreamingEncoder(capacity: 256)
        encoder.writer.bytes.append(contentsOf: #"{"t":"#.utf8)
        encoder.writer.integer(typeID)
        encoder.writer.bytes.append(contentsOf: #","m":"#.utf8)
        try encoder.encodeValue(value)
        encoder.writer.byte(0x7D)
        return encoder.writer.bytes
    }

    public func reader(for payload: [UInt8]) throws -> any RPCMessageReader {
        let tape = try payload.withUnsafeBytes { raw throws(JSONTape.SyntaxError) in try JSONTape(raw) }
        guard tape.nodes[0].kind == .object else {
            throw DecodingError.typeMismatch(Any.self, .init(codingPath: [], debugDescription: "the payload is not a JSON object"))
        }
        // The envelope's two keys, read straight off the root's members.
        let reader = TapeDecoder(payload: payload, tape: tape, root: 0, typeID: 0)
        var typeNode: Int?, valueNode: Int?
        var index = 1
        for _ in 0..<tape.nodes[0].count {
            if reader.string(at: index, equals: "t") { typeNode = index + 1 }
            if reader.string(at: index, equals: "m") { valueNode = index + 1 }
            index = Int(tape.nodes[index + 1].next)
        }
        guard let typeNode else {
            throw DecodingError.keyNotFound(EnvelopeKey.t, .init(codingPath: [], debugDescription: "no type id (\"t\")"))
        }
        reader.typeID = try reader.integer(Int.self, at: typeNode)
        reader.root = valueNode ?? reader.tape.appendEmptyObject()
        reader.current = reader.root
        return reader
    }

    private enum EnvelopeKey: String, CodingKey { case t }
}
