import CLibUV

/// A byte stream over TCP or a Unix domain socket, bound to one ``EventLoop``.
///
/// Reads: while the connection holds no unconsumed bytes, libuv reads into
/// the loop's shared 64 KiB buffer and ``onRead`` gets a borrowed view of it;
/// only bytes it leaves unconsumed (a partial frame) are copied into the
/// connection's own `RingBuffer`, where later reads append until they are
/// consumed. So an idle connection owns no read buffer, and there is no
/// allocation per read. A consumer that knows where the next bytes belong
/// (the rest of a big payload) offers that buffer through
/// `directReadBuffer` and gets them there without a copy.
/// ``onRead`` returns how many bytes it consumed; the rest stays for the next read. Writes are copied into an outgoing buffer and flushed once per
/// loop turn (`uv_try_write` first, `uv_write` for what the socket did not
/// take); ``pendingWriteBytes`` and ``isWritable`` give backpressure.
///
/// Loop-bound: every method must be called on the loop's thread.
///
/// The connection ends exactly once; ``onClose`` then says why: `nil` for a
/// local ``close()`` / ``abort()`` / loop shutdown, or a ``ConnectionError``
/// (end of stream, reset, read or write failure). Writes that had not reached
/// the socket by then have their completions failed; nothing is dropped silently.
public final class Connection: HandleOwner {
    /// The name used in errors and logs; the peer address unless set.
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses; the dynamic checks cost ~40% of the instructions per call.
    @exclusivity(unchecked) public var label: String
    /// Whether this is a TCP or a Unix domain socket connection.
    public let isUnixDomain: Bool
    /// The peer's address (for Unix sockets, the path).
    public internal(set) var remoteAddress: SocketAddress?
    /// The host name this connection's address was resolved from, when it
    /// was connected by name (the TLS server name unless configured). Loop-bound.
    var hostName: String?
    /// This end's address (for Unix sockets, the path).
    public internal(set) var localAddress: SocketAddress?
    /// The settings this connection was made with.
    public let options: ConnectionOptions

    /// Called with the readable bytes (a view valid only during the call);
    /// returns how many bytes it consumed (0...count). Unconsumed bytes are
    /// offered again, with more, after the next read.
    @exclusivity(unchecked) public var onRead: ((UnsafeRawBufferPointer) -> Int)?
    /// Called once when the connection has closed: `nil` when closed locally,
    /// else the error that ended it.
    @exclusivity(unchecked) public var onClose: ((ConnectionError?) -> Void)?
    /// Called when ``isWritable`` changes (false above the high-water mark,
    /// true again below the low-water mark).
    @exclusivity(unchecked) public var onWritabilityChanged: ((Bool) -> Void)?
    /// Asked before a read while no bytes are unconsumed: a buffer the
    /// consumer wants the next bytes in (e.g. the rest of a large payload), or
    /// nil for the usual path. Bytes read into it go to ``onDirectRead``, not ``onRead``.
    @exclusivity(unchecked) package var directReadBuffer: (() -> UnsafeMutableRawBufferPointer?)?
    /// Called with the number of bytes read into the buffer `directReadBuffer` gave.
    @exclusivity(unchecked) package var onDirectRead: ((Int) -> Void)?
    /// Called (on the loop) after each flush or completed write while
    /// ``wantsWriteProgress`` is set: a protocol layer that feeds its writes
    /// piecemeal (chunked transfers) tops the outgoing bytes up here.
    @exclusivity(unchecked) package var onWriteProgress: (() -> Void)?
    /// Whether ``onWriteProgress`` is called (one flag test per flush when not).
    @exclusivity(unchecked) package var wantsWriteProgress = false

    /// Where the pending read lands.
    enum ReadTarget { case ring, shared, direct }
    @exclusivity(unchecked) var readTarget = ReadTarget.ring
    /// Unconsumed bytes copied from the ring to the front of the shared buffer
    /// for the pending read (they leave the ring only when the read succeeds).
    @exclusivity(unchecked) var sharedPrefix = 0
    /// Up to this many unconsumed bytes are moved in front of a shared-buffer
    /// read rather than making the read land in the (smaller) ring.
    static let maximumSharedPrefix = 32 << 10

    /// The longest run of unconsumed bytes a consumer can count on getting
    /// back whole, in one contiguous view, without the read buffer growing:
    /// the ring's capacity, or what is moved in front of a shared-buffer read.
    /// A framing layer can wait in place for frames up to this size (mid-size
    /// frames then cost no allocation of their own).
    package var contiguousReadCapacity: Int { max(ring.capacity, Self.maximumSharedPrefix) }

    /// The read buffer.
    let ring: RingBuffer
    /// TLS state when ``ConnectionOptions/tls`` is set (from the connect or accept on).
    @exclusivity(unchecked) var tls: TLSSession?
    /// TLS: ciphertext waiting for the socket (`inFlight` then holds a `uv_write`'s ciphertext).
    @exclusivity(unchecked) var cipherPending = OutgoingBuffer()

    @usableFromInline enum State { case connecting, open, closing, closed }
    @exclusivity(unchecked) @usableFromInline var state: State = .connecting
    @exclusivity(unchecked) var reading = false
    @exclusivity(unchecked) var wantsReading = true
    @exclusivity(unchecked) var processingReads = false
    /// Reading stopped for the rest of this loop turn (``yieldForThisTurn()``).
    @exclusivity(unchecked) var yielded = false
    /// Waiting in the loop's list for ``resumeAtTurnStart()``.
    @exclusivity(unchecked) var resumeScheduled = false
    /// The loop turn of the last read, and the bytes read in it.
    @exclusivity(unchecked) var readTurn: UInt64 = 0
    @exclusivity(unchecked) var bytesReadThisTurn = 0
    /// The peer's end of stream was read (nothing more can arrive: no linger needed).
    @exclusivity(unchecked) var peerEnded = false
    /// Whether a graceful close waits for the peer's end (see `linger()`).
    @exclusivity(unchecked) var lingerWanted = true
    /// The write side is shut down: waiting for the peer's end (see `linger()`).
    @exclusivity(unchecked) var lingering = false
    /// Why the connection is ending; nil means closed locally.
    @exclusivity(unchecked) var closeReason: ConnectionError?

    // Writes.
    @exclusivity(unchecked) @usableFromInline var pending = OutgoingBuffer()
    @exclusivity(unchecked) var inFlight = OutgoingBuffer()
    @exclusivity(unchecked) var writeInFlight = false
    @exclusivity(unchecked) var writeRequest: UnsafeMutablePointer<uv_write_t>?
    @exclusivity(unchecked) var shutdownRequest: UnsafeMutablePointer<uv_shutdown_t>?
    @exclusivity(unchecked) var closeTimer: LoopTimer?
    /// Watches a uv_write that is waiting for the socket (see ``ConnectionOptions/writeTimeout``).
    @exclusivity(unchecked) var writeWatch: LoopTimer?
    /// When the socket last took bytes while a uv_write was waiting (loop milliseconds).
    @exclusivity(unchecked) var lastWriteProgress: UInt64 = 0
    /// libuv's write queue size at the last write-watch tick.
    @exclusivity(unchecked) var lastWriteQueueSize = 0
    /// Total bytes accepted by write(), and total handed to the kernel.
    @exclusivity(unchecked) @usableFromInline var bytesQueued: UInt64 = 0
    @exclusivity(unchecked) @usableFromInline var bytesWritten: UInt64 = 0
    @exclusivity(unchecked) var completions: [(end: UInt64, callback: (Result<Void, ConnectionError>) -> Void)] = []
    @exclusivity(unchecked) var completionsHead = 0
    @exclusivity(unchecked) @usableFromInline var flushScheduled = false
    /// False while more than ``ConnectionOptions/writeHighWaterMark`` bytes
    /// wait to be written; true again below the low-water mark.
    @inlinable public var isWritable: Bool { writable }
    // Stored apart from the public getter: other modules reach a public stored
    // property directly, with a dynamic exclusivity check per access.
    @exclusivity(unchecked) @usableFromInline var writable = true

    init(loop: EventLoop, unixDomain: Bool, options: ConnectionOptions, label: String) throws(UVError) {
        self.isUnixDomain = unixDomain
        self.options = options
        self.label = label
        self.ring = RingBuffer(initialCapacity: options.initialReadBufferCapacity,
                               maximumCapacity: options.maximumReadBufferCapacity)
        super.init(loop: loop, type: unixDomain ? UV_NAMED_PIPE : UV_TCP)
        if unixDomain {
            try UVError.check(uv_pipe_init(loop.uvLoop, UnsafeMutablePointer(OpaquePointer(handle)), 0), "uv_pipe_init", label)
        } else {
            try UVError.check(uv_tcp_init(loop.uvLoop, UnsafeMutablePointer(OpaquePointer(handle))), "uv_tcp_init", label)
        }
        adoptHandle()
    }

    var tcpHandle: UnsafeMutablePointer<uv_tcp_t> {
        // Safe: only used when !isUnixDomain, where the handle is a uv_tcp_t.
        UnsafeMutablePointer(OpaquePointer(handle))
    }

    /// True while the connection can be written to (not closing or closed).
    public var isOpen: Bool { state == .open }

    /// Bytes accepted by ``write(_:completion:)-(UnsafeRawBufferPointer,_)`` that have not reached the socket yet.
    public var pendingWriteBytes: Int { Int(bytesQueued - bytesWritten) + pendingCiphertextBytes }

    /// The most bytes that waited to be written at once since the connection
    /// opened (the high-water mark actually reached; kept after the close).
    package var peakPendingWriteBytes: Int { max(peakPending, pendingWriteBytes) }
    @exclusivity(unchecked) var peakPending = 0

    /// True while libuv is reading the socket (for tests).
    package var isReadingForTests: Bool { reading }

    /// Bytes read but not consumed by ``onRead`` yet.
    package var unconsumedReadBytes: Int { ring.readableCount }

    /// Current read buffer capacity (grows for large unconsumed data, shrinks back).
    public var readBufferCapacity: Int { ring.capacity }

    /// Bytes of buffer memory this connection owns now: its read ring (none
    /// while it holds no unconsumed bytes and never did) and its outgoing buffers.
    package var ownedBufferBytes: Int {
        (ring.hasStorage ? ring.capacity : 0) + pending.allocatedBytes + inFlight.allocatedBytes
    }

    /// The socket's file descriptor while open (for `setsockopt`, `ioctl`
    /// and the like; do not read, write or close it), else nil.
    public var fileDescriptor: Int32? {
        preconditionInEventLoop("Connection.fileDescriptor")
        guard !isHandleClosing else { return nil }
        var fd = uv_os_fd_t(-1)
        // Safe: the handle is an initialised, open uv_tcp_t / uv_pipe_t owned by this connection.
        return uv_fileno(handle.assumingMemoryBound(to: uv_handle_t.self), &fd) == 0 ? fd : nil
    }

    // MARK: Opening

    /// Called by the listener or connector once the stream is connected.
    func didConnect() {
        state = .open
        if !isUnixDomain {
            if options.noDelay { uv_tcp_nodelay(tcpHandle, 1) }
            remoteAddress = SocketAddress.of(tcp: tcpHandle, peer: true)
            localAddress = SocketAddress.of(tcp: tcpHandle, peer: false)
        }
        wantsReading = options.autoRead
        if let context = options.tls { startTLS(context) }
    }

    /// Opens a connection on `loop` over an accepted socket handed over from
    /// another loop (`uv_tcp_open` / `uv_pipe_open`). The descriptor belongs
    /// to the connection from then on; if opening fails it is closed here.
    static func adopting(descriptor fd: Int32, on loop: EventLoop, unixDomain: Bool,
                         options: ConnectionOptions, label: String) throws(UVError) -> Connection {
        let connection: Connection
        do {
            connection = try Connection(loop: loop, unixDomain: unixDomain, options: options, label: label)
        } catch {
            _ = systemClose(fd)
            throw error
        }
        // Safe: the handle was initialised as a uv_pipe_t or uv_tcp_t by the init above.
        let rc = unixDomain ? uv_pipe_open(UnsafeMutablePointer(OpaquePointer(connection.handle)), fd)
                            : uv_tcp_open(connection.tcpHandle, uv_os_sock_t(fd))
        if rc < 0 {
            _ = systemClose(fd) // not the handle's: libuv took no ownership
            connection.closeHandle()
            throw UVError(code: rc, operation: unixDomain ? "uv_pipe_open" : "uv_tcp_open", target: label)
        }
        connection.didConnect()
        return connection
    }

    /// Called after the user's accept/connect callback returned.
    func startIfWanted() {
        if state == .open && wantsReading { startReading() }
        // Closed in the callback while a TLS handshake is under way: it still needs the peer's bytes.
        if state == .closing && tls?.isEstablished == false { startReading() }
    }

    // MARK: Closing (the rest is in Connection+Closing.swift)

    override func closeForShutdown() {
        terminate(reason: nil, reset: false)
    }

    override func handleDidClose() {
        state = .closed
        closeTimer?.cancel()
        closeTimer = nil
        writeWatch?.close()
        writeWatch = nil
        let error = closeReason ?? .closed(connection: label)
        // Fail every write that did not reach the socket.
        let unfinished = completions[completionsHead...].map(\.callback)
        completions.removeAll()
        completionsHead = 0
        bytesWritten = bytesQueued
        pending.release()
        inFlight.release()
        cipherPending.release()
        tls = nil
        writeRequest?.deallocate()
        writeRequest = nil
        ring.releaseStorage() // no read comes after the close; the object may be kept longer
        for callback in unfinished { callback(.failure(error)) }
        let onClose = self.onClose
        self.onRead = nil
        self.onClose = nil
        self.onWritabilityChanged = nil
        self.directReadBuffer = nil
        self.onDirectRead = nil
        self.onWriteProgress = nil
        onClose?(closeReason)
    }
}
