/// A call's metadata: a small, ordered list of string keys and values that
/// travels with one message beside its payload (an auth token, a tenant, a
/// W3C `traceparent`), as gRPC's metadata does.
///
/// It travels only to a peer that speaks the `meta` extension (``RPCExtensions/metadata``):
/// every UVRPC peer does; to an efro.rpc peer nothing extra is sent and the
/// metadata is dropped (logged at debug level). A caller sets it per call
/// (``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)``); a handler
/// reads it from its context (``RPCHandlerContext/metadata``, or a callback
/// handler's ``RPCRequest/metadata``).
///
/// ```swift
/// let answer = try await endpoint.send(payload, metadata: ["authorization": "Bearer abc", "tenant": "7"])
/// // in the handler:
/// guard context.metadata["authorization"] == "Bearer abc" else {
///     throw RPCError(code: .permissionDenied, message: "unknown caller")
/// }
/// ```
///
/// Bounds: keys of 1-255 bytes of UTF-8, and all entries together at most
/// ``Wire/maximumMetadata`` (4096) bytes on the wire (each entry takes its
/// key and value plus 3 bytes). A call over the bound fails before it is
/// sent, with an ``RPCError`` of code ``RPCError/Code/invalidArgument``.
/// The key `deadline` is the library's: a call's deadline travels as its
/// timeout (see ``RPCHandlerContext/deadline``), and a call whose metadata
/// sets it fails the same way.
public struct RPCMetadata: Sendable, Hashable, ExpressibleByDictionaryLiteral, Sequence, CustomStringConvertible {
    /// One key and its value.
    public struct Entry: Sendable, Hashable {
        /// The key (case-sensitive; lowercase by convention).
        public var key: String
        /// The value.
        public var value: String
    }

    /// The entries, in the order they were added (a key may repeat).
    public private(set) var entries: [Entry] {
        get { storage ?? [] }
        set { storage = newValue.isEmpty ? nil : newValue }
    }
    /// nil when empty: the metadata of a call that has none (every call by
    /// default) is then one null word, with no reference to count.
    private var storage: [Entry]?

    /// No entries.
    public init() {}

    /// The entries of a literal, in its order: `["tenant": "7", "authorization": "Bearer abc"]`.
    public init(dictionaryLiteral elements: (String, String)...) {
        entries = elements.map { Entry(key: $0.0, value: $0.1) }
    }

    /// The first value under `key`, or nil. Setting it replaces every entry
    /// under `key` with one (at the first one's place); setting nil removes them.
    public subscript(key: String) -> String? {
        get { entries.first { $0.key == key }?.value }
        set {
            let first = entries.firstIndex { $0.key == key }
            entries.removeAll { $0.key == key }
            guard let newValue else { return }
            entries.insert(Entry(key: key, value: newValue), at: Swift.min(first ?? entries.count, entries.count))
        }
    }

    /// Adds an entry at the end, keeping any other under the same key.
    public mutating func append(_ value: String, forKey key: String) {
        entries.append(Entry(key: key, value: value))
    }

    /// Every value under `key`, in order.
    public func values(forKey key: String) -> [String] {
        entries.filter { $0.key == key }.map(\.value)
    }

    /// Whether there are no entries.
    public var isEmpty: Bool { storage == nil }
    /// How many entries there are.
    public var count: Int { storage?.count ?? 0 }

    public func makeIterator() -> IndexingIterator<[Entry]> { entries.makeIterator() }

    public var description: String {
        "[" + entries.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "]"
    }

    /// The key the library writes a call's deadline under: the microseconds
    /// left, in decimal, when the message was written.
    static let deadlineKey = "deadline"
}

extension RPCMetadata {
    /// The entries as METADATA packet bytes, with the deadline entry last
    /// when there is one; or why they cannot be sent.
    func encoded(deadline: Duration?) -> Result<[UInt8], MetadataProblem> {
        var bytes: [UInt8] = []
        func add(_ key: String, _ value: String) -> MetadataProblem? {
            let k = key.utf8, v = value.utf8
            if k.isEmpty || k.count > 255 { return .badKey(key) }
            if bytes.count + 3 + k.count + v.count > Wire.maximumMetadata { return .tooLong }
            bytes.append(UInt8(k.count))
            bytes.append(contentsOf: k)
            bytes.append(UInt8(v.count >> 8))
            bytes.append(UInt8(v.count & 0xff))
            bytes.append(contentsOf: v)
            return nil
        }
        for entry in entries {
            if entry.key == Self.deadlineKey { return .failure(.reservedKey(entry.key)) }
            if let problem = add(entry.key, entry.value) { return .failure(problem) }
        }
        if let deadline {
            let (seconds, attoseconds) = deadline.components
            // Saturated: a timeout past Int64.max microseconds (about 292 000 years) is sent as that.
            let (whole, overflow) = Swift.max(0, seconds).multipliedReportingOverflow(by: 1_000_000)
            let (sum, carried) = whole.addingReportingOverflow(Swift.max(0, attoseconds / 1_000_000_000_000))
            let micros = overflow || carried ? Int64.max : sum
            if let problem = add(Self.deadlineKey, String(micros)) { return .failure(problem) }
        }
        return .success(bytes)
    }

    /// Encoded entries (``encoded(deadline:)``) whose last entry is the
    /// deadline, with `milliseconds` less left (not below 0). The value has
    /// no more digits than before, so the entries stay within their bound.
    static func entries(_ bytes: [UInt8], deadlineLessBy milliseconds: UInt64) -> [UInt8] {
        var last = 0, at = 0
        while at < bytes.count { // to the last entry
            last = at
            let keyCount = Int(bytes[at])
            at += 3 + keyCount + (Int(bytes[at + 1 + keyCount]) << 8 | Int(bytes[at + 2 + keyCount]))
        }
        let key = Array(deadlineKey.utf8)
        let valueStart = last + 3 + key.count
        guard bytes.count > valueStart, Int(bytes[last]) == key.count, Array(bytes[(last + 1)..<(last + 1 + key.count)]) == key,
              let micros = UInt64(String(decoding: bytes[valueStart...], as: UTF8.self)) else { return bytes }
        let left = Array(String(micros > milliseconds &* 1000 ? micros - milliseconds &* 1000 : 0).utf8)
        var result = Array(bytes[..<(valueStart - 2)])
        result.append(UInt8(left.count >> 8))
        result.append(UInt8(left.count & 0xff))
        result.append(contentsOf: left)
        return result
    }

    /// Reads a METADATA packet's entries: the metadata (without the
    /// deadline entry) and the deadline's microseconds, or why they do not parse.
    static func decode(_ bytes: UnsafeRawBufferPointer) -> Result<(RPCMetadata, deadlineMicroseconds: UInt64?), DecodeFailure> {
        var metadata = RPCMetadata()
        var deadline: UInt64?
        var at = 0
        while at < bytes.count {
            let keyCount = Int(bytes[at])
            guard keyCount > 0 else { return .failure(DecodeFailure("an empty key at byte \(at)")) }
            guard at + 1 + keyCount + 2 <= bytes.count else { return .failure(DecodeFailure("an entry at byte \(at) runs past the end")) }
            let keyBytes = UnsafeRawBufferPointer(rebasing: bytes[(at + 1)..<(at + 1 + keyCount)])
            let valueCount = Int(bytes[at + 1 + keyCount]) << 8 | Int(bytes[at + 2 + keyCount])
            let valueStart = at + 3 + keyCount
            guard valueStart + valueCount <= bytes.count else { return .failure(DecodeFailure("the value at byte \(valueStart) runs past the end")) }
            let valueBytes = UnsafeRawBufferPointer(rebasing: bytes[valueStart..<(valueStart + valueCount)])
            guard let key = String(validating: keyBytes, as: UTF8.self),
                  let value = String(validating: valueBytes, as: UTF8.self) else {
                return .failure(DecodeFailure("an entry at byte \(at) is not UTF-8"))
            }
            if key == deadlineKey {
                guard deadline == nil, valueCount > 0, valueCount <= 19, valueBytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                      let micros = UInt64(value) else {
                    return .failure(DecodeFailure("the deadline is not one decimal number of microseconds: \"\(value)\""))
                }
                deadline = micros
            } else {
                metadata.append(value, forKey: key)
            }
            at = valueStart + valueCount
        }
        return .success((metadata, deadline))
    }

    /// Why a METADATA packet's entries do not parse.
    struct DecodeFailure: Error {
        let why: String
        init(_ why: String) { self.why = why }
    }
}

/// Why a call's metadata cannot be sent.
enum MetadataProblem: Error, Sendable, Equatable, CustomStringConvertible {
    case badKey(String)
    case tooLong
    case reservedKey(String)

    var description: String {
        switch self {
        case .badKey(let key): return "metadata key \"\(key)\" must be 1-255 bytes of UTF-8"
        case .tooLong: return "the metadata takes more than \(Wire.maximumMetadata) bytes on the wire"
        case .reservedKey(let key): return "metadata key \"\(key)\" is the library's (give the call a timeout instead)"
        }
    }
}
