import UVLoop

/// The state of one `send(...) async`, shared by the caller's task and the loop.
final class AsyncCall: @unchecked Sendable { // resumed once, under the lock
    // Sendable invariant: `id` and `continuation` are set before the call is
    // handed to the loop or on the loop; `finished` is guarded by `lock`, so the
    // continuation is resumed exactly once.
    private let lock = LockedValue(false)
    private var continuation: CheckedContinuation<[UInt8], any Error>?
    /// The message id while the call is in the table (loop only).
    var id: UInt16?

    init(_ continuation: CheckedContinuation<[UInt8], any Error>) {
        self.continuation = continuation
    }

    var isFinished: Bool { lock.withLock { $0 } }

    func finish(_ result: Result<[UInt8], any Error>) {
        let first = lock.withLock { finished -> Bool in
            defer { finished = true }
            return !finished
        }
        guard first, let continuation else { return }
        self.continuation = nil
        continuation.resume(with: result)
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
        let box = LockedValue<AsyncCall?>(nil)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let call = AsyncCall(continuation)
                box.withLock { $0 = call }
                if Task.isCancelled {
                    call.finish(.failure(CancellationError()))
                    return
                }
                let start: @Sendable () -> Void = {
                    self.startAsyncCall(payload, timeout: timeout, closeOnError: closeOnError, call: call)
                }
                if loop.inEventLoop {
                    start()
                } else if !loop.execute(start) {
                    call.finish(.failure(RPCError.closed(endpoint: label, messageID: nil, reason: .local)))
                }
            }
        } onCancel: {
            guard let call = box.withLock({ $0 }) else { return }
            // Always through the queue: the canceller may be inside a loop callback.
            if !loop.execute({ self.cancelCall(call) }) { call.finish(.failure(CancellationError())) }
        }
    }

    /// Handles every incoming message with `handler`, each in its own task on
    /// the loop (so they run concurrently and resume on the loop thread). The
    /// handler's return value is the response; throwing sends no response and
    /// is logged. Callable from any thread; messages that arrived before it was
    /// set are handed to it.
    public func onMessage(_ handler: @escaping @Sendable ([UInt8]) async throws -> [UInt8]) {
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
