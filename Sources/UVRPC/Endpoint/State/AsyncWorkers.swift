/// An endpoint's async handler machinery: the requests waiting for a worker,
/// the worker tasks and the decisions on them; the endpoint starts, resumes
/// and cancels the tasks (``RPCEndpoint+AsyncHandlers.swift``).
///
/// A woken worker drains the queue; before each handler call that leaves
/// requests queued, the endpoint queues a check behind the running worker
/// that schedules another one if the queue still ``needsAnotherWorker``
/// then (the running one suspended), so a handler that suspends holds up no other. Workers are woken from the
/// parked ones first (``scheduleWorker()``); at most
/// ``maximumIdleWorkers`` park (``mayPark``), the others end.
struct AsyncWorkers {
    /// Parked workers kept per endpoint; more end when they run out of work.
    static let maximumIdleWorkers = 16

    /// How to get a worker going (``scheduleWorker()``).
    enum Wake {
        /// Resume this parked worker with true.
        case resume(UnsafeContinuation<Bool, Never>)
        /// Start a new worker task under this key (and ``register(_:key:)`` it).
        case start(key: UInt64)
    }

    /// A request waiting for a worker. (A struct, not a tuple: an array of
    /// tuples is destroyed element by element through generic value witnesses.)
    struct QueuedRequest {
        var id: UInt16
        var payload: [UInt8]
        /// What came with it (extension `meta`), if anything.
        var call: IncomingCall?
    }

    /// Requests waiting for a worker, oldest first from `head`; those before
    /// `head` were taken (their payloads moved out).
    private(set) var queue: [QueuedRequest] = []
    private(set) var head = 0
    /// Parked workers; resumed with true to work, false to end. Each
    /// continuation is resumed exactly once: it leaves this array when it is
    /// handed out by ``scheduleWorker()`` or ``stop()``.
    private(set) var idle: [UnsafeContinuation<Bool, Never>] = []
    /// Workers woken or started whose job has not run yet.
    private(set) var scheduled = 0
    /// Every worker task, cancelled when the endpoint closes.
    private(set) var tasks: [UInt64: Task<Void, Never>] = [:]
    private(set) var nextKey: UInt64 = 0
    /// Handler calls running now (suspended or not).
    private(set) var running = 0

    /// Requests queued and not yet taken by a worker.
    var queuedCount: Int { queue.count - head }

    /// The ids of the queued requests, oldest first.
    var queuedIDs: LazyMapSequence<ArraySlice<QueuedRequest>, UInt16> {
        queue[head...].lazy.map(\.id)
    }

    /// Nothing queued and no handler running (for drain).
    var isIdle: Bool { head == queue.count && running == 0 }

    /// Queues a request; returns true when a worker must be scheduled for it
    /// (none is already on its way).
    mutating func enqueue(id: UInt16, payload: [UInt8], call: IncomingCall? = nil) -> Bool {
        queue.append(QueuedRequest(id: id, payload: payload, call: call))
        return scheduled == 0
    }

    /// Counts a worker as scheduled and says how: a parked one if any, else a new task.
    mutating func scheduleWorker() -> Wake {
        scheduled += 1
        if let parked = idle.popLast() { return .resume(parked) }
        let key = nextKey
        nextKey &+= 1
        return .start(key: key)
    }

    /// Records the task started for `key`.
    mutating func register(_ task: Task<Void, Never>, key: UInt64) { tasks[key] = task }

    /// Forgets the task of `key` (it ended).
    mutating func unregister(key: UInt64) { tasks[key] = nil }

    /// A scheduled worker's job runs.
    mutating func workerStarted() { scheduled -= 1 }

    /// Whether another worker should be scheduled: requests remain queued
    /// and none is on its way for them.
    var needsAnotherWorker: Bool { head < queue.count && scheduled == 0 }

    /// Takes the oldest queued request, if any; the queue's storage is reset
    /// once it is drained (and given back when it held more than 1024).
    mutating func next() -> QueuedRequest? {
        guard head < queue.count else { return nil }
        // Moved out, not copied: no retain here and no release when the queue is emptied.
        var request = QueuedRequest(id: 0, payload: [], call: nil)
        swap(&request, &queue[head])
        head += 1
        if head == queue.count {
            queue.removeAll(keepingCapacity: queue.count <= 1024)
            head = 0
        }
        return request
    }

    /// Removes queued request `id` (the peer cancelled it); false if none is queued.
    mutating func removeQueued(id: UInt16) -> Bool {
        guard let index = queue[head...].firstIndex(where: { $0.id == id }) else { return false }
        queue.remove(at: index)
        return true
    }

    /// A handler call starts.
    mutating func handlerStarted() { running += 1 }

    /// A handler call returned.
    mutating func handlerEnded() { running -= 1 }

    /// Whether a worker out of work may park (else it ends).
    var mayPark: Bool { idle.count < Self.maximumIdleWorkers }

    /// Parks a worker until ``scheduleWorker()`` or ``stop()`` resumes it.
    mutating func park(_ worker: UnsafeContinuation<Bool, Never>) { idle.append(worker) }

    /// The endpoint is closing: empties the queue and returns the parked
    /// workers, to be resumed with false (they end). Running ones end after
    /// their handler (their tasks, ``tasks``, are to be cancelled).
    mutating func stop() -> [UnsafeContinuation<Bool, Never>] {
        queue.removeAll()
        head = 0
        let parked = idle
        idle.removeAll()
        return parked
    }
}
