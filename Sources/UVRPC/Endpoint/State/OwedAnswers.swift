/// The answers an endpoint owes its peer: one per message received, until it
/// is answered, cancelled by the peer or the endpoint closes. Loop-confined
/// data and the decisions on it; the endpoint does the writing and logging
/// (``RPCEndpoint+Answering.swift``, ``RPCEndpoint+Extensions.swift``).
///
/// - Each request has a token: a sequence number above its 16-bit message
///   id (``beginHandlerCall(id:)``), so a request superseded by a newer
///   message with the same id is told apart.
/// - While a callback handler runs, its request is the *current* one:
///   answering it is two comparisons (``isCurrent(_:)``, ``claimCurrent()``).
/// - A handler that returns without answering leaves its request *kept*
///   (``keep(_:since:)``), by message id, where a later answer finds it
///   (``claimKept(token:)``); at most one per id.
/// - Async handlers running are tracked by id with a sequence number and
///   their worker's key (``beginAsyncHandler(id:worker:)``), so a CANCEL
///   reaches the right one and a cancelled handler's answer is not sent.
/// - Messages that arrive before any handler is set wait here (up to
///   ``maximumWaitingMessages``).
/// - Cancel credits: every message received (or refused) may be cancelled
///   once; a CANCEL beyond that is a protocol violation.
struct OwedAnswers {
    /// A request whose handler returned without answering it.
    struct KeptRequest: Equatable {
        var token: UInt64
        /// When the message arrived (loop milliseconds).
        var since: UInt64
        /// Whether it was already logged as overdue.
        var reported = false
        /// What came with the message (extension `meta`), if anything.
        var call: IncomingCall? = nil

        static func == (a: KeptRequest, b: KeptRequest) -> Bool {
            a.token == b.token && a.since == b.since && a.reported == b.reported && a.call === b.call
        }
    }

    /// An async handler running, by message id: what a CANCEL for it must reach.
    struct RunningHandler: Equatable {
        /// Tells this request from a newer one with the same id.
        var sequence: UInt64
        /// The worker task running its handler.
        var worker: UInt64
        var cancelled = false
    }

    /// A callback handler's call, from ``beginHandlerCall(id:)`` to
    /// ``endHandlerCall(_:)``: its token and the request it interrupted (a
    /// handler may run waiting messages within its call by setting `onMessage`).
    struct HandlerCall {
        let token: UInt64
        let outerToken: UInt64
        let outerAnswered: Bool
        var id: UInt16 { UInt16(truncatingIfNeeded: token) }
    }

    /// What a peer's CANCEL reached (``peerCancelled(id:droppedPartialMessage:queue:)``).
    enum CancelOutcome: Equatable, CustomStringConvertible {
        /// More CANCELs than messages: a protocol violation.
        case unexpected
        /// A running async handler, whose worker's task is to be cancelled.
        case runningHandler(worker: UInt64)
        case queuedMessage
        case waitingMessage
        case keptRequest
        /// A message still arriving in parts (the parser dropped it).
        case messageStillArriving
        /// Nothing: already answered.
        case nothing

        var description: String {
            switch self {
            case .unexpected: return "nothing (unexpected)"
            case .runningHandler: return "a running async handler"
            case .queuedMessage: return "a queued message"
            case .waitingMessage: return "a message waiting for a handler"
            case .keptRequest: return "a request kept unanswered"
            case .messageStillArriving: return "a message still arriving"
            case .nothing: return "nothing (already answered)"
            }
        }
    }

    /// Why a kept request could not be claimed (``claimKept(token:)``).
    enum KeptClaim: Equatable {
        case claimed
        /// The peer cancelled it.
        case cancelled
        /// Not kept: answered already, superseded, or never kept.
        case notKept
    }

    /// Messages that wait for a handler at most; more are refused.
    static let maximumWaitingMessages = 1024

    /// Token of the request whose callback handler is running now (0: none).
    private(set) var currentToken: UInt64 = 0
    /// Whether the request of `currentToken` was answered (or abandoned).
    private(set) var currentAnswered = true
    /// The sequence number of the next request (counts up from 1; 48 bits never wrap).
    private(set) var nextSequence: UInt64 = 1
    /// Requests whose handler returned without answering, by message id.
    private(set) var unanswered: [UInt16: KeptRequest] = [:]
    /// Tokens of kept requests the peer cancelled, by message id (extension `cancel`).
    private(set) var cancelledRequests: [UInt16: UInt64] = [:]
    /// Async handlers running, by message id (for the peer's CANCEL).
    private(set) var runningRequests = MessageIDMap<RunningHandler>()
    /// Messages received (or refused) minus CANCELs for them.
    private(set) var cancelCredits = 0
    /// Messages that arrived before any handler was set, oldest first.
    private(set) var waitingMessages: [(id: UInt16, payload: [UInt8], call: IncomingCall?)] = []

    // MARK: Callback handlers

    /// True while a callback handler runs.
    var isHandling: Bool { currentToken != 0 }

    /// A callback handler is about to run for message `id`: its request
    /// becomes the current one, with a new token.
    @inline(__always)
    mutating func beginHandlerCall(id: UInt16) -> HandlerCall {
        let token = nextSequence << 16 | UInt64(id)
        nextSequence &+= 1
        let call = HandlerCall(token: token, outerToken: currentToken, outerAnswered: currentAnswered)
        currentToken = token
        currentAnswered = false
        return call
    }

    /// The handler of `call` returned: the request it interrupted is current
    /// again. Returns whether `call`'s request was left unanswered (the caller
    /// then decides whether to ``keep(_:since:)`` it).
    @inline(__always)
    mutating func endHandlerCall(_ call: HandlerCall) -> Bool {
        let leftUnanswered = !currentAnswered
        currentToken = call.outerToken
        currentAnswered = call.outerAnswered
        return leftUnanswered
    }

    /// Keeps `call`'s request, unanswered since `since`, for a later answer.
    mutating func keep(_ call: HandlerCall, since: UInt64, incoming: IncomingCall? = nil) {
        unanswered[call.id] = KeptRequest(token: call.token, since: since, call: incoming)
    }

    /// What came with the kept request `token` (extension `meta`), if anything.
    func keptCall(token: UInt64) -> IncomingCall? {
        guard let entry = unanswered[UInt16(truncatingIfNeeded: token)], entry.token == token else { return nil }
        return entry.call
    }

    /// A new message with id `id` arrived: a request kept under that id can
    /// no longer be answered (the peer's call gave up). Returns it, if any.
    @inline(__always)
    mutating func takeSuperseded(id: UInt16) -> KeptRequest? {
        guard !unanswered.isEmpty else { return nil }
        return unanswered.removeValue(forKey: id)
    }

    /// Whether `token` is the request whose handler is running now.
    @inline(__always)
    func isCurrent(_ token: UInt64) -> Bool { token == currentToken }

    /// Marks the current request answered (or abandoned: a later answer is
    /// refused); false when it already was.
    @inline(__always)
    mutating func claimCurrent() -> Bool {
        guard !currentAnswered else { return false }
        currentAnswered = true
        return true
    }

    /// Marks the kept request `token` answered (it is no longer kept), or says why not.
    mutating func claimKept(token: UInt64) -> KeptClaim {
        let id = UInt16(truncatingIfNeeded: token)
        guard let entry = unanswered[id], entry.token == token else {
            return cancelledRequests[id] == token ? .cancelled : .notKept
        }
        unanswered[id] = nil
        return .claimed
    }

    /// Whether `token` is a kept request (answerable later).
    func keeps(token: UInt64) -> Bool {
        unanswered[UInt16(truncatingIfNeeded: token)]?.token == token
    }

    /// Whether the peer cancelled the kept request `token`.
    func wasCancelled(token: UInt64) -> Bool {
        cancelledRequests[UInt16(truncatingIfNeeded: token)] == token
    }

    /// Marks the kept requests waiting longer than `limit` milliseconds
    /// reported, and returns them (id, milliseconds waited) to be logged once each.
    mutating func markOverdue(now: UInt64, limit: UInt64) -> [(id: UInt16, waited: UInt64)] {
        var overdue: [(id: UInt16, waited: UInt64)] = []
        for index in unanswered.indices {
            let (id, entry) = unanswered[index]
            guard !entry.reported, now - entry.since > limit else { continue }
            unanswered.values[index].reported = true // in place: no copy of the table
            overdue.append((id, now - entry.since))
        }
        return overdue
    }

    /// Forgets every kept request (the endpoint is closing); returns their ids, sorted.
    mutating func dropKept() -> [UInt16] {
        let ids = unanswered.keys.sorted()
        unanswered.removeAll()
        return ids
    }

    // MARK: Async handlers

    /// An async handler starts on message `id` in worker `worker`; returns
    /// the sequence number that tells it from a later message with that id.
    mutating func beginAsyncHandler(id: UInt16, worker: UInt64) -> UInt64 {
        let sequence = nextSequence
        nextSequence &+= 1
        runningRequests[id] = RunningHandler(sequence: sequence, worker: worker)
        return sequence
    }

    /// The async handler of (`id`, `sequence`) returned: forgets it and says
    /// whether its answer is to be sent (not when the peer cancelled it, nor
    /// when a newer message took its id meanwhile).
    mutating func endAsyncHandler(id: UInt16, sequence: UInt64) -> Bool {
        guard let entry = runningRequests[id], entry.sequence == sequence else { return false }
        runningRequests[id] = nil
        return !entry.cancelled
    }

    /// Forgets running async handlers and cancelled requests (the endpoint is closing).
    mutating func dropHandlersAndCancellations() {
        runningRequests.removeAll()
        cancelledRequests.removeAll()
    }

    // MARK: Messages waiting for a handler

    /// Holds message `id` until a handler is set; false when
    /// ``maximumWaitingMessages`` already wait (the message is refused).
    mutating func hold(id: UInt16, payload: UnsafeRawBufferPointer, call: IncomingCall? = nil) -> Bool {
        guard waitingMessages.count < Self.maximumWaitingMessages else { return false }
        waitingMessages.append((id, Array(payload), call)) // copied: the view is valid only during the caller's read
        return true
    }

    /// Takes every waiting message, oldest first.
    mutating func takeWaitingMessages() -> [(id: UInt16, payload: [UInt8], call: IncomingCall?)] {
        let waiting = waitingMessages
        waitingMessages.removeAll()
        return waiting
    }

    // MARK: The peer's CANCEL

    /// A message arrived (or was refused): the peer may cancel it once.
    @inline(__always)
    mutating func messageArrived() { cancelCredits &+= 1 }

    /// The peer cancelled message `id` (`droppedPartialMessage`: the parser
    /// dropped it while it was still arriving, which used no credit, since
    /// the message was never counted). Spends a credit (none left:
    /// ``CancelOutcome/unexpected``, and nothing changes), then ends what
    /// the message still holds, first found of: a running async handler
    /// (marked cancelled), a message queued for a worker (removed from
    /// `queue`), one waiting for a handler (removed), a kept request (now cancelled).
    mutating func peerCancelled(id: UInt16, droppedPartialMessage: Bool,
                                queue: inout AsyncWorkers) -> CancelOutcome {
        if !droppedPartialMessage {
            guard cancelCredits > 0 else { return .unexpected }
            cancelCredits -= 1
        }
        if let running = runningRequests[id], !running.cancelled {
            runningRequests[id]!.cancelled = true
            return .runningHandler(worker: running.worker)
        }
        if queue.removeQueued(id: id) { return .queuedMessage }
        if let waiting = waitingMessages.firstIndex(where: { $0.id == id }) {
            waitingMessages.remove(at: waiting)
            return .waitingMessage
        }
        if let kept = unanswered.removeValue(forKey: id) {
            cancelledRequests[id] = kept.token
            return .keptRequest
        }
        return droppedPartialMessage ? .messageStillArriving : .nothing
    }

    // MARK: Draining

    /// No answer owed here: nothing kept, no callback handler running, no
    /// message waiting for a handler (queued and running async requests are ``AsyncWorkers``').
    var owesNothing: Bool { unanswered.isEmpty && currentToken == 0 && waitingMessages.isEmpty }

    /// The ids of every message still owed an answer, sorted: kept requests
    /// the peer did not cancel, running async handlers it did not cancel,
    /// `queued` (the async workers' queue) and messages waiting for a handler.
    func owedMessageIDs(queued: some Sequence<UInt16>) -> [UInt16] {
        // A cancelled call wants nothing; a newer request kept under a cancelled one's id does.
        var owed = Set(unanswered.compactMap { id, kept in cancelledRequests[id] == kept.token ? nil : id })
        for (id, running) in runningRequests.elements where !running.cancelled { owed.insert(id) }
        owed.formUnion(queued)
        for message in waitingMessages { owed.insert(message.id) }
        return owed.sorted()
    }
}
