import Foundation
import UVLoop
@testable import UVRPC
import UVTestSupport
import XCTest

/// Deadlines inherited by calls made inside a handler.
final class InheritedDeadlineTests: XCTestCase {
    private let localhost = SocketAddress.ipv4(host: "127.0.0.1", port: 0)

    /// A handler whose call had a deadline calls its caller back with the
    /// default options (as MetadataTests' inheritance test does); the callee
    /// is slower than the deadline. The deadline passing is the caller giving
    /// up, not the peer failing: the connection must serve on. (The call
    /// back's inherited timeout fired, often before the handler's own
    /// cancellation was handled, and closeOnError's default closed the
    /// connection the original call came on.)
    func testACallBackThatOutlivesTheInheritedDeadlineDoesNotCloseTheConnection() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let callBackErrors = LockedValue([String]())
        let server = try await RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
                                         handler: .async { request, context in
            guard request.payload == [1] else { return request.payload }
            do {
                return try await context.endpoint.send(request.payload) // inherits the deadline
            } catch {
                callBackErrors.withLock { $0.append("\(error)") }
                throw error
            }
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration(),
                                                 handler: .async { request, _ in
            // Slower than the deadline, and deaf to it (as a peer that does not
            // stop at deadlines is: a callback handler, another implementation).
            try await Task.detached { try await Task.sleep(for: .milliseconds(600)) }.value
            return request.payload
        })
        for round in 0..<3 {
            do {
                _ = try await client.send([1], timeout: .milliseconds(100), closeOnError: false)
                XCTFail("answered in time")
            } catch let error as RPCError {
                XCTAssertEqual(error.code, .deadlineExceeded)
            }
            try waitUntil("the handler's call back ended") { callBackErrors.withLock { $0.count } == round + 1 }
            let seen = callBackErrors.withLock { $0[round] }
            do {
                let echoed = try await client.send([2], timeout: .seconds(5), closeOnError: false)
                XCTAssertEqual(echoed, [2], "the connection serves on")
            } catch {
                XCTFail("round \(round): the connection did not serve on after the deadline: \(error) (the server's call back ended with: \(seen))")
                break
            }
        }
        await client.close()
        await server.stop()
    }

    /// A call made inside a handler, without a timeout of its own, has "at
    /// most what is left" of the handler's deadline (Docs/TYPED_CALLS.md,
    /// RPCHandlerContext.deadline): at most the endpoint's messageTimeout
    /// too. It took the whole remainder, however long the caller (any peer)
    /// chose it to be.
    func testAnInheritedDeadlineNeverLengthensTheMessageTimeout() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let callBack = Promise<(String, Duration)>()
        let server = try await RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration(messageTimeout: .milliseconds(200))),
                                         on: harness.loop, handler: .async { request, context in
            let start = ContinuousClock.now
            do {
                let answer = try await context.endpoint.send(request.payload, closeOnError: false)
                callBack.fulfill(("answered", start.duration(to: .now)))
                return answer
            } catch {
                callBack.fulfill(("\(error)", start.duration(to: .now)))
                throw error
            }
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration(),
                                                 handler: .async { request, _ in
            try await Task.sleep(for: .seconds(3)) // far longer than the server's messageTimeout
            return request.payload
        })
        let outer = Task { try await client.send([1], timeout: .seconds(60), closeOnError: false) }
        let (outcome, took) = try callBack.wait("the server's call back ended")
        outer.cancel()
        XCTAssertTrue(outcome.contains("deadline exceeded"), outcome)
        XCTAssertLessThan(took, .seconds(2), "the call back waited past the server's 200 ms messageTimeout: \(outcome)")
        await client.close()
        await server.stop()
    }
}
