import UVLoop

/// One incoming message as a callback handler (``RPCEndpoint/onMessage``)
/// sees it: what came in, from whom, and the way to answer it.
///
/// Answer exactly once, now (in the handler) or later (keep the request, e.g.
/// in a timer's closure or another call's completion, and call
/// ``respond(_:)-(UnsafeRawBufferPointer)`` on the loop thread). Answering
/// twice throws an ``RPCResponseError`` (already answered).
/// A request left unanswered is not lost silently: the endpoint keeps it in
/// its table of unanswered requests (``RPCEndpoint/unansweredRequestCount``),
/// logs it once it has waited longer than
/// ``RPCEndpoint/Configuration/messageTimeout`` (by then the peer's call has
/// most likely timed out), and again when the endpoint closes with it.
///
/// A value, not an object: it costs no allocation and no reference count per
/// message (the answer state lives in the endpoint's table). It is not
/// `Sendable`: answer on the endpoint's loop thread.
///
/// ```swift
/// endpoint.onMessage = { request in
///     try request.respond(request.payload)          // echo
/// }
/// ```
public struct RPCRequest {
    /// The message's bytes: a view valid only during the handler call. Copy
    /// it (`Array(request.payload)`) to keep it for a later answer.
    public let payload: UnsafeRawBufferPointer
    /// The endpoint the message came in on.
    public let endpoint: RPCEndpoint
    /// Which request of the endpoint this is: its sequence number (tells a
    /// kept request from a newer one that reuses its message id) above the
    /// message id in the low 16 bits. One word, so that the request (four
    /// words) travels in registers.
    let token: UInt64

    init(payload: UnsafeRawBufferPointer, endpoint: RPCEndpoint, token: UInt64) {
        self.payload = payload
        self.endpoint = endpoint
        self.token = token
    }

    /// The message's id, as the peer numbered it.
    public var messageID: UInt16 { UInt16(truncatingIfNeeded: token) }

    /// The peer's address (nil for a Unix-socket peer without a bound name).
    public var peerAddress: SocketAddress? { endpoint.connection.remoteAddress }
    /// The peer's handshake: a message only ever arrives after it.
    public var peerInfo: PeerInfo { endpoint._peerInfo ?? PeerInfo(keepaliveInterval: 0) }
    /// Over TLS, the subject of the certificate the peer showed (RFC 2253,
    /// e.g. `CN=client-1,O=Example`; servers get one with mutual TLS); else nil.
    public var peerCertificateSubject: String? { endpoint.connection.peerCertificateSubject }
    /// The connection's values (``RPCEndpoint/connectionValues``): what the
    /// server's admit hook attached, or what the owner set since.
    public var connectionValues: RPCConnectionValues { endpoint._connectionValues }
    /// True once answered, or once the request can no longer be answered (its
    /// handler threw, the endpoint closed, the peer cancelled it or reused its id).
    public var isAnswered: Bool { endpoint.isAnswered(token: token) }
    /// True once the peer cancelled its call (extension `cancel`): a request
    /// kept for a later answer should stop its work; answering it throws
    /// an ``RPCResponseError`` (cancelled). (A cancel is read
    /// between handler calls, so it is always false during the handler call.)
    public var isCancelled: Bool { endpoint.isCancelled(token: token) }
    /// The metadata the caller sent with the message (extension `meta`;
    /// empty when it sent none, and always from an efro.rpc peer).
    public var metadata: RPCMetadata { endpoint.incomingCall(token: token).metadata }
    /// When the caller stops waiting for the answer, when its call carried
    /// a deadline (extension `meta`); else nil. A callback handler is not
    /// stopped at its deadline: check ``isPastDeadline`` in long work.
    public var deadline: ContinuousClock.Instant? { endpoint.incomingCall(token: token).deadline }
    /// True once the caller's deadline passed (false without one): its call
    /// has timed out there, and an answer would be dropped.
    public var isPastDeadline: Bool { deadline.map { ContinuousClock.now >= $0 } ?? false }

    /// Sends `payload` as the answer.
    /// - Throws: ``RPCResponseError`` when the request was already answered
    ///   or can no longer be, when the endpoint closed, or when the payload is
    ///   too big for a protocol-1 peer.
    public func respond(_ payload: UnsafeRawBufferPointer) throws(RPCResponseError) {
        try endpoint.answer(token: token, with: payload)
    }

    /// Sends `payload` as the answer; see ``respond(_:)-(UnsafeRawBufferPointer)``.
    public func respond(_ payload: [UInt8]) throws(RPCResponseError) {
        let result = payload.withUnsafeBytes { raw in
            Result { () throws(RPCResponseError) in try endpoint.answer(token: token, with: raw, owned: payload) }
        }
        try result.get()
    }

    /// Answers with `error` instead of a payload, for a request answered
    /// later (within the handler call, throwing does the same), and logs it:
    /// a peer that takes error answers (extension `error`) fails its call at
    /// once with an ``RPCError`` of code ``RPCError/Code/handlerFailed`` and
    /// the text "the handler failed", or with the error's own code and text
    /// when it is an ``RPCPublicError``; to an efro.rpc peer nothing is
    /// sent, as the reference does.
    /// - Throws: ``RPCResponseError`` as ``respond(_:)-(UnsafeRawBufferPointer)`` does.
    public func fail(_ error: any Error) throws(RPCResponseError) {
        try endpoint.fail(token: token, error: error)
    }
}

/// One incoming message as an async handler sees it: what came in. The
/// handler's return value is the answer; where the message came from, its
/// metadata and deadline are in the handler's ``RPCHandlerContext``.
///
/// ```swift
/// let server = RPCServer(configuration: .init(address: address), on: loop,
///                        handler: .async { request, context in
///     request.payload                                 // echo
/// })
/// ```
public struct RPCAsyncRequest: Sendable {
    /// The message's bytes, the handler's to keep: an array the loop reuses
    /// for a later message once the handler has returned, unless the handler
    /// kept it (copy-on-write), so a handler that does not keep it costs no
    /// allocation.
    public let payload: [UInt8]

    package init(payload: [UInt8]) { self.payload = payload }
}

/// Where an incoming message came from, as an async handler sees it beside
/// its ``RPCAsyncRequest``: the peer, its handshake, the connection's values,
/// the call's metadata and deadline, and the endpoint (to call the peer back). The same facts as a callback
/// handler's ``RPCRequest``, in a form a task can own (a `Sendable` value).
public struct RPCHandlerContext: Sendable {
    /// The message's id on the wire, as the peer numbered it (its logs show
    /// it as `rpc.id`).
    public let messageID: UInt16
    /// What the connection's messages share, made once per connection (and
    /// again when its values change), so that a context costs one reference.
    let facts: ConnectionFacts
    /// What came with the message (nil: nothing).
    let call: IncomingCall?

    init(messageID: UInt16, facts: ConnectionFacts, call: IncomingCall? = nil) {
        self.messageID = messageID
        self.facts = facts
        self.call = call
    }

    /// The metadata the caller sent with the message (extension `meta`;
    /// empty when it sent none, and always from an efro.rpc peer).
    public var metadata: RPCMetadata { call?.metadata ?? RPCMetadata() }
    /// When the caller stops waiting for the answer, when its call carried
    /// a deadline (extension `meta`: a UVRPC caller's timeout); else nil.
    /// The handler's task is cancelled when it passes, and calls the handler
    /// makes with ``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)``
    /// (or the pool's, or typed ones) inherit it: their timeout is at most
    /// what is left, and it travels on to their peer.
    public var deadline: ContinuousClock.Instant? { call?.deadline }

    /// The peer's address (nil for a Unix-socket peer without a bound name).
    public var peerAddress: SocketAddress? { facts.peerAddress }
    /// The peer's handshake.
    public var peerInfo: PeerInfo { facts.peerInfo }
    /// Over TLS, the subject of the certificate the peer showed (see ``RPCRequest/peerCertificateSubject``).
    public var peerCertificateSubject: String? { facts.peerCertificateSubject }
    /// The connection's values (``RPCEndpoint/connectionValues``) when the message arrived.
    public var connectionValues: RPCConnectionValues { facts.connectionValues }
    /// The endpoint the message came in on (its `Sendable` handle).
    public var endpoint: RPCAsyncEndpoint { facts.endpoint }
}

extension RPCHandlerContext {
    /// For the typed layer's metrics: a clock reading to time a handler from
    /// (0: not timed, no metrics backend), and the record of one that ended,
    /// by message type. Call both on the endpoint's loop (a handler's task there).
    package var handlerStartTime: UInt64 { facts.endpoint.endpoint.metrics.callStartTime }
    package func typedHandlerEnded(type: String, startedAt: UInt64) {
        facts.endpoint.endpoint.metrics.typedHandlerEnded(type: type, startedAt: startedAt)
    }
}

/// The facts an ``RPCHandlerContext`` reports about its connection: one
/// immutable object per connection, replaced when its values or handshake change.
final class ConnectionFacts: Sendable {
    let peerAddress: SocketAddress?
    let peerInfo: PeerInfo
    let peerCertificateSubject: String?
    let connectionValues: RPCConnectionValues
    let endpoint: RPCAsyncEndpoint

    init(peerAddress: SocketAddress?, peerInfo: PeerInfo, peerCertificateSubject: String?,
         connectionValues: RPCConnectionValues, endpoint: RPCAsyncEndpoint) {
        self.peerAddress = peerAddress
        self.peerInfo = peerInfo
        self.peerCertificateSubject = peerCertificateSubject
        self.connectionValues = connectionValues
        self.endpoint = endpoint
    }
}

/// The body of an async handler (``RPCHandler/async(interceptors:_:)``, ``RPCClient``'s `handler`).
typealias AsyncHandlerBody = nonisolated(nonsending) @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8]
