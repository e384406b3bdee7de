import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// A child process run under resource limits (`prlimit`), for `uvrpc serve`
/// at the edges: its first stdout line (or the end of stdout), its stderr,
/// and how it ended.
private final class LimitedChild: @unchecked Sendable { // `process` is used by the test's own thread only
    let process = Process()
    private let errorLog = LockedValue("")
    private let ended = Promise<Void>()
    /// Fulfilled at the end of its stderr: what it wrote is all read (it raced the exit before).
    private let errorEnded = Promise<Void>()
    let firstLine = Promise<String>()

    init(limits: [String], _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
        process.arguments = limits + [uvrpcTool.path] + arguments
        let ended = self.ended
        process.terminationHandler = { _ in ended.fulfill(()) }
        let (out, err) = try startChild(process) { process in
            let out = Pipe(), err = Pipe()
            process.standardOutput = out
            process.standardError = err
            return (out, err)
        }
        let errorLog = self.errorLog, firstLine = self.firstLine, errorEnded = self.errorEnded
        let errHandle = err.fileHandleForReading, outHandle = out.fileHandleForReading
        DispatchQueue.global().async {
            while case let chunk = errHandle.availableData, !chunk.isEmpty {
                errorLog.withLock { $0 += String(decoding: chunk, as: UTF8.self) }
            }
            errorEnded.fulfill(())
        }
        DispatchQueue.global().async {
            var bytes: [UInt8] = []
            while let chunk = try? outHandle.read(upToCount: 1), let byte = chunk.first, byte != 10 { bytes.append(byte) }
            firstLine.fulfill(String(decoding: bytes, as: UTF8.self))
            while case let chunk = outHandle.availableData, !chunk.isEmpty {} // drain the rest
        }
    }

    var stderr: String { errorLog.withLock { $0 } }

    /// Waits for the end; true when it exited (rather than being killed by a signal), and its status.
    func waitForExit(seconds: Double = 30) throws -> (exited: Bool, status: Int32) {
        do { try ended.wait("uvrpc serve to end", seconds: seconds) } catch {
            process.interrupt()
            kill(process.processIdentifier, SIGKILL)
            throw error
        }
        try errorEnded.wait("the end of uvrpc serve's stderr", seconds: seconds)
        defer { process.terminationHandler = nil }
        return (process.terminationReason == .exit, process.terminationStatus)
    }
}

/// `uvrpc serve` at the limits of its process: the open-files limit,
/// signals during a drain, a peer that reads nothing while the server
/// stops, and an address space too small for what peers announce.
final class ProcessLimitTests: XCTestCase {
    private func skipUnlessBuilt() throws {
        guard FileManager.default.isExecutableFile(atPath: uvrpcTool.path) else {
            throw XCTSkip("\(uvrpcTool.path) is not built (make test builds it)")
        }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit") else {
            throw XCTSkip("prlimit (util-linux) is not installed")
        }
    }

    /// Under any open-files limit `uvrpc serve` either works (and stops
    /// cleanly on SIGTERM) or exits with a message naming the limit; never
    /// a signal (it died by SIGABRT, SIGSEGV, SIGILL or a libuv assertion
    /// under limits of 4 to 10, and ignored SIGTERM at 14 to 17).
    func testServeUnderAnyOpenFilesLimitWorksOrExitsNamingIt() throws {
        try skipUnlessBuilt()
        // Sanitizer runtimes open files of their own at start: their floor is higher.
        let limits = sanitizerInUse == nil ? [3, 4, 5, 6, 8, 10, 12, 14, 16, 17, 18, 20, 24, 32, 48, 64] : [24, 32, 48, 64]
        var worked: [String] = []
        for (limit, loops) in limits.map({ ($0, 1) }) + [(16, 2), (24, 2), (32, 2)] {
            let child = try LimitedChild(limits: ["--nofile=\(limit):\(limit)"], ["serve", "--port", "0", "--loops", "\(loops)"])
            let line = try child.firstLine.wait("the first line at limit \(limit)")
            if line.hasPrefix("listening on ") {
                worked.append("\(limit)/\(loops)")
                kill(child.process.processIdentifier, SIGTERM)
                let end = try child.waitForExit()
                XCTAssertTrue(end.exited && end.status == 0, "limit \(limit), \(loops) loops: a working server stops cleanly; \(child.stderr)")
            } else {
                let end = try child.waitForExit()
                XCTAssertTrue(end.exited, "limit \(limit), \(loops) loops: no signal (status \(end.status)); \(child.stderr)")
                XCTAssertNotEqual(end.status, 0, "limit \(limit)")
                let stderr = child.stderr
                XCTAssertTrue(stderr.contains("open-files limit") || stderr.contains("open files") || stderr.contains("Error 24"),
                              "limit \(limit), \(loops) loops: the message names the limit: \(stderr)")
            }
        }
        XCTAssertTrue(worked.contains("64/1") && worked.contains("32/2"), "\(worked)")
    }

    /// A second SIGTERM during a drain stops at once: the drain would have
    /// waited for a call held 60 s, for up to its 30 s grace period.
    func testASecondSignalDuringTheDrainStopsAtOnce() throws {
        try skipUnlessBuilt()
        let server = try ServeProcess(tool: uvrpcTool, ["--grace", "30", "--answer-after", "60"])
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let outcome = Promise<Result<[UInt8], RPCError>>()
        let connected = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
        try harness.sync {
            RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration()) { result in
                connected.fulfill(result.map { LoopBound($0, loop: harness.loop) })
                if case .success(let client) = result { client.send([1], timeout: .seconds(120)) { outcome.fulfill($0) } }
            }
        }
        let client = try connected.wait("connect").get()
        try waitUntil("the server to hold the call") {
            server.signal(SIGUSR1)
            return (try? server.waitForOutput("(unanswered requests: 1)", seconds: 0.5)) != nil
        }
        server.signal(SIGTERM)
        // The drain began (the client was told): the next signal is a second one, not merged with the first.
        try waitUntil("the go-away") { (try? harness.sync { client.value.peerIsGoingAway }) == true }
        let started = monotonicMilliseconds()
        server.signal(SIGTERM)
        XCTAssertEqual(try server.stop(), 0)
        XCTAssertLessThan(monotonicMilliseconds() - started, 20_000, "well before the 30 s grace period")
        XCTAssertTrue(server.stderr.contains("a second signal: stopped at once"), server.stderr)
        guard case .failure = try outcome.wait("the held call") else { return XCTFail("the held call cannot have been answered") }
    }

    /// SIGTERM with `--grace 1` while a client reads nothing of a 16 MiB
    /// answer: the server exits soon after the grace period, not after the
    /// connection's 10 s close timeout.
    func testShutdownKeepsToItsGracePeriodWhenAPeerStopsReading() throws {
        try skipUnlessBuilt()
        let server = try ServeProcess(tool: uvrpcTool, ["--grace", "1"])
        let writer = try FDWriter(connectingTo: server.address)
        defer { writer.close() }
        // An efro.rpc peer (no extensions): the answer goes as one RESPONSE_BIG, and it reads none of it.
        writer.write(PeerInfo(keepaliveInterval: 10).handshakeBytes
                     + PacketWriter.frame(isResponse: false, id: 1, payload: [UInt8](repeating: 5, count: 16 << 20)))
        try waitUntil("the server to answer into its buffers") {
            server.signal(SIGUSR1)
            return (try? server.waitForOutput("(unanswered requests: 0)", seconds: 0.5)) != nil
                && server.stdout.contains("connections per loop: 1")
        }
        let started = monotonicMilliseconds()
        XCTAssertEqual(try server.stop(), 0)
        // Grace 1 s plus the 0.5 s flush allowance; the close timeout would have taken 10 s more.
        XCTAssertLessThan(monotonicMilliseconds() - started, 6_000, "exit soon after the grace period")
    }

    /// With the address space limited to 1 GiB, sixteen peers each announcing
    /// a 64 MiB MESSAGE_BIG (7 bytes each; 1 GiB in all, within the server's
    /// budget, so only the allocator can refuse) make allocations fail: the
    /// server refuses those payloads and goes on serving (it stopped with
    /// "failed to allocate 67108864 bytes").
    func testFailedAllocationsRefuseThePayloadNotKillTheServer() throws {
        try skipUnlessBuilt()
        if let sanitizer = sanitizerInUse {
            throw XCTSkip("the \(sanitizer) sanitizer reserves terabytes of address space: it cannot run under an address-space limit")
        }
        let child = try LimitedChild(limits: ["--as=\(1 << 30)"], ["serve", "--port", "0", "--max-payload", "\(64 << 20)", "--verbose"])
        let line = try child.firstLine.wait("the listening line")
        guard line.hasPrefix("listening on "), let address = SocketAddress(parsing: String(line.dropFirst(13))) else {
            return XCTFail("no listening line: \(line) \(child.stderr)")
        }
        let announce = PeerInfo(keepaliveInterval: 10).handshakeBytes + [4, 0, 1, 0x04, 0, 0, 0] // MESSAGE_BIG of 64 MiB, begun
        let peers = try (0..<16).map { _ in try FDWriter(connectingTo: address) }
        for peer in peers { peer.write(announce) }
        try waitUntil("an allocation to fail and be refused", seconds: 20) { child.stderr.contains("could not be allocated") }
        let probe = try runTool(["call", "--connect", "\(address)", "--count", "100", "--size", "1000"])
        XCTAssertEqual(probe.status, 0, "the server still serves: \(probe.output)")
        for peer in peers { peer.close() } // else the drain waits for their messages (until the progress timeout)
        kill(child.process.processIdentifier, SIGTERM)
        let end = try child.waitForExit()
        XCTAssertTrue(end.exited && end.status == 0, "a clean exit: \(child.stderr)")
    }
}
