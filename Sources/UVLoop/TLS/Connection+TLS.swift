import CLibUV
import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// One connection's TLS state: an OpenSSL `SSL` over two memory BIOs. The
/// socket I/O stays the connection's own: ciphertext read from the socket is
/// written into `input`, and what OpenSSL writes into `output` is flushed
/// with the connection's batched writes. No thread, no blocking call.
final class TLSSession {
    /// The `SSL`; owns both BIOs. Freed in deinit.
    let ssl: OpaquePointer
    /// Ciphertext from the socket goes in here...
    let input: OpaquePointer
    /// ...and ciphertext for the socket comes out of here.
    let output: OpaquePointer
    /// True once the handshake finished.
    var isEstablished = false
    /// The peer certificate's subject (RFC 2253), once established, if it showed one.
    var peerSubject: String?
    /// Set while decrypting, so a handler that resumes reading does not nest a second loop.
    var isDecrypting = false

    init(context: TLSContext, serverName: String?, label: String) throws(ConnectionError) {
        guard let ssl = SSL_new(context.context) else {
            throw .tlsFailed(connection: label, reason: "cannot make an SSL object: \(openSSLErrorText())")
        }
        guard let input = BIO_new(BIO_s_mem()), let output = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw .tlsFailed(connection: label, reason: "cannot make memory BIOs: \(openSSLErrorText())")
        }
        SSL_set_bio(ssl, input, output) // the SSL owns both from here on
        self.ssl = ssl
        self.input = input
        self.output = output
        if context.configuration.role == .server {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let serverName {
                var probe = in6_addr()
                let isIP = inet_pton(AF_INET, serverName, &probe) == 1 || inet_pton(AF_INET6, serverName, &probe) == 1
                guard uvrpc_ssl_set_peer_name(ssl, serverName, isIP ? 1 : 0) == 1 else {
                    throw .tlsFailed(connection: label, reason: "cannot use \(serverName) as the server's name: \(openSSLErrorText())")
                }
            }
        }
    }

    deinit { SSL_free(ssl) }

    /// Why the handshake or a record failed: the certificate check's verdict
    /// when it failed, else OpenSSL's queued reason.
    func failureReason(_ code: Int32) -> String {
        let verdict = SSL_get_verify_result(ssl)
        if verdict != X509_V_OK {
            ERR_clear_error()
            return "certificate verification failed: \(String(cString: X509_verify_cert_error_string(verdict)))"
        }
        let text = openSSLErrorText()
        if !text.isEmpty { return text }
        return code == SSL_ERROR_SYSCALL ? "the peer ended the stream during TLS" : "TLS error \(code)"
    }
}

extension Connection {
    /// True when the connection speaks TLS (``ConnectionOptions/tls``).
    public var isTLS: Bool { tls != nil }

    /// The subject of the certificate the peer showed in the TLS handshake
    /// (RFC 2253, e.g. `CN=client-1,O=Example`); nil without TLS, before the
    /// handshake finished, or when the peer showed none. Loop-bound.
    public var peerCertificateSubject: String? {
        preconditionInEventLoop("Connection.peerCertificateSubject")
        return tls?.peerSubject
    }

    /// Starts TLS on a stream that just connected (client) or was accepted (server).
    func startTLS(_ context: TLSContext) {
        let serverName: String?
        if let name = context.configuration.serverName ?? hostName {
            serverName = name
        } else if case .ipv4(let host, _)? = remoteAddress {
            serverName = host
        } else if case .ipv6(let host, _)? = remoteAddress {
            serverName = host
        } else {
            serverName = nil
        }
        do {
            tls = try TLSSession(context: context, serverName: serverName, label: label)
        } catch {
            return fail(error)
        }
        if context.configuration.role == .client { advanceHandshake() } // the ClientHello
    }

    /// Runs the handshake as far as the bytes received allow; true once established.
    @discardableResult
    func advanceHandshake() -> Bool {
        guard let tls else { return false }
        if tls.isEstablished { return true }
        let rc = SSL_do_handshake(tls.ssl)
        if rc == 1 {
            tls.isEstablished = true
            var buffer = [CChar](repeating: 0, count: 512)
            let n = uvrpc_ssl_peer_subject(tls.ssl, &buffer, Int32(buffer.count))
            if n >= 0 { tls.peerSubject = String(decoding: buffer.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self) }
            if state == .closing { // closed during the handshake: send what was written, then close_notify
                stopReading()
                beginTLSClose()
            }
            scheduleFlush() // the handshake's last flight, and plaintext written meanwhile
            return true
        }
        let code = SSL_get_error(tls.ssl, rc)
        if code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE {
            if uvrpc_bio_pending(tls.output) > 0 { scheduleFlush() }
            return false
        }
        let reason = tls.failureReason(code)
        sendFinalAlert(tls)
        fail(.tlsFailed(connection: label, reason: "handshake failed: \(reason)"))
        return false
    }

    /// Best effort: hands the alert OpenSSL wrote for a failure to the socket before the close.
    private func sendFinalAlert(_ tls: TLSSession) {
        drainCiphertext(tls)
        guard !writeInFlight, cipherPending.readableCount > 0 else { return }
        var buf = uv_buf_t(base: cipherPending.readPointer, len: cipherPending.readableCount)
        _ = uv_try_write(uvStream, &buf, 1)
    }

    /// Ciphertext read from the socket: into OpenSSL, then decrypted where the reader wants it.
    func didReadCiphertext(_ count: Int) {
        guard let tls else { return }
        // Safe: the loop's ciphertext buffer holds `count` bytes just read; BIO_write copies them.
        let written = BIO_write(tls.input, withLoop { $0.cipherReadBuffer }, Int32(count))
        guard written == Int32(count) else {
            return fail(.tlsFailed(connection: label, reason: "cannot buffer ciphertext: \(openSSLErrorText())"))
        }
        decryptAvailable()
    }

    /// Decrypts buffered ciphertext into the usual read targets (the loop's
    /// shared buffer, the ring, or a consumer's direct buffer) while the
    /// reader wants bytes; finishes the handshake first.
    func decryptAvailable() {
        guard let tls, !tls.isDecrypting else { return }
        guard advanceHandshake() else { return }
        tls.isDecrypting = true
        defer { tls.isDecrypting = false }
        while wantsReading, !yielded, state == .open, !isHandleClosing {
            let target = readBuffer()
            guard let base = target.base, target.len > 0 else {
                return fail(.readBufferLimitExceeded(connection: label, limit: ring.capacity))
            }
            let n = SSL_read(tls.ssl, base, Int32(min(target.len, Int(Int32.max))))
            if n > 0 {
                deliverPlaintext(Int(n))
                continue
            }
            deliverPlaintext(0) // nothing landed in the buffer offered
            let code = SSL_get_error(tls.ssl, n)
            if code == SSL_ERROR_WANT_READ { break }
            if code == SSL_ERROR_ZERO_RETURN { // the peer's close_notify: a clean end
                closeReason = closeReason ?? .endOfStream(connection: label)
                stopReading()
                return close()
            }
            return fail(.tlsFailed(connection: label, reason: tls.failureReason(code)))
        }
        // Reading can leave records to send (TLS 1.3 session tickets, key updates).
        if uvrpc_bio_pending(tls.output) > 0 { scheduleFlush() }
    }

    /// The end of the socket's stream under TLS: clean only after the peer's close_notify.
    func tlsStreamEnded() {
        guard let tls else { return }
        peerEnded = true
        if uvrpc_ssl_received_shutdown(tls.ssl) != 0 || !tls.isEstablished && closeReason != nil {
            closeReason = closeReason ?? .endOfStream(connection: label)
        } else {
            closeReason = closeReason ?? .tlsTruncated(connection: label)
        }
        stopReading()
        // Without a finished handshake nothing written can ever reach the peer: close at once
        // (a graceful close would keep the descriptor for the close timeout).
        if !tls.isEstablished { return terminate(reason: closeReason, reset: false) }
        close()
    }

    /// Encrypts every plaintext byte waiting (once established) into the output BIO.
    /// False when OpenSSL failed (the connection is failing).
    func encryptPending(_ tls: TLSSession) -> Bool {
        guard tls.isEstablished else { return true }
        while pending.readableCount > 0 {
            let n = SSL_write(tls.ssl, pending.readPointer, Int32(min(pending.readableCount, 1 << 20)))
            guard n > 0 else {
                fail(.tlsFailed(connection: label, reason: tls.failureReason(SSL_get_error(tls.ssl, n))))
                return false
            }
            pending.consume(Int(n))
            bytesWritten += UInt64(n) // plaintext accounting: handed to TLS
        }
        pending.reset()
        return true
    }

    /// Moves the ciphertext OpenSSL produced into `cipherPending`.
    func drainCiphertext(_ tls: TLSSession) {
        while true {
            let waiting = Int(uvrpc_bio_pending(tls.output))
            if waiting == 0 { return }
            // Safe: reserveForAppend made room for `waiting` bytes at the returned pointer.
            let room = cipherPending.reserveForAppend(waiting)
            let n = BIO_read(tls.output, room, Int32(waiting))
            if n <= 0 { return }
            cipherPending.didAppend(Int(n))
        }
    }

    /// The TLS flush: encrypt what waits, then write the ciphertext (`uv_try_write`,
    /// then one `uv_write` in `inFlight` for what the socket did not take).
    func flushTLS(_ tls: TLSSession) {
        if !writeInFlight {
            guard encryptPending(tls) else { return }
            drainCiphertext(tls)
            if cipherPending.readableCount > 0 {
                guard writeToSocket(&cipherPending) != nil else { return }
            }
        }
        if writable && pendingWriteBytes > options.writeHighWaterMark { becameUnwritable() }
        writeProgressed()
    }

    /// A TLS `uv_write` finished: the ciphertext in `inFlight` is out.
    func tlsWriteCompleted() {
        withLoop { $0.bytesWrittenTotal &+= UInt64(inFlight.readableCount) }
        inFlight.reset()
        lastWriteProgress = loop.now
        flushNow()
    }

    /// Before a graceful close: the last plaintext encrypted, then close_notify.
    func beginTLSClose() {
        guard let tls, tls.isEstablished else { return }
        guard encryptPending(tls) else { return }
        SSL_shutdown(tls.ssl)
        drainCiphertext(tls)
    }

    /// Ciphertext not yet taken by the socket (counted as pending writes).
    var pendingCiphertextBytes: Int {
        tls == nil ? 0 : cipherPending.readableCount + (writeInFlight ? inFlight.readableCount : 0)
    }
}
