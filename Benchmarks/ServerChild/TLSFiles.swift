import Foundation

/// A server certificate for `localhost` and 127.0.0.1, its key, and the CA
/// that signed it (which clients trust): made with the `openssl` command.
public struct TLSFiles: Sendable {
    public let ca: String
    public let certificate: String
    public let key: String

    /// Makes them in a new temporary folder named after `prefix` and this process.
    public static func make(prefix: String) throws -> TLSFiles {
        let directory = NSTemporaryDirectory() + "\(prefix)-\(getpid())"
        let script = """
            set -e
            mkdir -p '\(directory)' && cd '\(directory)'
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out ca.key 2>/dev/null
            openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj "/CN=\(prefix) CA"
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out server.key 2>/dev/null
            openssl req -new -key server.key -out server.csr -subj "/CN=localhost"
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ServerChildError(description: "openssl could not make the certificates (is the openssl command installed?)")
        }
        return TLSFiles(ca: directory + "/ca.pem", certificate: directory + "/server.pem", key: directory + "/server.key")
    }
}
