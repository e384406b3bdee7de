import UVLoop

/// Why an endpoint closed. Passed to ``RPCEndpoint/onClose``.
public enum RPCCloseReason: Equatable, Sendable, CustomStringConvertible {
    /// ``RPCEndpoint/close()`` was called (or the loop shut down).
    case local
    /// The peer closed the connection (end of stream).
    case peerClosed
    /// The peer reset the connection.
    case reset
    /// The connection failed (read or write error, or a buffer limit).
    case connectionFailed(ConnectionError)
    /// Nothing arrived from the peer for longer than the keepalive timeout.
    case keepaliveTimeout(Duration)
    /// The peer's handshake did not arrive within the handshake timeout.
    case handshakeTimeout(Duration)
    /// The peer broke the protocol.
    case protocolViolation(ProtocolViolation)
    /// A call failed with `closeOnError` set (the reference's default), which
    /// closes the whole endpoint.
    case callFailed(RPCError)
    /// A graceful close (``RPCEndpoint/close(gracePeriod:)``, a server's
    /// ``RPCServer/shutdown(gracePeriod:)``) finished: nothing was left in flight.
    case drained
    /// A graceful close ran out of time: what was still in flight was failed.
    case drainTimedOut(Duration)
    /// A payload arriving or leaving in parts moved less than 64 KiB within
    /// this time (``RPCEndpoint/Configuration/payloadProgressTimeout``): the
    /// peer held it open by trickling bytes or acknowledgements.
    case payloadStalled(Duration)

    public var description: String {
        switch self {
        case .local: return "closed locally"
        case .peerClosed: return "closed by the peer"
        case .reset: return "connection reset by the peer"
        case .connectionFailed(let e): return "connection failed: \(e)"
        case .keepaliveTimeout(let t): return "no keepalive or other packet from the peer for \(t)"
        case .handshakeTimeout(let t): return "no handshake from the peer within \(t)"
        case .protocolViolation(let v): return "protocol violation: \(v)"
        case .callFailed(let e): return "a call failed with closeOnError: \(e)"
        case .drained: return "drained: closed gracefully with nothing in flight"
        case .drainTimedOut(let t): return "drained: closed when the grace period of \(t) ran out with work in flight"
        case .payloadStalled(let t): return "a payload in parts moved less than 64 KiB within \(t) (the peer trickles it)"
        }
    }
}

/// Why a call (an outgoing message) failed. Each case names the endpoint
/// (its label) and, where there is one, the message id.
public indirect enum RPCError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No response arrived within the timeout (the reference's communication error).
    case timedOut(endpoint: String, messageID: UInt16, timeout: Duration)
    /// The endpoint closed (or was already closed) before a response arrived.
    case closed(endpoint: String, messageID: UInt16?, reason: RPCCloseReason)
    /// The payload is over 65535 bytes and the peer speaks protocol 1, which
    /// cannot receive *_BIG packets.
    case peerTooOld(endpoint: String, payloadSize: Int, peerProtocol: Int)
    /// All 65536 message ids are in flight; no id is free for another call.
    case tooManyInFlight(endpoint: String)
    /// The payload exceeds what a packet can declare (4 GiB - 1).
    case payloadTooLarge(endpoint: String, payloadSize: Int)
    /// The connection already holds `pendingBytes` unsent and this call
    /// would take it over `limit` (``RPCEndpoint/Configuration/maximumPendingWriteBytes``):
    /// the caller sends faster than the peer reads and ignored
    /// ``RPCEndpoint/isWritable``.
    case sendBufferFull(endpoint: String, pendingBytes: Int, limit: Int)
    /// The peer's handler failed and said why (extension `error`): the
    /// connection is fine, and the endpoint stays open whatever `closeOnError` says.
    case peerHandlerFailed(endpoint: String, messageID: UInt16, reason: String)
    /// The peer is draining (it sent GOAWAY, extension `goaway`): no new call
    /// is sent on this endpoint. The call was not sent; send it on another connection.
    case peerGoingAway(endpoint: String)
    /// An ``RPCClientPool`` had no open connection to any of `addresses`;
    /// `lastConnectError` is the most recent reason a connection could not
    /// be made or was lost, if there was one.
    case noConnection(addresses: [String], lastConnectError: String?)
    /// The response is a payload in parts that this side would not hold
    /// (``RPCEndpoint/Configuration/maximumPayloadMemory``, the server's
    /// shared limit, or an allocation that failed): `reason` says which. The
    /// call failed; the endpoint stays open (the response's bytes are skipped,
    /// and a UVRPC peer is asked to stop sending them).
    case responseRefused(endpoint: String, messageID: UInt16, payloadSize: Int, reason: String)

    public var description: String {
        switch self {
        case .timedOut(let e, let id, let t):
            return "message \(id) on \(e) got no response within \(t)"
        case .closed(let e, let id, let reason):
            let what = id.map { "message \($0)" } ?? "send"
            return "\(what) on \(e) failed: the endpoint is closed (\(reason))"
        case .peerTooOld(let e, let n, let p):
            return "cannot send \(n) bytes to \(e): its peer speaks protocol \(p), which takes at most 65535"
        case .tooManyInFlight(let e):
            return "cannot send on \(e): all 65536 message ids are in flight"
        case .payloadTooLarge(let e, let n):
            return "cannot send \(n) bytes on \(e): over the protocol's 4 GiB limit"
        case .sendBufferFull(let e, let pending, let limit):
            return "cannot send on \(e): \(pending) bytes are already waiting for the peer to read them and the limit is \(limit) (wait for isWritable)"
        case .peerHandlerFailed(let e, let id, let reason):
            return "message \(id) on \(e) failed in the peer's handler: \(reason)"
        case .peerGoingAway(let e):
            return "cannot send on \(e): the peer is draining (it sent go-away); send on another connection"
        case .responseRefused(let e, let id, let n, let reason):
            return "message \(id) on \(e) failed: its response of \(n) bytes was refused: \(reason)"
        case .noConnection(let addresses, let last):
            return "cannot send: no connection to \(addresses.joined(separator: ", ")) is open"
                + (last.map { " (last error: \($0))" } ?? "")
        }
    }
}

/// Why answering an incoming message failed.
public enum RPCResponseError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The message was already answered, or can no longer be (its handler
    /// threw, or the peer sent a new message with its id).
    case alreadyAnswered(endpoint: String, messageID: UInt16)
    /// The endpoint closed before the answer.
    case closed(endpoint: String, messageID: UInt16)
    /// The answer is over 65535 bytes and the peer speaks protocol 1.
    case peerTooOld(endpoint: String, messageID: UInt16, payloadSize: Int, peerProtocol: Int)
    /// The peer cancelled its call (extension `cancel`): it wants no answer.
    case cancelled(endpoint: String, messageID: UInt16)

    public var description: String {
        switch self {
        case .alreadyAnswered(let e, let id):
            return "message \(id) on \(e) was already answered, or can no longer be (its handler threw, or the peer reused its id)"
        case .closed(let e, let id): return "cannot answer message \(id) on \(e): the endpoint is closed"
        case .peerTooOld(let e, let id, let n, let p):
            return "cannot answer message \(id) on \(e) with \(n) bytes: its peer speaks protocol \(p), which takes at most 65535"
        case .cancelled(let e, let id):
            return "message \(id) on \(e) was cancelled by the peer, which wants no answer"
        }
    }
}
