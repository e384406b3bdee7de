import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// The `uvrpc` tool of this build (next to the test bundle; `make test` builds it).
var uvrpcTool: URL {
    URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("uvrpc")
}

/// A `uvrpc serve` child process: its address, pid and everything it wrote to stderr.
final class ServeProcess: @unchecked Sendable { // `process` is used only by the test's own thread
    let process = Process()
    let address: SocketAddress
    /// Its first stdout line.
    let listeningLine: String
    private let log = LockedValue("")
    private let outLog = LockedValue("")
    private let exited = Promise<Int32>()
    /// Fulfilled at the end of its stderr (``stop()`` waits for it, so that what it logged is all read).
    private let errorEnded = Promise<Void>()
    /// Its stdin: a pipe held open while it runs (a Python test peer ends at stdin's EOF).
    private let input: Pipe

    /// Starts `uvrpc serve --port 0` with `arguments` and waits for its listening line.
    convenience init(tool: URL, _ arguments: [String]) throws {
        try self.init(executable: tool, arguments: ["serve", "--port", "0"] + arguments)
    }

    /// Starts any server that prints `listening on ADDRESS` first (the
    /// examples too) and waits for that line.
    init(executable: URL, arguments: [String]) throws {
        process.executableURL = executable
        process.arguments = arguments
        let exited = self.exited
        process.terminationHandler = { exited.fulfill($0.terminationStatus) }
        let (out, err, input) = try startChild(process) { process in
            let out = Pipe(), err = Pipe(), input = Pipe()
            process.standardOutput = out
            process.standardError = err
            process.standardInput = input
            return (out, err, input)
        }
        self.input = input
        let log = self.log, errorEnded = self.errorEnded
        let errHandle = err.fileHandleForReading
        DispatchQueue.global().async {
            while case let chunk = errHandle.availableData, !chunk.isEmpty { // returns what is there (read(upToCount:) waits for all)
                log.withLock { $0 += String(decoding: chunk, as: UTF8.self) }
            }
            errorEnded.fulfill(())
        }
        let firstLine = Promise<String>()
        let outHandle = out.fileHandleForReading
        let outLog = self.outLog
        DispatchQueue.global().async {
            var bytes: [UInt8] = []
            while let chunk = try? outHandle.read(upToCount: 1), let byte = chunk.first, byte != 10 { bytes.append(byte) }
            firstLine.fulfill(String(decoding: bytes, as: UTF8.self))
            while case let chunk = outHandle.availableData, !chunk.isEmpty { // the lines after the first
                outLog.withLock { $0 += String(decoding: chunk, as: UTF8.self) }
            }
        }
        let line = try firstLine.wait("uvrpc serve's listening line")
        guard line.hasPrefix("listening on "), let address = SocketAddress(parsing: String(line.dropFirst(13))) else {
            process.terminate()
            throw TestTimeout(what: "a listening line, got '\(line)'")
        }
        self.address = address
        self.listeningLine = line
    }

    var pid: String { "\(process.processIdentifier)" }
    var stderr: String { log.withLock { $0 } }
    /// What it wrote to stdout after the listening line.
    var stdout: String { outLog.withLock { $0 } }

    func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Waits (bounded) until stderr contains `text`.
    func waitForLog(_ text: String, seconds: Double = 10) throws {
        do {
            try waitUntil("'\(text)' in uvrpc serve's log", seconds: seconds) { stderr.contains(text) }
        } catch { throw TestTimeout(what: "'\(text)' in uvrpc serve's log:\n\(stderr)") }
    }

    /// Waits (bounded) until stdout, after the listening line, contains `text`.
    func waitForOutput(_ text: String, seconds: Double = 10) throws {
        do {
            try waitUntil("'\(text)' on uvrpc serve's stdout", seconds: seconds) { stdout.contains(text) }
        } catch { throw TestTimeout(what: "'\(text)' on uvrpc serve's stdout:\n\(stdout)") }
    }

    /// Kills the process (SIGKILL) and waits for it to exit.
    func kill9() throws {
        signal(SIGKILL)
        _ = try exited.wait("uvrpc serve to die")
        process.terminationHandler = nil
    }

    /// Stops it with SIGTERM and returns its exit status.
    /// Waits for it to exit by itself (no signal); its status, once its stderr is all read.
    func waitForExit(seconds: Double = 20) throws -> Int32 {
        defer { process.terminationHandler = nil }
        let status = try exited.wait("the child to exit by itself", seconds: seconds)
        try errorEnded.wait("the end of its stderr")
        return status
    }

    func stop() throws -> Int32 {
        if process.isRunning { process.terminate() }
        defer { process.terminationHandler = nil }
        let status = try exited.wait("uvrpc serve to exit")
        try errorEnded.wait("the end of its stderr") // what it logged last is read before the test looks
        return status
    }
}

/// A raw TCP peer driven by the test: writes what it is told, records what it gets.
private final class RawSocketPeer: Sendable {
    let connection: Promise<Result<LoopBound<Connection>, ConnectError>>
    let closed = Promise<ConnectionError?>()
    let received = LockedValue([UInt8]())
    let localAddress = Promise<String>()

    init(_ harness: LoopHarness, _ address: SocketAddress, reading: Bool = true) throws {
        let loop = harness.loop
        let connected = Promise<Result<LoopBound<Connection>, ConnectError>>()
        connection = connected
        let (closed, received, localAddress) = (self.closed, self.received, self.localAddress)
        try harness.sync {
            loop.connect(to: address) { result in
                connected.fulfill(result.map { connection in
                    localAddress.fulfill(connection.localAddress.map { "\($0)" } ?? "?")
                    if !reading { connection.pauseReading() }
                    connection.onRead = { bytes in received.withLock { $0 += bytes }; return bytes.count }
                    connection.onClose = { closed.fulfill($0) }
                    return LoopBound(connection, loop: loop)
                })
            }
        }
        _ = try connected.wait("raw connect").get()
    }

    func write(_ harness: LoopHarness, _ bytes: [UInt8]) throws {
        let connection = try self.connection.wait("raw connect").get()
        try harness.sync { try connection.value.write(bytes) }
    }

    func close(_ harness: LoopHarness) throws {
        let connection = try self.connection.wait("raw connect").get()
        try harness.sync { connection.value.close() }
    }
}

/// A well-behaved client making checked calls back to back until stopped.
private final class GoodClient: Sendable {
    let ok = LockedValue(0)
    let problems = LockedValue([String]())
    private let stopping = LockedValue(false)
    private let stopped = Promise<Void>()

    init(_ harness: LoopHarness, _ address: SocketAddress) throws {
        let loop = harness.loop
        let (ok, problems, stopping, stopped) = (self.ok, self.problems, self.stopping, self.stopped)
        let ready = Promise<Void>()
        try harness.sync {
            RPCClient.connect(to: address, on: loop, configuration: testConfiguration()) { result in
                guard case .success(let client) = result else { problems.withLock { $0.append("\(result)") }; return }
                func next(_ n: Int) {
                    if stopping.withLock({ $0 }) { client.close(); stopped.fulfill(()); return }
                    let payload = pseudoRandomBytes(count: 1 + n % 3000, seed: UInt64(n))
                    client.send(payload) { result in
                        switch result {
                        case .success(let answer) where answer == payload: ok.withLock { $0 += 1 }
                        case .success: problems.withLock { $0.append("call \(n): wrong answer") }
                        case .failure(let error): problems.withLock { $0.append("call \(n): \(error)") }; stopped.fulfill(()); return
                        }
                        if n == 0 { ready.fulfill(()) }
                        next(n + 1)
                    }
                }
                next(0)
            }
        }
        try ready.wait("the good client's first answer")
    }

    /// Stops it and returns how many calls were answered correctly.
    func finish() throws -> Int {
        stopping.withLock { $0 = true }
        try stopped.wait("the good client to stop")
        return ok.withLock { $0 }
    }
}

/// Faults against real processes: `uvrpc serve` as the server, killed or
/// stopped peers, hostile bytes on real sockets, a peer that never reads.
final class ProcessFaultTests: XCTestCase {
    private var tool: URL { uvrpcTool }

    private func serve(_ arguments: [String]) throws -> ServeProcess {
        guard FileManager.default.isExecutableFile(atPath: tool.path) else {
            throw XCTSkip("\(tool.path) is not built (make test builds it)")
        }
        return try ServeProcess(tool: tool, arguments)
    }

    private let handshake = PeerInfo(keepaliveInterval: 10).handshakeBytes

    func testHostileInputOnRealSocketsClosesOnlyThoseConnectionsWithALogLineEach() throws {
        let server = try serve(["--verbose", "--handshake-timeout", "0.5", "--max-payload", "100000",
                                "--keepalive-interval", "0.2"])
        defer { _ = try? server.stop() }
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let good = try GoodClient(harness, server.address)

        // Each: the bytes, and what the server's log line for that connection says.
        let cases: [(name: String, bytes: [UInt8], logged: String)] = [
            ("random bytes", pseudoRandomBytes(count: 4096, seed: 66), "protocol violation"),
            ("a declared length over the max payload", handshake + [0x04, 0x00, 0x01, 0x00, 0x01, 0x86, 0xa1, 9, 9],
             "MESSAGE_BIG declares a payload of 100001 bytes, over the maximum of 100000"),
            ("a handshake length of 4 GiB", [0xff, 0xff, 0xff, 0xff], "handshake declares 4294967295 bytes"),
            ("a handshake that never completes", [0, 0, 0, 17, 0x7b], "no handshake from the peer in time"),
            ("a second handshake", handshake + handshake, "second handshake (type byte 0)"),
        ]
        for hostile in cases {
            let peer = try RawSocketPeer(harness, server.address)
            let peerAddress = try peer.localAddress.wait("the peer's address")
            try peer.write(harness, hostile.bytes)
            _ = try peer.closed.wait("uvrpc serve to close the connection sending \(hostile.name)", seconds: 10)
            try server.waitForLog(hostile.logged)
            let line = server.stderr.split(separator: "\n").first { $0.contains(hostile.logged) }
            XCTAssertTrue(line?.contains(peerAddress) == true, "\(hostile.name): the log line names the peer \(peerAddress): \(line ?? "")")
        }

        // A response for an id never sent is ignored; the connection goes on.
        let ignoring = try RawSocketPeer(harness, server.address)
        try ignoring.write(harness, handshake + PacketWriter.frame(isResponse: true, id: 4321, payload: [1])
                           + PacketWriter.frame(isResponse: false, id: 7, payload: Array("hi".utf8)))
        let answer = PacketWriter.frame(isResponse: true, id: 7, payload: Array("hi".utf8))
        let serverHandshake = PeerInfo(keepaliveInterval: 0.2, extensions: .all, maximumPayloadSize: 100_000).handshakeBytes
        try waitUntil("the answer after an unknown response id") {
            ignoring.received.withLock { $0.starts(with: serverHandshake) && $0.dropFirst(serverHandshake.count).drop { $0 == 1 }.starts(with: answer) }
        }
        XCTAssertFalse(ignoring.closed.isFulfilled)
        try ignoring.close(harness)

        // A whole session, one byte per read.
        let trickle = try RawSocketPeer(harness, server.address)
        var session = handshake, expected: [UInt8] = []
        for i in 0..<4 {
            let payload = pseudoRandomBytes(count: 50 * i + 1, seed: UInt64(i))
            session += PacketWriter.frame(isResponse: false, id: UInt16(i), payload: payload)
            expected += PacketWriter.frame(isResponse: true, id: UInt16(i), payload: payload)
        }
        let connection = try trickle.connection.wait("trickle").get()
        let stream = session
        try harness.sync {
            var index = 0
            let timer = LoopBoundBox<LoopTimer?>(nil, loop: harness.loop)
            timer.value = harness.loop.scheduleTimer(after: .milliseconds(1), repeating: .milliseconds(1)) {
                guard index < stream.count else { timer.value?.cancel(); return }
                try? connection.value.write([stream[index]])
                index += 1
            }
        }
        let answers = expected
        try waitUntil("the answers to a session sent one byte at a time", seconds: 30) {
            Self.stripKeepalives(trickle.received.withLock { $0 }, after: serverHandshake.count, count: answers.count) == answers
        }
        try trickle.close(harness)

        let answered = try good.finish()
        XCTAssertEqual(good.problems.withLock { $0 }, [], "the good client saw no error")
        XCTAssertGreaterThan(answered, 10)
    }

    /// The answer bytes after `offset`, with KEEPALIVE bytes between frames removed.
    private static func stripKeepalives(_ bytes: [UInt8], after offset: Int, count: Int) -> [UInt8]? {
        var i = offset, out: [UInt8] = []
        while out.count < count, i < bytes.count {
            if bytes[i] == 1 { i += 1; continue }
            guard bytes[i] == 3, i + 5 <= bytes.count else { return nil }
            let length = Int(bytes[i + 3]) << 8 | Int(bytes[i + 4])
            guard i + 5 + length <= bytes.count else { return nil }
            out += bytes[i..<i + 5 + length]
            i += 5 + length
        }
        return out.count == count ? out : nil
    }

    func testServeKeepsItsMemoryBoundedUnderAPeerThatNeverReadsThenCutsItOff() throws {
        let server = try serve(["--verbose", "--write-timeout", "1", "--keepalive-interval", "0.2"])
        defer { _ = try? server.stop() }
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let good = try GoodClient(harness, server.address)
        let baseline = ProcessFigures.residentBytes(pid: server.pid) ?? 0

        let peer = try RawSocketPeer(harness, server.address, reading: false)
        let peerAddress = try peer.localAddress.wait("the peer's address")
        let connection = try peer.connection.wait("peer").get()
        let frame = PacketWriter.frame(isResponse: false, id: 1, payload: [UInt8](repeating: 3, count: 65_000))
        let sent = LockedValue(0)
        let header = handshake
        try harness.sync {
            let peer = connection.value
            try peer.write(header)
            func pump() {
                while peer.isOpen && peer.isWritable {
                    try? peer.write(frame)
                    sent.withLock { $0 += 1 }
                }
            }
            peer.onWritabilityChanged = { if $0 { pump() } }
            pump()
        }
        var peak = baseline
        let start = monotonicMilliseconds()
        while !peer.closed.isFulfilled {
            peak = max(peak, ProcessFigures.residentBytes(pid: server.pid) ?? 0)
            XCTAssertLessThan(monotonicMilliseconds() - start, 20_000, "the write timeout cut the peer off")
            if monotonicMilliseconds() - start > 20_000 { break }
            usleep(20_000) // sampling another process's memory: there is no event to await
        }
        let seconds = (monotonicMilliseconds() - start) / 1000
        try server.waitForLog("read nothing for 1.0 seconds")
        let line = server.stderr.split(separator: "\n").first { $0.contains("read nothing for") } ?? ""
        XCTAssertTrue(line.contains(peerAddress), "the log line names the peer: \(line)")
        XCTAssertLessThan(peak - baseline, 16 << 20, "uvrpc serve's resident memory grew by \(peak - baseline) bytes")
        let answered = try good.finish()
        XCTAssertEqual(good.problems.withLock { $0 }, [])
        XCTAssertGreaterThan(answered, 10)
        print("never-reading peer vs uvrpc serve: \(sent.withLock { $0 }) messages of 65000 B sent, cut off after "
              + "\(String(format: "%.1f", seconds)) s; server RSS \(baseline >> 10) KiB -> peak \(peak >> 10) KiB; "
              + "good client answered \(answered) times")
    }

    func testAServerKilledWithAThousandCallsInFlightFailsEveryCallAndReleasesDescriptors() throws {
        let server = try serve(["--keepalive-interval", "0.2"])
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let descriptorsBefore = ProcessFigures.openDescriptors()
        let configuration = testConfiguration(keepaliveInterval: .milliseconds(200), keepaliveTimeout: .seconds(2))
        let client = try harness.sync { () -> Promise<Result<LoopBound<RPCEndpoint>, ConnectError>> in
            let connected = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
            RPCClient.connect(to: server.address, on: loop, configuration: configuration) { result in
                connected.fulfill(result.map { LoopBound($0, loop: loop) })
            }
            return connected
        }.wait("connect").get()
        XCTAssertEqual(try harness.call(client, [1, 2, 3]).get(), [1, 2, 3])
        let closed = Promise<RPCCloseReason>()
        server.signal(SIGSTOP) // the calls reach its socket but are never answered
        let failures = Promise<[String]>()
        try harness.sync {
            client.value.onClose = { closed.fulfill($0) }
            let results = LoopBoundBox([String](), loop: loop)
            for i in 0..<1000 {
                client.value.send(pseudoRandomBytes(count: 100, seed: UInt64(i)), closeOnError: false) { result in
                    results.value.append("\(result)")
                    if results.value.count == 1000 { failures.fulfill(results.value) }
                }
            }
        }
        try waitUntil("the 1000 calls to reach the kernel") {
            (try? harness.sync { client.value.connection.pendingWriteBytes == 0 }) ?? false
        }
        let start = monotonicMilliseconds()
        try server.kill9()
        // Ended by the kill itself: the close reason below is the reset (or the end of
        // the stream), not the client's keepalive timeout (2 s).
        let results = try failures.wait("every pending call to end", seconds: 30)
        let elapsed = monotonicMilliseconds() - start
        XCTAssertEqual(results.filter { $0.hasPrefix("failure") }.count, 1000, results.first ?? "")
        let reason = try closed.wait("the client to close")
        XCTAssertTrue(reason == .reset || reason == .peerClosed, "\(reason)")
        XCTAssertEqual(ProcessFigures.openDescriptors(), descriptorsBefore, "the client's descriptor was released")
        print("SIGKILL with 1000 calls in flight: all failed \(Int(elapsed)) ms after the kill (\(reason))")
    }

    func testAServerThatStopsUnderLoadIsDetectedByTheKeepaliveTimeout() throws {
        let server = try serve(["--keepalive-interval", "0.2"])
        defer { try? server.kill9() }
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let configuration = testConfiguration(keepaliveInterval: .milliseconds(200), keepaliveTimeout: .seconds(1))
        let closed = Promise<RPCCloseReason>()
        let failed = LockedValue(0), ok = LockedValue(0)
        let allFailed = Promise<Void>()
        let running = Promise<Void>()
        try harness.sync {
            RPCClient.connect(to: server.address, on: loop, configuration: configuration) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                client.onClose = { closed.fulfill($0) }
                // 16 callers, each calling again as soon as answered: load until the peer goes silent.
                func call(_ n: Int) {
                    client.send(pseudoRandomBytes(count: 200, seed: UInt64(n)), closeOnError: false) { result in
                        switch result {
                        case .success: if ok.withLock({ $0 += 1; return $0 }) == 1000 { running.fulfill(()) }; call(n + 16)
                        case .failure: if failed.withLock({ $0 += 1; return $0 }) == 16 { allFailed.fulfill(()) }
                        }
                    }
                }
                for n in 0..<16 { call(n) }
            }
        }
        try running.wait("1000 answers under load")
        let start = monotonicMilliseconds()
        server.signal(SIGSTOP) // vanished without a FIN: only the keepalive timeout can tell
        try allFailed.wait("the 16 pending calls to fail", seconds: 30)
        let elapsed = monotonicMilliseconds() - start
        XCTAssertEqual(try closed.wait("close"), .keepaliveTimeout(.seconds(1)), "the keepalive timeout told, not a call's (20 s)")
        XCTAssertGreaterThan(elapsed, 900, "not before the timeout")
        print("stopped server under load: \(ok.withLock { $0 }) calls answered, the 16 pending failed \(Int(elapsed)) ms after SIGSTOP")
    }

    func testKilledClientsMidHandshakeMidFrameAndMid16MiBTransferAreReleased() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        // The survivor: an in-process server whose connections start paused, so that a
        // 16 MiB sender is surely mid-frame when it is killed.
        let paused = testConfiguration { $0.connectionOptions.autoRead = false }
        let endpoints = LockedValue([LoopBound<RPCEndpoint>]())
        let closes = LockedValue([RPCCloseReason]())
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: paused), on: loop, handler: .callback { endpoint in
                endpoint.onMessage = { request in try request.respond(request.payload) }
                endpoint.onClose = { reason in closes.withLock { $0.append(reason) } }
                endpoints.withLock { $0.append(LoopBound(endpoint, loop: loop)) }
            }).startAndWait().address
        guard case .ipv4(_, let port) = address else { return XCTFail("\(address)") }
        let descriptorsBefore = ProcessFigures.openSockets()

        func killedPeer(_ process: Process, _ what: String, ready: () throws -> Void) throws {
            let exited = Promise<Void>()
            process.terminationHandler = { _ in exited.fulfill(()) }
            try startChild(process)
            try ready()
            kill(process.processIdentifier, SIGKILL)
            try exited.wait("\(what) to die")
            process.terminationHandler = nil
        }
        // Bash's /dev/tcp writes exact bytes, then the process waits to be killed.
        func bashPeer(_ bytes: [UInt8]) -> (Process, Pipe) {
            let escaped = bytes.map { String(format: "\\x%02x", $0) }.joined()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(port); printf '\(escaped)' >&3; echo sent; exec sleep 60"]
            let out = Pipe() // made on the test's thread while no other starts a child (see startChild)
            process.standardOutput = out
            return (process, out)
        }
        let cases: [(String, [UInt8])] = [
            ("a peer killed mid-handshake", [0, 0, 0, 17] + Array(#"{"p":2,"#.utf8)),
            ("a peer killed mid-frame", handshake + [0x02, 0x00, 0x07, 0x00, 0x40] + Array("abc".utf8)),
        ]
        for (index, (what, bytes)) in cases.enumerated() {
            let (process, out) = bashPeer(bytes)
            try killedPeer(process, what) {
                let line = Promise<Void>()
                DispatchQueue.global().async { _ = try? out.fileHandleForReading.read(upToCount: 5); line.fulfill(()) }
                try line.wait("\(what) to write its bytes")
                try waitUntil("the server to accept \(what)") { endpoints.withLock { $0.count } == index + 1 }
            }
            let endpoint = endpoints.withLock { $0[index] }
            try harness.sync { endpoint.value.connection.resumeReading() }
            try waitUntil("\(what) to be closed by the server") { closes.withLock { $0.count } == index + 1 }
        }

        // `uvrpc call` sending 16 MiB, killed mid-transfer.
        guard FileManager.default.isExecutableFile(atPath: tool.path) else { throw XCTSkip("uvrpc is not built") }
        let sender = Process()
        sender.executableURL = tool
        sender.arguments = ["call", "--connect", "127.0.0.1:\(port)", "--count", "1", "--size", "\(16 << 20)"]
        sender.standardOutput = FileHandle.nullDevice
        sender.standardError = FileHandle.nullDevice
        try killedPeer(sender, "uvrpc call") {
            try waitUntil("the server to accept uvrpc call") { endpoints.withLock { $0.count } == 3 }
            let endpoint = endpoints.withLock { $0[2] }
            // Mid-transfer: more than 64 KiB is waiting in the server's socket (the window of
            // a socket nobody reads stays small), and not all 16 MiB can.
            try waitUntil("64 KiB of the 16 MiB frame to arrive") {
                let waiting = (try? harness.sync { () -> Int in
                    guard let fd = endpoint.value.connection.fileDescriptor else { return 0 }
                    var scratch = [UInt8](repeating: 0, count: (64 << 10) + 1)
                    return recv(fd, &scratch, scratch.count, Int32(MSG_PEEK | MSG_DONTWAIT))
                }) ?? 0
                return waiting > 64 << 10
            }
        }
        let endpoint = endpoints.withLock { $0[2] }
        try harness.sync { endpoint.value.connection.resumeReading() }
        try waitUntil("the 16 MiB transfer's connection to be closed by the server") { closes.withLock { $0.count } == 3 }

        let reasons = closes.withLock { $0 }
        XCTAssertTrue(reasons.allSatisfy { $0 == .peerClosed || $0 == .reset }, "\(reasons)")
        XCTAssertEqual(ProcessFigures.openSockets(), descriptorsBefore, "every accepted socket was released")
        // The server still answers.
        let done = Promise<Result<[UInt8], RPCError>>()
        var awake = testConfiguration()
        awake.connectionOptions.autoRead = true
        let clientConfiguration = awake
        try harness.sync {
            RPCClient.connect(to: address, on: loop, configuration: clientConfiguration) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                client.send([4, 5]) { done.fulfill($0); client.close() }
            }
            // Its endpoint starts paused like the others: let it read.
        }
        try waitUntil("a fourth connection") { endpoints.withLock { $0.count } == 4 }
        let fourth = endpoints.withLock { $0[3] }
        try harness.sync { fourth.value.connection.resumeReading() }
        XCTAssertEqual(try done.wait("a good call").get(), [4, 5])
        print("killed peers: \(reasons)")
    }
}
