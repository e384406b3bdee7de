/// A key for a value that every connection may carry (a session, the
/// authenticated user, a per-peer counter...): the key's type names the
/// value and fixes its type, as swift-service-context's keys do.
///
/// ```swift
/// enum SessionKey: RPCConnectionKey { typealias Value = Session }
/// // the server's admit hook:   .accept([SessionKey.self: Session()])
/// // a handler:                 request.connectionValues[SessionKey.self]   // Session?
/// ```
public protocol RPCConnectionKey {
    /// The type of the value the key names.
    associatedtype Value: Sendable
}

/// The values one connection carries, each under its ``RPCConnectionKey``:
/// set by ``RPCServer``'s admit hook when it accepts the connection, or on
/// the endpoint later (``RPCEndpoint/connectionValues``), and seen by every
/// handler call on that connection (``RPCRequest/connectionValues``,
/// ``RPCHandlerContext/connectionValues``). Typed: no casts.
public struct RPCConnectionValues: Sendable, ExpressibleByDictionaryLiteral {
    private var storage: [ObjectIdentifier: any Sendable] = [:]

    /// No values.
    public init() {}

    /// The given values, each under its key (`[SessionKey.self: session]`);
    /// a value whose type is not its key's is dropped.
    public init(dictionaryLiteral elements: (any RPCConnectionKey.Type, any Sendable)...) {
        for (key, value) in elements { insert(value, for: key) }
    }

    private mutating func insert<Key: RPCConnectionKey>(_ value: any Sendable, for key: Key.Type) {
        if let typed = value as? Key.Value { self[key] = typed }
    }

    /// The value under `key`, nil when there is none.
    public subscript<Key: RPCConnectionKey>(_ key: Key.Type) -> Key.Value? {
        // Only `set` below stores under a key, always a `Key.Value`: the cast cannot fail.
        get { storage[ObjectIdentifier(key)] as? Key.Value }
        set { storage[ObjectIdentifier(key)] = newValue }
    }

    /// True when no value is set.
    public var isEmpty: Bool { storage.isEmpty }
}
