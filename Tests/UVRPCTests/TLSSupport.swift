import Foundation
import UVLoop
import UVTestSupport
import XCTest

/// Certificates made for the TLS tests with the `openssl` command, once per
/// test process, in a temporary folder: a test CA; a server certificate for
/// `localhost` and 127.0.0.1 and a client certificate (`CN=client-1`), both
/// signed by it; an expired server certificate; and a second CA that signed
/// nothing here (to be trusted by mistake).
final class TestCertificates: Sendable {
    let directory: String
    var caFile: String { directory + "/ca.pem" }
    var otherCAFile: String { directory + "/other-ca.pem" }
    var serverChain: String { directory + "/server.pem" }
    var serverKey: String { directory + "/server.key" }
    var expiredChain: String { directory + "/expired.pem" }
    var clientChain: String { directory + "/client.pem" }
    var clientKey: String { directory + "/client.key" }

    static let shared: Result<TestCertificates, any Error> = Result { try TestCertificates() }

    private init() throws {
        let directory = NSTemporaryDirectory() + "uvrpc-tls-\(getpid())"
        self.directory = directory
        let script = """
            set -e
            mkdir -p '\(directory)' && cd '\(directory)'
            key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
            key ca.key && openssl req -x509 -new -key ca.key -out ca.pem -days 3 -subj "/CN=UVRPC Test CA"
            key other-ca.key && openssl req -x509 -new -key other-ca.key -out other-ca.pem -days 3 -subj "/CN=Another CA"
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext
            key server.key && openssl req -new -key server.key -out server.csr -subj "/CN=localhost"
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 3 -extfile server.ext 2>/dev/null
            key client.key && openssl req -new -key client.key -out client.csr -subj "/O=UVRPC Tests/CN=client-1"
            openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 3 2>/dev/null
            # An expired server certificate: openssl ca can set its dates.
            : > index.txt && echo 1000 > serial.txt
            printf '[ca]\\ndefault_ca=t\\n[t]\\ndatabase=index.txt\\nnew_certs_dir=.\\nserial=serial.txt\\ndefault_md=sha256\\npolicy=p\\ncopy_extensions=copy\\n[p]\\ncommonName=supplied\\n' > ca.cnf
            openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in server.csr -out expired.pem \\
                -startdate 20200101000000Z -enddate 20200102000000Z -extfile server.ext 2>/dev/null
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        let done = Promise<Void>()
        process.terminationHandler = { _ in done.fulfill(()) }
        let output = try startChild(process) { process in
            let output = Pipe()
            process.standardOutput = output
            process.standardError = output
            return output
        }
        try done.wait("openssl making the test certificates", seconds: 60)
        guard process.terminationStatus == 0 else {
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw TestTimeout(what: "test certificates (openssl exited \(process.terminationStatus)): \(text)")
        }
    }

    /// The shared certificates, or a skip when the `openssl` command is missing.
    static func get() throws -> TestCertificates {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl") else {
            throw XCTSkip("the openssl command is not installed (scripts/bootstrap.sh installs it)")
        }
        return try shared.get()
    }

    /// A server context with the server certificate (or `chain`), optionally requiring client certificates.
    func serverContext(chain: String? = nil, requireClientCertificates: Bool = false) throws -> TLSContext {
        var configuration = TLSConfiguration.server(certificateChain: .file(chain ?? serverChain), privateKey: .file(serverKey))
        if requireClientCertificates {
            configuration.requiresClientCertificate = true
            configuration.trustRoots = .certificates(.file(caFile))
        }
        return try TLSContext(configuration)
    }

    /// A client context trusting the test CA (or `ca`), optionally showing the client certificate.
    func clientContext(ca: String? = nil, withCertificate: Bool = false) throws -> TLSContext {
        var configuration = TLSConfiguration.client(trustRoots: .certificates(.file(ca ?? caFile)))
        if withCertificate {
            configuration.certificateChain = .file(clientChain)
            configuration.privateKey = .file(clientKey)
        }
        return try TLSContext(configuration)
    }
}

/// `tls` made again with `serverName` as the name the server's certificate must carry (itself when nil).
func naming(_ tls: TLSContext?, _ serverName: String?) throws -> TLSContext? {
    guard let tls, let serverName else { return tls }
    var configuration = tls.configuration
    configuration.serverName = serverName
    return try TLSContext(configuration)
}
