import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// A peer speaking raw bytes to an RPCServer: what it sends, and what comes back.
final class RawPeer: Sendable {
    let received = LockedValue([UInt8]())
    /// Waiters for "at least N bytes received".
    private let waiters = LockedValue([(count: Int, promise: Promise<[UInt8]>)]())
    let closed = Promise<ConnectionError?>()
    let connected = Promise<Result<LoopBound<Connection>, ConnectError>>()

    init(harness: LoopHarness, address: SocketAddress) throws {
        let loop = harness.loop
        try harness.sync {
            loop.connect(to: address) { [self] result in
                connected.fulfill(result.map { connection in
                    connection.onRead = { [self] bytes in
                        let all = received.withLock { $0.append(contentsOf: bytes); return $0 }
                        let ready = waiters.withLock { list in
                            let done = list.filter { $0.count <= all.count }
                            list.removeAll { $0.count <= all.count }
                            return done
                        }
                        for waiter in ready { waiter.promise.fulfill(all) }
                        return bytes.count
                    }
                    connection.onClose = { [self] in closed.fulfill($0) }
                    return LoopBound(connection, loop: loop)
                })
            }
        }
    }

    /// Waits until at least `count` bytes arrived; returns all received so far.
    func waitForBytes(_ count: Int, _ what: String) throws -> [UInt8] {
        let promise = Promise<[UInt8]>()
        let now = received.withLock { bytes -> [UInt8]? in
            if bytes.count >= count { return bytes }
            waiters.withLock { $0.append((count, promise)) }
            return nil
        }
        if let now { return now }
        return try promise.wait(what)
    }

    /// Waits for `frame` at `offset` of the received bytes, past any
    /// KEEPALIVE bytes there; returns the offset after it.
    func waitForFrame(_ frame: [UInt8], at offset: Int, _ what: String,
                      file: StaticString = #filePath, line: UInt = #line) throws -> Int {
        var wanted = offset + frame.count
        while true {
            let bytes = try waitForBytes(wanted, what)
            let keepalives = bytes[offset...].prefix { $0 == PacketType.keepalive.rawValue }.count
            let start = offset + keepalives
            if bytes.count >= start + frame.count {
                XCTAssertEqual(Array(bytes[start..<start + frame.count]), frame, what, file: file, line: line)
                return start + frame.count
            }
            wanted = start + frame.count
        }
    }

    func send(_ harness: LoopHarness, _ bytes: [UInt8]) throws {
        let connection = try connected.wait("raw connect").get()
        try harness.sync { try connection.value.write(bytes) }
    }
}

final class HostilePeerTests: XCTestCase {
    /// Serves reversing endpoints and records each endpoint's close reason.
    private func startServer(_ harness: LoopHarness, configuration: RPCEndpoint.Configuration = testConfiguration())
        throws -> (address: SocketAddress, firstClose: Promise<RPCCloseReason>, closes: LockedValue<Int>) {
        let loop = harness.loop
        let firstClose = Promise<RPCCloseReason>()
        let closes = LockedValue(0)
        let address = try harness.sync {
            try RPCServer(loop: loop, address: .ipv4(host: "127.0.0.1", port: 0), configuration: configuration) { endpoint in
                endpoint.onMessage = reversing
                endpoint.onClose = { reason in
                    closes.withLock { $0 += 1 }
                    firstClose.fulfill(reason)
                }
            }.address
        }
        return (address, firstClose, closes)
    }

    /// Checks that a good client still gets correct answers from the server.
    private func checkServerStillServes(_ harness: LoopHarness, _ address: SocketAddress) throws {
        let loop = harness.loop
        let done = Promise<Result<[UInt8], RPCError>>()
        try harness.sync {
            RPCClient.connect(to: address, on: loop, configuration: testConfiguration()) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                client.send([1, 2, 3]) { response in done.fulfill(response); client.close() }
            }
        }
        XCTAssertEqual(try done.wait("a good client's call").get(), [3, 2, 1])
    }

    private func checkViolation(_ bytes: [UInt8], expect: ProtocolViolation,
                                file: StaticString = #filePath, line: UInt = #line) throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try startServer(harness)
        let peer = try RawPeer(harness: harness, address: server.address)
        try peer.send(harness, bytes)
        _ = try peer.closed.wait("the server to close the hostile connection")
        XCTAssertEqual(try server.firstClose.wait("the server endpoint's close"), .protocolViolation(expect),
                       file: file, line: line)
        XCTAssertEqual(server.closes.withLock { $0 }, 1, file: file, line: line)
        // The server's own handshake reached the peer before it closed.
        let expected = PeerInfo(keepaliveInterval: 0.1, extensions: .all).handshakeBytes
        XCTAssertEqual(Array(peer.received.withLock { $0 }.prefix(expected.count)), expected, file: file, line: line)
        try checkServerStillServes(harness, server.address)
    }

    private let handshake = PeerInfo(keepaliveInterval: 10).handshakeBytes

    func testUnknownPacketTypeClosesOnlyThatConnection() throws {
        try checkViolation(handshake + [0x01, 0x09], expect: .unknownPacketType(9, streamOffset: UInt64(handshake.count + 1)))
    }

    func testSecondHandshakeClosesOnlyThatConnection() throws {
        try checkViolation(handshake + handshake, expect: .secondHandshake(streamOffset: UInt64(handshake.count)))
    }

    func testMalformedHandshakeJSONClosesOnlyThatConnection() throws {
        let body = Array(#"{"p":2,"k":}"#.utf8)
        try checkViolation([0, 0, 0, UInt8(body.count)] + body,
                           expect: .malformedHandshake("\"k\" is not a number"))
    }

    func testMessageBigDeclaringFourGiBClosesBeforeAllocating() throws {
        try checkViolation(handshake + [0x04, 0x00, 0x01, 0xff, 0xff, 0xff, 0xff],
                           expect: .payloadTooLarge(declared: Int(UInt32.max), limit: 64 << 20, packet: .messageBig))
    }

    func testHandshakeLengthOfFourGiBClosesTheConnection() throws {
        try checkViolation([0xff, 0xff, 0xff, 0xff], expect: .handshakeTooLarge(declared: UInt32.max, limit: 65536))
    }

    func testAResponseForAnIdNeverSentIsIgnored() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try startServer(harness)
        let peer = try RawPeer(harness: harness, address: server.address)
        try peer.send(harness, handshake + PacketWriter.frame(isResponse: true, id: 1234, payload: [1])
                      + PacketWriter.frame(isResponse: false, id: 7, payload: Array("hi".utf8)))
        let serverHandshake = PeerInfo(keepaliveInterval: 0.1, extensions: .all).handshakeBytes
        let answer = PacketWriter.frame(isResponse: true, id: 7, payload: Array("ih".utf8))
        _ = try peer.waitForFrame(answer, at: serverHandshake.count, "the answer to message 7")
        XCTAssertFalse(server.firstClose.isFulfilled, "the unknown response id closed nothing")
    }

    func testAProtocolOnePeerGetsNoBigPackets() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let endpointBox = Promise<LoopBound<RPCEndpoint>>()
        let address = try harness.sync {
            try RPCServer(loop: loop, address: .ipv4(host: "127.0.0.1", port: 0), configuration: testConfiguration()) {
                $0.onMessage = reversing
                endpointBox.fulfill(LoopBound($0, loop: loop))
            }.address
        }
        let peer = try RawPeer(harness: harness, address: address)
        // A handshake announcing protocol 1, then a message: its answer proves the handshake was read.
        try peer.send(harness, PeerInfo(protocolVersion: 1, keepaliveInterval: 10).handshakeBytes
                      + PacketWriter.frame(isResponse: false, id: 9, payload: [1, 2]))
        let endpoint = try endpointBox.wait("endpoint")
        let serverHandshake = PeerInfo(keepaliveInterval: 0.1, extensions: .all).handshakeBytes
        var offset = try peer.waitForFrame(PacketWriter.frame(isResponse: true, id: 9, payload: [2, 1]),
                                           at: serverHandshake.count, "the answer to message 9")
        XCTAssertEqual(try harness.sync { endpoint.value.peerInfo?.protocolVersion }, 1)
        let big = try harness.call(endpoint, [UInt8](repeating: 1, count: 70000), timeout: .milliseconds(100))
        guard case .failure(.peerTooOld(_, 70000, 1)) = big else { return XCTFail("expected peerTooOld, got \(big)") }
        XCTAssertFalse(try harness.sync { endpoint.value.isClosing }, "refusing one call does not close the endpoint")
        // A small message still goes out, as a short MESSAGE with the first id.
        try harness.sync { endpoint.value.send([5, 6]) { _ in } }
        offset = try peer.waitForFrame(PacketWriter.frame(isResponse: false, id: 65530, payload: [5, 6]),
                                       at: offset, "the small message")
        XCTAssertFalse(peer.received.withLock { $0 }.contains(PacketType.messageBig.rawValue), "no MESSAGE_BIG type byte was sent")
    }
}
