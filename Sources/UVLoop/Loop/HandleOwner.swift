import CLibUV

/// Base of every Swift object that owns one libuv handle.
///
/// Lifecycle (libuv's rule: a handle's memory may be freed only in its close
/// callback): the handle memory is allocated here; once `uv_*_init`
/// succeeded, `adoptHandle()` stores a retained reference to the owner in
/// `handle->data`, so the owner lives at least as long as the open handle;
/// `closeHandle(reset:)` calls `uv_close`, and the shared close callback
/// releases that reference, calls `handleDidClose()` and frees the memory.
/// ``EventLoop`` shutdown walks every handle and calls `closeForShutdown()`.
///
/// Public only as the common base of ``Connection``, ``Listener`` and
/// ``LoopTimer``; it cannot be subclassed or created outside UVLoop.
public class HandleOwner {
    /// The libuv handle (a `uv_tcp_t`, `uv_timer_t`, ... of `handleType`).
    /// Valid from init until the close callback ran (`isHandleClosed`).
    final let handle: UnsafeMutableRawPointer
    /// The loop this handle belongs to.
    public final var loop: EventLoop { unownedLoop }
    /// Safe without a retain: a handle is closed before its loop is freed (loop
    /// deinit and shutdown close every handle), and `retainedLoop` keeps the loop
    /// alive for every handle but the loop's own (which would form a cycle).
    /// Unchecked because it pays: the checked `unowned` costs 5 instructions
    /// per call of the echo server (243 against 238, callgrind,
    /// `scripts/instructions-per-call.sh 1 1 256 3`).
    private final unowned(unsafe) let unownedLoop: EventLoop
    private final let retainedLoop: EventLoop?
    /// `loop.preconditionInEventLoop(api)` without retaining the loop (the
    /// `loop` getter returns a strong reference; this sits on the hot path).
    @inline(__always)
    public final func preconditionInEventLoop(_ api: StaticString) {
        // Safe: the loop outlives its open handles (see `unownedLoop`), so a
        // guaranteed reference without retain/release is valid for the call.
        Unmanaged.passUnretained(unownedLoop)._withUnsafeGuaranteedRef { $0.preconditionInEventLoop(api) }
    }

    /// Runs `body` with the loop, without a retain and release of it (per-read
    /// and per-write paths use this).
    @inline(__always)
    final func withLoop<R>(_ body: (EventLoop) -> R) -> R {
        // Safe: the loop outlives its open handles (see `unownedLoop`), so a
        // guaranteed reference without retain/release is valid for the call.
        Unmanaged.passUnretained(unownedLoop)._withUnsafeGuaranteedRef { body($0) }
    }

    /// True once `uv_*_init` succeeded and the handle references its owner.
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses; the dynamic checks cost ~40% of the instructions per call.
    @exclusivity(unchecked) private final var isAdopted = false
    /// True once `uv_close` was called.
    @exclusivity(unchecked) final private(set) var isHandleClosing = false
    /// True once the close callback ran and the memory was freed.
    @exclusivity(unchecked) final private(set) var isHandleClosed = false

    init(loop: EventLoop, type: uv_handle_type, retainsLoop: Bool = true) {
        let size = uv_handle_size(type)
        handle = .allocate(byteCount: size, alignment: 16)
        handle.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        self.unownedLoop = loop
        self.retainedLoop = retainsLoop ? loop : nil
    }

    deinit {
        // A handle that was never initialised never reached libuv: free it here.
        // An adopted one keeps its owner alive until its close callback frees it.
        if !isAdopted { handle.deallocate() }
    }

    /// `handle` as libuv's base handle type.
    @inline(__always) final var uvHandle: UnsafeMutablePointer<uv_handle_t> {
        // Safe: every uv_*_t begins with the uv_handle_t fields (libuv's C "inheritance").
        UnsafeMutablePointer<uv_handle_t>(OpaquePointer(handle))
    }

    /// `handle` as a stream (only for TCP and pipe handles).
    @inline(__always) final var uvStream: UnsafeMutablePointer<uv_stream_t> {
        // Safe: only called by owners of uv_tcp_t / uv_pipe_t, which begin with uv_stream_t.
        UnsafeMutablePointer<uv_stream_t>(OpaquePointer(handle))
    }

    /// Call right after `uv_*_init` succeeded.
    final func adoptHandle() {
        precondition(!isAdopted, "HandleOwner.adoptHandle called twice")
        isAdopted = true
        uv_handle_set_data(uvHandle, Unmanaged.passRetained(self).toOpaque())
    }

    /// Starts closing the handle (idempotent). With `reset`, a TCP handle is
    /// closed with an RST (`uv_tcp_close_reset`) instead of a FIN.
    final func closeHandle(reset: Bool = false) {
        guard isAdopted, !isHandleClosing else { return }
        isHandleClosing = true
        if reset, uv_handle_get_type(uvHandle) == UV_TCP,
           uv_tcp_close_reset(UnsafeMutablePointer<uv_tcp_t>(OpaquePointer(handle)), handleCloseCallback) == 0 {
            return
        }
        uv_close(uvHandle, handleCloseCallback)
    }

    /// Called on the loop thread once the handle is closed, before its memory is freed.
    func handleDidClose() {}

    /// Called by loop shutdown for every handle that is not closing yet.
    func closeForShutdown() { closeHandle() }

    /// The owner of a handle that was adopted, without retaining it.
    @inline(__always)
    static func owner(of handle: UnsafeMutablePointer<uv_handle_t>?) -> Unmanaged<HandleOwner> {
        Unmanaged<HandleOwner>.fromOpaque(uv_handle_get_data(handle)!)
    }

    fileprivate final func didClose() {
        isHandleClosed = true
        handleDidClose()
    }
}

/// The one close callback of every handle: see ``HandleOwner``.
private let handleCloseCallback: uv_close_cb = { handle in
    // The reference taken in adoptHandle() is released here, after the last callback.
    let owner = HandleOwner.owner(of: handle).takeRetainedValue()
    owner.didClose()
    owner.handle.deallocate()
}
