import UVLoop
import UVRPC
import XCTest

/// The examples of Docs/GETTING_STARTED.md, run for real (port 0 instead of 9000,
/// and both on one loop), so that the documented API keeps compiling and working.
final class GettingStartedTests: XCTestCase {
    func testTheCallbackEchoServerAndClientOfTheDocs() throws {
        let loop = try EventLoop(name: "rpc")
        let answer = LockedValue<String?>(nil)
        loop.execute {
            do {
                let server = try RPCServer(loop: loop, address: .ipv4(host: "127.0.0.1", port: 0)) { endpoint in
                    endpoint.onMessage = { request in
                        let payload = request.payload
                        try request.respond(payload)
                    }
                    endpoint.onClose = { reason in print("\(endpoint.label) closed: \(reason)") }
                }
                print("listening on \(server.address)")
                RPCClient.connect(to: server.address, on: loop) { result in
                    switch result {
                    case .failure(let error):
                        print("connect failed: \(error)")
                        loop.shutdown()
                    case .success(let endpoint):
                        endpoint.send(Array("hello".utf8), timeout: .seconds(5)) { response in
                            switch response {
                            case .success(let bytes): answer.withLock { $0 = String(decoding: bytes, as: UTF8.self) }
                            case .failure(let error): print("call failed: \(error)")
                            }
                            endpoint.close()
                            loop.shutdown()
                        }
                    }
                }
            } catch {
                print("cannot listen: \(error)")
                loop.shutdown()
            }
        }
        // A guard so that a broken example fails instead of hanging the suite.
        let watchdog = LockedValue(false)
        loop.execute { _ = loop.scheduleTimer(after: .seconds(20)) { watchdog.withLock { $0 = true }; loop.shutdown() } }
        try loop.run()
        XCTAssertFalse(watchdog.withLock { $0 }, "the example did not finish within 20 s")
        XCTAssertEqual(answer.withLock { $0 }, "hello")
        XCTAssertEqual(loop.loopCloseStatus, 0)
    }

    /// The README's async server and client (Examples/), on port 0 and in one process.
    func testTheAsyncEchoServerAndClientOfTheReadme() async throws {
        let loop = try EventLoop(name: "echo-server")
        loop.start()
        let server = try await RPCServer.bind(on: loop, address: .ipv4(host: "127.0.0.1", port: 0)) { request in
            request.payload
        }
        let serverDone = Task { await server.run() }
        let endpoint = try await RPCClient.connect(to: server.address, on: loop)
        let answer = try await endpoint.send(Array("hello".utf8), timeout: .seconds(5))
        XCTAssertEqual(String(decoding: answer, as: UTF8.self), "hello")
        let reason = await endpoint.close()
        XCTAssertEqual(reason, .local)
        await server.shutdown()
        await serverDone.value
        let status = await loop.shutdownAndWait()
        XCTAssertEqual(status, 0)
    }

    /// The multi-core server and client pool of Docs/GETTING_STARTED.md (port 0).
    func testTheMultiCoreServerAndClientPoolOfTheDocs() async throws {
        let serverLoops = try EventLoopGroup(name: "rpc")
        let server = try await RPCServer.bind(on: serverLoops, address: .ipv4(host: "127.0.0.1", port: 0),
                                              spread: .roundRobin) { request in
            request.payload
        }
        XCTAssertEqual(server.loops.count, EventLoopGroup.availableCPUCount)
        let clientLoops = try EventLoopGroup(name: "client", loopCount: 2)
        var configuration = RPCClientPool.Configuration()
        configuration.connectionsPerAddress = 2
        let pool = await RPCClientPool.connect(to: [server.address], on: clientLoops, configuration: configuration)
        let answer = try await pool.send(Array("hello".utf8), timeout: .seconds(5))
        XCTAssertEqual(String(decoding: answer, as: UTF8.self), "hello")
        XCTAssertEqual(pool.connectionStates.map(\.loop), ["client-0", "client-1"])
        await pool.close()
        await server.shutdown()
        let clientStatus = await clientLoops.shutdownAndWait()
        let serverStatus = await serverLoops.shutdownAndWait()
        XCTAssertEqual(clientStatus, 0)
        XCTAssertEqual(serverStatus, 0)
    }
}
