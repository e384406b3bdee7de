import Logging

/// Answers one incoming message, exactly once, now or later (on the loop thread).
///
/// Dropping it without answering sends no response, like a failing handler in
/// the reference; it is logged so that the silent peer timeout can be traced.
public final class RPCResponder {
    /// The incoming message's id.
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses; the dynamic checks cost ~40% of the instructions per call.
    @exclusivity(unchecked) public private(set) var messageID: UInt16
    /// The endpoint the message came in on.
    public let endpoint: RPCEndpoint
    @exclusivity(unchecked) private var answered = false

    init(endpoint: RPCEndpoint, messageID: UInt16) {
        self.endpoint = endpoint
        self.messageID = messageID
    }

    deinit {
        if !answered && !endpoint.isClosingUnchecked {
            endpoint.logger.error("message handler dropped its responder without answering; no response sent",
                                  metadata: ["rpc.id": "\(messageID)"])
        }
    }

    /// True once answered (or abandoned by a failing handler).
    public var isAnswered: Bool { answered }

    /// Sends `payload` as the response.
    /// - Throws: ``RPCResponseError`` when already answered, when the
    ///   endpoint closed, or when the payload is too big for a protocol-1 peer.
    public func respond(_ payload: UnsafeRawBufferPointer) throws(RPCResponseError) {
        guard !answered else { throw .alreadyAnswered(endpoint: endpoint.label, messageID: messageID) }
        answered = true
        try endpoint.respond(to: messageID, with: payload)
    }

    /// Sends `payload` as the response; see ``respond(_:)-(UnsafeRawBufferPointer)``.
    public func respond(_ payload: [UInt8]) throws(RPCResponseError) {
        guard !answered else { throw .alreadyAnswered(endpoint: endpoint.label, messageID: messageID) }
        answered = true
        let result = payload.withUnsafeBytes { raw in
            Result { () throws(RPCResponseError) in try endpoint.respond(to: messageID, with: raw) }
        }
        try result.get()
    }

    /// Marks the message as failed (no response will be sent).
    func abandon() { answered = true }

    /// Readies a pooled responder for message `id`.
    func reuse(for id: UInt16) {
        messageID = id
        answered = false
    }
}
