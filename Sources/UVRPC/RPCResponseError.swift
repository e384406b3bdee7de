import UVLoop

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
