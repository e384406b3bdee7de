import Logging
import Tracing
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
/// - Incoming messages go to ``onMessage`` as an ``RPCRequest`` (or to an
///   async handler as an ``RPCAsyncRequest`` with its ``RPCHandlerContext``), answered now or later,
///   exactly once. Handlers do not block each other. A handler that throws,
///   or leaves its request unanswered, sends no response to an efro.rpc
///   peer (the peer's call then times out), and it is logged; a UVRPC peer
///   gets an error answer for a throwing handler (see ``RPCExtensions``).
/// - Between UVRPC peers, ``RPCExtensions`` (error answers, cancellation,
///   chunked big payloads, go-away) are used; ``activeExtensions`` says which.
/// - ``send(_:timeout:closeOnError:completion:)`` registers the call under
///   the next free 16-bit id (starting at 65530, wrapping) and completes with
///   the response or an ``RPCError``. With `closeOnError` (the default, as in
///   the reference) a failed call closes the whole endpoint.
/// - Keepalives go out every ``Configuration/keepaliveInterval``; when
///   nothing at all arrived for ``Configuration/keepaliveTimeout`` the
///   endpoint closes.
/// - ``close()`` is idempotent: every in-flight call fails with
///   an ``RPCError`` carrying the close reason, later answers are
///   refused, the connection closes after flushing, and ``onClose`` reports
///   the reason once.
///
/// Threads: the endpoint is loop-bound and not `Sendable`: the compiler
/// refuses to hand it to another thread or task, and its members check at
/// run time that they are called on the loop (where callbacks, handlers and
/// a server's `.callback` set-up run). Its `Sendable` handle,
/// ``asyncEndpoint`` (an ``RPCAsyncEndpoint``), is the async API that
/// works from anywhere.
public final class RPCEndpoint {
    // Every mutable field is read and written only on `loop`'s thread; public
    // accessors check it, and RPCAsyncEndpoint reaches the loop before touching anything.
    /// The name used in logs and errors; the connection's label unless set.
    public let label: String
    /// The connection this endpoint speaks over.
    package let connection: Connection
    /// The settings it was made with.
    public let configuration: Configuration
    /// Where it logs (with `rpc.endpoint` metadata). Logs nothing by default.
    public let logger: Logger
    /// The loop it runs on.
    public var loop: EventLoop { connection.loop }
    /// The peer's address (nil for a Unix-socket peer without a bound name).
    public var peerAddress: SocketAddress? { connection.remoteAddress }
    /// This side's address of the connection.
    public var localAddress: SocketAddress? { connection.localAddress }
    /// The loop, unretained, for the per-message and per-call reads
    /// (``loopNow``, ``checkLoop(_:)``): a checked `unowned` read is an atomic
    /// retain and release each time, and even an `unowned(unsafe)` one is
    /// retained around a method call (4-8% of a callback caller's CPU in the
    /// bench's client scenario); a guaranteed reference is not.
    // Safe: the connection retains its loop and this endpoint retains the
    // connection, so the loop outlives every use of this reference.
    let loopReference: Unmanaged<EventLoop>
    /// The loop, as a strong reference (timers, the task executor: not per call).
    var eventLoop: EventLoop { loopReference.takeUnretainedValue() }
    /// The loop's clock (``EventLoop/now``), read without a retain.
    @inline(__always)
    var loopNow: UInt64 { loopReference._withUnsafeGuaranteedRef { $0.now } }
    /// ``Configuration/messageTimeout`` in loop milliseconds (rounded up), for
    /// the per-call deadline without a Duration conversion per call.
    let messageTimeoutMilliseconds: UInt64
    /// The loop's metrics counters (see ``LoopMetrics``), counted on the loop.
    let metrics: LoopMetrics
    /// The memory budget shared with the other endpoints of a server, if any:
    /// payloads in parts (through the parser) and big payloads waiting to be sent count against it.
    let payloadBudget: MemoryBudget?

    /// The peer for logs: its address, or the connection's label (a Unix socket's path).
    var peerDescription: String { connection.remoteAddress.map { "\($0)" } ?? connection.label }

    /// The loop-thread check of every loop-bound member.
    @inline(__always)
    func checkLoop(_ api: StaticString) {
        loopReference._withUnsafeGuaranteedRef { $0.preconditionInEventLoop(api) }
    }

    /// The peer's handshake, once received. Loop-bound.
    public var peerInfo: PeerInfo? {
        checkLoop("RPCEndpoint.peerInfo")
        return _peerInfo
    }
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses; the dynamic checks cost ~40% of the instructions per call.
    @exclusivity(unchecked) var _peerInfo: PeerInfo?
    /// The largest payload the peer announced (`m`), or `Int.max` while
    /// unknown: one compare per call and per answer.
    @exclusivity(unchecked) var peerPayloadLimit = Int.max

    /// Handles each incoming message, as an ``RPCRequest``: what came in,
    /// from whom, and the way to answer it (now or later, exactly once).
    /// Throwing is logged, and answers with an error to a peer that takes
    /// error answers (``RPCExtensions/errorAnswers``; to an efro.rpc peer it
    /// sends nothing). Loop-bound. Messages that
    /// arrive while no handler is set wait (up to 1024) for one.
    ///
    /// For async handlers, see ``RPCHandler/async(interceptors:_:)``.
    public var onMessage: ((RPCRequest) throws -> Void)? {
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

    /// Called (on the loop) when the peer's handshake arrives, with its
    /// ``PeerInfo``; before any message of the peer. Loop-bound.
    public var onHandshake: ((PeerInfo) -> Void)? {
        get { checkLoop("RPCEndpoint.onHandshake"); return _onHandshake }
        set { checkLoop("RPCEndpoint.onHandshake"); _onHandshake = newValue }
    }
    @exclusivity(unchecked) var _onHandshake: ((PeerInfo) -> Void)?

    /// The owner's values for this connection (a session, an authenticated
    /// user, a per-peer counter...), each under its ``RPCConnectionKey``,
    /// seen by every handler call as ``RPCRequest/connectionValues`` and
    /// ``RPCHandlerContext/connectionValues``. ``RPCServer``'s admit hook sets
    /// them for each connection it accepts. Loop-bound.
    public var connectionValues: RPCConnectionValues {
        get { checkLoop("RPCEndpoint.connectionValues"); return _connectionValues }
        set { checkLoop("RPCEndpoint.connectionValues"); _connectionValues = newValue }
    }
    @exclusivity(unchecked) var _connectionValues = RPCConnectionValues() {
        didSet { cachedFacts = nil }
    }
    /// What async handlers' contexts share (``RPCHandlerContext``), made at
    /// the first message and again after the values or the handshake changed.
    @exclusivity(unchecked) var cachedFacts: ConnectionFacts?

    /// The connection's facts for a handler context.
    var connectionFacts: ConnectionFacts {
        if let cachedFacts { return cachedFacts }
        let facts = ConnectionFacts(peerAddress: connection.remoteAddress, peerInfo: _peerInfo ?? PeerInfo(keepaliveInterval: 0),
                                    peerCertificateSubject: connection.peerCertificateSubject,
                                    connectionValues: _connectionValues, endpoint: asyncEndpoint)
        cachedFacts = facts
        return facts
    }

    /// What handles incoming messages.
    enum MessageHandler {
        case callback(CallbackHandler)
        case async(AsyncHandlerBody)
    }

    /// A callback handler in a box, so that the per-message call can borrow it
    /// (``RPCEndpoint/handleMessage(id:payload:)``) instead of retaining it.
    final class CallbackHandler {
        let body: (RPCRequest) throws -> Void
        init(_ body: @escaping (RPCRequest) throws -> Void) { self.body = body }
    }

    @exclusivity(unchecked) var handler: MessageHandler?
    /// `handler` is `.async`, as a plain flag for the per-message check
    /// (matching the enum copies, so retains, its closure).
    @exclusivity(unchecked) var hasAsyncHandler = false
    /// The callback handler of `handler`, unretained, for the per-message call.
    /// Invariant: `handler` (or `retiredHandlers`, while a message is being
    /// handled) holds it strongly whenever this is non-nil.
    @exclusivity(unchecked) var callbackHandler: Unmanaged<CallbackHandler>?
    /// Handlers replaced while a message was being handled: kept alive until
    /// the end of that read (the one running may be among them).
    @exclusivity(unchecked) var retiredHandlers: [MessageHandler] = []

    func setHandler(_ new: MessageHandler?) {
        if answers.isHandling, let old = handler {
            retiredHandlers.append(old)
        } else if !retiredHandlers.isEmpty {
            retiredHandlers.removeAll()
        }
        handler = new
        if case .callback(let box)? = new { callbackHandler = Unmanaged.passUnretained(box) } else { callbackHandler = nil }
        if case .async? = new { hasAsyncHandler = true } else { hasAsyncHandler = false }
    }

    // The endpoint's state, in owned types (Endpoint/State/), each with the
    // decisions on it; the endpoint does the I/O. Each is mutated in place
    // (a struct holding a table, copied out and back, would copy it).
    /// The answers owed to the peer: current, kept, cancelled and waiting
    /// requests, running async handlers, cancel credits (RPCEndpoint+Answering.swift).
    @exclusivity(unchecked) var answers = OwedAnswers()
    /// The async handler's queue and worker tasks (RPCEndpoint+AsyncHandlers.swift).
    @exclusivity(unchecked) var workers = AsyncWorkers()
    /// Finished async calls kept for the next callers on the loop (RPCEndpoint+Sending.swift).
    @exclusivity(unchecked) var spareCalls: [AsyncCall] = []
    /// The check queued behind a running worker (RPCEndpoint+AsyncHandlers.swift).
    @exclusivity(unchecked) var workerStandbyStorage: AsyncWorkerStandby?
    /// Whether the standby check is queued (its `endpoint` is set).
    @exclusivity(unchecked) var standbyPosted = false
    /// The outgoing calls: in flight, waiting to be written, the armed deadline (RPCEndpoint+Sending.swift).
    @exclusivity(unchecked) var calls = OutgoingCalls()
    /// The chunked transfers this side sends and their flow control (RPCEndpoint+Chunking.swift).
    @exclusivity(unchecked) var outgoing = OutgoingTransfers()
    /// The peer's liveness clocks and this connection's share of a loop turn (RPCEndpoint+Closing.swift).
    @exclusivity(unchecked) var liveness: Liveness

    /// Set by ``close(gracePeriod:)`` (through ``phase``): close once nothing is in flight.
    var draining: Bool { phase.isDraining }
    @exclusivity(unchecked) var drainTimer: LoopTimer?

    // Extensions (see RPCEndpoint+Extensions.swift and RPCEndpoint+Chunking.swift).
    /// The extensions both handshakes announced; empty until the peer's arrived.
    @exclusivity(unchecked) var agreed: RPCExtensions = []
    /// Runs `pumpChunks()` on the next loop iteration, after its reads.
    @exclusivity(unchecked) var pumpTimer: LoopTimer?
    @exclusivity(unchecked) var goAwaySent = false
    @exclusivity(unchecked) var _peerIsGoingAway = false
    /// Lets an owner (``RPCClientPool``) stop using the endpoint when the peer sends GOAWAY.
    @exclusivity(unchecked) var didReceiveGoAwayForOwner: (() -> Void)?

    /// True once the peer said it is draining (extension `goaway`): sends on
    /// this endpoint then fail at once with an ``RPCError`` of code ``RPCError/Code/unavailable`` (not sent, retryable)
    /// (calls already written still get their answers). Loop-bound.
    public var peerIsGoingAway: Bool {
        checkLoop("RPCEndpoint.peerIsGoingAway")
        return _peerIsGoingAway
    }

    /// The extensions in use on this connection: those both handshakes
    /// announced (empty until the peer's handshake arrived, and with an
    /// efro.rpc peer). Loop-bound.
    public var activeExtensions: RPCExtensions {
        checkLoop("RPCEndpoint.activeExtensions")
        return agreed
    }

    /// Called once, after the connection closed, with the reason. Loop-bound.
    public var onClose: ((RPCCloseReason) -> Void)? {
        get { checkLoop("RPCEndpoint.onClose"); return _onClose }
        set { checkLoop("RPCEndpoint.onClose"); _onClose = newValue }
    }
    @exclusivity(unchecked) var _onClose: ((RPCCloseReason) -> Void)?
    /// Lets an owner (``RPCServer``) forget the endpoint once closed.
    @exclusivity(unchecked) var didCloseForOwner: (() -> Void)?
    /// Resumed when the endpoint is fully closed (``closed()``).
    @exclusivity(unchecked) var closeWaiters: [(RPCCloseReason) -> Void] = []

    /// Why the endpoint is closing, once it is. Loop-bound.
    public var closeReason: RPCCloseReason? {
        checkLoop("RPCEndpoint.closeReason")
        return _closeReason
    }
    /// Where the endpoint is in its life: the one source of truth for
    /// serving, draining, closing and closed.
    @exclusivity(unchecked) var phase = EndpointPhase.serving {
        didSet { closing = phase.isClosing }
    }
    /// Why it is closing or closed (from ``phase``).
    var _closeReason: RPCCloseReason? { phase.closeReason }
    /// ``phase`` is closing or closed, as a plain flag for the per-message
    /// checks (matching the enum costs a copy of its payload); set only by
    /// ``phase``'s observer.
    @exclusivity(unchecked) private(set) var closing = false
    /// True once closing started (by ``close()`` or a failure). Loop-bound.
    public var isClosing: Bool { closeReason != nil }
    /// True once the connection is fully closed and ``onClose`` ran. Loop-bound.
    public var isClosed: Bool {
        checkLoop("RPCEndpoint.isClosed")
        return _isClosed
    }
    var _isClosed: Bool { phase.isClosed }
    /// Outgoing calls waiting for their response. Loop-bound.
    public var inFlightCount: Int {
        checkLoop("RPCEndpoint.inFlightCount")
        return calls.inFlightCount
    }

    /// False while the connection holds more unsent bytes than its high-water
    /// mark (``Configuration/writeHighWaterMark``), true again below the
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
    @exclusivity(unchecked) var _onTaggedResponse: TaggedResponseHandler?
    /// Tagged-response handlers replaced while one was running: kept alive
    /// until that call returned (the running one may be among them).
    @exclusivity(unchecked) var retiredTaggedHandlers: [TaggedResponseHandler] = []
    /// Tagged-response handler calls running now (they nest when one ends
    /// other calls, e.g. by closing the endpoint).
    @exclusivity(unchecked) var taggedDeliveryDepth = 0

    /// Replaces the tagged-response handler; one replaced while a call of it
    /// runs is kept alive until every such call returned.
    func replaceTaggedHandler(_ new: TaggedResponseHandler?) {
        if taggedDeliveryDepth > 0, let old = _onTaggedResponse { retiredTaggedHandlers.append(old) }
        _onTaggedResponse = new
    }

    /// ``onTaggedResponse`` in a box, so that each response borrows it
    /// instead of retaining its closure (a retain and release per call).
    final class TaggedResponseHandler {
        let body: (UInt64, Result<UnsafeRawBufferPointer, RPCError>) -> Void
        init(_ body: @escaping (UInt64, Result<UnsafeRawBufferPointer, RPCError>) -> Void) { self.body = body }
    }

    @exclusivity(unchecked) var parser: PacketParser
    /// True while reading is paused because answers are piling up unsent.
    @exclusivity(unchecked) var pausedForBackpressure = false
    /// Fires at the earliest deadline of `calls` (which says which that is).
    @exclusivity(unchecked) var deadlineTimer: LoopTimer?
    /// Fires at the earliest deadline of the sends waiting for the peer's
    /// handshake (RPCEndpoint+Deferred.swift), and that deadline (`.max`: not armed).
    @exclusivity(unchecked) var deferredTimer: LoopTimer?
    @exclusivity(unchecked) var deferredTimerDeadline = UInt64.max
    /// The tracer bootstrapped when the endpoint was made (RPCTracing.swift); nil: none, nothing is traced.
    let tracer: (any Tracer)?
    /// No tracer and no client interceptors: an async send goes straight to the call.
    let sendsPlainly: Bool
    // Call metadata (extension `meta`; RPCEndpoint+Metadata.swift).
    /// METADATA received for messages still arriving, by id.
    @exclusivity(unchecked) var pendingMetadata: [UInt16: IncomingCall] = [:]
    /// What came with the message whose callback handler runs now (nil: nothing).
    @exclusivity(unchecked) var currentIncomingCall: IncomingCall?
    /// The deadlines of running async handlers, and their timer.
    @exclusivity(unchecked) var handlerDeadlines = HandlerDeadlines()
    @exclusivity(unchecked) var handlerDeadlineTimer: LoopTimer?
    @exclusivity(unchecked) var keepaliveTimer: LoopTimer?
    /// Runs the checks of `liveness` every `liveness.period`.
    @exclusivity(unchecked) var livenessTimer: LoopTimer?

    /// Starts speaking efro.rpc over `connection`: writes the handshake at
    /// once and starts reading (the connection's `Connection/onRead` and
    /// `Connection/onClose` now belong to the endpoint).
    public convenience init(connection: Connection, configuration: Configuration = Configuration(),
                            label: String? = nil, logger: Logger? = nil) {
        self.init(connection: connection, configuration: configuration, label: label, logger: logger,
                  handshake: configuration.handshakeBytes, payloadBudget: nil)
    }

    /// As the public init, with the handshake bytes made once by the caller
    /// (a server makes them once for all its endpoints: formatting them costs
    /// more than the rest of setting up an endpoint) and the budget its
    /// payloads in parts share with other endpoints (a server's), if any.
    init(connection: Connection, configuration: Configuration, label: String?, logger: Logger?, handshake: [UInt8],
         payloadBudget: MemoryBudget?) {
        connection.loop.preconditionInEventLoop("RPCEndpoint.init")
        self.connection = connection
        self.loopReference = Unmanaged.passUnretained(connection.loop)
        self.metrics = LoopMetrics.of(connection.loop)
        metrics.connectionsOpened &+= 1
        self.configuration = configuration
        self.messageTimeoutMilliseconds = configuration.messageTimeout.roundedUpMilliseconds
        self.label = label ?? connection.label
        var logger = logger ?? Logger(label: "uvrpc", factory: { _ in SwiftLogNoOpLogHandler() })
        logger[metadataKey: "rpc.endpoint"] = "\(self.label)"
        self.logger = logger
        if let tls = connection.options.tls?.configuration, tls.role == .client, !tls.verifiesPeer {
            logger.warning("TLS: the server's certificate is not checked (verifiesPeer is off): any server is accepted")
        }
        self.payloadBudget = payloadBudget
        self.tracer = Self.bootstrappedTracer()
        self.sendsPlainly = tracer == nil && configuration.interceptors.isEmpty
        self.parser = PacketParser(maximumPayloadSize: configuration.maximumPayloadSize,
                                   extensions: configuration.extensions,
                                   memory: PayloadMemory(limit: configuration.maximumPayloadMemory, shared: payloadBudget))
        let livenessPeriod = Liveness.checkPeriod(keepaliveTimeout: configuration.keepaliveTimeout,
                                                  handshakeTimeout: configuration.handshakeTimeout,
                                                  payloadProgressTimeout: configuration.payloadProgressTimeout)
        self.liveness = Liveness(now: connection.loop.now, period: livenessPeriod.roundedUpMilliseconds,
                                 handshakeTimeout: configuration.handshakeTimeout.roundedUpMilliseconds,
                                 keepaliveTimeout: configuration.keepaliveTimeout.roundedUpMilliseconds,
                                 packetsPerTurn: configuration.maximumPacketsPerTurn)

        connection.onRead = { bytes in self.handleReadable(bytes) }
        connection.onClose = { error in self.connectionDidClose(error) }
        connection.onWritabilityChanged = { writable in self.writabilityChanged(writable) }
        // The rest of a big payload is read straight into its final buffer.
        connection.directReadBuffer = { !self.closing ? self.parser.bigPayloadRemainder : nil }
        connection.onDirectRead = { count in
            let now = self.loopNow
            self.liveness.received(at: now)
            self.parser.clock = now
            self.parser.didFillBigPayload(count, into: self)
            self.closeIfDrained()
        }
        connection.onWriteProgress = { [unowned self] in self.schedulePump() }
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
        livenessTimer = eventLoop.scheduleTimer(after: livenessPeriod, repeating: livenessPeriod) { [unowned self] in
            self.checkLiveness()
        }
    }
}

extension Duration {
    /// The duration in seconds as a Double.
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}
