/// A message type of a typed protocol: a `Codable` value a caller sends
/// (``RPCMessageClient/send(_:metadata:timeout:closeOnError:)``) and a handler answers
/// (``RPCMessageHandlers``), with the answer type it declares.
///
/// ```swift
/// struct SubmitScore: RPCMessage {
///     typealias Response = SubmitResult     // one response type
///     var player: String
///     var score: Int
///     enum CodingKeys: String, CodingKey { case player = "p", score = "s" }   // storage names
/// }
/// struct Ping: RPCMessage { typealias Response = RPCNoResponse }             // answered with nothing
/// ```
///
/// Its id is given where the protocol is declared (``RPCMessageProtocol``).
public protocol RPCMessage: Codable, Sendable {
    /// What the message is answered with: one ``RPCResponseMessage`` type,
    /// ``RPCNoResponse``, or an ``RPCAnswer`` of several response types.
    associatedtype Response: RPCAnswer
}

/// A response type of a typed protocol. A response type is also the
/// answer of a message that has only that one response type.
public protocol RPCResponseMessage: RPCAnswer, Codable {}

/// What a message is answered with: the response types it may be, and
/// the way from a response received to the answer (and back).
///
/// Three kinds conform: every ``RPCResponseMessage`` (an answer of one
/// type), ``RPCNoResponse`` (no answer: efro's empty response), and an
/// enum of your own for a message answered with one of several types:
///
/// ```swift
/// enum SubmitAnswer: RPCAnswer {
///     case accepted(SubmitResult)
///     case rejected(Rejection)
///     static let responseTypes: [any RPCResponseMessage.Type] = [SubmitResult.self, Rejection.self]
///     init?(response: (any RPCResponseMessage)?) {
///         switch response {
///         case let value as SubmitResult: self = .accepted(value)
///         case let value as Rejection: self = .rejected(value)
///         default: return nil
///         }
///     }
///     var response: (any RPCResponseMessage)? {
///         switch self { case .accepted(let value): value; case .rejected(let value): value }
///     }
/// }
/// ```
public protocol RPCAnswer: Sendable {
    /// The response types the answer may be; empty for ``RPCNoResponse``.
    static var responseTypes: [any RPCResponseMessage.Type] { get }
    /// The answer a response received stands for (nil for the empty
    /// response); nil when it is not one of ``responseTypes``.
    init?(response: (any RPCResponseMessage)?)
    /// The response to send for this answer; nil sends the empty response.
    var response: (any RPCResponseMessage)? { get }
}

extension RPCResponseMessage {
    public static var responseTypes: [any RPCResponseMessage.Type] { [Self.self] }

    public init?(response: (any RPCResponseMessage)?) {
        guard let value = response as? Self else { return nil }
        self = value
    }

    public var response: (any RPCResponseMessage)? { self }
}

/// The answer of a message answered with nothing: efro's empty response
/// (type id -2). A handler returns `RPCNoResponse()`; a caller's `send`
/// returns it once the peer has handled the message.
public struct RPCNoResponse: RPCAnswer, Equatable {
    public init() {}
    public static var responseTypes: [any RPCResponseMessage.Type] { [] }
    public init?(response: (any RPCResponseMessage)?) { if response != nil { return nil } }
    public var response: (any RPCResponseMessage)? { nil }
}
