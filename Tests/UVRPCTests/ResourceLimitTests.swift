import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Every byte a peer can make a server hold is bounded: payloads in parts
/// by a per-connection and a server-wide budget (refused past them, never
/// buffered for a response no call waits for), trickled payloads and
/// acknowledgements by the progress timeout, acknowledgements by
/// backpressure; and a drain finishes transfers in progress but never
/// outlasts its grace period.
final class ResourceLimitTests: XCTestCase {
    private static let extendedHandshake = PeerInfo(keepaliveInterval: 10, extensions: .all).handshakeBytes
    private static let serverHandshake = PeerInfo(keepaliveInterval: 0.1, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes
    private var extendedHandshake: [UInt8] { Self.extendedHandshake }
    private var serverHandshake: [UInt8] { Self.serverHandshake }

    private static func packet(_ type: PacketType, id: UInt16 = 0, total: Int = 0, payload: [UInt8] = []) -> [UInt8] {
        PacketWriter.extensionPacket(type, id: id, total: total, payload: payload)
    }

    /// A payload as CHUNK packets of at most 60 000 bytes.
    private static func chunks(_ type: PacketType, id: UInt16, _ payload: [UInt8]) -> [UInt8] {
        stride(from: 0, to: payload.count, by: 60_000).flatMap {
            Self.packet(type, id: id, payload: Array(payload[$0..<min($0 + 60_000, payload.count)]))
        }
    }

    /// A server whose endpoints answer by reversing; hands out each endpoint and its close reason.
    private func makeServer(_ harness: LoopHarness, _ configuration: RPCEndpoint.Configuration)
        throws -> (address: SocketAddress, endpoints: LockedValue<[LoopBound<RPCEndpoint>]>, closed: Promise<RPCCloseReason>) {
        let loop = harness.loop
        let endpoints = LockedValue([LoopBound<RPCEndpoint>]())
        let closed = Promise<RPCCloseReason>()
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: configuration), on: loop, handler: .callback { endpoint in
                endpoint.onMessage = reversing
                endpoint.onClose = { closed.fulfill($0) }
                endpoints.withLock { $0.append(LoopBound(endpoint, loop: loop)) }
            }).startAndWait().address
        return (address, endpoints, closed)
    }

    private func endpoint(_ endpoints: LockedValue<[LoopBound<RPCEndpoint>]>, _ index: Int) throws -> LoopBound<RPCEndpoint> {
        try waitUntil("endpoint \(index)") { endpoints.withLock { $0.count } > index }
        return endpoints.withLock { $0[index] }
    }

    // MARK: Responses no call waits for

    func testAResponseInPartsForACallNeverMadeIsSkippedNotBuffered() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try makeServer(harness, testConfiguration())
        let peer = try RawPeer(harness: harness, address: server.address)
        // RESPONSE_START and RESPONSE_BIG (over the read buffer) for ids the server never used.
        try peer.send(harness, extendedHandshake + Self.packet(.responseStart, id: 500, total: 50 << 20)
                      + Self.packet(.responseChunk, id: 500, payload: [UInt8](repeating: 1, count: 60_000)))
        let endpoint = try endpoint(server.endpoints, 0)
        try waitUntil("the START parsed") { (try? harness.sync { endpoint.value.partialPayloadCount }) == 1 }
        XCTAssertEqual(try harness.sync { endpoint.value.heldPayloadBytes }, 0, "nothing is buffered for it")
        try peer.send(harness, Self.packet(.responseChunk, id: 500, payload: [UInt8](repeating: 1, count: 60_000))
                      + [5, 0x01, 0xF4, 0x00, 0x40, 0x00, 0x00] + [UInt8](repeating: 2, count: 1000)) // RESPONSE_BIG id 500 of 4 MiB, begun
        try waitUntil("the RESPONSE_BIG begun") { (try? harness.sync { endpoint.value.partialPayloadCount }) == 2 }
        XCTAssertEqual(try harness.sync { endpoint.value.heldPayloadBytes }, 0, "nothing is buffered for it either")
        XCTAssertFalse(server.closed.isFulfilled, "the connection goes on")
    }

    // MARK: Budgets

    /// Two messages in parts that together exceed the connection's budget:
    /// the first is answered, the second refused with an error answer, and
    /// the connection goes on.
    func testAMessagePastTheConnectionsBudgetIsRefusedWithAnErrorAnswer() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try makeServer(harness, testConfiguration { $0.maximumPayloadMemory = 1 << 20 })
        let peer = try RawPeer(harness: harness, address: server.address)
        let first = pseudoRandomBytes(count: 800_000, seed: 1), second = pseudoRandomBytes(count: 800_000, seed: 2)
        try peer.send(harness, extendedHandshake + Self.packet(.messageStart, id: 1, total: first.count)
                      + Self.packet(.messageStart, id: 2, total: second.count))
        // The refusal comes at once: an ERROR for message 2 naming the budget.
        let refusal = try waitForEvents(peer, "the error answer") { events in
            events.lazy.compactMap { if case .error(2, let reason) = $0 { reason } else { nil } }.first
        }
        XCTAssertTrue(refusal.contains("refused") && refusal.contains("its limit is 1048576"), refusal)
        let endpoint = try endpoint(server.endpoints, 0)
        XCTAssertLessThanOrEqual(try harness.sync { endpoint.value.heldPayloadBytes }, 1 << 20)
        try peer.send(harness, Self.chunks(.messageChunk, id: 1, first) + Self.chunks(.messageChunk, id: 2, second))
        // Message 1 is answered in chunks (with no small traffic the window is 1 MiB: no acknowledgement needed).
        let answer = try waitForEvents(peer, "the answer to message 1") { events in
            events.lazy.compactMap { if case .response(1, let payload) = $0 { payload } else { nil } }.first
        }
        XCTAssertEqual(answer, first.reversed(), "the message within the budget is answered")
        XCTAssertFalse(server.closed.isFulfilled, "the connection goes on")
        try waitUntil("the refused one skipped to its end") { (try? harness.sync { endpoint.value.partialPayloadCount }) == 0 }
    }

    /// Parses what `peer` received (the extensions announced) until `found` finds something in it.
    private func waitForEvents<T>(_ peer: RawPeer, _ what: String, _ found: @escaping ([Event]) -> T?) throws -> T {
        var result: T?
        try waitUntil(what, seconds: 20) {
            let bytes = peer.received.withLock { $0 }
            result = (try? parseInChunks(bytes, allowTrailing: true, extensions: .all) { Int.max }).flatMap(found)
            return result != nil
        }
        return result!
    }

    /// Two connections each within their own budget, together over the
    /// server's: the second is refused, naming the server's limit.
    func testPayloadsPastTheServersSharedBudgetAreRefused() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let configuration = testConfiguration { $0.maximumServerPayloadMemory = 1 << 20 }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: configuration), on: harness.loop, handler: .async { request, _ in Array(request.payload.reversed()) }).start()
        let first = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        let second = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        // Held halfway: each client's upload starts, then waits behind a peer that reads nothing more.
        let peer = try RawPeer(harness: harness, address: server.address)
        try peer.send(harness, extendedHandshake + Self.packet(.messageStart, id: 1, total: 800_000)
                      + Self.packet(.messageChunk, id: 1, payload: [UInt8](repeating: 1, count: 1000)))
        let open = try await withTimeout("the held upload") { () async throws -> Int in
            while true {
                let held = try await harness.loop.submit { server.payloadMemoryInUse }
                if held >= 800_000 { return held }
                try await Task.sleep(for: .milliseconds(2)) // polling a figure no callback reports
            }
        }
        XCTAssertEqual(open, 800_000)
        // A second payload of 800 000 bytes would take the server past 1 MiB.
        do {
            _ = try await first.send(pseudoRandomBytes(count: 800_000, seed: 3), timeout: .seconds(20), closeOnError: false)
            XCTFail("the server's budget must refuse it")
        } catch let error as RPCError {
            guard case .peerFailed(_, _, .resourceExhausted, let reason) = error.reason else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("the server holds") && reason.contains("its limit is 1048576"), reason)
        }
        // Small calls go on, on both connections.
        let small = try await second.send([1, 2, 3])
        XCTAssertEqual(small, [3, 2, 1])
        try peer.send(harness, Self.packet(.cancel, id: 1)) // gives the held one up: its memory comes back
        try await withTimeout("the held memory back") {
            while try await harness.loop.submit({ server.payloadMemoryInUse }) != 0 {
                try await Task.sleep(for: .milliseconds(2)) // polling a figure no callback reports
            }
        }
        let afterwards = try await first.send(pseudoRandomBytes(count: 800_000, seed: 4), timeout: .seconds(20))
        XCTAssertEqual(afterwards.count, 800_000)
        await first.close()
        await second.close()
        await server.stop()
    }

    // MARK: Progress

    /// A MESSAGE_BIG whose bytes trickle in (a byte every 20 ms: well under
    /// 64 KiB per progress timeout) is cut off although bytes keep arriving.
    func testATrickledPayloadIsCutOffByTheProgressTimeout() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try makeServer(harness, testConfiguration { $0.payloadProgressTimeout = .milliseconds(300) })
        let peer = try RawPeer(harness: harness, address: server.address)
        let connection = try peer.connected.wait("connect").get()
        try harness.sync {
            try connection.value.write(Self.extendedHandshake + [4, 0, 1, 0, 0x10, 0, 0] + [UInt8](repeating: 1, count: 10_000))
            _ = harness.loop.scheduleTimer(after: .milliseconds(20), repeating: .milliseconds(20)) {
                try? connection.value.write([1]) // stops with the connection
            }
        }
        XCTAssertEqual(try server.closed.wait("the server's close"), .payloadStalled(.milliseconds(300)))
        try checkServerStillServes(harness, server.address)
    }

    /// A peer that acknowledges a chunked answer slowly (1 KiB every 20 ms)
    /// is cut off by the progress timeout, although acknowledgements keep coming.
    func testTrickledChunkAcknowledgementsAreCutOffByTheProgressTimeout() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try makeServer(harness, testConfiguration { $0.payloadProgressTimeout = .milliseconds(300) })
        let peer = try RawPeer(harness: harness, address: server.address)
        let big = [UInt8](repeating: 7, count: 3 << 20)
        try peer.send(harness, extendedHandshake + Self.packet(.messageStart, id: 1, total: big.count) + Self.chunks(.messageChunk, id: 1, big))
        let connection = try peer.connected.wait("connect").get()
        try harness.sync {
            _ = harness.loop.scheduleTimer(after: .milliseconds(20), repeating: .milliseconds(20)) {
                try? connection.value.write(Self.packet(.chunkAcknowledged, total: 1024))
            }
        }
        XCTAssertEqual(try server.closed.wait("the server's close"), .payloadStalled(.milliseconds(300)))
        XCTAssertLessThan(peer.received.withLock { $0.count }, 2 << 20, "the answer stopped at the window")
    }

    /// A side whose own loop was held up (a blocking handler) does not blame
    /// its peer for the payloads and acknowledgements it could not read meanwhile.
    func testABlockedLoopDoesNotCountAgainstThePeersProgress() async throws {
        let serverHarness = try LoopHarness("progress-server"), clientHarness = try LoopHarness("progress-client")
        defer {
            clientHarness.shutdownCleanly()
            serverHarness.shutdownCleanly()
        }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: serverHarness.loop, handler: .async { request, _ in request.payload }).start()
        let client = try await RPCClient.connect(to: server.address, on: clientHarness.loop,
                                                 configuration: testConfiguration { $0.payloadProgressTimeout = .milliseconds(300) })
        _ = try await client.send([1]) // the handshakes are done: the big call goes in chunks at once
        let payload = pseudoRandomBytes(count: 8 << 20, seed: 8)
        let outcome = Promise<Result<[UInt8], RPCError>>()
        try clientHarness.sync {
            client.endpoint.send(payload, timeout: .seconds(60), closeOnError: false) { outcome.fulfill($0) }
            usleep(1_000_000) // the client's loop is held up with its transfer under way (not a wait for anything)
        }
        XCTAssertTrue(try outcome.wait("the big call").get() == payload, "the transfer went on after the loop was free again")
        await client.close()
        await server.stop()
    }

    // MARK: Acknowledgements under backpressure

    /// CANCELs make CANCEL_ACKs: a peer that stops reading and floods them
    /// (each for a message it sent before) makes the server stop reading at
    /// its high-water mark, as messages do, instead of piling up the acknowledgements.
    func testCancelAcknowledgementsCountAgainstBackpressure() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let count = 300_000
        let configuration = testConfiguration {
            $0.writeHighWaterMark = 64 << 10
            $0.writeLowWaterMark = 16 << 10
        }
        let (connection, peerFD) = try harness.sync { () -> (LoopBound<Connection>, Int32) in
            let (connection, peer) = try Connection.overSocketPair(on: harness.loop, options: configuration.connectionOptions)
            let endpoint = RPCEndpoint(connection: connection, configuration: configuration)
            endpoint.onMessage = { try $0.respond([]) }
            return (LoopBound(connection, loop: harness.loop), peer)
        }
        defer { close(peerFD) }
        /// Hands `bytes` over in 32 KiB reads, a loop job each (the loop flushes between them).
        func deliver(_ bytes: [UInt8], drainingThePeer: Bool) throws -> Int {
            var offset = 0, stalls = 0
            while offset < bytes.count && stalls < 50 {
                let slice = Array(bytes[offset..<min(offset + (32 << 10), bytes.count)])
                let taken = try harness.sync { slice.withUnsafeBytes { connection.value.deliverRead($0) } }
                offset += taken
                stalls = taken == 0 ? stalls + 1 : 0
                if drainingThePeer {
                    var buffer = [UInt8](repeating: 0, count: 1 << 20)
                    while buffer.withUnsafeMutableBytes({ recv(peerFD, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
                }
            }
            return offset
        }
        // The messages, read by the peer as they are answered; then a CANCEL for each, and the peer reads nothing more.
        let messages = extendedHandshake + (0..<count).flatMap { PacketWriter.frame(isResponse: false, id: UInt16($0 & 0xFFFF), payload: []) }
        XCTAssertEqual(try deliver(messages, drainingThePeer: true), messages.count)
        let cancels = (0..<count).flatMap { Self.packet(.cancel, id: UInt16($0 & 0xFFFF)) }
        let taken = try deliver(cancels, drainingThePeer: false)
        XCTAssertLessThan(taken, cancels.count, "reading stopped before every CANCEL was taken")
        let peak = try harness.sync { connection.value.peakPendingWriteBytes }
        XCTAssertLessThanOrEqual(peak, (64 << 10) + 64, "unsent acknowledgements stay at the high-water mark")
        try harness.sync { connection.value.abort() }
    }

    // MARK: Drains

    /// The server starts draining while its 16 MiB answer is being sent in
    /// chunks: the answer completes before the endpoint closes.
    func testADrainFinishesAChunkedAnswerInProgress() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let size = sanitizerInUse == nil ? 16 << 20 : 4 << 20
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: harness.loop, handler: .callback { endpoint in
            endpoint.onMessage = { request in
                try request.respond(request.payload) // a chunked transfer begins...
                endpoint.close(gracePeriod: .seconds(60)) // ...and the drain with it
            }
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        let payload = pseudoRandomBytes(count: size, seed: 5)
        let answer = try await client.send(payload, timeout: .seconds(60), closeOnError: false)
        XCTAssertTrue(answer == payload, "the whole answer arrived")
        let reason = try await client.closed()
        XCTAssertEqual(reason, .peerClosed, "then the server closed, drained")
        await server.stop()
    }

    /// A drain that starts while a message arrives in parts (chunks, then a
    /// MESSAGE_BIG without the extension) waits for the rest and answers it.
    func testADrainFinishesMessagesStillArriving() throws {
        for chunked in [true, false] {
            let harness = try LoopHarness()
            defer { harness.shutdownCleanly() }
            let server = try makeServer(harness, testConfiguration())
            let peer = try RawPeer(harness: harness, address: server.address)
            let payload = pseudoRandomBytes(count: 200_000, seed: 6)
            let (handshake, head, rest): ([UInt8], [UInt8], [UInt8])
            if chunked {
                handshake = extendedHandshake
                head = Self.packet(.messageStart, id: 1, total: payload.count) + Self.chunks(.messageChunk, id: 1, Array(payload[..<60_000]))
                rest = Self.chunks(.messageChunk, id: 1, Array(payload[60_000...]))
            } else {
                handshake = PeerInfo(keepaliveInterval: 10).handshakeBytes
                let frame = PacketWriter.frame(isResponse: false, id: 1, payload: payload)
                (head, rest) = (Array(frame[..<(frame.count / 2)]), Array(frame[(frame.count / 2)...]))
            }
            try peer.send(harness, handshake + head)
            let endpoint = try endpoint(server.endpoints, 0)
            try waitUntil("half the message received") { (try? harness.sync { endpoint.value.partialPayloadCount }) == 1 }
            try harness.sync { endpoint.value.close(gracePeriod: .seconds(60)) }
            try peer.send(harness, rest)
            XCTAssertEqual(try server.closed.wait("the drain"), .drained, "chunked: \(chunked)")
            _ = try peer.closed.wait("the peer to read to the end")
            let events = try parseInChunks(peer.received.withLock { $0 }, allowTrailing: true,
                                           extensions: chunked ? .all : []) { Int.max }
            XCTAssertTrue(events.contains(.response(id: 1, payload: payload.reversed())), "answered (chunked: \(chunked))")
        }
    }

    /// A drained endpoint whose last answer waits for a peer that reads
    /// nothing: the connection is aborted shortly after the grace period
    /// instead of waiting out the connection's close timeout (60 s here).
    func testADrainNeverOutlastsItsGracePeriodByMoreThanTheFlushAllowance() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let configuration = testConfiguration {
            $0.gracefulCloseTimeout = .seconds(60)
            $0.writeTimeout = nil // only the drain may end it
        }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: configuration), on: harness.loop, handler: .callback { $0.onMessage = reversing }).start()
        // An efro.rpc peer (no chunking): an 8 MiB MESSAGE_BIG, and it never reads the answer.
        let writer = try FDWriter(connectingTo: server.address)
        defer { writer.close() }
        writer.write(PeerInfo(keepaliveInterval: 10).handshakeBytes
                     + PacketWriter.frame(isResponse: false, id: 1, payload: [UInt8](repeating: 3, count: 8 << 20)))
        try await withTimeout("the server to answer into its buffers") {
            while try await harness.loop.submit({ server.openEndpoints.first?.endpoint.connection.pendingWriteBytes ?? 0 }) == 0 {
                try await Task.sleep(for: .milliseconds(2)) // polling a figure no callback reports
            }
        }
        // Well under the close timeout, whatever the machine's speed: the grace period plus half a second.
        try await withTimeout("the drain to end", seconds: 30) { await server.stop(gracePeriod: .milliseconds(200)) }
    }

    // MARK: TLS connections that never finish their handshake

    /// A peer that connects to a TLS server and leaves without a byte (or
    /// with half a ClientHello and then silence past the handshake timeout)
    /// is closed at once, not after the close timeout (60 s here).
    func testHalfOpenTLSConnectionsAreClosedAtOnce() throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let context = try certificates.serverContext()
        func configuration(handshakeTimeout: Duration) -> RPCEndpoint.Configuration {
            testConfiguration {
                $0.tls = context
                $0.gracefulCloseTimeout = .seconds(60)
                $0.handshakeTimeout = handshakeTimeout
            }
        }
        let server = try makeServer(harness, configuration(handshakeTimeout: .seconds(60)))
        let leaver = try FDWriter(connectingTo: server.address)
        leaver.close()
        guard case .connectionFailed(let failure) = try server.closed.wait("the leaver's endpoint to close", seconds: 30).kind,
              case .tlsTruncated = failure.kind else {
            return XCTFail("expected the stream's end before the TLS handshake")
        }
        let second = try makeServer(harness, configuration(handshakeTimeout: .milliseconds(300)))
        let halfHello = try FDWriter(connectingTo: second.address)
        defer { halfHello.close() }
        halfHello.write([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]) // a ClientHello record begun, never finished
        let reason = try second.closed.wait("the half-open endpoint to close", seconds: 30)
        XCTAssertEqual(reason, RPCCloseReason.handshakeTimeout(.milliseconds(300)))
    }
}

/// A peer that opens TLS connections faster than its limit has the rest
/// closed as they arrive, before their handshake costs the server a signature.
final class HandshakeRateTests: XCTestCase {
    func testTLSConnectionsPastAPeersRateAreClosedBeforeTheirHandshake() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let serverContext = try certificates.serverContext(), clientContext = try certificates.clientContext()
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration {
                                                  $0.tls = serverContext
                                                  // Two at once, then one every 1000 s: none more within the test.
                                                  $0.tlsHandshakesPerPeer = RPCRateLimit(perSecond: 0.001, burst: 2)
                                              }), on: harness.loop, handler: .async { request, _ in request.payload }).start()
        let clientConfiguration = testConfiguration { $0.tls = clientContext }
        var outcomes: [String] = []
        var clients: [RPCAsyncEndpoint] = []
        for i in 0..<4 {
            do {
                let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: clientConfiguration)
                clients.append(client)
                outcomes.append(try await client.send([UInt8(i)], timeout: .seconds(20), closeOnError: false) == [UInt8(i)] ? "served" : "wrong")
            } catch {
                outcomes.append("refused")
            }
        }
        XCTAssertEqual(outcomes, ["served", "served", "refused", "refused"])
        for client in clients { await client.close() }
        await server.stop()
    }

    func testTheLimiterAllowsABurstThenTheRatePerPeer() {
        let limiter = PeerRateLimiter(RPCRateLimit(perSecond: 10, burst: 3))
        let second: UInt64 = 1_000_000_000
        XCTAssertEqual((0..<4).map { _ in limiter.allow("a", now: 5 * second) }, [true, true, true, false])
        XCTAssertTrue(limiter.allow("b", now: 5 * second), "each peer has its own bucket")
        XCTAssertFalse(limiter.allow("a", now: 5 * second + second / 20), "half a token came back")
        XCTAssertTrue(limiter.allow("a", now: 5 * second + second / 10), "one token a tenth of a second")
        XCTAssertEqual((0..<4).map { _ in limiter.allow("a", now: 100 * second) }, [true, true, true, false],
                       "refilled to the burst, never past it")
    }
}
