import CLibUV

/// A one-shot or repeating timer on an ``EventLoop`` (one `uv_timer_t`).
///
/// Two kinds:
/// - ``EventLoop/scheduleTimer(after:repeating:_:)`` makes a started timer
///   whose handle is closed once it has fired (one-shot) or is cancelled.
/// - ``EventLoop/makeTimer(_:)`` makes a reusable timer: ``start(after:repeating:)``
///   and ``cancel()`` may alternate any number of times without allocating;
///   ``close()`` (or loop shutdown) releases it.
///
/// Loop-bound: use it on its loop's thread only. Timers due at the same
/// time fire in the order they were started; a cancelled timer does not fire
/// until started again. libuv keeps timers in a min-heap, so 10k pending
/// timers cost 10k small handles and nothing per loop turn.
public final class LoopTimer: HandleOwner {
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses; the dynamic checks cost ~40% of the instructions per call.
    @exclusivity(unchecked) private var body: (() -> Void)?
    private let reusable: Bool
    @exclusivity(unchecked) private var repeats = false

    /// True while the timer is due to fire.
    @exclusivity(unchecked) public private(set) var isActive = false

    init(loop: EventLoop, reusable: Bool, body: @escaping () -> Void) {
        self.reusable = reusable
        self.body = body
        super.init(loop: loop, type: UV_TIMER)
        // uv_timer_init cannot fail on an initialised loop (it only links the handle).
        uv_timer_init(loop.uvLoop, timerHandle)
        adoptHandle()
    }

    private var timerHandle: UnsafeMutablePointer<uv_timer_t> {
        // Safe: this owner's handle was allocated and initialised as a uv_timer_t.
        UnsafeMutablePointer<uv_timer_t>(OpaquePointer(handle))
    }

    /// (Re)starts the timer: `body` runs after `delay`, then every `interval`
    /// if one is given. Restarting an active timer moves its deadline.
    /// libuv timers have millisecond resolution; delays round up.
    public func start(after delay: Duration, repeating interval: Duration? = nil) {
        loop.preconditionInEventLoop("LoopTimer.start(after:repeating:)")
        precondition(!isHandleClosing, "LoopTimer.start(after:repeating:) on a closed timer")
        repeats = interval != nil
        let repeatMs = interval.map { max(1, $0.roundedUpMilliseconds) } ?? 0
        uv_timer_start(timerHandle, { timer in
            // Safe: the handle's data is this owner until its close callback.
            let owner = HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(timer))).takeUnretainedValue()
            unsafeDowncast(owner, to: LoopTimer.self).fire()
        }, delay.roundedUpMilliseconds, repeatMs)
        isActive = true
    }

    private func fire() {
        guard isActive, let body else { return }
        if !repeats {
            isActive = false
            if !reusable { closeHandle() }
        }
        body()
    }

    /// Stops the timer; its body is not called until it is started again
    /// (a one-shot timer from ``EventLoop/scheduleTimer(after:repeating:_:)``
    /// is released). Idempotent.
    public func cancel() {
        loop.preconditionInEventLoop("LoopTimer.cancel()")
        guard isActive else { return }
        isActive = false
        uv_timer_stop(timerHandle)
        if !reusable { closeHandle() }
    }

    /// Stops the timer for good and releases its handle. Idempotent.
    public func close() {
        loop.preconditionInEventLoop("LoopTimer.close()")
        isActive = false
        closeHandle()
    }

    override func handleDidClose() {
        isActive = false
        body = nil // break any cycle through the closure
    }
}

extension EventLoop {
    /// Calls `body` on the loop thread after `delay`, and then every
    /// `interval` if one is given, until the returned timer is cancelled.
    /// libuv timers have millisecond resolution; delays round up.
    public func scheduleTimer(after delay: Duration, repeating interval: Duration? = nil,
                              _ body: @escaping () -> Void) -> LoopTimer {
        preconditionInEventLoop("EventLoop.scheduleTimer(after:repeating:_:)")
        let timer = LoopTimer(loop: self, reusable: false, body: body)
        timer.start(after: delay, repeating: interval)
        return timer
    }

    /// Makes a stopped, reusable timer that calls `body`; see ``LoopTimer``.
    public func makeTimer(_ body: @escaping () -> Void) -> LoopTimer {
        preconditionInEventLoop("EventLoop.makeTimer(_:)")
        return LoopTimer(loop: self, reusable: true, body: body)
    }
}
