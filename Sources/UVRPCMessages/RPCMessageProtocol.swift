/// A typed protocol, declared once: its message types and response types,
/// each under its id (messages and responses are two id spaces; ids are
/// small, non-negative and never change once used), and the codec.
///
/// ```swift
/// let scores = try RPCMessageProtocol(
///     messages: [0: SubmitScore.self, 1: TopScores.self, 2: Ping.self],
///     responses: [0: SubmitResult.self, 1: TopScoresResult.self])
/// ```
///
/// The declaration is checked when it is made: a duplicate or negative id,
/// a type registered twice, or a message whose response type is not
/// registered throws an ``RPCMessageProtocolError`` naming the type.
public struct RPCMessageProtocol: Sendable {
    /// How messages become payloads (efro.message JSON by default).
    public let codec: any RPCMessageCodec
    private let messageTypes: [Int: any RPCMessage.Type]
    private let messageIDs: [ObjectIdentifier: Int]
    private let responseTypes: [Int: any RPCResponseMessage.Type]
    private let responseIDs: [ObjectIdentifier: Int]

    /// efro's system response ids: an error, and the empty response.
    static let errorResponseID = -1, emptyResponseID = -2

    /// Declares a protocol.
    /// - Parameters:
    ///   - messages: each message type under its id.
    ///   - responses: each response type under its id; every response type
    ///     a message declares must be here.
    ///   - codec: how values become payloads; efro.message JSON (what
    ///     Python peers speak) by default.
    /// - Throws: ``RPCMessageProtocolError`` naming the first mistake.
    public init(messages: KeyValuePairs<Int, any RPCMessage.Type>,
                responses: KeyValuePairs<Int, any RPCResponseMessage.Type> = [:],
                codec: any RPCMessageCodec = RPCMessageJSONCodec()) throws(RPCMessageProtocolError) {
        let (messageTypes, messageIDs) = try Self.table(messages, of: "message") { $0 as any Any.Type }
        let (responseTypes, responseIDs) = try Self.table(responses, of: "response") { $0 as any Any.Type }
        for (_, type) in messages {
            for response in type.answerTypes where responseIDs[ObjectIdentifier(response)] == nil {
                throw .init("message type \(type) is answered with \(response), which is not among the protocol's responses")
            }
        }
        self.codec = codec
        (self.messageTypes, self.messageIDs) = (messageTypes, messageIDs)
        (self.responseTypes, self.responseIDs) = (responseTypes, responseIDs)
    }

    /// One id table (`kind`: "message" or "response"), checked: ids 0 or
    /// more, one type per id, one id per type.
    private static func table<Entry>(_ pairs: KeyValuePairs<Int, Entry>, of kind: String, _ metatype: (Entry) -> any Any.Type)
        throws(RPCMessageProtocolError) -> ([Int: Entry], [ObjectIdentifier: Int]) {
        var types: [Int: Entry] = [:], ids: [ObjectIdentifier: Int] = [:]
        for (id, type) in pairs {
            guard id >= 0 else { throw .init("\(kind) type \(type) has id \(id): ids are 0 or more (negative ids are efro's system responses)") }
            if let other = types[id] { throw .init("\(kind) types \(other) and \(type) both have id \(id)") }
            if let other = ids[ObjectIdentifier(metatype(type))] { throw .init("\(kind) type \(type) is registered twice (ids \(other) and \(id))") }
            types[id] = type
            ids[ObjectIdentifier(metatype(type))] = id
        }
        return (types, ids)
    }

    /// The id of message type `type`; nil when it is not in this protocol.
    public func id(of type: any RPCMessage.Type) -> Int? { messageIDs[ObjectIdentifier(type)] }

    /// The id of response type `type`; nil when it is not in this protocol.
    public func id(of type: any RPCResponseMessage.Type) -> Int? { responseIDs[ObjectIdentifier(type)] }

    /// Every message type, by id.
    var messages: [Int: any RPCMessage.Type] { messageTypes }

    // MARK: - The caller's side

    /// The payload of `message`.
    func encode<Message: RPCMessage>(_ message: Message) throws -> [UInt8] {
        guard let id = messageIDs[ObjectIdentifier(Message.self)] else {
            throw RPCMessageError(.notInProtocol, "cannot send \(Message.self): it is not a message type of this protocol")
        }
        do {
            return try codec.encode(message, typeID: id)
        } catch {
            throw RPCMessageError(.encodingFailed, "cannot encode \(Message.self): \(describe(error))")
        }
    }

    /// The answer a response payload carries for a `Message`, or the error it carries.
    func decodeAnswer<Message: RPCMessage>(_ payload: [UInt8], to message: Message.Type,
                                           from peer: @autoclosure () -> String) throws -> Message.Response {
        func undecodable(_ error: any Error) -> RPCMessageError {
            RPCMessageError(.undecodable, "the answer to \(Message.self) from \(peer()) does not decode: \(describe(error))")
        }
        let reader: any RPCMessageReader
        do { reader = try codec.reader(for: payload) } catch { throw undecodable(error) }
        let id = reader.typeID
        if id == Self.errorResponseID {
            let failure: ErrorResponse
            do { failure = try reader.decode(ErrorResponse.self) } catch { throw undecodable(error) }
            throw RPCMessageError(failure.e >= 0 ? RPCMessageError.Kind(rawValue: failure.e) : .remote, failure.m)
        }
        if id == Self.emptyResponseID, let answer = Message.Response(response: nil) { return answer }
        guard let type = responseTypes[id] else {
            if id == Self.emptyResponseID { throw unexpected(Message.self, got: "the empty response", from: peer()) }
            throw RPCMessageError(.unexpectedResponse, "\(Message.self) sent to \(peer()) was answered with response id \(id), which this protocol does not have")
        }
        /// Decodes the response as its own type `R`: the answer itself when
        /// the message declares just `R` (no existential box), else through
        /// the answer's `init?(response:)`.
        func answer<R: RPCResponseMessage>(_ type: R.Type) throws -> Message.Response {
            // A type the message does not declare is refused before it is decoded.
            guard R.self == Message.Response.self
                || Message.Response.responseTypes.contains(where: { ObjectIdentifier($0) == ObjectIdentifier(R.self) }) else {
                throw unexpected(Message.self, got: "\(R.self)", from: peer())
            }
            let response: R
            do { response = try reader.decode(R.self) } catch { throw undecodable(error) }
            if R.self == Message.Response.self { return _identityCast(response, to: Message.Response.self) }
            guard let answer = Message.Response(response: response) else { throw unexpected(Message.self, got: "\(R.self)", from: peer()) }
            return answer
        }
        return try answer(type)
    }

    private func unexpected<Message: RPCMessage>(_ message: Message.Type, got: String, from peer: String) -> RPCMessageError {
        let declared = Message.Response.responseTypes.isEmpty ? "nothing"
            : Message.Response.responseTypes.map { "\($0)" }.joined(separator: " or ")
        return RPCMessageError(.unexpectedResponse, "\(Message.self) sent to \(peer) was answered with \(got); it declares \(declared)")
    }

    // MARK: - The handler's side

    /// How answers of `Message` become payloads, worked out once per
    /// message type: an answer that is its one response type is encoded as
    /// that type directly (no existential box, no cast per call); others
    /// through their ``RPCAnswer/response``.
    func answerEncoder<Message: RPCMessage>(for message: Message.Type) -> @Sendable (Message.Response) throws -> [UInt8] {
        // `Message` is in this protocol, whose declaration checked that every
        // response type a message declares is registered: each has an id here.
        let codec = codec
        let declared = Dictionary(uniqueKeysWithValues: Message.Response.responseTypes.map {
            (ObjectIdentifier($0), responseIDs[ObjectIdentifier($0)]!)
        })
        func direct<R: RPCResponseMessage>(_ type: R.Type) -> @Sendable (Message.Response) throws -> [UInt8] {
            let id = declared[ObjectIdentifier(R.self)]!
            return { answer in try codec.encode(_identityCast(answer, to: R.self), typeID: id) }
        }
        if let single = Message.Response.self as? any RPCResponseMessage.Type { return direct(single) }
        return { answer in
            guard let response = answer.response else { return try codec.encode(EmptyResponse(), typeID: Self.emptyResponseID) }
            func encode<R: RPCResponseMessage>(_ response: R) throws -> [UInt8] {
                // Refused here, where it is a bug, rather than by the caller.
                guard let id = declared[ObjectIdentifier(R.self)] else {
                    throw RPCMessageProtocolError("the handler of \(Message.self) answered with \(R.self), which \(Message.self) does not declare")
                }
                return try codec.encode(response, typeID: id)
            }
            return try encode(response)
        }
    }

    /// The payload of an error response.
    func encodeError(_ kind: RPCMessageError.Kind, _ text: String) -> [UInt8] {
        // Two plain fields: the JSON codec cannot fail on them; a codec that does sends nothing better than this.
        (try? codec.encode(ErrorResponse(m: text, e: kind.rawValue), typeID: Self.errorResponseID))
            ?? Array(#"{"t":-1,"m":{"m":"An internal error has occurred.","e":0}}"#.utf8)
    }
}

/// efro's error response (id -1): its text and kind.
struct ErrorResponse: Codable {
    var m: String
    var e: Int
}

/// efro's empty response (id -2).
struct EmptyResponse: Codable {}

extension RPCMessage {
    /// The response types its answer may be.
    static var answerTypes: [any RPCResponseMessage.Type] { Response.responseTypes }
}

/// A decoding error in words: what was expected, and at which field.
func describe(_ error: any Error) -> String {
    func path(_ codingPath: [any CodingKey]) -> String {
        let names = codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
        return names.isEmpty ? "" : " at \(names.joined(separator: "."))"
    }
    switch error {
    case DecodingError.keyNotFound(let key, let context): return "missing field \"\(key.stringValue)\"\(path(context.codingPath))"
    case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context), DecodingError.dataCorrupted(let context):
        return "\(context.debugDescription)\(path(context.codingPath))"
    case EncodingError.invalidValue(_, let context): return "\(context.debugDescription)\(path(context.codingPath))"
    default: return "\(error)"
    }
}

/// A mistake in a typed protocol's declaration or its handlers, found when
/// it is made (``RPCMessageProtocol/init(messages:responses:codec:)``,
/// `RPCHandler.messages(_:)`); the message names the type.
public struct RPCMessageProtocolError: Error, CustomStringConvertible, Sendable {
    /// What is wrong, naming the type.
    public let message: String

    init(_ message: String) { self.message = message }

    public var description: String { "typed protocol: \(message)" }
}
