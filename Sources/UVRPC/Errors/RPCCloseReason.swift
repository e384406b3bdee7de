import UVLoop

/// Why an endpoint closed. Passed to ``RPCEndpoint/onClose``.
public struct RPCCloseReason: Equatable, Sendable, CustomStringConvertible {
    /// What happened. Package-internal, so that a new kind never breaks a
    /// user's exhaustive `switch`; ``description`` says it.
    package enum Kind: Equatable, Sendable {
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
        /// ``RPCServer/close(gracePeriod:)``) finished: nothing was left in flight.
        case drained
        /// A graceful close ran out of time: what was still in flight was failed.
        case drainTimedOut(Duration)
        /// A payload arriving or leaving in parts moved less than 64 KiB within
        /// this time (``RPCEndpoint/Configuration/payloadProgressTimeout``): the
        /// peer held it open by trickling bytes or acknowledgements.
        case payloadStalled(Duration)
    }

    /// What happened.
    package let kind: Kind

    package init(_ kind: Kind) { self.kind = kind }

    public var description: String {
        switch kind {
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

// Each reason, to compare a close reason with (`reason == .drained`). New
// ones may be added: compare with those you handle rather than switching.
extension RPCCloseReason {
    /// ``RPCEndpoint/close()`` was called (or the loop shut down).
    public static let local = RPCCloseReason(.local)
    /// The peer closed the connection.
    public static let peerClosed = RPCCloseReason(.peerClosed)
    /// The peer reset the connection.
    public static let reset = RPCCloseReason(.reset)
    /// The connection failed with this error.
    public static func connectionFailed(_ v0: ConnectionError) -> RPCCloseReason { RPCCloseReason(.connectionFailed(v0)) }
    /// Nothing arrived from the peer for this long.
    public static func keepaliveTimeout(_ v0: Duration) -> RPCCloseReason { RPCCloseReason(.keepaliveTimeout(v0)) }
    /// The peer's handshake did not arrive within this time.
    public static func handshakeTimeout(_ v0: Duration) -> RPCCloseReason { RPCCloseReason(.handshakeTimeout(v0)) }
    /// The peer broke the protocol so.
    public static func protocolViolation(_ v0: ProtocolViolation) -> RPCCloseReason { RPCCloseReason(.protocolViolation(v0)) }
    /// This call failed with `closeOnError`, which closed the endpoint.
    public static func callFailed(_ v0: RPCError) -> RPCCloseReason { RPCCloseReason(.callFailed(v0)) }
    /// A graceful close finished with nothing in flight.
    public static let drained = RPCCloseReason(.drained)
    /// A graceful close ran out of this grace period with work in flight.
    public static func drainTimedOut(_ v0: Duration) -> RPCCloseReason { RPCCloseReason(.drainTimedOut(v0)) }
    /// A payload in parts moved less than 64 KiB within this time.
    public static func payloadStalled(_ v0: Duration) -> RPCCloseReason { RPCCloseReason(.payloadStalled(v0)) }
}
