import CLibUV

/// Ending a connection: gracefully (flush, shut down the write side, linger
/// for the peer's end) or at once.
extension Connection {
    /// Closes gracefully: stops reading, flushes pending writes (for at most
    /// ``ConnectionOptions/gracefulCloseTimeout``), shuts down the write side,
    /// then waits for the peer's end of stream (for at most
    /// ``ConnectionOptions/lingerTimeout``, dropping what it still sends) and
    /// closes. Idempotent; ``onClose`` reports the end.
    public func close() {
        close(lingering: true)
    }

    /// ``close()``, without waiting for the peer's end when `lingering` is
    /// false: for a peer known to be gone (it went silent past a keepalive
    /// timeout), where there is nothing to wait for.
    package func close(lingering: Bool) {
        preconditionInEventLoop("Connection.close()")
        guard state == .open || state == .connecting else { return }
        state = .closing
        if !lingering { lingerWanted = false }
        // TLS: a handshake under way still needs the peer's bytes; what was
        // written meanwhile goes out (then close_notify) once it finishes.
        if tls?.isEstablished ?? true { stopReading() }
        beginTLSClose()
        if pendingWriteBytes == 0 && !writeInFlight {
            shutdownAndClose()
        } else {
            flushNow()
            if state == .closing && !isHandleClosing {
                closeTimer = loop.scheduleTimer(after: options.gracefulCloseTimeout) { [unowned self] in
                    self.fail(.closeTimedOut(connection: self.label, pendingBytes: self.pendingWriteBytes))
                }
            }
        }
    }

    /// Closes at once: pending writes are dropped (their completions fail)
    /// and a TCP peer gets a reset. Idempotent.
    public func abort() {
        preconditionInEventLoop("Connection.abort()")
        terminate(reason: nil, reset: true)
    }

    /// Ends the connection because of `error` (reported to ``onClose``).
    func fail(_ error: ConnectionError) {
        terminate(reason: error, reset: false)
    }

    func shutdownAndClose() {
        guard !isHandleClosing, shutdownRequest == nil, !lingering else { return }
        let request = UnsafeMutablePointer<uv_shutdown_t>.allocate(capacity: 1)
        shutdownRequest = request
        uv_req_set_data(UnsafeMutableRawPointer(request).assumingMemoryBound(to: uv_req_t.self),
                        Unmanaged.passUnretained(self).toOpaque())
        let rc = uv_shutdown(request, uvStream) { request, _ in
            // Safe: the request's data is its connection, alive while the handle is open
            // (libuv calls this before the handle's close callback).
            let connection = Unmanaged<Connection>.fromOpaque(uv_req_get_data(
                UnsafeMutableRawPointer(request!).assumingMemoryBound(to: uv_req_t.self))!).takeUnretainedValue()
            request!.deallocate()
            connection.shutdownRequest = nil
            connection.linger()
        }
        if rc < 0 {
            request.deallocate()
            shutdownRequest = nil
            closeHandle()
        }
    }

    /// After the write side is shut down: reads and drops whatever the peer
    /// still sends until its end of stream, for at most
    /// ``ConnectionOptions/lingerTimeout``, then closes. A socket closed with
    /// unread bytes (or receiving bytes after it closed) makes the kernel send
    /// a reset, and a reset destroys what the peer has not read yet: the last
    /// answers just written. Bytes the peer sent before it saw the end (a
    /// chunk acknowledgement, a keepalive) would otherwise do that.
    func linger() {
        guard !isHandleClosing, !lingering else { return }
        lingering = true
        closeTimer?.cancel() // the flush is done
        closeTimer = nil
        guard lingerWanted, !peerEnded, options.lingerTimeout > .zero else { return closeHandle() }
        stopReading()
        guard uv_read_start(uvStream, lingerAllocCallback, lingerReadCallback) >= 0 else { return closeHandle() }
        reading = true // stopped by a terminate (abort, loop shutdown) meanwhile
        closeTimer = loop.scheduleTimer(after: options.lingerTimeout) { [unowned self] in self.closeHandle() }
    }

    func terminate(reason: ConnectionError?, reset: Bool) {
        guard !isHandleClosing else { return }
        if closeReason == nil { closeReason = reason }
        state = .closing
        stopReading()
        closeHandle(reset: reset && !isUnixDomain)
    }
}

// MARK: libuv callbacks while lingering

let lingerAllocCallback: uv_alloc_cb = { handle, _, buf in
    // The handle's data is its Connection until its close callback (see HandleOwner).
    let connection = unsafeDowncast(HandleOwner.owner(of: handle).takeUnretainedValue(), to: Connection.self)
    // Safe: the shared buffer serves one read at a time, and what lands here is dropped.
    buf!.pointee = uv_buf_t(base: connection.withLoop { $0.sharedReadBuffer }.assumingMemoryBound(to: CChar.self),
                            len: EventLoop.sharedReadBufferSize)
}

let lingerReadCallback: uv_read_cb = { stream, nread, _ in
    guard nread < 0 else { return } // dropped: the connection has ended for its user
    // The handle's data is its Connection until its close callback; the read callback never runs after it.
    unsafeDowncast(HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(stream))).takeUnretainedValue(),
                   to: Connection.self).closeHandle() // the peer's end (or a reset): nothing more can come
}
