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

    /// Runs the tool to completion (at most `seconds`); returns status and output.
    private func run(_ arguments: [String], seconds: Double = 60) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = tool
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let finished = Promise<Void>()
        process.terminationHandler = { _ in finished.fulfill(()) }
        defer { process.terminationHandler = nil } // Process keeps its handler, and so our promise, alive
        try process.run()
        do { try finished.wait("uvrpc \(arguments.joined(separator: " "))", seconds: seconds) } catch {
            process.terminate()
            throw error
        }
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (process.terminationStatus, output)
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

    func testExitCodesForRefusedConnectionsAndBadArguments() throws {
        try skipUnlessBuilt()
        let refused = try run(["call", "--connect", "127.0.0.1:\(refusedPort())"])
        XCTAssertEqual(refused.status, 3, refused.output)
        XCTAssertTrue(refused.output.contains("ECONNREFUSED"), refused.output)
        let bad = try run(["call", "--connect", "nowhere"])
        XCTAssertEqual(bad.status, 64, bad.output)
        XCTAssertTrue(bad.output.contains("--connect must be"), bad.output)
        let busy = try run(["serve", "--port", "70000"])
        XCTAssertEqual(busy.status, 64, busy.output)
    }

    func testServeSpreadsOverLoopsBothWaysReportsConnectionsPerLoopAndCallUsesSeveralConnections() async throws {
        try skipUnlessBuilt()
        for spread in ["round-robin", "reuse-port"] {
            let server = try ServeProcess(tool: tool, ["--loops", "2", "--spread", spread])
            defer { _ = try? server.stop() }
            let harness = try LoopHarness("tool-clients")
            var clients: [RPCEndpoint] = []
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
                let counts = server.stdout.split(separator: "\n").last!.split(separator: " ").suffix(2).compactMap { Int($0) }
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
