import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// A call that waits for the peer's handshake (it carries metadata, as a
/// call with a timeout does) counts that wait against its timeout.
final class HandshakeWaitTests: XCTestCase {
    /// A listening socket that never accepts: connections to it complete in
    /// the kernel, and no handshake ever comes.
    private func silentListener() throws -> (fd: Int32, address: SocketAddress) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard fd >= 0, bound, listen(fd, 8) == 0 else { throw TestTimeout(what: "a listening socket (errno \(errno))") }
        return (fd, .ipv4(host: "127.0.0.1", port: Int(UInt16(bigEndian: addr.sin_port))))
    }

    /// Against a peer that never sends its handshake (handshake timeout 60 s),
    /// a call with a 200 ms timeout fails unsent with "deadline exceeded" (it
    /// waited out the 60 s before, failing with "no handshake"); the endpoint
    /// stays open, and a later call fails the same way.
    func testACallWaitingForTheHandshakeFailsUnsentAtItsOwnDeadline() async throws {
        let (fd, address) = try silentListener()
        defer { close(fd) }
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let configuration = testConfiguration { $0.handshakeTimeout = .seconds(60); $0.keepaliveTimeout = .seconds(60) }
        let client = try await RPCClient.connect(to: address, on: harness.loop, configuration: configuration)
        for attempt in 0..<2 {
            do {
                _ = try await withTimeout("a call waiting for a handshake that never comes", seconds: 20) {
                    try await client.send([UInt8(attempt)], timeout: .milliseconds(200))
                }
                XCTFail("answered without a peer")
            } catch let error as RPCError {
                XCTAssertEqual(error.code, .deadlineExceeded, "\(error)")
                XCTAssertFalse(error.requestWasSent, "\(error)")
                XCTAssertTrue(error.message.contains("handshake did not come within the call's 0.2 seconds"), error.message)
            }
        }
        await client.close(gracePeriod: .zero)
    }

    /// A pool call whose first connection waited for a handshake and was
    /// then closed (after 1 s, by the peer) goes to the next connection with
    /// what is left of its 4 s (at most 3 s), not the whole 4 s again (it
    /// overran its timeout by up to that much before).
    func testAPoolCallMovedToAnotherConnectionHasOnlyWhatIsLeftOfItsTimeout() async throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Peers/silent_peer.py").path
        let peer = try ServeProcess(executable: try python3(), arguments: [script, "--drop-first", "1"])
        defer { _ = try? peer.stop() }
        let group = try EventLoopGroup(name: "pool", loopCount: 1)
        var configuration = RPCClientPool.Configuration(endpoint: testConfiguration { $0.handshakeTimeout = .seconds(60) })
        configuration.waitsForReady = true
        configuration.reconnectDelay = .milliseconds(5)
        let pool = await RPCClientPool.connect(to: [peer.address], on: group, configuration: configuration)
        do {
            _ = try await withTimeout("a pool call to a silent peer", seconds: 30) {
                try await pool.send([1], timeout: .seconds(4))
            }
            XCTFail("answered by a silent peer")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .deadlineExceeded, "\(error)")
            XCTAssertFalse(error.requestWasSent, "\(error)")
            // "... did not come within the call's 2.99 seconds ...": the time the second connection had.
            let given = error.message.components(separatedBy: "within the call's ").dropFirst().first?
                .components(separatedBy: " seconds").first.flatMap(Double.init)
            XCTAssertNotNil(given, error.message)
            XCTAssertLessThan(given ?? 99, 3.5, "the second connection had what was left of 4 s after 1 s: \(error.message)")
        }
        await pool.close()
        _ = await group.shutdown()
    }
}
