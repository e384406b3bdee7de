import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Graceful shutdown: calls received before it are answered, new connections
/// are refused, and a drain that runs out of time closes the rest with the
/// drain's reason.
final class DrainTests: XCTestCase {
    /// A server whose handler keeps every request (answered by the test), and
    /// the server endpoint's close reason.
    private struct HoldingServer {
        let server: RunningServer
        let kept: LoopBoundBox<[RPCRequest]>
        let closeReason: Promise<RPCCloseReason>
    }

    private func holdingServer(on loop: EventLoop) async throws -> HoldingServer {
        let kept = LoopBoundBox.sendingValue([RPCRequest](), loop: loop)
        let closeReason = Promise<RPCCloseReason>()
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: loop, handler: .callback { endpoint in
            endpoint.onMessage = { kept.value.append($0) }
            endpoint.onClose = { closeReason.fulfill($0) }
        }).start()
        return HoldingServer(server: server, kept: kept, closeReason: closeReason)
    }

    /// Sends `count` calls (never closing on error) and returns their outcomes' promises.
    private func sendCalls(_ count: Int, on client: RPCAsyncEndpoint, harness: LoopHarness)
        throws -> [Promise<Result<[UInt8], RPCError>>] {
        let outcomes = (0..<count).map { _ in Promise<Result<[UInt8], RPCError>>() }
        try harness.sync {
            for (i, outcome) in outcomes.enumerated() {
                client.endpoint.send([UInt8(i)], timeout: .seconds(60), closeOnError: false) { outcome.fulfill($0) }
            }
        }
        return outcomes
    }

    func testAGracefulShutdownAnswersEveryCallReceivedAndRefusesNewConnections() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let held = try await holdingServer(on: harness.loop)
        let address = held.server.address
        let client = try await RPCClient.connect(to: address, on: harness.loop, configuration: testConfiguration())
        let outcomes = try sendCalls(3, on: client, harness: harness)
        try waitUntil("the server holds the 3 calls") { (try? harness.sync { held.kept.value.count }) == 3 }

        let shutdown = Task { await held.server.stop(gracePeriod: .seconds(60)) }
        // The listener closes at once: the endpoints stream ends, and a new connection is refused.
        try await withTimeout("the listener to close") { for await _ in held.server.endpoints {} }
        do {
            let late = try await RPCClient.connect(to: address, on: harness.loop, timeout: .seconds(10))
            XCTFail("a connection after the shutdown began was accepted: \(late.label)")
        } catch {
            XCTAssertFalse("\(error)".contains("timed out"), "refused, not left hanging: \(error)")
        }
        XCTAssertFalse(outcomes.contains { $0.isFulfilled }, "nothing is failed while the drain waits")

        // The calls received before the shutdown are answered, then the endpoint closes.
        try harness.sync { for request in held.kept.value { try request.respond(Array(request.payload) + [9]) } }
        for (i, outcome) in outcomes.enumerated() {
            XCTAssertEqual(try outcome.wait("call \(i)").get(), [UInt8(i), 9])
        }
        XCTAssertEqual(try held.closeReason.wait("the server endpoint's close"), .drained)
        try await withTimeout("the shutdown to return") { await shutdown.value }
        let clientReason = try await client.closed()
        XCTAssertEqual(clientReason, .peerClosed)
    }

    func testADrainThatRunsOutOfTimeClosesTheRestWithTheDrainReason() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let held = try await holdingServer(on: harness.loop)
        let client = try await RPCClient.connect(to: held.server.address, on: harness.loop,
                                                 configuration: testConfiguration())
        // A client without extensions, as an efro.rpc peer: it can only see the connection close.
        let plain = try await RPCClient.connect(to: held.server.address, on: harness.loop,
                                                configuration: testConfiguration { $0.extensions = [] })
        let outcomes = try sendCalls(2, on: client, harness: harness)
        let plainOutcome = try sendCalls(1, on: plain, harness: harness)[0]
        try waitUntil("the server holds the 3 calls") { (try? harness.sync { held.kept.value.count }) == 3 }

        // Never answered: the grace period ends the drain.
        try await withTimeout("the shutdown to return") { await held.server.stop(gracePeriod: .milliseconds(100)) }
        XCTAssertEqual(try held.closeReason.wait("the server endpoint's close"), .drainTimedOut(.milliseconds(100)))
        for outcome in outcomes {
            guard case .failure(let error) = try outcome.wait("a call") else { return XCTFail("a held call was answered") }
            XCTAssertEqual(error.code, .unavailable, "a UVRPC caller learns that the server stopped: \(error)")
            XCTAssertTrue(error.message.contains("the server stopped after draining for 0.1 seconds"), error.message)
            XCTAssertTrue(error.requestWasSent)
        }
        guard case .failure(let error) = try plainOutcome.wait("the plain call"), error.closeReason == .peerClosed else {
            return XCTFail("a call from a peer without error answers fails with the peer's close")
        }
        let late = try harness.sync { () -> String in
            do { try held.kept.value[0].respond([1]); return "answered" } catch { return "\(error)" }
        }
        XCTAssertTrue(late.contains("closed"), late)
    }

    func testAnIdleEndpointDrainsAtOnceAndOutgoingCallsFinishFirst() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: harness.loop, handler: .callback { endpoint in
            endpoint.onMessage = reversing
        }).start()
        let kept = LoopBoundBox.sendingValue([RPCRequest](), loop: harness.loop)
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        // The client drains while its own call waits for the answer: the call
        // completes, then the client closes with .drained.
        try harness.sync { client.endpoint.onMessage = { kept.value.append($0) } }
        let outcome = try sendCalls(1, on: client, harness: harness)[0]
        let reason = await client.close(gracePeriod: .seconds(60))
        XCTAssertEqual(try outcome.wait("the call").get(), [0])
        XCTAssertEqual(reason, .drained)
        await server.stop(gracePeriod: .seconds(60))
    }
}
