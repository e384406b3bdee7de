/// Why a typed call failed in the message layer: the peer answered with an
/// error (its kind and text, efro's error response), or the answer did not
/// fit the message. Failures of the call itself (timed out, no connection,
/// closed) are `RPCError`s, as for raw calls.
///
/// ```swift
/// do {
///     try await client.send(Fail(reason: "nope", clean: true))
/// } catch let error as RPCMessageError where error.kind == .remoteClean {
///     print(error.message)              // "nope": the handler's RPCPublicError text
/// }
/// ```
public struct RPCMessageError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What kind of failure: efro's error kinds (a peer's error response
    /// carries one), and the caller's own checks of an answer.
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        /// efro's number for the kind (in an error response's `"e"`); the
        /// caller's own kinds are negative and never sent.
        public let rawValue: Int

        init(rawValue: Int) { self.rawValue = rawValue }

        /// The peer's handler failed; the text is efro's "An internal error
        /// has occurred." (the details stay in the peer's log). efro's REMOTE.
        public static let remote = Kind(rawValue: 0)
        /// The peer's handler failed with an error meant for the caller (an
        /// `RPCPublicError` in Swift, a CleanError in Python): the text is
        /// that error's. efro's REMOTE_CLEAN.
        public static let remoteClean = Kind(rawValue: 1)
        /// efro's LOCAL (a Python peer's own).
        public static let local = Kind(rawValue: 2)
        /// efro's COMMUNICATION (a Python peer's own).
        public static let communication = Kind(rawValue: 3)
        /// The peer failed to reach a further peer, and says so. efro's REMOTE_COMMUNICATION.
        public static let remoteCommunication = Kind(rawValue: 4)
        /// The answer was of a type the message does not declare, or of an id the protocol does not have.
        public static let unexpectedResponse = Kind(rawValue: -1)
        /// The answer did not decode as the type its id names (or was not the codec's format).
        public static let undecodable = Kind(rawValue: -2)
        /// The message's type is not in the client's protocol: nothing was sent.
        public static let notInProtocol = Kind(rawValue: -3)
        /// The message did not encode (its `Encodable` conformance threw): nothing was sent.
        public static let encodingFailed = Kind(rawValue: -4)

        public var description: String {
            switch rawValue {
            case 0: return "remote error"
            case 1: return "remote clean error"
            case 2: return "local error"
            case 3: return "communication error"
            case 4: return "remote communication error"
            case -1: return "unexpected response"
            case -2: return "undecodable response"
            case -3: return "not in the protocol"
            case -4: return "encoding failed"
            default: return "error kind \(rawValue)"
            }
        }
    }

    /// The kind of failure.
    public let kind: Kind
    /// The text: the peer's, for a peer's error response; else what went wrong, naming the types.
    public let message: String

    init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// Whether the peer's handler failed (any of efro's error kinds, which only peers send).
    public var isFromPeer: Bool { kind.rawValue >= 0 }

    public var description: String { "\(kind): \(message)" }
}
