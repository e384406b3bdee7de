#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A Codable `Decoder` over a ``JSONTape``: containers are node indexes,
/// and values are read from the payload's bytes when asked for. A keyed
/// container finds a key by walking its object's members (messages have
/// few); keys it does not know are never looked at, so they are ignored.
final class TapeDecoder: Decoder, RPCMessageReader {
    let payload: [UInt8]
    @exclusivity(unchecked) var tape: JSONTape
    /// The node of the value being decoded (touched only by this decoder's
    /// synchronous calls: no dynamic exclusivity checks).
    @exclusivity(unchecked) var current: Int
    /// The node of the envelope's `"m"`: where decoding starts (set once, by the codec).
    @exclusivity(unchecked) var root: Int
    /// The envelope's type id (set once, by the codec).
    @exclusivity(unchecked) var typeID: Int
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(payload: [UInt8], tape: JSONTape, root: Int, typeID: Int) {
        self.payload = payload
        self.tape = tape
        self.current = root
        self.root = root
        self.typeID = typeID
    }

    func decode<Value: Decodable>(_ type: Value.Type) throws -> Value { try decode(type, at: root) }

    /// The path of `index` from the envelope (`m`, then the keys and
    /// positions down to it): worked out from the tape when an error needs
    /// it, so that decoding keeps no path as it goes.
    func path(to index: Int) -> [any CodingKey] {
        var path: [any CodingKey] = [PathKey(string: "m")]
        var container = root
        while container != index {
            let node = node(container)
            guard node.kind == .object || node.kind == .array else { break }
            var member = container + 1, found = false
            for position in 0..<Int(node.count) {
                let value = node.kind == .object ? member + 1 : member
                let next = Int(self.node(value).next)
                if index >= value && index < next {
                    path.append(node.kind == .object ? PathKey(string: (try? string(at: member)) ?? "?") : PathKey(int: position))
                    container = value
                    found = true
                    break
                }
                member = next
            }
            if !found { break }
        }
        return path
    }

    var codingPath: [any CodingKey] { path(to: current) }

    func node(_ index: Int) -> JSONTape.Node { tape.nodes[index] }

    /// Decodes `type` from the node at `index`: efro's forms for dates,
    /// durations and bytes (metatype comparisons, not casts), else the
    /// type's own `init(from:)`.
    func decode<T: Decodable>(_ type: T.Type, at index: Int) throws -> T {
        if T.self == Data.self { return _identityCast(try data(at: index), to: T.self) }
        if T.self == Date.self { return _identityCast(try date(at: index), to: T.self) }
        if T.self == Duration.self { return _identityCast(try duration(at: index), to: T.self) }
        let outer = current
        current = index
        defer { current = outer }
        return try T(from: self)
    }

    func mismatch(_ expected: String, at index: Int) -> DecodingError {
        let found: String
        switch node(index).kind {
        case .object: found = "an object"
        case .array: found = "an array"
        case .string: found = "a string"
        case .number: found = "a number"
        case .true, .false: found = "a bool"
        case .null: found = "null"
        }
        return .typeMismatch(Any.self, .init(codingPath: path(to: index), debugDescription: "expected \(expected), found \(found)"))
    }

    /// The raw bytes of a scalar node.
    private func withBytes<R>(of index: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let node = node(index)
        return try payload.withUnsafeBytes { all in
            try body(UnsafeRawBufferPointer(rebasing: all[Int(node.start)..<Int(node.end)]))
        }
    }

    func string(at index: Int) throws -> String {
        guard node(index).kind == .string else { throw mismatch("a string", at: index) }
        let text: String? = withBytes(of: index) { raw in
            node(index).escaped ? String(validating: JSONTape.unescape(raw), as: UTF8.self)
                : String(validating: raw, as: UTF8.self)
        }
        guard let text else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(to: index), debugDescription: "a string that is not valid UTF-8"))
        }
        return text
    }

    /// Whether the string node at `index` spells `key`.
    /// Whether the string node at `index` spells `key`, byte for byte (as
    /// Python compares keys: no Unicode equivalence), escapes resolved.
    func string(at index: Int, equals key: String) -> Bool {
        var key = key
        return withBytes(of: index) { raw in
            key.withUTF8 { utf8 in
                if node(index).escaped { return JSONTape.unescape(raw).elementsEqual(utf8) }
                guard utf8.count == raw.count else { return false }
                for index in 0..<raw.count where utf8[index] != raw[index] { return false }
                return true
            }
        }
    }

    /// The value node of each key of the object at `object` (the last, when a
    /// key repeats), made once per large object: looking keys up by walking
    /// the members made a dictionary field quadratic (a 40 KB message held a
    /// loop for seconds).
    @exclusivity(unchecked) private var keyIndexes: [Int: [String: Int]] = [:]

    /// The objects with more members than this get a key index.
    static let indexedObjectSize = 16

    func keyIndex(of object: Int) -> [String: Int] {
        if let made = keyIndexes[object] { return made }
        var made: [String: Int] = [:]
        var index = object + 1
        for _ in 0..<node(object).count {
            if let name = try? string(at: index) { made[name] = index + 1 }
            index = Int(node(index + 1).next)
        }
        keyIndexes[object] = made
        return made
    }

    func bool(at index: Int) throws -> Bool {
        switch node(index).kind {
        case .true: return true
        case .false: return false
        default: throw mismatch("a bool", at: index)
        }
    }

    func integer<T: FixedWidthInteger>(_ type: T.Type, at index: Int) throws -> T {
        guard node(index).kind == .number else { throw mismatch("an integer", at: index) }
        let value: T? = withBytes(of: index) { raw in
            var position = 0
            let negative = raw[0] == 0x2D
            if negative { position = 1 }
            var value: T = 0
            while position < raw.count {
                let digit = raw[position] &- 0x30
                guard digit < 10 else { return nil } // a fraction or an exponent
                let (times10, o1) = value.multipliedReportingOverflow(by: 10)
                let (next, o2) = negative ? times10.subtractingReportingOverflow(T(digit)) : times10.addingReportingOverflow(T(digit))
                if o1 || o2 { return nil }
                value = next
                position += 1
            }
            return value
        }
        guard let value else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(to: index),
                                                    debugDescription: "\(withBytes(of: index) { String(decoding: $0, as: UTF8.self) }) is not an integer that fits \(T.self)"))
        }
        return value
    }

    func double(at index: Int) throws -> Double {
        guard node(index).kind == .number else { throw mismatch("a number", at: index) }
        let text = withBytes(of: index) { String(decoding: $0, as: UTF8.self) }
        guard let value = Double(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(to: index), debugDescription: "\(text) is not a number"))
        }
        return value
    }

    /// A number that fits a Float (one that only a Double holds is an error, as JSONDecoder has it).
    func float(at index: Int) throws -> Float {
        let value = try double(at: index)
        guard Float(value).isFinite || !value.isFinite else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(to: index), debugDescription: "\(value) does not fit a Float"))
        }
        return Float(value)
    }

    /// Bytes stored as base64 text, decoded straight into the `Data`.
    func data(at index: Int) throws -> Data {
        guard node(index).kind == .string else { throw mismatch("bytes as base64 text", at: index) }
        let data: Data? = withBytes(of: index) { raw in
            // An escape (`\/`) is rare but valid JSON for the same text.
            if node(index).escaped { return JSONTape.unescape(raw).withUnsafeBytes { Self.base64Data($0) } }
            return Self.base64Data(raw)
        }
        guard let data else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(to: index), debugDescription: "not base64 text"))
        }
        return data
    }

    /// The bytes base64 `text` holds, decoded straight into a `Data`'s buffer; nil when it is not base64.
    private static func base64Data(_ text: UnsafeRawBufferPointer) -> Data? {
        guard let count = Base64.decodedCount(text) else { return nil }
        guard count > 0, let buffer = malloc(count) else { return count == 0 ? Data() : nil }
        guard Base64.decode(text, into: UnsafeMutableRawBufferPointer(start: buffer, count: count)) else {
            free(buffer)
            return nil
        }
        // The Data owns the buffer from here (frees it with `free`): no zero-fill, no copy.
        return Data(bytesNoCopy: buffer, count: count, deallocator: .free)
    }

    /// The integers of an array node, exactly `count` of them.
    private func integers(at index: Int, count: Int, what: String) throws -> [Int64] {
        guard node(index).kind == .array, node(index).count == count else { throw mismatch(what, at: index) }
        return try (0..<count).map { try integer(Int64.self, at: index + 1 + $0) }
    }

    func date(at index: Int) throws -> Date {
        let what = "a date as [year, month, day, hour, minute, second, microsecond]"
        let fields = try integers(at: index, count: 7, what: what)
        let parts = UTCDate(year: fields[0], month: fields[1], day: fields[2], hour: fields[3], minute: fields[4],
                            second: fields[5], microsecond: fields[6])
        guard let date = parts.date else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(to: index), debugDescription: "\(fields) is not \(what)"))
        }
        return date
    }

    func duration(at index: Int) throws -> Duration {
        let fields = try integers(at: index, count: 3, what: "a duration as [days, seconds, microseconds]")
        // Python's timedelta: |days| <= 999 999 999; the other two fields are
        // normalized by Python but may be anything in a peer's text: bounded here.
        guard (-999_999_999...999_999_999).contains(fields[0]), (-999_999_999...999_999_999).contains(fields[1]),
              (-999_999_999...999_999_999).contains(fields[2]) else {
            throw DecodingError.dataCorrupted(.init(codingPath: path(to: index), debugDescription: "\(fields) is out of range for a duration"))
        }
        return .seconds(fields[0] * 86_400 + fields[1]) + .microseconds(fields[2])
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard node(current).kind == .object else { throw mismatch("an object", at: current) }
        return KeyedDecodingContainer(KeyedReader<Key>(decoder: self, object: current))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard node(current).kind == .array else { throw mismatch("an array", at: current) }
        return UnkeyedReader(decoder: self, array: current)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleValueReader(decoder: self, index: current)
    }
}
