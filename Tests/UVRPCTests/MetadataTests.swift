import Foundation
import UVLoop
@testable import UVRPC
import UVTestSupport
import XCTest

/// Call metadata and deadlines (extension `meta`, Docs/PROTOCOL.md): the
/// packet, what handlers see, deadlines that cancel and are inherited, the
/// bounds, and nothing extra towards a peer without the extension.
final class MetadataTests: XCTestCase {
    private let localhost = SocketAddress.ipv4(host: "127.0.0.1", port: 0)

    /// What a handler saw, as text a test can compare: its metadata and whether it had a deadline.
    private static func describe(_ context: RPCHandlerContext) -> [UInt8] {
        let entries = context.metadata.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        let left = context.deadline.map { ContinuousClock.now.duration(to: $0) }
        return Array("\(entries)|\(left.map { $0 > .zero && $0 <= .seconds(30) ? "deadline" : "bad deadline \($0)" } ?? "none")".utf8)
    }

    // MARK: The packet

    /// The byte vector of Docs/PROTOCOL.md, "meta".
    func testTheMetadataByteVector() throws {
        let metadata: RPCMetadata = ["tenant": "7"]
        let entries = try metadata.encoded(deadline: .milliseconds(1500)).get()
        XCTAssertEqual(entries, [0x06] + Array("tenant".utf8) + [0x00, 0x01, 0x37]
                                + [0x08] + Array("deadline".utf8) + [0x00, 0x07] + Array("1500000".utf8))
        XCTAssertEqual(PacketWriter.extensionPacket(.metadata, id: 7, payload: entries),
                       [0x0f, 0x00, 0x07, 0x00, 0x1c] + entries)
        let decoded = try entries.withUnsafeBytes { try RPCMetadata.decode($0).get() }
        XCTAssertEqual(decoded.0, metadata)
        XCTAssertEqual(decoded.deadlineMicroseconds, 1_500_000)
    }

    func testMetadataIsAnOrderedListWithRepeatableKeys() {
        var metadata: RPCMetadata = ["a": "1", "b": "2"]
        metadata.append("3", forKey: "a")
        XCTAssertEqual(metadata.values(forKey: "a"), ["1", "3"])
        XCTAssertEqual(metadata["a"], "1")
        metadata["a"] = "9"
        XCTAssertEqual(metadata.map(\.key), ["a", "b"], "setting replaces every entry under the key, at the first one's place")
        metadata["b"] = nil
        XCTAssertEqual(metadata.entries, [.init(key: "a", value: "9")])
        XCTAssertEqual("\(metadata)", "[a: 9]")
    }

    func testBadMetadataIsRefusedBeforeItIsSent() {
        XCTAssertEqual(RPCMetadata(dictionaryLiteral: ("deadline", "5")).encoded(deadline: nil), .failure(.reservedKey("deadline")))
        XCTAssertEqual(RPCMetadata(dictionaryLiteral: ("", "5")).encoded(deadline: nil), .failure(.badKey("")))
        let longKey = String(repeating: "k", count: 256)
        XCTAssertEqual(RPCMetadata(dictionaryLiteral: (longKey, "5")).encoded(deadline: nil), .failure(.badKey(longKey)))
        let big = String(repeating: "v", count: Wire.maximumMetadata - 3 - 1)
        XCTAssertEqual(try RPCMetadata(dictionaryLiteral: ("k", big)).encoded(deadline: nil).get().count, Wire.maximumMetadata,
                       "exactly the bound fits")
        XCTAssertEqual(RPCMetadata(dictionaryLiteral: ("k", big + "v")).encoded(deadline: nil), .failure(.tooLong))
    }

    func testMalformedEntriesAreNamed() {
        func why(_ bytes: [UInt8]) -> String? {
            bytes.withUnsafeBytes { raw in
                if case .failure(let failure) = RPCMetadata.decode(raw) { return failure.why }
                return nil
            }
        }
        XCTAssertNil(why([]), "no entries is fine")
        XCTAssertEqual(why([0, 0, 0]), "an empty key at byte 0")
        XCTAssertEqual(why([1, 0x61, 0]), "an entry at byte 0 runs past the end")
        XCTAssertEqual(why([1, 0x61, 0, 5, 1]), "the value at byte 4 runs past the end")
        XCTAssertEqual(why([1, 0xff, 0, 0]), "an entry at byte 0 is not UTF-8")
        XCTAssertEqual(why([8] + Array("deadline".utf8) + [0, 2] + Array("-1".utf8)),
                       "the deadline is not one decimal number of microseconds: \"-1\"")
    }

    // MARK: What handlers see

    func testMetadataAndTheDeadlineReachTheHandlersContextWholeAndChunked() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
                                         handler: .async { request, context in
            Self.describe(context) + Array("|\(request.payload.count)".utf8)
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        let metadata: RPCMetadata = ["authorization": "Bearer abc", "tenant": "7", "empty": ""]
        let plain = try await client.send([1])
        XCTAssertEqual(String(decoding: plain, as: UTF8.self), "|none|1", "no metadata, no deadline")
        let tagged = try await client.send([1], metadata: metadata)
        XCTAssertEqual(String(decoding: tagged, as: UTF8.self), "authorization=Bearer abc,tenant=7,empty=|none|1")
        let timed = try await client.send([1], timeout: .seconds(30))
        XCTAssertEqual(String(decoding: timed, as: UTF8.self), "|deadline|1", "an explicit timeout travels as the deadline")
        // A chunked message (over 65535 bytes) gets its metadata once it is complete.
        let big = try await client.send(Array(repeating: 7, count: 300_000), metadata: metadata, timeout: .seconds(30))
        XCTAssertEqual(String(decoding: big, as: UTF8.self), "authorization=Bearer abc,tenant=7,empty=|deadline|300000")
        // Many at once, interleaved with plain calls: each keeps its own.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<40 {
                group.addTask {
                    let size = i % 4 == 0 ? 100_000 : 10
                    if i % 2 == 0 {
                        let answer = try await client.send(Array(repeating: 1, count: size), metadata: ["n": "\(i)"])
                        XCTAssertEqual(String(decoding: answer, as: UTF8.self), "n=\(i)|none|\(size)")
                    } else {
                        let answer = try await client.send(Array(repeating: 1, count: size))
                        XCTAssertEqual(String(decoding: answer, as: UTF8.self), "|none|\(size)")
                    }
                }
            }
            try await group.waitForAll()
        }
        await client.close()
        await server.stop()
    }

    func testACallbackHandlerSeesTheMetadataAlsoOnAKeptRequest() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let kept = LoopBoundBox.sendingValue([RPCRequest](), loop: harness.loop)
        let pair = try harness.endpointPair(serverHandler: { request in
            XCTAssertEqual(request.metadata["tenant"], request.payload.first == 1 ? "7" : nil)
            XCTAssertFalse(request.isPastDeadline)
            kept.value.append(request) // answered later
        })
        let answers = Promise<[Result<[UInt8], any Error>]>()
        let endpoint = try harness.sync { pair.client.value.asyncEndpoint }
        Task {
            @Sendable func outcome(_ body: @Sendable () async throws -> [UInt8]) async -> Result<[UInt8], any Error> {
                do { return .success(try await body()) } catch { return .failure(error) }
            }
            async let a = outcome { try await endpoint.send([1], metadata: ["tenant": "7"], timeout: .seconds(30)) }
            async let b = outcome { try await endpoint.send([2]) }
            answers.fulfill(await [a, b])
        }
        try waitUntil("both requests kept") { (try? harness.sync { kept.value.count }) == 2 }
        try harness.sync {
            for request in kept.value {
                let deadline = request.deadline.map { ContinuousClock.now.duration(to: $0) }
                let answer = "\(request.metadata)|\(deadline.map { $0 > .zero && $0 <= .seconds(30) } ?? false)"
                try request.respond(Array(answer.utf8))
            }
        }
        let results = try answers.wait("the answers").map { try String(decoding: $0.get(), as: UTF8.self) }
        XCTAssertEqual(results, ["[tenant: 7]|true", "[]|false"])
    }

    // MARK: Deadlines

    func testAHandlerPastItsDeadlineIsCancelled() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let sawCancellation = Promise<Bool>()
        let server = try await RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
                                         handler: .async { request, context in
            guard request.payload == [0] else { return request.payload }
            // Waits for its cancellation (bounded: the test fails, not hangs, without it).
            for _ in 0..<2000 where !Task.isCancelled { try? await Task.sleep(for: .milliseconds(10)) }
            sawCancellation.fulfill(Task.isCancelled)
            return [9]
        }).start()
        // Without `cancel`, the client's own timeout tells the server nothing: only the deadline can stop the handler.
        let client = try await RPCClient.connect(to: server.address, on: harness.loop,
                                                 configuration: testConfiguration { $0.extensions = [.errorAnswers, .metadata] })
        do {
            _ = try await client.send([0], timeout: .milliseconds(200), closeOnError: false)
            XCTFail("answered in time")
        } catch let error as RPCError {
            XCTAssertEqual(error.code, .deadlineExceeded)
        }
        XCTAssertTrue(try sawCancellation.wait("the handler's end"), "the handler's task was cancelled at its deadline")
        let serverSide = await server.endpoints.first { _ in true }!
        try waitUntil("the server's handler ended") {
            (try? harness.sync { serverSide.endpoint.runningAsyncHandlerCount }) == 0
        }
        let echoed = try await client.send([5], timeout: .seconds(30))
        XCTAssertEqual(echoed, [5], "the connection serves on")
        await client.close()
        await server.stop()
    }

    /// Sends message 3 with `deadline` as a raw UVRPC peer to a server with
    /// `handler`, and waits for its ERROR answer of code deadline exceeded.
    private func expectDeadlineExceededAnswer(deadline: Duration,
                                              handler: nonisolated(nonsending) @escaping @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8]) throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let address = try RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
                                    handler: .async(handler)).startAndWait().address
        let peer = try RawPeer(harness: harness, address: address)
        let handshake = PeerInfo(keepaliveInterval: 60, extensions: .all).handshakeBytes
        let entries = try RPCMetadata().encoded(deadline: deadline).get()
        try peer.send(harness, handshake + PacketWriter.extensionPacket(.metadata, id: 3, payload: entries)
                      + PacketWriter.frame(isResponse: false, id: 3, payload: [1]))
        let reason = Array("the handler passed its caller's deadline".utf8)
        let error = PacketWriter.extensionPacket(.error, id: 3, code: RPCError.Code.deadlineExceeded.rawValue, payload: reason)
        let serverHandshake = PeerInfo(keepaliveInterval: 0.1, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes
        let after = try peer.waitForFrame(serverHandshake, at: 0, "the handshake")
        _ = try peer.waitForFrame(error, at: after, "the deadline-exceeded answer")
    }

    func testAMessageWhoseDeadlinePassedIsAnsweredWithoutRunningItsHandler() throws {
        let ran = LockedValue(0)
        try expectDeadlineExceededAnswer(deadline: .zero) { request, _ in ran.withLock { $0 += 1 }; return request.payload }
        XCTAssertEqual(ran.withLock { $0 }, 0)
    }

    /// On the wire: the client's own timeout ends its call either way, so
    /// only the raw peer sees the handler's answer.
    func testAHandlerCancelledAtItsDeadlineAnswersDeadlineExceeded() throws {
        try expectDeadlineExceededAnswer(deadline: .milliseconds(100)) { request, _ in
            try await Task.sleep(for: .seconds(10)) // throws when cancelled at the deadline
            return request.payload
        }
    }

    func testACallFromAHandlerInheritsWhatIsLeftOfItsDeadline() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        // The server's handler calls the client back; the client's handler reports what it saw.
        let server = try await RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
                                         handler: .async { request, context in
            try await context.endpoint.send(request.payload)
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration(),
                                                 handler: .async { _, context in Self.describe(context) })
        let inherited = try await client.send([1], metadata: ["tenant": "7"], timeout: .seconds(30))
        XCTAssertEqual(String(decoding: inherited, as: UTF8.self), "|deadline",
                       "the deadline travels on; the metadata does not (the handler passes on what it chooses)")
        let none = try await client.send([1])
        XCTAssertEqual(String(decoding: none, as: UTF8.self), "|none", "nothing inherited without a deadline")
        await client.close()
        await server.stop()
    }

    func testACallWhoseInheritedDeadlinePassedFailsWithoutBeingSent() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
                                         handler: .async { request, _ in request.payload }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        InheritedDeadline.everBound.store(true, ordering: .relaxed) // as a handler with a deadline would have
        let error = await InheritedDeadline.$current.withValue(ContinuousClock.now) {
            do {
                _ = try await client.send([1])
                return nil as RPCError?
            } catch {
                return error as? RPCError
            }
        }
        XCTAssertEqual(error?.code, .deadlineExceeded)
        XCTAssertEqual(error?.requestWasSent, false)
        let echoed = try await client.send([2])
        XCTAssertEqual(echoed, [2])
        await client.close()
        await server.stop()
    }

    // MARK: Bounds and peers without the extension

    func testMetadataOverItsBoundFailsTheCallAndTheConnectionServesOn() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
                                         handler: .async { request, _ in request.payload }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        for metadata: RPCMetadata in [["k": String(repeating: "v", count: 5000)], ["deadline": "1"]] {
            do {
                _ = try await client.send([1], metadata: metadata)
                XCTFail("sent \(metadata)")
            } catch let error as RPCError {
                XCTAssertEqual(error.code, .invalidArgument)
                XCTAssertFalse(error.requestWasSent)
                XCTAssertTrue(error.message.hasPrefix("cannot send on \(client.label): "), error.message)
            }
        }
        let echoed = try await client.send([2])
        XCTAssertEqual(echoed, [2])
        await client.close()
        await server.stop()
    }

    func testAnOverlongOrMalformedMetadataPacketClosesOnlyThatConnection() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let reasons = LockedValue([RPCCloseReason]())
        let address = try RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration()), on: harness.loop,
                                    handler: .callback { endpoint in
            endpoint.onMessage = reversing
            endpoint.onClose = { reason in reasons.withLock { $0.append(reason) } }
        }).startAndWait().address
        let handshake = PeerInfo(keepaliveInterval: 60, extensions: .all).handshakeBytes
        let cases: [(bytes: [UInt8], violation: ProtocolViolation)] = [
            ([0x0f, 0x00, 0x01, 0x10, 0x01], .metadataTooLong(declared: 4097, limit: 4096)),
            ([0x0f, 0x00, 0x01, 0x00, 0x01, 0x00], .malformedMetadata(id: 1, "an empty key at byte 0")),
            ([0x0f, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x00, 0x01, 0x00, 0x00], .unexpectedMetadata(id: 1, waiting: 1)),
            (Array((0..<6).map { [0x0f, 0x00, UInt8($0), 0x00, 0x00] }.joined()), .unexpectedMetadata(id: 5, waiting: 5)),
        ]
        for (index, (bytes, violation)) in cases.enumerated() {
            let peer = try RawPeer(harness: harness, address: address)
            try peer.send(harness, handshake + bytes)
            _ = try peer.closed.wait("the server closes the connection")
            try waitUntil("the close reason") { reasons.withLock { $0.count } == index + 1 }
            XCTAssertEqual(reasons.withLock { $0[index] }, .protocolViolation(violation))
        }
        // Another connection is served as before.
        let connected = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
        try harness.sync {
            RPCClient.connect(to: address, on: harness.loop, configuration: testConfiguration()) { result in
                connected.fulfill(result.map { LoopBound($0, loop: harness.loop) })
            }
        }
        let client = try connected.wait("connect").get()
        XCTAssertEqual(try harness.call(client, [1, 2]).get(), [2, 1])
    }

    func testAPeerWithoutTheExtensionGetsNoMetadata() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        // A server that does not announce `meta` closes on any METADATA packet
        // (an unknown packet type): calls that carry metadata must still work.
        let server = try await RPCServer(configuration: .init(address: localhost, endpoint: testConfiguration { $0.extensions = [.errorAnswers, .cancellation] }),
                                         on: harness.loop, handler: .async { _, context in Self.describe(context) }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        let answer = try await client.send([1], metadata: ["tenant": "7"], timeout: .seconds(30))
        XCTAssertEqual(String(decoding: answer, as: UTF8.self), "|none")
        let big = try await client.send(Array(repeating: 1, count: 100_000), metadata: ["tenant": "7"])
        XCTAssertEqual(String(decoding: big, as: UTF8.self), "|none")
        let active = try await client.withEndpoint { $0.activeExtensions }
        XCTAssertEqual(active, [.errorAnswers, .cancellation])
        await client.close()
        await server.stop()
    }
}
