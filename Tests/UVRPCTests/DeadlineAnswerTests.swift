import Foundation
import UVLoop
@testable import UVRPC
import UVTestSupport
import XCTest

/// What a handler cancelled at its deadline answers, on the wire.
final class DeadlineAnswerTests: XCTestCase {
    func testAHandlerCancelledAtItsDeadlineAnswersDeadlineExceeded() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                    on: harness.loop, handler: .async { request, _ in
            try await Task.sleep(for: .seconds(10)) // throws when cancelled at the deadline
            return request.payload
        }).startAndWait().address
        let peer = try RawPeer(harness: harness, address: address)
        let handshake = PeerInfo(keepaliveInterval: 60, extensions: .all).handshakeBytes
        let entries = try RPCMetadata().encoded(deadline: .milliseconds(100)).get()
        try peer.send(harness, handshake + PacketWriter.extensionPacket(.metadata, id: 3, payload: entries)
                      + PacketWriter.frame(isResponse: false, id: 3, payload: [1]))
        let reason = Array("the handler passed its caller's deadline".utf8)
        let error = PacketWriter.extensionPacket(.error, id: 3, code: RPCError.Code.deadlineExceeded.rawValue, payload: reason)
        let serverHandshake = PeerInfo(keepaliveInterval: 0.1, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes
        let after = try peer.waitForFrame(serverHandshake, at: 0, "the handshake")
        _ = try peer.waitForFrame(error, at: after, "the deadline-exceeded answer")
    }
}
