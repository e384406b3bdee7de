import Foundation
import UVLoop
@testable import UVRPC
import UVTestSupport
import XCTest

/// The negotiated extensions (Docs/PROTOCOL.md, "Extensions") between two
/// UVRPC peers, and their absence towards a peer that did not announce them.
final class ExtensionTests: XCTestCase {
    /// An error whose text a handler shows its callers.
    struct Refused: RPCPublicError, CustomStringConvertible {
        var code: RPCError.Code { .permissionDenied }
        var description: String { "refused by the test handler" }
    }
    /// An error whose text stays on the server.
    struct Secret: Error, CustomStringConvertible { var description: String { "database password is hunter2" } }

    // MARK: Handshake

    func testTheHandshakeAnnouncesExtensionsAndIsTheReferencesWithoutThem() {
        var configuration = RPCEndpoint.Configuration()
        XCTAssertEqual(String(decoding: PeerInfo(keepaliveInterval: 10.73, extensions: configuration.extensions).handshakeBytes.dropFirst(4), as: UTF8.self),
                       #"{"p":2,"k":10.73,"x":["error","cancel","chunk","goaway","meta"]}"#)
        configuration.extensions = []
        // Byte for byte the reference's handshake (shared PROTOCOL.md).
        XCTAssertEqual(configuration.keepaliveInterval, .milliseconds(10_730))
        XCTAssertEqual(PeerInfo(keepaliveInterval: 10.73, extensions: configuration.extensions).handshakeBytes,
                       [0x00, 0x00, 0x00, 0x11, 0x7b, 0x22, 0x70, 0x22, 0x3a, 0x32, 0x2c, 0x22, 0x6b, 0x22, 0x3a,
                        0x31, 0x30, 0x2e, 0x37, 0x33, 0x7d])
    }

    /// The byte vectors of Docs/PROTOCOL.md, "Extensions".
    func testTheExtensionByteVectors() {
        func x(_ type: PacketType, id: UInt16 = 0, total: Int = 0, payload: [UInt8] = []) -> [UInt8] {
            PacketWriter.extensionPacket(type, id: id, total: total, payload: payload)
        }
        XCTAssertEqual(PeerInfo(keepaliveInterval: 10.73, extensions: .all).handshakeBytes,
                       [0x00, 0x00, 0x00, 0x40] + Array(#"{"p":2,"k":10.73,"x":["error","cancel","chunk","goaway","meta"]}"#.utf8))
        XCTAssertEqual(x(.error, id: 7, payload: Array("no".utf8)), [0x06, 0x00, 0x07, 0x05, 0x00, 0x02, 0x6e, 0x6f])
        XCTAssertEqual(PacketWriter.extensionPacket(.error, id: 7, code: RPCError.Code.unavailable.rawValue, payload: Array("no".utf8)),
                       [0x06, 0x00, 0x07, 0x03, 0x00, 0x02, 0x6e, 0x6f])
        XCTAssertEqual(PeerInfo(keepaliveInterval: 10.73, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes,
                       [0x00, 0x00, 0x00, 0x4d] + Array(#"{"p":2,"k":10.73,"x":["error","cancel","chunk","goaway","meta"],"m":67108864}"#.utf8))
        XCTAssertEqual(x(.cancel, id: 7), [0x07, 0x00, 0x07])
        XCTAssertEqual(x(.cancelAcknowledged, id: 7), [0x08, 0x00, 0x07])
        XCTAssertEqual(x(.messageStart, id: 1, total: 70000), [0x09, 0x00, 0x01, 0x00, 0x01, 0x11, 0x70])
        XCTAssertEqual(x(.responseStart, id: 1, total: 70000), [0x0a, 0x00, 0x01, 0x00, 0x01, 0x11, 0x70])
        XCTAssertEqual(x(.messageChunk, id: 1, payload: Array("abc".utf8)), [0x0b, 0x00, 0x01, 0x00, 0x03, 0x61, 0x62, 0x63])
        XCTAssertEqual(x(.responseChunk, id: 1, payload: Array("abc".utf8)), [0x0c, 0x00, 0x01, 0x00, 0x03, 0x61, 0x62, 0x63])
        XCTAssertEqual(x(.goAway), [0x0d])
        XCTAssertEqual(x(.chunkAcknowledged, total: 70000), [0x0e, 0x00, 0x01, 0x11, 0x70])
    }

    func testExtensionNamesAreReadLiberally() throws {
        func read(_ json: String) throws -> RPCExtensions {
            try Array(json.utf8).withUnsafeBytes { try PeerInfo(json: $0) }.extensions
        }
        XCTAssertEqual(try read(#"{"k":1,"x":["goaway","later-extension",3,{"a":[]},"error"],"p":2}"#), [.goAway, .errorAnswers])
        XCTAssertEqual(try read(#"{"p":2,"k":10.73,"x":{"ext":[1,2]}}"#), [], "an x that is not a list is ignored")
        XCTAssertEqual(try read(#"{"p":2,"k":1,"x":"error"}"#), [])
        XCTAssertEqual(try read(#"{"p":2,"k":1,"x":[]}"#), [])
        XCTAssertEqual(try read(#"{"p":2,"k":1}"#), [])
        XCTAssertThrowsError(try read(#"{"p":2,"k":1,"x":["error",]}"#), "still strict JSON")
    }

    func testTheLargestPayloadIsAnnouncedAndReadLiberally() throws {
        func read(_ json: String) throws -> Int? {
            try Array(json.utf8).withUnsafeBytes { try PeerInfo(json: $0) }.maximumPayloadSize
        }
        XCTAssertEqual(try read(#"{"p":2,"k":1,"x":[],"m":1000}"#), 1000)
        XCTAssertNil(try read(#"{"p":2,"k":1,"m":1.5}"#), "not a whole number: ignored")
        XCTAssertNil(try read(#"{"p":2,"k":1,"m":"big"}"#), "not a number: ignored")
        XCTAssertNil(try read(#"{"p":2,"k":1,"m":99999999999}"#), "over the protocol's limit: ignored")
        XCTAssertNil(try read(#"{"p":2,"k":1}"#))
        var configuration = RPCEndpoint.Configuration()
        configuration.maximumPayloadSize = 1000
        XCTAssertTrue(String(decoding: configuration.handshakeBytes.dropFirst(4), as: UTF8.self).hasSuffix(#","m":1000}"#))
        configuration.extensions = []
        XCTAssertEqual(String(decoding: configuration.handshakeBytes.dropFirst(4), as: UTF8.self), #"{"p":2,"k":10.73}"#,
                       "without extensions, the reference's handshake")
    }

    func testACallOverThePeersLimitFailsAtOnceAndTheConnectionKeepsServing() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let pair = try harness.endpointPair(server: testConfiguration { $0.maximumPayloadSize = 100_000 })
        XCTAssertEqual(try harness.call(pair.client, [1, 2]).get(), [2, 1], "the peer's handshake is in")
        // A 60 s timeout: only a failure before sending can end it within the test's wait.
        guard case .failure(let error) = try harness.call(pair.client, [UInt8](repeating: 7, count: 100_001), timeout: .seconds(60)) else {
            return XCTFail("a call over the peer's limit was sent")
        }
        XCTAssertEqual(error.code, .resourceExhausted)
        XCTAssertFalse(error.requestWasSent)
        XCTAssertFalse(error.isRetryable, "the same payload will never fit")
        XCTAssertTrue(error.message.contains("100001 bytes") && error.message.contains("at most 100000"), error.message)
        let fits = [UInt8](repeating: 3, count: 100_000)
        XCTAssertEqual(try harness.call(pair.client, fits).get(), fits, "the connection keeps serving")
        XCTAssertFalse(try harness.sync { pair.client.value.isClosing })
    }

    func testAnAnswerOverTheCallersLimitIsAnErrorAnswerAndTheConnectionKeepsServing() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let refusal = Promise<String>()
        let pair = try harness.endpointPair(client: testConfiguration { $0.maximumPayloadSize = 1000 }, serverHandler: { request in
            if request.payload.first == 1 {
                do { try request.respond([UInt8](repeating: 9, count: 1001)) } catch { refusal.fulfill("\(error)") }
            } else {
                try request.respond(Array(request.payload))
            }
        })
        // A 60 s timeout: only the error answer can end the call within the test's wait.
        guard case .failure(let error) = try harness.call(pair.client, [1], timeout: .seconds(60)) else {
            return XCTFail("an answer over the caller's limit was sent")
        }
        XCTAssertEqual(error.code, .resourceExhausted)
        XCTAssertTrue(error.message.contains("1001 bytes is over the caller's limit of 1000"), error.message)
        XCTAssertTrue(try refusal.wait("the handler's error").contains("the peer takes at most 1000"))
        XCTAssertEqual(try harness.call(pair.client, [2, 3]).get(), [2, 3], "the connection keeps serving")
        XCTAssertFalse(try harness.sync { pair.client.value.isClosing })
    }

    // MARK: Error answers

    func testAFailingHandlerFailsTheCallAtOnceWithItsReason() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let kept = LoopBoundBox.sendingValue([RPCRequest](), loop: harness.loop)
        let longReason = String(repeating: "é", count: 1000) // 2000 bytes of UTF-8
        let pair = try harness.endpointPair(serverHandler: { request in
            switch request.payload.first {
            case 0: throw Refused()
            case 1: kept.value.append(request) // failed later
            case 2: throw RPCError(code: .invalidArgument, message: longReason)
            default: throw Secret()
            }
        })
        // A 60 s timeout: only an error answer can end these calls within the test's wait.
        guard case .failure(let error) = try harness.call(pair.client, [0], timeout: .seconds(60)),
              case .peerFailed(_, _, let code, let reason) = error.reason else {
            return XCTFail("expected an error answer")
        }
        XCTAssertEqual(reason, "refused by the test handler", "an RPCPublicError's text reaches the caller")
        XCTAssertEqual(code, .permissionDenied, "with its code")
        XCTAssertEqual(error.code, .permissionDenied)
        XCTAssertTrue(error.requestWasSent)
        guard case .failure(let hidden) = try harness.call(pair.client, [3], timeout: .seconds(60)),
              case .peerFailed(_, _, .handlerFailed, let hiddenReason) = hidden.reason else {
            return XCTFail("expected an error answer")
        }
        XCTAssertEqual(hiddenReason, "the handler failed", "a private error's text never reaches the caller")
        XCTAssertFalse(hidden.description.contains("hunter2"))
        let later = Promise<Result<[UInt8], RPCError>>()
        try harness.sync { pair.client.value.send([1], timeout: .seconds(60)) { later.fulfill($0) } }
        try waitUntil("the kept request") { (try? harness.sync { kept.value.count }) == 1 }
        try harness.sync {
            try kept.value[0].fail(RPCError(code: .notFound, message: "no such key"))
            XCTAssertThrowsError(try kept.value[0].respond([1]), "a failed request is answered")
        }
        guard case .failure(let keptError) = try later.wait("the failed kept request"),
              case .peerFailed(_, _, .notFound, "no such key") = keptError.reason else {
            return XCTFail("expected the kept request's error")
        }
        guard case .failure(let long) = try harness.call(pair.client, [2], timeout: .seconds(60)),
              case .peerFailed(_, _, .invalidArgument, let cut) = long.reason else {
            return XCTFail("expected an error answer")
        }
        XCTAssertLessThanOrEqual(cut.utf8.count, Wire.maximumErrorReason)
        XCTAssertGreaterThan(cut.utf8.count, Wire.maximumErrorReason - 2, "cut at a character boundary, not shorter")
        XCTAssertFalse(try harness.sync { pair.client.value.isClosing }, "an error answer does not close the endpoint")
    }

    func testAFailingAsyncHandlerFailsTheCallAtOnce() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: harness.loop, handler: .async { request, _ in
            if request.payload == [0] { throw Refused() }
            return request.payload
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        do {
            _ = try await client.send([0], timeout: .seconds(60))
            XCTFail("expected an error answer")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .permissionDenied)
            XCTAssertTrue(error.message.hasSuffix("failed in the peer: refused by the test handler"), error.message)
        }
        let echoed = try await client.send([5])
        XCTAssertEqual(echoed, [5])
        await client.close()
        await server.stop()
    }

    // MARK: A peer that did not announce them

    func testARecordedReferenceSessionGetsNoExtensionPacket() throws {
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
        let stream = try [UInt8](Data(contentsOf: fixtures.appendingPathComponent("efro-session-c2s.bin")))
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("efro-session-c2s.json"))) as! [[String: Any]]
        let messages = index.filter { ($0["type"] as? String)?.hasPrefix("MESSAGE") == true }.count
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let handled = LockedValue(0)
        let serverEndpoint = Promise<LoopBound<RPCEndpoint>>()
        // Quiet keepalives, so the reply is the handshake alone; every handler fails.
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration(keepaliveInterval: .seconds(60))), on: loop, handler: .callback { endpoint in
                endpoint.onMessage = { _ in handled.withLock { $0 += 1 }; throw Refused() }
                serverEndpoint.fulfill(LoopBound(endpoint, loop: loop))
            }).startAndWait().address
        let peer = try RawPeer(harness: harness, address: address)
        try peer.send(harness, stream)
        try waitUntil("the server handled every recorded message") { handled.withLock { $0 } == messages }
        let endpoint = try serverEndpoint.wait("the server's endpoint")
        // Draining would send GOAWAY to a peer that takes it.
        try harness.sync {
            XCTAssertEqual(endpoint.value.activeExtensions, [])
            endpoint.value.close(gracePeriod: .seconds(10))
        }
        _ = try peer.closed.wait("the drained close")
        let handshake = PeerInfo(keepaliveInterval: 60, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes
        let received = peer.received.withLock { $0 }
        XCTAssertEqual(Array(received.prefix(handshake.count)), handshake)
        XCTAssertEqual(Array(received.dropFirst(handshake.count)), [],
                       "no ERROR for the \(messages) failed messages, no GOAWAY: nothing after the handshake")
    }

    func testAPeerWithoutChunkingGetsWholeBigPackets() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let pair = try harness.endpointPair(client: testConfiguration { $0.extensions = [.errorAnswers, .cancellation, .goAway] })
        let payload = pseudoRandomBytes(count: 300_000, seed: 3)
        XCTAssertEqual(try harness.call(pair.client, payload).get(), payload.reversed())
        XCTAssertEqual(try harness.sync { pair.server.value.activeExtensions }, [.errorAnswers, .cancellation, .goAway])
    }

    // MARK: Cancellation

    func testCancellingACallCancelsTheAsyncHandlerAndFreesTheIdOnBothSides() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let started = Promise<Void>()
        let sawCancellation = Promise<Bool>()
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: harness.loop, handler: .async { request, _ in
            guard request.payload == [0] else { return request.payload }
            started.fulfill(())
            // Waits for its cancellation (bounded: the test fails, not hangs, without it).
            for _ in 0..<2000 where !Task.isCancelled { try? await Task.sleep(for: .milliseconds(10)) }
            sawCancellation.fulfill(Task.isCancelled)
            return [9] // must not be sent
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        let call = Task { try await client.send([0], timeout: .seconds(60)) }
        try started.wait("the handler to start")
        call.cancel()
        do {
            _ = try await call.value
            XCTFail("the call was answered")
        } catch is CancellationError {}
        XCTAssertTrue(try sawCancellation.wait("the handler's end"), "the handler's task was cancelled")
        // The client keeps the id until the server's CANCEL_ACK, then frees it.
        try waitUntil("the id freed") { (try? harness.sync { client.endpoint.reservedCallIDCount }) == 0 }
        let serverSide = await server.endpoints.first { _ in true }!
        try waitUntil("the server's handler ended") {
            (try? harness.sync { serverSide.endpoint.runningAsyncHandlerCount }) == 0
        }
        // The worker that ran the cancelled handler ended; the others go on.
        let results = try await withThrowingTaskGroup(of: [UInt8].self) { group in
            for i in 0..<50 { group.addTask { try await client.send([1, UInt8(i)]) } }
            return try await group.reduce(into: 0) { n, _ in n += 1 }
        }
        XCTAssertEqual(results, 50)
        XCTAssertFalse(try harness.sync { client.endpoint.isClosing })
        await client.close()
        await server.stop()
    }

    func testACallThatTimesOutWithoutClosingCancelsTheKeptRequest() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let kept = LoopBoundBox.sendingValue([RPCRequest](), loop: harness.loop)
        let pair = try harness.endpointPair(serverHandler: { request in kept.value.append(request) })
        guard case .failure(let error) = try harness.call(pair.client, [0], timeout: .milliseconds(20), closeOnError: false),
              error.code == .deadlineExceeded else {
            return XCTFail("expected a timeout")
        }
        try waitUntil("the server saw the cancel") { (try? harness.sync { kept.value.first?.isCancelled }) == true }
        try waitUntil("the client's id freed") { (try? harness.sync { pair.client.value.reservedCallIDCount }) == 0 }
        try harness.sync {
            XCTAssertThrowsError(try kept.value[0].respond([1])) { error in
                XCTAssertEqual(error as? RPCResponseError, .cancelled(endpoint: pair.server.value.label, messageID: 65530))
            }
            XCTAssertEqual(pair.server.value.unansweredRequestCount, 0)
        }
    }

    // MARK: Chunking

    func testBigCallsAloneKeepTheBulkWindow() throws {
        // A chunked call or answer is not small traffic: big calls one after
        // another, with no small packet anywhere on the loop, keep the bulk
        // window (they once kept the latency window, a third of the throughput).
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let pair = try harness.endpointPair()
        let payload = pseudoRandomBytes(count: 300_000, seed: 5)
        for _ in 0..<3 {
            XCTAssertEqual(try harness.call(pair.client, payload).get(), payload.reversed())
            try harness.sync {
                XCTAssertEqual(pair.client.value.chunkWindow, RPCEndpoint.bulkWindow, "the client, after its big calls")
                XCTAssertEqual(pair.server.value.chunkWindow, RPCEndpoint.bulkWindow, "the server, after its big answers")
            }
        }
        // One small call on the loop brings the latency window back.
        XCTAssertEqual(try harness.call(pair.client, [1, 2, 3]).get(), [3, 2, 1])
        try harness.sync { XCTAssertEqual(pair.client.value.chunkWindow, RPCEndpoint.latencyWindow) }
    }

    func testAHundredMebibytesInChunksInterleaveWithTenThousandSmallCalls() throws {
        let size = sanitizerInUse == nil ? 100 << 20 : 16 << 20
        let small = 10_000
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let big = pseudoRandomBytes(count: size, seed: 15)
        let smallBeforeBig = LockedValue(-1)
        let smallSeen = LoopBoundBox.sendingValue(0, loop: harness.loop)
        let configuration = testConfiguration { $0.maximumPayloadSize = 128 << 20 }
        let pair = try harness.endpointPair(server: configuration, client: configuration, serverHandler: { request in
            if request.payload.count == size {
                // Every byte checked on arrival, then echoed (chunked back).
                // (memcmp: a byte-wise comparison in a debug build would hold the loop for seconds)
                XCTAssertEqual(big.withUnsafeBytes { memcmp($0.baseAddress!, request.payload.baseAddress!, size) }, 0,
                               "the big payload arrived intact")
                smallBeforeBig.withLock { $0 = smallSeen.value }
                try request.respond(request.payload)
            } else {
                smallSeen.value += 1
                try request.respond(request.payload)
            }
        })
        let bigDone = Promise<String>()
        let smallDone = Promise<Int>()
        try harness.sync {
            let client = pair.client.value
            XCTAssertEqual(client.activeExtensions, .all)
            client.send(big, timeout: .seconds(120)) { result in
                switch result {
                case .success(let echoed): bigDone.fulfill(echoed == big ? "intact" : "\(echoed.count) bytes, not the payload")
                case .failure(let error): bigDone.fulfill("\(error)")
                }
            }
            // Written right after the first window of chunks: they reach the
            // server long before the big payload's last chunk.
            var answered = 0
            for i in 0..<small {
                let payload = [UInt8(i & 0xff), UInt8(i >> 8)]
                client.send(payload, timeout: .seconds(120)) { result in
                    if (try? result.get()) == payload { answered += 1 } else { XCTFail("small call \(i): \(result)") }
                    if answered == small { smallDone.fulfill(answered) }
                }
            }
        }
        XCTAssertEqual(try smallDone.wait("the small calls", seconds: 120), small)
        XCTAssertEqual(try bigDone.wait("the big call", seconds: 120), "intact", "the echoed big payload, every byte")
        XCTAssertEqual(smallBeforeBig.withLock { $0 }, small, "every small message arrived before the big one was complete")
        try harness.sync {
            // At most the bulk window (1 MiB, before any small packet was written) and the small calls.
            XCTAssertLessThanOrEqual(pair.client.value.connection.peakPendingWriteBytes, 2 << 20,
                                     "the big payload never sat whole in the outgoing buffer")
        }
    }

    /// A server whose chunked answers pile up past its limit stops reading
    /// new messages (backpressure), and with them the client's CHUNK_ACKs:
    /// its chunks must then go without acknowledgements, or neither side moves.
    func testChunkedAnswersPilingUpPauseReadingWithoutDeadlock() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = testConfiguration { $0.maximumPendingWriteBytes = 1 << 20 }
        let pair = try harness.endpointPair(server: server)
        let payloads = (0..<8).map { pseudoRandomBytes(count: 3 << 20, seed: UInt64(20 + $0)) }
        let answered = Promise<Int>()
        try harness.sync {
            var ok = 0, ended = 0
            for payload in payloads + payloads.map({ Array($0.prefix(100)) }) {
                pair.client.value.send(payload, timeout: .seconds(60)) { result in
                    if (try? result.get()) == payload.reversed() { ok += 1 }
                    ended += 1
                    if ended == 2 * payloads.count { answered.fulfill(ok) }
                }
            }
        }
        XCTAssertEqual(try answered.wait("every call", seconds: 60), 2 * payloads.count)
    }

    // MARK: Go-away

    func testGoAwayStopsNewCallsAndLetsCallsInFlightFinish() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let kept = LoopBoundBox.sendingValue([RPCRequest](), loop: harness.loop)
        let pair = try harness.endpointPair(serverHandler: { request in kept.value.append(request) })
        let inFlight = Promise<Result<[UInt8], RPCError>>()
        try harness.sync { pair.client.value.send([1], timeout: .seconds(60)) { inFlight.fulfill($0) } }
        try waitUntil("the call in flight") { (try? harness.sync { kept.value.count }) == 1 }
        try harness.sync { pair.server.value.close(gracePeriod: .seconds(30)) }
        try waitUntil("the client heard go-away") { (try? harness.sync { pair.client.value.peerIsGoingAway }) == true }
        guard case .failure(let error) = try harness.call(pair.client, [2]), case .peerGoingAway = error.reason else {
            return XCTFail("a new call was sent to a draining peer")
        }
        try harness.sync { try kept.value[0].respond([7]) }
        XCTAssertEqual(try inFlight.wait("the call in flight").get(), [7])
        XCTAssertEqual(try pair.serverClosed.wait("the server's drain"), .drained)
    }

    func testAPoolMovesCallsOffAConnectionWhoseServerIsDraining() async throws {
        let group = try EventLoopGroup(name: "goaway", loopCount: 1)
        let loop = group.loops[0]
        let kept = LockedValue<LoopBound<RPCRequest>?>(nil)
        func server(_ name: UInt8) async throws -> RunningServer {
            try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: loop, handler: .callback { endpoint in
                endpoint.onMessage = { request in
                    if Array(request.payload) == [0] { kept.withLock { $0 = LoopBound(request, loop: loop) }; return }
                    try request.respond([name])
                }
            }).start()
        }
        let a = try await server(1), b = try await server(2)
        let poolConfiguration = RPCClientPool.Configuration(endpoint: testConfiguration())
        let pool = await RPCClientPool.connect(to: [a.address, b.address], on: group, configuration: poolConfiguration)
        // Hold a call on server 1, then drain it.
        let held = Task { try await pool.send([0], timeout: .seconds(60)) }
        try waitUntil("a held call") { kept.withLock { $0 != nil } }
        let heldOnA = try await loop.submit { kept.withLock { $0!.value.endpoint.connection.localAddress?.port } } == a.address.port
        let drained = heldOnA ? a : b, other: UInt8 = heldOnA ? 2 : 1
        let draining = Task { await drained.stop(gracePeriod: .seconds(30)) }
        try waitUntil("the pool saw go-away") { pool.connectionStates.filter(\.isOpen).count == 1 }
        for _ in 0..<20 {
            let answer = try await pool.send([1])
            XCTAssertEqual(answer, [other], "calls go to the server that is not draining")
        }
        try await loop.submit { try kept.withLock { try $0!.value.respond([3]) } }
        let heldAnswer = try await held.value
        XCTAssertEqual(heldAnswer, [3], "the call in flight finished")
        await draining.value
        await pool.close()
        await a.stop()
        await b.stop()
        let status = await group.shutdown()
        XCTAssertEqual(status, 0)
    }
    /// A pool closed while a connection whose server went away still
    /// finishes a call: close() closes that connection too, and returns only
    /// once it is closed (its call failed with it).
    func testClosingAPoolClosesConnectionsStillFinishingAfterGoAway() async throws {
        let group = try EventLoopGroup(name: "goaway-close", loopCount: 1)
        let loop = group.loops[0]
        let kept = LockedValue<LoopBound<RPCRequest>?>(nil)
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: loop, handler: .callback { endpoint in
            endpoint.onMessage = { request in kept.withLock { $0 = LoopBound(request, loop: loop) } }
        }).start()
        let poolConfiguration = RPCClientPool.Configuration(endpoint: testConfiguration())
        let pool = await RPCClientPool.connect(to: [server.address], on: group, configuration: poolConfiguration)
        let ended = LockedValue<String?>(nil)
        let held = Task {
            do { _ = try await pool.send([0], timeout: .seconds(60)); ended.withLock { $0 = "answered" } }
            catch { ended.withLock { $0 = "\(error)" } }
        }
        try waitUntil("a held call") { kept.withLock { $0 != nil } }
        let draining = Task { await server.stop(gracePeriod: .seconds(60)) }
        try waitUntil("the pool saw go-away") { !pool.connectionStates[0].isOpen }
        await pool.close()
        let outcome = ended.withLock { $0 }
        XCTAssertNotNil(outcome, "the call on the connection going away ended before close() returned")
        XCTAssertTrue(outcome?.contains("closed") == true, outcome ?? "")
        await held.value
        await draining.value
        let status = await group.shutdown()
        XCTAssertEqual(status, 0)
    }
}
