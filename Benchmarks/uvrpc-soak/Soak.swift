import ArgumentParser
import Foundation
import UVLoop
import ServerChild
import UVRPC

/// Drives a `uvrpc serve` child with checked traffic and a stream of faults
/// for a bounded time, and reports calls, errors, memory and descriptors.
@main
struct Soak: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uvrpc-soak",
        abstract: "Soak test: mixed checked traffic plus faults against a uvrpc serve child process.",
        discussion: """
            Good clients make echo calls of 1 B to 1 MiB and check every answer; meanwhile \
            faults hit the same server: hostile bytes, half handshakes, peers that never read, \
            clients reset with calls in flight, transfers cut mid-frame, connection churn. \
            A line every --report seconds: calls, errors, the server's RSS and descriptors. \
            Exits 0 when no good call failed or got a wrong answer, every fault connection was \
            closed, the server survived, and its descriptors returned to the baseline.
            """
    )

    @Option(help: "How long to run, in seconds.")
    var seconds: Double = 600

    @Option(help: "Seconds between report lines.")
    var report: Double = 10

    @Option(help: "Good client connections (8 calls in flight each).")
    var clients = 8

    @Option(help: "The uvrpc executable (default: next to this one).")
    var serve: String?

    func validate() throws {
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
        guard report > 0 else { throw ValidationError("--report must be positive") }
        guard clients > 0 else { throw ValidationError("--clients must be positive") }
    }

    func run() throws {
        let executable = serve.map { URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("uvrpc")
        let server = try ServerChild(executable, ["--write-timeout", "2", "--handshake-timeout", "2",
                                                  "--keepalive-interval", "1", "--max-payload", "\(4 << 20)",
                                                  "--verbose"])
        defer { server.kill9() }
        let loop = try EventLoop(name: "uvrpc-soak")
        let soak = SoakRun(loop: loop, address: server.address, clients: clients)
        print("soak: \(Int(seconds)) s against uvrpc serve (pid \(server.pid)) on \(server.address); "
              + "\(clients) good clients, a fault every 100 ms")
        loop.start()
        // libuv opens one descriptor of its own per loop (a reserve on /dev/null)
        // at the loop's first connection: one connection made and closed first
        // puts it in the baseline.
        let warmedUp = DispatchSemaphore(value: 0)
        let serverAddress = server.address
        loop.execute {
            loop.connect(to: serverAddress) { result in
                if case .success(let connection) = result { connection.close() }
                warmedUp.signal()
            }
        }
        _ = warmedUp.wait(timeout: .now() + 10)
        var settled = server.openDescriptors()
        for _ in 0..<50 {
            Thread.sleep(forTimeInterval: 0.1) // polling another process's /proc: no event to await
            let now = server.openDescriptors()
            if now == settled { break }
            settled = now
        }
        let baselineFDs = settled
        let baselineRSS = server.residentBytes()
        print("seconds  good calls     wrong  errors   faults   RSS MiB  server fds")
        let start = Date()
        var maxRSS = baselineRSS
        loop.execute { soak.start() }
        var nextReport = report
        while true {
            let elapsed = Date().timeIntervalSince(start)
            if elapsed >= seconds { break }
            Thread.sleep(forTimeInterval: min(0.25, seconds - elapsed)) // the reporting cadence, not synchronisation
            guard server.isRunning else { break }
            maxRSS = max(maxRSS, server.residentBytes())
            if Date().timeIntervalSince(start) >= nextReport {
                nextReport += report
                soak.printLine(Date().timeIntervalSince(start), rss: server.residentBytes(), fds: server.openDescriptors())
            }
        }
        let survived = server.isRunning
        // Wind down: stop starting work, let faults be cut off (write timeout 2 s), close everything.
        let finished = DispatchSemaphore(value: 0)
        loop.execute { soak.stop { finished.signal() } }
        let drained = finished.wait(timeout: .now() + 30) == .success
        let loopClosed = loop.syncShutdown(timeout: .seconds(10)) == 0
        // Server-side closes follow the clients' within a few loop turns.
        var fds = server.openDescriptors()
        for _ in 0..<100 where fds > baselineFDs {
            Thread.sleep(forTimeInterval: 0.05) // polling another process's /proc: no event to await
            fds = server.openDescriptors()
        }
        let rss = server.residentBytes()
        soak.printLine(Date().timeIntervalSince(start), rss: rss, fds: fds)
        let status = server.stop()
        let s = soak.totals
        print("""
            totals: good calls \(s.ok) ok, \(s.wrong) wrong answers, \(s.errors) errors; \
            faults \(s.faultsStarted) started, \(s.faultsClosed) closed (\(s.faultKinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))); \
            expected failures of faulty clients' own calls \(s.expectedFailures)
            server: RSS \(baselineRSS >> 20) MiB at start, \(maxRSS >> 20) MiB peak, \(rss >> 20) MiB at end; \
            descriptors \(baselineFDs) at start, \(fds) at end; exit status \(status); \
            log lines: \(server.logLines()) (\(server.logPath))
            """)
        for problem in s.problems.prefix(10) { print("problem: \(problem)") }
        if !drained { print("problem: connections still open 30 s after the soak stopped") }
        if !loopClosed { print("problem: the soak's loop did not close cleanly") }
        let ok = survived && drained && loopClosed && s.wrong == 0 && s.errors == 0 && s.ok > 0 && fds <= baselineFDs
            && s.faultsClosed == s.faultsStarted && status == 0
        print(ok ? "soak: PASS" : "soak: FAIL")
        if !ok { throw ExitCode(1) }
    }
}

/// What the soak counted.
struct Totals: Sendable {
    var ok = 0, wrong = 0, errors = 0, expectedFailures = 0
    var faultsStarted = 0, faultsClosed = 0
    var faultKinds: [String: Int] = [:]
    var problems: [String] = []
}

/// All traffic and faults, on the soak's loop.
final class SoakRun: @unchecked Sendable { // mutable state is touched on `loop` only; `counts` is locked
    // Sendable invariant: everything but `counts` is read and written on `loop`'s thread.
    let loop: EventLoop
    let address: SocketAddress
    let clientCount: Int
    private let counts = LockedValue(Totals())
    private var stopping = false
    private var good: [RPCEndpoint] = []
    private var faultTimer: LoopTimer?
    private var openFaults: [Connection] = []
    private var openFaultEndpoints: [RPCEndpoint] = []
    private var generator = SystemRandomNumberGenerator()
    /// Random bytes that payloads are cut from.
    private let pool: [UInt8]
    private var configuration: RPCEndpoint.Configuration {
        var c = RPCEndpoint.Configuration()
        c.keepaliveInterval = .seconds(1)
        c.keepaliveTimeout = .seconds(10)
        c.messageTimeout = .seconds(30)
        return c
    }

    init(loop: EventLoop, address: SocketAddress, clients: Int) {
        self.loop = loop
        self.address = address
        self.clientCount = clients
        var g = SystemRandomNumberGenerator()
        pool = (0..<(2 << 20) / 8).flatMap { _ in withUnsafeBytes(of: g.next() as UInt64) { Array($0) } }
    }

    var totals: Totals { counts.withLock { $0 } }

    private func count(_ update: (inout Totals) -> Void) { counts.withLock(update) }

    func start() {
        for _ in 0..<clientCount { startGoodClient() }
        faultTimer = loop.scheduleTimer(after: .milliseconds(100), repeating: .milliseconds(100)) { [unowned self] in
            self.injectFault()
        }
    }

    /// Stops new calls and faults; calls `done` once every connection it opened has closed.
    func stop(_ done: @escaping () -> Void) {
        stopping = true
        faultTimer?.cancel()
        var remaining = good.count + openFaults.count + openFaultEndpoints.count
        if remaining == 0 { return done() }
        let closedOne = { remaining -= 1; if remaining == 0 { done() } }
        for endpoint in good + openFaultEndpoints {
            let previous = endpoint.onClose
            endpoint.onClose = { previous?($0); closedOne() }
            endpoint.close()
        }
        for connection in openFaults {
            let previous = connection.onClose
            connection.onClose = { previous?($0); closedOne() }
            connection.abort()
        }
    }

    func printLine(_ elapsed: Double, rss: Int, fds: Int) {
        let t = totals
        print(String(format: "%7.0f  %10d  %8d  %6d  %7d  %8.1f  %9d", elapsed, t.ok, t.wrong, t.errors,
                     t.faultsStarted, Double(rss) / 1048576, fds))
        fflush(nil) // every stream: the report is read live
    }

    // MARK: Good traffic

    private func payload() -> [UInt8] {
        let roll = Int.random(in: 0..<100, using: &generator)
        let size = roll < 70 ? Int.random(in: 1...256, using: &generator)
            : roll < 97 ? Int.random(in: 257...65536, using: &generator)
            : Int.random(in: 65537...(1 << 20), using: &generator)
        let offset = Int.random(in: 0...(pool.count - size), using: &generator)
        return Array(pool[offset..<offset + size])
    }

    private func startGoodClient() {
        RPCClient.connect(to: address, on: loop, configuration: configuration) { [self] result in
            switch result {
            case .failure(let error):
                count { $0.errors += 1; $0.problems.append("good client connect: \(error)") }
            case .success(let endpoint):
                good.append(endpoint)
                endpoint.onMessage = { request in try request.respond(request.payload) }
                endpoint.onClose = { [self] reason in
                    good.removeAll { $0 === endpoint }
                    if !stopping { count { $0.errors += 1; $0.problems.append("good client closed: \(reason)") } }
                }
                for _ in 0..<8 { call(endpoint) }
            }
        }
    }

    private func call(_ endpoint: RPCEndpoint) {
        guard !stopping else { return }
        let sent = payload()
        endpoint.send(sent, closeOnError: false) { [self] result in
            switch result {
            case .success(let answer) where answer == sent: count { $0.ok += 1 }
            case .success: count { $0.wrong += 1; $0.problems.append("wrong answer to \(sent.count) bytes") }
            case .failure(let error):
                if stopping { return }
                count { $0.errors += 1; $0.problems.append("good call of \(sent.count) bytes: \(error)") }
            }
            call(endpoint)
        }
    }

    // MARK: Faults

    private static let handshake = PeerInfo(keepaliveInterval: 10).handshakeBytes

    private func injectFault() {
        guard !stopping else { return }
        let kinds = ["random bytes", "over max payload", "second handshake", "half handshake",
                     "never reads", "reset with calls in flight", "cut mid-frame", "churn"]
        let kind = kinds[Int.random(in: 0..<kinds.count, using: &generator)]
        count { $0.faultsStarted += 1; $0.faultKinds[kind, default: 0] += 1 }
        switch kind {
        case "random bytes":
            rawFault { connection in
                try? connection.write(Array(self.pool.prefix(Int.random(in: 1...4096, using: &self.generator))))
            }
        case "over max payload":
            rawFault { try? $0.write(Self.handshake + [0x04, 0, 1, 0x00, 0x40, 0x00, 0x01]) }
        case "second handshake":
            rawFault { try? $0.write(Self.handshake + Self.handshake) }
        case "half handshake":
            rawFault { try? $0.write([0, 0, 0, 17, 0x7b]) } // closed by the server's 2 s handshake timeout
        case "never reads":
            rawFault { connection in
                connection.pauseReading()
                try? connection.write(Self.handshake)
                let frame = PacketWriter.frame(isResponse: false, id: 9, payload: Array(self.pool.prefix(65_000)))
                func pump() {
                    while connection.isOpen && connection.isWritable && !self.stopping { try? connection.write(frame) }
                }
                connection.onWritabilityChanged = { if $0 { pump() } }
                pump()
            }
        case "cut mid-frame":
            rawFault { connection in
                try? connection.write(Self.handshake + [0x04, 0, 2, 0x00, 0x20, 0x00, 0x00]
                                      + Array(self.pool.prefix(1 << 20))) // 1 MiB of a declared 2 MiB
                _ = self.loop.scheduleTimer(after: .milliseconds(20)) { [weak connection] in connection?.abort() }
            }
        case "reset with calls in flight":
            rpcFault { endpoint in
                for _ in 0..<100 {
                    endpoint.send(Array(self.pool.prefix(100)), closeOnError: false) { result in
                        if case .failure = result { self.count { $0.expectedFailures += 1 } }
                    }
                }
                _ = self.loop.scheduleTimer(after: .milliseconds(5)) { [weak endpoint] in endpoint?.connection.abort() }
            }
        default: // churn: connect, one call, close
            rpcFault { endpoint in
                endpoint.send([1, 2, 3], closeOnError: false) { [weak endpoint] _ in endpoint?.close() }
            }
        }
    }

    /// A raw connection that misbehaves; counted closed when it ends (the server cuts it off).
    private func rawFault(_ act: @escaping (Connection) -> Void) {
        loop.connect(to: address) { [self] result in
            guard case .success(let connection) = result else {
                count { $0.faultsClosed += 1; $0.problems.append("fault connect failed: \(result)") }
                return
            }
            openFaults.append(connection)
            connection.onRead = { $0.count }
            connection.onClose = { [self, unowned connection] _ in
                openFaults.removeAll { $0 === connection }
                count { $0.faultsClosed += 1 }
            }
            act(connection)
        }
    }

    /// An RPC client that misbehaves or churns; counted closed when it ends.
    private func rpcFault(_ act: @escaping (RPCEndpoint) -> Void) {
        RPCClient.connect(to: address, on: loop, configuration: configuration) { [self] result in
            guard case .success(let endpoint) = result else {
                count { $0.faultsClosed += 1; $0.problems.append("fault connect failed: \(result)") }
                return
            }
            openFaultEndpoints.append(endpoint)
            endpoint.onClose = { [self, unowned endpoint] _ in
                openFaultEndpoints.removeAll { $0 === endpoint }
                count { $0.faultsClosed += 1 }
            }
            act(endpoint)
        }
    }
}
