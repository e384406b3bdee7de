import Foundation
import UVLoop
@testable import UVRPC
import UVTestSupport
import XCTest

/// Cancelling one of four chunked calls in progress while a fifth waits for a transfer slot.
final class TransferCancelTests: XCTestCase {
    /// The sender drops the cancelled transfer, which starts the waiting one
    /// (its START, and its METADATA), and only then writes the CANCEL: the
    /// receiver sees a fifth message transfer start while four are in
    /// progress (`tooManyTransfers`) and closes the connection.
    func testCancellingAnActiveTransferWhileAnotherWaitsKeepsTheConnection() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let pair = try harness.endpointPair(serverHandler: { request in try request.respond([UInt8(request.payload.count & 0xff)]) })
        let size = 12 << 20 // five stay under the 64 MiB send buffer limit
        let results = LockedValue([Int: Result<[UInt8], RPCError>]())
        try harness.sync {
            let endpoint = pair.client.value
            XCTAssertNotNil(endpoint.peerInfo, "the handshake is in: the calls go chunked at once")
            for i in 0..<5 {
                let payload = [UInt8](repeating: UInt8(i), count: size)
                // The first times out (without closing: it is cancelled) while the four are in progress.
                endpoint.send(payload, timeout: i == 0 ? .milliseconds(5) : .seconds(30), closeOnError: false) { result in
                    results.withLock { $0[i] = result }
                }
            }
            XCTAssertEqual(endpoint.outgoing.active.count, 4)
            XCTAssertEqual(endpoint.outgoing.waiting.count, 1)
        }
        try waitUntil("every call ended", seconds: 30) { results.withLock { $0.count } == 5 }
        let outcomes = results.withLock { $0 }
        if case .success = outcomes[0]! { XCTFail("the first call was answered before its 5 ms: the test did not test") }
        for i in 1..<5 {
            XCTAssertNoThrow(try outcomes[i]!.get(), "call \(i)")
        }
        XCTAssertFalse(try harness.sync { pair.client.value.isClosing }, "the connection serves on")
        try assertOpen(pair.server, closed: pair.serverClosed, "the server", harness)
    }

    /// The same on the answering side: the peer cancels one of four chunked
    /// answers in progress while a fifth waits; the answerer starts the fifth
    /// (its RESPONSE_START) before it writes the CANCEL_ACK that ends the
    /// cancelled one at the caller, which sees five response transfers.
    func testCancellingACallWhoseAnswerIsInProgressWhileAnotherWaitsKeepsTheConnection() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let size = 12 << 20 // five stay under the 64 MiB send buffer limit
        let pair = try harness.endpointPair(serverHandler: { request in
            try request.respond([UInt8](repeating: request.payload[0], count: size))
        })
        let results = LockedValue([Int: Result<[UInt8], RPCError>]())
        try harness.sync {
            let endpoint = pair.client.value
            for i in 0..<5 {
                endpoint.send([UInt8(i)], timeout: i == 0 ? .milliseconds(5) : .seconds(30), closeOnError: false) { result in
                    results.withLock { $0[i] = result.map { [$0.first ?? 255, UInt8($0.count >> 20)] } }
                }
            }
        }
        try waitUntil("every call ended", seconds: 30) { results.withLock { $0.count } == 5 }
        let outcomes = results.withLock { $0 }
        if case .success = outcomes[0]! { XCTFail("the first call was answered before its 5 ms: the test did not test") }
        for i in 1..<5 {
            XCTAssertEqual(try outcomes[i]!.get(), [UInt8(i), 12], "call \(i)")
        }
        try assertOpen(pair.client, closed: pair.clientClosed, "the client", harness)
    }
    /// A chunked call still waiting for a transfer slot is cancelled (it
    /// times out without closing): nothing of it was written, yet the sender
    /// writes a CANCEL for it. The peer, which has received no message it
    /// could cancel (four are still arriving), takes the CANCEL as one too
    /// many (`unexpectedCancel`) and closes.
    func testCancellingATransferThatNeverStartedKeepsTheConnection() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let pair = try harness.endpointPair(serverHandler: { request in try request.respond([UInt8(request.payload.count & 0xff)]) })
        let size = 12 << 20 // five stay under the 64 MiB send buffer limit
        let results = LockedValue([Int: Result<[UInt8], RPCError>]())
        try harness.sync {
            let endpoint = pair.client.value
            for i in 0..<5 {
                let payload = [UInt8](repeating: UInt8(i), count: size)
                endpoint.send(payload, timeout: i == 4 ? .milliseconds(5) : .seconds(30), closeOnError: false) { result in
                    results.withLock { $0[i] = result }
                }
            }
            XCTAssertEqual(endpoint.outgoing.waiting.count, 1, "the fifth waits for a slot")
        }
        try waitUntil("every call ended", seconds: 30) { results.withLock { $0.count } == 5 }
        let outcomes = results.withLock { $0 }
        if case .success = outcomes[4]! { XCTFail("the fifth call was answered before its 5 ms: the test did not test") }
        for i in 0..<4 {
            XCTAssertNoThrow(try outcomes[i]!.get(), "call \(i)")
        }
        try assertOpen(pair.server, closed: pair.serverClosed, "the server", harness)
    }
}

/// Fails, naming the close reason, when `endpoint` closed (the test's
/// transfers must leave the connection serving).
private func assertOpen(_ endpoint: LoopBound<RPCEndpoint>, closed: Promise<RPCCloseReason>, _ who: String,
                        _ harness: LoopHarness, file: StaticString = #filePath, line: UInt = #line) throws {
    let closing = try harness.sync { endpoint.value.isClosing }
    if closing {
        XCTFail("\(who) closed: \(try closed.wait("\(who)'s close reason"))", file: file, line: line)
    }
}
