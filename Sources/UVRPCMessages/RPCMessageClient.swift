import UVRPC

/// Makes typed calls of one protocol on an endpoint or a pool: encodes the
/// message, sends it, and returns the answer the message declares.
///
/// ```swift
/// let client = RPCMessageClient(endpoint, protocol: scores)
/// let result = try await client.send(SubmitScore(player: "alice", score: 10))   // SubmitResult
/// try await client.send(Ping())                                                   // RPCNoResponse
/// ```
///
/// A value: make one per protocol and connection (or pool) and share it
/// between tasks.
public struct RPCMessageClient: Sendable {
    /// The protocol the calls speak.
    public let messageProtocol: RPCMessageProtocol
    private let transport: Transport

    private enum Transport: Sendable {
        case endpoint(RPCAsyncEndpoint)
        case pool(RPCClientPool)
    }

    /// Calls over one connection.
    public init(_ endpoint: RPCAsyncEndpoint, protocol messageProtocol: RPCMessageProtocol) {
        self.messageProtocol = messageProtocol
        self.transport = .endpoint(endpoint)
    }

    /// Calls over a pool's connections (each call on the one with the fewest in flight).
    public init(_ pool: RPCClientPool, protocol messageProtocol: RPCMessageProtocol) {
        self.messageProtocol = messageProtocol
        self.transport = .pool(pool)
    }

    /// Sends `message` and returns its answer: its one response type, an
    /// answer of several (``RPCAnswer``), or ``RPCNoResponse``.
    ///
    /// It runs on the caller's executor (`nonisolated(nonsending)`), as the
    /// raw `RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)` does.
    /// - Throws: ``RPCMessageError`` when the peer answered with an error
    ///   (``RPCMessageError/Kind/remoteClean`` with its handler's text, or
    ///   ``RPCMessageError/Kind/remote``) or with something the message does
    ///   not declare, or when the message is not in the protocol;
    ///   `RPCError` when the call itself failed (timed out, closed, no
    ///   connection), as a raw call does; `CancellationError`.
    ///
    /// `metadata`, `timeout` and `closeOnError` are the raw send's: the
    /// metadata and the call's deadline travel to a UVRPC peer (its
    /// handler's `RPCHandlerContext`), a deadline inherited from the handler
    /// the caller runs in included; as in efro.rpc, a
    /// call on an endpoint that times out (or otherwise fails) closes the
    /// endpoint unless `closeOnError` is false; a pool's calls never close
    /// their connection (`closeOnError` is not used).
    @discardableResult
    nonisolated(nonsending)
    public func send<Message: RPCMessage>(_ message: Message, metadata: RPCMetadata = RPCMetadata(),
                                          timeout: Duration? = nil,
                                          closeOnError: Bool = true) async throws -> Message.Response {
        let payload = try messageProtocol.encode(message)
        switch transport {
        case .endpoint(let endpoint):
            let answer = try await endpoint.send(payload, metadata: metadata, timeout: timeout, closeOnError: closeOnError)
            return try messageProtocol.decodeAnswer(answer, to: Message.self, from: endpoint.label)
        case .pool(let pool):
            let answer = try await pool.send(payload, metadata: metadata, timeout: timeout)
            return try messageProtocol.decodeAnswer(answer, to: Message.self,
                                                    from: pool.addresses.map { "\($0)" }.joined(separator: ", "))
        }
    }
}
