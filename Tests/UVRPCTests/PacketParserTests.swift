import UVRPC
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
        guard case .malformedHandshake? = violation([0, 0, 0, UInt8(bad.count)] + bad) else {
            return XCTFail("malformed JSON must be a violation")
        }
    }

    func testStopsWhenTheReceiverSaysSo() throws {
        let stream = PeerInfo(keepaliveInterval: 1).handshakeBytes + [1, 1, 1]
        var parser = PacketParser()
        let recorder = EventRecorder()
        recorder.limit = 2
        let consumed = try withBytes(stream) { (raw) throws(ProtocolViolation) -> Int in
            try parser.parse(raw, into: recorder)
        }
        XCTAssertEqual(recorder.events.count, 2)
        XCTAssertEqual(consumed, stream.count - 2, "stopped right after the second unit")
    }
}
