import Logging
import UVLoop

/// Async handlers: long-lived worker tasks per endpoint, fed from a queue.
///
/// A message goes to an idle worker (resuming it costs no allocation), or
/// waits in the queue; when no worker is idle and none is starting, one more
/// is started, so a handler that awaits never holds up the others. Workers
/// run on the endpoint's loop (task executor preference), so the queue and
/// the workers' bookkeeping are loop-thread state like the rest. Workers
/// beyond ``maximumIdleWorkers`` end when they run out of work; every worker
/// ends when the endpoint closes (running handlers are cancelled).
extension RPCEndpoint {
    /// Idle workers kept per endpoint; more end when they run out of work.
    static let maximumIdleWorkers = 64

    /// Installs an async handler (on the loop) and hands it any waiting messages.
    func installAsyncHandler(_ handle: @escaping @Sendable (RPCAsyncRequest) async throws -> [UInt8]) {
        setHandler(.async(handle))
        deliverWaitingMessages()
    }

    /// Queues a message for the async handler.
    func enqueueAsyncRequest(id: UInt16, payload: [UInt8]) {
        let request = RPCAsyncRequest(messageID: id, payload: payload, peerAddress: connection.remoteAddress,
                                      peerInfo: _peerInfo ?? PeerInfo(keepaliveInterval: 0),
                                      userValue: _userValue, endpoint: self)
        if let worker = idleWorkers.popLast() {
            worker.resume(returning: request)
            return
        }
        asyncQueue.append(request)
        if startingWorkers < asyncQueue.count - asyncQueueHead { startWorker() }
    }

    private func startWorker() {
        let key = nextWorkerKey
        nextWorkerKey &+= 1
        startingWorkers += 1
        // The task cannot start before this returns (it is queued on this loop),
        // so it is registered before it can unregister itself.
        workerTasks[key] = Task(executorPreference: eventLoop) {
            self.startingWorkers -= 1
            while let request = await self.nextAsyncRequest() {
                await self.runAsyncHandler(for: request)
            }
            self.workerTasks[key] = nil
        }
    }

    /// The next queued request, or waits for one; nil when the worker should end.
    private func nextAsyncRequest() async -> RPCAsyncRequest? {
        if closing { return nil }
        if asyncQueueHead < asyncQueue.count {
            let request = asyncQueue[asyncQueueHead]
            asyncQueueHead += 1
            if asyncQueueHead == asyncQueue.count {
                asyncQueue.removeAll(keepingCapacity: asyncQueue.count <= 256)
                asyncQueueHead = 0
            }
            return request
        }
        if idleWorkers.count >= Self.maximumIdleWorkers { return nil }
        return await withUnsafeContinuation { idleWorkers.append($0) }
    }

    private func runAsyncHandler(for request: RPCAsyncRequest) async {
        guard case .async(let handle)? = handler else {
            // The handler changed since the message arrived: the current one takes it.
            request.payload.withUnsafeBytes { handleMessage(id: request.messageID, payload: $0) }
            return
        }
        do {
            let response = try await handle(request)
            let sent = response.withUnsafeBytes { raw in
                Result { () throws(RPCResponseError) in try self.respond(to: request.messageID, with: raw) }
            }
            if case .failure(let error) = sent {
                logger.debug("answer not sent", metadata: ["rpc.id": "\(request.messageID)", "rpc.error": "\(error)"])
            }
        } catch {
            logger.error("message handler failed; no response sent", metadata: [
                "rpc.id": "\(request.messageID)", "rpc.error": "\(error)",
            ])
        }
    }

    /// Ends every worker: idle ones at once, running ones are cancelled and
    /// end after their handler returns (the endpoint is closing).
    func stopAsyncWorkers() {
        asyncQueue.removeAll()
        asyncQueueHead = 0
        let idle = idleWorkers
        idleWorkers.removeAll()
        for worker in idle { worker.resume(returning: nil) }
        for task in workerTasks.values { task.cancel() }
    }
}
