import Synchronization
#if canImport(Glibc)
import Glibc
#endif
import Dispatch
/// The loop as a Swift concurrency executor: actors whose `unownedExecutor`
/// is the loop, and tasks started with
/// `Task(executorPreference: loop.taskExecutor)`, run their code on the loop
/// thread, with no hop to the global pool.
extension EventLoop: SerialExecutor {
    /// Runs `job` on the loop thread (in the order jobs were enqueued).
    ///
    /// Jobs enqueued while the loop shuts down still run. A job enqueued after
    /// the loop closed cannot run anywhere (its code expects the loop); it is
    /// dropped, so that task never resumes, and a warning goes to stderr once.
    public func enqueue(_ job: consuming ExecutorJob) {
        enqueue(UnownedJob(job), as: .actorJob)
    }

    /// Queues a job: locally when enqueued on the loop thread, else through
    /// the shared queue.
    func enqueue(_ job: UnownedJob, as kind: JobKind) {
        if enqueueLocally(job, kind) { return }
        if !submit(.task(job, kind)) { warnJobAfterClose() }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// Runs a job on the loop thread as its kind says.
    func run(_ job: UnownedJob, _ kind: JobKind) {
        switch kind {
        case .actorJob:
            job.runSynchronously(isolatedTo: asUnownedSerialExecutor(), taskExecutor: taskExecutor.asUnownedTaskExecutor())
        case .taskPreferenceJob:
            job.runSynchronously(on: taskExecutor.asUnownedTaskExecutor())
        }
    }

    /// Shuts the loop down (see ``EventLoop/beginShutdown()``) and returns,
    /// without blocking a thread, once it has stopped: what `uv_loop_close`
    /// returned (0 when every handle was closed). Must not be awaited by a
    /// task that prefers this loop (`Task(executorPreference:)`) or is
    /// isolated to it: that task would resume on the closed loop. Returns nil
    /// at once when the task is cancelled (the loop still shuts down).
    @discardableResult
    public func shutdown() async -> Int32? {
        precondition(!currentTaskPrefersThisLoop,
                     "EventLoop '\(name)': shutdown() awaited by a task that prefers this loop would never resume (it resumes on the closed loop)")
        beginShutdown()
        if !hasStarted { return nil }
        return await OneShot<Int32?>().wait(orWhenCancelled: nil) { waiter in
            if let status = stopWaiters.withLock({ state -> Int32?? in
                if state.stopped { return .some(state.status) }
                state.waiters.append { waiter.resume($0) }
                return nil
            }) {
                waiter.resume(status)
            }
        }
    }

    /// True when the current task prefers this loop's task executor: after an
    /// await it resumes on this loop, so it must not await the loop's end.
    /// (A task without a preference may run on a loop's thread for a while,
    /// after a child task that prefers the loop; that is no reason to refuse.)
    var currentTaskPrefersThisLoop: Bool {
        withUnsafeCurrentTask { task in
            guard let preferred = task?.unownedTaskExecutor else { return false }
            return preferred == taskExecutor.asUnownedTaskExecutor()
        }
    }

    /// Lets `assumeIsolated` and actor isolation checks accept the loop thread.
    public func checkIsolated() {
        preconditionInEventLoop("EventLoop.checkIsolated()")
    }

    /// True on the loop thread (lets the runtime skip `checkIsolated` crashes).
    public func isIsolatingCurrentContext() -> Bool? {
        inEventLoop
    }
}

extension EventLoop {
    /// Runs `body` on the loop thread (at once when already on it) and
    /// returns its result or rethrows its error: the way from any task to
    /// loop-bound state and back. Callable from any thread or task.
    /// - Throws: ``EventLoopError/shutDown(loop:)`` when the loop no longer
    ///   takes work; otherwise what `body` threw.
    public func submit<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        let outcome = await submitIfRunning { Result { try body() } }
        guard let outcome else { throw EventLoopError.shutDown(loop: name) }
        return try outcome.get()
    }

    /// ``submit(_:)-(()->T)`` for code that is not async: blocks the calling
    /// thread until `body` ran on the loop. Refused on every event-loop
    /// thread: on this loop it would wait for itself, and blocking one loop
    /// while it waits for another can deadlock; there, use `execute` or `submit`.
    /// - Throws: ``EventLoopError/shutDown(loop:)`` when the loop no longer
    ///   takes work; otherwise what `body` threw.
    public func submitAndWait<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        Self.refuseBlockingOnALoop("EventLoop '\(name)': submitAndWait")
        let result = LockedValue<Result<T, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let accepted = execute {
            result.withLock { $0 = Result { try body() } }
            done.signal()
        }
        guard accepted else { throw EventLoopError.shutDown(loop: name) }
        done.wait()
        return try result.withLock { $0! }.get()
    }

    /// Runs `body` on the loop (at once when already on it) and returns its
    /// result; nil when the loop refused the job because it is shut down.
    package func submitIfRunning<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T? {
        if inEventLoop { return body() }
        return await withHandOff { (deliver: @escaping @Sendable (T?) -> Void) in
            if !execute({ deliver(body()) }) { deliver(nil) }
        }
    }
}

/// Runs `body` in a task and blocks the calling thread until it ends, for
/// synchronous programs (a command-line tool's `main`) that use the async
/// API. Must not be called on an event loop's thread (the task may need it).
package func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    precondition(EventLoop.current == nil, "runBlocking called on event loop '\(EventLoop.current!.name)' would deadlock it")
    let result = LockedValue<Result<T, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        let outcome: Result<T, any Error>
        do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
        result.withLock { $0 = outcome }
        done.signal()
    }
    done.wait()
    return try result.withLock { $0! }.get()
}

/// How a task job reached the loop: through its serial executor (an actor
/// isolated to the loop) or through its task executor (a task that prefers
/// the loop, running nonisolated code).
enum JobKind: Sendable {
    case actorJob
    case taskPreferenceJob
}

/// An event loop as a `TaskExecutor` (``EventLoop/taskExecutor``): tasks
/// started with `Task(executorPreference: loop.taskExecutor)` run their
/// nonisolated code on the loop thread.
///
/// A separate object from the loop's `SerialExecutor` face (actors isolated
/// to the loop), so that the two kinds of job can be told apart and each run
/// in its own context: a task job runs as nonisolated code with the loop as
/// its task executor, so the task goes on inline after each resumption
/// instead of hopping (queueing a second job) every time.
///
/// A task that prefers this executor may outlive the loop object itself:
/// its jobs are then dropped (with a warning, as after the loop closed),
/// never handed to freed memory.
public final class LoopTaskExecutor: TaskExecutor, @unchecked Sendable { // see the invariant below
    // Sendable invariant: `owner` and `ownerName` are written once, by the loop's
    // init, before the loop (and so this object) is visible to any other thread; `owner` is
    // used off the loop thread only under `attached`'s lock, which the loop's deinit takes
    // (to detach) before any of the loop is torn down.
    /// Whether the loop whose thread runs the jobs still exists (once its
    /// object is freed, jobs are dropped). The executor keeps no weak
    /// reference to the loop: one would give every loop a side table, and
    /// every retain and release of a loop would take the slow path (a
    /// quarter of a caller's CPU, measured by the bench's client scenario).
    public var isAttached: Bool { attached.withLock { $0 } }
    /// The loop, unretained: valid while `attached` is true (see the invariant).
    private var owner: UnsafeMutableRawPointer?
    private var ownerName = ""
    private let attached = LockedValue<Bool>(false)
    private let warnedDetached = Atomic<Bool>(false)

    init() {}

    func attach(to loop: EventLoop) {
        owner = Unmanaged.passUnretained(loop).toOpaque()
        ownerName = loop.name
        attached.withLock { $0 = true }
    }

    /// Called first by the loop's deinit: later jobs are dropped.
    func detach() { attached.withLock { $0 = false } }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        // On the loop's own thread the loop is running, so it is alive: no lock (the common case).
        if let current = pthread_getspecific(currentLoopKey), current == owner {
            // The loop runs on this thread, so it is alive for the call.
            return Unmanaged<EventLoop>.fromOpaque(current).takeUnretainedValue().enqueue(job, as: .taskPreferenceJob)
        }
        let delivered = attached.withLock { attached -> Bool in
            guard attached, let owner else { return false }
            // Not retained: the loop's deinit (which may have begun) waits for this lock before anything of it is freed.
            Unmanaged<EventLoop>.fromOpaque(owner)._withUnsafeGuaranteedRef { $0.enqueue(job, as: .taskPreferenceJob) }
            return true
        }
        if !delivered && !warnedDetached.exchange(true, ordering: .relaxed) {
            let text = "UVLoop warning: event loop '\(ownerName)' no longer exists; a Swift task that prefers its executor cannot resume\n"
            _ = text.withCString { write(2, $0, strlen($0)) }
        }
    }

    public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }
}

/// Why work could not be run on an event loop.
public enum EventLoopError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The loop shut down (or is shutting down) and takes no more work.
    case shutDown(loop: String)

    public var description: String {
        switch self {
        case .shutDown(let loop): return "event loop '\(loop)' is shut down and takes no more work"
        }
    }
}
