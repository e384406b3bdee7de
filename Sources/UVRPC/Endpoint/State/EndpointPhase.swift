/// Where an endpoint is in its life; it only moves down this list.
///
/// The one source of truth for serving, draining, closing and closed: the
/// endpoint asks it (``isClosing``, ``closeReason``) and moves it only through
/// ``advance(to:)`` and the named transitions, which refuse to go back.
enum EndpointPhase {
    /// Calls and messages flow.
    case serving
    /// Still serving, and closes once nothing is in flight (or at the grace
    /// period): ``RPCEndpoint/close(gracePeriod:)``.
    case draining
    /// Closing for this reason: in-flight calls failed, nothing new is
    /// taken, the connection flushes what is owed.
    case closing(RPCCloseReason)
    /// The connection closed; the endpoint holds no buffer.
    case closed(RPCCloseReason)

    /// The position in the list above: a phase moves only to a later one.
    var rank: Int {
        switch self {
        case .serving: return 0
        case .draining: return 1
        case .closing: return 2
        case .closed: return 3
        }
    }

    /// Moves to `next` when it comes later in the list and returns true;
    /// otherwise changes nothing and returns false. So a phase never goes
    /// back, and a second phase of the same kind (a second close reason) is refused.
    @discardableResult
    mutating func advance(to next: EndpointPhase) -> Bool {
        guard next.rank > rank else { return false }
        self = next
        return true
    }

    /// Serving to draining; false in any other phase (already draining, or closing).
    mutating func beginDraining() -> Bool { advance(to: .draining) }

    /// To closing for `reason`; false when already closing or closed (the first reason stays).
    mutating func beginClosing(_ reason: RPCCloseReason) -> Bool { advance(to: .closing(reason)) }

    /// The connection closed: closed, for the reason it was closing for
    /// (``RPCCloseReason/local`` if it never was). A closed phase stays as it is.
    mutating func finishClosing() { advance(to: .closed(closeReason ?? .local)) }

    /// Draining (still serving, closing once idle).
    var isDraining: Bool {
        if case .draining = self { return true }
        return false
    }

    /// Closing or closed.
    var isClosing: Bool {
        switch self {
        case .serving, .draining: return false
        case .closing, .closed: return true
        }
    }

    /// The connection closed.
    var isClosed: Bool {
        if case .closed = self { return true }
        return false
    }

    /// Why it is closing or closed; nil while serving or draining.
    var closeReason: RPCCloseReason? {
        switch self {
        case .serving, .draining: return nil
        case .closing(let reason), .closed(let reason): return reason
        }
    }
}
