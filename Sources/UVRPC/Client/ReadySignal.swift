import UVLoop

/// Lets pooled calls that found no connection open wait for one
/// (``RPCClientPool/Configuration/waitsForReady``): each connection that
/// opens signals; a waiter wakes at the first signal after it looked, or at
/// its deadline, or when its task is cancelled.
final class ReadySignal: Sendable {
    private struct Waiter {
        let continuation: CheckedContinuation<Bool, Never>
        let timer: Task<Void, Never>?
    }
    private struct State {
        /// Counts signals: a waiter that looked before the last signal does not wait.
        var generation: UInt64 = 0
        var nextID: UInt64 = 0
        var waiters: [UInt64: Waiter] = [:]
        /// Waiters whose task was cancelled before they were registered.
        var cancelledEarly: Set<UInt64> = []
        /// Set by ``close()``: no connection will open any more.
        var closed = false
    }
    private let state = LockedValue(State())

    /// The signals so far: take it before looking for a connection, give it to ``wait(after:until:)``.
    var generation: UInt64 { state.withLock { $0.generation } }
    /// Calls waiting now (for tests).
    var waiting: Int { state.withLock { $0.waiters.count } }
    /// Ids remembered as cancelled before they waited (for tests).
    var cancelledEarlyCount: Int { state.withLock { $0.cancelledEarly.count } }

    /// A connection opened: wakes every waiter.
    func signal() {
        let woken = state.withLock { state -> [Waiter] in
            state.generation &+= 1
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in woken {
            waiter.timer?.cancel()
            waiter.continuation.resume(returning: true)
        }
    }

    /// Whether ``close()`` was called.
    var isClosed: Bool { state.withLock { $0.closed } }

    /// The pool closed: wakes every waiter with false, and later waits end at once with false.
    func close() {
        let woken = state.withLock { state -> [Waiter] in
            state.closed = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in woken {
            waiter.timer?.cancel()
            waiter.continuation.resume(returning: false)
        }
    }

    /// Waits for a signal after `generation`: true when one came (at once if
    /// it came already), false at `deadline` or when the task is cancelled.
    func wait(after generation: UInt64, until deadline: ContinuousClock.Instant) async -> Bool {
        let id = state.withLock { state -> UInt64 in
            state.nextID &+= 1
            return state.nextID
        }
        // A cancel that came when the wait had ended already (or that the wait did not
        // consume: a signal came first) was remembered for nothing: forget it, the
        // handler cannot run any more once this returns.
        defer { state.withLock { _ = $0.cancelledEarly.remove(id) } }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let outcome = state.withLock { state -> Bool? in
                    if state.generation != generation { return true }
                    if state.cancelledEarly.remove(id) != nil || state.closed { return false }
                    let timer = Task { [self] in
                        do { try await Task.sleep(until: deadline, clock: .continuous) } catch { return }
                        self.end(id)
                    }
                    state.waiters[id] = Waiter(continuation: continuation, timer: timer)
                    return nil
                }
                if let outcome { continuation.resume(returning: outcome) }
            }
        } onCancel: {
            end(id, cancelling: true)
        }
    }

    /// Ends waiter `id` with false (its deadline passed, or its task was
    /// cancelled), if it still waits; a cancel that comes before the waiter
    /// is registered is remembered, so it does not wait.
    private func end(_ id: UInt64, cancelling: Bool = false) {
        let waiter = state.withLock { state -> Waiter? in
            if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
            if cancelling { state.cancelledEarly.insert(id) }
            return nil
        }
        waiter?.timer?.cancel()
        waiter?.continuation.resume(returning: false)
    }
}
