import UVLoop

/// Why answering an incoming message failed.
public struct RPCResponseError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What happened. Package-internal, so that a new kind never breaks a
    /// user's exhaustive `switch`; ``description`` says it.
    package enum Kind: Equatable, Sendable {
        /// The message was already answered, or can no longer be (its handler
        /// threw, or the peer sent a new message with its id).
        case alreadyAnswered(endpoint: String, messageID: UInt16)
        /// The endpoint closed before the answer.
        case closed(endpoint: String, messageID: UInt16)
        /// The answer is over 65535 bytes and the peer speaks protocol 1.
        case peerTooOld(endpoint: String, messageID: UInt16, payloadSize: Int, peerProtocol: Int)
        /// The peer cancelled its call (extension `cancel`): it wants no answer.
        case cancelled(endpoint: String, messageID: UInt16)
        /// The answer is over the largest payload the peer announced (the
        /// handshake's `m`): the peer was answered with an ERROR saying so.
        case overPeerLimit(endpoint: String, messageID: UInt16, payloadSize: Int, peerLimit: Int)
    }

    /// What happened.
    package let kind: Kind

    package init(_ kind: Kind) { self.kind = kind }

    public var description: String {
        switch kind {
        case .alreadyAnswered(let e, let id):
            return "a request on \(e) (wire id \(id)) was already answered, or can no longer be (its handler threw, or the peer reused its id)"
        case .closed(let e, let id): return "cannot answer a request on \(e) (wire id \(id)): the endpoint is closed"
        case .peerTooOld(let e, let id, let n, let p):
            return "cannot answer a request on \(e) (wire id \(id)) with \(n) bytes: its peer speaks protocol \(p), which takes at most 65535"
        case .cancelled(let e, let id):
            return "a request on \(e) (wire id \(id)) was cancelled by the peer, which wants no answer"
        case .overPeerLimit(let e, let id, let n, let limit):
            return "cannot answer a request on \(e) (wire id \(id)) with \(n) bytes: the peer takes at most \(limit) (it was answered with an error saying so)"
        }
    }
}

// The ways this library makes them, named as the kinds are.
extension RPCResponseError {
    package static func alreadyAnswered(endpoint: String, messageID: UInt16) -> RPCResponseError { RPCResponseError(.alreadyAnswered(endpoint: endpoint, messageID: messageID)) }
    package static func closed(endpoint: String, messageID: UInt16) -> RPCResponseError { RPCResponseError(.closed(endpoint: endpoint, messageID: messageID)) }
    package static func peerTooOld(endpoint: String, messageID: UInt16, payloadSize: Int, peerProtocol: Int) -> RPCResponseError { RPCResponseError(.peerTooOld(endpoint: endpoint, messageID: messageID, payloadSize: payloadSize, peerProtocol: peerProtocol)) }
    package static func cancelled(endpoint: String, messageID: UInt16) -> RPCResponseError { RPCResponseError(.cancelled(endpoint: endpoint, messageID: messageID)) }
    package static func overPeerLimit(endpoint: String, messageID: UInt16, payloadSize: Int, peerLimit: Int) -> RPCResponseError { RPCResponseError(.overPeerLimit(endpoint: endpoint, messageID: messageID, payloadSize: payloadSize, peerLimit: peerLimit)) }
}
