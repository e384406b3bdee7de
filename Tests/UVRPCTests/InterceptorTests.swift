import ExampleScores
import Foundation
import UVLoop
import UVRPC
import UVRPCMessages
import UVTestSupport
import XCTest

/// Records its name on the way in and out, and marks the answer.
private struct Tracing: RPCServerInterceptor {
    let name: String
    let log: LockedValue<[String]>

    nonisolated(nonsending)
    func intercept(_ request: RPCAsyncRequest, context: RPCHandlerContext,
                   next: nonisolated(nonsending) @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8])
        async throws -> [UInt8] {
        log.withLock { $0.append("\(name)>") }
        defer { log.withLock { $0.append("<\(name)") } }
        return try await next(request, context) + Array(name.utf8)
    }
}

/// Lets a call in only with the right token in its metadata.
private struct RequireToken: RPCServerInterceptor {
    nonisolated(nonsending)
    func intercept(_ request: RPCAsyncRequest, context: RPCHandlerContext,
                   next: nonisolated(nonsending) @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8])
        async throws -> [UInt8] {
        guard context.metadata["authorization"] == "Bearer s3cret" else {
            throw RPCError(code: .unauthenticated, message: "no valid token")
        }
        return try await next(request, context)
    }
}

/// Adds the token to every call.
private struct AddToken: RPCClientInterceptor {
    nonisolated(nonsending)
    func intercept(_ call: RPCOutgoingCall,
                   next: nonisolated(nonsending) @Sendable (RPCOutgoingCall) async throws -> [UInt8]) async throws -> [UInt8] {
        var call = call
        call.metadata["authorization"] = "Bearer s3cret"
        return try await next(call)
    }
}

/// Records the calls it sees, and refuses empty payloads without sending them.
private struct Gate: RPCClientInterceptor {
    let log: LockedValue<[String]>

    nonisolated(nonsending)
    func intercept(_ call: RPCOutgoingCall,
                   next: nonisolated(nonsending) @Sendable (RPCOutgoingCall) async throws -> [UInt8]) async throws -> [UInt8] {
        log.withLock { $0.append("\(call.payload) \(call.metadata) on \(call.endpoint == "" ? "?" : "endpoint")") }
        if call.payload.isEmpty { throw RPCError(code: .invalidArgument, message: "empty payload") }
        return try await next(call)
    }
}

final class InterceptorTests: XCTestCase {
    private let localhost = SocketAddress.ipv4(host: "127.0.0.1", port: 0)

    func testServerInterceptorsRunInOrderAroundTheHandlerAndMayReject() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let log = LockedValue([String]())
        let handled = LockedValue(0)
        let server = try await RPCServer(
            configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
            handler: .async(interceptors: [Tracing(name: "a", log: log), RequireToken(), Tracing(name: "b", log: log)]) { request, _ in
                handled.withLock { $0 += 1 }
                log.withLock { $0.append("handler") }
                return request.payload
            }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        let answer = try await client.send(Array("x".utf8), metadata: ["authorization": "Bearer s3cret"])
        XCTAssertEqual(String(decoding: answer, as: UTF8.self), "xba", "each wraps the answer of the ones inside it")
        XCTAssertEqual(log.withLock { $0 }, ["a>", "b>", "handler", "<b", "<a"])
        do {
            _ = try await client.send(Array("y".utf8))
            XCTFail("let in without a token")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .unauthenticated)
            XCTAssertTrue(error.message.hasSuffix("failed in the peer: no valid token"), error.message)
        }
        XCTAssertEqual(handled.withLock { $0 }, 1, "the rejected call never reached the handler")
        XCTAssertEqual(log.withLock { $0.suffix(2) }, ["a>", "<a"], "the outer interceptor saw the rejection pass")
        await client.close()
        await server.stop()
    }

    func testTypedHandlersAreInterceptedAndClientInterceptorsAddMetadata() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
                                         handler: try .messages(ScoreBoard().handlers(), interceptors: [RequireToken()])).start()
        let anonymous = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        do {
            try await RPCMessageClient(anonymous, protocol: scoresProtocol).send(Ping())
            XCTFail("let in without a token")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .unauthenticated)
        }
        let log = LockedValue([String]())
        let configured = testConfiguration { $0.interceptors = [Gate(log: log), AddToken(), Gate(log: log)] }
        let endpoint = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: configured)
        let client = RPCMessageClient(endpoint, protocol: scoresProtocol)
        let result = try await client.send(SubmitScore(player: "alice", score: 10, mode: .classic, at: Date()))
        XCTAssertEqual(result, SubmitResult(rank: 1, best: 10))
        XCTAssertEqual(log.withLock { $0.count }, 2)
        XCTAssertTrue(log.withLock { $0[0].contains("[] on endpoint") }, log.withLock { $0[0] })
        XCTAssertTrue(log.withLock { $0[1].contains("[authorization: Bearer s3cret] on endpoint") }, log.withLock { $0[1] })
        // A client interceptor may fail a call without sending it.
        do {
            _ = try await endpoint.send([])
            XCTFail("an empty payload was sent")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .invalidArgument)
            XCTAssertEqual(error.message, "empty payload")
        }
        await anonymous.close()
        await endpoint.close()
        await server.stop()
    }
}
