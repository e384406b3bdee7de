import Logging
import UVLoop

/// Graceful close: finish what is in flight, then close.
///
/// Half a second after the deadline the connection is aborted if it has not
/// closed by then, even when the endpoint had drained and only its last
/// bytes were waiting for a peer that stopped reading: a drain never
/// outlasts its grace period by more than that.
///
/// While an endpoint drains it goes on as before (an efro.rpc peer cannot be
/// told to stop sending, so a message that arrives during the drain is
/// handled and answered like any other, and counts as work in flight); it
/// closes with ``RPCCloseReason/drained`` as soon as nothing is in flight
/// either way: no outgoing call waiting for its response (or to be written),
/// no incoming message unanswered (kept by a callback handler, queued for
/// or running in an async handler, or waiting for a handler to be set). At
/// the deadline it closes whatever is left with
/// ``RPCCloseReason/drainTimedOut(_:)``: calls still in flight fail with
/// that reason, kept requests can no longer be answered.
extension RPCEndpoint {
    /// Closes the endpoint once nothing is in flight, or after `gracePeriod`
    /// at the latest (see the type's comment). Loop-bound. A second call
    /// keeps the earlier deadline; ``close()`` still closes at once.
    public func close(gracePeriod: Duration) {
        checkLoop("RPCEndpoint.close(gracePeriod:)")
        beginDrain(gracePeriod: gracePeriod)
    }

    /// ``close(gracePeriod:)`` on the loop (without the thread check).
    func beginDrain(gracePeriod: Duration) {
        guard phase.beginDraining() else { return } // already draining, or closing
        sendGoAwayIfAgreed()
        // Cancelled when the connection has closed (the endpoint lives until then).
        drainTimer = eventLoop.scheduleTimer(after: gracePeriod) { [unowned self] in
            self.drainDeadlinePassed(gracePeriod)
        }
        closeIfDrained()
    }

    /// How long a drained (or timed-out) endpoint's connection may still take
    /// to flush its last bytes once the grace period is over, before it is aborted.
    static let drainFlushAllowance = Duration.milliseconds(500)

    /// The grace period is over: close what is left (flushing what is owed),
    /// and abort the connection if the peer has not taken those bytes
    /// within ``drainFlushAllowance``.
    private func drainDeadlinePassed(_ gracePeriod: Duration) {
        if !closing {
            logger.info("drain ran out of time; closing", metadata: [
                "rpc.in-flight": "\(calls.activeCount)", "rpc.unanswered": "\(answers.unanswered.count)",
            ])
            answerOwedRequestsAsStopped(after: gracePeriod)
            close(reason: .drainTimedOut(gracePeriod))
        }
        guard !_isClosed else { return }
        drainTimer = eventLoop.scheduleTimer(after: Self.drainFlushAllowance) { [unowned self] in
            if !self._isClosed { self.connection.abort() }
        }
    }

    /// Tells the peer (when it takes error answers) that each message it is
    /// still owed an answer for will get none: an ERROR with code
    /// ``RPCError/Code/unavailable``, so its caller learns that the server
    /// stopped, not that the connection broke.
    private func answerOwedRequestsAsStopped(after gracePeriod: Duration) {
        guard agreed.contains(.errorAnswers) else { return }
        let reason = "the server stopped after draining for \(gracePeriod)"
        for id in answers.owedMessageIDs(queued: workers.queuedIDs) { sendErrorAnswer(to: id, code: .unavailable, reason: reason) }
    }

    /// True when nothing is in flight in either direction: no call, no
    /// message unanswered, and no payload still arriving or leaving in parts
    /// (a message being received, an answer or a call being sent in chunks).
    var hasNothingInFlight: Bool {
        calls.isIdle && answers.owesNothing && workers.isIdle && outgoing.isIdle && !parser.hasPartialMessage
    }

    /// Closes with ``RPCCloseReason/drained`` if draining and idle; called
    /// wherever work in flight can end (one flag test when not draining).
    @inline(__always)
    func closeIfDrained() {
        if case .draining = phase, hasNothingInFlight { close(reason: .drained) }
    }
}
