import Logging
import UVLoop

/// Graceful close: finish what is in flight, then close.
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
        guard !closing else { return }
        if draining { return }
        draining = true
        sendGoAwayIfAgreed()
        drainTimer = eventLoop.scheduleTimer(after: gracePeriod) { [unowned self] in
            guard !self.closing else { return }
            self.logger.info("drain ran out of time; closing", metadata: [
                "rpc.in-flight": "\(self.calls.activeCount)", "rpc.unanswered": "\(self.unanswered.count)",
            ])
            self.close(reason: .drainTimedOut(gracePeriod))
        }
        closeIfDrained()
    }

    /// True when nothing is in flight in either direction.
    var hasNothingInFlight: Bool {
        calls.activeCount == 0 && deferredSends.isEmpty && blockedSendsHead == blockedSends.count
            && unanswered.isEmpty && currentToken == 0 && waitingMessages.isEmpty
            && asyncQueueHead == asyncQueue.count && runningAsyncHandlers == 0
    }

    /// Closes with ``RPCCloseReason/drained`` if draining and idle; called
    /// wherever work in flight can end (one flag test when not draining).
    @inline(__always)
    func closeIfDrained() {
        if draining && !closing && hasNothingInFlight { close(reason: .drained) }
    }
}
