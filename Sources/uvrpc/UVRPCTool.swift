import ArgumentParser
import Dispatch
import Logging
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
        return c
    }
}

/// Prints to stderr (diagnostics never mix with the stdout protocol of the tool).
func printError(_ text: String) {
    let line = text + "\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

/// `count` random bytes, a word at a time.
func randomBytes(_ count: Int, using generator: inout some RandomNumberGenerator) -> [UInt8] {
    [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
        var i = 0
        while i < count {
            var word = generator.next()
            let n = min(8, count - i)
            withUnsafeBytes(of: &word) { buffer.baseAddress!.advanced(by: i).initialize(from: $0.baseAddress!.assumingMemoryBound(to: UInt8.self), count: n) }
            i += n
        }
        initialized = count
    }
}

/// Stops `loop` on SIGINT / SIGTERM.
func stopOnSignals(_ loop: EventLoop, then: @escaping @Sendable () -> Void = {}) -> [DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { signum in
        signal(signum, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signum, queue: .global())
        source.setEventHandler {
            then()
            loop.shutdown()
        }
        source.resume()
        return source
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an echo server: every endpoint answers each message with the same bytes.",
        discussion: "The first stdout line is exactly `listening on HOST:PORT` (or `listening on unix:PATH`). Runs until SIGINT or SIGTERM, then shuts down cleanly and exits 0."
    )

    @Option(help: "Address to listen on (IPv4 or IPv6).")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on; 0 picks a free one.")
    var port = 0

    @Option(help: "Listen on this Unix socket path instead of TCP.")
    var unix: String?

    @Option(help: "Connections the kernel may queue before they are accepted.")
    var backlog: Int32 = 4096

    @OptionGroup var endpoint: EndpointOptions

    @Flag(help: "Log connections closing for a reason other than a clean close, to stderr.")
    var verbose = false

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, not \(port)") }
    }

    func run() throws {
        // Logs go to stderr: stdout carries only the listening line.
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        let address: SocketAddress = unix.map { .unix(path: $0) } ?? SocketAddress(host: host, port: port)
        let loop = try EventLoop(name: "uvrpc-serve")
        let configuration = endpoint.configuration
        let backlog = self.backlog
        let logger = {
            var logger = Logger(label: "uvrpc.serve")
            logger.logLevel = verbose ? .info : .critical
            return logger
        }()
        let failed = LockedValue<String?>(nil)
        loop.execute {
            do {
                let server = try RPCServer(loop: loop, address: address, configuration: configuration,
                                           backlog: backlog, logger: logger) { endpoint in
                    endpoint.onMessage = { payload, responder in try responder.respond(payload) }
                }
                print("listening on \(server.address)")
                fflush(nil) // every stream: scripts wait for this line
            } catch {
                failed.withLock { $0 = "uvrpc serve: cannot listen: \(error)" }
                loop.shutdown()
            }
        }
        let signals = stopOnSignals(loop)
        // The sources must outlive the loop: a released source stops watching.
        try withExtendedLifetime(signals) { try loop.run() }
        if let message = failed.withLock({ $0 }) {
            printError(message)
            throw ToolExit.cannotConnect
        }
    }
}

struct Call: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send messages of random bytes to an echo server and check every answer.",
        discussion: "Messages the peer sends are echoed back. Prints a summary; exits non-zero on any mismatch, error or timeout."
    )

    @Option(help: "HOST:PORT, [IPV6]:PORT or unix:PATH of the server.")
    var connect: String

    @Option(help: "Number of messages to send.")
    var count = 1000

    @Option(help: "Bytes per message.")
    var size = 64

    @Option(help: "Messages in flight at once.")
    var concurrency = 16

    @Option(help: "Seconds each call may take before it fails.")
    var timeout: Double = 60

    @Option(help: "Keep the connection open this many seconds after the calls (keepalives flowing).")
    var hold: Double = 0

    @OptionGroup var endpoint: EndpointOptions

    func validate() throws {
        guard SocketAddress(parsing: connect) != nil else {
            throw ValidationError("--connect must be HOST:PORT, [IPV6]:PORT or unix:PATH, not '\(connect)'")
        }
        guard count >= 0 else { throw ValidationError("--count must not be negative") }
        guard size >= 0 && size <= Int(UInt32.max) else { throw ValidationError("--size must be 0...4294967295") }
        guard concurrency > 0 else { throw ValidationError("--concurrency must be positive") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        guard hold >= 0 else { throw ValidationError("--hold must not be negative") }
    }

    struct Summary: Sendable {
        var ok = 0
        var mismatched = 0
        var failed: [String] = []
        var connectError: String?
        var closeReason: String?
        var echoed = 0
        var seconds = 0.0
    }

    func run() throws {
        let address = SocketAddress(parsing: connect)!
        let loop = try EventLoop(name: "uvrpc-call")
        let summary = LockedValue(Summary())
        let (count, size, concurrency, hold) = (self.count, self.size, self.concurrency, self.hold)
        let callTimeout = Duration.milliseconds(Int64(timeout * 1000))
        let configuration = endpoint.configuration
        loop.execute {
            RPCClient.connect(to: address, on: loop, configuration: configuration) { result in
                guard case .success(let endpoint) = result else {
                    if case .failure(let error) = result { summary.withLock { $0.connectError = "\(error)" } }
                    loop.shutdown()
                    return
                }
                endpoint.onMessage = { payload, responder in
                    summary.withLock { $0.echoed += 1 }
                    try responder.respond(payload)
                }
                endpoint.onClose = { reason in
                    if reason != .local { summary.withLock { $0.closeReason = "\(reason)" } }
                    loop.shutdown()
                }
                var generator = SystemRandomNumberGenerator()
                var sent = 0, finished = 0
                let start = loop.now
                func finishAll() {
                    summary.withLock { $0.seconds = Double(loop.now - start) / 1000 }
                    if hold > 0 {
                        _ = loop.scheduleTimer(after: .milliseconds(Int64(hold * 1000))) { endpoint.close() }
                    } else {
                        endpoint.close()
                    }
                }
                func sendNext() {
                    let index = sent
                    sent += 1
                    let payload = randomBytes(size, using: &generator)
                    endpoint.send(payload, timeout: callTimeout, closeOnError: false) { result in
                        switch result {
                        case .success(let answer) where answer == payload: summary.withLock { $0.ok += 1 }
                        case .success: summary.withLock { $0.mismatched += 1 }
                        case .failure(let error):
                            summary.withLock { if $0.failed.count < 10 { $0.failed.append("call \(index): \(error)") } else { $0.failed.append("") } }
                        }
                        finished += 1
                        if sent < count { sendNext() } else if finished == count { finishAll() }
                    }
                }
                if count == 0 { finishAll() }
                for _ in 0..<min(concurrency, count) { sendNext() }
            }
        }
        let signals = stopOnSignals(loop)
        // The sources must outlive the loop: a released source stops watching.
        try withExtendedLifetime(signals) { try loop.run() }
        let s = summary.withLock { $0 }
        if let error = s.connectError {
            printError("uvrpc call: cannot connect: \(error)")
            throw ToolExit.cannotConnect
        }
        let rate = s.seconds > 0 ? Double(s.ok) / s.seconds : 0
        print("calls: \(count), ok: \(s.ok), mismatched: \(s.mismatched), failed: \(s.failed.count), "
              + "echoed for the peer: \(s.echoed), seconds: \(s.seconds), calls/s: \(Int(rate))")
        for line in s.failed where !line.isEmpty { printError(line) }
        if let reason = s.closeReason { printError("uvrpc call: the connection ended: \(reason)") }
        if s.ok != count || s.closeReason != nil { throw ToolExit.callFailed }
    }
}
