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

struct Call: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send messages of random bytes to an echo server and check every answer.",
        discussion: """
            Calls go over --connections connections spread over --loops event loops (each call on the \
            connection with the fewest calls in flight). Messages the peer sends are echoed back. \
            Prints a summary; exits non-zero on any mismatch, error or timeout. A checker first: every \
            call's bytes differ and every answer is compared; to measure speed, use \
            `uvrpc-bench --scenario client` (Swift callers) or `uvrpc-bench --connect HOST:PORT` (the C load generator).
            """
    )

    @Option(help: "HOST:PORT, [IPV6]:PORT or unix:PATH of the server, or several, comma-separated; HOST may be a name (the pool connects to every address it names).")
    var connect: String

    @Flag(help: "A call that finds no connection open waits for one (up to --timeout) instead of failing; lost connections are made again.")
    var waitForReady = false

    @Flag(help: "Calls are idempotent (an echo is): one that fails after it was written (unavailable) is retried, with backoff, within the pool's retry budget; lost connections are made again.")
    var retry = false

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

    /// The addresses of --connect.
    private var addresses: [SocketAddress] {
        connect.split(separator: ",").compactMap { SocketAddress(parsing: String($0)) }
    }

    func validate() throws {
        let parts = connect.split(separator: ",", omittingEmptySubsequences: false)
        for part in parts where SocketAddress(parsing: String(part)) == nil {
            throw ValidationError("--connect takes HOST:PORT, [IPV6]:PORT or unix:PATH, comma-separated; not '\(part)'")
        }
        guard count >= 0 else { throw ValidationError("--count must not be negative") }
        guard size >= 0 && size <= Int(UInt32.max) else { throw ValidationError("--size must be 0...4294967295") }
        guard concurrency > 0 else { throw ValidationError("--concurrency must be positive") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        guard hold >= 0 else { throw ValidationError("--hold must not be negative") }
        try checkSeconds(timeout, "--timeout")
        try checkSeconds(hold, "--hold")
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
        let addresses = self.addresses
        // With --wait-for-ready or --retry the calls ride out lost connections; without, a lost one fails the run.
        let ridesOut = waitForReady || retry
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
            var configuration = RPCClientPool.Configuration(endpoint: endpoint.configuration)
            configuration.connectionsPerAddress = connections
            configuration.tls = tlsContext
            if !ridesOut {
                // A lost connection fails the run (its reason is printed, exit 1). No reconnect is
                // scheduled; the calls left may still open one on demand, and count as they go.
                configuration.reconnectDelay = .seconds(3600)
                configuration.maximumReconnectDelay = .seconds(3600)
            }
            configuration.waitsForReady = waitForReady
            return configuration
        }()
        let pool = try runBlocking {
            await RPCClientPool.connect(to: addresses, on: group, configuration: configuration, handler: .callback { endpoint in
                endpoint.onMessage = { request in
                    summary.withLock { $0.echoed += 1 }
                    try request.respond(request.payload)
                }
                endpoint.onClose = { reason in
                    if reason != .local && !ridesOut { summary.withLock { $0.closeReason = "\(reason)" } }
                }
            })
        }
        guard waitForReady || pool.connectionStates.allSatisfy(\.isOpen) else {
            printError("uvrpc call: cannot connect: \(pool.lastConnectError ?? "to \(connect)")")
            try runBlocking { await pool.close() }
            group.syncShutdown()
            throw ToolExit.cannotConnect
        }
        let seconds = ridesOut ? try runAsyncCalls(on: pool, summary: summary)
                               : runCalls(on: pool, loops: group.loops, summary: summary)
        var held = 0.0
        while held < hold { // keepalives flow meanwhile, on the loops (usleep takes at most 4294 s at a time)
            let step = min(hold - held, 1000)
            usleep(UInt32(step * 1_000_000))
            held += step
        }
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

    /// Keeps `concurrency` async calls in flight (tasks), each waiting for a
    /// connection or retried as the flags say; returns the seconds taken.
    private func runAsyncCalls(on pool: RPCClientPool, summary: LockedValue<Summary>) throws -> Double {
        let (count, size, concurrency, idempotent) = (self.count, self.size, self.concurrency, retry)
        let seed = UInt64.random(in: .min ... .max)
        let callTimeout = Duration.milliseconds(Int64(timeout * 1000))
        let clock = ContinuousClock(), start = clock.now
        try runBlocking {
            await withTaskGroup(of: Void.self) { group in
                for lane in 0..<min(concurrency, count) {
                    group.addTask {
                        for index in stride(from: lane, to: count, by: concurrency) {
                            let payload = randomBytes(size, seed: seed &+ UInt64(index))
                            do {
                                let answer = try await pool.send(payload, timeout: callTimeout, idempotent: idempotent)
                                summary.withLock { if answer == payload { $0.ok += 1 } else { $0.mismatched += 1 } }
                            } catch {
                                summary.withLock { $0.failed.append($0.failed.count < 10 ? "call \(index): \(error)" : "") }
                            }
                        }
                    }
                }
            }
        }
        let elapsed = clock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    /// Keeps `concurrency` calls in flight, lanes spread over the loops (each
    /// lane sends its next call when its last one ended); returns the seconds taken.
    private func runCalls(on pool: RPCClientPool, loops: [EventLoop], summary: LockedValue<Summary>) -> Double {
        let (count, size) = (self.count, self.size)
        let callTimeout = Duration.milliseconds(Int64(timeout * 1000))
        let timeoutNanoseconds = UInt64(timeout * 1e9), timeoutText = "\(timeout)"
        let seed = UInt64.random(in: .min ... .max)
        // Answers are counted without the summary's lock (one atomic per call); `finished`
        // orders every count before the last call's signal.
        let started = Atomic<Int>(0), finished = Atomic<Int>(0), answered = Atomic<Int>(0)
        let clock = ContinuousClock(), start = clock.now
        let finishedAll = DispatchSemaphore(value: 0)
        do {
            if count == 0 { finishedAll.signal() }
            /// `since`: when the call was first tried (monotonic nanoseconds).
            @Sendable func send(_ index: Int, _ payload: [UInt8], since: UInt64) {
                pool.send(payload, timeout: callTimeout) { result in
                    // A full send buffer is backpressure, not failure: the call tries again once
                    // the socket had time to take bytes (waiting for another call's end could wait
                    // forever when none is left in flight), until --timeout has passed since its
                    // first try (each try's own timeout starts afresh: a peer that never reads
                    // held the run forever with --write-timeout 0).
                    var full = false
                    if case .failure(let error) = result, case .sendBufferFull = error.reason {
                        if EventLoop.monotonicNanoseconds &- since < timeoutNanoseconds {
                            let loop = loops[index % loops.count] // pool.send is made on a loop
                            return DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(5)) {
                                loop.execute { send(index, payload, since: since) }
                            }
                        }
                        full = true
                    }
                    var failed = false
                    switch result {
                    case .success(let answer) where answer == payload: answered.wrappingAdd(1, ordering: .relaxed)
                    case .success: summary.withLock { $0.mismatched += 1 }
                    case .failure(let error):
                        failed = true
                        let line = full ? "call \(index): no room in the send buffer within --timeout \(timeoutText) s: \(error)"
                                        : "call \(index): \(error)"
                        summary.withLock { $0.failed.append($0.failed.count < 10 ? line : "") }
                    }
                    if finished.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue == count {
                        finishedAll.signal()
                    } else if failed, let loop = EventLoop.current {
                        // A failure can come before pool.send returns (no connection open): the next
                        // call goes in a later job, not deeper in this stack (the calls left after a
                        // lost server, a million deep, overflowed it).
                        loop.execute { sendNext() }
                    } else {
                        sendNext()
                    }
                }
            }
            @Sendable func sendNext() {
                let index = started.wrappingAdd(1, ordering: .relaxed).oldValue
                guard index < count else { return }
                send(index, randomBytes(size, seed: seed &+ UInt64(index)), since: EventLoop.monotonicNanoseconds)
            }
            for lane in 0..<min(concurrency, count) { loops[lane % loops.count].execute { sendNext() } }
        }
        finishedAll.wait()
        let elapsed = clock.now - start
        summary.withLock { $0.ok += answered.load(ordering: .relaxed) } // the last call to end signalled finishedAll
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }
}
