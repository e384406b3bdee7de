import Foundation
import Synchronization
import UVLoop
import UVRPC

/// The hol scenario: latency of small calls on a connection that is also
/// carrying big messages both ways (issue 15's chunking). Swift only, in this
/// process: the C baseline has no chunking to compare with.
enum HeadOfLineMode: String, CaseIterable {
    /// Small calls alone on the connection.
    case idle
    /// Small calls beside 64 MiB echoes, chunked (both sides announce `chunk`).
    case chunked
    /// The same without chunking: each 64 MiB goes as one MESSAGE_BIG / RESPONSE_BIG.
    case unchunked
    /// The 64 MiB echoes alone, chunked (what chunking costs big transfers).
    case bulkChunked = "bulk-chunked"
    /// The 64 MiB echoes alone, unchunked.
    case bulkUnchunked = "bulk-unchunked"

    var hasSmallCalls: Bool { self == .idle || self == .chunked || self == .unchunked }
    var hasBigCalls: Bool { self != .idle }
    var chunks: Bool { self == .chunked || self == .bulkChunked }
}

struct HeadOfLineResult {
    var p50Microseconds: Double
    var p99Microseconds: Double
    var smallCalls: Int
    var bigCalls: Int
    var seconds: Double
    /// Payload megabytes (10^6 bytes) per second, both ways, of the big calls.
    var bigMegabytesPerSecond: Double
}

/// Keeps 16 calls of 64 B in flight for `seconds` (and, unless `mode` is
/// idle, one 64 MiB call at a time, echoed) between a server and a client on
/// two loops; returns the small calls' latency percentiles.
func measureHeadOfLine(_ mode: HeadOfLineMode, seconds: Double, bigSize: Int = 64 << 20,
                       inFlight: Int = 16) throws -> HeadOfLineResult {
    let serverLoop = try EventLoop(name: "hol-server"), clientLoop = try EventLoop(name: "hol-client")
    serverLoop.start()
    clientLoop.start()
    defer {
        _ = clientLoop.syncShutdown()
        _ = serverLoop.syncShutdown()
    }
    var configuration = RPCEndpoint.Configuration()
    configuration.maximumPayloadSize = bigSize + 1024
    configuration.maximumPendingWriteBytes = 4 * bigSize
    var clientConfiguration = configuration
    if !mode.chunks { clientConfiguration.extensions.remove(.chunking) }
    let serverConfiguration = configuration
    let big = [UInt8](repeating: 0x5a, count: bigSize)
    let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: serverConfiguration),
                                on: serverLoop, handler: .callback { endpoint in
        // Small calls are echoed; a big one is answered with a big payload of the server's own
        // (no copy on either side: the bench measures waiting, not copying).
        endpoint.onMessage = { request in
            if request.payload.count == bigSize { try request.respond(big) } else { try request.respond(request.payload) }
        }
    }).startAndWait().address // stopped by the loop's shutdown
    struct Outcome: Sendable { var latencies: [UInt64]; var bigCalls: Int; var error: String? }
    let done = Mutex<Outcome?>(nil)
    let finished = DispatchSemaphore(value: 0)
    let configured = clientConfiguration
    clientLoop.execute {
        RPCClient.connect(to: address, on: clientLoop, configuration: configured) { result in
            guard case .success(let client) = result else {
                done.withLock { $0 = Outcome(latencies: [], bigCalls: 0, error: "\(result)") }
                finished.signal()
                return
            }
            var latencies: [UInt64] = []
            latencies.reserveCapacity(1 << 20)
            var bigCalls = 0
            var stopping = false
            var open = 0
            let small = [UInt8](repeating: 7, count: 64)
            // Tagged calls (tag 0: the big one; 1...inFlight: a lane of small ones):
            // big payloads are neither copied when sent nor when answered.
            var startedAt = [UInt64](repeating: 0, count: inFlight + 1)
            func send(_ tag: Int) {
                open += 1
                startedAt[tag] = EventLoop.monotonicNanoseconds
                client.send(tag == 0 ? big : small, tag: UInt64(tag), timeout: .seconds(120), closeOnError: false)
            }
            client.onTaggedResponse = { tag, result in
                open -= 1
                if case .success = result {
                    if tag == 0 { bigCalls += 1 } else { latencies.append(EventLoop.monotonicNanoseconds - startedAt[Int(tag)]) }
                }
                if !stopping { return send(Int(tag)) }
                if open == 0 {
                    client.close()
                    done.withLock { $0 = Outcome(latencies: latencies, bigCalls: bigCalls, error: nil) }
                    finished.signal()
                }
            }
            if mode.hasBigCalls { send(0) }
            if mode.hasSmallCalls { for lane in 1...inFlight { send(lane) } }
            _ = clientLoop.scheduleTimer(after: .milliseconds(Int64(seconds * 1000))) { stopping = true }
        }
    }
    guard finished.wait(timeout: .now() + seconds + 120) == .success else { throw BenchError("hol: the calls did not end") }
    let outcome = done.withLock { $0 }!
    if let error = outcome.error { throw BenchError("hol: cannot connect: \(error)") }
    let megabytes = Double(outcome.bigCalls * 2 * bigSize) / 1e6
    guard mode.hasSmallCalls else {
        return HeadOfLineResult(p50Microseconds: 0, p99Microseconds: 0, smallCalls: 0, bigCalls: outcome.bigCalls,
                                seconds: seconds, bigMegabytesPerSecond: megabytes / seconds)
    }
    guard !outcome.latencies.isEmpty else { throw BenchError("hol: no small call was answered") }
    let sorted = outcome.latencies.sorted()
    func percentile(_ p: Double) -> Double {
        Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
    }
    if ProcessInfo.processInfo.environment["HOL_DEBUG"] != nil {
        print("hol \(mode): p50 \(percentile(0.5)) p90 \(percentile(0.9)) p95 \(percentile(0.95)) p98 \(percentile(0.98)) p99 \(percentile(0.99)) p99.9 \(percentile(0.999)) max \(percentile(1))")
    }
    return HeadOfLineResult(p50Microseconds: percentile(0.5), p99Microseconds: percentile(0.99),
                            smallCalls: sorted.count, bigCalls: outcome.bigCalls, seconds: seconds,
                            bigMegabytesPerSecond: megabytes / seconds)
}
