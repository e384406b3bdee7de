import CLibUV

/// The work each loop turn ends with, before and after each poll: task jobs
/// enqueued on the loop thread itself, then the connections' pending writes.
extension EventLoop {
    /// Queues a task job enqueued on the loop thread, if the per-turn hooks
    /// will run it (not once shutdown began); false otherwise.
    func enqueueLocally(_ job: UnownedJob, _ kind: JobKind) -> Bool {
        guard !shutdownStarted, inEventLoop else { return false }
        localJobs.append((job, kind))
        return true
    }

    /// The per-turn work (before and after each poll): task jobs enqueued on
    /// the loop thread, then the connections' pending writes, until neither is left.
    func runTurnWork() {
        repeat {
            while !localJobs.isEmpty {
                var batch = spareLocalJobs
                swap(&batch, &localJobs)
                for (job, kind) in batch { run(job, kind) }
                batch.removeAll(keepingCapacity: true)
                spareLocalJobs = batch
            }
            runPendingFlushes()
        } while !localJobs.isEmpty
        if let turnEndObserver { turnEndObserver(self) }
    }

    func runPendingFlushes() {
        while !pendingFlush.isEmpty {
            var batch = spareFlush
            swap(&batch, &pendingFlush)
            for connection in batch { connection.flushScheduledWrites() }
            batch.removeAll(keepingCapacity: true)
            spareFlush = batch
        }
    }
}

/// A `uv_check_t` or `uv_prepare_t` that runs the loop's per-turn work (local
/// task jobs, then connections' pending writes) each loop turn. Unreferenced, so it never keeps the loop alive.
final class LoopTurnHook: HandleOwner {
    init(hookOn loop: EventLoop, type: uv_handle_type) throws(UVError) {
        super.init(loop: loop, type: type, retainsLoop: false) // owned by the loop itself
        if type == UV_CHECK {
            let h = UnsafeMutablePointer<uv_check_t>(OpaquePointer(handle))
            try UVError.check(uv_check_init(loop.uvLoop, h), "uv_check_init", "event loop \(loop.name)")
            adoptHandle()
            uv_check_start(h) { check in
                // Safe: the handle's data is this owner until its close callback.
                HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(check))).takeUnretainedValue().loop.runTurnWork()
            }
        } else {
            let h = UnsafeMutablePointer<uv_prepare_t>(OpaquePointer(handle))
            try UVError.check(uv_prepare_init(loop.uvLoop, h), "uv_prepare_init", "event loop \(loop.name)")
            adoptHandle()
            uv_prepare_start(h) { prepare in
                // Safe: the handle's data is this owner until its close callback.
                HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(prepare))).takeUnretainedValue().loop.runTurnWork()
            }
        }
        uv_unref(uvHandle)
    }
}
