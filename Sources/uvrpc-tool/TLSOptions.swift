import ArgumentParser
import UVLoop
import UVRPC

/// `uvrpc serve`'s TLS options: without them it serves plaintext.
struct ServerTLSOptions: ParsableArguments {
    @Option(name: .customLong("tls-cert"), help: "Serve TLS with this certificate chain (PEM file, leaf first); needs --tls-key.")
    var certificate: String?

    @Option(name: .customLong("tls-key"), help: "The private key of --tls-cert (PEM file).")
    var key: String?

    @Option(name: .customLong("tls-client-ca"), help: "Require client certificates signed by these CAs (PEM file): mutual TLS.")
    var clientCA: String?

    @Option(name: .customLong("tls-handshakes-per-peer"), help: "New TLS connections one peer address may open per second, in bursts of twice as many; more are closed as they arrive. 0: no limit.")
    var handshakesPerPeer: Double = 32

    func validate() throws {
        if (certificate == nil) != (key == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        if clientCA != nil && certificate == nil { throw ValidationError("--tls-client-ca needs --tls-cert and --tls-key") }
        guard handshakesPerPeer >= 0 else { throw ValidationError("--tls-handshakes-per-peer must not be negative") }
    }

    /// The limit of new TLS connections per peer address, or nil for none.
    var handshakeLimit: RPCRateLimit? {
        handshakesPerPeer > 0 ? RPCRateLimit(perSecond: handshakesPerPeer, burst: max(1, Int(handshakesPerPeer * 2))) : nil
    }

    /// The server's TLS context, or nil for plaintext.
    func context() throws -> TLSContext? {
        guard let certificate, let key else { return nil }
        var configuration = TLSConfiguration.server(certificateChain: .file(certificate), privateKey: .file(key))
        if let clientCA {
            configuration.requiresClientCertificate = true
            configuration.trustRoots = .certificates(.file(clientCA))
        }
        return try TLSContext(configuration)
    }
}

/// `uvrpc call`'s TLS options: any of them turns TLS on.
struct ClientTLSOptions: ParsableArguments {
    @Option(name: .customLong("tls-ca"), help: "Connect with TLS, trusting these CAs (PEM file) instead of the system's.")
    var ca: String?

    @Option(name: .customLong("tls-server-name"), help: "Connect with TLS and check that the server's certificate names NAME (also sent as SNI); default: the address's host.")
    var serverName: String?

    @Option(name: .customLong("tls-cert"), help: "Connect with TLS and show this client certificate chain (PEM file); needs --tls-key.")
    var certificate: String?

    @Option(name: .customLong("tls-key"), help: "The private key of --tls-cert (PEM file).")
    var key: String?

    func validate() throws {
        if (certificate == nil) != (key == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
    }

    /// The client's TLS context, or nil for plaintext.
    func context() throws -> TLSContext? {
        guard ca != nil || serverName != nil || certificate != nil else { return nil }
        var configuration = TLSConfiguration.client(trustRoots: ca.map { .certificates(.file($0)) } ?? .system,
                                                    serverName: serverName)
        if let certificate, let key {
            configuration.certificateChain = .file(certificate)
            configuration.privateKey = .file(key)
        }
        return try TLSContext(configuration)
    }
}
