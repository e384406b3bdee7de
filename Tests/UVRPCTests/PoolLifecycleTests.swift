import Dispatch
import Foundation
@testable import UVRPC
import UVLoop
import UVTestSupport
import XCTest

/// Answers every name with a fixed list (or failure).
private final class FixedResolver: RPCResolver {
    let answer: LockedValue<[SocketAddress]>
    init(_ addresses: [SocketAddress]) { answer = LockedValue(addresses) }
    func resolve(host: String, port: Int, on loop: EventLoop) async throws -> [SocketAddress] {
        answer.withLock { $0 }
    }
}

/// The pool's names over TLS, closing with calls waiting for a connection, and its refresher (issue 25).
final class PoolLifecycleTests: XCTestCase {
    /// MANY_MACHINES: "Over TLS the name is the server name the certificate must carry."
    /// A pool over a name connects to the addresses it resolved; the name must still be
    /// the TLS server name (the certificate names `localhost` and 127.0.0.1, the server is on 127.0.0.2).
    func testAPoolOverANameChecksTheCertificateAgainstTheName() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness("servers")
        defer { harness.shutdownCleanly() }
        var serverConfiguration = testConfiguration()
        serverConfiguration.tls = try certificates.serverContext()
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.2", port: 0), endpoint: serverConfiguration),
                                         on: harness.loop, handler: .async { request, _ in request.payload }).start()
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        var configuration = RPCClientPool.Configuration(endpoint: testConfiguration())
        configuration.tls = try certificates.clientContext()
        configuration.resolver = FixedResolver([server.address])
        configuration.resolveInterval = .seconds(3600)
        configuration.reconnectDelay = .seconds(3600)
        configuration.maximumReconnectDelay = .seconds(3600)
        let pool = await RPCClientPool.connect(to: [.name(host: "localhost", port: server.address.port!)], on: group,
                                               configuration: configuration)
        XCTAssertEqual(pool.connectionStates.map(\.address), [server.address])
        let answer = try await pool.send([7], timeout: .seconds(10))
        XCTAssertEqual(answer, [7])
        await pool.close()
        await server.stop()
        _ = await group.shutdown()
    }

    /// A wait-for-ready call waiting when the pool is closed ends then (not at its timeout),
    /// and one made after close fails at once.
    func testClosingThePoolEndsTheCallsWaitingForReady() async throws {
        let harness = try LoopHarness("servers")
        defer { harness.shutdownCleanly() }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                         on: harness.loop, handler: .async { request, _ in request.payload }).start()
        let address = server.address
        await server.stop() // refused from now on
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        var configuration = RPCClientPool.Configuration(endpoint: testConfiguration())
        configuration.reconnectDelay = .milliseconds(20)
        configuration.maximumReconnectDelay = .milliseconds(200)
        let pool = await RPCClientPool.connect(to: [address], on: group, configuration: configuration)
        let waiting = Task { try await pool.send([1], timeout: .seconds(30), waitForReady: true) }
        try waitUntil("the call to wait for a connection") { pool.callsWaitingForConnection == 1 }
        await pool.close()
        let outcome = try await withTimeout("the waiting call to end after close", seconds: 5) {
            await withTaskCancellationHandler { await Result { try await waiting.value } } onCancel: { waiting.cancel() }
        }
        guard case .failure(let error as RPCError) = outcome else { return XCTFail("\(outcome)") }
        XCTAssertFalse(error.requestWasSent)
        let after = try await withTimeout("a wait-for-ready call after close to fail", seconds: 5) {
            await Result { try await pool.send([2], timeout: .seconds(30), waitForReady: true) }
        }
        guard case .failure = after else { return XCTFail("\(after)") }
        waiting.cancel()
        _ = await group.shutdown()
    }

    /// A refresh still waiting for its new connections' first attempts when the pool
    /// closes must not start the periodic refresher (a task that would loop forever).
    func testARefreshThatEndsAfterCloseStartsNoRefresher() async throws {
        let harness = try LoopHarness("servers")
        defer { harness.shutdownCleanly() }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                         on: harness.loop, handler: .async { request, _ in request.payload }).start()
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        var configuration = RPCClientPool.Configuration(endpoint: testConfiguration())
        // The name names another address (refused: nothing listens on 127.0.0.2 there).
        let other = SocketAddress.ipv4(host: "127.0.0.2", port: server.address.port!)
        configuration.resolver = FixedResolver([other])
        configuration.resolveInterval = .seconds(3600)
        let pool = await RPCClientPool.connect(to: [server.address], on: group, configuration: configuration)
        // The pool's loop is held: the new connection's first attempt cannot end before close.
        let release = DispatchSemaphore(value: 0)
        XCTAssertTrue(group.loops[0].execute { release.wait() })
        let name = SocketAddress.name(host: "scores.internal", port: 9000)
        let update = Task { await pool.update(addresses: [name]) }
        try waitUntil("the update to make its connection") { pool.connectionStates.map(\.address) == [other] }
        let closing = Task { await pool.close() }
        try waitUntil("close to empty the pool") { pool.connectionStates.isEmpty }
        release.signal()
        await update.value
        await closing.value
        let periodic = await pool.membership.hasRefresher
        XCTAssertFalse(periodic, "a refresher was started after close")
        await server.stop()
        _ = await group.shutdown()
    }

    /// A waiter whose task is cancelled before it looks, after a signal came, leaves nothing behind.
    func testACancelledWaitLeavesNoIDBehind() async throws {
        let signal = ReadySignal()
        let before = signal.generation
        signal.signal()
        let task = Task {
            withUnsafeCurrentTask { $0!.cancel() }
            return await signal.wait(after: before, until: .now + .seconds(60))
        }
        let woke = await task.value
        XCTAssertTrue(woke)
        XCTAssertEqual(signal.cancelledEarlyCount, 0, "the cancelled waiter's id stays in cancelledEarly forever")
    }
}
