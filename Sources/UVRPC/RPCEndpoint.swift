import Logging
import UVLoop

/// One efro.rpc endpoint over one connection: the callback API.
///
/// Both sides of a connection are symmetric: each sends messages and answers
/// the messages it receives. The endpoint writes its handshake at once,
/// reads the peer's first, then multiplexes calls in both directions.
///
/// Loop-bound: create and use it on its connection's loop thread.
///
/// Semantics follow the reference `efro.rpc` (see Docs/PROTOCOL.md):
/// - Incoming messages go to ``onMessage`` with an ``RPCResponder`` that
///   answers now or later, exactly once. Handlers do not block each other.
///   A handler that throws, or drops its responder unanswered, sends no
///   response (the peer's call then times out), and it is logged.
/// - ``send(_:timeout:closeOnError:completion:)`` registers the call under
///   the next free 16-bit id (starting at 65530, wrapping) and completes with
///   the response or an ``RPCError``. With `closeOnError` (the default, as in
///   the reference) a failed call closes the whole endpoint.
/// - Keepalives go out every ``Configuration/keepaliveInterval``; when
///   nothing at all arrived for ``Configuration/keepaliveTimeout`` the
///   endpoint closes.
/// - ``close()`` is idempotent: every in-flight call fails with
///   ``RPCError/closed(endpoint:messageID:reason:)``, later answers are
///   refused, the connection closes after flushing, and ``onClose`` reports
///   the reason once.
///
/// Threads: the callback API and the state properties are loop-bound (they
/// check the thread). The async API (`send(...) async`, `onMessage(_:)`
/// with an async handler, `close() async`) may be called from any thread or
/// task: it hops onto the loop. So the endpoint is `Sendable`.
public final class RPCEndpoint: @unchecked Sendable { // state touched on the loop thread only
    // Sendable invariant: every mutable field is read and written only on
    // `loop`'s thread; public accessors check it, and the async API reaches
    // the loop through `EventLoop.execute` before touching anything.
    /// Settings of an endpoint; the defaults are the reference's.
    public struct Configuration: Sendable {
        /// How often a KEEPALIVE is sent, and the `k` announced. Default 10.73 s.
        public var keepaliveInterval: Duration = .milliseconds(10_730)
        /// Close when nothing arrived from the peer for this long. Default 30 s.
        public var keepaliveTimeout: Duration = .seconds(30)
        /// Close when the peer's handshake has not arrived within this. Default 30 s.
        public var handshakeTimeout: Duration = .seconds(30)
        /// Default timeout of an outgoing call, including the peer's handling. Default 60 s.
        public var messageTimeout: Duration = .seconds(60)
        /// Largest incoming payload; a larger declared length closes the
        /// connection before anything is allocated. Default 64 MiB.
        public var maximumPayloadSize = 64 << 20
        /// Send keepalives (turn off only to test the peer's keepalive timeout).
        public var sendsKeepalives = true
        /// Options for connections made by ``RPCServer`` and ``RPCClient``
        /// (buffer sizes, write water marks, the write timeout).
        public var connectionOptions = ConnectionOptions()
        /// Most unsent bytes the callback `send` variants may pile up: a
        /// call that would take the connection's pending bytes over this
        /// fails at once with ``RPCError/sendBufferFull(endpoint:pendingBytes:limit:)``
        /// (a single call on an empty buffer always goes). Async sends wait
        /// for ``RPCEndpoint/isWritable`` instead. Default 64 MiB.
        public var maximumPendingWriteBytes = 64 << 20

        /// The reference's defaults.
        public init() {}

        /// This side's handshake as written on the wire.
        var handshakeBytes: [UInt8] { PeerInfo(keepaliveInterval: keepaliveInterval.seconds).handshakeBytes }
    }

    /// How a call's completion wants its response.
    enum Completion {
        case copied((Result<[UInt8], RPCError>) -> Void)
        case borrowed((Result<UnsafeRawBufferPointer, RPCError>) -> Void)
        case async(AsyncCall)
        /// Goes to the endpoint's ``RPCEndpoint/onTaggedResponse`` with this tag.
        case tagged(UInt64)

        func fail(on endpoint: RPCEndpoint, _ error: RPCError) {
            switch self {
            case .copied(let c): c(.failure(error))
            case .borrowed(let c): c(.failure(error))
            case .async(let call): call.finish(.failure(error))
            case .tagged(let tag): endpoint.deliverTagged(tag, .failure(error))
            }
        }

        func succeed(on endpoint: RPCEndpoint, _ payload: UnsafeRawBufferPointer) {
            switch self {
            case .copied(let c): c(.success(Array(payload)))
            case .borrowed(let c): c(.success(payload))
            case .async(let call): if !call.isFinished { call.finish(.success(Array(payload))) } // no copy for a cancelled call
            case .tagged(let tag): endpoint.deliverTagged(tag, .success(payload))
            }
        }

        /// An async call that was cancelled before it could start.
        var isAbandoned: Bool {
            if case .async(let call) = self { return call.isFinished }
            return false
        }
    }

    /// What handles incoming messages.
    enum MessageHandler {
        case callback(CallbackHandler)
        case async(@Sendable ([UInt8]) async throws -> [UInt8])
    }

    /// A callback handler in a box, so that the per-message call can borrow it
    /// (``RPCEndpoint/handleMessage(id:payload:)``) instead of retaining it.
    final class CallbackHandler {
        let body: (UnsafeRawBufferPointer, RPCResponder) throws -> Void
        init(_ body: @escaping (UnsafeRawBufferPointer, RPCResponder) throws -> Void) { self.body = body }
    }

    /// What the call table keeps per outgoing call.
    struct PendingCall {
        var completion: Completion
        var timeout: Duration
    }

    /// A send that waits before it is written: a big one for the peer's
    /// handshake (to learn whether it takes *_BIG packets), or an async one
    /// for the connection to become writable.
    struct QueuedSend {
        var payload: [UInt8]
        var timeout: Duration?
        var closeOnError: Bool
        var completion: Completion
    }

    /// The name used in logs and errors; the connection's label unless set.
    public let label: String
    /// The connection this endpoint speaks over.
    public let connection: Connection
    /// The settings it was made with.
    public let configuration: Configuration
    /// Where it logs (with `rpc.endpoint` metadata). Logs nothing by default.
    public let logger: Logger
    /// The loop it runs on.
    public var loop: EventLoop { connection.loop }
    /// The loop without a retain per use (the hot path reads it per message).
    /// Safe: the connection retains its loop, and this endpoint retains the connection.
    unowned(unsafe) let eventLoop: EventLoop

    /// The loop-thread check of every loop-bound member, without a retain of the loop.
    @inline(__always)
    func checkLoop(_ api: StaticString) {
        // Safe: see `eventLoop`; the reference is only used during the call.
        Unmanaged.passUnretained(eventLoop)._withUnsafeGuaranteedRef { $0.preconditionInEventLoop(api) }
    }

    /// The peer's handshake, once received. Loop-bound.
    public var peerInfo: PeerInfo? {
        checkLoop("RPCEndpoint.peerInfo")
        return _peerInfo
    }
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses; the dynamic checks cost ~40% of the instructions per call.
    @exclusivity(unchecked) var _peerInfo: PeerInfo?

    /// Handles each incoming message: the payload (a view valid only during
    /// the call) and the responder to answer through, now or later. Throwing
    /// sends no response and is logged. Loop-bound. Messages that arrive while
    /// no handler is set wait (up to 1024) for one.
    public var onMessage: ((UnsafeRawBufferPointer, RPCResponder) throws -> Void)? {
        get {
            checkLoop("RPCEndpoint.onMessage")
            if case .callback(let c)? = handler { return c.body }
            return nil
        }
        set {
            checkLoop("RPCEndpoint.onMessage")
            setHandler(newValue.map { .callback(CallbackHandler($0)) })
            deliverWaitingMessages()
        }
    }
    @exclusivity(unchecked) var handler: MessageHandler?
    /// The callback handler of `handler`, unretained, for the per-message call.
    /// Invariant: `handler` (or `retiredHandlers`, while a message is being
    /// handled) holds it strongly whenever this is non-nil.
    @exclusivity(unchecked) var callbackHandler: Unmanaged<CallbackHandler>?
    /// Handlers replaced while a message was being handled: kept alive until
    /// that call returned (the one running may be among them).
    @exclusivity(unchecked) var retiredHandlers: [MessageHandler] = []
    @exclusivity(unchecked) var handlingDepth = 0

    func setHandler(_ new: MessageHandler?) {
        if handlingDepth > 0, let old = handler { retiredHandlers.append(old) }
        handler = new
        if case .callback(let box)? = new { callbackHandler = Unmanaged.passUnretained(box) } else { callbackHandler = nil }
    }
    /// An answered responder nobody else holds, ready for the next message.
    @exclusivity(unchecked) var spareResponder: RPCResponder?
    /// Tasks running async handlers, cancelled when the endpoint closes.
    @exclusivity(unchecked) var handlerTasks: [UInt64: Task<Void, Never>] = [:]
    @exclusivity(unchecked) var nextHandlerTaskKey: UInt64 = 0
    /// Messages that arrived before any handler was set.
    @exclusivity(unchecked) var waitingMessages: [(id: UInt16, payload: [UInt8])] = []
    static let maximumWaitingMessages = 1024

    /// Called once, after the connection closed, with the reason. Loop-bound.
    public var onClose: ((RPCCloseReason) -> Void)? {
        get { checkLoop("RPCEndpoint.onClose"); return _onClose }
        set { checkLoop("RPCEndpoint.onClose"); _onClose = newValue }
    }
    @exclusivity(unchecked) var _onClose: ((RPCCloseReason) -> Void)?
    /// Lets an owner (``RPCServer``) forget the endpoint once closed.
    @exclusivity(unchecked) var didCloseForOwner: (() -> Void)?
    /// Resumed when the endpoint is fully closed (``closed()``).
    @exclusivity(unchecked) var closeWaiters: [CheckedContinuation<RPCCloseReason, Never>] = []

    /// Why the endpoint is closing, once it is. Loop-bound.
    public var closeReason: RPCCloseReason? {
        checkLoop("RPCEndpoint.closeReason")
        return _closeReason
    }
    @exclusivity(unchecked) var _closeReason: RPCCloseReason?
    /// `_closeReason != nil`, as a plain flag for the per-message checks
    /// (comparing the optional enum with nil costs a copy of its payload).
    @exclusivity(unchecked) var closing = false
    /// True once closing started (by ``close()`` or a failure). Loop-bound.
    public var isClosing: Bool { closeReason != nil }
    /// True once the connection is fully closed and ``onClose`` ran. Loop-bound.
    public var isClosed: Bool {
        checkLoop("RPCEndpoint.isClosed")
        return _isClosed
    }
    @exclusivity(unchecked) var _isClosed = false
    /// Outgoing calls waiting for their response. Loop-bound.
    public var inFlightCount: Int {
        checkLoop("RPCEndpoint.inFlightCount")
        return calls.count + deferredSends.count + (blockedSends.count - blockedSendsHead)
    }

    /// False while the connection holds more unsent bytes than its high-water
    /// mark (``ConnectionOptions/writeHighWaterMark``), true again below the
    /// low-water mark. Callback senders should stop sending while it is
    /// false and resume on ``onWritabilityChanged``; async sends wait by
    /// themselves. While it is false the endpoint also stops taking new
    /// incoming messages (their answers would pile up), so a peer that sends
    /// but never reads cannot grow this side's memory. Loop-bound.
    public var isWritable: Bool {
        checkLoop("RPCEndpoint.isWritable")
        return connection.isWritable
    }

    /// Called (on the loop) when ``isWritable`` changes. Loop-bound.
    public var onWritabilityChanged: ((Bool) -> Void)? {
        get { checkLoop("RPCEndpoint.onWritabilityChanged"); return _onWritabilityChanged }
        set { checkLoop("RPCEndpoint.onWritabilityChanged"); _onWritabilityChanged = newValue }
    }
    @exclusivity(unchecked) var _onWritabilityChanged: ((Bool) -> Void)?
    /// Storage of ``onTaggedResponse``.
    @exclusivity(unchecked) var _onTaggedResponse: ((UInt64, Result<UnsafeRawBufferPointer, RPCError>) -> Void)?

    @exclusivity(unchecked) var parser: PacketParser
    @exclusivity(unchecked) var calls = CallTable<PendingCall>()
    @exclusivity(unchecked) var deferredSends: [QueuedSend] = []
    /// Async sends waiting for writability, oldest first, from `blockedSendsHead`.
    @exclusivity(unchecked) var blockedSends: [QueuedSend] = []
    @exclusivity(unchecked) var blockedSendsHead = 0
    /// True while reading is paused because answers are piling up unsent.
    @exclusivity(unchecked) var pausedForBackpressure = false
    @exclusivity(unchecked) var deadlineTimer: LoopTimer?
    @exclusivity(unchecked) var armedDeadline = UInt64.max
    @exclusivity(unchecked) var keepaliveTimer: LoopTimer?
    @exclusivity(unchecked) var livenessTimer: LoopTimer?
    @exclusivity(unchecked) var lastReceived: UInt64
    /// Milliseconds between liveness checks.
    @exclusivity(unchecked) var livenessPeriod: UInt64 = 0
    let openedAt: UInt64

    /// Starts speaking efro.rpc over `connection`: writes the handshake at
    /// once and starts reading (the connection's ``Connection/onRead`` and
    /// ``Connection/onClose`` now belong to the endpoint).
    public convenience init(connection: Connection, configuration: Configuration = Configuration(),
                            label: String? = nil, logger: Logger? = nil) {
        self.init(connection: connection, configuration: configuration, label: label, logger: logger,
                  handshake: configuration.handshakeBytes)
    }

    /// As the public init, with the handshake bytes made once by the caller
    /// (a server makes them once for all its endpoints: formatting them costs
    /// more than the rest of setting up an endpoint).
    init(connection: Connection, configuration: Configuration, label: String?, logger: Logger?, handshake: [UInt8]) {
        connection.loop.preconditionInEventLoop("RPCEndpoint.init")
        self.connection = connection
        self.eventLoop = connection.loop
        self.configuration = configuration
        self.label = label ?? connection.label
        var logger = logger ?? Logger(label: "uvrpc", factory: { _ in SwiftLogNoOpLogHandler() })
        logger[metadataKey: "rpc.endpoint"] = "\(self.label)"
        self.logger = logger
        self.parser = PacketParser(maximumPayloadSize: configuration.maximumPayloadSize)
        let now = connection.loop.now
        lastReceived = now
        openedAt = now

        connection.onRead = { bytes in self.handleReadable(bytes) }
        connection.onClose = { error in self.connectionDidClose(error) }
        connection.onWritabilityChanged = { writable in self.writabilityChanged(writable) }
        // The rest of a big payload is read straight into its final buffer.
        connection.directReadBuffer = { !self.closing ? self.parser.bigPayloadRemainder : nil }
        connection.onDirectRead = { count in
            self.lastReceived = self.loop.now
            self.parser.didFillBigPayload(count) { packet in self.dispatch(packet) }
        }
        do {
            try connection.write(handshake)
        } catch {
            close(reason: .connectionFailed(error))
            return
        }
        if configuration.sendsKeepalives {
            let interval = configuration.keepaliveInterval
            keepaliveTimer = eventLoop.scheduleTimer(after: interval, repeating: interval) { [unowned self] in
                PacketWriter.keepalive.withUnsafeBytes { try? self.connection.write($0) }
            }
        }
        let period = min(configuration.keepaliveTimeout, configuration.handshakeTimeout) / 4
        let clamped = max(period, .milliseconds(5))
        livenessPeriod = clamped.roundedUpMilliseconds
        livenessTimer = eventLoop.scheduleTimer(after: clamped, repeating: clamped) { [unowned self] in
            self.checkLiveness()
        }
    }

    // MARK: Liveness

    func checkLiveness() {
        let now = eventLoop.now
        // Nothing arrived for a whole period: give the connection's buffers back.
        if now - lastReceived >= livenessPeriod { connection.releaseIdleBuffers() }
        if _peerInfo == nil, now - openedAt > configuration.handshakeTimeout.roundedUpMilliseconds {
            logger.info("no handshake from the peer in time; closing")
            close(reason: .handshakeTimeout(configuration.handshakeTimeout))
        } else if !pausedForBackpressure, now - lastReceived > configuration.keepaliveTimeout.roundedUpMilliseconds {
            // (While reading is paused for backpressure the write timeout watches the peer.)
            logger.info("keepalive timeout; closing",
                        metadata: ["rpc.silent-ms": "\(now - lastReceived)"])
            close(reason: .keepaliveTimeout(configuration.keepaliveTimeout))
        }
    }

    // MARK: Closing

    /// Closes the endpoint: fails every in-flight call, refuses later
    /// answers, flushes and closes the connection. Idempotent.
    public func close() {
        checkLoop("RPCEndpoint.close()")
        close(reason: .local)
    }

    func close(reason: RPCCloseReason) {
        guard !closing else { return }
        _closeReason = reason
        closing = true
        switch reason {
        case .local, .protocolViolation, .handshakeTimeout, .keepaliveTimeout:
            break // not logged, or logged where detected
        case .peerClosed:
            logger.debug("closing", metadata: ["rpc.reason": "\(reason)"])
        case .reset, .connectionFailed, .callFailed:
            logger.info("closing", metadata: [
                "rpc.peer": "\(connection.remoteAddress.map { "\($0)" } ?? connection.label)",
                "rpc.reason": "\(reason)",
            ])
        }
        keepaliveTimer?.cancel()
        livenessTimer?.cancel()
        deadlineTimer?.close()
        keepaliveTimer = nil
        livenessTimer = nil
        deadlineTimer = nil
        for id in calls.liveIDs() {
            if let (call, _) = calls.remove(id) {
                call.completion.fail(on: self, .closed(endpoint: label, messageID: id, reason: reason))
            }
        }
        // Closing stops handling: running async handlers are cancelled (their
        // answers would be refused anyway).
        for task in handlerTasks.values { task.cancel() }
        let waiting = deferredSends + blockedSends[blockedSendsHead...]
        deferredSends.removeAll()
        blockedSends.removeAll()
        blockedSendsHead = 0
        for send in waiting { send.completion.fail(on: self, .closed(endpoint: label, messageID: nil, reason: reason)) }
        connection.close()
    }

    func connectionDidClose(_ error: ConnectionError?) {
        if !closing {
            let reason: RPCCloseReason
            switch error {
            case nil: reason = .local
            case .endOfStream?: reason = .peerClosed
            case .reset?: reason = .reset
            case let other?: reason = .connectionFailed(other)
            }
            close(reason: reason)
        }
        _isClosed = true
        // A closed endpoint may be kept (e.g. in RPCServer.endpoints): hold no big buffer.
        parser.discardPartialPacket()
        let onClose = _onClose
        _onClose = nil
        setHandler(nil)
        _onTaggedResponse = nil
        _onWritabilityChanged = nil
        spareResponder = nil // it references the endpoint
        waitingMessages.removeAll()
        let owner = didCloseForOwner
        didCloseForOwner = nil
        let reason = _closeReason ?? .local
        onClose?(reason)
        owner?()
        let waiters = closeWaiters
        closeWaiters.removeAll()
        for waiter in waiters { waiter.resume(returning: reason) }
    }
}

extension Duration {
    /// The duration in seconds as a Double.
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}
