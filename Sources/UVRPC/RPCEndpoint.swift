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
    private struct QueuedSend {
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
    private unowned(unsafe) let eventLoop: EventLoop

    /// The loop-thread check of every loop-bound member, without a retain of the loop.
    @inline(__always)
    private func checkLoop(_ api: StaticString) {
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
    @exclusivity(unchecked) private var _peerInfo: PeerInfo?

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
    @exclusivity(unchecked) private var handler: MessageHandler?
    /// The callback handler of `handler`, unretained, for the per-message call.
    /// Invariant: `handler` (or `retiredHandlers`, while a message is being
    /// handled) holds it strongly whenever this is non-nil.
    @exclusivity(unchecked) private var callbackHandler: Unmanaged<CallbackHandler>?
    /// Handlers replaced while a message was being handled: kept alive until
    /// that call returned (the one running may be among them).
    @exclusivity(unchecked) private var retiredHandlers: [MessageHandler] = []
    @exclusivity(unchecked) private var handlingDepth = 0

    private func setHandler(_ new: MessageHandler?) {
        if handlingDepth > 0, let old = handler { retiredHandlers.append(old) }
        handler = new
        if case .callback(let box)? = new { callbackHandler = Unmanaged.passUnretained(box) } else { callbackHandler = nil }
    }
    /// An answered responder nobody else holds, ready for the next message.
    @exclusivity(unchecked) private var spareResponder: RPCResponder?
    /// Tasks running async handlers, cancelled when the endpoint closes.
    @exclusivity(unchecked) private var handlerTasks: [UInt64: Task<Void, Never>] = [:]
    @exclusivity(unchecked) private var nextHandlerTaskKey: UInt64 = 0
    /// Messages that arrived before any handler was set.
    @exclusivity(unchecked) private var waitingMessages: [(id: UInt16, payload: [UInt8])] = []
    private static let maximumWaitingMessages = 1024

    /// Called once, after the connection closed, with the reason. Loop-bound.
    public var onClose: ((RPCCloseReason) -> Void)? {
        get { checkLoop("RPCEndpoint.onClose"); return _onClose }
        set { checkLoop("RPCEndpoint.onClose"); _onClose = newValue }
    }
    @exclusivity(unchecked) private var _onClose: ((RPCCloseReason) -> Void)?
    /// Lets an owner (``RPCServer``) forget the endpoint once closed.
    @exclusivity(unchecked) var didCloseForOwner: (() -> Void)?
    /// Resumed when the endpoint is fully closed (``closed()``).
    @exclusivity(unchecked) private var closeWaiters: [CheckedContinuation<RPCCloseReason, Never>] = []

    /// Why the endpoint is closing, once it is. Loop-bound.
    public var closeReason: RPCCloseReason? {
        checkLoop("RPCEndpoint.closeReason")
        return _closeReason
    }
    @exclusivity(unchecked) private var _closeReason: RPCCloseReason?
    /// `_closeReason != nil`, as a plain flag for the per-message checks
    /// (comparing the optional enum with nil costs a copy of its payload).
    @exclusivity(unchecked) private var closing = false
    /// True once closing started (by ``close()`` or a failure). Loop-bound.
    public var isClosing: Bool { closeReason != nil }
    /// True once the connection is fully closed and ``onClose`` ran. Loop-bound.
    public var isClosed: Bool {
        checkLoop("RPCEndpoint.isClosed")
        return _isClosed
    }
    @exclusivity(unchecked) private var _isClosed = false
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
    @exclusivity(unchecked) private var _onWritabilityChanged: ((Bool) -> Void)?

    @exclusivity(unchecked) private var parser: PacketParser
    @exclusivity(unchecked) private var calls = CallTable<PendingCall>()
    @exclusivity(unchecked) private var deferredSends: [QueuedSend] = []
    /// Async sends waiting for writability, oldest first, from `blockedSendsHead`.
    @exclusivity(unchecked) private var blockedSends: [QueuedSend] = []
    @exclusivity(unchecked) private var blockedSendsHead = 0
    /// True while reading is paused because answers are piling up unsent.
    @exclusivity(unchecked) private var pausedForBackpressure = false
    @exclusivity(unchecked) private var deadlineTimer: LoopTimer?
    @exclusivity(unchecked) private var armedDeadline = UInt64.max
    @exclusivity(unchecked) private var keepaliveTimer: LoopTimer?
    @exclusivity(unchecked) private var livenessTimer: LoopTimer?
    @exclusivity(unchecked) private var lastReceived: UInt64
    /// Milliseconds between liveness checks.
    @exclusivity(unchecked) private var livenessPeriod: UInt64 = 0
    private let openedAt: UInt64

    /// Starts speaking efro.rpc over `connection`: writes the handshake at
    /// once and starts reading (the connection's ``Connection/onRead`` and
    /// ``Connection/onClose`` now belong to the endpoint).
    public init(connection: Connection, configuration: Configuration = Configuration(),
                label: String? = nil, logger: Logger? = nil) {
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
        let info = PeerInfo(keepaliveInterval: configuration.keepaliveInterval.seconds)
        do {
            try connection.write(info.handshakeBytes)
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

    // MARK: Sending

    /// Sends `payload` as a message and calls `completion` (on the loop)
    /// with a copy of the response, or the error that ended the call.
    /// - Parameters:
    ///   - timeout: defaults to ``Configuration/messageTimeout``.
    ///   - closeOnError: when the call fails (timeout, transport), close the
    ///     whole endpoint, as the reference does by default.
    /// Errors known at once (closed endpoint, payload too big for a protocol-1
    /// peer, every id in flight) are reported through `completion` before
    /// this returns.
    public func send(_ payload: UnsafeRawBufferPointer, timeout: Duration? = nil, closeOnError: Bool = true,
                     completion: @escaping (Result<[UInt8], RPCError>) -> Void) {
        startCall(payload, timeout: timeout, closeOnError: closeOnError, completion: .copied(completion))
    }

    /// Sends `payload`; see ``send(_:timeout:closeOnError:completion:)-(UnsafeRawBufferPointer,_,_,_)``.
    public func send(_ payload: [UInt8], timeout: Duration? = nil, closeOnError: Bool = true,
                     completion: @escaping (Result<[UInt8], RPCError>) -> Void) {
        payload.withUnsafeBytes {
            startCall($0, timeout: timeout, closeOnError: closeOnError, completion: .copied(completion))
        }
    }

    /// Receives the outcome of every ``send(_:tag:timeout:closeOnError:)``:
    /// the caller's tag and the response (a view valid only during the call)
    /// or the error. Loop-bound. Set it once; no closure is created per call,
    /// so this path allocates nothing per round trip.
    public var onTaggedResponse: ((UInt64, Result<UnsafeRawBufferPointer, RPCError>) -> Void)? {
        get { checkLoop("RPCEndpoint.onTaggedResponse"); return _onTaggedResponse }
        set { checkLoop("RPCEndpoint.onTaggedResponse"); _onTaggedResponse = newValue }
    }
    @exclusivity(unchecked) private var _onTaggedResponse: ((UInt64, Result<UnsafeRawBufferPointer, RPCError>) -> Void)?

    func deliverTagged(_ tag: UInt64, _ result: Result<UnsafeRawBufferPointer, RPCError>) {
        if let handler = _onTaggedResponse {
            handler(tag, result)
        } else {
            logger.warning("a tagged call ended but no onTaggedResponse handler is set", metadata: ["rpc.tag": "\(tag)"])
        }
    }

    /// Sends `payload`; the response or error goes to ``onTaggedResponse``
    /// with `tag` (any value the caller chooses, e.g. an index into its own
    /// table). The allocation-free way to make calls. Errors known at once
    /// are delivered before this returns.
    public func send(_ payload: UnsafeRawBufferPointer, tag: UInt64, timeout: Duration? = nil,
                     closeOnError: Bool = true) {
        startCall(payload, timeout: timeout, closeOnError: closeOnError, completion: .tagged(tag))
    }

    /// Like ``send(_:timeout:closeOnError:completion:)-(UnsafeRawBufferPointer,_,_,_)``,
    /// but the response is a borrowed view, valid only during `completion`
    /// (no copy is made).
    public func send(_ payload: UnsafeRawBufferPointer, timeout: Duration? = nil, closeOnError: Bool = true,
                     borrowingResponse completion: @escaping (Result<UnsafeRawBufferPointer, RPCError>) -> Void) {
        startCall(payload, timeout: timeout, closeOnError: closeOnError, completion: .borrowed(completion))
    }

    func startCall(_ payload: UnsafeRawBufferPointer, timeout: Duration?, closeOnError: Bool,
                           completion: Completion) {
        checkLoop("RPCEndpoint.send")
        if completion.isAbandoned { return }
        if let reason = _closeReason {
            return completion.fail(on: self, .closed(endpoint: label, messageID: nil, reason: reason))
        }
        if payload.count > Wire.maximumPayload {
            return completion.fail(on: self, .payloadTooLarge(endpoint: label, payloadSize: payload.count))
        }
        let timeout = timeout ?? configuration.messageTimeout
        if payload.count > Wire.maximumShortPayload {
            guard let peer = _peerInfo else {
                // Whether the peer takes *_BIG packets is known only from its handshake.
                deferredSends.append(QueuedSend(payload: Array(payload), timeout: timeout,
                                                  closeOnError: closeOnError, completion: completion))
                return
            }
            if !peer.acceptsBigPayloads {
                return completion.fail(on: self, .peerTooOld(endpoint: label, payloadSize: payload.count,
                                                   peerProtocol: peer.protocolVersion))
            }
        }
        if case .async = completion {} else {
            let pending = connection.pendingWriteBytes
            let limit = configuration.maximumPendingWriteBytes
            if pending > 0 && pending + PacketWriter.frameSize(payloadCount: payload.count) > limit {
                return completion.fail(on: self, .sendBufferFull(endpoint: label, pendingBytes: pending, limit: limit))
            }
        }
        let now = eventLoop.now
        let deadline = now &+ timeout.roundedUpMilliseconds
        guard let id = calls.insert(PendingCall(completion: completion, timeout: timeout), deadline: deadline,
                                    closeOnError: closeOnError) else {
            return completion.fail(on: self, .tooManyInFlight(endpoint: label))
        }
        if case .async(let call) = completion { call.id = id }
        do {
            try writeFrame(isResponse: false, id: id, payload: payload)
        } catch {
            // The connection is closing under us; the close path reports it.
            _ = calls.remove(id)
            return completion.fail(on: self, .closed(endpoint: label, messageID: id, reason: _closeReason ?? .connectionFailed(error)))
        }
        if deadline < armedDeadline { armDeadlineTimer(now: now) }
    }

    /// Starts an async call, or queues it while the connection is not
    /// writable (or older async sends still wait), so an async sender faster
    /// than its peer is held back instead of growing the outgoing buffer.
    func startAsyncCall(_ payload: [UInt8], timeout: Duration?, closeOnError: Bool, call: AsyncCall) {
        checkLoop("RPCEndpoint.send")
        if call.isFinished { return }
        if !closing && (!connection.isWritable || blockedSendsHead < blockedSends.count) {
            blockedSends.append(QueuedSend(payload: payload, timeout: timeout, closeOnError: closeOnError,
                                           completion: .async(call)))
            return
        }
        payload.withUnsafeBytes {
            startCall($0, timeout: timeout, closeOnError: closeOnError, completion: .async(call))
        }
    }

    /// Starts waiting async sends while the connection stays writable.
    private func startBlockedSends() {
        while blockedSendsHead < blockedSends.count, connection.isWritable, !closing {
            let send = blockedSends[blockedSendsHead]
            blockedSends[blockedSendsHead].payload = [] // hold the caller's bytes no longer than needed
            blockedSendsHead += 1
            send.payload.withUnsafeBytes {
                startCall($0, timeout: send.timeout, closeOnError: send.closeOnError, completion: send.completion)
            }
        }
        if blockedSendsHead == blockedSends.count {
            blockedSends.removeAll(keepingCapacity: blockedSends.count <= 64)
            blockedSendsHead = 0
        }
    }

    private func writabilityChanged(_ writable: Bool) {
        if writable {
            if pausedForBackpressure {
                pausedForBackpressure = false
                // The peer's silence while we were not reading does not count.
                lastReceived = eventLoop.now
                connection.resumeReading()
            }
            startBlockedSends()
        }
        _onWritabilityChanged?(writable)
    }

    @inline(__always)
    private func writeFrame(isResponse: Bool, id: UInt16, payload: UnsafeRawBufferPointer) throws(ConnectionError) {
        let header = PacketWriter.header(isResponse: isResponse, id: id, payloadCount: payload.count)
        try connection.write(header: header.bits, headerCount: header.count, payload: payload)
    }

    private func armDeadlineTimer(now: UInt64) {
        guard let earliest = calls.earliestDeadline else { return }
        if deadlineTimer == nil { deadlineTimer = eventLoop.makeTimer { [unowned self] in self.expireCalls() } }
        armedDeadline = earliest
        deadlineTimer!.start(after: .milliseconds(Int64(earliest > now ? earliest - now : 0)))
    }

    private func expireCalls() {
        armedDeadline = .max
        let now = eventLoop.now
        while let id = calls.popExpired(now: now), let (call, closeOnError) = calls.remove(id) {
            let error = RPCError.timedOut(endpoint: label, messageID: id, timeout: call.timeout)
            logger.debug("message timed out", metadata: ["rpc.id": "\(id)"])
            call.completion.fail(on: self, error)
            if closeOnError { close(reason: .callFailed(error)) }
            if closing { return }
        }
        if !closing { armDeadlineTimer(now: now) }
    }

    // MARK: Receiving

    private func handleReadable(_ bytes: UnsafeRawBufferPointer) -> Int {
        lastReceived = eventLoop.now
        if closing { return bytes.count }
        // Backpressure: take no new message while answers pile up unsent; the
        // peer's bytes wait in the kernel (and its sends back up) until the
        // connection drains below its low-water mark.
        if !connection.isWritable, parser.isAtPacketBoundary,
           bytes[0] == PacketType.message.rawValue || bytes[0] == PacketType.messageBig.rawValue {
            pausedForBackpressure = true
            connection.pauseReading()
            return 0
        }
        parser.inlinePayloadLimit = connection.readBufferCapacity - Wire.bigHeaderSize
        do {
            return try parser.parse(bytes) { packet in self.dispatch(packet) }
        } catch {
            logger.error("protocol violation; closing", metadata: [
                "rpc.peer": "\(connection.remoteAddress.map { "\($0)" } ?? connection.label)",
                "rpc.violation": "\(error)",
            ])
            close(reason: .protocolViolation(error))
            return bytes.count
        }
    }

    @inline(__always)
    private func dispatch(_ packet: ParsedPacket) -> Bool {
        switch packet {
        case .message(let id, let payload):
            handleMessage(id: id, payload: payload)
            // Stop after it if its answer made the connection unwritable.
            return !closing && connection.isWritable
        case .response(let id, let payload):
            if let (call, _) = calls.remove(id) {
                call.completion.succeed(on: self, payload)
            } else {
                logger.debug("response for an unknown or expired message id; ignored", metadata: ["rpc.id": "\(id)"])
            }
        case .keepalive:
            break
        case .handshake(let info):
            _peerInfo = info
            logger.debug("peer handshake", metadata: ["rpc.peer-info": "\(info)"])
            sendDeferred()
        }
        return !closing
    }

    private func handleMessage(id: UInt16, payload: UnsafeRawBufferPointer) {
        if let callbackHandler {
            // Responders are reused when the handler kept no reference, so the
            // synchronous answer path allocates nothing per message.
            var responder = spareResponder.take() ?? RPCResponder(endpoint: self, messageID: id)
            responder.reuse(for: id)
            handlingDepth += 1
            do {
                // Borrowed, not retained: see `callbackHandler` and `retiredHandlers`.
                try callbackHandler._withUnsafeGuaranteedRef { try $0.body(payload, responder) }
            } catch {
                responder.abandon()
                logger.error("message handler failed; no response sent", metadata: [
                    "rpc.id": "\(id)", "rpc.error": "\(error)",
                ])
            }
            if isKnownUniquelyReferenced(&responder) {
                if !responder.isAnswered && !closing {
                    logger.error("message handler dropped its responder without answering; no response sent",
                                 metadata: ["rpc.id": "\(id)"])
                }
                responder.abandon()
                if !closing { spareResponder = consume responder }
            }
            handlingDepth -= 1
            if handlingDepth == 0 && !retiredHandlers.isEmpty { retiredHandlers.removeAll() }
            return
        }
        switch handler {
        case .callback?:
            break // handled above
        case .async(let handle)?:
            runAsyncHandler(handle, id: id, request: Array(payload))
        case nil:
            if waitingMessages.count < Self.maximumWaitingMessages {
                waitingMessages.append((id, Array(payload)))
            } else {
                logger.warning("message received but no onMessage handler is set and 1024 are waiting; no response sent",
                               metadata: ["rpc.id": "\(id)"])
            }
        }
    }

    /// Runs an async handler in a task on the loop; each message gets its own
    /// task, so a slow answer holds up nothing else.
    private func runAsyncHandler(_ handle: @escaping @Sendable ([UInt8]) async throws -> [UInt8],
                                 id: UInt16, request: [UInt8]) {
        let key = nextHandlerTaskKey
        nextHandlerTaskKey &+= 1
        // The task cannot start before this returns (it is queued on this loop),
        // so it is registered before it can unregister itself. It answers
        // through respond(to:with:) directly: no RPCResponder object is needed,
        // as the task's end is the only way the answer can go missing.
        handlerTasks[key] = Task(executorPreference: loop) {
            defer { self.handlerTasks[key] = nil }
            do {
                let response = try await handle(request)
                let sent = response.withUnsafeBytes { raw in
                    Result { () throws(RPCResponseError) in try self.respond(to: id, with: raw) }
                }
                if case .failure(let error) = sent {
                    self.logger.debug("answer not sent", metadata: ["rpc.id": "\(id)", "rpc.error": "\(error)"])
                }
            } catch {
                self.logger.error("message handler failed; no response sent", metadata: [
                    "rpc.id": "\(id)", "rpc.error": "\(error)",
                ])
            }
        }
    }

    /// Installs an async handler (on the loop) and hands it any waiting messages.
    func installAsyncHandler(_ handle: @escaping @Sendable ([UInt8]) async throws -> [UInt8]) {
        setHandler(.async(handle))
        deliverWaitingMessages()
    }

    private func deliverWaitingMessages() {
        guard handler != nil, !waitingMessages.isEmpty else { return }
        let waiting = waitingMessages
        waitingMessages.removeAll()
        for message in waiting where !closing {
            message.payload.withUnsafeBytes { handleMessage(id: message.id, payload: $0) }
        }
    }

    private func sendDeferred() {
        guard !deferredSends.isEmpty else { return }
        let pending = deferredSends
        deferredSends.removeAll()
        for send in pending {
            send.payload.withUnsafeBytes {
                startCall($0, timeout: send.timeout, closeOnError: send.closeOnError, completion: send.completion)
            }
        }
    }

    /// Writes the answer to message `id` (used by ``RPCResponder``).
    @inline(__always)
    func respond(to id: UInt16, with payload: UnsafeRawBufferPointer) throws(RPCResponseError) {
        checkLoop("RPCResponder.respond")
        guard !closing else { throw .closed(endpoint: label, messageID: id) }
        if payload.count > Wire.maximumShortPayload, let peer = _peerInfo, !peer.acceptsBigPayloads {
            throw .peerTooOld(endpoint: label, messageID: id, payloadSize: payload.count,
                              peerProtocol: peer.protocolVersion)
        }
        do {
            try writeFrame(isResponse: true, id: id, payload: payload)
        } catch {
            throw .closed(endpoint: label, messageID: id)
        }
    }

    /// `isClosing` without the thread check, for deinit paths.
    var isClosingUnchecked: Bool { closing }

    /// Registers a waiter for the end of the endpoint (on the loop).
    func addCloseWaiter(_ waiter: CheckedContinuation<RPCCloseReason, Never>) {
        if _isClosed { waiter.resume(returning: _closeReason ?? .local) } else { closeWaiters.append(waiter) }
    }

    /// Abandons an async call that was cancelled (on the loop): frees its id
    /// (a late response is then ignored) without closing the endpoint.
    func cancelCall(_ call: AsyncCall) {
        guard !call.isFinished else { return }
        if let id = call.id { _ = calls.remove(id) }
        deferredSends.removeAll { if case .async(let c) = $0.completion { return c === call } else { return false } }
        call.finish(.failure(CancellationError()))
    }

    // MARK: Liveness

    private func checkLiveness() {
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

    private func close(reason: RPCCloseReason) {
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

    private func connectionDidClose(_ error: ConnectionError?) {
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

/// Answers one incoming message, exactly once, now or later (on the loop thread).
///
/// Dropping it without answering sends no response, like a failing handler in
/// the reference; it is logged so that the silent peer timeout can be traced.
public final class RPCResponder {
    /// The incoming message's id.
    // @exclusivity(unchecked): this state is touched only on the loop thread and never
    // by overlapping accesses; the dynamic checks cost ~40% of the instructions per call.
    @exclusivity(unchecked) public private(set) var messageID: UInt16
    /// The endpoint the message came in on.
    public let endpoint: RPCEndpoint
    @exclusivity(unchecked) private var answered = false

    init(endpoint: RPCEndpoint, messageID: UInt16) {
        self.endpoint = endpoint
        self.messageID = messageID
    }

    deinit {
        if !answered && !endpoint.isClosingUnchecked {
            endpoint.logger.error("message handler dropped its responder without answering; no response sent",
                                  metadata: ["rpc.id": "\(messageID)"])
        }
    }

    /// True once answered (or abandoned by a failing handler).
    public var isAnswered: Bool { answered }

    /// Sends `payload` as the response.
    /// - Throws: ``RPCResponseError`` when already answered, when the
    ///   endpoint closed, or when the payload is too big for a protocol-1 peer.
    public func respond(_ payload: UnsafeRawBufferPointer) throws(RPCResponseError) {
        guard !answered else { throw .alreadyAnswered(endpoint: endpoint.label, messageID: messageID) }
        answered = true
        try endpoint.respond(to: messageID, with: payload)
    }

    /// Sends `payload` as the response; see ``respond(_:)-(UnsafeRawBufferPointer)``.
    public func respond(_ payload: [UInt8]) throws(RPCResponseError) {
        guard !answered else { throw .alreadyAnswered(endpoint: endpoint.label, messageID: messageID) }
        answered = true
        let result = payload.withUnsafeBytes { raw in
            Result { () throws(RPCResponseError) in try endpoint.respond(to: messageID, with: raw) }
        }
        try result.get()
    }

    /// Marks the message as failed (no response will be sent).
    func abandon() { answered = true }

    /// Readies a pooled responder for message `id`.
    func reuse(for id: UInt16) {
        messageID = id
        answered = false
    }
}

extension Duration {
    /// The duration in seconds as a Double.
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}
