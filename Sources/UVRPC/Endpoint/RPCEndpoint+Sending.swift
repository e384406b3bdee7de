import Logging
import UVLoop

/// Outgoing calls: the send variants, queued and blocked sends, deadlines.
extension RPCEndpoint {
    /// How a call's completion wants its response.
    enum Completion {
        case copied((Result<[UInt8], RPCError>) -> Void)
        case borrowed((Result<UnsafeRawBufferPointer, RPCError>) -> Void)
        case async(AsyncCall)
        /// Goes to the endpoint's ``RPCEndpoint/onTaggedResponse`` with this tag.
        case tagged(UInt64)

        func fail(on endpoint: RPCEndpoint, _ error: RPCError) {
            endpoint.metrics.callFailed(error)
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

    /// What the call table keeps per outgoing call.
    struct PendingCall {
        var completion: Completion
        var timeout: Duration
        /// When it was written (``LoopMetrics/callStartTime``; 0 when calls are not timed).
        var startedAt: UInt64
    }

    /// Takes call `id` out of the in-flight table, counting its end; nil if it is not in flight.
    @inline(__always)
    func removeCall(_ id: UInt16) -> PendingCall? {
        guard let removed = calls.remove(id) else { return nil }
        metrics.callEnded(startedAt: removed.startedAt)
        return removed
    }

    /// A send that waits before it is written: a big one for the peer's
    /// handshake (to learn whether it takes *_BIG packets), or an async one
    /// for the connection to become writable.
    struct QueuedSend {
        var payload: [UInt8]
        var timeout: Duration?
        var closeOnError: Bool
        var completion: Completion
        var metadata: OutgoingMetadata? = nil
        /// Until when (loop milliseconds) a send waiting for the peer's handshake may wait.
        var deadline: UInt64? = nil
    }

    /// Sends `payload` as a message and calls `completion` (on the loop)
    /// with a copy of the response, or the error that ended the call (a
    /// borrowed payload, without a copy of it: for this package's tools).
    /// - Parameters:
    ///   - payload: the message; copied before this returns.
    ///   - timeout: defaults to ``Configuration/messageTimeout``.
    ///   - closeOnError: when the call fails (timeout, transport), close the
    ///     whole endpoint, as the reference does by default.
    ///   - completion: called once, on the loop, with the response or the error.
    /// Errors known at once (closed endpoint, payload too big for a protocol-1
    /// peer, every id in flight) are reported through `completion` before
    /// this returns.
    package func send(_ payload: UnsafeRawBufferPointer, timeout: Duration? = nil, closeOnError: Bool = true,
                      completion: @escaping (Result<[UInt8], RPCError>) -> Void) {
        startCall(payload, timeout: timeout, closeOnError: closeOnError, completion: .copied(completion))
    }

    /// Sends `payload` as a message and calls `completion` once, on the
    /// loop, with the response or the ``RPCError`` that ended the call.
    /// Loop-bound: the callback layer (from a task, use
    /// ``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)``).
    /// - Parameters:
    ///   - payload: the message.
    ///   - timeout: defaults to ``Configuration/messageTimeout``.
    ///   - closeOnError: when the call fails (timeout, transport), close the
    ///     whole endpoint, as the reference does by default.
    ///   - completion: called once, on the loop, with the response or the error.
    /// Errors known at once (closed endpoint, payload over the peer's limit,
    /// every id in flight) are reported through `completion` before this returns.
    public func send(_ payload: [UInt8], timeout: Duration? = nil, closeOnError: Bool = true,
                     completion: @escaping (Result<[UInt8], RPCError>) -> Void) {
        payload.withUnsafeBytes {
            startCall($0, timeout: timeout, closeOnError: closeOnError, completion: .copied(completion), owned: payload)
        }
    }

    /// Receives the outcome of every ``send(_:tag:timeout:closeOnError:)``:
    /// the caller's tag and the response (a view valid only during the call)
    /// or the error. Loop-bound. Set it once; no closure is created per call,
    /// so this path allocates nothing per round trip.
    public var onTaggedResponse: ((UInt64, Result<UnsafeRawBufferPointer, RPCError>) -> Void)? {
        get { checkLoop("RPCEndpoint.onTaggedResponse"); return _onTaggedResponse?.body }
        set {
            checkLoop("RPCEndpoint.onTaggedResponse")
            replaceTaggedHandler(newValue.map(TaggedResponseHandler.init))
        }
    }

    func deliverTagged(_ tag: UInt64, _ result: Result<UnsafeRawBufferPointer, RPCError>) {
        if let handler = _onTaggedResponse.map(Unmanaged.passUnretained) {
            // Safe: `_onTaggedResponse` holds the box, and a box replaced during
            // the call waits in `retiredTaggedHandlers` until the call returned.
            taggedDeliveryDepth += 1
            handler._withUnsafeGuaranteedRef { $0.body(tag, result) }
            taggedDeliveryDepth -= 1
            if taggedDeliveryDepth == 0 && !retiredTaggedHandlers.isEmpty { retiredTaggedHandlers.removeAll() }
        } else {
            logger.warning("a tagged call ended but no onTaggedResponse handler is set", metadata: ["rpc.tag": "\(tag)"])
        }
    }

    /// The advanced, allocation-free way to call: sends `payload` (a
    /// borrowed view, not copied unless it must wait) and delivers the
    /// response or error to ``onTaggedResponse`` with `tag` (any value the
    /// caller chooses, e.g. an index into its own table). No closure is made
    /// per call. Errors known at once are delivered before this returns: a
    /// response handler that sends again after a failure should do so in a
    /// later job (`EventLoop.execute`) or stop, or on a closed endpoint it
    /// recurses once per call.
    public func send(_ payload: UnsafeRawBufferPointer, tag: UInt64, timeout: Duration? = nil,
                     closeOnError: Bool = true) {
        startCall(payload, timeout: timeout, closeOnError: closeOnError, completion: .tagged(tag))
    }

    /// Sends `payload`; see ``send(_:tag:timeout:closeOnError:)``.
    /// A big payload sent in chunks is kept, not copied: with the borrowed
    /// response, a big call costs no copy on this side.
    package func send(_ payload: [UInt8], tag: UInt64, timeout: Duration? = nil, closeOnError: Bool = true) {
        payload.withUnsafeBytes {
            startCall($0, timeout: timeout, closeOnError: closeOnError, completion: .tagged(tag), owned: payload)
        }
    }

    /// Like ``send(_:timeout:closeOnError:completion:)``, but the response
    /// is a borrowed view, valid only during `completion` (no copy is made).
    package func send(_ payload: UnsafeRawBufferPointer, timeout: Duration? = nil, closeOnError: Bool = true,
                     borrowingResponse completion: @escaping (Result<UnsafeRawBufferPointer, RPCError>) -> Void) {
        startCall(payload, timeout: timeout, closeOnError: closeOnError, completion: .borrowed(completion))
    }

    /// Starts a call; `owned`, when given, holds the same bytes as `payload`
    /// (a chunked transfer keeps it instead of a copy).
    func startCall(_ payload: UnsafeRawBufferPointer, timeout: Duration?, closeOnError: Bool,
                   completion: Completion, owned: [UInt8]? = nil, metadata: OutgoingMetadata? = nil) {
        checkLoop("RPCEndpoint.send")
        if completion.isAbandoned { return }
        if let reason = _closeReason {
            return completion.fail(on: self, .closed(endpoint: label, messageID: nil, reason: reason))
        }
        if _peerIsGoingAway { return completion.fail(on: self, .peerGoingAway(endpoint: label)) }
        if payload.count > Wire.maximumPayload {
            return completion.fail(on: self, .payloadTooLarge(endpoint: label, payloadSize: payload.count))
        }
        if payload.count > peerPayloadLimit {
            return completion.fail(on: self, .overPeerLimit(endpoint: label, payloadSize: payload.count, peerLimit: peerPayloadLimit))
        }
        let timeoutMilliseconds = timeout?.roundedUpMilliseconds ?? messageTimeoutMilliseconds
        let timeout = timeout ?? configuration.messageTimeout
        if metadata != nil && _peerInfo == nil {
            // Whether the peer takes metadata is known only from its handshake.
            return deferUntilHandshake(QueuedSend(payload: Array(payload), timeout: timeout, closeOnError: closeOnError,
                                                  completion: completion, metadata: metadata),
                                       deadline: loopNow &+ timeoutMilliseconds)
        }
        if payload.count > Wire.maximumShortPayload {
            guard let peer = _peerInfo else {
                // Whether the peer takes *_BIG packets is known only from its handshake.
                deferUntilHandshake(QueuedSend(payload: Array(payload), timeout: timeout,
                                               closeOnError: closeOnError, completion: completion),
                                    deadline: loopNow &+ timeoutMilliseconds)
                return
            }
            if !peer.acceptsBigPayloads {
                return completion.fail(on: self, .peerTooOld(endpoint: label, payloadSize: payload.count,
                                                   peerProtocol: peer.protocolVersion))
            }
        }
        if case .async = completion {} else {
            // Chunked transfers wait apart from the connection's bytes: a small
            // call is held back by neither the other's bytes.
            let pending = sendsChunked(payload.count) ? outgoing.unsentBytes : connection.pendingWriteBytes
            let limit = configuration.maximumPendingWriteBytes
            if pending > 0 && pending + PacketWriter.frameSize(payloadCount: payload.count) > limit {
                return completion.fail(on: self, .sendBufferFull(endpoint: label, pendingBytes: pending, limit: limit))
            }
        }
        var metadataEntries: [UInt8]?
        if metadata != nil {
            switch encodeMetadata(metadata, timeout: timeout) {
            case .success(let entries): metadataEntries = entries
            case .failure(let error): return completion.fail(on: self, error)
            }
        }
        let now = loopNow
        let deadline = now &+ timeoutMilliseconds
        guard let id = calls.insert(PendingCall(completion: completion, timeout: timeout, startedAt: metrics.callStartTime), deadline: deadline,
                                    closeOnError: closeOnError) else {
            return completion.fail(on: self, .tooManyInFlight(endpoint: label))
        }
        if case .async(let call) = completion { call.id = id }
        if sendsChunked(payload.count) {
            startTransfer(isResponse: false, id: id, payload: payload, owned: owned, metadata: metadataEntries,
                          metadataDeadlineSince: metadataEntries != nil && metadata!.sendsDeadline ? now : nil)
        } else { do {
            if let metadataEntries { try writeMetadata(id: id, metadataEntries) }
            try writeFrame(isResponse: false, id: id, payload: payload)
        } catch {
            // The connection is closing under us; the close path reports it.
            _ = calls.remove(id) // never written: not counted as sent, nor as ended
            return completion.fail(on: self, .closed(endpoint: label, messageID: nil, reason: _closeReason ?? .connectionFailed(error)))
        } }
        if calls.needsEarlierTimer(for: deadline) { armDeadlineTimer(now: now) }
    }

    /// Spare async calls kept at most per endpoint.
    static let maximumSpareCalls = 256

    /// A call for a caller on the loop: one kept from an earlier call, or a new one. Loop-bound.
    func takeSpareCall() -> AsyncCall {
        spareCalls.popLast() ?? AsyncCall()
    }

    /// Keeps a finished call for the next caller on the loop, when nothing
    /// else references it any more (a canceller's job may still hold it:
    /// then it is left to be freed). Loop-bound.
    func keepSpareCall(_ call: consuming AsyncCall) {
        var call = call
        guard spareCalls.count < Self.maximumSpareCalls, isKnownUniquelyReferenced(&call) else { return }
        call.reset()
        spareCalls.append(call)
    }

    /// Starts an async call, or queues it while the connection is not
    /// writable (or older async sends still wait), so an async sender faster
    /// than its peer is held back instead of growing the outgoing buffer.
    func startAsyncCall(_ payload: [UInt8], timeout: Duration?, closeOnError: Bool, call: AsyncCall,
                        metadata: OutgoingMetadata? = nil) {
        checkLoop("RPCEndpoint.send")
        if call.isFinished { return }
        if !closing && (!connection.isWritable || calls.hasBlockedSends) {
            calls.block(QueuedSend(payload: payload, timeout: timeout, closeOnError: closeOnError, completion: .async(call),
                                   metadata: metadata))
            return
        }
        payload.withUnsafeBytes {
            startCall($0, timeout: timeout, closeOnError: closeOnError, completion: .async(call), owned: payload,
                      metadata: metadata)
        }
    }

    /// Starts waiting async sends while the connection stays writable.
    func startBlockedSends() {
        while calls.hasBlockedSends, connection.isWritable, !closing, let send = calls.takeBlocked() {
            send.payload.withUnsafeBytes {
                startCall($0, timeout: send.timeout, closeOnError: send.closeOnError, completion: send.completion,
                          owned: send.payload, metadata: send.metadata)
            }
        }
    }

    func writabilityChanged(_ writable: Bool) {
        if writable {
            if pausedForBackpressure && !readingBackpressured { resumeReadingAfterBackpressure() }
            startBlockedSends()
        }
        _onWritabilityChanged?(writable)
    }

    /// Whether to take no new incoming message: answers pile up unsent (in
    /// the connection, or as chunked transfers waiting to be written).
    @inline(__always)
    var readingBackpressured: Bool {
        !connection.isWritable || outgoing.unsentBytes > configuration.maximumPendingWriteBytes
    }

    func resumeReadingAfterBackpressure() {
        pausedForBackpressure = false
        // The peer's silence while we were not reading does not count, nor do
        // its payloads and acknowledgements that could not move meanwhile.
        let now = loopNow
        liveness.received(at: now)
        parser.restartProgressClocks(now: now)
        outgoing.restartClocks(now: now)
        connection.resumeReading()
    }

    @inline(__always)
    func writeFrame(isResponse: Bool, id: UInt16, payload: UnsafeRawBufferPointer) throws(ConnectionError) {
        let header = PacketWriter.header(isResponse: isResponse, id: id, payloadCount: payload.count)
        if payload.count > Wire.maximumShortPayload, let payloadBudget {
            try writeChargedFrame(header: header, payload: payload, budget: payloadBudget)
        } else {
            try connection.write(header: header.bits, headerCount: header.count, payload: payload)
        }
        if isResponse { metrics.responsesSent &+= 1 } else { metrics.callsSent &+= 1 }
    }

    /// Writes a whole big frame (a peer without chunking) whose payload counts
    /// against the shared budget until it reached the socket.
    @inline(never)
    func writeChargedFrame(header: (bits: UInt64, count: Int), payload: UnsafeRawBufferPointer,
                           budget: MemoryBudget) throws(ConnectionError) {
        let count = payload.count
        try connection.write(header: header.bits, headerCount: header.count, payload: UnsafeRawBufferPointer(start: nil, count: 0))
        budget.charge(count)
        do {
            try connection.write(payload) { _ in budget.release(count) } // written or failed: no longer held
        } catch {
            budget.release(count)
            throw error
        }
    }

    /// Arms the deadline timer for the earliest deadline of `calls`, if any.
    func armDeadlineTimer(now: UInt64) {
        guard let delay = calls.armEarliest(now: now) else { return }
        if deadlineTimer == nil { deadlineTimer = eventLoop.makeTimer { [unowned self] in self.expireCalls() } }
        deadlineTimer!.start(after: .milliseconds(Int64(delay)))
    }

    func expireCalls() {
        calls.deadlineTimerFired()
        let now = loopNow
        while let (id, closeOnError) = calls.nextExpired(now: now) {
            // A call that keeps the endpoint open tells the peer it gave up (extension `cancel`).
            guard let call = closeOnError ? removeCall(id) : cancelOutgoingCall(id) else { break }
            let error = RPCError.timedOut(endpoint: label, messageID: id, timeout: call.timeout)
            logger.debug("message timed out", metadata: ["rpc.id": "\(id)"])
            call.completion.fail(on: self, error)
            if closeOnError { close(reason: .callFailed(error)) }
            if closing { return }
        }
        closeIfDrained()
        if !closing { armDeadlineTimer(now: now) }
    }
}
