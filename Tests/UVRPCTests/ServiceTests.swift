import Foundation
import Logging
import ServiceLifecycle
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// RPCServer and RPCClientPool as services under a ServiceGroup.
final class ServiceTests: XCTestCase {
    func testAGracefulShutdownOfTheGroupDrainsTheServerAndPoolThenRunReturns() async throws {
        let loop = try EventLoop(name: "service")
        loop.start()
        let received = Promise<Void>()
        var configuration = testConfiguration()
        configuration.shutdownGracePeriod = .seconds(30)
        let server = try await RPCServer.bind(on: loop, address: .ipv4(host: "127.0.0.1", port: 0),
                                              configuration: configuration, handler: { request in
            received.fulfill(())
            try await Task.sleep(for: .milliseconds(100)) // still running when the shutdown starts
            return request.payload
        })
        let clientLoops = try EventLoopGroup(name: "service-client", loopCount: 1)
        var poolConfiguration = RPCClientPool.Configuration()
        poolConfiguration.endpoint = configuration
        let pool = await RPCClientPool.connect(to: [server.address], on: clientLoops, configuration: poolConfiguration)
        let group = ServiceGroup(configuration: .init(services: [server, pool], gracefulShutdownSignals: [],
                                                      logger: Logger(label: "test")))
        let running = Task { try await group.run() }
        let call = Task { try await pool.send([1, 2, 3], timeout: .seconds(30)) }
        try await withTimeout("the handler to receive the call") {
            try await Task.detached { try received.wait("the handler") }.value
        }
        await group.triggerGracefulShutdown()
        let answer = try await withTimeout("the call in flight") { try await call.value }
        XCTAssertEqual(answer, [1, 2, 3], "a call received before the shutdown is answered")
        try await withTimeout("the group to return") { try await running.value }
        XCTAssertTrue(server.openEndpoints.isEmpty)
        await clientLoops.shutdownAndWait()
        let status = await loop.shutdownAndWait()
        XCTAssertEqual(status, 0)
    }

    /// The example of Examples/ServiceServer, as a process: SIGTERM drains it and it exits 0.
    func testTheServiceExampleExitsZeroOnSIGTERM() throws {
        let binary = uvrpcTool.deletingLastPathComponent().appendingPathComponent("example-service-server")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("\(binary.path) is not built (make test builds it)")
        }
        let server = try ServeProcess(executable: binary, arguments: ["0"])
        XCTAssertTrue(server.listeningLine.hasPrefix("listening on 127.0.0.1:"), server.listeningLine)
        XCTAssertEqual(try server.stop(), 0, "SIGTERM drains the group and the example exits 0")
    }
}
