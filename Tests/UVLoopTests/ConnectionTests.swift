import Dispatch
import Synchronization
import UVLoop
import UVTestSupport
import XCTest

/// Starts an echo listener: every byte read is written back.
private func echoListener(_ loop: EventLoop, on address: SocketAddress,
                          options: ConnectionOptions = ConnectionOptions()) throws(UVError) -> Listener {
    try loop.listen(on: address, options: options) { server in
        server.onRead = { [unowned server] bytes in
            try? server.write(bytes)
            return bytes.count
        }
    }
}

private func unixPath(_ name: String) -> String {
    "/tmp/uvloop-test-\(getpid())-\(name).sock"
}

final class ConnectionTests: XCTestCase {
    /// Sends each payload to an echo server and checks the echo byte for byte.
    private func checkEcho(listenOn address: SocketAddress, sizes: [Int],
                           file: StaticString = #filePath, line: UInt = #line) throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly(file: file, line: line) }
        let loop = harness.loop
        let done = Promise<Result<[Int], ConnectError>>()
        let payloads = sizes.enumerated().map { pseudoRandomBytes(count: $1, seed: UInt64($0 + 1)) }
        let mismatches = Atomic<Int>(0)
        try harness.sync {
            let listener = try echoListener(loop, on: address)
            loop.connect(to: listener.address) { result in
                switch result {
                case .failure(let error): done.fulfill(.failure(error))
                case .success(let client):
                    var index = 0
                    var received: [UInt8] = []
                    var echoed: [Int] = []
                    func sendNext() {
                        received.removeAll(keepingCapacity: true)
                        received.reserveCapacity(payloads[index].count)
                        try? client.write(payloads[index])
                    }
                    client.onRead = { bytes in
                        received.append(contentsOf: bytes)
                        if received.count == payloads[index].count {
                            if received != payloads[index] { mismatches.add(1, ordering: .relaxed) }
                            echoed.append(received.count)
                            index += 1
                            if index == payloads.count { client.close(); done.fulfill(.success(echoed)) }
                            else { sendNext() }
                        }
                        return bytes.count
                    }
                    sendNext()
                }
            }
        }
        let result = try done.wait("echo of \(sizes.count) payloads on \(address)", seconds: 120)
        XCTAssertEqual(try result.get(), sizes, file: file, line: line)
        XCTAssertEqual(mismatches.load(ordering: .relaxed), 0, "echoed bytes differ", file: file, line: line)
    }

    static let echoSizes = [1, 2, 63, 64, 1000, 4095, 4096, 8191, 8192, 8193, 65535, 65536, 100_000,
                            1 << 20, 16 << 20]

    func testEchoOverTCPFromOneByteTo16MiB() throws {
        try checkEcho(listenOn: .ipv4(host: "127.0.0.1", port: 0), sizes: Self.echoSizes)
    }

    func testEchoOverUnixSocketFromOneByteTo16MiB() throws {
        let path = unixPath("echo")
        unlink(path)
        try checkEcho(listenOn: .unix(path: path), sizes: Self.echoSizes)
        XCTAssertNotEqual(access(path, F_OK), 0, "closing the listener removes the socket file")
    }

    func testEchoOverIPv6() throws {
        // Skip only when this machine has no IPv6 loopback at all.
        let probe = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        guard probe >= 0 else { throw XCTSkip("no IPv6 sockets on this machine") }
        close(probe)
        try checkEcho(listenOn: .ipv6(host: "::1", port: 0), sizes: [1, 70_000])
    }

    func testListenerReportsTheBoundPort() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let address = try harness.sync { try echoListener(loop, on: .ipv4(host: "127.0.0.1", port: 0)).address }
        guard case .ipv4(let host, let port) = address else { return XCTFail("not IPv4: \(address)") }
        XCTAssertEqual(host, "127.0.0.1")
        XCTAssertGreaterThan(port, 0)
    }

    func testListenOnAnAddressInUseFailsNamingIt() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let description = try harness.sync { () -> String in
            let first = try echoListener(loop, on: .ipv4(host: "127.0.0.1", port: 0))
            do throws(UVError) {
                _ = try echoListener(loop, on: first.address)
                return "no error"
            } catch {
                XCTAssertEqual(error.name, "EADDRINUSE")
                return error.description
            }
        }
        XCTAssertTrue(description.contains("127.0.0.1:"), description)
        XCTAssertTrue(description.contains("EADDRINUSE"), description)
    }

    func testThousandConcurrentConnectionsEachEcho() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let count = 1000
        let done = Promise<Int>()
        let failures = Atomic<Int>(0)
        try harness.sync {
            let listener = try echoListener(loop, on: .ipv4(host: "127.0.0.1", port: 0))
            let finished = LoopBoundBox(0, loop: loop)
            for i in 0..<count {
                let message = Array("connection \(i) says hello".utf8)
                loop.connect(to: listener.address) { result in
                    guard case .success(let client) = result else {
                        failures.add(1, ordering: .relaxed)
                        finished.value += 1
                        if finished.value == count { done.fulfill(finished.value) }
                        return
                    }
                    var received: [UInt8] = []
                    client.onRead = { bytes in
                        received.append(contentsOf: bytes)
                        if received.count >= message.count {
                            if received != message { failures.add(1, ordering: .relaxed) }
                            client.close()
                            finished.value += 1
                            if finished.value == count { done.fulfill(finished.value) }
                        }
                        return bytes.count
                    }
                    try? client.write(message)
                }
            }
        }
        XCTAssertEqual(try done.wait("1000 echoing connections", seconds: 60), count)
        XCTAssertEqual(failures.load(ordering: .relaxed), 0)
    }

    func testConnectRefusedIsATypedErrorNamingTheAddress() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let port = refusedPort()
        let done = Promise<Result<String, ConnectError>>()
        try harness.sync {
            loop.connect(to: .ipv4(host: "127.0.0.1", port: port)) { result in
                done.fulfill(result.map { "\($0.label)" })
            }
        }
        let result = try done.wait("refused connect")
        guard case .failure(let connectError) = result, case .failed(let error) = connectError.kind else { return XCTFail("expected a failure, got \(result)") }
        XCTAssertEqual(error.name, "ECONNREFUSED")
        XCTAssertTrue(error.description.contains("127.0.0.1:\(port)"), error.description)
    }

    func testConnectToAMissingUnixSocketFails() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let done = Promise<Result<String, ConnectError>>()
        let path = unixPath("missing")
        try harness.sync {
            loop.connect(to: .unix(path: path)) { done.fulfill($0.map { $0.label }) }
        }
        guard case .failure(let connectError) = try done.wait("unix connect"), case .failed(let error) = connectError.kind else { return XCTFail("expected failure") }
        XCTAssertEqual(error.name, "ENOENT")
        XCTAssertTrue(error.description.contains(path))
    }

    func testConnectTimesOutWhenTheBacklogIsFull() throws {
        // A kernel listener with backlog 0 that never accepts: after it holds one
        // connection, further SYNs on loopback are dropped and connects hang.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                XCTAssertEqual(bind(fd, sa, len), 0)
                XCTAssertEqual(getsockname(fd, sa, &len), 0)
            }
        }
        XCTAssertEqual(listen(fd, 0), 0)
        let port = Int(UInt16(bigEndian: addr.sin_port))

        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let outcomes = Promise<[String]>()
        try harness.sync {
            let results = LoopBoundBox([String](), loop: loop)
            let attempts = 4
            for _ in 0..<attempts {
                loop.connect(to: .ipv4(host: "127.0.0.1", port: port), timeout: .milliseconds(300)) { result in
                    switch result {
                    case .success(let c): results.value.append("connected"); c.abort()
                    case .failure(let e):
                        if case .timedOut(let address, _) = e.kind {
                            results.value.append("timedOut \(address)")
                        } else {
                            results.value.append("other \(e)")
                        }
                    }
                    if results.value.count == attempts { outcomes.fulfill(results.value) }
                }
            }
        }
        let results = try outcomes.wait("connect timeouts", seconds: 30)
        XCTAssertTrue(results.contains("timedOut 127.0.0.1:\(port)"), "\(results)")
        XCTAssertFalse(results.contains { $0.hasPrefix("other") }, "\(results)")
    }

    func testPeerClosingMidStreamDeliversTheDataThenEndOfStream() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let payload = pseudoRandomBytes(count: 300_000, seed: 7)
        let done = Promise<(bytes: [UInt8], reason: ConnectionError?)>()
        try harness.sync {
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0)) { server in
                try? server.write(payload)
                server.close() // graceful: the bytes go out first
            }
            loop.connect(to: listener.address) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                var received: [UInt8] = []
                client.onRead = { bytes in received.append(contentsOf: bytes); return bytes.count }
                client.onClose = { reason in done.fulfill((received, reason)) }
            }
        }
        let (bytes, reason) = try done.wait("end of stream")
        XCTAssertEqual(bytes.count, payload.count)
        XCTAssertTrue(bytes == payload)
        guard case .endOfStream? = reason?.kind else { return XCTFail("expected endOfStream, got \(String(describing: reason))") }
    }

    func testPeerResetIsReportedAsReset() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let done = Promise<ConnectionError?>()
        try harness.sync {
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0)) { server in
                server.onRead = { [unowned server] bytes in server.abort(); return bytes.count }
            }
            loop.connect(to: listener.address) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                client.onClose = { done.fulfill($0) }
                try? client.write([1, 2, 3])
            }
        }
        let reason = try done.wait("reset")
        guard case .reset(let label)? = reason?.kind else { return XCTFail("expected reset, got \(String(describing: reason))") }
        XCTAssertTrue(label.hasPrefix("127.0.0.1:"), label)
    }

    func testAbortWithPendingWritesFailsTheirCompletionsAndWritesAfterCloseThrow() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let done = Promise<(completion: String, afterClose: String, onClose: String)>()
        try harness.sync {
            // The server never reads, so a large write stays pending.
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0),
                                           options: { var o = ConnectionOptions(); o.autoRead = false; return o }()) { _ in }
            loop.connect(to: listener.address) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                let completion = LoopBoundBox("none", loop: loop)
                client.onClose = { reason in
                    var afterClose = "no error"
                    do { try client.write([1]) } catch { afterClose = "\(error)" }
                    done.fulfill((completion.value, afterClose, "\(String(describing: reason))"))
                }
                try? client.write(pseudoRandomBytes(count: 64 << 20, seed: 3)) { result in
                    completion.value = "\(result)"
                }
                _ = loop.scheduleTimer(after: .milliseconds(50)) {
                    XCTAssertGreaterThan(client.pendingWriteBytes, 0, "the peer does not read: bytes must be pending")
                    client.abort()
                }
            }
        }
        let result = try done.wait("abort with pending writes")
        XCTAssertTrue(result.completion.contains("failure") && result.completion.contains("closed"), result.completion)
        XCTAssertTrue(result.afterClose.contains("is closed"), result.afterClose)
        XCTAssertEqual(result.onClose, "nil", "a local abort reports no error")
    }

    func testGracefulCloseWithPendingWritesDeliversEverythingFirst() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let payload = pseudoRandomBytes(count: 8 << 20, seed: 11)
        let done = Promise<(received: Int, equal: Bool, completed: Bool)>()
        try harness.sync {
            let completed = LoopBoundBox(false, loop: loop)
            // The server reads slowly (paused at first), so the client's close finds writes pending.
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0),
                                           options: { var o = ConnectionOptions(); o.autoRead = false; return o }()) { server in
                var received: [UInt8] = []
                server.onRead = { bytes in received.append(contentsOf: bytes); return bytes.count }
                server.onClose = { _ in done.fulfill((received.count, received == payload, completed.value)) }
                _ = loop.scheduleTimer(after: .milliseconds(100)) { server.resumeReading() }
            }
            loop.connect(to: listener.address) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                try? client.write(payload) { result in completed.value = (try? result.get()) != nil }
                client.close()
            }
        }
        let result = try done.wait("graceful close", seconds: 60)
        XCTAssertEqual(result.received, payload.count)
        XCTAssertTrue(result.equal)
        XCTAssertTrue(result.completed, "the write's completion reported success")
    }

    func testBackpressureTurnsUnwritableAboveHighWaterAndBackBelowLowWater() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let done = Promise<[Bool]>()
        try harness.sync {
            let serverBox = LoopBoundBox<Connection?>(nil, loop: loop)
            var noRead = ConnectionOptions()
            noRead.autoRead = false
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0), options: noRead) { server in
                server.onRead = { $0.count }
                serverBox.value = server
            }
            var options = ConnectionOptions()
            options.writeHighWaterMark = 1 << 20
            options.writeLowWaterMark = 64 << 10
            loop.connect(to: listener.address, options: options) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                var changes: [Bool] = []
                client.onWritabilityChanged = { writable in
                    changes.append(writable)
                    if writable {
                        XCTAssertLessThan(client.pendingWriteBytes, 64 << 10)
                        done.fulfill(changes)
                    }
                }
                let chunk = [UInt8](repeating: 0x55, count: 64 << 10)
                var writes = 0
                while client.isWritable && writes < 10_000 {
                    try? client.write(chunk)
                    writes += 1
                }
                XCTAssertFalse(client.isWritable, "64 KiB writes to a peer that does not read pass the high-water mark")
                XCTAssertGreaterThan(client.pendingWriteBytes, 1 << 20)
                _ = loop.scheduleTimer(after: .milliseconds(50)) { serverBox.value?.resumeReading() }
            }
        }
        XCTAssertEqual(try done.wait("writability back"), [false, true])
    }

    func testReadBufferGrowsForAnUnconsumedFrameThenShrinksBack() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let frame = 200_000
        let done = Promise<(maxCapacity: Int, finalCapacity: Int, ok: Bool)>()
        try harness.sync {
            var options = ConnectionOptions()
            options.initialReadBufferCapacity = 4096
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0), options: options) { server in
                var maxCapacity = 0
                // Consumes only whole 200 000-byte frames: the ring must hold one.
                server.onRead = { [unowned server] bytes in
                    maxCapacity = max(maxCapacity, server.readBufferCapacity)
                    guard bytes.count >= frame else { return 0 }
                    let ok = bytes.prefix(frame).allSatisfy { $0 == 0xA5 }
                    let seen = maxCapacity
                    _ = loop.scheduleTimer(after: .zero) { done.fulfill((seen, server.readBufferCapacity, ok)) }
                    return frame
                }
            }
            loop.connect(to: listener.address) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                try? client.write([UInt8](repeating: 0xA5, count: frame))
            }
        }
        let result = try done.wait("big frame")
        XCTAssertTrue(result.ok)
        XCTAssertGreaterThanOrEqual(result.maxCapacity, 262_144, "grew to a power of two holding the frame")
        XCTAssertEqual(result.finalCapacity, 4096, "shrank back once drained")
    }

    func testAHandlerThatNeverConsumesHitsTheReadBufferLimit() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let done = Promise<ConnectionError?>()
        try harness.sync {
            var options = ConnectionOptions()
            options.initialReadBufferCapacity = 4096
            options.maximumReadBufferCapacity = 65536
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0), options: options) { server in
                server.onRead = { _ in 0 }
                server.onClose = { done.fulfill($0) }
            }
            loop.connect(to: listener.address) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                try? client.write([UInt8](repeating: 1, count: 200_000))
            }
        }
        let reason = try done.wait("read buffer limit")
        XCTAssertEqual(reason, .readBufferLimitExceeded(connection: reasonLabel(reason), limit: 65536))
    }

    func testPausedReadingKeepsBytesBufferedUntilResumed() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let done = Promise<[UInt8]>()
        try harness.sync {
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0)) { server in
                var received: [UInt8] = []
                server.onRead = { [unowned server] bytes in
                    // Take one byte, then pause: the rest must wait for resume.
                    received.append(bytes[0])
                    server.pauseReading()
                    _ = loop.scheduleTimer(after: .milliseconds(10)) { server.resumeReading() }
                    if received.count == 5 { done.fulfill(received) }
                    return 1
                }
            }
            loop.connect(to: listener.address) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                try? client.write([1, 2, 3, 4, 5])
            }
        }
        XCTAssertEqual(try done.wait("paused reads"), [1, 2, 3, 4, 5])
    }
}

private func reasonLabel(_ error: ConnectionError?) -> String {
    if case .readBufferLimitExceeded(let label, _)? = error?.kind { return label }
    return "?"
}

final class ConnectionBufferTests: XCTestCase {
    func testReadsOfWholeMessagesUseTheSharedBufferAndIdleBuffersCanBeReleased() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let echoed = LockedValue(0)
        let serverBox = Promise<LoopBound<Connection>>()
        let client = try harness.sync { () -> Promise<Result<LoopBound<Connection>, ConnectError>> in
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0)) { server in
                server.onRead = { [unowned server] bytes in
                    try? server.write(bytes)
                    return bytes.count
                }
                serverBox.fulfill(LoopBound(server, loop: loop))
            }
            let connected = Promise<Result<LoopBound<Connection>, ConnectError>>()
            loop.connect(to: listener.address) { result in
                connected.fulfill(result.map { connection in
                    connection.onRead = { bytes in echoed.withLock { $0 += bytes.count }; return bytes.count }
                    return LoopBound(connection, loop: loop)
                })
            }
            return connected
        }.wait("connect").get()
        let server = try serverBox.wait("accept")
        func roundTrip(_ count: Int) throws {
            let before = echoed.withLock { $0 }
            try harness.sync { try client.value.write([UInt8](repeating: 9, count: count)) }
            let deadline = Date().addingTimeInterval(10)
            while echoed.withLock({ $0 }) < before + count {
                guard Date() < deadline else { throw TestTimeout(what: "\(count) bytes echoed") }
                usleep(1000) // the count is fed by the loop thread; polled with a bound
            }
        }
        try roundTrip(100)
        // Whole messages were read from the loop's shared buffer and the echo went
        // straight to the socket: the connection owns no buffer at all.
        XCTAssertEqual(try harness.sync { server.value.ownedBufferBytes }, 0)
        // A write with a completion always goes through the outgoing buffer.
        let written = Promise<Void>()
        try harness.sync { try server.value.write([1, 2, 3]) { _ in written.fulfill(()) } }
        try written.wait("the write's completion")
        let busy = try harness.sync { server.value.ownedBufferBytes }
        XCTAssertGreaterThan(busy, 0)
        let released = try harness.sync { () -> Int in
            server.value.releaseIdleBuffers()
            return server.value.ownedBufferBytes
        }
        XCTAssertEqual(released, 0)
        try roundTrip(70_000) // allocated again on demand
        try roundTrip(1)
        print("buffers: \(busy) bytes owned after a buffered write, 0 after releaseIdleBuffers()")
    }

    func testADirectReadBufferGetsTheBytesWithoutTheRing() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let payload = pseudoRandomBytes(count: 3_000_000, seed: 77)
        let done = Promise<(matches: Bool, directBytes: Int)>()
        let header = [UInt8(payload.count >> 24), UInt8(payload.count >> 16 & 0xff),
                      UInt8(payload.count >> 8 & 0xff), UInt8(payload.count & 0xff)]
        try harness.sync {
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0)) { server in
                // A 4-byte length, then the body: bytes after the header go into `body`,
                // through onRead (copied) until the ring is empty, then directly.
                let body = UnsafeMutableRawBufferPointer.allocate(byteCount: payload.count, alignment: 16)
                var filled = 0, direct = 0, length: Int?
                func finishIfDone() {
                    guard filled == payload.count else { return }
                    done.fulfill((Array(UnsafeRawBufferPointer(body)) == payload, direct))
                    body.deallocate()
                }
                server.onRead = { bytes in
                    var offset = 0
                    if length == nil {
                        guard bytes.count >= 4 else { return 0 }
                        length = Int(bytes[0]) << 24 | Int(bytes[1]) << 16 | Int(bytes[2]) << 8 | Int(bytes[3])
                        offset = 4
                    }
                    let n = min(bytes.count - offset, payload.count - filled)
                    (body.baseAddress! + filled).copyMemory(from: bytes.baseAddress! + offset, byteCount: n)
                    filled += n
                    finishIfDone()
                    return offset + n
                }
                server.directReadBuffer = {
                    guard length != nil, filled < payload.count else { return nil }
                    return UnsafeMutableRawBufferPointer(rebasing: body[filled...])
                }
                server.onDirectRead = { n in
                    filled += n
                    direct += n
                    finishIfDone()
                }
            }
            loop.connect(to: listener.address) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                try? client.write(header + payload)
            }
        }
        let result = try done.wait("3 MB body")
        XCTAssertTrue(result.matches, "the body arrived intact")
        XCTAssertGreaterThan(result.directBytes, payload.count / 2, "most of it was read straight into the body")
    }
}
