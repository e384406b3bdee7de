import Logging
import UVLoop

/// Liveness (handshake and keepalive timeouts) and the end of an endpoint.
extension RPCEndpoint {
    // MARK: Liveness

    func checkLiveness() {
        let now = eventLoop.now
        // Nothing arrived for a whole period: give the connection's buffers back.
        if now - lastReceived >= livenessPeriod {
            connection.releaseIdleBuffers()
            parser.releaseSpareBuffer()
        }
        if !unanswered.isEmpty { reportOverdueRequests(now: now) }
        if chunkBytesUnacknowledged > 0 { checkChunkAcknowledgements(now: now) }
        if _peerInfo == nil, now - openedAt > configuration.handshakeTimeout.roundedUpMilliseconds {
            logger.info("no handshake from the peer in time; closing")
            close(reason: .handshakeTimeout(configuration.handshakeTimeout))
        } else if !pausedForBackpressure, now - lastReceived > configuration.keepaliveTimeout.roundedUpMilliseconds {
            // (While reading is paused for backpressure the write timeout watches the peer.)
            logger.info("keepalive timeout; closing",
                        metadata: ["rpc.silent-ms": "\(now - lastReceived)"])
            close(reason: .keepaliveTimeout(configuration.keepaliveTimeout))
        }
    }

    // MARK: Closing

    /// Closes the endpoint: fails every in-flight call, refuses later
    /// answers, flushes and closes the connection. Idempotent.
    public func close() {
        checkLoop("RPCEndpoint.close()")
        close(reason: .local)
    }

    func close(reason: RPCCloseReason) {
        guard !closing else { return }
        _closeReason = reason
        closing = true
        metrics.connectionClosed(reason)
        switch reason {
        case .local, .protocolViolation, .handshakeTimeout, .keepaliveTimeout, .drainTimedOut:
            break // not logged, or logged where detected
        case .peerClosed, .drained:
            logger.debug("closing", metadata: ["rpc.reason": "\(reason)"])
        case .reset, .connectionFailed, .callFailed:
            logger.info("closing", metadata: [
                "rpc.peer": "\(connection.remoteAddress.map { "\($0)" } ?? connection.label)",
                "rpc.reason": "\(reason)",
            ])
        }
        keepaliveTimer?.cancel()
        livenessTimer?.cancel()
        deadlineTimer?.close()
        drainTimer?.cancel()
        keepaliveTimer = nil
        livenessTimer = nil
        deadlineTimer = nil
        drainTimer = nil
        for id in calls.liveIDs() {
            if let (call, _) = removeCall(id) {
                call.completion.fail(on: self, .closed(endpoint: label, messageID: id, reason: reason))
            }
        }
        // Closing stops handling: running async handlers are cancelled (their
        // answers would be refused anyway), kept requests can no longer be answered.
        stopAsyncWorkers()
        runningRequests.removeAll()
        cancelledRequests.removeAll()
        dropAllTransfers()
        dropUnansweredRequests()
        let waiting = deferredSends + blockedSends[blockedSendsHead...]
        deferredSends.removeAll()
        blockedSends.removeAll()
        blockedSendsHead = 0
        for send in waiting { send.completion.fail(on: self, .closed(endpoint: label, messageID: nil, reason: reason)) }
        connection.close()
    }

    func connectionDidClose(_ error: ConnectionError?) {
        if !closing {
            let reason: RPCCloseReason
            switch error {
            case nil: reason = .local
            case .endOfStream?: reason = .peerClosed
            case .reset?: reason = .reset
            case let other?: reason = .connectionFailed(other)
            }
            close(reason: reason)
        }
        _isClosed = true
        // A closed endpoint may be kept (e.g. in RPCServer.endpoints): hold no big buffer.
        parser.discardPartialPacket()
        let onClose = _onClose
        _onClose = nil
        setHandler(nil)
        _onTaggedResponse = nil
        _onWritabilityChanged = nil
        _onHandshake = nil
        waitingMessages.removeAll()
        let owner = didCloseForOwner
        didCloseForOwner = nil
        let reason = _closeReason ?? .local
        onClose?(reason)
        owner?()
        let waiters = closeWaiters
        closeWaiters.removeAll()
        for waiter in waiters { waiter.resume(returning: reason) }
    }
}
