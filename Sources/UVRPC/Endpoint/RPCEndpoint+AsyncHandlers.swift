import Logging
import UVLoop

/// Async handlers: long-lived worker tasks per endpoint, fed from a queue.
///
/// Workers run on the endpoint's loop (task executor preference), so the queue
/// and the bookkeeping here are loop-thread state like the rest. A worker that
/// is woken drains the queue: it calls the handler for one request after
/// another, in the same job, as long as handlers return without suspending
/// (an echo, a lookup in loop-owned state). So a burst of messages from one
/// read costs one job, not one per message.
///
/// A handler that awaits must not hold up the others: before each handler
/// call that leaves requests queued, a standby check is queued behind the
/// running worker's job (``AsyncWorkerStandby``, a plain loop job). If the
/// handlers return at once, the check finds the queue empty and does nothing
/// (one worker task serves the endpoint); if one suspends, the check wakes
/// or starts another worker for the queue. Workers grow that way to as many
/// handlers as are suspended at once, plus one; parked workers beyond
/// ``AsyncWorkers/maximumIdleWorkers`` end. Every worker ends when the endpoint closes
/// (handlers still running are cancelled).
///
/// The queue and the decisions (schedule, park, end) are ``AsyncWorkers``';
/// the tasks and handler calls are here.
extension RPCEndpoint {
    /// Installs an async handler (on the loop) and hands it any waiting messages.
    func installAsyncHandler(_ handle: @escaping AsyncHandlerBody) {
        setHandler(.async(handle))
        deliverWaitingMessages()
    }

    /// Queues a message for the async handler; makes sure a worker will take it.
    func enqueueAsyncRequest(id: UInt16, payload: [UInt8], call: IncomingCall?) {
        if workers.enqueue(id: id, payload: payload, call: call) { scheduleWorker() }
    }

    /// Wakes a parked worker, or starts one; it runs after the current job.
    /// Out of line: not inlined into the parser's per-packet path (the callback path's code stays as small).
    @inline(never)
    private func scheduleWorker() {
        let key: UInt64
        switch workers.scheduleWorker() {
        case .resume(let parked):
            parked.resume(returning: true)
            return
        case .start(let newKey):
            key = newKey
        }
        // The task cannot start before this returns (it is queued on this loop),
        // so it is registered before it can unregister itself.
        // Safe to send: the task runs on this endpoint's loop (its executor preference,
        // and work() never leaves it), the only thread that touches the endpoint.
        let endpoint = UncheckedSendable(self)
        workers.register(Task(executorPreference: eventLoop.taskExecutor) {
            await endpoint.value.work(key: key)
            endpoint.value.workers.unregister(key: key)
        }, key: key)
    }

    /// Makes sure a worker takes the queue should the running one suspend:
    /// a check queued behind the running worker's job (``AsyncWorkerStandby``),
    /// which finds the queue empty when the handlers returned without
    /// suspending (the common case: then no second worker was woken and
    /// parked again, as one was for every read before).
    private func postStandby() {
        guard !standbyPosted else { return } // one is on its way (checked without touching the object: no retain per message)
        let standby = workerStandby
        standby.endpoint = self
        standbyPosted = true
        if !eventLoop.runAfterQueuedJobs(standby) {
            standby.endpoint = nil
            standbyPosted = false
            scheduleWorker()
        }
    }

    /// The endpoint's standby check, made with its first use.
    private var workerStandby: AsyncWorkerStandby {
        if let standby = workerStandbyStorage { return standby }
        let standby = AsyncWorkerStandby()
        workerStandbyStorage = standby
        return standby
    }

    /// The standby check runs: the running worker suspended (or parked) since it was posted.
    func standbyCheck() {
        standbyPosted = false
        if !closing && workers.needsAnotherWorker { scheduleWorker() }
    }

    /// A worker's life: drain the queue, park, repeat; returns when it should
    /// end. A worker whose handler call was cancelled by the peer (its task
    /// cancelled) ends after that call; another takes the queue.
    private func work(key: UInt64) async {
        // Its own task, registered before it started (see scheduleWorker): asking
        // it whether it is cancelled costs no current-task lookup and no retain.
        let ownTask = workers.tasks[key]
        while true {
            workers.workerStarted() // running now
            while var queued = nextQueuedRequest() {
                let id = queued.id
                guard case .async(let handle)? = handler else {
                    // The handler changed since the message arrived: the current one takes it.
                    queued.payload.withUnsafeBytes { handleMessage(id: id, payload: $0, call: queued.call) }
                    continue
                }
                // Should this handler suspend, another worker goes on with the queue.
                if workers.needsAnotherWorker { postStandby() }
                do { // the request, the outcome and the answer end with this block, before the payload is recycled
                    let request = RPCAsyncRequest(payload: queued.payload)
                    let context = RPCHandlerContext(messageID: id, facts: connectionFacts, call: queued.call)
                    workers.handlerStarted()
                    let sequence = answers.beginAsyncHandler(id: id, worker: key)
                    defer {
                        workers.handlerEnded()
                        closeIfDrained()
                    }
                    let outcome: Result<[UInt8], any Error>
                    let startedAt = metrics.callStartTime // 0 (not timed) without a metrics backend
                    if let tracer {
                        outcome = await runTraced(tracer, id: id, call: queued.call) {
                            await runHandler(handle, request, context, call: queued.call, sequence: sequence, worker: key)
                        }
                    } else {
                        outcome = await runHandler(handle, request, context, call: queued.call, sequence: sequence, worker: key)
                    }
                    metrics.handlerEnded(startedAt: startedAt)
                    // Answer only if the peer did not cancel the call (nor reuse its id since).
                    if !answers.endAsyncHandler(id: id, sequence: sequence) {
                        logger.debug("message handler ended after the peer cancelled it; no answer sent", metadata: ["rpc.id": "\(id)"])
                    } else {
                        switch outcome {
                        case .success(let response):
                            let sent = response.withUnsafeBytes { raw in
                                Result { () throws(RPCResponseError) in try self.respond(to: id, with: raw, owned: response) }
                            }
                            if case .failure(let error) = sent {
                                logger.debug("answer not sent", metadata: ["rpc.id": "\(id)", "rpc.error": "\(error)"])
                            }
                        case .failure(let error):
                            let (code, reason) = publicFailure(of: error)
                            let sent = sendErrorAnswer(to: id, code: code, reason: reason)
                            logger.error("message handler failed; \(sent ? "answered with an error" : "no response sent")",
                                         metadata: ["rpc.id": "\(id)", "rpc.error": "\(error)"])
                        }
                    }
                }
                // The handler returned and its answer is written: the array goes
                // back to the loop's spares (a copy stays the handler's if it kept one).
                metrics.payloadSpares.recycle(&queued.payload)
                // A worker whose task was cancelled (by the peer's CANCEL for that call,
                // or by the handler itself) cannot run more handlers: every one would
                // see a cancelled task. Another takes the queue.
                if ownTask?.isCancelled ?? Task.isCancelled, !closing {
                    if workers.needsAnotherWorker { scheduleWorker() }
                    return
                }
            }
            if closing || !workers.mayPark { return }
            let woken = await withUnsafeContinuation { workers.park($0) }
            if !woken { return }
        }
    }

    /// Runs one handler call; its outcome.
    @inline(__always)
    private func runHandler(_ handle: AsyncHandlerBody, _ request: RPCAsyncRequest, _ context: RPCHandlerContext,
                            call: IncomingCall?, sequence: UInt64, worker: UInt64) async -> Result<[UInt8], any Error> {
        if let call, let deadline = call.deadline {
            return await runWithDeadline(handle, request, context, deadline: deadline, at: call.loopDeadline!,
                                         sequence: sequence, worker: worker)
        }
        do { return .success(try await handle(request, context)) } catch { return .failure(error) }
    }

    /// Runs a handler whose call has a deadline: not at all when it passed
    /// already, else with its task cancelled when it passes and the deadline
    /// bound for the calls it makes. A handler that fails after its deadline
    /// passed answers "deadline exceeded".
    private func runWithDeadline(_ handle: AsyncHandlerBody, _ request: RPCAsyncRequest, _ context: RPCHandlerContext,
                                 deadline: ContinuousClock.Instant, at: UInt64, sequence: UInt64,
                                 worker: UInt64) async -> Result<[UInt8], any Error> {
        let passed = RPCError(code: .deadlineExceeded, message: "the handler passed its caller's deadline")
        if at <= loopNow { return .failure(passed) }
        watchHandlerDeadline(sequence: sequence, at: at, worker: worker)
        if !InheritedDeadline.everBound.load(ordering: .relaxed) { InheritedDeadline.everBound.store(true, ordering: .relaxed) }
        var outcome: Result<[UInt8], any Error>
        do {
            outcome = .success(try await InheritedDeadline.$current.withValue(deadline) { try await handle(request, context) })
        } catch {
            outcome = .failure(error)
        }
        if handlerDeadlines.end(sequence: sequence), case .failure = outcome { outcome = .failure(passed) }
        return outcome
    }

    private func nextQueuedRequest() -> AsyncWorkers.QueuedRequest? {
        guard !closing else { return nil }
        return workers.next()
    }

    /// Ends every worker (the endpoint is closing): parked ones at once,
    /// running handlers are cancelled and their workers end after them.
    func stopAsyncWorkers() {
        for worker in workers.stop() { worker.resume(returning: false) }
        for task in workers.tasks.values { task.cancel() }
    }
}

/// The check a running worker queues behind its own job (``RPCEndpoint/standbyCheck()``):
/// by the time it runs, that worker has suspended or parked, and a worker is
/// scheduled if requests still wait. One per endpoint, reused; it holds its
/// endpoint only while queued.
final class AsyncWorkerStandby: LoopJob, @unchecked Sendable { // touched on its endpoint's loop only
    /// The endpoint to check, while the check is queued (nil otherwise).
    var endpoint: RPCEndpoint?

    func runOnLoop() {
        guard let endpoint else { return }
        self.endpoint = nil
        endpoint.standbyCheck()
    }
}
