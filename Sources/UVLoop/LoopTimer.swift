import CLibUV

/// A one-shot or repeating timer on an ``EventLoop`` (one `uv_timer_t`).
///
/// Made by ``EventLoop/scheduleTimer(after:repeating:_:)``. Loop-bound: use
/// it on its loop's thread only. Timers due at the same time fire in the
/// order they were scheduled; a cancelled timer never fires again. The
/// handle is closed when a one-shot timer has fired or the timer is
/// cancelled, so 10k pending timers cost 10k small handles in libuv's heap
/// and nothing per loop turn.
public final class LoopTimer: HandleOwner {
    private var body: (() -> Void)?
    private let repeats: Bool

    /// True until the timer fired (one-shot) or was cancelled.
    public private(set) var isActive = false

    init(loop: EventLoop, delay: Duration, interval: Duration?, body: @escaping () -> Void) {
        self.repeats = interval != nil
        self.body = body
        super.init(loop: loop, type: UV_TIMER)
        let timer = UnsafeMutablePointer<uv_timer_t>(OpaquePointer(handle))
        // uv_timer_init cannot fail on an initialised loop (it only links the handle).
        uv_timer_init(loop.uvLoop, timer)
        adoptHandle()
        let repeatMs = interval.map { max(1, $0.roundedUpMilliseconds) } ?? 0
        uv_timer_start(timer, { timer in
            // Safe: the handle's data is this owner until its close callback.
            let owner = HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(timer))).takeUnretainedValue()
            unsafeDowncast(owner, to: LoopTimer.self).fire()
        }, delay.roundedUpMilliseconds, repeatMs)
        isActive = true
    }

    private func fire() {
        guard isActive, let body else { return }
        if !repeats { finish() }
        body()
    }

    /// Stops the timer; its body will not be called again. Idempotent.
    public func cancel() {
        loop.preconditionInEventLoop("LoopTimer.cancel()")
        guard isActive else { return }
        finish()
    }

    private func finish() {
        isActive = false
        uv_timer_stop(UnsafeMutablePointer<uv_timer_t>(OpaquePointer(handle)))
        closeHandle()
    }

    override func handleDidClose() {
        isActive = false
        body = nil // break any cycle through the closure
    }
}
