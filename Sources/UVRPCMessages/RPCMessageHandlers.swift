import UVRPC

/// The handlers of a typed protocol, one per message type, made into the
/// ``RPCHandler`` a server (or a client that takes calls) is given.
///
/// ```swift
/// var handlers = RPCMessageHandlers(protocol: scores)
/// handlers.on(SubmitScore.self) { message, context in
///     SubmitResult(rank: board.submit(message), best: board.best(message.player))
/// }
/// handlers.on(Ping.self) { _, _ in RPCNoResponse() }
/// let server = RPCServer(configuration: .init(address: address), on: loops,
///                        handler: try .messages(handlers))
/// ```
///
/// What goes back (efro.message's semantics, which Python peers expect):
/// - the handler's answer, encoded as its response type (or efro's empty response);
/// - an error the handler throws that is an ``RPCPublicError``: an error
///   response of kind REMOTE_CLEAN with its `publicDescription` (the caller
///   throws ``RPCMessageError`` of kind ``RPCMessageError/Kind/remoteClean``);
/// - any other error: an error response of kind REMOTE with the text "An
///   internal error has occurred."; the error itself is logged here, not sent;
/// - a message that does not decode (not the codec's format, an id the
///   protocol does not have, a missing field, a field of the wrong type):
///   the same REMOTE error response, and the reason logged; the connection
///   keeps serving.
public struct RPCMessageHandlers: Sendable {
    /// A registered handler: takes the decoded message, returns the answer's payload.
    typealias Entry = nonisolated(nonsending) @Sendable (any RPCMessage, RPCHandlerContext) async throws -> [UInt8]

    /// The protocol the handlers serve.
    public let messageProtocol: RPCMessageProtocol
    private var entries: [Int: Entry] = [:]
    private var mistakes: [String] = []

    /// Handlers for `messageProtocol`, none yet. Failures are logged where
    /// the endpoint logs (the server's or client's `logger`).
    public init(protocol messageProtocol: RPCMessageProtocol) {
        self.messageProtocol = messageProtocol
    }

    /// Answers every `type` message with `handler`'s return value. The
    /// handler runs on the endpoint's loop (as ``RPCHandler/async(_:)``'s
    /// do), concurrently with the connection's other calls; it gets the
    /// message and where it came from (``RPCHandlerContext``).
    public mutating func on<Message: RPCMessage>(
        _ type: Message.Type,
        _ handler: nonisolated(nonsending) @escaping @Sendable (Message, RPCHandlerContext) async throws -> Message.Response
    ) {
        guard let id = messageProtocol.id(of: type) else {
            return mistakes.append("a handler is given for \(type), which is not a message type of the protocol")
        }
        guard entries[id] == nil else { return mistakes.append("\(type) is given two handlers") }
        let messageProtocol = messageProtocol
        entries[id] = { message, context in
            // The protocol decoded the payload as the type registered under `id`: `Message`.
            let answer = try await handler(message as! Message, context)
            return try messageProtocol.encode(answer: answer, to: "\(Message.self)")
        }
    }

    /// Every message type's handler, by id, once each is given; else the first mistake.
    func checked() throws(RPCMessageProtocolError) -> [Int: Entry] {
        if let mistake = mistakes.first { throw RPCMessageProtocolError(mistake) }
        for (id, type) in messageProtocol.messages.sorted(by: { $0.key < $1.key }) where entries[id] == nil {
            throw RPCMessageProtocolError("message type \(type) (id \(id)) has no handler")
        }
        return entries
    }

    /// Answers one payload: never throws, as every failure becomes an error response.
    nonisolated(nonsending)
    static func answer(_ payload: [UInt8], context: RPCHandlerContext, entries: [Int: Entry],
                       messageProtocol: RPCMessageProtocol) async -> [UInt8] {
        let decoded: (id: Int, message: any RPCMessage)
        do {
            decoded = try messageProtocol.decodeMessage(payload)
        } catch {
            let reason = (error as? RPCMessageProtocol.UnknownID).map { "its type id \($0.id) is not in the protocol" } ?? describe(error)
            // The endpoint's logger is a `let`: readable from the handler's task.
            context.endpoint.endpoint.logger.warning("a message does not decode; answered with an error", metadata: [
                "rpc.id": "\(context.messageID)", "rpc.peer": "\(context.peerAddress.map { "\($0)" } ?? "unix")",
                "error": "\(reason)"])
            return messageProtocol.encodeError(.remote, internalErrorText)
        }
        do {
            // `checked()` found a handler for every id the protocol decodes.
            return try await entries[decoded.id]!(decoded.message, context)
        } catch let error as any RPCPublicError {
            return messageProtocol.encodeError(.remoteClean, error.publicDescription)
        } catch {
            context.endpoint.endpoint.logger.error("the handler of \(type(of: decoded.message)) failed; answered with an internal error",
                         metadata: ["rpc.id": "\(context.messageID)", "error": "\(error)"])
            return messageProtocol.encodeError(.remote, internalErrorText)
        }
    }

    /// What efro sends for an error that is not meant for the caller.
    static let internalErrorText = "An internal error has occurred."
}

extension RPCHandler {
    /// Answers typed messages with `handlers` (see ``RPCMessageHandlers``).
    /// - Throws: ``RPCMessageProtocolError`` when a message type of the
    ///   protocol has no handler, has two, or a handler is for a type the
    ///   protocol does not have; the message names the type.
    public static func messages(_ handlers: RPCMessageHandlers) throws(RPCMessageProtocolError) -> RPCHandler {
        let entries = try handlers.checked()
        let messageProtocol = handlers.messageProtocol
        return .async { request, context in
            await RPCMessageHandlers.answer(request.payload, context: context, entries: entries, messageProtocol: messageProtocol)
        }
    }
}
