import CLibUV
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Shutting a loop down: asked from any thread, carried out on the loop's
/// own thread (every handle closed, then `uv_loop_close`).
extension EventLoop {
    /// Asks the loop to shut down; callable from any thread, returns at once.
    ///
    /// Every handle is closed (connections fail their pending writes and
    /// report `onClose`). Jobs submitted until the loop is finally closed
    /// still run, so work that closing handles sets off (completions, resumed
    /// tasks) is not lost; once the loop is closed ``execute(_:)`` refuses jobs.
    public func beginShutdown() {
        jobs.withLock { queue in
            guard queue.wakeupOpen, !queue.shutdownRequested else { return }
            queue.shutdownRequested = true
            // Under the lock the wakeup handle is known to be open.
            wakeup.send()
        }
    }

    /// Shuts the loop down and blocks the calling thread (at most `timeout`)
    /// until it stopped; ``shutdown()`` is the async form. Refused on every
    /// event-loop thread: blocking one loop while it waits for another can
    /// deadlock (the other may be waiting for this one).
    /// - Returns: what `uv_loop_close` returned (0: every handle was closed),
    ///   or nil when the loop did not stop within `timeout`.
    @discardableResult
    public func syncShutdown(timeout: Duration = .seconds(30)) -> Int32? {
        Self.refuseBlockingOnALoop("EventLoop '\(name)': syncShutdown()")
        beginShutdown()
        if State(rawValue: state.load(ordering: .acquiring)) == .idle { return nil }
        let (s, atto) = timeout.components
        let nanos = max(0, Int(s) * 1_000_000_000 + Int(atto / 1_000_000_000))
        guard stoppedSignal.wait(timeout: .now() + .nanoseconds(nanos)) == .success else { return nil }
        stoppedSignal.signal() // let other waiters through too
        return loopCloseStatus
    }

    /// Says once, on stderr, that a Swift task tried to resume on a closed loop.
    func warnJobAfterClose() {
        guard !warnedLateJob.exchange(true, ordering: .relaxed) else { return }
        warn("is closed; a Swift task scheduled on it cannot resume "
             + "(end or cancel tasks bound to a loop before shutting it down)")
    }

    /// One line on stderr: `UVLoop warning: event loop 'NAME' <text>`.
    func warn(_ text: String) {
        let message = "UVLoop warning: event loop '\(name)' \(text)\n"
        _ = message.withCString { write(2, $0, strlen($0)) } // fd 2: stderr, without the shared FILE*
    }

    /// True once shutdown began on the loop thread (handles are being closed).
    /// Loop thread only.
    var isShuttingDown: Bool { shutdownStarted }

    /// True once `run()` or `start()` was called.
    var hasStarted: Bool { State(rawValue: state.load(ordering: .acquiring)) != .idle }

    /// What `uv_loop_close` returned when the loop stopped (0 is success), or
    /// nil while it has not stopped.
    public var loopCloseStatus: Int32? { closeStatus.withLock { $0 } }

    // MARK: Shutdown

    /// Called when the wakeup fires: runs the jobs, and starts shutting down
    /// when asked to.
    func wakeupFired() {
        runJobs()
        if jobs.withLock({ $0.shutdownRequested }) { closeEverything() }
    }

    func closeEverything() {
        guard !shutdownStarted else { return }
        shutdownStarted = true
        runTurnWork() // task jobs queued locally before now (later ones take the shared queue)
        runJobs()
        // From here on finishRun() drains the queue itself.
        jobs.withLock { $0.wakeupOpen = false }
        closeAllHandles()
    }

    func closeAllHandles() {
        uv_walk(uvLoop, { handle, _ in
            guard uv_is_closing(handle) == 0 else { return }
            HandleOwner.owner(of: handle).takeUnretainedValue().closeForShutdown()
        }, nil)
    }

    /// Runs close callbacks and late jobs until no handle and no job is left,
    /// then closes the loop.
    @discardableResult
    func finishRun() -> Int32 {
        var rc: Int32 = 0
        var rounds = 0
        while true {
            uv_run(uvLoop, UV_RUN_DEFAULT)
            runJobs()
            // Something may have opened a handle during shutdown (in a close
            // callback or a late job): close it too.
            closeAllHandles()
            let finished = jobs.withLock { queue -> Bool in
                guard queue.jobs.isEmpty, uv_loop_alive(uvLoop) == 0 else { return false }
                queue.accepting = false
                return true
            }
            rounds += 1
            if finished || rounds > 100_000 { break }
        }
        rc = uv_loop_close(uvLoop)
        pendingFlush.removeAll()
        pendingResumes.removeAll()
        // A last publish of what the closes counted, then no more.
        if let turnObserver { turnObserver.turnEnded(on: self) }
        turnObserver = nil
        attachedLayer = nil
        closeStatus.withLock { $0 = rc }
        // The internal handles reference the loop; drop them so the loop can be freed.
        wakeup = nil
        flushHooks.removeAll()
        resumeWaker = nil
        return rc
    }
}
