import CLibUV
#if canImport(Glibc)
import Glibc
#endif

/// Reads: where libuv reads into (the loop's shared buffer, the ring, or a
/// consumer's direct buffer), and handing the bytes to ``Connection/onRead``.
extension Connection {
    /// Starts (or resumes) delivering reads to ``onRead``. Bytes already
    /// buffered are offered at the start of the loop's next turn (before it
    /// polls), never inside this call: a caller running inside another
    /// connection's read must not have this one's bytes handled under it
    /// (the loop's shared read buffer still holds that read).
    public func resumeReading() {
        preconditionInEventLoop("Connection.resumeReading()")
        wantsReading = true
        guard state == .open else { return }
        scheduleResume()
    }

    /// Has ``resumeAtTurnStart()`` run at the start of the loop's next turn (once, however often asked).
    func scheduleResume() {
        guard !resumeScheduled else { return }
        resumeScheduled = true
        withLoop { $0.queueResume(self) }
    }

    /// Resumes reading at the start of a loop turn, outside any read: offers
    /// the buffered bytes, restarts the socket reads and decrypts TLS records
    /// read before the pause.
    func resumeAtTurnStart() {
        resumeScheduled = false
        yielded = false
        guard wantsReading, !isHandleClosing else { return }
        if state == .open && ring.readableCount > 0 { processReadable() }
        startReading()
        if tls != nil && state == .open { decryptAvailable() }
    }

    /// Stops reading for the rest of this loop turn; reading resumes at the
    /// start of the next turn (bytes already read stay buffered). The
    /// protocol layer calls it when this connection has had its share of the
    /// turn (``ConnectionOptions/maximumReadBytesPerTurn`` does the same for bytes),
    /// so that one busy peer cannot hold the loop from the others.
    package func yieldForThisTurn() {
        guard !yielded, !isHandleClosing else { return }
        yielded = true
        stopReading()
        scheduleResume()
    }

    /// Stops reading from the socket (read-side backpressure: the peer's
    /// writes then back up in the kernel). Buffered bytes stay buffered.
    public func pauseReading() {
        preconditionInEventLoop("Connection.pauseReading()")
        wantsReading = false
        stopReading()
    }

    func startReading() {
        guard !reading, wantsReading, !yielded, state == .open || state == .closing && tls?.isEstablished == false else { return }
        let rc = uv_read_start(uvStream, connectionAllocCallback, connectionReadCallback)
        if rc < 0 { fail(.readFailed(UVError(code: rc, operation: "uv_read_start", target: label))) }
        else { reading = true }
    }

    func stopReading() {
        guard reading else { return }
        reading = false
        uv_read_stop(uvStream)
    }

    /// The buffer libuv should read into: the consumer's direct buffer or the
    /// loop's shared buffer while nothing is unconsumed, else the ring's
    /// contiguous free span (after the unconsumed bytes).
    func readBuffer() -> uv_buf_t {
        if ring.readableCount == 0 {
            if let directReadBuffer, let direct = directReadBuffer(), direct.count > 0 {
                // Safe: the consumer keeps this buffer until onDirectRead reports the read.
                readTarget = .direct
                // At most a turn's worth per read: one read of a big payload must not hold the loop.
                return uv_buf_t(base: direct.baseAddress!.assumingMemoryBound(to: CChar.self),
                                len: min(direct.count, options.maximumReadBytesPerTurn))
            }
            // Safe: the shared buffer serves one read at a time (see EventLoop.sharedReadBuffer).
            readTarget = .shared
            return uv_buf_t(base: withLoop { $0.sharedReadBuffer }.assumingMemoryBound(to: CChar.self),
                            len: EventLoop.sharedReadBufferSize)
        }
        if ring.readableCount <= Self.maximumSharedPrefix {
            // A partial frame is waiting: put a copy in front of a full-size read
            // (the ring would offer only what is left of its 8 KiB).
            let prefix = ring.readableCount
            let shared = withLoop { $0.sharedReadBuffer }
            ring.copyBytes(at: 0, count: prefix, into: shared)
            readTarget = .shared
            sharedPrefix = prefix
            return uv_buf_t(base: (shared + prefix).assumingMemoryBound(to: CChar.self),
                            len: EventLoop.sharedReadBufferSize - prefix)
        }
        readTarget = .ring
        var region = ring.writableRegion()
        if region.isEmpty, ring.grow(toFit: ring.capacity * 2) {
            region = ring.writableRegion()
        }
        // Empty when the ring is full at its maximum: libuv then reports UV_ENOBUFS.
        return uv_buf_t(base: region.baseAddress?.assumingMemoryBound(to: CChar.self), len: region.count)
    }

    func didRead(_ nread: Int) {
        if nread > 0 {
            let turn = withLoop { loop in
                loop.bytesReadTotal &+= UInt64(nread)
                return loop.turn
            }
            if turn != readTurn { (readTurn, bytesReadThisTurn) = (turn, 0) }
            bytesReadThisTurn &+= nread
        }
        if tls != nil && nread > 0 {
            didReadCiphertext(nread)
        } else if tls != nil && nread == Int(UV_EOF.rawValue) {
            return tlsStreamEnded()
        } else {
            deliverPlaintext(nread)
        }
        // Its share of this turn is used: the loop's other connections go first.
        if bytesReadThisTurn >= options.maximumReadBytesPerTurn && reading { yieldForThisTurn() }
    }

    /// Hands `nread` bytes read (or decrypted) into the buffer ``readBuffer()``
    /// offered to the reader; 0 or less: nothing landed (errors end the connection).
    func deliverPlaintext(_ nread: Int) {
        if nread <= 0 { sharedPrefix = 0 } // the unconsumed bytes are still in the ring
        if nread > 0 {
            switch readTarget {
            case .ring:
                ring.didWrite(nread)
                processReadable()
            case .shared:
                let prefix = sharedPrefix
                sharedPrefix = 0
                if prefix > 0 { ring.consume(prefix) } // now in front of the new bytes
                processShared(UnsafeRawBufferPointer(start: withLoop { $0.sharedReadBuffer }, count: prefix + nread))
            case .direct:
                onDirectRead?(nread)
            }
        } else if nread < 0 {
            let code = Int32(nread)
            switch code {
            case UV_EOF.rawValue:
                peerEnded = true
                closeReason = closeReason ?? .endOfStream(connection: label)
                stopReading()
                // Flush what we still owe the peer, then close.
                close()
            case UV_ECONNRESET.rawValue, UV_EPIPE.rawValue:
                fail(.reset(connection: label))
            case UV_ENOBUFS.rawValue:
                fail(.readBufferLimitExceeded(connection: label, limit: ring.capacity))
            default:
                fail(.readFailed(UVError(code: code, operation: "read", target: label)))
            }
        }
    }

    /// Offers bytes read into the loop's shared buffer to `onRead` until it
    /// stops consuming, then keeps the rest in the connection's own ring (the
    /// shared buffer is reused by the next read of any connection).
    func processShared(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        processingReads = true
        while offset < bytes.count, let consumed = offer(UnsafeRawBufferPointer(rebasing: bytes[offset...])) {
            offset += consumed
            if consumed == 0 { break }
        }
        processingReads = false
        guard offset < bytes.count, !isHandleClosed else { return }
        let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
        guard ring.grow(toFit: rest.count) else {
            return fail(.readBufferLimitExceeded(connection: label, limit: ring.maximumCapacity))
        }
        ring.write(rest) // the ring is empty here: reads use the shared buffer only then
    }

    /// Offers the readable bytes to `onRead` until it stops consuming.
    func processReadable() {
        guard !processingReads else { return } // the outer call keeps going
        processingReads = true
        defer { processingReads = false }
        while ring.readableCount > 0, let consumed = offer(ring.firstReadableRegion) {
            ring.consume(consumed)
            if consumed > 0 { continue }
            // Nothing consumed: the handler needs more bytes than the first
            // contiguous run. Make them contiguous once if they wrap; else wait.
            if ring.isWrapped { ring.linearize(); continue }
            break
        }
        // Empty: later reads go to the shared buffer; a grown ring is given back.
        if ring.readableCount == 0 && ring.capacity > ring.initialCapacity { ring.releaseStorage() }
    }

    /// Offers `region` to ``onRead``: how many bytes it consumed, or nil when
    /// reads are not wanted now (paused, closed, no handler) or the handler
    /// closed the connection.
    @inline(__always)
    func offer(_ region: UnsafeRawBufferPointer) -> Int? {
        guard wantsReading, !yielded, state == .open || state == .closing, let onRead else { return nil }
        let consumed = onRead(region)
        precondition(consumed >= 0 && consumed <= region.count,
                     "Connection \(label): onRead returned \(consumed) for \(region.count) readable bytes")
        return isHandleClosed ? nil : consumed
    }

    /// Frees the read ring and the outgoing buffers if they hold nothing
    /// (they are allocated again when needed). For connections that went
    /// idle: an idle connection then owns no buffer memory.
    public func releaseIdleBuffers() {
        preconditionInEventLoop("Connection.releaseIdleBuffers()")
        if ring.readableCount == 0 && !processingReads { ring.releaseStorage() }
        if !writeInFlight && pending.readableCount == 0 {
            pending.release()
            inFlight.release()
        }
    }

    /// Feeds `bytes` to the read path exactly as reads from the socket would
    /// arrive (the same buffers, the same callbacks), for an in-memory
    /// transport: fuzzing the whole receive path of a protocol without a
    /// network. Stops early when reading is paused (backpressure) or the
    /// connection closes; returns how many bytes were taken.
    package func deliverRead(_ bytes: UnsafeRawBufferPointer) -> Int {
        preconditionInEventLoop("Connection.deliverRead(_:)")
        var offset = 0
        while offset < bytes.count, wantsReading, state == .open, !isHandleClosing {
            if yielded { // its share of the turn is used: go on as the next turn would
                withLoop { $0.turn &+= 1 }
                resumeAtTurnStart()
                continue
            }
            let buffer = readBuffer()
            guard let base = buffer.base, buffer.len > 0 else {
                didRead(Int(UV_ENOBUFS.rawValue))
                break
            }
            let n = min(buffer.len, bytes.count - offset)
            UnsafeMutableRawPointer(base).copyMemory(from: bytes.baseAddress! + offset, byteCount: n)
            offset += n
            didRead(n)
        }
        return offset
    }

    /// A connection over one end of a new Unix socket pair on `loop`, and the
    /// other end's descriptor (the caller's to read and close): with
    /// ``deliverRead(_:)``, an in-memory transport whose writes can be read back.
    package static func overSocketPair(on loop: EventLoop, options: ConnectionOptions = ConnectionOptions(),
                                       label: String = "socketpair") throws(UVError) -> (Connection, peer: Int32) {
        loop.preconditionInEventLoop("Connection.overSocketPair(on:)")
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else {
            throw UVError(code: -errno, operation: "socketpair", target: label)
        }
        let connection: Connection
        do {
            connection = try adopting(descriptor: fds[0], on: loop, unixDomain: true, options: options, label: label)
        } catch {
            systemClose(fds[1]) // adopting closed fds[0]; the other end was the caller's only once this returned
            throw error
        }
        connection.startIfWanted()
        return (connection, fds[1])
    }
}

// MARK: libuv callbacks

let connectionAllocCallback: uv_alloc_cb = { handle, _, buf in
    // The handle's data is its Connection until its close callback (see HandleOwner).
    let connection = unsafeDowncast(HandleOwner.owner(of: handle).takeUnretainedValue(), to: Connection.self)
    guard connection.tls != nil else { return buf!.pointee = connection.readBuffer() }
    // TLS: ciphertext lands in the loop's ciphertext buffer and goes straight to OpenSSL.
    buf!.pointee = uv_buf_t(base: connection.withLoop { $0.cipherReadBuffer }.assumingMemoryBound(to: CChar.self),
                            len: EventLoop.sharedReadBufferSize)
}

let connectionReadCallback: uv_read_cb = { stream, nread, _ in
    // The handle's data is its Connection until its close callback; the read callback never runs after it.
    unsafeDowncast(HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(stream))).takeUnretainedValue(),
                   to: Connection.self).didRead(nread)
}
