#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A Codable `Encoder` that writes efro.message JSON as it goes, with no
/// tree of values in between: each container writes its opening bracket
/// when asked for and its closing one when the next member of an outer
/// container starts or the value ends. Codable's synthesized code uses
/// containers that way (one after another, never two at once); a type that
/// writes into two sibling containers alternately, or asks for a
/// `superEncoder`, gets an `EncodingError`.
final class StreamingEncoder: Encoder {
    var writer: JSONWriter
    var codingPath: [any CodingKey] = []
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    /// The containers open, innermost last: each one's closing byte, and
    /// whether it has a member yet (the next one needs a comma).
    private var open: [(closer: UInt8, hasMember: Bool)] = []
    /// How many containers were open when the value being written started.
    private var valueLevel = 0
    /// Whether the value being written has written anything (a container or a single value).
    private var valueWritten = false
    /// The first misuse met, thrown when the value ends.
    private var failure: EncodingError?

    init(capacity: Int) { writer = JSONWriter(capacity: capacity) }

    /// Writes `value` at the current position.
    func encodeValue<T: Encodable>(_ value: T) throws {
        if let date = value as? Date {
            writer.date(date)
        } else if let data = value as? Data {
            writer.base64(data)
        } else if let duration = value as? Duration {
            writer.duration(duration)
        } else {
            let level = open.count
            let outer = (valueLevel, valueWritten)
            (valueLevel, valueWritten) = (level, false)
            try value.encode(to: self)
            if let failure { throw failure }
            if !valueWritten { writer.byte(0x7B); writer.byte(0x7D) } // a type that wrote nothing: an empty object
            close(downTo: level)
            valueLevel = outer.0
        }
        valueWritten = true
    }

    /// Closes the containers opened past `level`.
    fileprivate func close(downTo level: Int) {
        while open.count > level { writer.byte(open.removeLast().closer) }
    }

    /// Opens a container (`opener`, `closer`) for the value being written
    /// and returns its level; the open one when the value asks again for
    /// the same kind (as a class and its superclass do).
    private func openContainer(_ opener: UInt8, _ closer: UInt8) -> Int {
        if valueWritten {
            if open.count == valueLevel + 1, open[valueLevel].closer == closer { return open.count }
            fail("asked for a second container for one value")
            return open.count
        }
        writer.byte(opener)
        open.append((closer, false))
        valueWritten = true
        return open.count
    }

    fileprivate func fail(_ what: String) {
        if failure == nil {
            failure = .invalidValue((), .init(codingPath: codingPath, debugDescription: "efro.message JSON: \(what)"))
        }
    }

    /// Starts a member of the container at `level`: closes any inner
    /// container still open and writes the comma when one is due.
    fileprivate func startMember(at level: Int) {
        close(downTo: level)
        guard level > 0, level <= open.count else { return fail("wrote into a container after it ended") }
        if open[level - 1].hasMember { writer.byte(0x2C) } else { open[level - 1].hasMember = true }
    }

    fileprivate func startMember(at level: Int, key: some CodingKey) {
        startMember(at: level)
        writer.string(key.stringValue)
        writer.byte(0x3A)
    }

    fileprivate func nested<T: Encodable>(_ value: T, key: (any CodingKey)?) throws {
        if let key { codingPath.append(key) }
        defer { if key != nil { codingPath.removeLast() } }
        try encodeValue(value)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(KeyedWriter<Key>(encoder: self, level: openContainer(0x7B, 0x7D)))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        UnkeyedWriter(encoder: self, level: openContainer(0x5B, 0x5D))
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { SingleValueWriter(encoder: self) }

    /// Writes one scalar at the current position.
    fileprivate func scalar(_ write: (inout JSONWriter) throws -> Void) rethrows {
        if valueWritten { return fail("wrote a second single value") }
        try write(&writer)
        valueWritten = true
    }

    /// Writes `value` as the single value of the value being written.
    fileprivate func singleValue<T: Encodable>(_ value: T) throws {
        if valueWritten { return fail("wrote a second single value") }
        try encodeValue(value)
    }

    fileprivate func nestedContainer<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        writer.byte(0x7B)
        open.append((0x7D, false))
        return KeyedEncodingContainer(KeyedWriter<Key>(encoder: self, level: open.count))
    }

    fileprivate func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        writer.byte(0x5B)
        open.append((0x5D, false))
        return UnkeyedWriter(encoder: self, level: open.count)
    }
}

private struct KeyedWriter<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let encoder: StreamingEncoder
    let level: Int
    var codingPath: [any CodingKey] { encoder.codingPath }

    private func member(_ key: Key, _ write: (inout JSONWriter) throws -> Void) rethrows {
        encoder.startMember(at: level, key: key)
        try write(&encoder.writer)
    }

    mutating func encodeNil(forKey key: Key) throws { member(key) { $0.null() } }
    mutating func encode(_ value: Bool, forKey key: Key) throws { member(key) { $0.bool(value) } }
    mutating func encode(_ value: String, forKey key: Key) throws { member(key) { $0.string(value) } }
    mutating func encode(_ value: Double, forKey key: Key) throws {
        try member(key) { try $0.double(value, at: encoder.codingPath + [key]) }
    }
    mutating func encode(_ value: Float, forKey key: Key) throws {
        try member(key) { try $0.double(Double(value), at: encoder.codingPath + [key]) }
    }
    mutating func encode(_ value: Int, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode(_ value: Int8, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode(_ value: Int16, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode(_ value: Int32, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode(_ value: Int64, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode(_ value: UInt, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { member(key) { $0.integer(value) } }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        encoder.startMember(at: level, key: key)
        try encoder.nested(value, key: key)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        encoder.startMember(at: level, key: key)
        return encoder.nestedContainer(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        encoder.startMember(at: level, key: key)
        return encoder.nestedUnkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        encoder.fail("superEncoder is not supported")
        return encoder
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder { superEncoder() }
}

private struct UnkeyedWriter: UnkeyedEncodingContainer {
    let encoder: StreamingEncoder
    let level: Int
    private(set) var count = 0
    var codingPath: [any CodingKey] { encoder.codingPath }

    init(encoder: StreamingEncoder, level: Int) {
        self.encoder = encoder
        self.level = level
    }

    private mutating func element(_ write: (inout JSONWriter) throws -> Void) rethrows {
        encoder.startMember(at: level)
        count += 1
        try write(&encoder.writer)
    }

    mutating func encodeNil() throws { element { $0.null() } }
    mutating func encode(_ value: Bool) throws { element { $0.bool(value) } }
    mutating func encode(_ value: String) throws { element { $0.string(value) } }
    mutating func encode(_ value: Double) throws { let path = codingPath; try element { try $0.double(value, at: path) } }
    mutating func encode(_ value: Float) throws { let path = codingPath; try element { try $0.double(Double(value), at: path) } }
    mutating func encode(_ value: Int) throws { element { $0.integer(value) } }
    mutating func encode(_ value: Int8) throws { element { $0.integer(value) } }
    mutating func encode(_ value: Int16) throws { element { $0.integer(value) } }
    mutating func encode(_ value: Int32) throws { element { $0.integer(value) } }
    mutating func encode(_ value: Int64) throws { element { $0.integer(value) } }
    mutating func encode(_ value: UInt) throws { element { $0.integer(value) } }
    mutating func encode(_ value: UInt8) throws { element { $0.integer(value) } }
    mutating func encode(_ value: UInt16) throws { element { $0.integer(value) } }
    mutating func encode(_ value: UInt32) throws { element { $0.integer(value) } }
    mutating func encode(_ value: UInt64) throws { element { $0.integer(value) } }
    mutating func encode<T: Encodable>(_ value: T) throws {
        encoder.startMember(at: level)
        count += 1
        try encoder.nested(value, key: nil)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        encoder.startMember(at: level)
        count += 1
        return encoder.nestedContainer(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        encoder.startMember(at: level)
        count += 1
        return encoder.nestedUnkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        encoder.fail("superEncoder is not supported")
        return encoder
    }
}

private struct SingleValueWriter: SingleValueEncodingContainer {
    let encoder: StreamingEncoder
    var codingPath: [any CodingKey] { encoder.codingPath }

    mutating func encodeNil() throws { encoder.scalar { $0.null() } }
    mutating func encode(_ value: Bool) throws { encoder.scalar { $0.bool(value) } }
    mutating func encode(_ value: String) throws { encoder.scalar { $0.string(value) } }
    mutating func encode(_ value: Double) throws { try encoder.scalar { try $0.double(value, at: encoder.codingPath) } }
    mutating func encode(_ value: Float) throws { try encoder.scalar { try $0.double(Double(value), at: encoder.codingPath) } }
    mutating func encode(_ value: Int) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode(_ value: Int8) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode(_ value: Int16) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode(_ value: Int32) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode(_ value: Int64) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode(_ value: UInt) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode(_ value: UInt8) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode(_ value: UInt16) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode(_ value: UInt32) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode(_ value: UInt64) throws { encoder.scalar { $0.integer(value) } }
    mutating func encode<T: Encodable>(_ value: T) throws { try encoder.singleValue(value) }
}
