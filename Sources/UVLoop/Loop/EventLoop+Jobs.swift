import CLibUV

/// Work handed to the loop from other threads: the job queue behind
/// ``EventLoop/execute(_:)`` and the `uv_async_t` that wakes the loop for it.
extension EventLoop {
    /// Runs `job` on the loop thread, after the jobs submitted before it by
    /// the same thread. Callable from any thread (also from the loop itself:
    /// the job then runs later in this or the next loop turn).
    /// - Returns: false, and drops `job`, when the loop is shutting down.
    @discardableResult
    public func execute(_ job: @escaping @Sendable () -> Void) -> Bool {
        submit(.closure(job))
    }

    func submit(_ work: Work) -> Bool {
        jobs.withLock { queue -> Bool in
            guard queue.accepting else { return false }
            queue.jobs.append(work)
            // Waking while holding the lock keeps shutdown from closing the
            // wakeup handle under us; uv_async_send coalesces repeated wakes.
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
        for work in batch {
            switch work {
            case .closure(let job): job()
            case .task(let job, let kind):
                run(job, kind)
            }
        }
        batch.removeAll(keepingCapacity: true)
        spareJobs = batch
    }
}

/// The loop's `uv_async_t`: wakes it for ``EventLoop/execute(_:)`` and shutdown.
final class LoopWakeup: HandleOwner {
    init(loop: EventLoop) throws(UVError) {
        super.init(loop: loop, type: UV_ASYNC, retainsLoop: false) // owned by the loop itself
        let handle = UnsafeMutablePointer<uv_async_t>(OpaquePointer(self.handle))
        try UVError.check(uv_async_init(loop.uvLoop, handle, { async in
            // Safe: the handle's data is this owner until its close callback.
            HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(async))).takeUnretainedValue().loop.wakeupFired()
        }), "uv_async_init", "event loop \(loop.name)")
        adoptHandle()
    }

    func send() {
        uv_async_send(UnsafeMutablePointer<uv_async_t>(OpaquePointer(handle)))
    }
}
