import CLibUV

/// Writes: queueing, the per-turn flush, completions, the write timeout.
extension Connection {

    /// Queues `bytes` to be written (copied; the caller may reuse its buffer
    /// at once). They are flushed at the end of this loop turn, except on a
    /// connection with nothing queued and no outgoing buffer yet (new, or
    /// idle since ``releaseIdleBuffers()``): there, without a completion,
    /// the socket is offered them at once, so a connection that writes a
    /// little and goes idle never allocates an outgoing buffer.
    /// - Parameters:
    ///   - bytes: copied before this returns (or written at once).
    ///   - completion: called once the bytes reached the socket, or
    ///     with the error that kept them from it.
    /// - Throws: ``ConnectionError/closed(connection:)`` when the connection
    ///   is closing or closed (the bytes are not queued).
    public func write(_ bytes: UnsafeRawBufferPointer,
                      completion: ((Result<Void, ConnectionError>) -> Void)? = nil) throws(ConnectionError) {
        preconditionInEventLoop("Connection.write(_:completion:)")
        guard state == .open else { throw closeReason ?? .closed(connection: label) }
        let direct = completion == nil ? writeDirectlyIfUnbuffered(bytes) : 0
        pending.append(UnsafeRawBufferPointer(rebasing: bytes[direct...]))
        didQueue(bytes.count - direct, completion: completion)
    }

    /// Offers `bytes` to the socket at once when nothing is queued and there
    /// is no outgoing buffer; returns how many it took.
    func writeDirectlyIfUnbuffered(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard !pending.hasStorage, !writeInFlight, !bytes.isEmpty, tls == nil else { return 0 }
        // Safe: uv_try_write only reads the buffer, and only during this call.
        var buf = uv_buf_t(base: UnsafeMutablePointer(mutating: bytes.baseAddress!.assumingMemoryBound(to: CChar.self)),
                           len: bytes.count)
        let n = uv_try_write(uvStream, &buf, 1)
        guard n > 0 else { return 0 } // EAGAIN or an error: the flush path reports errors
        bytesQueued += UInt64(n)
        bytesWritten += UInt64(n)
        withLoop { $0.bytesWrittenTotal &+= UInt64(n) }
        return Int(n)
    }

    /// Queues `bytes` to be written; see ``write(_:completion:)-(UnsafeRawBufferPointer,_)``.
    public func write(_ bytes: [UInt8],
                      completion: ((Result<Void, ConnectionError>) -> Void)? = nil) throws(ConnectionError) {
        preconditionInEventLoop("Connection.write(_:completion:)")
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(ConnectionError) in try write(raw, completion: completion) }
        }
        try result.get()
    }

    /// Queues a packet of a framed protocol: the first `headerCount` (at most
    /// 8) bytes of `header` as they lie in memory (byte 0 is the lowest byte:
    /// build it with `UInt64(littleEndian:)` in mind), then `payload`; copied,
    /// like ``write(_:completion:)-(UnsafeRawBufferPointer,_)``, but in one step
    /// with no closure (the per-frame path of a protocol writer).
    ///
    /// Package-only: no thread check (the protocol layer calls it from code
    /// that runs on the loop by construction: its read path, or after its own
    /// check). Inlined into the caller: the common case (open, a flush already
    /// scheduled this turn, room in the buffer) is a copy and two counters.
    @inlinable @inline(__always)
    package func write(header: UInt64, headerCount: Int, payload: UnsafeRawBufferPointer) throws(ConnectionError) {
        if state == .open && flushScheduled && pending.hasRoom(for: payload.count &+ 8) {
            pending.appendInPlace(header: header, headerCount: headerCount, payload: payload)
            bytesQueued &+= UInt64(truncatingIfNeeded: headerCount &+ payload.count)
            if writable && Int(truncatingIfNeeded: bytesQueued &- bytesWritten) > options.writeHighWaterMark {
                becameUnwritable()
            }
            return
        }
        try writeFrameSlowly(header: header, headerCount: headerCount, payload: payload)
    }

    /// ``write(header:headerCount:payload:)`` when it needs more than the fast path.
    @usableFromInline
    func writeFrameSlowly(header: UInt64, headerCount: Int, payload: UnsafeRawBufferPointer) throws(ConnectionError) {
        guard state == .open else { throw closeReason ?? .closed(connection: label) }
        precondition(headerCount >= 0 && headerCount <= 8, "Connection.write(header:headerCount:payload:): headerCount \(headerCount) is not 0...8")
        pending.append(header: header, headerCount: headerCount, payload: payload)
        didQueue(headerCount + payload.count, completion: nil)
    }

    /// Flushes at the end of this loop turn (once, however often asked).
    @inline(__always)
    func scheduleFlush() {
        if !flushScheduled {
            flushScheduled = true
            withLoop { $0.pendingFlush.append(self) }
        }
    }

    /// The pending bytes went over the high-water mark.
    @usableFromInline
    func becameUnwritable() {
        writable = false
        onWritabilityChanged?(false)
    }

    @inline(__always)
    func didQueue(_ count: Int, completion: ((Result<Void, ConnectionError>) -> Void)?) {
        bytesQueued &+= UInt64(truncatingIfNeeded: count)
        if let completion { completions.append((bytesQueued, completion)) }
        let pendingNow = pendingWriteBytes
        scheduleFlush()
        if writable && pendingNow > options.writeHighWaterMark { becameUnwritable() }
    }

    /// Writes queued bytes now instead of at the end of the loop turn.
    public func flush() {
        preconditionInEventLoop("Connection.flush()")
        flushNow()
    }

    /// Called by the loop's per-turn hook.
    func flushScheduledWrites() {
        flushScheduled = false
        flushNow()
    }

    func flushNow() {
        // Between two flushes the pending bytes only grow, so their peak is seen here.
        let pendingNow = pendingWriteBytes
        if pendingNow > peakPending { peakPending = pendingNow }
        guard state == .open || state == .closing, !isHandleClosing else { return }
        if let tls { return flushTLS(tls) }
        if !writeInFlight && pending.readableCount > 0 {
            guard let took = writeToSocket(&pending) else { return }
            bytesWritten += UInt64(took)
        }
        writeProgressed()
    }

    /// Writes `buffer` (pending plaintext, or TLS ciphertext) to the socket:
    /// `uv_try_write` first; what the socket did not take goes to one
    /// `uv_write` from `inFlight`, swapped in (no copy). Returns how many
    /// bytes the socket took at once, or nil when the connection failed.
    func writeToSocket(_ buffer: inout OutgoingBuffer) -> Int? {
        var buf = uv_buf_t(base: buffer.readPointer, len: buffer.readableCount)
        let n = uv_try_write(uvStream, &buf, 1)
        if n > 0 {
            buffer.consume(Int(n))
            withLoop { $0.bytesWrittenTotal &+= UInt64(n) }
        } else if n < 0 && n != UV_EAGAIN.rawValue {
            fail(writeError(n))
            return nil
        }
        guard buffer.readableCount > 0 else {
            buffer.reset()
            return Int(max(n, 0))
        }
        // The socket is full: hand the rest to libuv, which writes it when it can.
        swap(&buffer, &inFlight)
        if writeRequest == nil { writeRequest = .allocate(capacity: 1) }
        uv_req_set_data(UnsafeMutableRawPointer(writeRequest!).assumingMemoryBound(to: uv_req_t.self),
                        Unmanaged.passUnretained(self).toOpaque())
        buf = uv_buf_t(base: inFlight.readPointer, len: inFlight.readableCount)
        let rc = uv_write(writeRequest, uvStream, &buf, 1, connectionWriteCallback)
        if rc < 0 {
            fail(writeError(rc))
            return nil
        }
        writeInFlight = true
        watchWrite()
        return Int(max(n, 0))
    }

    func writeCompleted(status: Int32) {
        writeInFlight = false
        if status < 0 {
            // UV_ECANCELED: the handle is closing; completions fail in handleDidClose.
            if status != UV_ECANCELED.rawValue { fail(writeError(status)) }
            return
        }
        if tls != nil { return tlsWriteCompleted() }
        bytesWritten += UInt64(inFlight.readableCount)
        withLoop { $0.bytesWrittenTotal &+= UInt64(inFlight.readableCount) }
        inFlight.reset()
        lastWriteProgress = loop.now
        flushNow()
    }

    /// Starts watching the waiting uv_write: if the socket takes no byte of
    /// it for ``ConnectionOptions/writeTimeout``, the peer is not reading and
    /// the connection fails with ``ConnectionError/writeTimedOut(connection:pendingBytes:timeout:)``.
    /// Only a write the socket could not take at once is watched, so the
    /// common path (uv_try_write took everything) starts no timer.
    func watchWrite() {
        guard let timeout = options.writeTimeout else { return }
        lastWriteProgress = loop.now
        lastWriteQueueSize = uv_stream_get_write_queue_size(uvStream)
        if writeWatch == nil {
            writeWatch = loop.makeTimer { [unowned self] in self.checkWriteProgress() }
        }
        if !writeWatch!.isActive {
            let period = max(timeout / 4, .milliseconds(5))
            writeWatch!.start(after: period, repeating: period)
        }
    }

    func checkWriteProgress() {
        guard writeInFlight, let timeout = options.writeTimeout else {
            writeWatch?.cancel()
            return
        }
        let now = loop.now
        let queued = uv_stream_get_write_queue_size(uvStream)
        if queued != lastWriteQueueSize {
            lastWriteQueueSize = queued
            lastWriteProgress = now
        } else if now - lastWriteProgress >= timeout.roundedUpMilliseconds {
            // Reset: a plain close would leave the unsent bytes lingering in the kernel.
            terminate(reason: .writeTimedOut(connection: label, pendingBytes: pendingWriteBytes, timeout: timeout),
                      reset: true)
        }
    }

    func writeError(_ code: some BinaryInteger) -> ConnectionError {
        let c = Int32(code)
        if c == UV_EPIPE.rawValue || c == UV_ECONNRESET.rawValue { return .reset(connection: label) }
        return .writeFailed(UVError(code: c, operation: "write", target: label))
    }

    /// Runs completions of bytes that reached the socket, updates writability,
    /// and finishes a graceful close once everything is out.
    func writeProgressed() {
        while completionsHead < completions.count, completions[completionsHead].end <= bytesWritten {
            let callback = completions[completionsHead].callback
            completionsHead += 1
            callback(.success(()))
        }
        if completionsHead == completions.count {
            completions.removeAll(keepingCapacity: true)
            completionsHead = 0
        }
        if !writable && pendingWriteBytes < options.writeLowWaterMark {
            writable = true
            onWritabilityChanged?(true)
        }
        if wantsWriteProgress, state == .open, let onWriteProgress { onWriteProgress() }
        if state == .closing && pendingWriteBytes == 0 && !writeInFlight { shutdownAndClose() }
    }
}

let connectionWriteCallback: uv_write_cb = { request, status in
    // Safe: the request's data is its Connection, which libuv calls back before
    // the handle's close callback releases it.
    let raw = uv_req_get_data(UnsafeMutableRawPointer(request!).assumingMemoryBound(to: uv_req_t.self))!
    Unmanaged<Connection>.fromOpaque(raw).takeUnretainedValue().writeCompleted(status: status)
}
