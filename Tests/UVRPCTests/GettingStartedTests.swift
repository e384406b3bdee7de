import UVLoop
import UVRPC
import UVRPCMessages
import UVTestSupport
import XCTest

/// The examples of Docs/GETTING_STARTED.md, run for real (port 0 instead of 9000,
/// and both on one loop), so that the documented API keeps compiling and working.
final class GettingStartedTests: XCTestCase {
    func testTheCallbackEchoServerAndClientOfTheDocs() throws {
        let loop = try EventLoop(name: "rpc")
        let answer = LockedValue<String?>(nil)
        let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loop,
                               handler: .callback { endpoint in
            endpoint.onMessage = { request in
                try request.respond(request.payload)
            }
            endpoint.onClose = { reason in print("\(endpoint.label) closed: \(reason)") }
        })
        Task.detached {                                           // not on the main actor: this thread runs the loop
            do { try await server.run() } catch { print("cannot listen: \(error)") }
            loop.beginShutdown()                                  // loop.run() returns
        }
        Task.detached {
            guard let address = await server.listeningAddress else { return }
            print("listening on \(address)")
            loop.execute {
                RPCClient.connect(to: address, on: loop) { result in
                    switch result {
                    case .failure(let error):
                        print("connect failed: \(error)")
                        server.close()
                    case .success(let endpoint):
                        endpoint.send(Array("hello".utf8), timeout: .seconds(5)) { response in
                            switch response {
                            case .success(let bytes): answer.withLock { $0 = String(decoding: bytes, as: UTF8.self) }
                            case .failure(let error): print("call failed: \(error)")
                            }
                            endpoint.close()
                            server.close()
                        }
                    }
                }
            }
        }
        // A guard so that a broken example fails instead of hanging the suite.
        let watchdog = LockedValue(false)
        loop.execute { _ = loop.scheduleTimer(after: .seconds(20)) { watchdog.withLock { $0 = true }; loop.beginShutdown() } }
        try loop.run()
        XCTAssertFalse(watchdog.withLock { $0 }, "the example did not finish within 20 s")
        XCTAssertEqual(answer.withLock { $0 }, "hello")
        XCTAssertEqual(loop.loopCloseStatus, 0)
    }

    /// The per-connection values example of the docs (port 0): the admit hook
    /// refuses nothing from 127.0.0.1 and gives each connection its session.
    func testThePerConnectionValuesExampleOfTheDocs() async throws {
        let loop = try EventLoop(name: "rpc")
        loop.start()
        let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loop,
                               admit: { address in
            guard let address, case .ipv4(let host, _) = address, host == "127.0.0.1" else { return .refuse }
            return .accept([SessionKey.self: Session(peer: "\(address)")])
        }, handler: .async { request, context in
            let session = context.connectionValues[SessionKey.self]!      // set for every admitted connection
            session.calls += 1
            return Array("\(session.peer) call \(session.calls)".utf8)
        })
        try await withThrowingDiscardingTaskGroup { tasks in
            tasks.addTask { try await server.run() }
            let listening = await server.listeningAddress
            let address = try XCTUnwrap(listening)
            let client = try await RPCClient.connect(to: address, on: loop)
            let local = try await client.withEndpoint { "\($0.localAddress!)" }
            _ = try await client.send([1], timeout: .seconds(10))
            let second = try await client.send([2], timeout: .seconds(10))
            XCTAssertEqual(String(decoding: second, as: UTF8.self), "\(local) call 2")
            await client.close()
            server.close()
        }
        let status = await loop.shutdown()
        XCTAssertEqual(status, 0)
    }

    /// The handler of the docs' error section: an RPCPublicError reaches the
    /// caller with its code and text.
    func testThePublicErrorExampleOfTheDocs() async throws {
        struct NoSuchKey: RPCPublicError {
            var key: String
            var code: RPCError.Code { .notFound }
            var publicDescription: String { "no such key: \(key)" }
        }
        let loop = try EventLoop(name: "rpc")
        loop.start()
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loop,
                                         handler: .async { request, _ in
            throw NoSuchKey(key: String(decoding: request.payload, as: UTF8.self))
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: loop)
        do {
            _ = try await client.send(Array("k".utf8), timeout: .seconds(10))
            XCTFail("the handler throws")
        } catch let error as RPCError where error.code == .notFound {
            XCTAssertTrue(error.message.hasSuffix("no such key: k"), error.message)
            XCTAssertTrue(error.requestWasSent)
            XCTAssertFalse(error.isRetryable)
        }
        await client.close()
        await server.stop()
        let status = await loop.shutdown()
        XCTAssertEqual(status, 0)
    }

    /// The callback-layer example of the docs (port 0, and SIGUSR2 in place of
    /// SIGINT / SIGTERM so that no other test's process is at risk): a call in
    /// flight when the signal arrives is still answered from a timer, the
    /// drain ends, run() returns and so does loop.run().
    func testTheCallbackLayerExampleOfTheDocs() throws {
        let loop = try EventLoop(name: "rpc")
        let listening = Promise<SocketAddress>()
        let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loop,
                               handler: .callback { endpoint in
            endpoint.onMessage = { request in
                // (Test only: the signal comes while this call is held, and
                // it is answered from a timer during the drain.)
                kill(getpid(), SIGUSR2)
                let answer = Array(request.payload)
                _ = loop.scheduleTimer(after: .milliseconds(50)) { try? request.respond(answer) }
            }
        })
        loop.execute {
            do {
                try loop.onSignals([SIGUSR2]) { _ in server.close(gracePeriod: .seconds(10)) }
            } catch {
                print("cannot watch signals: \(error)")
                server.close()
            }
        }
        Task.detached {                                           // not on the main actor: this thread runs the loop
            do { try await server.run() } catch { print("cannot listen: \(error)") }
            loop.beginShutdown()                                  // after the drain
        }
        Task.detached { if let address = await server.listeningAddress { listening.fulfill(address) } }
        let outcome = Promise<Result<[UInt8], RPCError>>()
        let clientLoop = try LoopHarness("client")
        defer { clientLoop.shutdownCleanly() }
        DispatchQueue.global().async {
            guard let address = try? listening.wait("the server") else { return }
            _ = try? clientLoop.sync {
                RPCClient.connect(to: address, on: clientLoop.loop) { result in
                    guard case .success(let client) = result else {
                        return outcome.fulfill(.failure(RPCError(code: .unavailable, message: "\(result)")))
                    }
                    client.send([4, 2], timeout: .seconds(10), closeOnError: false) { outcome.fulfill($0) }
                }
            }
        }
        // A guard so that a broken example fails instead of hanging the suite.
        let watchdog = LockedValue(false)
        loop.execute { _ = loop.scheduleTimer(after: .seconds(20)) { watchdog.withLock { $0 = true }; loop.beginShutdown() } }
        try loop.run()                                           // returns after the drain
        XCTAssertFalse(watchdog.withLock { $0 }, "the example did not finish within 20 s")
        XCTAssertEqual(try outcome.wait("the call in flight").get(), [4, 2])
        XCTAssertEqual(loop.loopCloseStatus, 0)
    }

    /// The README's async server and client (Examples/), on port 0 and in one process.
    func testTheAsyncEchoServerAndClientOfTheReadme() async throws {
        let loop = try EventLoop(name: "echo-server")
        loop.start()
        let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loop,
                               handler: .async { request, _ in
            request.payload                                   // the answer; handlers run in tasks on the loop
        })
        try await withThrowingDiscardingTaskGroup { tasks in
            tasks.addTask { try await server.run() }          // listens, serves until closed or cancelled
            let listening = await server.listeningAddress
            let address = try XCTUnwrap(listening)
            let endpoint = try await RPCClient.connect(to: address, on: loop)
            let answer = try await endpoint.send(Array("hello".utf8), timeout: .seconds(5))
            XCTAssertEqual(String(decoding: answer, as: UTF8.self), "hello")
            let reason = await endpoint.close()
            XCTAssertEqual(reason, .local)
            server.close()                                    // run() returns, and so does the group
        }
        let status = await loop.shutdown()
        XCTAssertEqual(status, 0)
    }

    /// The typed calls of Docs/GETTING_STARTED.md (port 0, one loop).
    func testTheTypedCallsOfTheDocs() async throws {
        let loops = try EventLoopGroup(name: "typed", loopCount: 1)
        let greetings = try RPCMessageProtocol(messages: [0: Greet.self], responses: [0: Greeting.self])
        var handlers = RPCMessageHandlers(protocol: greetings)
        handlers.on(Greet.self) { message, context in Greeting(text: "hello, \(message.name)") }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loops,
                                         handler: try .messages(handlers)).start()
        let endpoint = try await RPCClient.connect(to: server.address, on: loops)
        let client = RPCMessageClient(endpoint, protocol: greetings)
        let greeting = try await client.send(Greet(name: "alice"))
        XCTAssertEqual(greeting.text, "hello, alice")
        await endpoint.close()
        await server.stop()
        let status = await loops.shutdown()
        XCTAssertEqual(status, 0)
    }

    /// The multi-core server and client pool of Docs/GETTING_STARTED.md (port 0).
    func testTheMultiCoreServerAndClientPoolOfTheDocs() async throws {
        let serverLoops = try EventLoopGroup(name: "rpc")
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), spread: .roundRobin),
                                         on: serverLoops, handler: .async { request, _ in request.payload }).start()
        XCTAssertEqual(server.server.loops.count, EventLoopGroup.availableCPUCount)
        let clientLoops = try EventLoopGroup(name: "client", loopCount: 2)
        var configuration = RPCClientPool.Configuration()
        configuration.connectionsPerAddress = 2
        let pool = await RPCClientPool.connect(to: [server.address], on: clientLoops, configuration: configuration)
        let answer = try await pool.send(Array("hello".utf8), timeout: .seconds(5))
        XCTAssertEqual(String(decoding: answer, as: UTF8.self), "hello")
        XCTAssertEqual(pool.connectionStates.map(\.loop), ["client-0", "client-1"])
        await pool.close()
        await server.stop()
        let clientStatus = await clientLoops.shutdown()
        let serverStatus = await serverLoops.shutdown()
        XCTAssertEqual(clientStatus, 0)
        XCTAssertEqual(serverStatus, 0)
    }
}

/// The docs' per-connection session (touched on its connection's loop only).
final class Session: @unchecked Sendable { // touched on its connection's loop only
    let peer: String
    var calls = 0
    init(peer: String) { self.peer = peer }
}

/// Where each connection of the docs' example keeps its session.
enum SessionKey: RPCConnectionKey { typealias Value = Session }

/// The typed message of the docs' example, and its answer.
struct Greet: RPCMessage {
    typealias Response = Greeting
    var name: String
}
struct Greeting: RPCResponseMessage { var text: String }
