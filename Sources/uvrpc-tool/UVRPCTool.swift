import ArgumentParser
import Dispatch
import CoreMetrics
import Logging
import Prometheus
import Synchronization
import UVLoop
import UVRPC
#if canImport(Glibc)
import Glibc
#endif

@main
struct UVRPCTool: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uvrpc",
        abstract: "Serve or call efro.rpc (protocol 2) endpoints over TCP or Unix sockets.",
        discussion: """
            Exit codes: 0 success; 1 a call failed, timed out or got a wrong answer; \
            3 could not listen or connect; 64 bad arguments.
            """,
        subcommands: [Serve.self, Call.self]
    )
}

/// Exit codes shared by the subcommands.
enum ToolExit {
    static let callFailed = ExitCode(1)
    static let cannotConnect = ExitCode(3)
}

/// Endpoint settings common to both subcommands.
struct EndpointOptions: ParsableArguments {
    @Option(help: "Seconds between the KEEPALIVE packets this side sends.")
    var keepaliveInterval: Double = 10.73

    @Option(help: "Close a connection after this many seconds without anything from the peer.")
    var keepaliveTimeout: Double = 30

    @Option(help: "Close a connection whose handshake has not arrived after this many seconds.")
    var handshakeTimeout: Double = 30

    @Option(help: "Close a connection after this many seconds in which the peer read none of the bytes waiting for it; 0 never.")
    var writeTimeout: Double = 30

    @Option(help: "Largest payload accepted from a peer, in bytes; a larger one closes that connection.")
    var maxPayload: Int = 64 << 20

    @Flag(help: "Announce no protocol extension (error answers, cancel, chunking, go-away, metadata): the handshake is the reference's, byte for byte.")
    var noExtensions = false

    func validate() throws {
        guard keepaliveInterval > 0 else { throw ValidationError("--keepalive-interval must be positive") }
        guard keepaliveTimeout > 0 else { throw ValidationError("--keepalive-timeout must be positive") }
        guard handshakeTimeout > 0 else { throw ValidationError("--handshake-timeout must be positive") }
        guard writeTimeout >= 0 else { throw ValidationError("--write-timeout must not be negative") }
        try checkSeconds(keepaliveInterval, "--keepalive-interval")
        try checkSeconds(keepaliveTimeout, "--keepalive-timeout")
        try checkSeconds(handshakeTimeout, "--handshake-timeout")
        try checkSeconds(writeTimeout, "--write-timeout")
        guard maxPayload > 0 else { throw ValidationError("--max-payload must be positive") }
    }

    var configuration: RPCEndpoint.Configuration {
        var c = RPCEndpoint.Configuration()
        c.keepaliveInterval = .milliseconds(Int64(keepaliveInterval * 1000))
        c.keepaliveTimeout = .milliseconds(Int64(keepaliveTimeout * 1000))
        c.handshakeTimeout = .milliseconds(Int64(handshakeTimeout * 1000))
        c.writeTimeout = writeTimeout > 0 ? .milliseconds(Int64(writeTimeout * 1000)) : nil
        c.maximumPayloadSize = maxPayload
        if noExtensions { c.extensions = [] }
        return c
    }
}

/// What `serve --fail-every N` throws: public, so its text is the error answer's reason.
struct ToolHandlerFailure: RPCPublicError, CustomStringConvertible {
    var message: Int
    var description: String { "uvrpc serve --fail-every: message \(message) of this connection fails" }
}

/// Prints to stderr (diagnostics never mix with the stdout protocol of the tool).
func printError(_ text: String) {
    let line = text + "\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

/// The most seconds a time option takes: about 31 years, past any use, and
/// still whole in a `Duration` of nanoseconds (options were converted with
/// `Int64(seconds * 1e9)`, which trapped for `inf` or `1e16`: SIGILL).
let maximumOptionSeconds: Double = 1e9

/// Checks that time option `name` is finite and at most ``maximumOptionSeconds``.
func checkSeconds(_ seconds: Double, _ name: String) throws {
    guard seconds.isFinite, seconds <= maximumOptionSeconds else {
        throw ValidationError("\(name) must be at most \(Int(maximumOptionSeconds)) seconds, not \(seconds)")
    }
}

/// `count` bytes that look random, made from `seed` with xorshift64*
/// (plenty for checking echoes). No system call: the system's generator
/// gives a run its seed once (a `getrandom` per call cost `uvrpc call` half
/// its CPU time, and one per word made big calls take seconds of the loop's time).
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = splitMix64(seed) | 1 // seeds that differ by one give unrelated streams
    return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
        var i = 0
        while i < count {
            state ^= state >> 12; state ^= state << 25; state ^= state >> 27
            var word = state &* 2685821657736338717
            let n = min(8, count - i)
            withUnsafeBytes(of: &word) { buffer.baseAddress!.advanced(by: i).initialize(from: $0.baseAddress!.assumingMemoryBound(to: UInt8.self), count: n) }
            i += n
        }
        initialized = count
    }
}

/// `--loops` and `--spread` parsing.
extension ConnectionSpread: ExpressibleByArgument {}

/// Makes swift-metrics report to a Prometheus registry (for `serve --metrics`)
/// and returns the registry. Call durations get sub-millisecond buckets: a
/// call on a local network takes tens of microseconds.
func bootstrapPrometheus() -> PrometheusCollectorRegistry {
    let registry = PrometheusCollectorRegistry()
    var factory = PrometheusMetricsFactory(registry: registry)
    factory.durationHistogramBuckets["uvrpc_call_duration_seconds"] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
        .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(5),
    ]
    MetricsSystem.bootstrap(factory)
    return registry
}
