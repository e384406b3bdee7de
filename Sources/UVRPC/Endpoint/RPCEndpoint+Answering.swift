import Logging
import UVLoop

/// Callback handlers and their answers: the answer state of every
/// ``RPCRequest`` lives in the endpoint's ``OwedAnswers`` (`answers`), not in
/// an object per message.
///
/// - While a handler runs, its request is the *current* one;
///   answering it is two comparisons and the write. No thread check: an
///   ``RPCRequest`` is not `Sendable`, so only the loop thread can hold it
///   during the call.
/// - A handler that returns without answering leaves its request kept
///   (by message id, with its token), where a later answer finds
///   it; at most one request per message id is kept.
/// - A request left unanswered is logged once it has waited longer than
///   ``Configuration/messageTimeout``, when the peer sends a new message with
///   its id (the peer's call gave up), and when the endpoint closes.
extension RPCEndpoint {
    /// Requests whose handler returned without answering, still answerable. Loop-bound.
    public var unansweredRequestCount: Int {
        checkLoop("RPCEndpoint.unansweredRequestCount")
        return answers.unanswered.count
    }

    @inline(__always)
    func runCallbackHandler(_ handler: Unmanaged<CallbackHandler>, id: UInt16, payload: UnsafeRawBufferPointer,
                            call incoming: IncomingCall?) {
        if let old = answers.takeSuperseded(id: id) {
            logger.error("message handler never answered; the peer reused the message id, so it can no longer be answered",
                         metadata: ["rpc.id": "\(id)", "rpc.waited-ms": "\(loopNow - old.since)"])
        }
        // A handler may (by setting onMessage) run waiting messages within its call: `call` knows the outer request.
        let call = answers.beginHandlerCall(id: id)
        // Swapped only when either is set: storing nil over nil still cost a
        // retain and two releases (of nil) per message, ~30 instructions.
        let swapsIncoming = incoming != nil || currentIncomingCall != nil
        let outerIncoming = swapsIncoming ? currentIncomingCall : nil
        if swapsIncoming { currentIncomingCall = incoming }
        defer { if swapsIncoming { currentIncomingCall = outerIncoming } }
        do {
            // Borrowed, not retained (see `callbackHandler` and `retiredHandlers`): a retain and
            // release here cost 34 instructions per call of the echo server (272 against 238,
            // callgrind, `scripts/instructions-per-call.sh 1 1 256 3`).
            try handler._withUnsafeGuaranteedRef {
                try $0.body(RPCRequest(payload: payload, endpoint: self, token: call.token))
            }
        } catch {
            callbackHandlerFailed(id: id, error: error)
        }
        if answers.endHandlerCall(call) && !closing {
            answers.keep(call, since: loopNow, incoming: incoming)
        }
    }

    /// A callback handler threw: answers with an error if it had not
    /// answered (and the peer takes error answers), and logs it. Out of
    /// line, so that the per-message path stays small enough to be inlined.
    @inline(never)
    func callbackHandlerFailed(id: UInt16, error: any Error) {
        if answers.claimCurrent() { // abandoned: a later answer is refused
            let (code, reason) = publicFailure(of: error)
            let sent = sendErrorAnswer(to: id, code: code, reason: reason)
            logger.error("message handler failed; \(sent ? "answered with an error" : "no response sent")",
                         metadata: ["rpc.id": "\(id)", "rpc.error": "\(error)"])
        } else {
            logger.error("message handler failed after answering", metadata: [
                "rpc.id": "\(id)", "rpc.error": "\(error)",
            ])
        }
    }

    /// Answers the request `token` (its message id in the low 16 bits): ``RPCRequest/respond(_:)-(UnsafeRawBufferPointer)``.
    @inline(__always)
    func answer(token: UInt64, with payload: UnsafeRawBufferPointer, owned: [UInt8]? = nil) throws(RPCResponseError) {
        let id = try claim(token: token, "RPCRequest.respond")
        try respond(to: id, with: payload, owned: owned)
        closeIfDrained()
    }

    /// Answers the request `token` with an error: ``RPCRequest/fail(_:)``.
    func fail(token: UInt64, error: any Error) throws(RPCResponseError) {
        let id = try claim(token: token, "RPCRequest.fail")
        guard !closing else { throw .closed(endpoint: label, messageID: id) }
        let (code, reason) = publicFailure(of: error)
        let sent = sendErrorAnswer(to: id, code: code, reason: reason)
        logger.error("message failed; \(sent ? "answered with an error" : "the peer takes no error answers, so no response was sent")",
                     metadata: ["rpc.id": "\(id)", "rpc.error": "\(error)"])
        closeIfDrained()
    }

    /// Marks the request `token` answered and returns its message id, or
    /// throws why it cannot be answered (any more).
    @inline(__always)
    func claim(token: UInt64, _ api: StaticString) throws(RPCResponseError) -> UInt16 {
        let id = UInt16(truncatingIfNeeded: token)
        if answers.isCurrent(token) {
            // Answered within its handler call, on the loop (see the type's comment).
            guard answers.claimCurrent() else { throw .alreadyAnswered(endpoint: label, messageID: id) }
        } else {
            try claimKeptRequest(id: id, token: token, api)
        }
        return id
    }

    /// ``claim(token:_:)`` for a request kept past its handler call.
    func claimKeptRequest(id: UInt16, token: UInt64, _ api: StaticString) throws(RPCResponseError) {
        checkLoop(api)
        let claim = answers.claimKept(token: token)
        guard claim != .claimed else { return }
        if closing { throw .closed(endpoint: label, messageID: id) }
        if claim == .cancelled { throw .cancelled(endpoint: label, messageID: id) }
        throw .alreadyAnswered(endpoint: label, messageID: id)
    }

    /// Whether the request `token` was answered or can no longer be.
    func isAnswered(token: UInt64) -> Bool {
        if answers.isCurrent(token) { return answers.currentAnswered }
        checkLoop("RPCRequest.isAnswered")
        return !answers.keeps(token: token)
    }

    /// Writes the answer to message `id`; `owned`, when given, holds the same
    /// bytes (a chunked transfer keeps it instead of a copy).
    @inline(__always)
    func respond(to id: UInt16, with payload: UnsafeRawBufferPointer, owned: [UInt8]? = nil) throws(RPCResponseError) {
        guard !closing else { throw .closed(endpoint: label, messageID: id) }
        if payload.count > peerPayloadLimit {
            try refuseAnswerOverPeerLimit(id: id, size: payload.count, limit: peerPayloadLimit)
        }
        if payload.count > Wire.maximumShortPayload {
            if let peer = _peerInfo, !peer.acceptsBigPayloads {
                throw .peerTooOld(endpoint: label, messageID: id, payloadSize: payload.count,
                                  peerProtocol: peer.protocolVersion)
            }
            if sendsChunked(payload.count) {
                startTransfer(isResponse: true, id: id, payload: payload, owned: owned)
                return
            }
        }
        do {
            try writeFrame(isResponse: true, id: id, payload: payload)
        } catch {
            throw .closed(endpoint: label, messageID: id)
        }
    }

    /// An answer over the largest payload the peer announced would make it
    /// close the connection: answer with an ERROR saying so instead, and throw.
    @inline(never)
    func refuseAnswerOverPeerLimit(id: UInt16, size: Int, limit: Int) throws(RPCResponseError) {
        sendErrorAnswer(to: id, code: .resourceExhausted,
                        reason: "the answer of \(size) bytes is over the caller's limit of \(limit) bytes (its maximumPayloadSize)")
        logger.warning("answer over the peer's announced limit; answered with an error instead", metadata: [
            "rpc.id": "\(id)", "rpc.size": "\(size)", "rpc.peer-limit": "\(limit)",
        ])
        throw .overPeerLimit(endpoint: label, messageID: id, payloadSize: size, peerLimit: limit)
    }

    /// Logs requests left unanswered for longer than the message timeout
    /// (by then the peer's call has most likely timed out), once each.
    func reportOverdueRequests(now: UInt64) {
        for (id, waited) in answers.markOverdue(now: now, limit: configuration.messageTimeout.roundedUpMilliseconds) {
            logger.error("message handler has not answered; the peer's call has most likely timed out", metadata: [
                "rpc.id": "\(id)", "rpc.waited-ms": "\(waited)",
            ])
        }
    }

    /// Forgets every unanswered request (the endpoint is closing); logs them.
    func dropUnansweredRequests() {
        guard !answers.unanswered.isEmpty else { return }
        let ids = answers.dropKept()
        logger.warning("closing with requests unanswered", metadata: [
            "rpc.unanswered": "\(ids.count)",
            "rpc.ids": "\(ids.prefix(16).map(String.init).joined(separator: ","))",
        ])
    }
}
