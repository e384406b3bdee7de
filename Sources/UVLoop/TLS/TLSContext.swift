import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// How a side of a connection speaks TLS: its certificate and key, whom it
/// trusts, and what it checks of the peer. Made into a ``TLSContext`` once
/// and shared by every connection (``ConnectionOptions/tls``).
///
/// ```swift
/// // A server: its certificate chain and key (PEM files or PEM text).
/// let server = try TLSContext(.server(certificateChain: .file("server.pem"), privateKey: .file("server.key")))
/// // A client: trusts the system's CAs (or its own) and checks the server's name.
/// let client = try TLSContext(.client(trustRoots: .certificates(.file("ca.pem"))))
/// ```
///
/// TLS 1.2 at least; TLS 1.3 is preferred whenever both sides have it.
public struct TLSConfiguration: Sendable {
    /// PEM data: a file's path, or the text itself.
    public enum PEM: Sendable, CustomStringConvertible {
        /// A PEM file.
        case file(String)
        /// PEM text in memory.
        case text(String)

        public var description: String {
            switch self {
            case .file(let path): return "PEM file \(path)"
            case .text: return "PEM text"
            }
        }
    }

    /// The certificates a side trusts to sign its peer's certificate.
    public enum TrustRoots: Sendable {
        /// The system's trust store (OpenSSL's default paths).
        case system
        /// These CA certificates only.
        case certificates(PEM)
    }

    /// Which end of the handshake this side is.
    public enum Role: Sendable { case server, client }

    /// Server or client.
    public let role: Role
    /// This side's certificate chain, leaf first (required for a server;
    /// for a client, what it shows a server that asks for one).
    public var certificateChain: PEM?
    /// The private key of the leaf certificate.
    public var privateKey: PEM?
    /// Whom this side trusts: for a client, the servers' CAs (the system's by
    /// default); for a server, the clients' CAs when ``requiresClientCertificate``.
    public var trustRoots: TrustRoots
    /// Client: check the server's certificate chain and that it names the
    /// server (``serverName``, else the host connected to); on by default. Turning it off accepts any server; every
    /// `RPCEndpoint` (UVRPC) made with it logs a warning saying so.
    public var verifiesPeer: Bool
    /// Client: the name the server's certificate must carry, also sent as
    /// SNI; nil (the default) means the host connected to (its IP address
    /// for a numeric address).
    public var serverName: String?
    /// Server: ask every client for a certificate signed by ``trustRoots``
    /// and refuse the handshake without one (mutual TLS). Off by default.
    public var requiresClientCertificate: Bool

    /// A server's configuration: its certificate chain and private key.
    public static func server(certificateChain: PEM, privateKey: PEM) -> TLSConfiguration {
        TLSConfiguration(role: .server, certificateChain: certificateChain, privateKey: privateKey,
                         trustRoots: .system, verifiesPeer: false, requiresClientCertificate: false)
    }

    /// A client's configuration: the CAs it trusts (the system's by default).
    public static func client(trustRoots: TrustRoots = .system, serverName: String? = nil) -> TLSConfiguration {
        TLSConfiguration(role: .client, certificateChain: nil, privateKey: nil, trustRoots: trustRoots,
                         verifiesPeer: true, serverName: serverName, requiresClientCertificate: false)
    }
}

/// A TLS setup failed: what was being loaded or checked, and OpenSSL's reason.
public struct TLSError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What failed, e.g. "loading the certificate chain from PEM file server.pem".
    public let operation: String
    /// OpenSSL's reason, e.g. "error:0480006C:PEM routines::no start line".
    public let reason: String

    public init(operation: String, reason: String) {
        self.operation = operation
        self.reason = reason
    }

    public var description: String { "TLS: \(operation) failed: \(reason.isEmpty ? "no reason given" : reason)" }

    /// The error for `operation` with OpenSSL's queued reason (which it clears).
    static func openSSL(_ operation: String) -> TLSError {
        TLSError(operation: operation, reason: openSSLErrorText())
    }
}

/// OpenSSL's first queued error as text (the queue is cleared).
func openSSLErrorText() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    uvrpc_ssl_error_text(&buffer, buffer.count)
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A configured OpenSSL context (`SSL_CTX`), shared by every connection
/// that uses it, on any loop.
public final class TLSContext: @unchecked Sendable { // the SSL_CTX is only read after init (OpenSSL allows that from any thread)
    /// The configuration it was made from.
    public let configuration: TLSConfiguration
    /// The `SSL_CTX`; configured in init, then only used to make sessions.
    let context: OpaquePointer

    /// Makes the context: loads the certificate chain, key and trust roots.
    /// - Throws: ``TLSError`` naming what could not be loaded and why.
    public init(_ configuration: TLSConfiguration) throws(TLSError) {
        self.configuration = configuration
        let method = configuration.role == .server ? TLS_server_method() : TLS_client_method()
        guard let context = SSL_CTX_new(method) else { throw TLSError.openSSL("making an SSL_CTX") }
        self.context = context
        guard uvrpc_ssl_ctx_set_min_tls12(context) == 1 else { throw TLSError.openSSL("requiring TLS 1.2 or later") }
        uvrpc_ssl_ctx_set_modes(context)
        if let chain = configuration.certificateChain {
            let ok: Int32
            switch chain {
            case .file(let path): ok = SSL_CTX_use_certificate_chain_file(context, path)
            case .text(let text): ok = text.withCString { uvrpc_ssl_ctx_use_chain_pem(context, $0, Int32(strlen($0))) }
            }
            guard ok == 1 else { throw TLSError.openSSL("loading the certificate chain from \(chain)") }
        } else if configuration.role == .server {
            throw TLSError(operation: "making a server context", reason: "a server needs a certificate chain and a private key")
        }
        if let key = configuration.privateKey {
            let ok: Int32
            switch key {
            case .file(let path): ok = SSL_CTX_use_PrivateKey_file(context, path, SSL_FILETYPE_PEM)
            case .text(let text): ok = text.withCString { uvrpc_ssl_ctx_use_key_pem(context, $0, Int32(strlen($0))) }
            }
            guard ok == 1 else { throw TLSError.openSSL("loading the private key from \(key)") }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw TLSError.openSSL("checking that the private key matches the certificate")
            }
        } else if configuration.certificateChain != nil {
            throw TLSError(operation: "loading the certificate", reason: "a certificate chain needs its private key")
        }
        let verifies = configuration.role == .client ? configuration.verifiesPeer : configuration.requiresClientCertificate
        if verifies {
            switch configuration.trustRoots {
            case .system:
                guard SSL_CTX_set_default_verify_paths(context) == 1 else {
                    throw TLSError.openSSL("loading the system's trusted certificates")
                }
            case .certificates(let pem):
                let text: String
                switch pem {
                case .file(let path):
                    guard let contents = readTextFile(path) else {
                        throw TLSError(operation: "loading trusted certificates from \(pem)", reason: "cannot read the file")
                    }
                    text = contents
                case .text(let contents): text = contents
                }
                let added = text.withCString { uvrpc_ssl_ctx_trust_pem(context, $0, Int32(strlen($0))) }
                guard added > 0 else {
                    throw TLSError(operation: "loading trusted certificates from \(pem)", reason: "no certificate found")
                }
                if configuration.role == .server {
                    _ = text.withCString { uvrpc_ssl_ctx_set_client_ca_pem(context, $0, Int32(strlen($0))) }
                }
            }
            let mode = configuration.role == .server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER
            SSL_CTX_set_verify(context, mode, nil)
        } else {
            SSL_CTX_set_verify(context, SSL_VERIFY_NONE, nil)
        }
    }

    deinit { SSL_CTX_free(context) }
}

/// The whole text of the file at `path`, or nil when it cannot be read.
private func readTextFile(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
