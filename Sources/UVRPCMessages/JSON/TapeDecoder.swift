#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A Codable `Decoder` over a ``JSONTape``: containers are node indexes,
/// and values are read from the payload's bytes when asked for. A keyed
/// container finds a key by walking its object's members (messages have
/// few); keys it does not know are never looked at, so they are ignored.
final class TapeDecoder: Decoder {
    let payload: [UInt8]
    let tape: JSONTape
    /// The node of the value being decoded.
    var current: Int
    var codingPath: [any CodingKey] = []
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(payload: [UInt8], tape: JSONTape, root: Int) {
        self.payload = payload
        self.tape = tape
        self.current = root
    }

    func node(_ index: Int) -> JSONTape.Node { tape.nodes[index] }

    /// Decodes `type` from the node at `index`.
    func decode<T: Decodable>(_ type: T.Type, at index: Int, key: (any CodingKey)?) throws -> T {
        if let key { codingPath.append(key) }
        defer { if key != nil { codingPath.removeLast() } }
        if T.self == Date.self { return try date(at: index) as! T }
        if T.self == Data.self { return Data(try bytes(at: index)) as! T }
        if T.self == Duration.self { return try duration(at: index) as! T }
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
        return .typeMismatch(Any.self, .init(codingPath: codingPath, debugDescription: "expected \(expected), found \(found)"))
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
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "a string that is not valid UTF-8"))
        }
        return text
    }

    /// Whether the string node at `index` spells `key`.
    func string(at index: Int, equals key: String) -> Bool {
        var key = key
        if node(index).escaped { return (try? string(at: index)) == key }
        return withBytes(of: index) { raw in
            key.withUTF8 { utf8 in
                guard utf8.count == raw.count else { return false }
                for index in 0..<raw.count where utf8[index] != raw[index] { return false }
                return true
            }
        }
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
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath,
                                                    debugDescription: "\(withBytes(of: index) { String(decoding: $0, as: UTF8.self) }) is not an integer that fits \(T.self)"))
        }
        return value
    }

    func double(at index: Int) throws -> Double {
        guard node(index).kind == .number else { throw mismatch("a number", at: index) }
        let text = withBytes(of: index) { String(decoding: $0, as: UTF8.self) }
        guard let value = Double(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "\(text) is not a number"))
        }
        return value
    }

    /// Bytes stored as base64 text.
    func bytes(at index: Int) throws -> [UInt8] {
        guard node(index).kind == .string, !node(index).escaped else { throw mismatch("bytes as base64 text", at: index) }
        guard let bytes = withBytes(of: index, { Base64.decode($0) }) else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "not base64 text"))
        }
        return bytes
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
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "\(fields) is not \(what)"))
        }
        return date
    }

    func duration(at index: Int) throws -> Duration {
        let fields = try integers(at: index, count: 3, what: "a duration as [days, seconds, microseconds]")
        let (days, o1) = fields[0].multipliedReportingOverflow(by: 86_400)
        let (seconds, o2) = days.addingReportingOverflow(fields[1])
        guard !o1, !o2, abs(fields[2]) < 1_000_000_000 else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "\(fields) is out of range for a duration"))
        }
        return .seconds(seconds) + .microseconds(fields[2])
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard node(current).kind == .object else { throw mismatch("an object", at: current) }
        return KeyedDecodingContainer(KeyedReader<Key>(decoder: self, object: current, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard node(current).kind == .array else { throw mismatch("an array", at: current) }
        return UnkeyedReader(decoder: self, array: current, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleValueReader(decoder: self, index: current, codingPath: codingPath)
    }
}

private struct KeyedReader<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let decoder: TapeDecoder
    let object: Int
    let codingPath: [any CodingKey]

    init(decoder: TapeDecoder, object: Int, codingPath: [any CodingKey]) {
        self.decoder = decoder
        self.object = object
        self.codingPath = codingPath
    }

    /// The value node of `key`'s member (the last one, when a key repeats, as Python's json reads it).
    private func find(_ key: Key) -> Int? {
        let name = key.stringValue
        var index = object + 1
        var found: Int?
        for _ in 0..<decoder.node(object).count {
            if decoder.string(at: index, equals: name) { found = index + 1 }
            index = Int(decoder.node(index + 1).next)
        }
        return found
    }

    private func value(_ key: Key) throws -> Int {
        guard let index = find(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no field \"\(key.stringValue)\""))
        }
        return index
    }

    /// Runs `read` with the key on the decoder's path, so that its errors name the field.
    private func read<T>(_ key: Key, _ read: (Int) throws -> T) throws -> T {
        let index = try value(key)
        decoder.codingPath.append(key)
        defer { decoder.codingPath.removeLast() }
        return try read(index)
    }

    var allKeys: [Key] {
        var keys: [Key] = []
        var index = object + 1
        for _ in 0..<decoder.node(object).count {
            if let name = try? decoder.string(at: index), let key = Key(stringValue: name) { keys.append(key) }
            index = Int(decoder.node(index + 1).next)
        }
        return keys
    }

    func contains(_ key: Key) -> Bool { find(key) != nil }

    func decodeNil(forKey key: Key) throws -> Bool { decoder.node(try value(key)).kind == .null }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try read(key) { try decoder.bool(at: $0) } }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try read(key) { try decoder.string(at: $0) } }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try read(key) { try decoder.double(at: $0) } }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try read(key) { Float(try decoder.double(at: $0)) } }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try read(key) { try decoder.integer(type, at: $0) } }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try read(key) { try decoder.integer(type, at: $0) } }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try read(key) { try decoder.integer(type, at: $0) } }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try read(key) { try decoder.integer(type, at: $0) } }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try read(key) { try decoder.integer(type, at: $0) } }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try read(key) { try decoder.integer(type, at: $0) } }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try read(key) { try decoder.integer(type, at: $0) } }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try read(key) { try decoder.integer(type, at: $0) } }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try read(key) { try decoder.integer(type, at: $0) } }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try read(key) { try decoder.integer(type, at: $0) } }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try decoder.decode(type, at: try value(key), key: key)
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try read(key) { index in
            guard decoder.node(index).kind == .object else { throw decoder.mismatch("an object", at: index) }
            return KeyedDecodingContainer(KeyedReader<NestedKey>(decoder: decoder, object: index, codingPath: codingPath + [key]))
        }
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try read(key) { index in
            guard decoder.node(index).kind == .array else { throw decoder.mismatch("an array", at: index) }
            return UnkeyedReader(decoder: decoder, array: index, codingPath: codingPath + [key])
        }
    }

    func superDecoder() throws -> any Decoder {
        throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "superDecoder is not supported"))
    }

    func superDecoder(forKey key: Key) throws -> any Decoder { try superDecoder() }
}

/// An array's elements, read in order.
private struct UnkeyedReader: UnkeyedDecodingContainer {
    let decoder: TapeDecoder
    let codingPath: [any CodingKey]
    let count: Int?
    private(set) var currentIndex = 0
    /// The node of the next element.
    private var cursor: Int

    init(decoder: TapeDecoder, array: Int, codingPath: [any CodingKey]) {
        self.decoder = decoder
        self.codingPath = codingPath
        self.count = Int(decoder.node(array).count)
        self.cursor = array + 1
    }

    var isAtEnd: Bool { currentIndex >= count! }

    private struct Index: CodingKey {
        var intValue: Int?
        var stringValue: String { "\(intValue!)" }
        init(_ value: Int) { intValue = value }
        init?(stringValue: String) { nil }
        init?(intValue: Int) { self.intValue = intValue }
    }

    /// Reads the next element with `read` and moves past it.
    private mutating func next<T>(_ read: (TapeDecoder, Int) throws -> T) throws -> T {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(T.self, .init(codingPath: codingPath, debugDescription: "the array has only \(count!) elements"))
        }
        decoder.codingPath.append(Index(currentIndex))
        defer { decoder.codingPath.removeLast() }
        let value = try read(decoder, cursor)
        cursor = Int(decoder.node(cursor).next)
        currentIndex += 1
        return value
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, decoder.node(cursor).kind == .null else { return false }
        cursor = Int(decoder.node(cursor).next)
        currentIndex += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try next { try $0.bool(at: $1) } }
    mutating func decode(_ type: String.Type) throws -> String { try next { try $0.string(at: $1) } }
    mutating func decode(_ type: Double.Type) throws -> Double { try next { try $0.double(at: $1) } }
    mutating func decode(_ type: Float.Type) throws -> Float { try next { Float(try $0.double(at: $1)) } }
    mutating func decode(_ type: Int.Type) throws -> Int { try next { try $0.integer(type, at: $1) } }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try next { try $0.integer(type, at: $1) } }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try next { try $0.integer(type, at: $1) } }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try next { try $0.integer(type, at: $1) } }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try next { try $0.integer(type, at: $1) } }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try next { try $0.integer(type, at: $1) } }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try next { try $0.integer(type, at: $1) } }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try next { try $0.integer(type, at: $1) } }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try next { try $0.integer(type, at: $1) } }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try next { try $0.integer(type, at: $1) } }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try next { try $0.decode(type, at: $1, key: nil) }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let path = codingPath + [Index(currentIndex)]
        return try next { decoder, index in
            guard decoder.node(index).kind == .object else { throw decoder.mismatch("an object", at: index) }
            return KeyedDecodingContainer(KeyedReader<NestedKey>(decoder: decoder, object: index, codingPath: path))
        }
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let path = codingPath + [Index(currentIndex)]
        return try next { decoder, index in
            guard decoder.node(index).kind == .array else { throw decoder.mismatch("an array", at: index) }
            return UnkeyedReader(decoder: decoder, array: index, codingPath: path)
        }
    }

    mutating func superDecoder() throws -> any Decoder {
        throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "superDecoder is not supported"))
    }
}

private struct SingleValueReader: SingleValueDecodingContainer {
    let decoder: TapeDecoder
    let index: Int
    let codingPath: [any CodingKey]

    func decodeNil() -> Bool { decoder.node(index).kind == .null }
    func decode(_ type: Bool.Type) throws -> Bool { try decoder.bool(at: index) }
    func decode(_ type: String.Type) throws -> String { try decoder.string(at: index) }
    func decode(_ type: Double.Type) throws -> Double { try decoder.double(at: index) }
    func decode(_ type: Float.Type) throws -> Float { Float(try decoder.double(at: index)) }
    func decode(_ type: Int.Type) throws -> Int { try decoder.integer(type, at: index) }
    func decode(_ type: Int8.Type) throws -> Int8 { try decoder.integer(type, at: index) }
    func decode(_ type: Int16.Type) throws -> Int16 { try decoder.integer(type, at: index) }
    func decode(_ type: Int32.Type) throws -> Int32 { try decoder.integer(type, at: index) }
    func decode(_ type: Int64.Type) throws -> Int64 { try decoder.integer(type, at: index) }
    func decode(_ type: UInt.Type) throws -> UInt { try decoder.integer(type, at: index) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try decoder.integer(type, at: index) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try decoder.integer(type, at: index) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try decoder.integer(type, at: index) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try decoder.integer(type, at: index) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decoder.decode(type, at: index, key: nil) }
}
