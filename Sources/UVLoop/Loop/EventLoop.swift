import CLibUV
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One libuv loop (`uv_loop_t`) driven by one thread.
///
/// Everything that touches a connection, listener or timer of a loop runs on
/// that loop's thread; calling such an API from another thread stops the
/// program with a message naming the API and both threads (the reference
/// efro.rpc refuses foreign threads the same way). Other threads hand work
/// over with ``execute(_:)``.
///
/// Run it on the calling thread with ``run()`` (blocks until shutdown) or on a
/// thread of its own with ``start()``. ``shutdown()`` closes every handle
/// (listeners, connections, timers), runs their close callbacks and closes
/// the libuv loop; ``loopCloseStatus`` then holds what `uv_loop_close`
/// returned (0 when nothing leaked).
public final class EventLoop: @unchecked Sendable { // loop state on its thread only; queue under a lock
    // Sendable invariant: `uvLoop` and every field under "loop-thread state" are
    // touched only on the loop thread (or before it runs / after it stopped, when
    // no other thread can reach them); `jobs` and `closeStatus` are guarded by their locks;
    // `threadID` and `state` are atomics.

    /// The loop's name, used for its thread and in error messages.
    public let name: String
    /// The loop as a task executor: `Task(executorPreference: loop.taskExecutor) { ... }`
    /// runs the task on the loop thread.
    public let taskExecutor = LoopTaskExecutor()
    /// The libuv loop. Owned; freed in deinit after `uv_loop_close`.
    let uvLoop: UnsafeMutablePointer<uv_loop_t>

    /// A unit of work from another thread: a closure, or a Swift concurrency
    /// job (enqueued without allocating a closure for it).
    enum Work: Sendable {
        case closure(@Sendable () -> Void)
        case object(any LoopJob)
        case task(UnownedJob, JobKind)
    }

    struct JobQueue {
        var jobs: [Work] = []
        /// False once the loop is closed: nothing can run any more.
        var accepting = true
        /// False once shutdown closed the wakeup handle; the loop then drains
        /// the queue itself until it closes.
        var wakeupOpen = true
        /// Set by shutdown().
        var shutdownRequested = false
    }
    let jobs = LockedValue(JobQueue())
    /// pthread_t of the thread inside `run()`, or 0.
    private let threadID = Atomic<UInt>(0)
    enum State: UInt8 { case idle = 0, running = 1, stopped = 2 }
    let state = Atomic<UInt8>(State.idle.rawValue)
    let stoppedSignal = DispatchSemaphore(value: 0)
    let closeStatus = LockedValue<Int32?>(nil)
    /// Set once a Swift task tried to resume on the closed loop (warned once).
    let warnedLateJob = Atomic<Bool>(false)
    /// Tasks awaiting the end of the loop (`shutdownAndWait() async`).
    struct StopWaiters {
        var stopped = false
        var status: Int32?
        var waiters: [@Sendable (Int32?) -> Void] = []
    }
    let stopWaiters = LockedValue(StopWaiters())

    // MARK: loop-thread state
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses; the dynamic checks cost ~40% of the instructions per call.
    @exclusivity(unchecked) var wakeup: LoopWakeup!
    @exclusivity(unchecked) var flushHooks: [LoopTurnHook] = []
    @exclusivity(unchecked) var spareJobs: [Work] = []
    /// Task jobs enqueued on the loop thread itself (a task resumed by loop
    /// code): run by the per-turn hooks, without the lock and the wakeup
    /// syscall that jobs from other threads need.
    @exclusivity(unchecked) var localJobs: [Work] = []
    @exclusivity(unchecked) var spareLocalJobs: [Work] = []
    @exclusivity(unchecked) var shutdownStarted = false
    /// Connections with bytes to flush at the end of this loop turn.
    @exclusivity(unchecked) var pendingFlush: [Connection] = []
    /// Connections to resume reading at the start of the next loop turn.
    @exclusivity(unchecked) var pendingResumes: [Connection] = []
    @exclusivity(unchecked) var spareResumes: [Connection] = []
    /// Keeps the poll from blocking while resumes wait.
    @exclusivity(unchecked) var resumeWaker: LoopResumeWaker?
    /// Counts the loop's turns (one per poll): connections and the protocol
    /// layer measure their share of a turn by it.
    @exclusivity(unchecked) package var turn: UInt64 = 1
    /// Where a connection holding no unconsumed bytes reads into (see
    /// ``Connection``): one buffer for every connection of the loop, so idle
    /// connections own no read memory. Allocated on first use, freed in deinit.
    /// Invariant: used by one read at a time (libuv calls alloc and read back to
    /// back on this thread, and the read is fully handled before returning).
    @exclusivity(unchecked) private var sharedReadStorage: UnsafeMutableRawPointer?
    /// Size of the shared read buffer.
    static let sharedReadBufferSize = 64 << 10

    var sharedReadBuffer: UnsafeMutableRawPointer {
        if let sharedReadStorage { return sharedReadStorage }
        let storage = UnsafeMutableRawPointer.allocate(byteCount: Self.sharedReadBufferSize, alignment: 16)
        sharedReadStorage = storage
        return storage
    }
    @exclusivity(unchecked) var spareFlush: [Connection] = []
    /// Where TLS connections' ciphertext is read into (then fed to OpenSSL at
    /// once, so one buffer serves every connection of the loop). Freed in deinit.
    @exclusivity(unchecked) private var cipherReadStorage: UnsafeMutableRawPointer?
    var cipherReadBuffer: UnsafeMutableRawPointer {
        if let cipherReadStorage { return cipherReadStorage }
        let storage = UnsafeMutableRawPointer.allocate(byteCount: Self.sharedReadBufferSize, alignment: 16)
        cipherReadStorage = storage
        return storage
    }
    /// Bytes read from and written to the sockets of this loop's connections
    /// since it started (``trafficTotals``).
    @exclusivity(unchecked) var bytesReadTotal: UInt64 = 0
    @exclusivity(unchecked) var bytesWrittenTotal: UInt64 = 0
    /// The protocol layer's object (``layer``), and the same when it asked to
    /// be told of every turn's end (see `LoopLayer.swift`).
    @exclusivity(unchecked) var attachedLayer: (any LoopLayer)?
    @exclusivity(unchecked) var turnObserver: (any LoopLayer)?

    /// Creates the loop (not yet running).
    ///
    /// The first loop of a process sets `SIGPIPE` to be ignored: libuv writes
    /// with `write(2)`, and a write to a socket the peer closed would otherwise
    /// kill the process instead of failing with `EPIPE` (Node.js does the same).
    public init(name: String = "uvloop") throws(UVError) {
        _ = EventLoop.ignoreSIGPIPE
        self.name = name
        // Initialised before it is stored: a throw before every stored property
        // is set runs no deinit, which would otherwise close and free the loop again.
        // libuv's first loop makes a process-wide pipe and aborts the process
        // when it cannot: make sure there is room for it (and the loop's epoll) first.
        if !EventLoop.libuvReady.load(ordering: .acquiring) {
            let rc = uvrpc_probe_descriptors(3)
            if rc != 0 { throw UVError(code: rc, operation: "uv_loop_init", target: Self.target(name, rc)) }
        }
        let loop = UnsafeMutablePointer<uv_loop_t>.allocate(capacity: 1)
        let rc = uv_loop_init(loop)
        if rc != 0 {
            loop.deallocate()
            throw UVError(code: rc, operation: "uv_loop_init", target: Self.target(name, rc))
        }
        EventLoop.libuvReady.store(true, ordering: .releasing)
        uvLoop = loop
        wakeup = try LoopWakeup(loop: self)
        // Flush written bytes once per loop turn: after I/O callbacks (check) and
        // before blocking in poll (prepare, for bytes written by timers).
        flushHooks = [try LoopTurnHook(hookOn: self, type: UV_CHECK), try LoopTurnHook(hookOn: self, type: UV_PREPARE)]
        resumeWaker = try LoopResumeWaker(loop: self)
        taskExecutor.attach(to: self)
    }

    private static let ignoreSIGPIPE: Void = { _ = signal(SIGPIPE, SIG_IGN) }()
    /// Set once a libuv loop was made in this process (libuv's process-wide state exists).
    private static let libuvReady = Atomic<Bool>(false)

    /// The loop's name in errors, with the open-files limit when that is what failed.
    static func target(_ name: String, _ rc: Int32) -> String {
        rc == UV_EMFILE.rawValue || rc == UV_ENFILE.rawValue ? "event loop \(name) (limit: \(openFilesLimit()))" : "event loop \(name)"
    }

    deinit {
        taskExecutor.detach() // first: an executor's job from another thread must not reach a loop being freed
        if State(rawValue: state.load(ordering: .acquiring)) == .idle {
            // Never ran: close the internal handles and the loop on this thread.
            closeEverything()
            finishRun()
        }
        uvLoop.deallocate()
        sharedReadStorage?.deallocate()
        cipherReadStorage?.deallocate()
    }

    // MARK: Threads

    /// True when called on this loop's thread while it runs.
    public var inEventLoop: Bool {
        let id = threadID.load(ordering: .relaxed)
        #if os(Linux)
        // glibc's pthread_t is an integer and pthread_equal is ==: skip the call (hot path).
        return id != 0 && UInt(pthread_self()) == id
        #else
        return id != 0 && pthread_equal(pthread_t(id), pthread_self()) != 0
        #endif
    }

    /// Stops the program unless called on this loop's thread. `api` names the
    /// caller in the message.
    @inline(__always)
    public func preconditionInEventLoop(_ api: StaticString = #function,
                                        file: StaticString = #fileID, line: UInt = #line) {
        if !inEventLoop { failNotInEventLoop(api, file: file, line: line) }
    }

    @inline(never)
    private func failNotInEventLoop(_ api: StaticString, file: StaticString, line: UInt) -> Never {
        let running = threadID.load(ordering: .relaxed)
        let loopThread = running == 0 ? "no thread (the loop is not running)" : "thread \(running)"
        preconditionFailure(
            "\(api) must be called on event loop '\(name)' (\(loopThread)), but was called on thread \(UInt(pthread_self()))",
            file: file, line: line)
    }

    /// Runs the loop on the calling thread until ``shutdown()`` completes.
    /// Returns after every handle is closed and `uv_loop_close` ran; throws if
    /// `uv_loop_close` failed (a handle leaked).
    public func run() throws(UVError) {
        claimRun("run()")
        try runClaimed()
    }

    /// Moves idle -> running once; a second run()/start() is a programming error.
    private func claimRun(_ api: String) {
        let ok = state.compareExchange(expected: State.idle.rawValue, desired: State.running.rawValue,
                                       ordering: .acquiringAndReleasing).exchanged
        precondition(ok, "EventLoop '\(name)': \(api) called on a loop that already ran")
    }

    private func runClaimed() throws(UVError) {
        threadID.store(UInt(pthread_self()), ordering: .releasing)
        // Safe: cleared below before run returns; while set, the running loop is kept
        // alive by whoever runs it (run()'s caller, or start()'s retained reference).
        pthread_setspecific(currentLoopKey, Unmanaged.passUnretained(self).toOpaque())
        defer { pthread_setspecific(currentLoopKey, nil) }
        while true {
            uv_run(uvLoop, UV_RUN_DEFAULT)
            if shutdownStarted { break }
        }
        let rc = finishRun()
        threadID.store(0, ordering: .releasing)
        state.store(State.stopped.rawValue, ordering: .releasing)
        stoppedSignal.signal()
        let waiters = stopWaiters.withLock { state -> [@Sendable (Int32?) -> Void] in
            state.stopped = true
            state.status = rc
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter(rc) }
        if rc != 0 { throw UVError(code: rc, operation: "uv_loop_close", target: "event loop \(name)") }
    }

    /// The loop whose thread the caller is running on, or nil on a thread
    /// that runs no loop (any loop: one made alone or one of a group's).
    public static var current: EventLoop? {
        // Safe: set only while a loop runs on this thread (see runClaimed()).
        pthread_getspecific(currentLoopKey).map { Unmanaged<EventLoop>.fromOpaque($0).takeUnretainedValue() }
    }

    /// Stops the process with a message when the caller runs on any event
    /// loop's thread: `what` blocks its thread, and a loop that blocks can
    /// deadlock (waiting for itself, or for a loop that waits for it) and
    /// stalls every connection on it meanwhile.
    static func refuseBlockingOnALoop(_ what: String) {
        if let current = EventLoop.current {
            preconditionFailure("\(what) blocks its thread, and it was called on event loop '\(current.name)': "
                                + "blocking a loop stalls every connection on it and can deadlock; "
                                + "use the async form, or execute(_:), from a loop")
        }
    }

    /// Starts the loop on a new thread named after the loop and returns at once.
    public func start() {
        start(pinnedTo: nil)
    }

    /// ``start()``, with the thread pinned to `cpu` when one is given.
    func start(pinnedTo cpu: Int32?) {
        // Claimed here, not on the new thread, so that a shutdownAndWait() right
        // after start() waits for the loop instead of seeing it idle.
        claimRun("start()")
        let box = Unmanaged.passRetained(LoopStart(loop: self, cpu: cpu)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            // Balanced: start() passed a retained reference to this thread.
            let start = Unmanaged<LoopStart>.fromOpaque(raw!).takeRetainedValue()
            let loop = start.loop
            uvrpc_set_thread_name(String(loop.name.prefix(15)))
            if let cpu = start.cpu {
                let rc = uvrpc_pin_current_thread(cpu)
                if rc != 0 { loop.warn("cannot pin its thread to CPU \(cpu): \(String(cString: strerror(rc)))") }
            }
            do { try loop.runClaimed() } catch {
                // Recorded in loopCloseStatus; the waiter reports it.
            }
            return nil
        }, box)
        precondition(rc == 0, "EventLoop '\(name)': pthread_create failed with \(rc)")
        pthread_detach(thread)
    }

    // MARK: Timers and time

    /// A monotonic clock in nanoseconds (`uv_hrtime`), read fresh.
    package static var monotonicNanoseconds: UInt64 { uv_hrtime() }

    /// The loop's cached clock in milliseconds (`uv_now`).
    public var now: UInt64 {
        preconditionInEventLoop()
        return uv_now(uvLoop)
    }
}

/// The thread-specific slot holding the loop that runs on a thread (``EventLoop/current``).
let currentLoopKey: pthread_key_t = {
    var key = pthread_key_t()
    let rc = pthread_key_create(&key, nil)
    precondition(rc == 0, "pthread_key_create failed: \(rc)")
    return key
}()

/// What a new loop thread needs: the loop, and the CPU to pin it to.
private final class LoopStart {
    let loop: EventLoop
    let cpu: Int32?
    init(loop: EventLoop, cpu: Int32?) { (self.loop, self.cpu) = (loop, cpu) }
}

extension Duration {
    /// Whole milliseconds, rounded up, never negative (libuv's timer unit),
    /// and at most 2^62 (146 million years): a longer duration neither traps
    /// nor overflows the loop time it is added to.
    package var roundedUpMilliseconds: UInt64 {
        // Not `seconds < 0` alone: a negative duration under a second is (0, -atto).
        if self <= .zero { return 0 }
        let (seconds, atto) = components
        let limit: UInt64 = 1 << 62
        if UInt64(seconds) >= limit / 1000 { return limit }
        return Swift.min(limit, UInt64(seconds) * 1000 + UInt64((atto + 999_999_999_999_999) / 1_000_000_000_000_000))
    }
}
