import Synchronization
import UVLoop

/// The state of one `send(...) async`, shared by the caller's task, a
/// canceller and the loop: one allocation per call, no lock.
///
/// The outcome and the continuation meet through one atomic: ``finish(_:)``
/// claims the call once (`claimed`), stores the outcome and then marks it
/// ready; ``install(_:)`` stores the continuation and marks it installed.
/// Whichever of the two comes second resumes the continuation, so it is
/// resumed exactly once, whatever the threads' order.
final class AsyncCall: @unchecked Sendable { // fields published through `rendezvous` / `claimed`
    // Sendable invariant: `outcome` is written once, by the single winner of
    // `claimed`, before its releasing exchange on `rendezvous`; `continuation`
    // is written once, by the caller, before its releasing exchange; each is read
    // only by whoever sees the other's flag in an acquiring exchange. `id` is
    // touched on the loop only.
    private static let installedFlag: UInt8 = 1
    private static let readyFlag: UInt8 = 2
    private let claimed = Atomic<Bool>(false)
    private let rendezvous = Atomic<UInt8>(0)
    private var continuation: UnsafeContinuation<[UInt8], any Error>?
    private var outcome: Result<[UInt8], any Error>?
    /// The message id while the call is in the table (loop only).
    var id: UInt16?

    init() {}

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
}

extension RPCEndpoint {
    /// Sends `payload` and returns the response. Callable from any thread or
    /// task (it hops onto the loop).
    ///
    /// Backpressure: while the connection is not writable (more unsent bytes
    /// than its high-water mark), the call waits before it is written, in
    /// order with other waiting async sends; the payload is not copied while
    /// it waits. Its timeout starts when it is written. A peer that stops
    /// reading altogether is cut off by ``ConnectionOptions/writeTimeout``,
    /// which fails the waiting calls.
    ///
    /// - Throws: an ``RPCError`` (timed out, closed, peer too old, every id
    ///   in flight), as the callback API reports; or `CancellationError` when
    ///   the task is cancelled first. Cancelling frees the call's id (a late
    ///   response is ignored) and, unlike the reference (which closes the whole
    ///   endpoint when a send is cancelled), leaves the endpoint open.
    public func send(_ payload: [UInt8], timeout: Duration? = nil, closeOnError: Bool = true) async throws -> [UInt8] {
        // One allocation (the call) plus the response's Array; the hop to the
        // loop costs a closure only when the caller is not on the loop already.
        let call = AsyncCall()
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                call.install(continuation)
                if Task.isCancelled {
                    call.finish(.failure(CancellationError()))
                } else if loop.inEventLoop {
                    startAsyncCall(payload, timeout: timeout, closeOnError: closeOnError, call: call)
                } else if !loop.execute({
                    self.startAsyncCall(payload, timeout: timeout, closeOnError: closeOnError, call: call)
                }) {
                    call.finish(.failure(RPCError.closed(endpoint: label, messageID: nil, reason: .local)))
                }
            }
        } onCancel: {
            guard !call.isFinished else { return }
            // Always through the queue: the canceller may be inside a loop callback.
            if !loop.execute({ self.cancelCall(call) }) { call.finish(.failure(CancellationError())) }
        }
    }

    /// Handles every incoming message with `handler`, given an
    /// ``RPCAsyncRequest``; its return value is the answer, and throwing
    /// sends no response and is logged. Handlers run in worker tasks on the
    /// endpoint's loop, concurrently: one that awaits holds up no other.
    /// Callable from any thread; messages that arrived before it was set are
    /// handed to it. Replaces a callback ``onMessage`` handler.
    public func onMessage(_ handler: @escaping @Sendable (RPCAsyncRequest) async throws -> [UInt8]) {
        if loop.inEventLoop {
            installAsyncHandler(handler)
        } else {
            loop.execute { self.installAsyncHandler(handler) }
        }
    }

    /// Closes the endpoint (see ``close()``) from any thread or task and
    /// returns once the connection is fully closed, with the reason.
    @discardableResult
    public func close() async -> RPCCloseReason {
        await withCheckedContinuation { continuation in
            let run: @Sendable () -> Void = {
                self.addCloseWaiter(continuation)
                self.close()
            }
            if loop.inEventLoop { run() } else if !loop.execute(run) { continuation.resume(returning: .local) }
        }
    }

    /// Waits until the endpoint is fully closed (by either side) and returns the reason.
    public func closed() async -> RPCCloseReason {
        await withCheckedContinuation { continuation in
            let run: @Sendable () -> Void = { self.addCloseWaiter(continuation) }
            if loop.inEventLoop { run() } else if !loop.execute(run) { continuation.resume(returning: .local) }
        }
    }
}
