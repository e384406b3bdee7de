import UVRPC
import UVTestSupport
import XCTest

final class PacketParserTests: XCTestCase {
    /// A random stream: handshake, then packets of every type and size class.
    private func randomStream(seed: UInt64, packets: Int) -> (bytes: [UInt8], events: [Event]) {
        var rng = SplitMix(state: seed)
        let info = PeerInfo(keepaliveInterval: Double(Int.random(in: 1...100, using: &rng)) / 4)
        var bytes = info.handshakeBytes
        var events: [Event] = [.handshake(info)]
        for _ in 0..<packets {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0:
                bytes += [1]
                events.append(.keepalive)
            default:
                let sizeClass = Int.random(in: 0..<20, using: &rng)
                let size = sizeClass == 0 ? Int.random(in: 65536...70000, using: &rng)
                    : sizeClass < 4 ? Int.random(in: 1000...20000, using: &rng) : Int.random(in: 0...200, using: &rng)
                let payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let id = UInt16.random(in: 0...65535, using: &rng)
                let isResponse = Bool.random(using: &rng)
                if size <= 65535 && Int.random(in: 0..<8, using: &rng) == 0 {
                    // The *_BIG form with a small length, which receivers must accept.
                    let n = UInt32(size)
                    bytes += [isResponse ? 5 : 4, UInt8(id >> 8), UInt8(id & 0xff),
                              UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + payload
                } else {
                    bytes += PacketWriter.frame(isResponse: isResponse, id: id, payload: payload)
                }
                events.append(isResponse ? .response(id: id, payload: payload) : .message(id: id, payload: payload))
            }
        }
        return (bytes, events)
    }

    func testEveryVectorSplitAtEveryByteBoundary() throws {
        var stream = PeerInfo(keepaliveInterval: 10.73).handshakeBytes
        stream += [0x01, 0x02, 0x00, 0x07, 0x00, 0x02, 0x68, 0x69, 0x03, 0x00, 0x07, 0x00, 0x02, 0x6f, 0x6b,
                   0x02, 0xff, 0xff, 0x00, 0x00]
        let whole = try parseInChunks(stream, chunkSize: { stream.count })
        XCTAssertEqual(whole.count, 5)
        for cut in 1..<stream.count {
            var first = true
            let events = try parseInChunks(stream, chunkSize: {
                defer { first = false }
                return first ? cut : stream.count
            })
            XCTAssertEqual(events, whole, "split at byte \(cut)")
        }
    }

    func testRandomStreamsGiveIdenticalEventsWholeByteByByteAndInRandomChunks() throws {
        for seed in 1...6 as ClosedRange<UInt64> {
            let (stream, expected) = randomStream(seed: seed, packets: 120)
            XCTAssertEqual(try parseInChunks(stream, chunkSize: { stream.count }), expected, "whole, seed \(seed)")
            XCTAssertEqual(try parseInChunks(stream, chunkSize: { 1 }), expected, "byte by byte, seed \(seed)")
            var rng = SplitMix(state: seed * 7919)
            XCTAssertEqual(try parseInChunks(stream, chunkSize: { Int.random(in: 1...9000, using: &rng) }), expected,
                           "random chunks, seed \(seed)")
            // A small buffer forces mid-sized payloads through the parser's own buffer too.
            XCTAssertEqual(try parseInChunks(stream, bufferLimit: 512, chunkSize: { Int.random(in: 1...700, using: &rng) }),
                           expected, "small buffer, seed \(seed)")
            // Big payloads filled by direct reads, in random chunk sizes.
            XCTAssertEqual(try parseInChunks(stream, bufferLimit: 512, direct: true,
                                             chunkSize: { Int.random(in: 1...3000, using: &rng) }),
                           expected, "direct reads, seed \(seed)")
        }
    }

    /// A stream of every extension packet: two chunked messages and a chunked
    /// response interleaved with small packets, a transfer dropped by CANCEL
    /// and one by CANCEL_ACK, an ERROR, a CHUNK_ACK, a GOAWAY.
    private func extensionStream() -> (stream: [UInt8], events: [Event]) {
        func x(_ type: PacketType, id: UInt16 = 0, total: Int = 0, payload: [UInt8] = []) -> [UInt8] {
            PacketWriter.extensionPacket(type, id: id, total: total, payload: payload)
        }
        let a = pseudoRandomBytes(count: 100_000, seed: 1), b = pseudoRandomBytes(count: 70_000, seed: 2)
        let r = pseudoRandomBytes(count: 66_000, seed: 3)
        let info = PeerInfo(keepaliveInterval: 10.73, extensions: .all)
        var stream = info.handshakeBytes
        var events: [Event] = [.handshake(info)]
        stream += x(.messageStart, id: 1, total: a.count) + x(.messageStart, id: 2, total: b.count)
            + x(.responseStart, id: 9, total: r.count) + x(.messageStart, id: 3, total: 50_000) + x(.responseStart, id: 4, total: 80_000)
        var offsets = (a: 0, b: 0, r: 0)
        var round = 0
        while offsets.a < a.count || offsets.b < b.count || offsets.r < r.count {
            for (payload, id, type) in [(a, UInt16(1), PacketType.messageChunk), (b, 2, .messageChunk), (r, 9, .responseChunk)] {
                let done = id == 1 ? offsets.a : id == 2 ? offsets.b : offsets.r
                guard done < payload.count else { continue }
                let n = min(8192 + round * 977 % 4000, payload.count - done)
                stream += x(type, id: id, payload: Array(payload[done..<(done + n)]))
                if id == 1 { offsets.a += n } else if id == 2 { offsets.b += n } else { offsets.r += n }
                if done + n == payload.count {
                    events.append(type == .messageChunk ? .message(id: id, payload: payload) : .response(id: id, payload: payload))
                }
            }
            if round == 2 {
                // Chunks of 3 and 4, then both given up: nothing is delivered for them.
                stream += x(.messageChunk, id: 3, payload: [1, 2, 3]) + x(.responseChunk, id: 4, payload: [4])
                stream += x(.cancel, id: 3) + x(.cancelAcknowledged, id: 4)
                events += [.cancel(id: 3), .cancelAcknowledged(id: 4)]
            }
            stream += PacketWriter.frame(isResponse: false, id: UInt16(100 + round), payload: [UInt8(round)]) + [0x01]
            events += [.message(id: UInt16(100 + round), payload: [UInt8(round)]), .keepalive]
            round += 1
        }
        stream += x(.error, id: 7, payload: Array("no such key".utf8)) + x(.chunkAcknowledged, total: 123_456) + x(.goAway)
        events += [.error(id: 7, reason: "no such key"), .chunkAcknowledged(bytes: 123_456), .goAway]
        let entries: [UInt8] = [6] + Array("tenant".utf8) + [0, 1, 0x37]
        stream += x(.metadata, id: 8, payload: entries) + PacketWriter.frame(isResponse: false, id: 8, payload: [8])
        events += [.metadata(id: 8, entries: entries), .message(id: 8, payload: [8])]
        return (stream, events)
    }

    func testExtensionPacketsGiveIdenticalEventsWholeByteByByteInRandomChunksAndDirect() throws {
        let (stream, expected) = extensionStream()
        XCTAssertEqual(try parseInChunks(stream, extensions: .all, chunkSize: { stream.count }), expected, "whole")
        XCTAssertEqual(try parseInChunks(stream, extensions: .all, chunkSize: { 1 }), expected, "byte by byte")
        var rng = SplitMix(state: 15)
        XCTAssertEqual(try parseInChunks(stream, extensions: .all, chunkSize: { Int.random(in: 1...9000, using: &rng) }),
                       expected, "random chunks")
        XCTAssertEqual(try parseInChunks(stream, bufferLimit: 512, direct: true, extensions: .all,
                                         chunkSize: { Int.random(in: 1...30000, using: &rng) }), expected, "direct reads")
        // A parser that did not announce them takes the first extension packet for an unknown type.
        let plainHandshake = PeerInfo(keepaliveInterval: 10.73, extensions: .all).handshakeBytes.count
        XCTAssertThrowsError(try parseInChunks(stream, chunkSize: { stream.count })) { error in
            XCTAssertEqual(error as? ProtocolViolation, .unknownPacketType(9, streamOffset: UInt64(plainHandshake)))
        }
    }

    func testEveryTwoWaySplitOfARandomStream() throws {
        let (stream, expected) = randomStream(seed: 99, packets: 12)
        for cut in stride(from: 1, to: stream.count, by: max(1, stream.count / 3000)) {
            var first = true
            let events = try parseInChunks(stream, chunkSize: { defer { first = false }; return first ? cut : stream.count })
            XCTAssertEqual(events, expected, "split at \(cut)")
        }
    }

    private func violation(_ bytes: [UInt8], maximumPayloadSize: Int = 64 << 20) -> ProtocolViolation? {
        do {
            _ = try parseInChunks(bytes, maximumPayloadSize: maximumPayloadSize, chunkSize: { bytes.count })
            return nil
        } catch {
            return error
        }
    }

    func testProtocolViolations() {
        let hs = PeerInfo(keepaliveInterval: 1).handshakeBytes
        XCTAssertEqual(violation(hs + [0x01, 0x09]), .unknownPacketType(9, streamOffset: UInt64(hs.count + 1)))
        XCTAssertEqual(violation(hs + [0xff]), .unknownPacketType(255, streamOffset: UInt64(hs.count)))
        XCTAssertEqual(violation(hs + hs), .secondHandshake(streamOffset: UInt64(hs.count)))
        XCTAssertEqual(violation([0xff, 0xff, 0xff, 0xff]), .handshakeTooLarge(declared: UInt32.max, limit: 65536))
        XCTAssertEqual(violation(hs + [0x04, 0x00, 0x01, 0xff, 0xff, 0xff, 0xff]),
                       .payloadTooLarge(declared: Int(UInt32.max), limit: 64 << 20, packet: .messageBig))
        XCTAssertEqual(violation(hs + [0x03, 0x00, 0x01, 0x01, 0x00], maximumPayloadSize: 255),
                       .payloadTooLarge(declared: 256, limit: 255, packet: .response))
        let bad = Array("{nope}".utf8)
        guard case .malformedHandshake? = violation([0, 0, 0, UInt8(bad.count)] + bad)?.kind else {
            return XCTFail("malformed JSON must be a violation")
        }
    }

    func testStopsWhenTheReceiverSaysSo() throws {
        let stream = PeerInfo(keepaliveInterval: 1).handshakeBytes + [1, 2, 0, 1, 0, 0, 1]
        var parser = PacketParser()
        let recorder = EventRecorder()
        recorder.limit = 2
        let consumed = try withBytes(stream) { (raw) throws(ProtocolViolation) -> Int in
            try parser.parse(raw, into: recorder)
        }
        XCTAssertEqual(recorder.events.count, 2)
        XCTAssertEqual(consumed, stream.count - 6, "stopped right after the second unit")
    }

    func testARunOfKeepalivesIsOneUnit() throws {
        // A flood of 1-byte KEEPALIVEs costs the receiver one call per run, not one per byte.
        let stream = PeerInfo(keepaliveInterval: 1).handshakeBytes + [UInt8](repeating: 1, count: 1000) + [2, 0, 1, 0, 0]
        var parser = PacketParser()
        final class Runs: PacketSink {
            var runs: [Int] = []
            var messages = 0
            func receivedHandshake(_ info: PeerInfo) -> Bool { true }
            func receivedKeepalives(_ count: Int) -> Bool { runs.append(count); return true }
            func receivedMessage(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool { messages += 1; return true }
            func receivedResponse(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool { true }
            func receivedError(id: UInt16, code: UInt8, reason: UnsafeRawBufferPointer) -> Bool { true }
            func receivedCancel(id: UInt16, droppedPartialMessage: Bool) -> Bool { true }
            func receivedCancelAcknowledgement(id: UInt16) -> Bool { true }
            func receivedGoAway() -> Bool { true }
            func receivedChunkAcknowledgement(bytes: Int) -> Bool { true }
        }
        let runs = Runs()
        let consumed = try withBytes(stream) { (raw) throws(ProtocolViolation) -> Int in try parser.parse(raw, into: runs) }
        XCTAssertEqual(consumed, stream.count)
        XCTAssertEqual(runs.runs, [1000], "one call for the whole run")
        XCTAssertEqual(runs.messages, 1)
    }
}
