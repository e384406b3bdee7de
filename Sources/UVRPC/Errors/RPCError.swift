import UVLoop

/// Why a call (an outgoing message) failed: a ``code`` to decide on, a
/// ``message`` that names what went wrong and on which endpoint, whether the
/// request reached the peer (``requestWasSent``) and whether sending it again
/// is safe (``isRetryable``), and the underlying ``cause`` when there is one.
///
/// ```swift
/// do {
///     let answer = try await endpoint.send(request)
/// } catch let error as RPCError where error.isRetryable {
///     // not sent: send it again, on this connection later or on another
/// } catch let error as RPCError where error.code == .deadlineExceeded {
///     // sent, no answer in time: the peer may or may not have handled it
/// }
/// ```
///
/// A handler may throw one to answer a UVRPC caller with its code and
/// message (it is an ``RPCPublicError``); other errors a handler throws reach
/// the caller only as "the handler failed".
///
/// Codes are values, not enum cases: new ones may appear in a later version
/// without breaking a `switch` (which needs a `default`).
public struct RPCError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What kind of failure this is. New codes may be added; match the ones
    /// you handle and keep a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// Its byte in an ERROR answer on the wire (the `error` extension).
        package let rawValue: UInt8

        package init(rawValue: UInt8) { self.rawValue = rawValue }

        /// The call was cancelled (by its task, or by the peer).
        public static let cancelled = Code(rawValue: 1)
        /// No answer arrived within the call's timeout. The request was sent;
        /// the peer may have handled it.
        public static let deadlineExceeded = Code(rawValue: 2)
        /// The peer could not be reached or stopped serving: no connection,
        /// the connection closed or failed, the peer is draining, or it
        /// stopped before answering. Retry when ``RPCError/isRetryable``.
        public static let unavailable = Code(rawValue: 3)
        /// A limit was in the way: a payload over what the peer or this side
        /// takes, too much unsent, every message id in flight, memory.
        public static let resourceExhausted = Code(rawValue: 4)
        /// The peer's handler failed (threw or gave up on the request).
        public static let handlerFailed = Code(rawValue: 5)
        /// A peer broke the protocol; the connection was closed.
        public static let protocolViolation = Code(rawValue: 6)
        /// TLS failed: handshake, certificate, or the encrypted stream.
        public static let tls = Code(rawValue: 7)
        /// This side closed the endpoint (or the loop shut down) before the call ended.
        public static let closed = Code(rawValue: 8)
        /// A fault inside this library or the peer's; not the caller's doing.
        public static let internalError = Code(rawValue: 9)
        /// For handlers: the request is malformed or not acceptable.
        public static let invalidArgument = Code(rawValue: 10)
        /// For handlers: what the request names does not exist.
        public static let notFound = Code(rawValue: 11)
        /// For handlers: the caller may not do this.
        public static let permissionDenied = Code(rawValue: 12)
        /// For handlers and interceptors: the caller did not say who it is
        /// (no valid credentials in its metadata).
        public static let unauthenticated = Code(rawValue: 13)

        public var description: String {
            switch rawValue {
            case 1: return "cancelled"
            case 2: return "deadline exceeded"
            case 3: return "unavailable"
            case 4: return "resource exhausted"
            case 5: return "handler failed"
            case 6: return "protocol violation"
            case 7: return "TLS"
            case 8: return "closed"
            case 9: return "internal error"
            case 10: return "invalid argument"
            case 11: return "not found"
            case 12: return "permission denied"
            case 13: return "unauthenticated"
            default: return "code \(rawValue)"
            }
        }
    }

    /// What happened, as this side knows it. Internal so that new kinds of
    /// failure never break a user's exhaustive `switch`.
    package indirect enum Reason: Equatable, Sendable {
        case timedOut(endpoint: String, messageID: UInt16, timeout: Duration)
        case closed(endpoint: String, messageID: UInt16?, reason: RPCCloseReason)
        case peerTooOld(endpoint: String, payloadSize: Int, peerProtocol: Int)
        case tooManyInFlight(endpoint: String)
        case payloadTooLarge(endpoint: String, payloadSize: Int)
        case overPeerLimit(endpoint: String, payloadSize: Int, peerLimit: Int)
        case sendBufferFull(endpoint: String, pendingBytes: Int, limit: Int)
        case peerFailed(endpoint: String, messageID: UInt16, code: Code, reason: String)
        case peerGoingAway(endpoint: String)
        case noConnection(addresses: [String], lastConnectError: String?)
        case responseRefused(endpoint: String, messageID: UInt16, payloadSize: Int, reason: String)
        case custom(code: Code, message: String)
        case invalidMetadata(endpoint: String, problem: String)
        case noConnectionInTime(addresses: [String], waited: Duration, lastConnectError: String?)
        case deadlinePassed(endpoint: String)
        case noHandshakeInTime(endpoint: String, timeout: Duration)
    }

    /// What happened (for this library's metrics and tests).
    package let reason: Reason

    package init(_ reason: Reason) { self.reason = reason }

    /// An error to throw from a handler: a UVRPC caller's call fails with
    /// `code` and `message` (cut to ``Wire/maximumErrorReason`` bytes).
    public init(code: Code, message: String) { self.reason = .custom(code: code, message: message) }

    /// The kind of failure.
    public var code: Code {
        switch reason {
        case .timedOut: return .deadlineExceeded
        case .closed(_, _, let close): return close.errorCode
        case .peerTooOld, .tooManyInFlight, .payloadTooLarge, .overPeerLimit, .sendBufferFull, .responseRefused:
            return .resourceExhausted
        case .peerFailed(_, _, let code, _): return code
        case .peerGoingAway, .noConnection: return .unavailable
        case .custom(let code, _): return code
        case .invalidMetadata: return .invalidArgument
        case .noConnectionInTime: return .deadlineExceeded
        case .deadlinePassed: return .deadlineExceeded
        case .noHandshakeInTime: return .deadlineExceeded
        }
    }

    /// The label of the endpoint the call was made on (nil when there was none).
    public var endpoint: String? {
        switch reason {
        case .timedOut(let e, _, _), .closed(let e, _, _), .peerTooOld(let e, _, _), .tooManyInFlight(let e),
             .payloadTooLarge(let e, _), .overPeerLimit(let e, _, _), .sendBufferFull(let e, _, _),
             .peerFailed(let e, _, _, _), .peerGoingAway(let e), .responseRefused(let e, _, _, _),
             .invalidMetadata(let e, _), .deadlinePassed(let e), .noHandshakeInTime(let e, _):
            return e
        case .noConnection, .custom, .noConnectionInTime: return nil
        }
    }

    /// The id the call was sent with (nil when it was not sent).
    public var messageID: UInt16? {
        switch reason {
        case .timedOut(_, let id, _), .peerFailed(_, let id, _, _), .responseRefused(_, let id, _, _): return id
        case .closed(_, let id, _): return id
        default: return nil
        }
    }

    /// Whether the request was written to the connection (and so may have
    /// reached the peer and been handled). False when it failed before: no
    /// connection, a limit, the peer draining, the endpoint closed.
    public var requestWasSent: Bool { messageID != nil }

    /// Whether sending the same request again is safe: it was never sent,
    /// and the failure is one that passes (another connection, a moment
    /// later). A request that was sent is never called retryable: whether
    /// the peer handled it is unknown, so only the caller can tell whether
    /// doing it twice is harmless.
    public var isRetryable: Bool {
        guard !requestWasSent else { return false }
        switch reason {
        case .peerGoingAway, .noConnection, .sendBufferFull, .tooManyInFlight: return true
        case .closed(_, _, let close): return close.errorCode == .unavailable
        default: return false
        }
    }

    /// Why the endpoint closed, when the call failed because it did.
    public var closeReason: RPCCloseReason? {
        if case .closed(_, _, let close) = reason { return close }
        return nil
    }

    /// The lower-level error behind this one: the connection's failure, the
    /// peer's protocol violation.
    public var cause: (any Error & Sendable)? {
        guard case .closed(_, _, let close) = reason else { return nil }
        switch close.kind {
        case .connectionFailed(let error): return error
        case .protocolViolation(let violation): return violation
        case .callFailed(let error): return error
        default: return nil
        }
    }

    /// What went wrong, naming the endpoint and message.
    public var message: String {
        switch reason {
        case .timedOut(let e, let id, let t):
            return "a call on \(e) (wire id \(id)) got no response within \(t)"
        case .closed(let e, let id, let reason):
            let what = id.map { "a call on \(e) (wire id \($0)) failed" } ?? "cannot send on \(e)"
            return "\(what): the endpoint is closed (\(reason))"
        case .peerTooOld(let e, let n, let p):
            return "cannot send \(n) bytes to \(e): its peer speaks protocol \(p), which takes at most 65535"
        case .tooManyInFlight(let e):
            return "cannot send on \(e): all 65536 message ids are in flight"
        case .payloadTooLarge(let e, let n):
            return "cannot send \(n) bytes on \(e): over the protocol's 4 GiB limit"
        case .overPeerLimit(let e, let n, let limit):
            return "cannot send \(n) bytes on \(e): the peer takes at most \(limit) bytes per message (its maximumPayloadSize)"
        case .sendBufferFull(let e, let pending, let limit):
            return "cannot send on \(e): \(pending) bytes are already waiting for the peer to read them and the limit is \(limit) (wait for isWritable)"
        case .peerFailed(let e, let id, _, let reason):
            return "a call on \(e) (wire id \(id)) failed in the peer: \(reason)"
        case .peerGoingAway(let e):
            return "cannot send on \(e): the peer is draining (it sent go-away); send on another connection"
        case .responseRefused(let e, let id, let n, let reason):
            return "a call on \(e) (wire id \(id)) failed: its response of \(n) bytes was refused: \(reason)"
        case .noConnection(let addresses, let last):
            return "cannot send: no connection to \(addresses.joined(separator: ", ")) is open"
                + (last.map { " (last error: \($0))" } ?? "")
        case .custom(_, let message):
            return message
        case .invalidMetadata(let e, let problem):
            return "cannot send on \(e): \(problem)"
        case .deadlinePassed(let e):
            return "cannot send on \(e): the deadline this call inherited from the handler's caller has passed"
        case .noHandshakeInTime(let e, let t):
            return "cannot send on \(e): the peer's handshake did not come within the call's \(t) (the call waited for it, not sent)"
        case .noConnectionInTime(let addresses, let waited, let last):
            return "cannot send: no connection to \(addresses.joined(separator: ", ")) opened within the call's \(waited) (it waited for one)"
                + (last.map { " (last error: \($0))" } ?? "")
        }
    }

    public var description: String { "\(code): \(message)" }

    public static func == (lhs: RPCError, rhs: RPCError) -> Bool { lhs.reason == rhs.reason }
}

// The internal ways this library makes errors, named as the failures they are.
extension RPCError {
    static func timedOut(endpoint: String, messageID: UInt16, timeout: Duration) -> RPCError {
        RPCError(.timedOut(endpoint: endpoint, messageID: messageID, timeout: timeout))
    }
    static func closed(endpoint: String, messageID: UInt16?, reason: RPCCloseReason) -> RPCError {
        RPCError(.closed(endpoint: endpoint, messageID: messageID, reason: reason))
    }
    static func peerTooOld(endpoint: String, payloadSize: Int, peerProtocol: Int) -> RPCError {
        RPCError(.peerTooOld(endpoint: endpoint, payloadSize: payloadSize, peerProtocol: peerProtocol))
    }
    static func tooManyInFlight(endpoint: String) -> RPCError { RPCError(.tooManyInFlight(endpoint: endpoint)) }
    static func payloadTooLarge(endpoint: String, payloadSize: Int) -> RPCError {
        RPCError(.payloadTooLarge(endpoint: endpoint, payloadSize: payloadSize))
    }
    static func overPeerLimit(endpoint: String, payloadSize: Int, peerLimit: Int) -> RPCError {
        RPCError(.overPeerLimit(endpoint: endpoint, payloadSize: payloadSize, peerLimit: peerLimit))
    }
    static func sendBufferFull(endpoint: String, pendingBytes: Int, limit: Int) -> RPCError {
        RPCError(.sendBufferFull(endpoint: endpoint, pendingBytes: pendingBytes, limit: limit))
    }
    static func peerFailed(endpoint: String, messageID: UInt16, code: Code, reason: String) -> RPCError {
        RPCError(.peerFailed(endpoint: endpoint, messageID: messageID, code: code, reason: reason))
    }
    static func peerGoingAway(endpoint: String) -> RPCError { RPCError(.peerGoingAway(endpoint: endpoint)) }
    static func invalidMetadata(endpoint: String, problem: MetadataProblem) -> RPCError {
        RPCError(.invalidMetadata(endpoint: endpoint, problem: "\(problem)"))
    }
    static func deadlinePassed(endpoint: String) -> RPCError { RPCError(.deadlinePassed(endpoint: endpoint)) }
    static func noHandshakeInTime(endpoint: String, timeout: Duration) -> RPCError {
        RPCError(.noHandshakeInTime(endpoint: endpoint, timeout: timeout))
    }
    static func noConnectionInTime(addresses: [String], waited: Duration, lastConnectError: String?) -> RPCError {
        RPCError(.noConnectionInTime(addresses: addresses, waited: waited, lastConnectError: lastConnectError))
    }
    static func noConnection(addresses: [String], lastConnectError: String?) -> RPCError {
        RPCError(.noConnection(addresses: addresses, lastConnectError: lastConnectError))
    }
    static func responseRefused(endpoint: String, messageID: UInt16, payloadSize: Int, reason: String) -> RPCError {
        RPCError(.responseRefused(endpoint: endpoint, messageID: messageID, payloadSize: payloadSize, reason: reason))
    }
}

/// An error whose code and text a handler may show to its callers.
///
/// By default a handler's error stays on the server: the server logs it and
/// a UVRPC caller learns only that "the handler failed" (code
/// ``RPCError/Code/handlerFailed``), so internal details (paths, queries,
/// other users' data) never leak to clients. An error type that conforms is
/// sent as it says, like efro's clean errors:
///
/// ```swift
/// struct NoSuchKey: RPCPublicError {
///     var key: String
///     var code: RPCError.Code { .notFound }
///     var publicDescription: String { "no such key: \(key)" }
/// }
/// ```
///
/// ``RPCError`` conforms: throwing one (or rethrowing a downstream call's)
/// answers with its code and message.
public protocol RPCPublicError: Error {
    /// The code the caller's ``RPCError`` carries (``RPCError/Code/handlerFailed`` by default).
    var code: RPCError.Code { get }
    /// The text the caller's ``RPCError`` carries (the error's description by
    /// default), cut to ``Wire/maximumErrorReason`` bytes.
    var publicDescription: String { get }
}

extension RPCPublicError {
    public var code: RPCError.Code { .handlerFailed }
    public var publicDescription: String { String(describing: self) }
}

extension RPCError: RPCPublicError {
    public var publicDescription: String { message }
}

extension RPCCloseReason {
    /// The code of a call that failed because the endpoint closed for this reason.
    var errorCode: RPCError.Code {
        switch kind {
        case .local, .callFailed, .drained: return .closed
        case .connectionFailed(let error) where error.isTLS: return .tls
        case .protocolViolation: return .protocolViolation
        case .peerClosed, .reset, .connectionFailed, .keepaliveTimeout, .handshakeTimeout, .drainTimedOut,
             .payloadStalled:
            return .unavailable
        }
    }
}

/// What a failed handler's error becomes for the caller: its code and text
/// when it opts in (``RPCPublicError``), else a generic line.
func publicFailure(of error: any Error) -> (code: RPCError.Code, reason: String) {
    if let error = error as? any RPCPublicError { return (error.code, error.publicDescription) }
    if error is CancellationError { return (.cancelled, "the handler was cancelled") }
    return (.handlerFailed, "the handler failed")
}
