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
