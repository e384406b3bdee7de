import Logging
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Records every log message (thread-safe), for tests that check what was logged.
final class LogRecorder: Sendable {
    let messages = LockedValue([String]())
    var logger: Logger {
        var logger = Logger(label: "test") { _ in Handler(recorder: self) }
        logger.logLevel = .debug
        return logger
    }
    func contains(_ text: String) -> Bool { messages.withLock { $0.contains { $0.contains(text) } } }

    struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .debug
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { $1 }
            let text = "\(event.message) \(all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))"
            recorder.messages.withLock { $0.append(text) }
        }
    }
}

/// The request context: which connection, which peer, the per-connection
/// value, late and double answers, unanswered requests, the admit hook and
/// the handshake event.
final class RequestContextTests: XCTestCase {
    /// A server whose handler answers with what its request says about the
    /// connection: "<user value>|<peer address>|<peer keepalive>|<same endpoint>".
    private func describingServer(_ harness: LoopHarness, admitted: LockedValue<[SocketAddress?]>,
                                  endpoints: LockedValue<[ObjectIdentifier]>) throws -> SocketAddress {
        let counter = LockedValue(0)
        return try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: harness.loop, admit: { address in
                admitted.withLock { $0.append(address) }
                let n = counter.withLock { n -> Int in n += 1; return n }
                return .accept([Label.self: "session-\(n)"])
            }, handler: .callback { endpoint in
                endpoints.withLock { $0.append(ObjectIdentifier(endpoint)) }
                endpoint.onMessage = { request in
                    let text = "\(request.connectionValues[Label.self] ?? "none")|\(request.peerAddress.map { "\($0)" } ?? "none")"
                        + "|\(request.peerInfo.keepaliveInterval)|\(ObjectIdentifier(request.endpoint) == ObjectIdentifier(endpoint))"
                    try request.respond(Array(text.utf8))
                }
            }).startAndWait().address
    }

    func testEachRequestKnowsItsConnectionPeerAndUserValue() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let admitted = LockedValue([SocketAddress?]())
        let endpoints = LockedValue([ObjectIdentifier]())
        let address = try describingServer(harness, admitted: admitted, endpoints: endpoints)
        // Two clients, told apart by their keepalive interval (announced in their handshake).
        var clients: [LoopBound<RPCEndpoint>] = []
        for interval in [250, 500] {
            let connected = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
            try harness.sync {
                RPCClient.connect(to: address, on: harness.loop,
                                  configuration: testConfiguration(keepaliveInterval: .milliseconds(interval))) { result in
                    connected.fulfill(result.map { LoopBound($0, loop: harness.loop) })
                }
            }
            clients.append(try connected.wait("client connect").get())
        }
        for (index, client) in clients.enumerated() {
            let local = try harness.sync { client.value.connection.localAddress.map { "\($0)" } ?? "?" }
            for _ in 0..<2 {
                let answer = String(decoding: try harness.call(client, [1]).get(), as: UTF8.self)
                XCTAssertEqual(answer, "session-\(index + 1)|\(local)|\(index == 0 ? 0.25 : 0.5)|true")
            }
        }
        XCTAssertEqual(admitted.withLock { $0.map { $0.map { "\($0)" } ?? "none" } },
                       try clients.map { client in try harness.sync { "\(client.value.connection.localAddress!)" } },
                       "the admit hook saw each client's address, in order")
        XCTAssertEqual(Set(endpoints.withLock { $0 }).count, 2)
        for client in clients { try harness.sync { client.value.close() } }
    }

    func testARefusedConnectionIsClosedBeforeAnyByte() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let made = LockedValue(0)
        let server = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                   on: harness.loop, admit: { _ in .refuse }, handler: .callback { _ in
            made.withLock { $0 += 1 }
        }).startAndWait()
        let address = server.address
        let closed = Promise<RPCCloseReason>()
        let handshake = Promise<Bool>()
        try harness.sync {
            RPCClient.connect(to: address, on: harness.loop, configuration: testConfiguration()) { result in
                guard case .success(let endpoint) = result else { return closed.fulfill(.local) }
                endpoint.onHandshake = { _ in handshake.fulfill(true) }
                endpoint.onClose = { reason in
                    handshake.fulfill(false)
                    closed.fulfill(reason)
                }
            }
        }
        XCTAssertEqual(try closed.wait("the refused client's close"), .peerClosed)
        XCTAssertFalse(try handshake.wait("handshake or close"), "a refused connection gets no handshake")
        XCTAssertEqual(made.withLock { $0 }, 0, "no endpoint is made for a refused connection")
        XCTAssertTrue(server.openEndpoints.isEmpty)
        server.stopAndWait()
    }

    func testTheHandshakeEventComesFirstWithThePeersInfo() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let events = LockedValue([String]())
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: harness.loop, handler: .callback { endpoint in
                endpoint.onHandshake = { info in events.withLock { $0.append("handshake \(info.keepaliveInterval)") } }
                endpoint.onMessage = { request in
                    events.withLock { $0.append("message") }
                    try request.respond(request.payload)
                }
            }).startAndWait().address
        let connected = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
        try harness.sync {
            RPCClient.connect(to: address, on: harness.loop,
                              configuration: testConfiguration(keepaliveInterval: .milliseconds(750))) { result in
                connected.fulfill(result.map { LoopBound($0, loop: harness.loop) })
            }
        }
        let client = try connected.wait("client connect").get()
        XCTAssertEqual(try harness.call(client, [7]).get(), [7])
        XCTAssertEqual(events.withLock { $0 }, ["handshake 0.75", "message"])
        try harness.sync { client.value.close() }
    }

    func testALaterAnswerArrivesAndASecondOneIsRefused() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let kept = LoopBoundBox.sendingValue([RPCRequest](), loop: harness.loop)
        let pair = try harness.endpointPair(serverHandler: { request in
            // Answered later, from a timer: the payload is copied, the request kept.
            let answer = Array(request.payload.reversed())
            kept.value.append(request)
            _ = request.endpoint.loop.scheduleTimer(after: .milliseconds(1)) {
                XCTAssertFalse(request.isAnswered)
                do { try request.respond(answer) } catch { XCTFail("the later answer failed: \(error)") }
                XCTAssertTrue(request.isAnswered)
            }
        })
        XCTAssertEqual(try harness.call(pair.client, [1, 2, 3]).get(), [3, 2, 1])
        let second = try harness.sync { () -> String in
            XCTAssertEqual(pair.server.value.unansweredRequestCount, 0)
            do {
                try kept.value[0].respond([9])
                return "answered twice"
            } catch {
                return "\(error)"
            }
        }
        XCTAssertTrue(second.contains("already answered"), second)
    }

    func testAnUnansweredRequestIsReportedAndLaterAnswersRefusedAfterClose() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let log = LogRecorder()
        let kept = LoopBoundBox.sendingValue([RPCRequest](), loop: harness.loop)
        let serverConfiguration = testConfiguration {
            $0.messageTimeout = .milliseconds(20) // "overdue" after 20 ms
            $0.keepaliveTimeout = .milliseconds(400) // liveness checks every 100 ms
            $0.keepaliveInterval = .milliseconds(50)
        }
        let reachedHandler = Promise<Void>()
        let endpoint = Promise<LoopBound<RPCEndpoint>>()
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: serverConfiguration), on: harness.loop, logger: log.logger, handler: .callback { server in
                endpoint.fulfill(LoopBound(server, loop: harness.loop))
                server.onMessage = { request in
                    kept.value.append(request) // neither answered nor failed
                    reachedHandler.fulfill(())
                }
            }).startAndWait().address
        let connected = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
        try harness.sync {
            RPCClient.connect(to: address, on: harness.loop, configuration: testConfiguration()) { result in
                connected.fulfill(result.map { LoopBound($0, loop: harness.loop) })
            }
        }
        let client = try connected.wait("client connect").get()
        try harness.sync { client.value.send([1], timeout: .seconds(30), closeOnError: false) { _ in } }
        try reachedHandler.wait("the handler")
        let server = try endpoint.wait("the server endpoint")
        XCTAssertEqual(try harness.sync { server.value.unansweredRequestCount }, 1)
        try waitUntil("the overdue request is logged") { log.contains("message handler has not answered") }
        XCTAssertTrue(log.contains("rpc.id=65530"))
        try harness.sync { server.value.close() }
        try waitUntil("the close is logged") { log.contains("closing with requests unanswered") }
        let late = try harness.sync { () -> String in
            do { try kept.value[0].respond([2]); return "answered" } catch { return "\(error)" }
        }
        XCTAssertTrue(late.contains("closed"), late)
        try harness.sync { client.value.close() }
    }

    func testConnectionValuesAreTypedByTheirKeys() {
        var values: RPCConnectionValues = [Label.self: "a", Number.self: 7]
        XCTAssertEqual(values[Label.self], "a")
        XCTAssertEqual(values[Number.self], 7)
        values[Number.self] = nil
        XCTAssertNil(values[Number.self])
        let mistyped: RPCConnectionValues = [Number.self: "not a number"]
        XCTAssertTrue(mistyped.isEmpty, "a value of the wrong type for its key is dropped")
    }

    func testAsyncHandlersSeeTheSameContext() async throws {
        let loop = try EventLoop(name: "async-context")
        loop.start()
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: loop, admit: { _ in .accept([Number.self: 42]) }, handler: .async { request, context in
            XCTAssertTrue(loop.inEventLoop, "async handlers run on the endpoint's loop")
            let text = "\(context.connectionValues[Number.self] ?? -1)|\(context.peerAddress.map { "\($0)" } ?? "none")"
                + "|\(context.peerInfo.keepaliveInterval)|\(context.messageID)|\(request.payload.count)"
            return Array(text.utf8)
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: loop,
                                                 configuration: testConfiguration(keepaliveInterval: .milliseconds(300)))
        let local = await loop.submitIfRunning { client.endpoint.connection.localAddress.map { "\($0)" } ?? "?" } ?? "?"
        let answer = try await client.send([1, 2, 3, 4], timeout: .seconds(10))
        XCTAssertEqual(String(decoding: answer, as: UTF8.self), "42|\(local)|0.3|65530|4")
        await client.close()
        await server.stop()
        let status = await loop.shutdown()
        XCTAssertEqual(status, 0)
    }
}

/// A per-connection text, for the context tests.
enum Label: RPCConnectionKey { typealias Value = String }
/// A per-connection number, for the context tests.
enum Number: RPCConnectionKey { typealias Value = Int }
