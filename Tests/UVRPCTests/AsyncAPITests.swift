import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Runs `body`, failing with `TestTimeout` if it takes longer than `seconds`.
func withTimeout<T: Sendable>(_ what: String, seconds: Double = 60,
                              _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TestTimeout(what: what) }
        return value
    }
}

private let reversingAsync: @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8] = { request, _ in Array(request.payload.reversed()) }

/// A server made with the async API and a client connected to it.
private func asyncPair(_ loop: EventLoop,
                       server serverConfiguration: RPCEndpoint.Configuration = testConfiguration(),
                       client clientConfiguration: RPCEndpoint.Configuration = testConfiguration(),
                       serverHandler: @escaping @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8] = reversingAsync,
                       clientHandler: @escaping @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8] = reversingAsync)
    async throws -> (server: RunningServer, serverEndpoint: RPCAsyncEndpoint, client: RPCAsyncEndpoint) {
    let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: serverConfiguration), on: loop, handler: .async(serverHandler)).start()
    let client = try await RPCClient.connect(to: server.address, on: loop, configuration: clientConfiguration,
                                             handler: .async(clientHandler))
    var iterator = server.endpoints.makeAsyncIterator()
    guard let serverEndpoint = await iterator.next() else { throw TestTimeout(what: "the accepted endpoint") }
    return (server, serverEndpoint, client)
}

final class AsyncAPITests: XCTestCase {
    func testHandlersAndCallersBoundToTheLoopRunOnItsThread() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let handlerOnLoop = LockedValue([Bool]())
        let (_, _, client) = try await asyncPair(loop, serverHandler: { request, _ in
            handlerOnLoop.withLock { $0.append(loop.inEventLoop) }
            try await Task.sleep(for: .milliseconds(1)) // resumes on the loop too
            handlerOnLoop.withLock { $0.append(loop.inEventLoop) }
            return request.payload
        })
        let callerOnLoop = try await withTimeout("a call from a task on the loop") {
            try await Task(executorPreference: loop.taskExecutor) { () async throws -> [Bool] in
                let before = loop.inEventLoop
                let response = try await client.send([1, 2, 3])
                XCTAssertEqual(response, [1, 2, 3])
                return [before, loop.inEventLoop]
            }.value
        }
        XCTAssertEqual(callerOnLoop, [true, true], "a task preferring the loop runs and resumes on the loop thread")
        XCTAssertEqual(handlerOnLoop.withLock { $0 }, [true, true], "async handlers run on the loop thread")
    }

    func testSimpleMessagesBothWaysFromAnotherThread() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let (_, serverEndpoint, client) = try await asyncPair(harness.loop)
        XCTAssertFalse(harness.loop.inEventLoop)
        for (i, size) in [0, 1, 100, 65535, 65536, 5 << 20].enumerated() {
            let payload = pseudoRandomBytes(count: size, seed: UInt64(i + 10))
            let a = try await withTimeout("client -> server") { try await client.send(payload) }
            XCTAssertEqual(a, payload.reversed(), "client -> server, \(size) bytes")
            let b = try await withTimeout("server -> client") { try await serverEndpoint.send(payload) }
            XCTAssertEqual(b, payload.reversed(), "server -> client, \(size) bytes")
        }
    }

    /// Every handler waits until all twelve calls (six each way) have
    /// arrived: only handlers that run concurrently get there (else this waits forever).
    func testSlowHandlersRunConcurrently() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let waiting = LockedValue<(arrived: Int, parked: [CheckedContinuation<Void, Never>])>((0, []))
        let slow: @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8] = { request, _ in
            await withCheckedContinuation { continuation in
                let all = waiting.withLock { state -> [CheckedContinuation<Void, Never>] in
                    state.arrived += 1
                    state.parked.append(continuation)
                    return state.arrived == 12 ? state.parked : []
                }
                for parked in all { parked.resume() }
            }
            return request.payload.reversed()
        }
        let (_, serverEndpoint, client) = try await asyncPair(harness.loop, serverHandler: slow, clientHandler: slow)
        let results = try await withTimeout("12 slow calls") {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<12 {
                    group.addTask {
                        let endpoint = i % 2 == 0 ? client : serverEndpoint
                        return try await endpoint.send([UInt8(i), 9]) == [9, UInt8(i)]
                    }
                }
                return try await group.reduce(into: [Bool]()) { $0.append($1) }
            }
        }
        XCTAssertEqual(results, Array(repeating: true, count: 12))
    }

    func testCallersOnTheLoopReuseTheirCallsAndOthersDoNot() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let (_, _, client) = try await asyncPair(loop)
        try await withTimeout("calls from a task on the loop") {
            try await Task(executorPreference: loop.taskExecutor) {
                for i in 0..<20 {
                    let answer = try await client.send([UInt8(i), 7])
                    XCTAssertEqual(answer, [7, UInt8(i)])
                }
            }.value
        }
        XCTAssertEqual(try harness.sync { client.endpoint.spareCallCount }, 1, "one call object served 20 calls in turn")
        // Calls from off the loop (the global executor) allocate their own and keep none.
        for i in 0..<5 {
            let answer = try await Task.detached { try await client.send([UInt8(i), 8]) }.value
            XCTAssertEqual(answer, [8, UInt8(i)])
        }
        XCTAssertEqual(try harness.sync { client.endpoint.spareCallCount }, 1)
        // A cancelled call on the loop still ends with CancellationError, and the next calls work.
        try await withTimeout("a cancelled call on the loop") {
            try await Task(executorPreference: loop.taskExecutor) {
                let cancelled = Task(executorPreference: loop.taskExecutor) { try await client.send([0xff, 0xff], timeout: .seconds(30)) }
                cancelled.cancel()
                do { _ = try await cancelled.value; XCTFail("the cancelled call was answered") } catch is CancellationError {}
                for i in 0..<5 {
                    let answer = try await client.send([UInt8(i), 9])
                    XCTAssertEqual(answer, [9, UInt8(i)])
                }
            }.value
        }
    }

    func testAHandlerThatCancelsItsOwnTaskDoesNotCancelLaterHandlers() async throws {
        // Found in review: a worker whose task was cancelled by its handler kept
        // serving, and every later handler saw a cancelled task.
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let (_, _, client) = try await asyncPair(harness.loop, serverHandler: { request, _ in
            if request.payload.first == 9 { withUnsafeCurrentTask { $0?.cancel() } }
            try Task.checkCancellation()
            return request.payload
        })
        _ = try? await client.send([9])
        for i in 0..<5 {
            let answer = try await client.send([UInt8(i)])
            XCTAssertEqual(answer, [UInt8(i)])
        }
    }

    func testHandlersThatReturnAtOnceShareOneWorker() async throws {
        // Handlers that never suspend are all run by one worker task: the check
        // for a second one runs behind the first and finds the queue empty.
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let (_, serverEndpoint, client) = try await asyncPair(harness.loop)
        let answered = try await withTimeout("500 calls at once") {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<500 { group.addTask { try await client.send([UInt8(i & 0xff), 1]) == [1, UInt8(i & 0xff)] } }
                return try await group.reduce(into: 0) { count, right in count += right ? 1 : 0 }
            }
        }
        XCTAssertEqual(answered, 500)
        XCTAssertEqual(try harness.sync { serverEndpoint.endpoint.asyncWorkerCount }, 1)
    }

    func testPayloadsAHandlerKeepsAreNotReusedForLaterMessages() async throws {
        // The loop reuses a finished request's array for the next message of the
        // same size (PayloadSpares); an array the handler kept must keep its bytes.
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let kept = LockedValue([[UInt8]]())
        let (_, _, client) = try await asyncPair(harness.loop, serverHandler: { request, _ in
            if request.payload[0] % 2 == 0 { kept.withLock { $0.append(request.payload) } } // every other one escapes
            return request.payload
        })
        let sent = (0..<600).map { i in [UInt8(i & 0xff), UInt8(i >> 8)] + [UInt8](repeating: UInt8(i % 251), count: 30) }
        try await withTimeout("600 calls, 64 in flight") {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for batch in stride(from: 0, to: sent.count, by: 64) {
                    for payload in sent[batch..<min(batch + 64, sent.count)] {
                        group.addTask { let answer = try await client.send(payload); XCTAssertEqual(answer, payload) }
                    }
                    try await group.waitForAll()
                }
            }
        }
        let keptNow = kept.withLock { $0 }
        XCTAssertEqual(keptNow.count, 300)
        XCTAssertEqual(Set(keptNow), Set(sent.filter { $0[0] % 2 == 0 }), "every kept payload still holds the bytes it arrived with")
    }

    func testTimeoutWithCloseOnErrorFalseThenTrue() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let (_, serverEndpoint, client) = try await asyncPair(harness.loop, serverHandler: { request, _ in
            if request.payload == [0] { try await Task.sleep(for: .seconds(30)) }
            return request.payload
        })
        do {
            _ = try await client.send([0], timeout: .milliseconds(200), closeOnError: false)
            XCTFail("expected a timeout")
        } catch let error as RPCError {
            guard case .timedOut(_, _, .milliseconds(200)) = error.reason else { return XCTFail("\(error)") }
            XCTAssertEqual(error.code, .deadlineExceeded)
            XCTAssertTrue(error.requestWasSent)
            XCTAssertFalse(error.isRetryable, "a call that was sent is never called retryable")
        }
        let echoed = try await client.send([5])
        XCTAssertEqual(echoed, [5], "closeOnError false kept the endpoint up")
        do {
            _ = try await client.send([0], timeout: .milliseconds(200))
            XCTFail("expected a timeout")
        } catch let error as RPCError where error.code == .deadlineExceeded {
        }
        let reason = try await withTimeout("client close") { try await client.closed() }
        guard case .callFailed(let failed) = reason.kind, failed.code == .deadlineExceeded else { return XCTFail("\(reason)") }
        let serverReason = try await withTimeout("server close") { try await serverEndpoint.closed() }
        XCTAssertEqual(serverReason, .peerClosed)
    }

    func testKeepaliveFailureClosesTheEndpoint() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        var silent = testConfiguration()
        silent.sendsKeepalives = false
        let watchful = testConfiguration(keepaliveInterval: .milliseconds(100), keepaliveTimeout: .milliseconds(400))
        let (_, serverEndpoint, client) = try await asyncPair(harness.loop, server: watchful, client: silent)
        let reason = try await withTimeout("keepalive timeout", seconds: 10) { try await serverEndpoint.closed() }
        XCTAssertEqual(reason, .keepaliveTimeout(.milliseconds(400)))
        let clientReason = try await withTimeout("client sees it") { try await client.closed() }
        XCTAssertEqual(clientReason, .peerClosed)
    }

    func testCancellingAThousandSendsFreesTheirIdsAndKeepsTheEndpointOpen() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        // A callback server that holds "hold" messages unanswered and echoes the rest.
        let held = LoopBoundBox.sendingValue([RPCRequest](), loop: loop)
        let allHeld = Promise<Void>()
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: loop, handler: .callback { _ in }).start()
        let client = try await RPCClient.connect(to: server.address, on: loop, configuration: testConfiguration())
        var iterator = server.endpoints.makeAsyncIterator()
        let serverEndpoint = await iterator.next()!
        try await serverEndpoint.withEndpoint { serverEndpoint in
            serverEndpoint.onMessage = { request in
                let payload = request.payload
                if payload.first == 0 {
                    held.value.append(request)
                    if held.value.count == 1000 { allHeld.fulfill(()) }
                } else {
                    try request.respond(Array(payload))
                }
            }
        }
        let tasks = (0..<1000).map { _ in Task { try await client.send([0]) } }
        _ = try allHeld.wait("1000 calls in flight")
        XCTAssertEqual(try harness.sync { client.endpoint.inFlightCount }, 1000)
        for task in tasks { task.cancel() }
        var cancelled = 0
        for task in tasks {
            do { _ = try await task.value } catch is CancellationError { cancelled += 1 }
        }
        XCTAssertEqual(cancelled, 1000)
        XCTAssertEqual(try harness.sync { client.endpoint.inFlightCount }, 0, "no leaked ids")
        XCTAssertFalse(try harness.sync { client.endpoint.isClosing }, "cancelling does not close the endpoint")
        // The server heard every cancel (extension `cancel`): the kept requests
        // say so, and answering one is refused (the client reserved each id
        // until the server's acknowledgement, so nothing late can reach a new call).
        try waitUntil("the server saw the cancels") { (try? harness.sync { held.value.allSatisfy(\.isCancelled) }) ?? false }
        try harness.sync {
            for request in held.value {
                XCTAssertThrowsError(try request.respond([0])) { error in
                    guard let error = error as? RPCResponseError, case .cancelled = error.kind else { return XCTFail("\(error)") }
                }
            }
        }
        // ...and 1000 more calls succeed.
        let ok = try await withTimeout("1000 more calls") {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<1000 {
                    group.addTask { try await client.send([1, UInt8(i & 0xff)]) == [1, UInt8(i & 0xff)] }
                }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
        }
        XCTAssertEqual(ok, 1000)
        XCTAssertEqual(try harness.sync { client.endpoint.inFlightCount }, 0)
    }

    func testTenThousandConcurrentAwaitingSends() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let (_, _, client) = try await asyncPair(harness.loop)
        let correct = try await withTimeout("10k sends", seconds: 120) {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<10_000 {
                    group.addTask {
                        let payload = [UInt8(i >> 8), UInt8(i & 0xff), 7]
                        return try await client.send(payload) == payload.reversed()
                    }
                }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
        }
        XCTAssertEqual(correct, 10_000)
        XCTAssertEqual(try harness.sync { client.endpoint.inFlightCount }, 0)
    }

    func testWaitsForAnEndAreCancellable() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let (server, _, client) = try await asyncPair(harness.loop)
        let waiting = Task { try await client.closed() }
        waiting.cancel()
        do {
            _ = try await withTimeout("closed() to end after its task was cancelled") { try await waiting.value }
            XCTFail("closed() returned for an endpoint that is still open")
        } catch is CancellationError {
        }
        let echoed = try await client.send([1, 2])
        XCTAssertEqual(echoed, [2, 1], "cancelling the wait leaves the endpoint open")
        // A loop whose shutdown is awaited by a cancelled task: the wait ends, the loop still stops.
        let other = try EventLoop(name: "other")
        other.start()
        let stopping = Task { await other.shutdown() }
        stopping.cancel()
        _ = try await withTimeout("shutdown() to return after its task was cancelled") { await stopping.value }
        let status = await other.shutdown()
        XCTAssertEqual(status, 0)
        await client.close()
        await server.stop()
    }

    func testAsyncConnectFailureIsATypedError() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let port = refusedPort()
        do {
            _ = try await RPCClient.connect(to: .ipv4(host: "127.0.0.1", port: port), on: harness.loop, timeout: .seconds(5))
            XCTFail("expected a refused connect")
        } catch {
            guard case .failed(let uvError) = error.kind else { return XCTFail("\(error)") }
            XCTAssertEqual(uvError.name, "ECONNREFUSED")
        }
    }

    func testServerEndpointsSequenceAndGracefulShutdown() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: loop, handler: .async(reversingAsync)).start()
        var clients: [RPCAsyncEndpoint] = []
        for _ in 0..<3 {
            clients.append(try await RPCClient.connect(to: server.address, on: loop, configuration: testConfiguration()))
        }
        var accepted = 0
        for await _ in server.endpoints {
            accepted += 1
            if accepted == 3 { break }
        }
        XCTAssertEqual(accepted, 3)
        for client in clients {
            let answer = try await client.send([1, 2])
            XCTAssertEqual(answer, [2, 1])
        }
        try await withTimeout("graceful shutdown and run() to return") { await server.stop() }
        XCTAssertEqual(try harness.sync { server.openEndpoints.count }, 0)
        for client in clients {
            let reason = try await withTimeout("clients see the close") { try await client.closed() }
            XCTAssertEqual(reason, .peerClosed)
        }
        // The sequence has finished.
        var rest = 0
        for await _ in server.endpoints { rest += 1 }
        XCTAssertEqual(rest, 0)
    }

    func testMessagesArrivingBeforeAHandlerIsSetWaitForIt() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: loop, handler: .callback { _ in }).start()
        let client = try await RPCClient.connect(to: server.address, on: loop, configuration: testConfiguration())
        let pending = Task { try await client.send([4, 5, 6]) }
        var iterator = server.endpoints.makeAsyncIterator()
        let serverEndpoint = await iterator.next()!
        // Not synchronisation: the answer must come whichever arrives first; the
        // pause only makes it likely that the message waits for the handler.
        try await Task.sleep(for: .milliseconds(50))
        serverEndpoint.onMessage(reversingAsync as @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8])
        let answer = try await withTimeout("the waiting message") { try await pending.value }
        XCTAssertEqual(answer, [6, 5, 4])
    }
}
