import CLibUV

/// The work around each poll of the loop: before it, connections resume
/// reading (``startTurn()``); before and after it, task jobs enqueued on the
/// loop thread itself, then the connections' pending writes.
extension EventLoop {
    /// Queues a task job enqueued on the loop thread, if the per-turn hooks
    /// will run it (not once shutdown began); false otherwise.
    func enqueueLocally(_ job: UnownedJob, _ kind: JobKind) -> Bool {
        guard !shutdownStarted, inEventLoop else { return false }
        localJobs.append(.task(job, kind))
        return true
    }

    /// Runs `job` after the jobs already queued on this loop, in this turn's
    /// work: on the loop thread, with no lock and no wake-up. False (and
    /// `job` dropped) when called off the loop or once shutdown began.
    package func runAfterQueuedJobs(_ job: any LoopJob) -> Bool {
        guard !shutdownStarted, inEventLoop else { return false }
        localJobs.append(.object(job))
        return true
    }

    /// The per-turn work (before and after each poll): task jobs enqueued on
    /// the loop thread, then the connections' pending writes, until neither is left.
    func runTurnWork() {
        repeat {
            while !localJobs.isEmpty {
                // Moved, not copied: `localJobs` gets the spare's buffer as its only
                // owner, so jobs queued while the batch runs append without a new buffer.
                var batch: [Work] = []
                swap(&batch, &spareLocalJobs)
                swap(&batch, &localJobs)
                for work in batch { perform(work) }
                batch.removeAll(keepingCapacity: true)
                spareLocalJobs = batch
            }
            runPendingFlushes()
        } while !localJobs.isEmpty
        if let turnObserver { turnObserver.turnEnded(on: self) }
    }

    /// Resumes `connection`'s reading at the start of the next turn. While
    /// any resume waits, the loop's poll does not block (the connection may
    /// have bytes buffered, or its socket may not be watched now).
    func queueResume(_ connection: Connection) {
        if pendingResumes.isEmpty { resumeWaker?.start() }
        pendingResumes.append(connection)
    }

    /// The start of a turn (before its poll): counts it, then resumes the
    /// connections that asked (those that yield again wait for the next turn).
    func startTurn() {
        turn &+= 1
        guard !pendingResumes.isEmpty else { return }
        var batch = spareResumes
        swap(&batch, &pendingResumes)
        for connection in batch { connection.resumeAtTurnStart() }
        batch.removeAll(keepingCapacity: true)
        spareResumes = batch
        if pendingResumes.isEmpty { resumeWaker?.stop() }
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
                let loop = HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(prepare))).takeUnretainedValue().loop
                loop.startTurn()
                loop.runTurnWork()
            }
        }
        uv_unref(uvHandle)
    }
}

/// A `uv_idle_t` that does nothing but keep the loop's poll from blocking
/// while it is active (libuv polls with a zero timeout while an idle handle
/// runs): active only while connections wait to resume reading at the next
/// turn. Unreferenced, so it never keeps the loop alive.
final class LoopResumeWaker: HandleOwner {
    private var isActive = false

    init(loop: EventLoop) throws(UVError) {
        super.init(loop: loop, type: UV_IDLE, retainsLoop: false) // owned by the loop itself
        try UVError.check(uv_idle_init(loop.uvLoop, idleHandle), "uv_idle_init", "event loop \(loop.name)")
        adoptHandle()
        uv_unref(uvHandle)
    }

    private var idleHandle: UnsafeMutablePointer<uv_idle_t> {
        // Safe: this owner's handle was allocated as a uv_idle_t.
        UnsafeMutablePointer<uv_idle_t>(OpaquePointer(handle))
    }

    func start() {
        guard !isActive, !isHandleClosing else { return }
        isActive = true
        uv_idle_start(idleHandle) { _ in }
    }

    func stop() {
        guard isActive, !isHandleClosing else { return }
        isActive = false
        uv_idle_stop(idleHandle)
    }
}
