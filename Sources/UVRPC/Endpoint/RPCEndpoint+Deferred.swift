import UVLoop

/// Sends made before the peer's handshake came, when what they carry
/// depends on it (metadata, which a call with a timeout carries; payloads
/// over 65535 bytes, which need *_BIG packets): they wait for it. Each
/// keeps the deadline it had when it was made: the time it waits counts
/// against its timeout, and at its deadline it fails unsent (code deadline
/// exceeded) instead of waiting out the handshake timeout (30 s by default).
extension RPCEndpoint {
    /// Holds `send` until the peer's handshake, at most until `deadline` (loop milliseconds).
    func deferUntilHandshake(_ send: QueuedSend, deadline: UInt64) {
        var send = send
        send.deadline = deadline
        calls.deferUntilHandshake(send)
        if deadline < deferredTimerDeadline { armDeferredTimer(for: deadline) }
    }

    private func armDeferredTimer(for deadline: UInt64) {
        deferredTimerDeadline = deadline
        if deferredTimer == nil { deferredTimer = eventLoop.makeTimer { [unowned self] in self.expireDeferred() } }
        let now = loopNow
        deferredTimer!.start(after: .milliseconds(Int64(clamping: deadline > now ? deadline - now : 0)))
    }

    /// The timer fired: the sends past their deadline fail; it is armed again for the rest.
    private func expireDeferred() {
        deferredTimerDeadline = .max
        for send in calls.takeDeferred(expiredBy: loopNow) { failForNoHandshake(send) }
        if let next = calls.earliestDeferredDeadline { armDeferredTimer(for: next) }
    }

    /// `send` waited for the handshake until its deadline: it fails, not sent.
    private func failForNoHandshake(_ send: QueuedSend) {
        send.completion.fail(on: self, .noHandshakeInTime(endpoint: label, timeout: send.timeout ?? configuration.messageTimeout))
    }

    /// The peer's handshake came: the waiting sends start, oldest first, each
    /// with the time its deadline leaves (none left: it fails unsent).
    func sendDeferred() {
        guard !calls.deferred.isEmpty else { return }
        deferredTimer?.cancel()
        deferredTimerDeadline = .max
        let now = loopNow
        for send in calls.takeDeferred() {
            var timeout = send.timeout
            if let deadline = send.deadline {
                guard deadline > now else { failForNoHandshake(send); continue }
                timeout = .milliseconds(Int64(clamping: deadline - now))
            }
            // An async send waits for writability here too, as it would have when made after the handshake.
            if case .async(let call) = send.completion {
                startAsyncCall(send.payload, timeout: timeout, closeOnError: send.closeOnError, call: call, metadata: send.metadata)
                continue
            }
            send.payload.withUnsafeBytes {
                startCall($0, timeout: timeout, closeOnError: send.closeOnError, completion: send.completion,
                          owned: send.payload, metadata: send.metadata)
            }
        }
    }
}
