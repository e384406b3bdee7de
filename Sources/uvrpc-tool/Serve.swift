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
        try checkSeconds(grace, "--grace")
        if let answerAfter { try checkSeconds(answerAfter, "--answer-after") }
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
            configuration.tls = try tls.context()
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
