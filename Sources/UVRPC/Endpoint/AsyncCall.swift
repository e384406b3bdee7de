import Synchronization
import UVLoop

/// The state of one `send(...) async`, shared by the caller's task, a
/// canceller and the loop: no lock. A caller off the loop allocates one per
/// call; callers on the loop reuse the ones their endpoint keeps (``reset()``).
///
/// The outcome and the continuation meet through one atomic: ``finish(_:)``
/// claims the call once (`claimed`), stores the outcome and then marks it
/// ready; ``install(_:)`` stores the continuation and marks it installed.
/// Whichever of the two comes second resumes the continuation, so it is
/// resumed exactly once, whatever the threads' order.
final class AsyncCall: LoopJob, @unchecked Sendable { // fields published through `rendezvous` / `claimed`
    // Sendable invariant: per use (between `init` or `reset()` and the caller's
    // resumption), `outcome` is written once, by the single winner of
    // `claimed`, before its releasing exchange on `rendezvous`; `continuation`
    // is written once, by the caller, before its releasing exchange; each is read
    // only by whoever sees the other's flag in an acquiring exchange. `id` is
    // touched on the loop only. `start` is written by the submitting thread
    // before the loop's job-queue lock publishes the call, then read and
    // cleared on the loop only. `reset()` runs on the loop when nothing else
    // references the call, after an acquiring load of `rendezvous`.
    private static let installedFlag: UInt8 = 1
    private static let readyFlag: UInt8 = 2
    private let claimed = Atomic<Bool>(false)
    private let rendezvous = Atomic<UInt8>(0)
    private var continuation: UnsafeContinuation<[UInt8], any Error>?
    private var outcome: Result<[UInt8], any Error>?
    /// The message id while the call is in the table (loop only).
    var id: UInt16?
    /// What to send, for a call started from another thread: the call goes
    /// to the loop as itself (``runOnLoop()``), not in a closure (written
    /// before the call is submitted, read on the loop after the queue's lock).
    private var start: (endpoint: RPCEndpoint, payload: [UInt8], timeout: Duration?, closeOnError: Bool,
                        metadata: RPCEndpoint.OutgoingMetadata?)?

    init() {}

    /// Makes a finished call, no longer referenced anywhere else, new again
    /// (the endpoint keeps it for its next caller on the loop).
    func reset() {
        // The caller was resumed through `rendezvous`: this acquiring load orders
        // every write to the call (on whatever thread) before the stores below.
        _ = rendezvous.load(ordering: .acquiring)
        claimed.store(false, ordering: .relaxed)
        rendezvous.store(0, ordering: .relaxed)
        continuation = nil
        outcome = nil
        id = nil
        start = nil
    }

    /// Submits the call to `endpoint`'s loop from another thread; false when
    /// the loop no longer takes work.
    func submit(to endpoint: RPCEndpoint, _ payload: [UInt8], timeout: Duration?, closeOnError: Bool,
                metadata: RPCEndpoint.OutgoingMetadata?) -> Bool {
        start = (endpoint, payload, timeout, closeOnError, metadata)
        return endpoint.eventLoop.execute(self)
    }

    /// Called by the caller once resumed: an acquiring load of what
    /// ``finish(_:)`` released, so that ThreadSanitizer sees the loop's
    /// writes (the response's bytes) ordered before the caller's reads. The
    /// runtime orders them already; TSan misses that when the resume comes
    /// before the task has finished suspending (see `withHandOff` in UVLoop).
    func settle() { _ = rendezvous.load(ordering: .acquiring) }

    /// True once an outcome was claimed (answered, failed or cancelled).
    var isFinished: Bool { claimed.load(ordering: .acquiring) }

    /// Hands over the caller's continuation (once).
    func install(_ continuation: UnsafeContinuation<[UInt8], any Error>) {
        self.continuation = continuation
        let before = rendezvous.bitwiseOr(Self.installedFlag, ordering: .acquiringAndReleasing).oldValue
        if before & Self.readyFlag != 0 { continuation.resume(with: outcome!) }
    }

    /// Ends the call with `result`; only the first call has an effect.
    func finish(_ result: Result<[UInt8], any Error>) {
        guard !claimed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        outcome = result
        let before = rendezvous.bitwiseOr(Self.readyFlag, ordering: .acquiringAndReleasing).oldValue
        if before & Self.installedFlag != 0 { continuation!.resume(with: result) }
    }

    /// Starts the submitted call on the loop (``submit(to:_:timeout:closeOnError:metadata:)``).
    func runOnLoop() {
        guard let (endpoint, payload, timeout, closeOnError, metadata) = start else { return }
        start = nil // the payload is the call table's from here
        endpoint.startAsyncCall(payload, timeout: timeout, closeOnError: closeOnError, call: self, metadata: metadata)
    }
}
