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

    @Flag(help: "Announce no protocol extension (error answers, cancel, chunking, go-away): the handshake is the reference's, byte for byte.")
    var noExtensions = false

    func validate() throws {
        guard keepaliveInterval > 0 else { throw ValidationError("--keepalive-interval must be positive") }
        guard keepaliveTimeout > 0 else { throw ValidationError("--keepalive-timeout must be positive") }
        guard handshakeTimeout > 0 else { throw ValidationError("--handshake-timeout must be positive") }
        guard writeTimeout >= 0 else { throw ValidationError("--write-timeout must not be negative") }
        guard maxPayload > 0 else { throw ValidationError("--max-payload must be positive") }
    }

    var configuration: RPCEndpoint.Configuration {
        var c = RPCEndpoint.Configuration()
        c.keepaliveInterval = .milliseconds(Int64(keepaliveInterval * 1000))
        c.keepaliveTimeout = .milliseconds(Int64(keepaliveTimeout * 1000))
        c.handshakeTimeout = .milliseconds(Int64(handshakeTimeout * 1000))
        c.connectionOptions.writeTimeout = writeTimeout > 0 ? .milliseconds(Int64(writeTimeout * 1000)) : nil
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

/// `count` random bytes, a word at a time: from the system's generator
/// only the seed (a syscall per word made big calls take seconds of the
/// loop's time), the rest from xorshift64*, which is plenty for checking echoes.
func randomBytes(_ count: Int, using generator: inout some RandomNumberGenerator) -> [UInt8] {
    var state = generator.next() | 1
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

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an echo server: every endpoint answers each message with the same bytes.",
        discussion: """
            The first stdout line is exactly `listening on HOST:PORT` (or `listening on unix:PATH`). \
            With --loops N the server runs N event loops, one thread each, and spreads connections over \
            them (--spread). On SIGUSR1 it prints `connections per loop: A B ... (unanswered requests: N)` \
            (open connections of \
            loop 0, 1, ...). Runs until SIGINT or SIGTERM, then drains (stops accepting, answers what \
            it received, closes each connection once nothing is in flight) for at most --grace \
            seconds, closes the rest, and exits 0.
            """
    )

    @Option(help: "Address to listen on (IPv4 or IPv6).")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on; 0 picks a free one.")
    var port = 0

    @Option(help: "Listen on this Unix socket path instead of TCP.")
    var unix: String?

    @Option(help: "Connections the kernel may queue before they are accepted.")
    var backlog: Int32 = 4096

    @Option(help: "Event loops (threads) serving connections.")
    var loops = 1

    @Option(help: "How connections are spread over the loops: reuse-port (a socket per loop, TCP only) or round-robin (one acceptor).")
    var spread: ConnectionSpread = .roundRobin

    @Option(help: "On SIGINT / SIGTERM, seconds to let calls in flight finish before closing the rest.")
    var grace: Double = 10

    @Option(help: "Answer each message after this many seconds (a timer, not a blocked loop), for drain tests and demos.")
    var answerAfter: Double?

    @Option(help: "The echo handler throws on every Nth message (a peer with error answers sees its call fail at once, an efro.rpc peer sees no answer), for tests and demos.")
    var failEvery: Int?

    @OptionGroup var endpoint: EndpointOptions

    @OptionGroup var tls: ServerTLSOptions

    @Option(help: "Serve the metrics in the Prometheus text format at http://HOST:PORT/metrics (port 0 picks a free one; the second line printed says where).")
    var metrics: String?

    @Flag(help: "Also log connections closing for a reason other than a clean close, to stderr (warnings always are).")
    var verbose = false

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, not \(port)") }
        guard loops >= 1 else { throw ValidationError("--loops must be at least 1, not \(loops)") }
        guard grace >= 0 else { throw ValidationError("--grace must not be negative, not \(grace)") }
        if let answerAfter, answerAfter < 0 { throw ValidationError("--answer-after must not be negative, not \(answerAfter)") }
        if let failEvery, failEvery < 1 { throw ValidationError("--fail-every must be at least 1, not \(failEvery)") }
        if let metrics, SocketAddress(parsing: metrics) == nil {
            throw ValidationError("--metrics must be HOST:PORT or [IPV6]:PORT, not \(metrics)")
        }
        if unix != nil && spread == .reusePort && loops > 1 {
            throw ValidationError("--spread reuse-port needs TCP; a Unix socket server spreads round-robin")
        }
    }

    func run() throws {
        // Logs go to stderr: stdout carries only the listening line (and SIGUSR1 reports).
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        // Before any endpoint exists: each loop makes its metric objects with its first endpoint.
        let registry = metrics.map { _ in bootstrapPrometheus() }
        let address: SocketAddress = unix.map { .unix(path: $0) } ?? SocketAddress(host: host, port: port)
        StopSignals.unblockWatchedSignals() // before the loops' threads inherit this thread's mask
        let group = try ProcessLimits.startLoops(command: "uvrpc serve", name: "uvrpc-serve", loops: loops,
                                                 sockets: 3 + (metrics == nil ? 0 : 1)) // listener, its reserve, a connection
        StopSignals.blockOnThisThread() // only the loops take the signals from now on
        // Watched before anything else opens descriptors; a second signal stops at
        // once: every loop shuts down, which closes every connection without waiting.
        // The signals are blocked first: closing the watchers restores their default
        // action, and a later SIGTERM would then end the process by that signal.
        let statusReport = LockedValue<(@Sendable () -> Void)?>(nil)
        let signals: StopSignals
        do {
            signals = try StopSignals(on: group.loops[0], onSecond: {
                DispatchQueue.global().async { // off the loop: blocking waits for every loop
                    StopSignals.blockWatchedSignals(on: group.loops)
                    group.beginShutdown()
                }
            }, onReport: { statusReport.withLock { $0 }?() })
        } catch {
            printError("uvrpc serve: cannot watch SIGINT / SIGTERM: \(error)")
            group.syncShutdown()
            throw ToolExit.cannotConnect
        }
        let logger = {
            var logger = Logger(label: "uvrpc.serve")
            logger.logLevel = verbose ? .info : .warning
            return logger
        }()
        var configuration = endpoint.configuration
        do {
            configuration.connectionOptions.tls = try tls.context()
            configuration.tlsHandshakesPerPeer = tls.handshakeLimit
        } catch {
            printError("uvrpc serve: \(error)")
            group.syncShutdown()
            throw ToolExit.cannotConnect
        }
        var serverConfiguration = RPCServer.Configuration(address: address, endpoint: configuration)
        (serverConfiguration.spread, serverConfiguration.backlog) = (spread, backlog)
        let delay = answerAfter.map { Duration.nanoseconds(Int64($0 * 1e9)) }
        let failEvery = self.failEvery
        let server = RPCServer(configuration: serverConfiguration, on: group, logger: logger, handler: .callback { endpoint in
            if let failEvery {
                var seen = 0 // per connection, on its loop
                endpoint.onMessage = { request in
                    seen += 1
                    if seen % failEvery == 0 { throw ToolHandlerFailure(message: seen) }
                    try request.respond(request.payload)
                }
            } else if let delay {
                endpoint.onMessage = { request in
                    let answer = Array(request.payload) // the view ends with this call
                    _ = endpoint.loop.scheduleTimer(after: delay) {
                        _ = try? request.respond(answer)
                    }
                }
            } else {
                endpoint.onMessage = { request in try request.respond(request.payload) }
            }
        })
        let running = Task.detached { try await server.run() }
        guard let listening = try? runBlocking({ await server.listeningAddress }) else {
            let outcome = try? runBlocking { await running.result }
            let reason = if case .failure(let error)? = outcome { "\(error)" } else { "the server stopped first" }
            printError("uvrpc serve: cannot listen: \(reason)")
            group.syncShutdown()
            throw ToolExit.cannotConnect
        }
        // SIGUSR1 is watched from the start (it never kills the process); it reports once the server exists.
        statusReport.withLock { $0 = {
            let open = server.openEndpoints
            let counts = group.loops.map { loop in open.filter { $0.loop === loop }.count }
            // Messages received and not answered yet, read on each endpoint's loop.
            let unanswered = group.loops.reduce(0) { total, loop in
                let here = open.filter { $0.loop === loop }
                let count: Int? = try? loop.submitAndWait {
                    var count = 0
                    for handle in here { count += handle.endpoint.unansweredRequestCount }
                    return count
                }
                return total + (count ?? 0)
            }
            print("connections per loop: \(counts.map(String.init).joined(separator: " ")) (unanswered requests: \(unanswered))")
            fflush(nil)
        } }
        print("listening on \(listening)")
        if let registry, let metrics, let metricsAddress = SocketAddress(parsing: metrics) {
            do {
                let bound = try MetricsPage.serve(registry, on: metricsAddress, loop: group.loops[0])
                print("metrics on http://\(bound)/metrics")
            } catch {
                printError("uvrpc serve: cannot serve the metrics: \(error)")
                server.close()
                _ = try? runBlocking { try await running.value }
                group.syncShutdown()
                throw ToolExit.cannotConnect
            }
        }
        fflush(nil) // every stream: scripts wait for these lines
        signals.waitForStop()
        let gracePeriod = Duration.nanoseconds(Int64(grace * 1e9))
        server.close(gracePeriod: gracePeriod)
        _ = try? runBlocking { try await running.value }
        statusReport.withLock { $0 = nil }
        StopSignals.blockWatchedSignals(on: group.loops)
        let status = group.syncShutdown()
        if signals.stoppedAtOnce { printError("uvrpc serve: a second signal: stopped at once, without finishing the drain") }
        if status != 0 { printError("uvrpc serve: an event loop did not close cleanly (uv_loop_close: \(status.map(String.init) ?? "timed out"))") }
    }
}

struct Call: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send messages of random bytes to an echo server and check every answer.",
        discussion: """
            Calls go over --connections connections spread over --loops event loops (each call on the \
            connection with the fewest calls in flight). Messages the peer sends are echoed back. \
            Prints a summary; exits non-zero on any mismatch, error or timeout.
            """
    )

    @Option(help: "HOST:PORT, [IPV6]:PORT or unix:PATH of the server.")
    var connect: String

    @Option(help: "Number of messages to send.")
    var count = 1000

    @Option(help: "Bytes per message.")
    var size = 64

    @Option(help: "Messages in flight at once (over all connections).")
    var concurrency = 16

    @Option(help: "Seconds each call may take before it fails.")
    var timeout: Double = 60

    @Option(help: "Keep the connections open this many seconds after the calls (keepalives flowing).")
    var hold: Double = 0

    @Option(help: "Event loops (threads) the connections are spread over.")
    var loops = 1

    @Option(help: "Connections to the server.")
    var connections = 1

    @OptionGroup var endpoint: EndpointOptions

    @OptionGroup var tls: ClientTLSOptions

    func validate() throws {
        guard SocketAddress(parsing: connect) != nil else {
            throw ValidationError("--connect must be HOST:PORT, [IPV6]:PORT or unix:PATH, not '\(connect)'")
        }
        guard count >= 0 else { throw ValidationError("--count must not be negative") }
        guard size >= 0 && size <= Int(UInt32.max) else { throw ValidationError("--size must be 0...4294967295") }
        guard concurrency > 0 else { throw ValidationError("--concurrency must be positive") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        guard hold >= 0 else { throw ValidationError("--hold must not be negative") }
        guard loops >= 1 else { throw ValidationError("--loops must be at least 1, not \(loops)") }
        guard connections >= 1 else { throw ValidationError("--connections must be at least 1, not \(connections)") }
    }

    struct Summary: Sendable {
        var ok = 0
        var mismatched = 0
        var failed: [String] = []
        var closeReason: String?
        var echoed = 0
    }

    func run() throws {
        let address = SocketAddress(parsing: connect)!
        let tlsContext: TLSContext?
        do {
            tlsContext = try tls.context()
        } catch {
            printError("uvrpc call: \(error)")
            throw ToolExit.cannotConnect
        }
        let group = try ProcessLimits.startLoops(command: "uvrpc call", name: "uvrpc-call", loops: loops, sockets: connections)
        let summary = LockedValue(Summary())
        let configuration = {
            var configuration = RPCClientPool.Configuration()
            configuration.connectionsPerAddress = connections
            configuration.endpoint = endpoint.configuration
            configuration.endpoint.connectionOptions.tls = tlsContext
            configuration.endpoint.connectionOptions.tlsServerName = tls.serverName
            // A lost connection fails the run; it is not made again behind the checks' back.
            configuration.reconnectDelay = .seconds(3600)
            configuration.maximumReconnectDelay = .seconds(3600)
            return configuration
        }()
        let pool = try runBlocking {
            await RPCClientPool.connect(to: [address], on: group, configuration: configuration) { endpoint in
                endpoint.onMessage = { request in
                    summary.withLock { $0.echoed += 1 }
                    try request.respond(request.payload)
                }
                endpoint.onClose = { reason in
                    if reason != .local { summary.withLock { $0.closeReason = "\(reason)" } }
                }
            }
        }
        guard pool.connectionStates.allSatisfy(\.isOpen) else {
            printError("uvrpc call: cannot connect: \(pool.lastConnectError ?? "to \(address)")")
            try runBlocking { await pool.close() }
            group.syncShutdown()
            throw ToolExit.cannotConnect
        }
        let seconds = runCalls(on: pool, loops: group.loops, summary: summary)
        if hold > 0 { usleep(UInt32(hold * 1_000_000)) } // keepalives flow meanwhile, on the loops
        try runBlocking { await pool.close() }
        group.syncShutdown()
        let s = summary.withLock { $0 }
        let rate = seconds > 0 ? Double(s.ok) / seconds : 0
        print("calls: \(count), ok: \(s.ok), mismatched: \(s.mismatched), failed: \(s.failed.count), "
              + "echoed for the peer: \(s.echoed), seconds: \(seconds), calls/s: \(Int(rate))")
        for line in s.failed where !line.isEmpty { printError(line) }
        if let reason = s.closeReason { printError("uvrpc call: the connection ended: \(reason)") }
        if s.ok != count || s.closeReason != nil { throw ToolExit.callFailed }
    }

    /// Keeps `concurrency` calls in flight, lanes spread over the loops (each
    /// lane sends its next call when its last one ended); returns the seconds taken.
    private func runCalls(on pool: RPCClientPool, loops: [EventLoop], summary: LockedValue<Summary>) -> Double {
        let (count, size) = (self.count, self.size)
        let callTimeout = Duration.milliseconds(Int64(timeout * 1000))
        let started = Atomic<Int>(0), finished = Atomic<Int>(0)
        let clock = ContinuousClock(), start = clock.now
        let finishedAll = DispatchSemaphore(value: 0)
        do {
            if count == 0 { finishedAll.signal() }
            @Sendable func send(_ index: Int, _ payload: [UInt8]) {
                pool.send(payload, timeout: callTimeout) { result in
                    // A full send buffer is backpressure, not failure: the call tries again once
                    // the socket had time to take bytes (waiting for another call's end could wait
                    // forever when none is left in flight).
                    if case .failure(let error) = result, case .sendBufferFull = error.reason {
                        let loop = loops[index % loops.count] // pool.send is made on a loop
                        return DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(5)) {
                            loop.execute { send(index, payload) }
                        }
                    }
                    switch result {
                    case .success(let answer) where answer == payload: summary.withLock { $0.ok += 1 }
                    case .success: summary.withLock { $0.mismatched += 1 }
                    case .failure(let error):
                        summary.withLock { $0.failed.append($0.failed.count < 10 ? "call \(index): \(error)" : "") }
                    }
                    if finished.wrappingAdd(1, ordering: .relaxed).newValue == count { finishedAll.signal() } else { sendNext() }
                }
            }
            @Sendable func sendNext() {
                let index = started.wrappingAdd(1, ordering: .relaxed).oldValue
                guard index < count else { return }
                var generator = SystemRandomNumberGenerator()
                send(index, randomBytes(size, using: &generator))
            }
            for lane in 0..<min(concurrency, count) { loops[lane % loops.count].execute { sendNext() } }
        }
        finishedAll.wait()
        let elapsed = clock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }
}

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
