import Foundation
import UVLoop
@testable import UVRPC
import UVTestSupport
import XCTest

/// The deadline a chunked call waiting for a transfer slot sends.
final class QueuedDeadlineTests: XCTestCase {
    /// PROTOCOL.md: the deadline is "the time left for the call when it was
    /// written", and a waiting chunked call's METADATA is written when its
    /// transfer starts. Its entries were encoded when the call was made, so
    /// a call that waited for a slot told the peer its whole timeout.
    func testAChunkedCallThatWaitedForASlotSendsWhatIsLeftOfItsTimeout() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let serverSide = Promise<LoopBound<RPCEndpoint>>()
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                    on: harness.loop, handler: .callback { endpoint in
            serverSide.fulfill(LoopBound(endpoint, loop: harness.loop))
        }).startAndWait().address
        // A peer that takes every extension and acknowledges no chunk: the four transfers stall at their window.
        let peer = try RawPeer(harness: harness, address: address)
        try peer.send(harness, PeerInfo(keepaliveInterval: 60, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes)
        let endpoint = try serverSide.wait("the server's endpoint")
        try waitUntil("the peer's handshake") { (try? harness.sync { endpoint.value.peerInfo != nil }) == true }
        let timeout = Duration.seconds(10)
        try harness.sync {
            for i in 0..<5 {
                let payload = [UInt8](repeating: UInt8(i), count: 4 << 20)
                payload.withUnsafeBytes {
                    // The first gives up after 300 ms (without closing: it is cancelled), which frees a slot for the fifth.
                    endpoint.value.startCall($0, timeout: i == 0 ? .milliseconds(300) : timeout, closeOnError: false,
                                             completion: .copied { _ in }, owned: payload,
                                             metadata: .init(entries: ["n": "\(i)"], sendsDeadline: true))
                }
            }
            XCTAssertEqual(endpoint.value.outgoing.waiting.count, 1, "the fifth waits for a slot")
        }
        /// The deadline values of the METADATA packets the peer received, in order.
        func deadlines() -> [Int] {
            let key: [UInt8] = [8] + Array("deadline".utf8)
            let bytes = peer.received.withLock { $0 }
            var found: [Int] = []
            var at = 0
            while at + key.count + 2 <= bytes.count {
                if bytes[at] == 8, Array(bytes[at..<(at + key.count)]) == key {
                    let length = Int(bytes[at + key.count]) << 8 | Int(bytes[at + key.count + 1])
                    let start = at + key.count + 2
                    guard start + length <= bytes.count else { break }
                    found.append(Int(String(decoding: bytes[start..<(start + length)], as: UTF8.self))!)
                    at = start + length
                } else {
                    at += 1
                }
            }
            return found
        }
        try waitUntil("the fifth call's METADATA", seconds: 20) { deadlines().count == 5 }
        let sent = deadlines()
        XCTAssertEqual(sent[0], 300_000)
        XCTAssertEqual(Array(sent[1..<4]), [10_000_000, 10_000_000, 10_000_000])
        XCTAssertLessThanOrEqual(sent[4], 9_750_000,
                                 "the fifth waited about 300 ms for its slot, and its METADATA still said its whole 10 s")
    }
    func testTheDeadlineEntryLessTheWait() throws {
        let entries = try RPCMetadata(dictionaryLiteral: ("n", "1")).encoded(deadline: .milliseconds(1500)).get()
        let less = RPCMetadata.entries(entries, deadlineLessBy: 200)
        let decoded = try less.withUnsafeBytes { try RPCMetadata.decode($0).get() }
        XCTAssertEqual(decoded.0, ["n": "1"])
        XCTAssertEqual(decoded.deadlineMicroseconds, 1_300_000)
        let passed = try RPCMetadata.entries(entries, deadlineLessBy: 5000).withUnsafeBytes { try RPCMetadata.decode($0).get() }
        XCTAssertEqual(passed.deadlineMicroseconds, 0)
        let none = try RPCMetadata(dictionaryLiteral: ("n", "1")).encoded(deadline: nil).get()
        XCTAssertEqual(RPCMetadata.entries(none, deadlineLessBy: 200), none, "no deadline entry: unchanged")
    }
}
