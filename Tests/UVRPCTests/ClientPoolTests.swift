import Dispatch
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Three servers on one loop, each answering with the payload and its own index.
private final class ThreeServers: Sendable {
    let harness: LoopHarness
    let addresses: [SocketAddress]
    private let servers: LockedValue<[RunningServer?]>
    /// Messages each server received.
    let received = LockedValue([0, 0, 0])
    /// While true, messages are held (their requests kept) until ``releaseHeld()``.
    let holding: LoopBoundBox<Bool>
    private let held: LoopBoundBox<[(RPCRequest, [UInt8])]>

    init() async throws {
        harness = try LoopHarness("servers")
        let loop = harness.loop
        (holding, held) = try harness.sync { (LoopBoundBox(false, loop: loop), LoopBoundBox([], loop: loop)) }
        servers = LockedValue([nil, nil, nil])
        var addresses: [SocketAddress] = []
        for index in 0..<3 {
            addresses.append(try await Self.start(index, on: loop, address: .ipv4(host: "127.0.0.1", port: 0),
                                                  received: received, holding: holding, held: held, into: servers))
        }
        self.addresses = addresses
    }

    private static func start(_ index: Int, on loop: EventLoop, address: SocketAddress, received: LockedValue<[Int]>,
                              holding: LoopBoundBox<Bool>, held: LoopBoundBox<[(RPCRequest, [UInt8])]>,
                              into servers: LockedValue<[RunningServer?]>) async throws -> SocketAddress {
        let server = try await RPCServer(configuration: .init(address: address, endpoint: testConfiguration()), on: loop, handler: .callback { endpoint in
            endpoint.onMessage = { request in
                let payload = request.payload
                received.withLock { $0[index] += 1 }
                let answer = Array(payload) + [UInt8(index)]
                if holding.value { held.value.append((request, answer)) } else { try request.respond(answer) }
            }
        }).start()
        servers.withLock { $0[index] = server }
        return server.address
    }

    /// Answers every held message (on the servers' loop).
    func releaseHeld() throws {
        let (holding, held) = (self.holding, self.held)
        try harness.sync {
            holding.value = false
            for (request, answer) in held.value { try request.respond(answer) }
            held.value.removeAll()
        }
    }

    func stop(_ index: Int) async {
        guard let server = servers.withLock({ $0[index] }) else { return }
        await server.stop()
        servers.withLock { $0[index] = nil }
    }

    /// Starts server `index` again on its old port.
    func restart(_ index: Int) async throws {
        _ = try await Self.start(index, on: harness.loop, address: addresses[index], received: received,
                                 holding: holding, held: held, into: servers)
    }

    func stopAll() async {
        for index in 0..<3 { await stop(index) }
    }
}

final class ClientPoolTests: XCTestCase {
    private func poolConfiguration() -> RPCClientPool.Configuration {
        var configuration = RPCClientPool.Configuration(endpoint: testConfiguration())
        configuration.connectionsPerAddress = 2
        configuration.reconnectDelay = .milliseconds(20)
        configuration.maximumReconnectDelay = .milliseconds(200)
        return configuration
    }

    func testCallsGoToTheConnectionWithTheFewestInFlightAcrossServersAndLoops() async throws {
        let servers = try await ThreeServers()
        let group = try EventLoopGroup(name: "pool", loopCount: 2)
        let pool = await RPCClientPool.connect(to: servers.addresses, on: group, configuration: poolConfiguration())
        let states = pool.connectionStates
        XCTAssertEqual(states.count, 6)
        XCTAssertTrue(states.allSatisfy(\.isOpen), "\(states)")
        XCTAssertEqual(states.map(\.loop), ["pool-0", "pool-1", "pool-0", "pool-1", "pool-0", "pool-1"],
                       "each address has a connection on every loop")
        try servers.harness.sync { servers.holding.value = true }
        // 60 callback sends from one loop: each picks the connection with the fewest in flight.
        let answers = LockedValue<[[UInt8]]>([])
        let allAnswered = Promise<Void>()
        group.loops[0].execute {
            for index in 0..<60 {
                pool.send([UInt8(index)], timeout: .seconds(20)) { result in
                    XCTAssertTrue(group.loops[0].inEventLoop, "the completion runs on the calling loop")
                    switch result {
                    case .success(let answer): answers.withLock { $0.append(answer) }
                    case .failure(let error): XCTFail("\(error)")
                    }
                    if answers.withLock({ $0.count }) == 60 { allAnswered.fulfill(()) }
                }
            }
        }
        try waitUntil("the 60 calls to reach the servers", seconds: 20) { servers.received.withLock { $0.reduce(0, +) } == 60 }
        XCTAssertEqual(pool.connectionStates.map(\.callsInFlight), [10, 10, 10, 10, 10, 10])
        XCTAssertEqual(servers.received.withLock { $0 }, [20, 20, 20])
        try servers.releaseHeld()
        try allAnswered.wait("the 60 answers")
        XCTAssertEqual(Set(answers.withLock { $0 }.map { $0[0] }), Set(0..<60))
        XCTAssertEqual(pool.connectionStates.map(\.callsInFlight), [0, 0, 0, 0, 0, 0])
        await pool.close()
        await servers.stopAll()
        servers.harness.shutdownCleanly()
        let status = await group.shutdown()
        XCTAssertEqual(status, 0)
    }

    /// `count` calls from `concurrency` tasks; returns how many each server answered.
    private func calls(_ count: Int, on pool: RPCClientPool, concurrency: Int = 8) async throws -> [Int] {
        try await withTimeout("\(count) pooled calls") {
            try await withThrowingTaskGroup(of: [Int].self) { group in
                for task in 0..<concurrency {
                    group.addTask {
                        var answeredBy = [0, 0, 0]
                        for call in stride(from: task, to: count, by: concurrency) {
                            let payload = [UInt8(call & 0xff), UInt8(call >> 8)]
                            let answer = try await pool.send(payload, timeout: .seconds(20))
                            XCTAssertEqual(Array(answer.prefix(2)), payload)
                            answeredBy[Int(answer[2])] += 1
                        }
                        return answeredBy
                    }
                }
                return try await group.reduce(into: [0, 0, 0]) { total, part in
                    for i in 0..<3 { total[i] += part[i] }
                }
            }
        }
    }

    func testThePoolServesFromTheOtherServersWhileOneIsDownAndReconnectsWhenItReturns() async throws {
        let servers = try await ThreeServers()
        let group = try EventLoopGroup(name: "pool", loopCount: 2)
        let pool = await RPCClientPool.connect(to: servers.addresses, on: group, configuration: poolConfiguration())
        let before = try await calls(300, on: pool)
        XCTAssertEqual(before.reduce(0, +), 300)
        XCTAssertTrue(before.allSatisfy { $0 > 0 }, "every server answered: \(before)")

        await servers.stop(1)
        try waitUntil("the pool to see server 1 gone", seconds: 20) {
            pool.connectionStates.filter { $0.address == servers.addresses[1] }.allSatisfy { !$0.isOpen }
        }
        let whileDown = try await calls(300, on: pool)
        XCTAssertEqual(whileDown, [whileDown[0], 0, whileDown[2]], "no call went to the stopped server")
        XCTAssertEqual(whileDown.reduce(0, +), 300, "every call was answered by the others")

        try await servers.restart(1)
        try waitUntil("the pool to reconnect to server 1", seconds: 20) { pool.connectionStates.allSatisfy(\.isOpen) }
        let after = try await calls(300, on: pool)
        XCTAssertGreaterThan(after[1], 0, "the restarted server is used again: \(after)")

        await servers.stopAll()
        try waitUntil("every connection to close", seconds: 20) { pool.connectionStates.allSatisfy { !$0.isOpen } }
        // With nothing open a call fails at once, naming every address and the last error.
        var lastError: RPCError?
        for _ in 0..<2000 {
            do {
                _ = try await pool.send([1])
                XCTFail("a call with no server up must fail")
            } catch let error as RPCError {
                lastError = error
                guard case .noConnection(let addresses, let last) = error.reason else { return XCTFail("\(error)") }
                XCTAssertEqual(error.code, .unavailable)
                XCTAssertTrue(error.isRetryable)
                XCTAssertEqual(addresses, servers.addresses.map(\.description))
                if last?.contains("ECONNREFUSED") == true { break } // a reconnect attempt was refused
            }
            try await Task.sleep(for: .milliseconds(10)) // the next reconnect attempt has no event to await
        }
        XCTAssertTrue("\(lastError.map { "\($0)" } ?? "")".contains("ECONNREFUSED"), "\(String(describing: lastError))")
        print("pool: \(before) answered per server before, \(whileDown) with server 1 down, \(after) after its restart; "
              + "with none up: \(lastError.map { "\($0)" } ?? "-")")
        await pool.close()
        servers.harness.shutdownCleanly()
        let status = await group.shutdown()
        XCTAssertEqual(status, 0)
    }

    // MARK: Names and discovery

    /// The servers a test name resolves to, changed by the test; counts its lookups.
    private final class FakeResolver: RPCResolver {
        let answer: LockedValue<Result<[SocketAddress], ResolveError>>
        let lookups = LockedValue(0)
        init(_ addresses: [SocketAddress]) { answer = LockedValue(.success(addresses)) }
        func resolve(host: String, port: Int, on loop: EventLoop) async throws -> [SocketAddress] {
            lookups.withLock { $0 += 1 }
            return try answer.withLock { $0 }.get()
        }
    }

    private func namedPool(_ resolver: FakeResolver, _ group: EventLoopGroup) async -> RPCClientPool {
        var configuration = poolConfiguration()
        configuration.connectionsPerAddress = 1
        configuration.resolver = resolver
        configuration.resolveInterval = .seconds(3600) // only the test's updates and losses re-resolve
        return await RPCClientPool.connect(to: [.name(host: "scores.internal", port: 9000)], on: group, configuration: configuration)
    }

    func testANameIsSpreadOverEveryAddressItResolvesTo() async throws {
        let servers = try await ThreeServers()
        let group = try EventLoopGroup(name: "pool", loopCount: 2)
        let resolver = FakeResolver(servers.addresses)
        let pool = await namedPool(resolver, group)
        XCTAssertEqual(pool.addresses, [.name(host: "scores.internal", port: 9000)])
        XCTAssertEqual(pool.connectionStates.map(\.address), servers.addresses)
        XCTAssertTrue(pool.connectionStates.allSatisfy(\.isOpen))
        let answered = try await calls(90, on: pool)
        XCTAssertTrue(answered.allSatisfy { $0 > 0 }, "every address answered: \(answered)")
        await pool.close()
        await servers.stopAll()
        servers.harness.shutdownCleanly()
        _ = await group.shutdown()
    }

    func testAddressesThatComeAndGoAreFollowedWithoutFailingCallsInFlight() async throws {
        let servers = try await ThreeServers()
        let group = try EventLoopGroup(name: "pool", loopCount: 2)
        let (a, b, c) = (servers.addresses[0], servers.addresses[1], servers.addresses[2])
        let resolver = FakeResolver([a, b])
        let pool = await namedPool(resolver, group)
        XCTAssertEqual(pool.connectionStates.map(\.address), [a, b])
        // Two calls held by the servers, one on each connection (the fewest in flight).
        try servers.harness.sync { servers.holding.value = true }
        let held = Task { try await withThrowingTaskGroup(of: [UInt8].self) { group in
            for call in 0..<2 { group.addTask { try await pool.send([UInt8(call)], timeout: .seconds(20)) } }
            return try await group.reduce(into: []) { $0.append($1) }
        } }
        try waitUntil("both calls to reach the servers") { servers.received.withLock { $0 } == [1, 1, 0] }
        // b goes away and c comes: the connection to b drains, one to c is made.
        resolver.answer.withLock { $0 = .success([a, c]) }
        await pool.update(addresses: [.name(host: "scores.internal", port: 9000)])
        XCTAssertEqual(pool.connectionStates.map(\.address), [a, c])
        try servers.releaseHeld()
        let answers = try await held.value
        XCTAssertEqual(Set(answers.map { $0.last! }), [0, 1], "the call on b's draining connection was answered too")
        let after = try await calls(60, on: pool)
        XCTAssertEqual(after[1], 0, "nothing new went to b: \(after)")
        XCTAssertGreaterThan(after[2], 0, "c is used: \(after)")
        // A name that stops resolving keeps its last answer.
        resolver.answer.withLock { $0 = .failure(ResolveError(host: "scores.internal", reason: "the DNS server is gone", code: -3001)) }
        await pool.update(addresses: [.name(host: "scores.internal", port: 9000)])
        XCTAssertEqual(pool.connectionStates.map(\.address), [a, c])
        XCTAssertEqual(pool.lastConnectError, "cannot resolve host \"scores.internal\": the DNS server is gone")
        // Numeric addresses replace the name.
        await pool.update(addresses: [b])
        XCTAssertEqual(pool.addresses, [b])
        XCTAssertEqual(pool.connectionStates.map(\.address), [b])
        let onlyB = try await calls(30, on: pool)
        XCTAssertEqual(onlyB, [0, 30, 0])
        await pool.close()
        await servers.stopAll()
        servers.harness.shutdownCleanly()
        _ = await group.shutdown()
    }

    func testALostConnectionMakesThePoolResolveAgain() async throws {
        let servers = try await ThreeServers()
        let group = try EventLoopGroup(name: "pool", loopCount: 2)
        let (a, b) = (servers.addresses[0], servers.addresses[1])
        let resolver = FakeResolver([a, b])
        let pool = await namedPool(resolver, group)
        let lookupsBefore = resolver.lookups.withLock { $0 }
        // b is gone from the name and its server stops: the loss makes the pool look the name up again.
        resolver.answer.withLock { $0 = .success([a]) }
        await servers.stop(1)
        try waitUntil("the pool to drop b", seconds: 20) { pool.connectionStates.map(\.address) == [a] }
        XCTAssertGreaterThan(resolver.lookups.withLock { $0 }, lookupsBefore)
        let answered = try await calls(30, on: pool)
        XCTAssertEqual(answered, [30, 0, 0])
        await pool.close()
        await servers.stopAll()
        servers.harness.shutdownCleanly()
        _ = await group.shutdown()
    }

    // MARK: Riding out a restart

    private func singlePool(_ servers: ThreeServers, _ group: EventLoopGroup, reconnectDelay: Duration,
                            maximumReconnectDelay: Duration) async -> RPCClientPool {
        var configuration = poolConfiguration()
        configuration.connectionsPerAddress = 1
        configuration.reconnectDelay = reconnectDelay
        configuration.maximumReconnectDelay = maximumReconnectDelay
        return await RPCClientPool.connect(to: [servers.addresses[0]], on: group, configuration: configuration)
    }

    func testTheFirstCallAfterARestartConnectsAtOnceInsteadOfWaitingOutTheBackoff() async throws {
        let servers = try await ThreeServers()
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        // A backoff of an hour: only a connect made on demand can serve the call below.
        let pool = await singlePool(servers, group, reconnectDelay: .seconds(3600), maximumReconnectDelay: .seconds(3600))
        let first = try await pool.send([1], timeout: .seconds(20))
        XCTAssertEqual(first, [1, 0])
        await servers.stop(0)
        try waitUntil("the pool to see the server gone", seconds: 20) { !pool.connectionStates[0].isOpen }
        try await servers.restart(0)
        // Fail fast, yet it waits for the one connect it starts (gRPC's CONNECTING), and succeeds.
        let afterRestart = try await pool.send([2], timeout: .seconds(20))
        XCTAssertEqual(afterRestart, [2, 0])
        XCTAssertTrue(pool.connectionStates[0].isOpen)
        await pool.close()
        await servers.stopAll()
        servers.harness.shutdownCleanly()
        _ = await group.shutdown()
    }

    func testDuringAnOutageFailFastCallsFailAndWaitForReadyCallsSucceedOnceItIsBack() async throws {
        let servers = try await ThreeServers()
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        let pool = await singlePool(servers, group, reconnectDelay: .milliseconds(20), maximumReconnectDelay: .milliseconds(200))
        await servers.stop(0)
        try waitUntil("the pool to see the server gone", seconds: 20) { !pool.connectionStates[0].isOpen }
        // Fail fast: the connect it asks for is refused, and it fails, not sent.
        do {
            _ = try await pool.send([1], timeout: .seconds(20))
            XCTFail("a call with the server down was answered")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .unavailable, "\(error)")
            XCTAssertFalse(error.requestWasSent)
        }
        // Wait for ready: it waits through the outage and is answered once the server is back.
        let waiting = Task { try await pool.send([3], timeout: .seconds(30), waitForReady: true) }
        try waitUntil("the call to wait for a connection", seconds: 20) { pool.callsWaitingForConnection == 1 }
        try await servers.restart(0)
        let answer = try await waiting.value
        XCTAssertEqual(answer, [3, 0])
        // A wait for ready that runs out of time says so, not sent.
        await servers.stop(0)
        try waitUntil("the pool to see the server gone again", seconds: 20) { !pool.connectionStates[0].isOpen }
        do {
            _ = try await pool.send([4], timeout: .milliseconds(100), waitForReady: true)
            XCTFail("answered with the server down")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .deadlineExceeded, "\(error)")
            XCTAssertFalse(error.requestWasSent)
            XCTAssertTrue(error.message.contains("opened within the call's 0.1 seconds"), error.message)
        }
        await pool.close()
        await servers.stopAll()
        servers.harness.shutdownCleanly()
        _ = await group.shutdown()
    }

    /// An echo server on `harness` that drops each new connection before its handshake while `drops()` says so.
    private func droppingServer(_ harness: LoopHarness, drops: @escaping @Sendable () -> Bool) async throws -> RunningServer {
        try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                            on: harness.loop, admit: { _ in drops() ? .refuse : .accept() },
                            handler: .async { request, _ in request.payload }).start()
    }

    /// A pool over `server` whose calls wait for ready, with `change` made to its configuration.
    private func waitingPool(_ server: RunningServer, _ group: EventLoopGroup,
                             _ change: (inout RPCClientPool.Configuration) -> Void) async -> RPCClientPool {
        var configuration = RPCClientPool.Configuration(endpoint: testConfiguration())
        configuration.waitsForReady = true
        change(&configuration)
        return await RPCClientPool.connect(to: [server.address], on: group, configuration: configuration)
    }

    /// A server that drops its first connections as they open (after the
    /// pool counted them open, before its handshake): calls that wait for
    /// ready lose their connection unwritten again and again, and each
    /// waits for the next one instead of failing after one retry (64 calls
    /// at once; before, dozens failed with "the endpoint is closed").
    func testWaitForReadyCallsRideOutAServerThatDropsItsFirstConnections() async throws {
        let harness = try LoopHarness("server")
        defer { harness.shutdownCleanly() }
        let dropped = LockedValue(0)
        let server = try await droppingServer(harness) { dropped.withLock { count in count += 1; return count <= 6 } }
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        let pool = await waitingPool(server, group) {
            $0.reconnectDelay = .milliseconds(5)
            $0.maximumReconnectDelay = .milliseconds(20)
        }
        let failures = await withTaskGroup(of: String?.self) { tasks in
            for index in 0..<64 {
                tasks.addTask {
                    do {
                        let answer = try await pool.send([UInt8(index)], timeout: .seconds(30))
                        return answer == [UInt8(index)] ? nil : "call \(index): answered \(answer)"
                    } catch {
                        return "call \(index): \(error)"
                    }
                }
            }
            return await tasks.reduce(into: [String]()) { if let failure = $1 { $0.append(failure) } }
        }
        XCTAssertEqual(failures, [], "every call waits for a connection that stays")
        XCTAssertGreaterThan(dropped.withLock { $0 }, 6, "the server dropped its first six connections")
        await pool.close()
        await server.stop()
        _ = await group.shutdown()
    }

    /// A server that drops every connection as it opens, before its
    /// handshake: each drop counts as a failed connect, so the backoff grows
    /// and a waiting call cannot ask for a connect again at once (a call
    /// waiting for ready made about 200 connections a second before).
    func testConnectionsDroppedBeforeTheirHandshakeBackOff() async throws {
        let harness = try LoopHarness("server")
        defer { harness.shutdownCleanly() }
        let accepted = LockedValue(0)
        let server = try await droppingServer(harness) { accepted.withLock { $0 += 1 }; return true }
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        let pool = await waitingPool(server, group) { _ in } // reconnect delay 100 ms, growing
        do {
            _ = try await pool.send([1], timeout: .seconds(1))
            XCTFail("answered by a server that drops every connection")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .deadlineExceeded, "\(error)")
        }
        // Within the 1 s: the first connect, then after 0.1, 0.2 and 0.4 s; at most 30 whatever the timing.
        XCTAssertLessThanOrEqual(accepted.withLock { $0 }, 30, "connections made during the call's 1 s")
        await pool.close()
        await server.stop()
        _ = await group.shutdown()
    }

    // MARK: Retries

    func testRetriesOfIdempotentCallsStopAtTheBudget() async throws {
        let servers = try await ThreeServers()
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        var configuration = poolConfiguration()
        configuration.connectionsPerAddress = 1
        configuration.retryPolicy.initialBackoff = .milliseconds(1)
        let pool = await RPCClientPool.connect(to: servers.addresses, on: group, configuration: configuration)
        await servers.stopAll()
        try waitUntil("every connection to close", seconds: 20) { pool.connectionStates.allSatisfy { !$0.isOpen } }
        var failures = 0
        for call in 0..<50 {
            do {
                _ = try await pool.send([UInt8(call)], timeout: .seconds(20), idempotent: true)
            } catch let error as RPCError {
                XCTAssertEqual(error.code, .unavailable, "\(error)")
                failures += 1
            }
        }
        XCTAssertEqual(failures, 50)
        // 10 tokens, one per failure, retries only above 5: the first call is retried twice
        // (10 -> 9 -> 8 -> 7), the second once (7 -> 6 -> 5), then none.
        XCTAssertEqual(pool.retriesMade, 3)
        await pool.close()
        servers.harness.shutdownCleanly()
        _ = await group.shutdown()
    }

    func testAnIdempotentCallIsRetriedAfterItsConnectionWasLostAndOthersAreNot() async throws {
        let harness = try LoopHarness("servers")
        defer { harness.shutdownCleanly() }
        // One server cuts every connection that sends it a message; the other answers.
        let cutter = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                         on: harness.loop, handler: .callback { endpoint in
            endpoint.onMessage = { request in request.endpoint.close() }
        }).start()
        let echo = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                       on: harness.loop, handler: .async { request, _ in request.payload }).start()
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        var configuration = poolConfiguration()
        configuration.connectionsPerAddress = 1
        configuration.retryPolicy.initialBackoff = .milliseconds(1)
        configuration.reconnectDelay = .seconds(3600) // a cut connection stays down: a retry can only go to the echo
        configuration.maximumReconnectDelay = .seconds(3600)
        let pool = await RPCClientPool.connect(to: [cutter.address, echo.address], on: group, configuration: configuration)
        // Two calls at once: one on each connection (the fewest in flight); the cut one is written, then lost.
        async let first = pool.send([1], timeout: .seconds(20), idempotent: true)
        async let second = pool.send([2], timeout: .seconds(20), idempotent: true)
        let answers = try await [first, second]
        XCTAssertEqual(Set(answers), [[1], [2]], "both answered, the cut one by a retry")
        XCTAssertGreaterThanOrEqual(pool.retriesMade, 1)
        await pool.close()
        // Not idempotent: a call cut after it was written fails, marked as sent.
        let plain = await RPCClientPool.connect(to: [cutter.address, echo.address], on: group, configuration: configuration)
        async let third = Result { try await plain.send([3], timeout: .seconds(20)) }
        async let fourth = Result { try await plain.send([4], timeout: .seconds(20)) }
        let outcomes = await [third, fourth]
        let failed = outcomes.compactMap { outcome -> RPCError? in
            if case .failure(let error) = outcome { return error as? RPCError }
            return nil
        }
        XCTAssertEqual(failed.count, 1, "\(outcomes)")
        XCTAssertEqual(failed.first?.code, .unavailable)
        XCTAssertEqual(failed.first?.requestWasSent, true)
        XCTAssertEqual(plain.retriesMade, 0)
        await plain.close()
        await cutter.stop()
        await echo.stop()
        _ = await group.shutdown()
    }
}

final class PoolBalancingTests: XCTestCase {
    /// Three servers on `harness`: each answers with its index; `failing` ones answer every call with an error.
    private func servers(_ harness: LoopHarness, failing: Set<Int> = []) async throws -> [RunningServer] {
        var servers: [RunningServer] = []
        for index in 0..<3 {
            servers.append(try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                               on: harness.loop, handler: .async { _, _ in
                if failing.contains(index) { throw RPCError(code: .internalError, message: "server \(index) is broken") }
                return [UInt8(index)]
            }).start())
        }
        return servers
    }

    /// `count` calls one after another; how many each server answered, and how many failed.
    private func sequentialCalls(_ count: Int, on pool: RPCClientPool) async -> (answered: [Int], failed: Int) {
        var answered = [0, 0, 0], failed = 0
        for _ in 0..<count {
            do { answered[Int(try await pool.send([0], timeout: .seconds(20))[0])] += 1 } catch { failed += 1 }
        }
        return (answered, failed)
    }

    private func pool(_ servers: [RunningServer], _ group: EventLoopGroup,
                      _ change: (inout RPCClientPool.Configuration) -> Void) async -> RPCClientPool {
        var configuration = RPCClientPool.Configuration(endpoint: testConfiguration())
        change(&configuration)
        return await RPCClientPool.connect(to: servers.map(\.address), on: group, configuration: configuration)
    }

    func testRoundRobinSpreadsEvenlyAndPowerOfTwoChoicesReachesEveryServer() async throws {
        let harness = try LoopHarness("servers")
        defer { harness.shutdownCleanly() }
        let servers = try await servers(harness)
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        let roundRobin = await pool(servers, group) { $0.balancing = .roundRobin }
        let even = await sequentialCalls(30, on: roundRobin)
        XCTAssertEqual(even.answered, [10, 10, 10])
        await roundRobin.close()
        let twoChoices = await pool(servers, group) { $0.balancing = .powerOfTwoChoices }
        let random = await sequentialCalls(300, on: twoChoices)
        XCTAssertEqual(random.failed, 0)
        XCTAssertTrue(random.answered.allSatisfy { $0 > 0 }, "\(random.answered)")
        await twoChoices.close()
        for server in servers { await server.stop() }
        _ = await group.shutdown()
    }

    func testAServerWhoseCallsKeepFailingIsEjected() async throws {
        let harness = try LoopHarness("servers")
        defer { harness.shutdownCleanly() }
        let servers = try await servers(harness, failing: [1])
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        let pool = await pool(servers, group) {
            $0.balancing = .roundRobin // every third call to the broken server, until it is ejected
            var ejection = RPCClientPool.OutlierEjection()
            ejection.consecutiveFailures = 3
            ejection.ejectionTime = .seconds(3600)
            $0.outlierEjection = ejection
        }
        let calls = await sequentialCalls(60, on: pool)
        XCTAssertEqual(calls.failed, 3, "the broken server failed three calls, then got none: \(calls)")
        XCTAssertEqual(calls.answered[1], 0)
        XCTAssertEqual(calls.answered[0] + calls.answered[2], 57)
        await pool.close()
        for server in servers { await server.stop() }
        _ = await group.shutdown()
    }

    func testWhenEveryServerIsEjectedTheyAreUsedAnyway() async throws {
        let harness = try LoopHarness("servers")
        defer { harness.shutdownCleanly() }
        let servers = try await servers(harness, failing: [0, 1, 2])
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        let pool = await pool(servers, group) {
            var ejection = RPCClientPool.OutlierEjection()
            ejection.consecutiveFailures = 1
            ejection.ejectionTime = .seconds(3600)
            $0.outlierEjection = ejection
        }
        let calls = await sequentialCalls(9, on: pool)
        XCTAssertEqual(calls.failed, 9, "every call still reached a server (and failed there), none failed for want of one")
        await pool.close()
        for server in servers { await server.stop() }
        _ = await group.shutdown()
    }
}

extension Result where Failure == any Error {
    /// The outcome of an async throwing body.
    init(_ body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
