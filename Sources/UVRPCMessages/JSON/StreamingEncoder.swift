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
    // Stored properties are touched only by this encoder's own synchronous
    // calls, never across an access to another: no dynamic exclusivity
    // checks (they were 5% of a typed call).
    @exclusivity(unchecked) var writer: JSONWriter
    /// Always empty while encoding: keeping a path per nested value cost an
    /// allocation per message. An error's path is built as it unwinds
    /// instead (``nested(_:key:)``).
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    /// The containers open, as bit stacks (no allocation): bit `level - 1`
    /// of `arrays` says whether that container is an array, of `members`
    /// whether it has a member yet (the next one needs a comma).
    @exclusivity(unchecked) private var depth = 0
    @exclusivity(unchecked) private var arrays: UInt64 = 0
    @exclusivity(unchecked) private var members: UInt64 = 0
    /// The deepest nesting written (the bit stacks' width).
    static let maximumDepth = 64
    /// How many containers were open when the value being written started.
    @exclusivity(unchecked) private var valueLevel = 0
    /// Whether the value being written has written anything (a container or a single value).
    @exclusivity(unchecked) private var valueWritten = false
    /// The first misuse met, thrown when the value ends.
    @exclusivity(unchecked) private var failure: EncodingError?

    init(capacity: Int) { writer = JSONWriter(capacity: capacity) }

    /// Writes `value` at the current position: efro's forms for dates,
    /// durations and bytes, else whatever the value's `encode(to:)` writes.
    /// (Metatype comparisons, not casts: a dynamic cast per value cost more
    /// than writing it.)
    func encodeValue<T: Encodable>(_ value: T) throws {
        if T.self == Data.self {
            _identityCast(value, to: Data.self).withUnsafeBytes { writer.base64($0) }
        } else if T.self == Date.self {
            try writer.date(_identityCast(value, to: Date.self))
        } else if T.self == Duration.self {
            try writer.duration(_identityCast(value, to: Duration.self))
        } else {
            let level = depth
            let outer = valueLevel
            (valueLevel, valueWritten) = (level, false)
            try value.encode(to: self)
            if let failure { throw failure }
            if !valueWritten { writer.byte(0x7B); writer.byte(0x7D) } // a type that wrote nothing: an empty object
            close(downTo: level)
            valueLevel = outer
        }
        valueWritten = true
    }

    /// Closes the containers opened past `level`.
    fileprivate func close(downTo level: Int) {
        while depth > level {
            depth -= 1
            writer.byte(arrays & (1 << depth) != 0 ? 0x5D : 0x7D)
        }
    }

    /// Opens a container (an array or an object) and returns its level.
    private func push(array: Bool) -> Int {
        guard depth < Self.maximumDepth else {
            fail("nested deeper than \(Self.maximumDepth)")
            return depth
        }
        writer.byte(array ? 0x5B : 0x7B)
        let bit: UInt64 = 1 << depth
        if array { arrays |= bit } else { arrays &= ~bit }
        members &= ~bit
        depth += 1
        return depth
    }

    /// Opens a container for the value being written and returns its
    /// level; the open one when the value asks again for the same kind (as
    /// a class and its superclass do).
    private func openContainer(array: Bool) -> Int {
        if valueWritten {
            // The same kind again (a superclass writing into its subclass's
            // container, even after the subclass opened nested ones): the open one.
            if depth > valueLevel, (arrays & (1 << valueLevel) != 0) == array {
                close(downTo: valueLevel + 1)
                return depth
            }
            fail("asked for a second container for one value")
            return depth
        }
        valueWritten = true
        return push(array: array)
    }

    fileprivate func fail(_ what: String) {
        if failure == nil {
            failure = .invalidValue((), .init(codingPath: [], debugDescription: "efro.message JSON: \(what)"))
        }
    }

    /// Starts a member of the container at `level`: closes any inner
    /// container still open and writes the comma when one is due.
    fileprivate func startMember(at level: Int) {
        close(downTo: level)
        guard level > 0, level == depth else { return fail("wrote into a container after it ended") }
        let bit: UInt64 = 1 << (level - 1)
        if members & bit != 0 { writer.byte(0x2C) } else { members |= bit }
    }

    fileprivate func startMember(at level: Int, key: some CodingKey) {
        startMember(at: level)
        writer.string(key.stringValue)
        writer.byte(0x3A)
    }

    /// Writes a member's value; an error from inside it gets the member's
    /// key in front of its path on the way out.
    fileprivate func nested<T: Encodable>(_ value: T, key: (any CodingKey)?) throws {
        do {
            try encodeValue(value)
        } catch EncodingError.invalidValue(let invalid, let context) {
            let step = key ?? PathKey(string: "[]")
            throw EncodingError.invalidValue(invalid, .init(codingPath: [step] + context.codingPath,
                                                            debugDescription: context.debugDescription,
                                                            underlyingError: context.underlyingError))
        }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(KeyedWriter<Key>(encoder: self, level: openContainer(array: false)))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        UnkeyedWriter(encoder: self, level: openContainer(array: true))
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
        KeyedEncodingContainer(KeyedWriter<Key>(encoder: self, level: push(array: false)))
    }

    fileprivate func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        UnkeyedWriter(encoder: self, level: push(array: true))
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
        try member(key) { try $0.double(value, key: key) }
    }
    mutating func encode(_ value: Float, forKey key: Key) throws {
        try member(key) { try $0.double(Double(value), key: key) }
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
    mutating func encode(_ value: Double) throws { try element { try $0.double(value, key: nil) } }
    mutating func encode(_ value: Float) throws { try element { try $0.double(Double(value), key: nil) } }
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
    mutating func encode(_ value: Double) throws { try encoder.scalar { try $0.double(value, key: nil) } }
    mutating func encode(_ value: Float) throws { try encoder.scalar { try $0.double(Double(value), key: nil) } }
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
