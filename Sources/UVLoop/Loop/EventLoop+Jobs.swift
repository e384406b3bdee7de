import CLibUV
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Work handed to the loop from other threads: the job queue behind
/// ``EventLoop/execute(_:)`` and the wakeup (``LoopWakeup``) that wakes the loop for it.
extension EventLoop {
    /// Runs `job` on the loop thread, after the jobs submitted before it by
    /// the same thread. Callable from any thread (also from the loop itself:
    /// the job then runs later in this or the next loop turn).
    /// - Returns: false, and drops `job`, when the loop is shutting down.
    @discardableResult
    public func execute(_ job: @escaping @Sendable () -> Void) -> Bool {
        submit(.closure(job))
    }

    /// `execute(_:)` for work that is already an object (no
    /// closure to allocate): runs `job.runOnLoop()` on the loop thread, in
    /// order with the other jobs; false when the loop no longer takes work.
    package func execute(_ job: any LoopJob) -> Bool {
        submit(.object(job))
    }

    /// Runs one piece of work on the loop thread.
    @inline(__always)
    func perform(_ work: Work) {
        switch work {
        case .closure(let job): job()
        case .object(let job): job.runOnLoop()
        case .task(let job, let kind): run(job, kind)
        }
    }

    func submit(_ work: Work) -> Bool {
        jobs.withLock { queue -> Bool in
            guard queue.accepting else { return false }
            queue.jobs.append(work)
            // Waking while holding the lock keeps shutdown from closing the
            // wakeup handle under us; the wakeup coalesces repeated wakes.
            if queue.jobs.count == 1 && queue.wakeupOpen { wakeup.send() }
            return true
        }
    }

    func runJobs() {
        // Take the spare array out (not a copy: a second reference would make the
        // queue's next append reallocate), hand it to the queue, run the batch.
        var batch: [Work] = []
        swap(&batch, &spareJobs)
        jobs.withLock { swap(&$0.jobs, &batch) }
        for work in batch { perform(work) }
        batch.removeAll(keepingCapacity: true)
        spareJobs = batch
    }
}

/// The loop's wakeup for ``EventLoop/execute(_:)``, task jobs from other
/// threads and shutdown: an eventfd the loop polls (`uv_poll_t`), written
/// only by the first waker since the loop last woke.
///
/// Not libuv's `uv_async_t`: libuv 1.44's loop thread spins (997 rounds of
/// `pause` and a compare-and-swap, then `sched_yield`) while a waker is
/// between its two atomic steps around the eventfd write, and a waker
/// preempted there (more threads than CPUs) costs the loop that spin: 8% of
/// an async caller's CPU in the bench's client scenario. Here a waker makes
/// one atomic exchange and, when it is the first, one write; the loop never waits.
final class LoopWakeup: HandleOwner {
    /// The eventfd; closed after the handle closed.
    private let descriptor: Int32
    /// True from the first wake until the loop takes it (before it runs the
    /// jobs, so a job queued after it took them wakes it again).
    private let pending = Atomic<Bool>(false)

    init(loop: EventLoop) throws(UVError) {
        let descriptor = uvrpc_wakeup_eventfd()
        guard descriptor >= 0 else {
            let code = -errno
            throw UVError(code: code, operation: "eventfd", target: EventLoop.target(loop.name, code))
        }
        self.descriptor = descriptor
        super.init(loop: loop, type: UV_POLL, retainsLoop: false) // owned by the loop itself
        let handle = UnsafeMutablePointer<uv_poll_t>(OpaquePointer(self.handle))
        let status = uv_poll_init(loop.uvLoop, handle, descriptor)
        guard status == 0 else {
            close(descriptor)
            throw UVError(code: status, operation: "uv_poll_init", target: "event loop \(loop.name)")
        }
        adoptHandle()
        try UVError.check(uv_poll_start(handle, Int32(UV_READABLE.rawValue), { poll, _, _ in
            // Safe: the handle's data is this owner until its close callback.
            let wakeup = unsafeDowncast(HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(poll))).takeUnretainedValue(),
                                        to: LoopWakeup.self)
            wakeup.take()
            wakeup.loop.wakeupFired()
        }), "uv_poll_start", "event loop \(loop.name)")
    }

    /// Wakes the loop (any thread); cheap when it is already being woken.
    func send() {
        guard !pending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var one: UInt64 = 1
        _ = write(descriptor, &one, 8) // cannot fill: the loop reads it back to 0 before the next write
    }

    /// On the loop: empties the eventfd and lets the next waker write again.
    private func take() {
        var count: UInt64 = 0
        _ = read(descriptor, &count, 8)
        pending.store(false, ordering: .releasing)
    }

    override func handleDidClose() { close(descriptor) }
}

/// Work handed to the loop's `execute(_:)` as an object the caller
/// allocated anyway (a call's state), so that submitting it from another
/// thread allocates nothing more.
package protocol LoopJob: AnyObject, Sendable {
    /// Runs on the loop thread.
    func runOnLoop()
}
