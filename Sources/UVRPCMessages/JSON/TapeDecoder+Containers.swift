// The containers of TapeDecoder: keyed (objects), unkeyed (arrays) and single values,
// each a node index into the decoder's tape.

/// A key of an error's coding path, made from the tape.
struct PathKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(string: String) { stringValue = string }
    init(int: Int) { stringValue = "[\(int)]"; intValue = int }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { self.init(int: intValue) }
}

struct KeyedReader<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let decoder: TapeDecoder
    let object: Int

    var codingPath: [any CodingKey] { decoder.path(to: object) }

    /// The value node of `key`'s member (the last one, when a key repeats, as Python's json reads it).
    private func find(_ key: Key) -> Int? {
        let name = key.stringValue
        if decoder.node(object).count > TapeDecoder.indexedObjectSize { return decoder.keyIndex(of: object)[name] }
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
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try decoder.bool(at: value(key)) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try decoder.string(at: value(key)) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try decoder.double(at: value(key)) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try decoder.float(at: value(key)) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try decoder.integer(type, at: value(key)) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try decoder.integer(type, at: value(key)) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try decoder.integer(type, at: value(key)) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try decoder.integer(type, at: value(key)) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try decoder.integer(type, at: value(key)) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try decoder.integer(type, at: value(key)) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try decoder.integer(type, at: value(key)) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try decoder.integer(type, at: value(key)) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try decoder.integer(type, at: value(key)) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try decoder.integer(type, at: value(key)) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try decoder.decode(type, at: value(key)) }

    // decodeIfPresent, once per field: the protocol's default looks the key
    // up three times (contains, decodeNil, decode).

    /// The value node of `key`, or nil when the key is missing or its value is null.
    private func present(_ key: Key) -> Int? {
        guard let index = find(key), decoder.node(index).kind != .null else { return nil }
        return index
    }

    func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: Float.Type, forKey key: Key) throws -> Float? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: Int8.Type, forKey key: Key) throws -> Int8? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: Int16.Type, forKey key: Key) throws -> Int16? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: Int32.Type, forKey key: Key) throws -> Int32? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: UInt.Type, forKey key: Key) throws -> UInt? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: UInt8.Type, forKey key: Key) throws -> UInt8? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: UInt16.Type, forKey key: Key) throws -> UInt16? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: UInt32.Type, forKey key: Key) throws -> UInt32? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent(_ type: UInt64.Type, forKey key: Key) throws -> UInt64? { try present(key).map { try decode(type, forKey: key, at: $0) } }
    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        try present(key).map { try decoder.decode(type, at: $0) }
    }

    private func decode(_ type: Bool.Type, forKey key: Key, at index: Int) throws -> Bool { try decoder.bool(at: index) }
    private func decode(_ type: String.Type, forKey key: Key, at index: Int) throws -> String { try decoder.string(at: index) }
    private func decode(_ type: Double.Type, forKey key: Key, at index: Int) throws -> Double { try decoder.double(at: index) }
    private func decode(_ type: Float.Type, forKey key: Key, at index: Int) throws -> Float { try decoder.float(at: index) }
    private func decode<T: FixedWidthInteger>(_ type: T.Type, forKey key: Key, at index: Int) throws -> T { try decoder.integer(type, at: index) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        let index = try value(key)
        guard decoder.node(index).kind == .object else { throw decoder.mismatch("an object", at: index) }
        return KeyedDecodingContainer(KeyedReader<NestedKey>(decoder: decoder, object: index))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let index = try value(key)
        guard decoder.node(index).kind == .array else { throw decoder.mismatch("an array", at: index) }
        return UnkeyedReader(decoder: decoder, array: index)
    }

    func superDecoder() throws -> any Decoder {
        throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "superDecoder is not supported"))
    }

    func superDecoder(forKey key: Key) throws -> any Decoder { try superDecoder() }
}

/// An array's elements, read in order.
struct UnkeyedReader: UnkeyedDecodingContainer {
    let decoder: TapeDecoder
    let array: Int
    let count: Int?
    private(set) var currentIndex = 0
    /// The node of the next element.
    private var cursor: Int

    init(decoder: TapeDecoder, array: Int) {
        self.decoder = decoder
        self.array = array
        self.count = Int(decoder.node(array).count)
        self.cursor = array + 1
    }

    var codingPath: [any CodingKey] { decoder.path(to: array) }

    var isAtEnd: Bool { currentIndex >= count! }

    /// Reads the next element with `read` and moves past it.
    private mutating func next<T>(_ read: (TapeDecoder, Int) throws -> T) throws -> T {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(T.self, .init(codingPath: codingPath, debugDescription: "the array has only \(count!) elements"))
        }
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
    mutating func decode(_ type: Float.Type) throws -> Float { try next { try $0.float(at: $1) } }
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
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next { try $0.decode(type, at: $1) } }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try next { decoder, index in
            guard decoder.node(index).kind == .object else { throw decoder.mismatch("an object", at: index) }
            return KeyedDecodingContainer(KeyedReader<NestedKey>(decoder: decoder, object: index))
        }
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try next { decoder, index in
            guard decoder.node(index).kind == .array else { throw decoder.mismatch("an array", at: index) }
            return UnkeyedReader(decoder: decoder, array: index)
        }
    }

    mutating func superDecoder() throws -> any Decoder {
        throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "superDecoder is not supported"))
    }
}

struct SingleValueReader: SingleValueDecodingContainer {
    let decoder: TapeDecoder
    let index: Int

    var codingPath: [any CodingKey] { decoder.path(to: index) }

    func decodeNil() -> Bool { decoder.node(index).kind == .null }
    func decode(_ type: Bool.Type) throws -> Bool { try decoder.bool(at: index) }
    func decode(_ type: String.Type) throws -> String { try decoder.string(at: index) }
    func decode(_ type: Double.Type) throws -> Double { try decoder.double(at: index) }
    func decode(_ type: Float.Type) throws -> Float { try decoder.float(at: index) }
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
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decoder.decode(type, at: index) }
}
