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

/// Serves reversing endpoints and records each endpoint's close reason.
func startServer(_ harness: LoopHarness, configuration: RPCEndpoint.Configuration = testConfiguration())
    throws -> (address: SocketAddress, firstClose: Promise<RPCCloseReason>, closes: LockedValue<Int>) {
    let loop = harness.loop
    let firstClose = Promise<RPCCloseReason>()
    let closes = LockedValue(0)
    let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: configuration), on: loop, handler: .callback { endpoint in
            endpoint.onMessage = reversing
            endpoint.onClose = { reason in
                closes.withLock { $0 += 1 }
                firstClose.fulfill(reason)
            }
        }).startAndWait().address
    return (address, firstClose, closes)
}

/// Checks that a good client still gets correct answers from the server.
func checkServerStillServes(_ harness: LoopHarness, _ address: SocketAddress,
                            file: StaticString = #filePath, line: UInt = #line) throws {
    let loop = harness.loop
    let done = Promise<Result<[UInt8], RPCError>>()
    try harness.sync {
        RPCClient.connect(to: address, on: loop, configuration: testConfiguration()) { result in
            guard case .success(let client) = result else { return XCTFail("\(result)") }
            client.send([1, 2, 3]) { response in done.fulfill(response); client.close() }
        }
    }
    XCTAssertEqual(try done.wait("a good client's call").get(), [3, 2, 1], file: file, line: line)
}

final class HostilePeerTests: XCTestCase {
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
        let expected = PeerInfo(keepaliveInterval: 0.1, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes
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
        let serverHandshake = PeerInfo(keepaliveInterval: 0.1, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes
        let answer = PacketWriter.frame(isResponse: true, id: 7, payload: Array("ih".utf8))
        _ = try peer.waitForFrame(answer, at: serverHandshake.count, "the answer to message 7")
        XCTAssertFalse(server.firstClose.isFulfilled, "the unknown response id closed nothing")
    }

    func testAProtocolOnePeerGetsNoBigPackets() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let endpointBox = Promise<LoopBound<RPCEndpoint>>()
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: loop, handler: .callback {
                $0.onMessage = reversing
                endpointBox.fulfill(LoopBound($0, loop: loop))
            }).startAndWait().address
        let peer = try RawPeer(harness: harness, address: address)
        // A handshake announcing protocol 1, then a message: its answer proves the handshake was read.
        try peer.send(harness, PeerInfo(protocolVersion: 1, keepaliveInterval: 10).handshakeBytes
                      + PacketWriter.frame(isResponse: false, id: 9, payload: [1, 2]))
        let endpoint = try endpointBox.wait("endpoint")
        let serverHandshake = PeerInfo(keepaliveInterval: 0.1, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes
        var offset = try peer.waitForFrame(PacketWriter.frame(isResponse: true, id: 9, payload: [2, 1]),
                                           at: serverHandshake.count, "the answer to message 9")
        XCTAssertEqual(try harness.sync { endpoint.value.peerInfo?.protocolVersion }, 1)
        let big = try harness.call(endpoint, [UInt8](repeating: 1, count: 70000), timeout: .milliseconds(100))
        guard case .failure(let error) = big, case .peerTooOld(_, 70000, 1) = error.reason else { return XCTFail("expected peerTooOld, got \(big)") }
        XCTAssertFalse(try harness.sync { endpoint.value.isClosing }, "refusing one call does not close the endpoint")
        // A small message still goes out, as a short MESSAGE with the first id.
        try harness.sync { endpoint.value.send([5, 6]) { _ in } }
        offset = try peer.waitForFrame(PacketWriter.frame(isResponse: false, id: 65530, payload: [5, 6]),
                                       at: offset, "the small message")
        XCTAssertFalse(peer.received.withLock { $0 }.contains(PacketType.messageBig.rawValue), "no MESSAGE_BIG type byte was sent")
    }
}

/// Hostile input on each extension packet, from a peer that announced the
/// extensions; and the race of a CANCEL crossing the answer on the wire.
extension HostilePeerTests {
    private var extendedHandshake: [UInt8] { PeerInfo(keepaliveInterval: 10, extensions: .all).handshakeBytes }

    private func packet(_ type: PacketType, id: UInt16 = 0, total: Int = 0, payload: [UInt8] = []) -> [UInt8] {
        PacketWriter.extensionPacket(type, id: id, total: total, payload: payload)
    }

    func testAnExtensionPacketFromAPeerThatDidNotAnnounceItIsAnUnknownType() throws {
        try checkViolation(handshake + packet(.goAway), expect: .unknownPacketType(13, streamOffset: UInt64(handshake.count)))
    }

    func testACancelAcknowledgementForAnIdNeverCancelledClosesOnlyThatConnection() throws {
        try checkViolation(extendedHandshake + packet(.cancelAcknowledged, id: 77), expect: .unexpectedCancelAcknowledgement(id: 77))
    }

    func testAChunkPastTheAnnouncedLengthClosesOnlyThatConnection() throws {
        try checkViolation(extendedHandshake + packet(.messageStart, id: 1, total: 100_000)
                           + packet(.messageChunk, id: 1, payload: [UInt8](repeating: 1, count: 60_000))
                           + packet(.messageChunk, id: 1, payload: [UInt8](repeating: 1, count: 40_001)),
                           expect: .chunkPastEnd(packet: .messageChunk, id: 1, total: 100_000, through: 100_001))
    }

    func testAChunkForAnIdNeverStartedClosesOnlyThatConnection() throws {
        try checkViolation(extendedHandshake + packet(.responseChunk, id: 9, payload: [1, 2, 3]),
                           expect: .chunkNotStarted(packet: .responseChunk, id: 9))
    }

    func testAStartTwiceOrOneTooManyClosesOnlyThatConnection() throws {
        try checkViolation(extendedHandshake + packet(.messageStart, id: 1, total: 70_000) + packet(.messageStart, id: 1, total: 70_000),
                           expect: .transferAlreadyStarted(packet: .messageStart, id: 1))
        let five = (1...5).flatMap { packet(.messageStart, id: UInt16($0), total: 70_000) }
        try checkViolation(extendedHandshake + five, expect: .tooManyTransfers(packet: .messageStart, limit: Wire.maximumTransfers))
    }

    func testAStartOverTheMaximumPayloadClosesBeforeAllocating() throws {
        try checkViolation(extendedHandshake + packet(.responseStart, id: 1, total: Int(UInt32.max)),
                           expect: .payloadTooLarge(declared: Int(UInt32.max), limit: 64 << 20, packet: .responseStart))
    }

    func testAnErrorReasonOverTheLimitClosesOnlyThatConnection() throws {
        try checkViolation(extendedHandshake + packet(.error, id: 65530, payload: [UInt8](repeating: 0x61, count: 1025)),
                           expect: .errorReasonTooLong(declared: 1025, limit: Wire.maximumErrorReason))
    }

    /// A peer that takes chunks but never acknowledges them reads nothing as
    /// far as flow control is concerned: the server's window fills, and the
    /// write timeout (0.5 s here) cuts it off, as it cuts off a peer whose
    /// socket stops taking bytes.
    func testAPeerThatNeverAcknowledgesChunksIsCutOffByTheWriteTimeout() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try startServer(harness, configuration: testConfiguration {
            $0.writeTimeout = .milliseconds(500)
        })
        let peer = try RawPeer(harness: harness, address: server.address)
        let big = [UInt8](repeating: 7, count: 3 << 20)
        var stream = extendedHandshake + packet(.messageStart, id: 1, total: big.count)
        for start in stride(from: 0, to: big.count, by: 60_000) {
            stream += packet(.messageChunk, id: 1, payload: Array(big[start..<min(start + 60_000, big.count)]))
        }
        try peer.send(harness, stream) // and never a CHUNK_ACK for the 3 MiB answer
        guard case .connectionFailed(let failure) = try server.firstClose.wait("the server's close").kind,
              case .writeTimedOut = failure.kind else {
            return XCTFail("expected the write timeout")
        }
        XCTAssertLessThan(peer.received.withLock { $0.count }, 2 << 20, "the answer stopped at the window")
        try checkServerStillServes(harness, server.address)
    }

    /// The peer sends a message, the server answers at once, and the peer's
    /// CANCEL for it crosses the answer: the server acknowledges the unknown
    /// id and goes on.
    func testACancelCrossingTheAnswerIsAcknowledgedAndHarmless() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try startServer(harness)
        let peer = try RawPeer(harness: harness, address: server.address)
        try peer.send(harness, extendedHandshake + PacketWriter.frame(isResponse: false, id: 5, payload: [1, 2]))
        var offset = try peer.waitForFrame(PeerInfo(keepaliveInterval: 0.1, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes, at: 0, "the handshake")
        offset = try peer.waitForFrame(PacketWriter.frame(isResponse: true, id: 5, payload: [2, 1]), at: offset, "the answer")
        try peer.send(harness, packet(.cancel, id: 5) + PacketWriter.frame(isResponse: false, id: 6, payload: [3, 4]))
        offset = try peer.waitForFrame(packet(.cancelAcknowledged, id: 5), at: offset, "the acknowledgement")
        _ = try peer.waitForFrame(PacketWriter.frame(isResponse: true, id: 6, payload: [4, 3]), at: offset, "the next answer")
        XCTAssertFalse(peer.closed.isFulfilled)
    }

    /// A client's call times out; its CANCEL crosses the server's answer,
    /// which arrives after the cancel and must be ignored; the id stays
    /// reserved until the CANCEL_ACK, so the late answer can reach no other call.
    func testALateAnswerCrossingTheCancelReachesNoCall() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        // The raw side plays the server: it reads what the client writes.
        let accepted = Promise<LoopBound<Connection>>()
        let fromClient = LockedValue([UInt8]())
        let listener = try harness.sync {
            LoopBound(try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0)) { connection in
                connection.onRead = { bytes in fromClient.withLock { $0 += bytes }; return bytes.count }
                accepted.fulfill(LoopBound(connection, loop: loop))
            }, loop: loop)
        }
        let client = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
        try harness.sync {
            RPCClient.connect(to: listener.value.address, on: loop, configuration: testConfiguration()) { result in
                client.fulfill(result.map { LoopBound($0, loop: loop) })
            }
        }
        let connection = try accepted.wait("the client's connection")
        let handshake = extendedHandshake, acknowledgement = packet(.cancelAcknowledged, id: 65530)
        try harness.sync { try connection.value.write(handshake) }
        let endpoint = try client.wait("connect").get()
        guard case .failure(let error) = try harness.call(endpoint, [1], timeout: .milliseconds(30), closeOnError: false),
              error.code == .deadlineExceeded else {
            return XCTFail("expected the timeout")
        }
        try waitUntil("the CANCEL") {
            let events = (try? parseInChunks(fromClient.withLock { $0 }, allowTrailing: true, extensions: .all) { Int.max }) ?? []
            return events.filter { $0 != .keepalive } == [.handshake(PeerInfo(keepaliveInterval: 0.1, extensions: .all, maximumPayloadSize: 64 << 20)),
                                                          .message(id: 65530, payload: [1]), .cancel(id: 65530)]
        }
        XCTAssertEqual(try harness.sync { endpoint.value.reservedCallIDCount }, 1, "the id is reserved until acknowledged")
        // The answer crossed the cancel: it arrives first, then the acknowledgement.
        let late = Promise<Result<[UInt8], RPCError>>()
        try harness.sync {
            try connection.value.write(PacketWriter.frame(isResponse: true, id: 65530, payload: [9]))
            endpoint.value.send([2], timeout: .seconds(20)) { late.fulfill($0) } // id 65531: 65530 is still taken
            try connection.value.write(acknowledgement)
        }
        try waitUntil("the id freed") { (try? harness.sync { endpoint.value.reservedCallIDCount }) == 0 }
        try harness.sync { try connection.value.write(PacketWriter.frame(isResponse: true, id: 65531, payload: [2, 2])) }
        XCTAssertEqual(try late.wait("the next call").get(), [2, 2], "the late answer [9] reached no call")
        XCTAssertFalse(try harness.sync { endpoint.value.isClosing })
        try harness.sync { endpoint.value.close(); listener.value.close() }
    }
}
