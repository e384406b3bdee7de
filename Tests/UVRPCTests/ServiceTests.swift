import Foundation
import Logging
import ServiceLifecycle
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// RPCServer and RPCClientPool as services under a ServiceGroup, and the
/// server's lifecycle: it listens only inside run(), which a cancelled task
/// or a graceful shutdown ends.
final class ServiceTests: XCTestCase {
    func testAGracefulShutdownOfTheGroupDrainsTheServerAndPoolThenRunReturns() async throws {
        let loop = try EventLoop(name: "service")
        loop.start()
        let received = Promise<Void>()
        var configuration = RPCServer.Configuration(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration())
        configuration.shutdownGracePeriod = .seconds(30)
        let server = RPCServer(configuration: configuration, on: loop, handler: .async { request, _ in
            received.fulfill(())
            try await Task.sleep(for: .milliseconds(100)) // still running when the shutdown starts
            return request.payload
        })
        let serverGroup = ServiceGroup(configuration: .init(services: [server], gracefulShutdownSignals: [],
                                                            logger: Logger(label: "test")))
        let serving = Task { try await serverGroup.run() }
        let listening = await server.listeningAddress
        let address = try XCTUnwrap(listening)
        let clientLoops = try EventLoopGroup(name: "service-client", loopCount: 1)
        var poolConfiguration = RPCClientPool.Configuration(endpoint: testConfiguration())
        poolConfiguration.shutdownGracePeriod = configuration.shutdownGracePeriod
        let pool = await RPCClientPool.connect(to: [address], on: clientLoops, configuration: poolConfiguration)
        let clientGroup = ServiceGroup(configuration: .init(services: [pool], gracefulShutdownSignals: [],
                                                            logger: Logger(label: "test")))
        let calling = Task { try await clientGroup.run() }
        let call = Task { try await pool.send([1, 2, 3], timeout: .seconds(30)) }
        try await withTimeout("the handler to receive the call") {
            try await Task.detached { try received.wait("the handler") }.value
        }
        await serverGroup.triggerGracefulShutdown()
        await clientGroup.triggerGracefulShutdown()
        let answer = try await withTimeout("the call in flight") { try await call.value }
        XCTAssertEqual(answer, [1, 2, 3], "a call received before the shutdown is answered")
        try await withTimeout("the server's group to return") { try await serving.value }
        try await withTimeout("the pool's group to return") { try await calling.value }
        XCTAssertTrue(server.openEndpoints.isEmpty)
        await clientLoops.shutdown()
        let status = await loop.shutdown()
        XCTAssertEqual(status, 0)
    }

    func testACancelledRunReturnsPromptlyWithItsConnectionsClosed() async throws {
        let loop = try EventLoop(name: "cancel")
        loop.start()
        let received = Promise<Void>()
        let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                               on: loop, handler: .async { request, _ in
            received.fulfill(())
            try? await Task.sleep(for: .seconds(3600)) // never answers by itself
            return request.payload
        })
        let serving = Task { try await server.run() }
        let listening = await server.listeningAddress
        let address = try XCTUnwrap(listening)
        let client = try await RPCClient.connect(to: address, on: loop, configuration: testConfiguration())
        let call = Task { try await client.send([1], timeout: .seconds(60), closeOnError: false) }
        try await withTimeout("the handler to receive the call") {
            try await Task.detached { try received.wait("the handler") }.value
        }
        let start = ContinuousClock.now
        serving.cancel()
        try await withTimeout("run() to return after cancellation", seconds: 5) { try await serving.value }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(1), "a cancelled run() returns within 1 s")
        XCTAssertTrue(server.openEndpoints.isEmpty, "every connection is closed when run() returns")
        do {
            _ = try await call.value
            XCTFail("the call cannot be answered")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .unavailable, "\(error)")
            XCTAssertTrue(error.requestWasSent)
        }
        let afterwards = await server.listeningAddress
        XCTAssertNil(afterwards, "a server that stopped has no address")
        let status = await loop.shutdown()
        XCTAssertEqual(status, 0)
    }

    func testNothingListensBeforeRunAndAServerClosedBeforeRunNeverListens() async throws {
        let loop = try EventLoop(name: "before-run")
        loop.start()
        // A free port, found by a server that ran and stopped.
        let probe = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loop,
                                        handler: .callback { _ in }).start()
        let address = probe.address
        await probe.stop()
        let server = RPCServer(configuration: .init(address: address, endpoint: testConfiguration()), on: loop,
                               handler: .async { request, _ in request.payload })
        do {
            _ = try await RPCClient.connect(to: address, on: loop, timeout: .seconds(5))
            XCTFail("something listens on \(address) before run()")
        } catch {
            XCTAssertTrue("\(error)".contains("ECONNREFUSED"), "\(error)")
        }
        // A SIGTERM (a graceful shutdown) before run(): run() returns at once, never listening.
        server.close(gracePeriod: .seconds(10))
        try await withTimeout("run() of a server closed before it ran") { try await server.run() }
        let never = await server.listeningAddress
        XCTAssertNil(never)
        let status = await loop.shutdown()
        XCTAssertEqual(status, 0)
    }

    func testABindFailureIsThrownByRunAndTheAddressIsNil() async throws {
        let loop = try EventLoop(name: "bind-failure")
        loop.start()
        let first = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loop,
                                        handler: .callback { _ in }).start()
        let second = RPCServer(configuration: .init(address: first.address), on: loop, handler: .callback { _ in })
        async let address = second.listeningAddress
        do {
            try await second.run()
            XCTFail("two servers listen on \(first.address)")
        } catch let error as UVError {
            XCTAssertTrue("\(error)".contains("EADDRINUSE") && "\(error)".contains("\(first.address)"), "\(error)")
        }
        let waited = await address
        XCTAssertNil(waited, "a waiter learns that no address is coming")
        await first.stop()
        let status = await loop.shutdown()
        XCTAssertEqual(status, 0)
    }
}
