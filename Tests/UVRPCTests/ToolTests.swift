import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// The `uvrpc` command-line tool, run as a user would (the debug build next to the tests).
final class ToolTests: XCTestCase {
    private var tool: URL { uvrpcTool }

    private func skipUnlessBuilt() throws {
        guard FileManager.default.isExecutableFile(atPath: tool.path) else {
            throw XCTSkip("\(tool.path) is not built (make test builds it)")
        }
    }

    private func run(_ arguments: [String], seconds: Double = 60) throws -> (status: Int32, output: String) {
        try runTool(arguments, seconds: seconds)
    }

    func testServeAndCallEchoCheckedMessagesThenServeStopsCleanlyOnSIGTERM() throws {
        try skipUnlessBuilt()
        let server = try ServeProcess(tool: tool, ["--keepalive-interval", "0.2"])
        defer { _ = try? server.stop() }
        XCTAssertEqual(server.listeningLine, "listening on \(server.address)")
        XCTAssertTrue(server.listeningLine.hasPrefix("listening on 127.0.0.1:"), server.listeningLine)

        let call = try run(["call", "--connect", "\(server.address)", "--count", "300", "--size", "70000", "--concurrency", "8",
                            "--hold", "0.5", "--keepalive-interval", "0.2"])
        XCTAssertEqual(call.status, 0, call.output)
        XCTAssertTrue(call.output.contains("ok: 300, mismatched: 0, failed: 0"), call.output)

        XCTAssertEqual(try server.stop(), 0, "serve exits 0 on SIGTERM")
    }

    func testCallTakesSeveralAddressesAndWaitsForAServerStartedLate() throws {
        try skipUnlessBuilt()
        let a = try ServeProcess(tool: tool, []), b = try ServeProcess(tool: tool, [])
        let both = try run(["call", "--connect", "\(a.address),\(b.address)", "--count", "40", "--concurrency", "4"])
        XCTAssertEqual(both.status, 0, both.output)
        XCTAssertTrue(both.output.contains("ok: 40, mismatched: 0, failed: 0"), both.output)
        _ = try a.stop()
        _ = try b.stop()
        // Nothing listens on a's port now: a call that waits for ready is answered once a server starts there.
        let tool = self.tool, address = "\(a.address)"
        let outcome = Promise<Result<(status: Int32, output: String), any Error>>()
        DispatchQueue.global().async {
            outcome.fulfill(Result { try runToCompletion(tool, ["call", "--connect", address, "--count", "20", "--wait-for-ready",
                                                                 "--retry", "--timeout", "30"], seconds: 60) })
        }
        let late = try ServeProcess(executable: tool, arguments: ["serve", "--port", "\(a.address.port!)"])
        defer { _ = try? late.stop() }
        let waited = try outcome.wait("the waiting call", seconds: 60).get()
        XCTAssertEqual(waited.status, 0, waited.output)
        XCTAssertTrue(waited.output.contains("ok: 20, mismatched: 0, failed: 0"), waited.output)
    }

    /// A server lost in the middle of a run: every call left fails (most at
    /// once: no connection is open), and `call` reports them and exits 1.
    /// It overflowed its stack before: each of those failures came before
    /// the pool's `send` returned, and the next call was sent from inside it.
    func testCallReportsEveryCallLeftWhenItsServerIsLost() throws {
        try skipUnlessBuilt()
        let server = try ServeProcess(tool: tool, ["--answer-after", "60"]) // holds every call: none is answered
        let tool = self.tool, address = "\(server.address)"
        let outcome = Promise<Result<(status: Int32, output: String), any Error>>()
        DispatchQueue.global().async {
            outcome.fulfill(Result { try runToCompletion(tool, ["call", "--connect", address, "--count", "100000",
                                                                 "--concurrency", "64", "--size", "8"], seconds: 120) })
        }
        try waitUntil("the server to hold the first 64 calls") {
            server.signal(SIGUSR1)
            return (try? server.waitForOutput("(unanswered requests: 64)", seconds: 0.5)) != nil
        }
        try server.kill9()
        let call = try outcome.wait("uvrpc call", seconds: 120).get()
        XCTAssertEqual(call.status, 1, call.output)
        XCTAssertTrue(call.output.contains("calls: 100000, ok: 0, mismatched: 0, failed: 100000"), call.output)
        XCTAssertTrue(call.output.contains("uvrpc call: the connection ended"), call.output)
    }

    /// A peer that takes the handshake and then reads nothing: calls held
    /// back by the full send buffer fail once --timeout has passed since
    /// their first try, naming both (each retry's timeout started afresh:
    /// with --write-timeout 0 the run never ended).
    func testCallsHeldBackByAPeerThatNeverReadsEndAtTheirTimeout() throws {
        try skipUnlessBuilt()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Peers/never_reading_peer.py").path
        let peer = try ServeProcess(executable: try python3(), arguments: [script])
        defer { _ = try? peer.stop() }
        // 10 x 12 MiB: past the 64 MiB of unsent bytes a connection holds (and what the sockets take).
        let call = try run(["call", "--connect", "\(peer.address)", "--count", "10", "--concurrency", "10",
                            "--size", "\(12 << 20)", "--timeout", "1", "--write-timeout", "0"], seconds: 120)
        XCTAssertEqual(call.status, 1, call.output)
        XCTAssertTrue(call.output.contains("calls: 10, ok: 0, mismatched: 0, failed: 10"), call.output)
        XCTAssertTrue(call.output.contains("no room in the send buffer within --timeout 1.0 s"), call.output)
    }

    /// Two 40 MiB calls at once would take the connection past its 64 MiB of
    /// unsent bytes: the second waits for the first (backpressure) instead of
    /// failing with `sendBufferFull`.
    func testCallWaitsWhenTheSendBufferIsFullInsteadOfFailing() throws {
        try skipUnlessBuilt()
        let server = try ServeProcess(tool: tool, [])
        defer { _ = try? server.stop() }
        let size = sanitizerInUse == nil ? 40 << 20 : 34 << 20
        let call = try run(["call", "--connect", "\(server.address)", "--count", "3", "--size", "\(size)", "--concurrency", "2"],
                           seconds: 300)
        XCTAssertEqual(call.status, 0, call.output)
        XCTAssertTrue(call.output.contains("ok: 3, mismatched: 0, failed: 0"), call.output)
        XCTAssertEqual(try server.stop(), 0)
    }

    /// `serve --fail-every 3`: a client with error answers sees every third
    /// call fail at once with the handler's reason; `call --no-extensions`
    /// (the reference's behaviour) sees those calls time out instead.
    func testServeFailEveryAnswersWithErrorsUnlessTheClientTurnedExtensionsOff() throws {
        try skipUnlessBuilt()
        let server = try ServeProcess(tool: tool, ["--fail-every", "3"])
        defer { _ = try? server.stop() }
        let call = try run(["call", "--connect", "\(server.address)", "--count", "9", "--size", "16", "--concurrency", "1",
                            "--connections", "1", "--timeout", "60"])
        XCTAssertNotEqual(call.status, 0, call.output)
        XCTAssertTrue(call.output.contains("ok: 6, mismatched: 0, failed: 3"), call.output)
        XCTAssertTrue(call.output.contains("failed in the peer: uvrpc serve --fail-every: message 3 of this connection fails"),
                      call.output)
        let plain = try run(["call", "--connect", "\(server.address)", "--count", "3", "--size", "16", "--concurrency", "1",
                             "--connections", "1", "--timeout", "0.3", "--no-extensions"])
        XCTAssertTrue(plain.output.contains("ok: 2, mismatched: 0, failed: 1"), plain.output)
        XCTAssertTrue(plain.output.contains("got no response within"), plain.output)
        XCTAssertEqual(try server.stop(), 0)
    }

    /// SIGTERM with calls in flight (answered 3 s after they arrive): they
    /// are answered, then serve exits 0; with --grace 0 they fail instead.
    func testServeDrainsCallsInFlightOnSIGTERMWithinTheGracePeriod() throws {
        try skipUnlessBuilt()
        for grace in ["10", "0"] {
            let server = try ServeProcess(tool: tool, ["--answer-after", "3", "--grace", grace])
            defer { _ = try? server.stop() }
            let harness = try LoopHarness()
            defer { harness.shutdownCleanly() }
            let connected = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
            try harness.sync {
                RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration()) {
                    connected.fulfill($0.map { LoopBound($0, loop: harness.loop) })
                }
            }
            let client = try connected.wait("connect").get()
            let outcomes = (0..<4).map { _ in Promise<Result<[UInt8], RPCError>>() }
            try harness.sync {
                for (i, outcome) in outcomes.enumerated() {
                    client.value.send([UInt8(i)], timeout: .seconds(30), closeOnError: false) { outcome.fulfill($0) }
                }
            }
            // The drain answers what the server received: make sure it has all 4
            // (its SIGUSR1 report counts them) before the SIGTERM.
            try waitUntil("the server to hold the 4 calls") {
                server.signal(SIGUSR1)
                return (try? server.waitForOutput("(unanswered requests: 4)", seconds: 0.5)) != nil
            }
            server.signal(SIGTERM)
            for (i, outcome) in outcomes.enumerated() {
                let result = try outcome.wait("call \(i)")
                if grace == "0" {
                    guard case .failure = result else { return XCTFail("with --grace 0 call \(i) must fail, got \(result)") }
                } else {
                    XCTAssertEqual(try result.get(), [UInt8(i)], "call \(i) is answered during the drain")
                }
            }
            XCTAssertEqual(try server.stop(), 0, "serve exits 0 after the drain (--grace \(grace))")
            try harness.sync { client.value.close() }
        }
    }

    func testExitCodesForRefusedConnectionsAndBadArguments() throws {
        try skipUnlessBuilt()
        let refused = try run(["call", "--connect", "127.0.0.1:\(refusedPort())"])
        XCTAssertEqual(refused.status, 3, refused.output)
        XCTAssertTrue(refused.output.contains("ECONNREFUSED"), refused.output)
        let bad = try run(["call", "--connect", "nowhere"])
        XCTAssertEqual(bad.status, 64, bad.output)
        XCTAssertTrue(bad.output.contains("--connect takes HOST:PORT"), bad.output)
        let busy = try run(["serve", "--port", "70000"])
        XCTAssertEqual(busy.status, 64, busy.output)
        // Times past what a Duration holds are refused by name (they trapped converting: SIGILL).
        for (command, option, value) in [("call", "--timeout", "inf"), ("call", "--hold", "4e9"),
                                         ("call", "--keepalive-interval", "1e16"), ("serve", "--grace", "inf")] {
            let arguments = command == "call" ? ["call", "--connect", "127.0.0.1:1", option, value] : ["serve", option, value]
            let huge = try run(arguments)
            XCTAssertEqual(huge.status, 64, huge.output)
            XCTAssertTrue(huge.output.contains("\(option) must be at most 1000000000 seconds"), huge.output)
        }
    }

    func testServeSpreadsOverLoopsBothWaysReportsConnectionsPerLoopAndCallUsesSeveralConnections() async throws {
        try skipUnlessBuilt()
        for spread in ["round-robin", "reuse-port"] {
            let server = try ServeProcess(tool: tool, ["--loops", "2", "--spread", spread])
            defer { _ = try? server.stop() }
            let harness = try LoopHarness("tool-clients")
            var clients: [RPCAsyncEndpoint] = []
            for _ in 0..<6 {
                let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
                let answer = try await client.send([7, 7])
                XCTAssertEqual(answer, [7, 7])
                clients.append(client)
            }
            server.signal(SIGUSR1)
            if spread == "round-robin" {
                try server.waitForOutput("connections per loop: 3 3")
            } else {
                try server.waitForOutput("connections per loop: ")
                let line = server.stdout.split(separator: "\n").last!
                let counts = line.dropFirst("connections per loop:".count).prefix { $0 != "(" }
                    .split(separator: " ").compactMap { Int($0) }
                XCTAssertEqual(counts.reduce(0, +), 6, server.stdout)
            }
            for client in clients { await client.close() }
            harness.shutdownCleanly()

            let call = try run(["call", "--connect", "\(server.address)", "--count", "3000", "--size", "200",
                                "--concurrency", "32", "--loops", "2", "--connections", "4"])
            XCTAssertEqual(call.status, 0, call.output)
            XCTAssertTrue(call.output.contains("ok: 3000, mismatched: 0, failed: 0"), call.output)
            XCTAssertEqual(try server.stop(), 0, "serve --loops 2 exits 0 on SIGTERM")
        }
        let unixReusePort = try run(["serve", "--unix", "/tmp/uvrpc-tool-\(getpid()).sock", "--loops", "2", "--spread", "reuse-port"])
        XCTAssertEqual(unixReusePort.status, 64, unixReusePort.output)
        XCTAssertTrue(unixReusePort.output.contains("round-robin"), unixReusePort.output)
    }
}
