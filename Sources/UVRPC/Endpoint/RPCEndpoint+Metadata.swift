import Logging
import UVLoop

/// Call metadata and deadlines (extension `meta`; see Docs/PROTOCOL.md).
///
/// Receiving: a METADATA packet is held by its id until that message is
/// complete (a chunked one's chunks may interleave with other packets), then
/// travels with its request (``IncomingCall``). An async handler whose call
/// has a deadline is cancelled when it passes (one timer per endpoint,
/// ``HandlerDeadlines``), and calls it makes inherit the deadline.
///
/// Sending: a call with metadata, or with a deadline to pass on (a timeout
/// the caller chose, or one inherited from the handler it runs in), writes
/// METADATA right before its MESSAGE (or MESSAGE_START). To a peer without
/// the extension nothing extra is sent.
extension RPCEndpoint {
    /// What an outgoing call carries besides its payload.
    struct OutgoingMetadata {
        var entries: RPCMetadata
        /// Whether the call's timeout travels as its deadline.
        var sendsDeadline: Bool
    }

    // MARK: Receiving

    package func receivedMetadata(id: UInt16, entries: UnsafeRawBufferPointer) -> Bool {
        // One waits per message, and only while the message is arriving: at most
        // one whole message being read plus the chunked transfers in progress.
        if pendingMetadata[id] != nil || pendingMetadata.count > Wire.maximumTransfers {
            protocolViolated(.unexpectedMetadata(id: id, waiting: pendingMetadata.count))
            return false
        }
        switch RPCMetadata.decode(entries) {
        case .failure(let failure):
            protocolViolated(.malformedMetadata(id: id, failure.why))
            return false
        case .success(let (metadata, micros)):
            var deadline: ContinuousClock.Instant?
            var loopDeadline: UInt64?
            if let micros {
                deadline = ContinuousClock.now.advanced(by: .microseconds(Int64(clamping: micros)))
                loopDeadline = loopNow &+ (micros / 1000) // a deadline passes at the millisecond it falls in
            }
            pendingMetadata[id] = IncomingCall(metadata: metadata, deadline: deadline, loopDeadline: loopDeadline)
        }
        return countPacket()
    }

    /// The metadata that came for message `id`, taken (nil when none did).
    /// Out of line: the per-message path only checks that none waits.
    @inline(never)
    func takePendingMetadata(_ id: UInt16) -> IncomingCall? {
        pendingMetadata.removeValue(forKey: id)
    }

    // MARK: Sending

    /// The METADATA entries of an outgoing call, or why it cannot be sent;
    /// nil when nothing is to be written (no metadata, or a peer without the
    /// extension: then the entries are dropped, logged at debug level).
    func encodeMetadata(_ metadata: OutgoingMetadata?, timeout: Duration) -> Result<[UInt8]?, RPCError> {
        guard let metadata else { return .success(nil) }
        guard agreed.contains(.metadata) else {
            if !metadata.entries.isEmpty {
                // The same bounds whatever the peer: a call does not fail or not by the connection it meets.
                if case .failure(let problem) = metadata.entries.encoded(deadline: nil) {
                    return .failure(.invalidMetadata(endpoint: label, problem: problem))
                }
                logger.debug("call metadata not sent: the peer does not take it (extension meta)",
                             metadata: ["rpc.metadata-keys": "\(metadata.entries.map(\.key))"])
            }
            return .success(nil)
        }
        if metadata.entries.isEmpty && !metadata.sendsDeadline { return .success(nil) }
        switch metadata.entries.encoded(deadline: metadata.sendsDeadline ? timeout : nil) {
        case .success(let bytes): return .success(bytes)
        case .failure(let problem): return .failure(.invalidMetadata(endpoint: label, problem: problem))
        }
    }

    /// Writes METADATA for message `id`.
    func writeMetadata(id: UInt16, _ entries: [UInt8]) throws(ConnectionError) {
        let header = PacketWriter.shortHeader(.metadata, id: id, length: entries.count)
        let result = entries.withUnsafeBytes { raw in
            Result { () throws(ConnectionError) in try connection.write(header: header, headerCount: 5, payload: raw) }
        }
        try result.get()
    }

    // MARK: Handler deadlines

    /// An async handler (`sequence`, in `worker`) starts with a deadline at
    /// loop time `at`: arms the timer if it is the earliest.
    func watchHandlerDeadline(sequence: UInt64, at: UInt64, worker: UInt64) {
        if handlerDeadlines.add(sequence: sequence, at: at, worker: worker) { armHandlerDeadlineTimer() }
    }

    private func armHandlerDeadlineTimer() {
        guard !closing, let delay = handlerDeadlines.arm(now: loopNow) else { return }
        if handlerDeadlineTimer == nil {
            handlerDeadlineTimer = eventLoop.makeTimer { [unowned self] in self.expireHandlers() }
        }
        handlerDeadlineTimer!.start(after: .milliseconds(Int64(delay)))
    }

    /// The earliest handler deadline passed: cancels the handlers past theirs.
    private func expireHandlers() {
        for worker in handlerDeadlines.expire(now: loopNow) {
            logger.debug("a message handler passed its caller's deadline; cancelled")
            workers.tasks[worker]?.cancel()
        }
        armHandlerDeadlineTimer()
    }
}

extension RPCEndpoint {
    /// What came with callback request `token`: the running handler's
    /// message, or a kept request's (nothing when it was answered since).
    func incomingCall(token: UInt64) -> IncomingCall {
        checkLoop("RPCRequest.metadata")
        if answers.isCurrent(token) { return currentIncomingCall ?? .none }
        return answers.keptCall(token: token) ?? .none
    }
}
