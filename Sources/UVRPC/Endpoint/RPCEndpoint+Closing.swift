import Logging
import UVLoop

/// Liveness (handshake and keepalive timeouts) and the end of an endpoint.
extension RPCEndpoint {
    // MARK: Liveness

    /// The periodic check (every `liveness.period`): acts on ``Liveness``'s
    /// verdict, and runs the checks of the other state on the same clock.
    func checkLiveness() {
        let now = loopNow
        // (While reading is paused for backpressure the write timeout watches the peer, not the keepalive timeout.)
        let verdict = liveness.check(now: now, handshakeReceived: _peerInfo != nil, readingPaused: pausedForBackpressure)
        if verdict.loopWasHeldUp {
            // This loop itself was held up (a handler that blocked it, a long computation on it):
            // the peer's payloads and acknowledgements could not be read meanwhile, so their clocks start again.
            parser.restartProgressClocks(now: now)
            outgoing.restartProgressClock(now: now)
        }
        // Nothing arrived for a whole period: give the connection's buffers back.
        if verdict.peerIdle {
            connection.releaseIdleBuffers()
            parser.releaseSpareBuffer()
        }
        if !answers.unanswered.isEmpty { reportOverdueRequests(now: now) }
        if outgoing.unacknowledgedBytes > 0 { checkChunkAcknowledgements(now: now) }
        if !closing && !pausedForBackpressure { checkPayloadProgress(now: now) }
        switch verdict.timeout {
        case nil:
            break
        case .handshake?:
            logger.info("no handshake from the peer in time; closing")
            close(reason: .handshakeTimeout(configuration.handshakeTimeout))
        case .keepalive(let silent)?:
            logger.info("keepalive timeout; closing", metadata: ["rpc.silent-ms": "\(silent)"])
            close(reason: .keepaliveTimeout(configuration.keepaliveTimeout))
        }
    }

    /// Closes when a payload arriving in parts has not moved 64 KiB within
    /// the progress timeout: a peer keeping memory reserved by trickling bytes.
    func checkPayloadProgress(now: UInt64) {
        let timeout = configuration.payloadProgressTimeout
        guard let stalled = parser.stalledPayload(now: now, timeout: timeout.roundedUpMilliseconds) else { return }
        logger.info("a payload in parts moved less than 64 KiB within the progress timeout; closing", metadata: [
            "rpc.peer": "\(peerDescription)",
            "rpc.id": "\(stalled.id)", "rpc.kind": "\(stalled.isMessage ? "message" : "response")",
            "rpc.received": "\(stalled.received)", "rpc.size": "\(stalled.total)",
        ])
        close(reason: .payloadStalled(timeout))
    }

    // MARK: Closing

    /// Closes the endpoint: fails every in-flight call, refuses later
    /// answers, flushes and closes the connection. Idempotent.
    public func close() {
        checkLoop("RPCEndpoint.close()")
        close(reason: .local)
    }

    /// Closes with `reason`; without `lingering`, the connection closes as
    /// soon as what is owed is flushed, without reading what the peer still
    /// sends (a server whose task was cancelled must end promptly).
    func close(reason: RPCCloseReason, lingering: Bool = true) {
        guard phase.beginClosing(reason) else { return }
        metrics.connectionClosed(reason)
        switch reason.kind {
        case .local, .protocolViolation, .handshakeTimeout, .keepaliveTimeout, .drainTimedOut, .payloadStalled:
            break // not logged, or logged where detected
        case .peerClosed, .drained:
            logger.debug("closing", metadata: ["rpc.reason": "\(reason)"])
        case .reset, .connectionFailed, .callFailed:
            logger.info("closing", metadata: [
                "rpc.peer": "\(peerDescription)",
                "rpc.reason": "\(reason)",
            ])
        }
        keepaliveTimer?.cancel()
        livenessTimer?.cancel()
        deadlineTimer?.close()
        handlerDeadlineTimer?.close()
        deferredTimer?.close()
        keepaliveTimer = nil
        livenessTimer = nil
        deadlineTimer = nil
        deferredTimer = nil
        handlerDeadlineTimer = nil
        handlerDeadlines.removeAll()
        pendingMetadata.removeAll()
        // A drain's timer stays: at its deadline it aborts a connection still flushing.
        for id in calls.liveIDs() {
            if let call = removeCall(id) {
                call.completion.fail(on: self, .closed(endpoint: label, messageID: id, reason: reason))
            }
        }
        // Closing stops handling: running async handlers are cancelled (their
        // answers would be refused anyway), kept requests can no longer be answered.
        stopAsyncWorkers()
        answers.dropHandlersAndCancellations()
        dropAllTransfers()
        dropUnansweredRequests()
        for send in calls.takeUnsent() { send.completion.fail(on: self, .closed(endpoint: label, messageID: nil, reason: reason)) }
        switch reason.kind {
        case .handshakeTimeout, .payloadStalled:
            // Nothing to finish with a peer that never spoke, or that stalls on purpose.
            connection.abort()
        case .drained where _peerInfo == nil:
            connection.abort()
        case .keepaliveTimeout:
            connection.close(lingering: false) // a peer silent that long will not end its side either
        default:
            connection.close(lingering: lingering) // flushes what is owed first (within the connection's close timeout)
        }
    }

    func connectionDidClose(_ error: ConnectionError?) {
        drainTimer?.cancel()
        drainTimer = nil
        if !closing {
            let reason: RPCCloseReason
            switch error?.kind {
            case nil: reason = .local
            case .endOfStream?: reason = .peerClosed
            case .reset?: reason = .reset
            case .some: reason = .connectionFailed(error!)
            }
            close(reason: reason)
        }
        phase.finishClosing()
        // A closed endpoint may be kept (e.g. in RPCServer.endpoints): hold no big buffer.
        parser.discardPartialPacket()
        let onClose = _onClose
        _onClose = nil
        setHandler(nil)
        cachedFacts = nil // it references the endpoint (its handle): no cycle outlives the close
        replaceTaggedHandler(nil)
        _onWritabilityChanged = nil
        _onHandshake = nil
        _ = answers.takeWaitingMessages()
        let owner = didCloseForOwner
        didCloseForOwner = nil
        let reason = _closeReason ?? .local
        onClose?(reason)
        owner?()
        let waiters = closeWaiters
        closeWaiters.removeAll()
        for waiter in waiters { waiter(reason) }
    }
}
