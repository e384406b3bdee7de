import UVRPC

/// The handlers of a typed protocol, one per message type, made into the
/// `RPCHandler` a server (or a client that takes calls) is given.
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
/// - an error the handler throws that is an `RPCPublicError`: an error
///   response of kind REMOTE_CLEAN with its `publicDescription` (the caller
///   throws ``RPCMessageError`` of kind ``RPCMessageError/Kind/remoteClean``);
/// - any other error: an error response of kind REMOTE with the text "An
///   internal error has occurred."; the error itself is logged here, not sent;
/// - a message that does not decode (not the codec's format, an id the
///   protocol does not have, a missing field, a field of the wrong type):
///   the same REMOTE error response, and the reason logged; the connection
///   keeps serving.
public struct RPCMessageHandlers: Sendable {
    /// A registered handler: decodes its message type from the reader,
    /// runs the user's handler and returns the answer's payload.
    typealias Entry = nonisolated(nonsending) @Sendable (any RPCMessageReader, RPCHandlerContext) async throws -> [UInt8]

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
    /// handler runs on the endpoint's loop (as `RPCHandler.async(_:)`'s
    /// do), concurrently with the connection's other calls; it gets the
    /// message and where it came from (`RPCHandlerContext`).
    public mutating func on<Message: RPCMessage>(
        _ type: Message.Type,
        _ handler: nonisolated(nonsending) @escaping @Sendable (Message, RPCHandlerContext) async throws -> Message.Response
    ) {
        guard let id = messageProtocol.id(of: type) else {
            return mistakes.append("a handler is given for \(type), which is not a message type of the protocol")
        }
        guard entries[id] == nil else { return mistakes.append("\(type) is given two handlers") }
        let encode = messageProtocol.answerEncoder(for: Message.self)
        let typeName = "\(Message.self)" // the metric's `type`, made once
        entries[id] = { reader, context in
            let message: Message
            do { message = try reader.decode(Message.self) } catch { throw Undecodable(reason: describe(error)) }
            // Timed (with a metrics backend) from the decoded message to the handler's return or throw.
            let startedAt = context.handlerStartTime
            let answer: Message.Response
            do {
                defer { context.typedHandlerEnded(type: typeName, startedAt: startedAt) }
                answer = try await handler(message, context)
            }
            return try encode(answer)
        }
    }

    /// Handles every `type` message, a message answered with nothing
    /// (``RPCNoResponse``), with `handler`: the empty response goes back once
    /// it returns. (Disfavoured: a closure that returns `RPCNoResponse()`
    /// itself picks the other `on`.)
    @_disfavoredOverload
    public mutating func on<Message: RPCMessage>(
        _ type: Message.Type,
        _ handler: nonisolated(nonsending) @escaping @Sendable (Message, RPCHandlerContext) async throws -> Void
    ) where Message.Response == RPCNoResponse {
        on(type) { (message: Message, context: RPCHandlerContext) async throws -> RPCNoResponse in
            try await handler(message, context)
            return RPCNoResponse()
        }
    }

    /// A message that did not decode as its id's type.
    struct Undecodable: Error {
        var reason: String
    }

    /// Every message type's handler, by id, once each is given; else every
    /// mistake at once (a handler missing, given twice, or for a foreign type).
    func checked() throws(RPCMessageProtocolError) -> [Int: Entry] {
        var all = mistakes
        for (id, type) in messageProtocol.messages.sorted(by: { $0.key < $1.key }) where entries[id] == nil {
            all.append("message type \(type) (id \(id)) has no handler")
        }
        if !all.isEmpty { throw RPCMessageProtocolError(all.joined(separator: "; ")) }
        return entries
    }

    /// Answers one payload: every failure becomes an error response, except
    /// a cancellation (the caller cancelled, its deadline passed, or the
    /// endpoint is closing), which is thrown on: the raw layer then sends
    /// nothing, or, at a deadline, an ERROR of code deadline exceeded to a UVRPC caller.
    nonisolated(nonsending)
    static func answer(_ payload: [UInt8], context: RPCHandlerContext, entries: [Int: Entry],
                       messageProtocol: RPCMessageProtocol) async throws(CancellationError) -> [UInt8] {
        // The endpoint's logger is a `let`: readable from the handler's task
        // (fetched on failures only: a Logger copy costs retains).
        func undecodable(_ reason: String) -> [UInt8] {
            context.endpoint.endpoint.logger.warning("a message does not decode; answered with an error", metadata: [
                "rpc.id": "\(context.messageID)", "rpc.peer": "\(context.peerAddress.map { "\($0)" } ?? "unix")",
                "error": "\(reason)"])
            return messageProtocol.encodeError(.remote, internalErrorText)
        }
        let reader: any RPCMessageReader
        do { reader = try messageProtocol.codec.reader(for: payload) } catch { return undecodable(describe(error)) }
        guard let entry = entries[reader.typeID] else { return undecodable("its type id \(reader.typeID) is not in the protocol") }
        do {
            return try await entry(reader, context)
        } catch let error as Undecodable {
            return undecodable(error.reason)
        } catch let error as any RPCPublicError {
            return messageProtocol.encodeError(.remoteClean, error.publicDescription)
        } catch is CancellationError {
            // Not a failure of the handler, and not to be logged as one.
            throw CancellationError()
        } catch {
            let type = messageProtocol.messages[reader.typeID].map { "\($0)" } ?? "a message"
            context.endpoint.endpoint.logger.error("the handler of \(type) failed; answered with an internal error",
                         metadata: ["rpc.id": "\(context.messageID)", "error": "\(error)"])
            return messageProtocol.encodeError(.remote, internalErrorText)
        }
    }

    /// What efro sends for an error that is not meant for the caller.
    static let internalErrorText = "An internal error has occurred."
}

extension RPCHandler {
    /// Answers typed messages with `handlers` (see ``RPCMessageHandlers``).
    /// `interceptors` run around every call, the first outermost, as for
    /// `RPCHandler.async(interceptors:_:)`: they see the message's bytes
    /// (its JSON) and its context, metadata included. One that rejects a
    /// call (throws) answers as a raw handler's failure does: a UVRPC caller
    /// gets an `RPCError` with the error's code, an efro.rpc peer (Python)
    /// nothing.
    /// - Throws: ``RPCMessageProtocolError`` when a message type of the
    ///   protocol has no handler, has two, or a handler is for a type the
    ///   protocol does not have; the message names the type.
    public static func messages(_ handlers: RPCMessageHandlers,
                                interceptors: [any RPCServerInterceptor] = []) throws(RPCMessageProtocolError) -> RPCHandler {
        let entries = try handlers.checked()
        let messageProtocol = handlers.messageProtocol
        return .async(interceptors: interceptors) { request, context in
            try await RPCMessageHandlers.answer(request.payload, context: context, entries: entries, messageProtocol: messageProtocol)
        }
    }
}
