import Foundation
import ServerChild

/// The certificate, key and CA of the TLS scenario: made on first use (the tls scenario only).
let benchTLSFiles: Result<TLSFiles, any Error> = Result { try TLSFiles.make(prefix: "uvrpc-bench-tls") }

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
