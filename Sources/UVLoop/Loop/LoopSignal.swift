import CLibUV

/// Watches a POSIX signal on an ``EventLoop`` (one `uv_signal_t`): the
/// handler runs on the loop thread, as any other loop callback, so it may
/// touch loop-bound state (close a server, start a drain, shut the loop down).
///
/// The way to stop a server on SIGINT / SIGTERM while `loop.run()` holds the
/// main thread (a Dispatch signal source there would run off the loop):
///
/// ```swift
/// loop.execute {
///     let server = try! RPCServer(loop: loop, address: address) { ... }
///     try? loop.onSignals([SIGINT, SIGTERM]) { _ in
///         server.close()                       // or drain: await server.shutdown(gracePeriod:)
///         loop.beginShutdown()
///     }
/// }
/// try loop.run()
/// ```
///
/// Loop-bound. The watcher does not keep the loop running by itself; it
/// ends with ``cancel()`` or when the loop shuts down. While a signal is
/// watched by any loop, libuv replaces the process's handler for it (the
/// default action, such as ending the process on SIGTERM, no longer happens).
public final class LoopSignal: HandleOwner {
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses.
    @exclusivity(unchecked) private var handler: ((Int32) -> Void)?

    /// The signal number watched.
    public let signalNumber: Int32

    init(loop: EventLoop, signal: Int32, handler: @escaping (Int32) -> Void) throws(UVError) {
        self.signalNumber = signal
        self.handler = handler
        super.init(loop: loop, type: UV_SIGNAL)
        let h = signalHandle
        try UVError.check(uv_signal_init(loop.uvLoop, h), "uv_signal_init", "signal \(signal)")
        adoptHandle()
        let rc = uv_signal_start(h, { handle, signum in
            // Safe: the handle's data is this owner until its close callback.
            let owner = HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(handle))).takeUnretainedValue()
            unsafeDowncast(owner, to: LoopSignal.self).handler?(signum)
        }, signal)
        if rc < 0 {
            closeHandle()
            throw UVError(code: rc, operation: "uv_signal_start", target: "signal \(signal)")
        }
        uv_unref(uvHandle)
    }

    private var signalHandle: UnsafeMutablePointer<uv_signal_t> {
        // Safe: this owner's handle was allocated as a uv_signal_t.
        UnsafeMutablePointer<uv_signal_t>(OpaquePointer(handle))
    }

    /// Stops watching and releases the handle. Idempotent.
    public func cancel() {
        loop.preconditionInEventLoop("LoopSignal.cancel()")
        closeHandle()
    }

    override func handleDidClose() {
        handler = nil // break any cycle through the closure
    }
}

extension EventLoop {
    /// Calls `handler` on the loop thread, with the signal number, each time
    /// one of `signals` arrives, until the returned watchers are cancelled
    /// or the loop shuts down. See ``LoopSignal``.
    /// - Throws: ``UVError`` naming the signal when it cannot be watched.
    @discardableResult
    public func onSignals(_ signals: [Int32], _ handler: @escaping (Int32) -> Void) throws(UVError) -> [LoopSignal] {
        preconditionInEventLoop("EventLoop.onSignals(_:_:)")
        var watchers: [LoopSignal] = []
        for signal in signals {
            do {
                watchers.append(try LoopSignal(loop: self, signal: signal, handler: handler))
            } catch {
                for watcher in watchers { watcher.cancel() }
                throw error
            }
        }
        return watchers
    }
}
