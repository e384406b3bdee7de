import Logging
import UVLoop

/// Incoming bytes: one pass from the read to the call table or the handler.
///
/// The parser is specialised for the endpoint (``PacketSink``): each frame
/// goes straight to ``receivedMessage(id:payload:)`` or
/// ``receivedResponse(id:payload:)``, with no enum and no closure per frame.
/// The loop-thread rule holds by construction here: these run only from the
/// connection's read callbacks, on the loop.
extension RPCEndpoint: PacketSink {
    func handleReadable(_ bytes: UnsafeRawBufferPointer) -> Int {
        let now = loopNow
        liveness.received(at: now)
        parser.clock = now
        if closing { return bytes.count }
        // Backpressure: take no new packet that makes output (a message, a
        // cancel) while output piles up unsent; the peer's bytes wait in the
        // kernel (and its sends back up) until the connection drains below
        // its low-water mark.
        if readingBackpressured, parser.isAtPacketBoundary, Self.makesOutput(bytes[0]) {
            pausedForBackpressure = true
            connection.pauseReading()
            schedulePump() // chunks no longer wait for acknowledgements (see pumpChunks)
            return 0
        }
        parser.inlinePayloadLimit = connection.contiguousReadCapacity - Wire.bigHeaderSize
        liveness.enterTurn(eventLoop.turn)
        defer {
            if !retiredHandlers.isEmpty { retiredHandlers.removeAll() }
            if parser.chunkBytesToAcknowledge > 0 { acknowledgeChunks() }
            // This connection had its share of the turn: the loop's others go first.
            if liveness.usedTurnShare && !closing { connection.yieldForThisTurn() }
            closeIfDrained()
        }
        do {
            return try parser.parse(bytes, into: self)
        } catch {
            protocolViolated(error)
            return bytes.count
        }
    }

    /// Whether a packet of type `type` makes this side write something back
    /// (MESSAGE, MESSAGE_BIG, MESSAGE_START: an answer; CANCEL: CANCEL_ACK).
    @inline(__always)
    static func makesOutput(_ type: UInt8) -> Bool {
        type == PacketType.message.rawValue || type == PacketType.messageBig.rawValue
            || type == PacketType.messageStart.rawValue || type == PacketType.cancel.rawValue
    }

    /// Counts a packet handled against this turn's share; whether parsing may go on.
    @inline(__always)
    func countPacket() -> Bool {
        liveness.countPacket() && !closing
    }

    @inline(__always)
    package func receivedMessage(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool {
        // Metadata waits only for messages of a caller that sent some (extension `meta`).
        if !pendingMetadata.isEmpty { return receivedMessageWithMetadata(id: id, payload: payload) }
        // A literal nil: the compiler then drops the per-message release of the call (of nil, ~20 instructions).
        handleMessage(id: id, payload: payload, call: nil)
        // Stop after it if its answer made the connection unwritable (or chunked answers pile up).
        return countPacket() && !readingBackpressured
    }

    /// ``receivedMessage(id:payload:)`` while metadata waits for its message. Out of line:
    /// the common path stays as small.
    @inline(never)
    func receivedMessageWithMetadata(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool {
        handleMessage(id: id, payload: payload, call: takePendingMetadata(id))
        return countPacket() && !readingBackpressured
    }

    package func receivedResponse(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool {
        if let call = removeCall(id) {
            call.completion.succeed(on: self, payload)
        } else {
            logger.debug("response for an unknown or expired message id; ignored", metadata: ["rpc.id": "\(id)"])
        }
        return countPacket()
    }

    package func receivedKeepalives(_ count: Int) -> Bool { countPacket() }

    package func awaitsResponse(id: UInt16) -> Bool { calls.isAwaited(id) }

    /// A payload in parts this side will not hold (see
    /// ``Configuration/maximumPayloadMemory``): a message is answered with an
    /// error, a response fails its call; the parser skips the bytes.
    package func refusedPayload(isMessage: Bool, id: UInt16, size: Int, reason: PayloadRefusal) -> Bool {
        metrics.payloadsRefused[reason.metricName, default: 0] &+= 1
        let peer = peerDescription
        if isMessage {
            if !pendingMetadata.isEmpty { pendingMetadata[id] = nil }
            answers.messageArrived() // the peer may cancel it
            let sent = sendErrorAnswer(to: id, code: .resourceExhausted, reason: "message of \(size) bytes refused: \(reason)")
            logger.warning("refused a message payload; \(sent ? "answered with an error" : "no response sent")", metadata: [
                "rpc.peer": "\(peer)", "rpc.id": "\(id)", "rpc.size": "\(size)", "rpc.reason": "\(reason)",
            ])
        } else {
            // With the extension, the peer is asked to stop sending it (the id stays reserved until it confirms).
            let call = agreed.contains(.cancellation) ? cancelOutgoingCall(id) : removeCall(id)
            logger.warning("refused a response payload; the call fails", metadata: [
                "rpc.peer": "\(peer)", "rpc.id": "\(id)", "rpc.size": "\(size)", "rpc.reason": "\(reason)",
            ])
            call?.completion.fail(on: self, .responseRefused(endpoint: label, messageID: id, payloadSize: size,
                                                             reason: "\(reason)"))
        }
        return !closing
    }

    package func receivedHandshake(_ info: PeerInfo) -> Bool {
        _peerInfo = info
        cachedFacts = nil
        peerPayloadLimit = info.maximumPayloadSize ?? Int.max
        agreed = configuration.extensions.intersection(info.extensions)
        logger.debug("peer handshake", metadata: ["rpc.peer-info": "\(info)"])
        sendGoAwayIfAgreed()
        sendDeferred()
        if !closing, let onHandshake = _onHandshake { onHandshake(info) }
        return !closing
    }

    @inline(__always)
    func handleMessage(id: UInt16, payload: UnsafeRawBufferPointer, call: IncomingCall?) {
        metrics.messagesReceived &+= 1
        answers.messageArrived()
        if let callbackHandler {
            runCallbackHandler(callbackHandler, id: id, payload: payload, call: call)
            return
        }
        if hasAsyncHandler {
            enqueueAsyncRequest(id: id, payload: metrics.payloadSpares.copy(payload), call: call)
        } else {
            holdUntilAHandlerIsSet(id: id, payload: payload, call: call)
        }
    }

    /// A message that arrived before any handler was set waits (up to 1024).
    /// Out of line: the per-message path stays small enough to be inlined.
    @inline(never)
    func holdUntilAHandlerIsSet(id: UInt16, payload: UnsafeRawBufferPointer, call: IncomingCall?) {
        if !answers.hold(id: id, payload: payload, call: call) {
            let sent = sendErrorAnswer(to: id, code: .resourceExhausted, reason: "no message handler is set on \(label) and 1024 messages wait for one")
            logger.warning("message received but no onMessage handler is set and 1024 are waiting; \(sent ? "answered with an error" : "no response sent")",
                           metadata: ["rpc.id": "\(id)"])
        }
    }

    func deliverWaitingMessages() {
        guard handler != nil, !answers.waitingMessages.isEmpty else { return }
        let waiting = answers.takeWaitingMessages()
        for message in waiting where !closing {
            message.payload.withUnsafeBytes { handleMessage(id: message.id, payload: $0, call: message.call) }
        }
        closeIfDrained()
    }

    /// Registers a waiter for the end of the endpoint (on the loop).
    func addCloseWaiter(_ waiter: @escaping (RPCCloseReason) -> Void) {
        if _isClosed { waiter(_closeReason ?? .local) } else { closeWaiters.append(waiter) }
    }

    /// Abandons an async call that was cancelled (on the loop): frees its id
    /// (a late response is then ignored) without closing the endpoint.
    func cancelCall(_ call: AsyncCall) {
        guard !call.isFinished else { return }
        if let id = call.id { _ = cancelOutgoingCall(id) }
        calls.dropDeferred(call)
        metrics.callCancelled()
        call.finish(.failure(CancellationError()))
        closeIfDrained()
    }
}
