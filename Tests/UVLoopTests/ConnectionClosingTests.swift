import UVLoop
import UVTestSupport
import XCTest

/// A graceful close waits for the peer's end (lingers) so that bytes the
/// peer sent late do not make the kernel reset the connection.
final class ConnectionClosingTests: XCTestCase {
    /// The server writes 1 MiB and closes; the client sends bytes back once
    /// the first of them arrive, after the server stopped reading. Closing
    /// with those bytes unread (or receiving them once closed) made the
    /// kernel reset the connection, and the reset destroyed the part of the
    /// 1 MiB the client had not read yet. Lingering, the server drops them
    /// and closes after the client's end: every byte arrives, then a clean end.
    func testBytesThePeerSendsDuringAGracefulCloseDoNotResetIt() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let payload = pseudoRandomBytes(count: 1 << 20, seed: 21)
        let clientDone = Promise<(bytes: [UInt8], reason: ConnectionError?)>()
        let serverDone = Promise<String>()
        try harness.sync {
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0)) { server in
                server.onClose = { serverDone.fulfill("\(String(describing: $0))") }
                try? server.write(payload)
                server.close()
            }
            loop.connect(to: listener.address) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                var received: [UInt8] = []
                client.onRead = { bytes in
                    if received.isEmpty { try? client.write([UInt8](repeating: 7, count: 100)) } // a late acknowledgement
                    received.append(contentsOf: bytes)
                    return bytes.count
                }
                client.onClose = { clientDone.fulfill((received, $0)) }
            }
        }
        let (bytes, reason) = try clientDone.wait("the client's end", seconds: 60)
        XCTAssertEqual(bytes.count, payload.count, "every byte arrived")
        XCTAssertTrue(bytes == payload)
        XCTAssertEqual(try serverDone.wait("the server's close", seconds: 60), "nil", "closed locally, gracefully")
        guard case .endOfStream? = reason?.kind else { return XCTFail("a clean end, not \(String(describing: reason))") }
    }

    /// A peer that never closes its side (it reads nothing) keeps the
    /// lingering connection only for the linger timeout: then it closes,
    /// gracefully, and the peer still gets every byte and a clean end.
    func testTheLingerEndsAtItsTimeoutWhenThePeerNeverCloses() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let serverDone = Promise<String>()
        let clientDone = Promise<(bytes: [UInt8], reason: ConnectionError?)>()
        let serverOptions = { var options = ConnectionOptions(); options.lingerTimeout = .milliseconds(200); return options }()
        // The client never reads the end, so it never closes.
        let clientOptions = { var options = ConnectionOptions(); options.autoRead = false; return options }()
        let client = try harness.sync { () throws -> LoopBoundBox<Connection?> in
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0), options: serverOptions) { server in
                server.onClose = { serverDone.fulfill("\(String(describing: $0))") }
                try? server.write([1, 2, 3])
                server.close()
            }
            let client = LoopBoundBox<Connection?>(nil, loop: loop)
            loop.connect(to: listener.address, options: clientOptions) { result in
                guard case .success(let connection) = result else { return XCTFail("\(result)") }
                client.value = connection
            }
            return client
        }
        XCTAssertEqual(try serverDone.wait("the server's close after its linger timeout", seconds: 30), "nil")
        try harness.sync {
            guard let connection = client.value else { return XCTFail("the client connected") }
            var received: [UInt8] = []
            connection.onRead = { received.append(contentsOf: $0); return $0.count }
            connection.onClose = { clientDone.fulfill((received, $0)) }
            connection.resumeReading()
        }
        let (bytes, reason) = try clientDone.wait("the client's end")
        XCTAssertEqual(bytes, [1, 2, 3])
        guard case .endOfStream? = reason?.kind else { return XCTFail("a clean end, not \(String(describing: reason))") }
    }
}
