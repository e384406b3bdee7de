import Dispatch
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Servers and clients spread over an EventLoopGroup.
final class MultiLoopServerTests: XCTestCase {
    /// Connects `count` clients (async API, spread over `group`) and checks one call on each.
    private func connectAndCall(_ count: Int, to address: SocketAddress, on group: EventLoopGroup) async throws -> [RPCAsyncEndpoint] {
        var clients: [RPCAsyncEndpoint] = []
        for index in 0..<count {
            let client = try await RPCClient.connect(to: address, on: group, configuration: testConfiguration())
            let payload = pseudoRandomBytes(count: 100 + index, seed: UInt64(index + 1))
            let answer = try await withTimeout("call \(index)") { try await client.send(payload) }
            XCTAssertEqual(answer, Array(payload.reversed()))
            clients.append(client)
        }
        return clients
    }

    private func checkEndpointsLandOnEveryLoopAndEndTogether(spread: ConnectionSpread) async throws {
        let serverGroup = try EventLoopGroup(name: "srv", loopCount: 2)
        let clientGroup = try EventLoopGroup(name: "cli", loopCount: 2)
        let landed = LockedValue<[String: Int]>([:])
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), spread: spread, endpoint: testConfiguration()), on: serverGroup, handler: .callback { endpoint in
            // Runs on the endpoint's own loop, before any byte is read.
            XCTAssertTrue(EventLoop.current === endpoint.loop)
            landed.withLock { $0[endpoint.loop.name, default: 0] += 1 }
            endpoint.onMessage = { request in
                XCTAssertTrue(endpoint.loop.inEventLoop, "handlers run on the endpoint's loop")
                try reversing(request)
            }
        }).start()
        XCTAssertEqual(server.server.configuration.spread, spread)
        XCTAssertEqual(server.server.loops.count, 2)
        let clients = try await connectAndCall(32, to: server.address, on: clientGroup)
        let perLoop = landed.withLock { $0 }
        XCTAssertEqual(perLoop.values.reduce(0, +), 32)
        XCTAssertEqual(Set(perLoop.keys), ["srv-0", "srv-1"], "endpoints on every loop: \(perLoop)")
        if spread == .roundRobin { XCTAssertEqual(perLoop, ["srv-0": 16, "srv-1": 16]) }
        // openEndpoints lists every loop's endpoints, from this (no loop's) thread.
        XCTAssertEqual(server.openEndpoints.count, 32)
        XCTAssertEqual(Set(server.openEndpoints.map(\.loop.name)), ["srv-0", "srv-1"])
        // The endpoints stream yields them all too.
        var streamed = 0
        for await _ in server.endpoints {
            streamed += 1
            if streamed == 32 { break }
        }
        XCTAssertEqual(streamed, 32)
        try await withTimeout("the server's shutdown") { await server.stop() }
        XCTAssertEqual(server.openEndpoints.count, 0)
        for client in clients {
            let reason = try await client.closed()
            XCTAssertEqual(reason, .peerClosed, "the server closed every endpoint, on both loops")
        }
        let clientStatus = await clientGroup.shutdown()
        let serverStatus = await serverGroup.shutdown()
        XCTAssertEqual(clientStatus, 0)
        XCTAssertEqual(serverStatus, 0)
    }

    func testRoundRobinEndpointsLandOnEveryLoopEvenlyAndShutDownTogether() async throws {
        try await checkEndpointsLandOnEveryLoopAndEndTogether(spread: .roundRobin)
    }

    func testReusePortEndpointsLandOnEveryLoopAndShutDownTogether() async throws {
        try await checkEndpointsLandOnEveryLoopAndEndTogether(spread: .reusePort)
    }

    func testAsyncHandlersOfAGroupServerRunOnTheirEndpointsLoop() async throws {
        let group = try EventLoopGroup(name: "async", loopCount: 2)
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: group, handler: .async { request, _ in
            // The loop the task runs on, appended to the request.
            request.payload + Array((EventLoop.current?.name ?? "none").utf8)
        }).start()
        var loopsSeen: Set<String> = []
        for index in 0..<4 {
            let client = try await RPCClient.connect(to: server.address, on: group, configuration: testConfiguration())
            let answer = try await withTimeout("call \(index)") { try await client.send([UInt8(index)]) }
            XCTAssertEqual(answer.first, UInt8(index))
            loopsSeen.insert(String(decoding: answer.dropFirst(), as: UTF8.self))
            await client.close()
        }
        XCTAssertEqual(loopsSeen, ["async-0", "async-1"], "each endpoint's handler ran on its own loop")
        await server.stop()
        let status = await group.shutdown()
        XCTAssertEqual(status, 0)
    }

    func testAHandlerBlockingOneLoopDelaysNoCallOnAnotherLoop() async throws {
        let serverGroup = try EventLoopGroup(name: "block", loopCount: 2)
        let clientLoop = try LoopHarness("block-client")
        let blocking = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), spread: .roundRobin, endpoint: testConfiguration()), on: serverGroup, handler: .callback { endpoint in
            endpoint.onMessage = { request in
                let payload = request.payload
                if payload.first == 0xB1 {
                    // Holds this loop's thread until the test lets go (20 s at most).
                    blocking.signal()
                    _ = release.wait(timeout: .now() + 20)
                }
                try request.respond(payload)
            }
        }).start()
        // Round robin: the first connection lands on block-0, the second on block-1.
        let first = try await RPCClient.connect(to: server.address, on: clientLoop.loop, configuration: testConfiguration())
        _ = try await first.send([1])
        let second = try await RPCClient.connect(to: server.address, on: clientLoop.loop, configuration: testConfiguration())
        _ = try await second.send([2])
        XCTAssertEqual(Set(server.openEndpoints.map(\.loop.name)), ["block-0", "block-1"])
        let blocked = Task { try await first.send([0xB1]) }
        XCTAssertEqual(blocking.wait(timeout: .now() + 20), .success, "block-0 is held by its handler")
        // While block-0 is held, block-1 answers every call.
        for index in 0..<100 {
            let answer = try await withTimeout("call \(index) on the other loop", seconds: 10) { try await second.send([3, UInt8(index)]) }
            XCTAssertEqual(answer, [3, UInt8(index)])
        }
        release.signal()
        let late = try await withTimeout("the held call") { try await blocked.value }
        XCTAssertEqual(late, [0xB1])
        await server.stop()
        clientLoop.shutdownCleanly()
        let status = await serverGroup.shutdown()
        XCTAssertEqual(status, 0)
    }

    func testShuttingAGroupDownFailsTheCallsInFlightOnEveryLoopClearly() async throws {
        let serverGroup = try EventLoopGroup(name: "held", loopCount: 2)
        let clientGroup = try EventLoopGroup(name: "busy", loopCount: 2)
        let received = LockedValue(0)
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: serverGroup, handler: .callback { endpoint in
            endpoint.onMessage = { _ in
                // Never answered (the request is dropped): every call stays in flight.
                received.withLock { $0 += 1 }
            }
        }).start()
        let calls = 4 * 8
        var clients: [RPCAsyncEndpoint] = []
        for _ in 0..<4 { clients.append(try await RPCClient.connect(to: server.address, on: clientGroup, configuration: testConfiguration())) }
        XCTAssertEqual(Set(clients.map(\.loop.name)), ["busy-0", "busy-1"])
        let outcomes = Task {
            try await withThrowingTaskGroup(of: String.self) { group in
                for (index, client) in clients.enumerated() {
                    for call in 0..<8 {
                        group.addTask {
                            do {
                                _ = try await client.send([UInt8(index), UInt8(call)])
                                return "answered"
                            } catch let error as RPCError {
                                return "\(error)"
                            }
                        }
                    }
                }
                return try await group.reduce(into: [String]()) { $0.append($1) }
            }
        }
        try waitUntil("every call to reach the server", seconds: 20) { received.withLock { $0 } == calls }
        let status = await clientGroup.shutdown()
        XCTAssertEqual(status, 0, "every client loop closed with 0")
        let failures = try await withTimeout("the calls' outcomes") { try await outcomes.value }
        XCTAssertEqual(failures.count, calls)
        for failure in failures {
            XCTAssertTrue(failure.contains("failed: the endpoint is closed (closed locally)"), failure)
        }
        await server.stop()
        let serverStatus = await serverGroup.shutdown()
        XCTAssertEqual(serverStatus, 0)
    }
}
