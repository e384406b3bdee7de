import Logging
import UVLoop

/// Error answers, cancellation and go-away (extensions `error`, `cancel`,
/// `goaway`; see Docs/PROTOCOL.md). Each is used only when both handshakes
/// announced it (``agreed``); with an efro.rpc peer everything here is
/// skipped and the endpoint behaves as the reference does.
///
/// Cancellation keeps ids unambiguous: the caller that cancels call `id`
/// (its task was cancelled, or it timed out without closing the endpoint)
/// writes CANCEL and keeps `id` reserved; the peer drops the message (or
/// cancels its handler), sends nothing more for `id`, and writes CANCEL_ACK.
/// Whatever the peer wrote for `id` before it read the CANCEL (an answer
/// crossing the cancel, chunks of a response) arrives before the CANCEL_ACK
/// and is ignored; only at the CANCEL_ACK is `id` free for a new call.
extension RPCEndpoint {
    /// Writes a packet that is only a header (CANCEL, CANCEL_ACK, GOAWAY, a
    /// START, CHUNK_ACK): the first `headerCount` bytes of `header`, memory order.
    func writeControlPacket(_ header: UInt64, headerCount: Int) throws(ConnectionError) {
        try connection.write(header: header, headerCount: headerCount, payload: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    // MARK: Error answers

    /// Answers message `id` with an ERROR carrying `code` and `reason` (cut
    /// to ``Wire/maximumErrorReason`` bytes of UTF-8), when the peer takes
    /// them; otherwise sends nothing, as the reference does. Returns whether it was sent.
    @discardableResult
    func sendErrorAnswer(to id: UInt16, code: RPCError.Code, reason: String) -> Bool {
        guard agreed.contains(.errorAnswers), !closing else { return false }
        var bytes = Array(reason.utf8)
        if bytes.count > Wire.maximumErrorReason {
            var end = Wire.maximumErrorReason
            while end > 0 && bytes[end] & 0xC0 == 0x80 { end -= 1 } // not inside a UTF-8 sequence
            bytes.removeSubrange(end...)
        }
        let header = PacketWriter.errorHeader(id: id, code: code.rawValue, length: bytes.count)
        let written = bytes.withUnsafeBytes { raw in
            Result { () throws(ConnectionError) in try connection.write(header: header, headerCount: 6, payload: raw) }
        }
        guard case .success = written else { return false }
        metrics.responsesSent &+= 1
        return true
    }

    package func receivedError(id: UInt16, code: UInt8, reason: UnsafeRawBufferPointer) -> Bool {
        if let call = removeCall(id) {
            // The connection is fine: a failed handler does not close the endpoint, whatever closeOnError says.
            call.completion.fail(on: self, .peerFailed(endpoint: label, messageID: id, code: RPCError.Code(rawValue: code),
                                                      reason: String(decoding: reason, as: UTF8.self)))
        } else {
            logger.debug("error answer for an unknown, expired or cancelled message id; ignored", metadata: ["rpc.id": "\(id)"])
        }
        return countPacket()
    }

    // MARK: Cancelling our calls

    /// Ends outgoing call `id` as cancelled: with the extension, tells the
    /// peer and keeps the id until it confirms; without, just frees the id
    /// (a late answer is then ignored, or taken for a later call with the
    /// same id 65536 calls on, as with the reference). Returns what the call
    /// table held for it.
    func cancelOutgoingCall(_ id: UInt16) -> PendingCall? {
        guard agreed.contains(.cancellation) else { return removeCall(id) }
        if outgoing.waiting.contains(where: { $0.id == id && !$0.isResponse }) {
            // A chunked message still waiting for a transfer slot: nothing of it was
            // written, so there is nothing for the peer to cancel (a CANCEL would be
            // one more than the messages it received) and the id is free at once.
            dropTransfer(isResponse: false, id: id)
            return removeCall(id)
        }
        guard let call = calls.reserve(id) else { return nil }
        metrics.callEnded(startedAt: call.startedAt)
        // CANCEL first: dropping an active transfer starts a waiting one (its START),
        // which the peer must see after this one ended there, or it has five in progress.
        try? writeControlPacket(PacketWriter.idHeader(.cancel, id: id), headerCount: 3)
        dropTransfer(isResponse: false, id: id)
        return call
    }

    package func receivedCancelAcknowledgement(id: UInt16) -> Bool {
        guard calls.release(id) else {
            protocolViolated(.unexpectedCancelAcknowledgement(id: id))
            return false
        }
        return countPacket()
    }

    // MARK: The peer cancels its call

    package func receivedCancel(id: UInt16, droppedPartialMessage: Bool) -> Bool {
        // Each message may be cancelled once: no more CANCELs (and so CANCEL_ACKs) than messages.
        let found = answers.peerCancelled(id: id, droppedPartialMessage: droppedPartialMessage, queue: &workers)
        switch found {
        case .unexpected:
            protocolViolated(.unexpectedCancel(id: id))
            return false
        case .runningHandler(let worker):
            workers.tasks[worker]?.cancel()
        case .queuedMessage, .waitingMessage, .keptRequest, .messageStillArriving, .nothing:
            break
        }
        if !pendingMetadata.isEmpty { pendingMetadata[id] = nil } // its message is not coming
        logger.debug("the peer cancelled a message", metadata: ["rpc.id": "\(id)", "rpc.cancelled": "\(found)"])
        try? writeControlPacket(PacketWriter.idHeader(.cancelAcknowledged, id: id), headerCount: 3)
        // After the CANCEL_ACK (which ends the answer's transfer at the peer): dropping an
        // active transfer starts a waiting one, whose START must not make a fifth there.
        dropTransfer(isResponse: true, id: id)
        closeIfDrained()
        // Its acknowledgement is output: stop while output piles up, as after a message.
        return countPacket() && !readingBackpressured
    }

    /// Whether callback request `token` was cancelled by the peer.
    func isCancelled(token: UInt64) -> Bool {
        if answers.isCurrent(token) { return false } // a CANCEL cannot arrive while its handler runs
        checkLoop("RPCRequest.isCancelled")
        return answers.wasCancelled(token: token)
    }

    // MARK: Go-away

    /// Tells the peer this side is draining (once), when it takes GOAWAY.
    func sendGoAwayIfAgreed() {
        guard draining, !goAwaySent, agreed.contains(.goAway), !closing else { return }
        goAwaySent = true
        try? writeControlPacket(UInt64(PacketType.goAway.rawValue), headerCount: 1)
    }

    package func receivedGoAway() -> Bool {
        guard !_peerIsGoingAway else { return countPacket() }
        _peerIsGoingAway = true
        logger.info("the peer is draining (go-away): no new calls on this connection",
                    metadata: ["rpc.in-flight": "\(calls.activeCount)"])
        // Sends not written yet never reached the peer: they fail now, and may be sent elsewhere.
        for send in calls.takeUnsent() { send.completion.fail(on: self, .peerGoingAway(endpoint: label)) }
        didReceiveGoAwayForOwner?()
        closeIfDrained()
        return countPacket()
    }

    /// Closes for a protocol violation found above the parser (logged with the peer).
    func protocolViolated(_ violation: ProtocolViolation) {
        logger.error("protocol violation; closing", metadata: [
            "rpc.peer": "\(peerDescription)",
            "rpc.violation": "\(violation)",
        ])
        close(reason: .protocolViolation(violation))
    }
}

extension RPCEndpoint {
    /// Ids held by cancelled calls until the peer's CANCEL_ACK (for tests). Loop-bound.
    package var reservedCallIDCount: Int { calls.reservedCount }
    /// Async handler calls running now (for tests). Loop-bound.
    package var runningAsyncHandlerCount: Int { workers.running }
    /// Async worker tasks alive, parked or running (for tests). Loop-bound.
    package var asyncWorkerCount: Int { workers.tasks.count }
    /// Finished async calls kept for the next callers on the loop (for tests). Loop-bound.
    package var spareCallCount: Int { spareCalls.count }
    /// Bytes of payload buffers the parser holds (for tests). Loop-bound.
    package var heldPayloadBytes: Int { parser.memory.held }
    /// Payloads in parts being received or skipped (for tests). Loop-bound.
    package var partialPayloadCount: Int { parser.partialPayloadCount }
}
