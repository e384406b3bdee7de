import Foundation

/// The certificate and key the TLS scenario's servers use, and the CA the
/// load generator trusts: made once per run with the `openssl` command.
struct BenchTLSFiles: Sendable {
    let ca: String
    let certificate: String
    let key: String
}

/// Made on first use (the tls scenario only).
let benchTLSFiles: Result<BenchTLSFiles, any Error> = Result {
    let directory = NSTemporaryDirectory() + "uvrpc-bench-tls-\(getpid())"
    let script = """
        set -e
        mkdir -p '\(directory)' && cd '\(directory)'
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out ca.key 2>/dev/null
        openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj "/CN=uvrpc-bench CA"
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
        throw BenchError("openssl could not make the TLS scenario's certificates (is the openssl command installed?)")
    }
    return BenchTLSFiles(ca: directory + "/ca.pem", certificate: directory + "/server.pem", key: directory + "/server.key")
}

/// What `uvrpc-c churn` prints.
struct ChurnResult: Decodable {
    let handshakes: Int
    let seconds: Double
    let handshakes_per_s: Double
}

/// Fresh connections (TCP, TLS and efro.rpc handshakes, one call, a reset)
/// on `lanes` lanes for `duration` seconds; returns handshakes per second.
func runChurn(address: String, lanes: Int, duration: Double, cpu: Int?, tlsCA: String?) throws -> Double {
    var arguments = ["churn", "--connect", address, "--connections", "\(lanes)", "--duration", "\(duration)"]
    if let tlsCA { arguments += ["--tls-ca", tlsCA] }
    let child = try Child(try sibling("uvrpc-c"), arguments, cpu: cpu)
    defer { child.stop() }
    let line = try child.readLine(seconds: duration + 120)
    guard let result = try? JSONDecoder().decode(ChurnResult.self, from: Data(line.utf8)) else {
        throw BenchError("churn said '\(line)'")
    }
    return result.handshakes_per_s
}
