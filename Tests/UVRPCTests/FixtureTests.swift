import Foundation
import UVRPC
import UVTestSupport
import XCTest

/// The recorded sessions of the reference implementation (shared/fixtures,
/// copied to Tests/UVRPCTests/Fixtures).
final class FixtureTests: XCTestCase {
    struct IndexEntry: Decodable {
        let offset: Int
        let type: String
        let json: String?
        let id: UInt16?
        let length: Int?
        let sha256: String?
    }

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    private func load(_ name: String) throws -> (stream: [UInt8], index: [IndexEntry]) {
        let stream = try [UInt8](Data(contentsOf: Self.fixtures.appendingPathComponent("efro-session-\(name).bin")))
        let index = try JSONDecoder().decode([IndexEntry].self,
                                             from: Data(contentsOf: Self.fixtures.appendingPathComponent("efro-session-\(name).json")))
        return (stream, index)
    }

    func testTheCopiesMatchShared() throws {
        let shared = Self.fixtures.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("shared/fixtures")
        guard FileManager.default.fileExists(atPath: shared.path) else { throw XCTSkip("no ../shared/fixtures beside this clone") }
        for name in ["efro-session-c2s.bin", "efro-session-c2s.json", "efro-session-s2c.bin", "efro-session-s2c.json"] {
            XCTAssertEqual(try Data(contentsOf: shared.appendingPathComponent(name)),
                           try Data(contentsOf: Self.fixtures.appendingPathComponent(name)), name)
        }
    }

    /// Checks parsed events against the index, packet by packet.
    private func check(_ events: [Event], against index: [IndexEntry], _ what: String) {
        XCTAssertEqual(events.count, index.count, what)
        for (event, entry) in zip(events, index) {
            switch event {
            case .handshake(let info):
                XCTAssertEqual(entry.type, "HANDSHAKE", what)
                let expected = entry.json.flatMap { json -> PeerInfo? in
                    Array(json.utf8).withUnsafeBytes { try? PeerInfo(json: $0) }
                }
                XCTAssertEqual(info, expected, what)
            case .keepalive:
                XCTAssertEqual(entry.type, "KEEPALIVE", "\(what) at \(entry.offset)")
            case .message(let id, let payload), .response(let id, let payload):
                let isMessage: Bool
                if case .message = event { isMessage = true } else { isMessage = false }
                let names = isMessage ? ["MESSAGE", "MESSAGE_BIG"] : ["RESPONSE", "RESPONSE_BIG"]
                XCTAssertTrue(names.contains(entry.type), "\(what) at \(entry.offset): \(entry.type) vs \(event)")
                XCTAssertEqual(id, entry.id, "\(what) at \(entry.offset)")
                XCTAssertEqual(payload.count, entry.length, "\(what) at \(entry.offset)")
                XCTAssertEqual(payload.withUnsafeBytes { sha256Hex($0) }, entry.sha256, "\(what) at \(entry.offset)")
            case .error, .cancel, .cancelAcknowledged, .goAway, .chunkAcknowledged, .metadata:
                XCTFail("\(what) at \(entry.offset): \(event) in a reference session")
            }
        }
    }

    func testParserYieldsExactlyTheIndexedPacketsWholeByteByByteAndInRandomChunks() throws {
        for name in ["c2s", "s2c"] {
            let (stream, index) = try load(name)
            let whole = try parseInChunks(stream, chunkSize: { stream.count })
            check(whole, against: index, "\(name) whole")
            let bytewise = try parseInChunks(stream, chunkSize: { 1 })
            XCTAssertTrue(bytewise == whole, "\(name) byte by byte")
            var rng = SplitMix(state: 2024)
            for limit in [8192, 65536 + 7, 1 << 21] {
                let chunked = try parseInChunks(stream, bufferLimit: limit, chunkSize: { Int.random(in: 1...20000, using: &rng) })
                XCTAssertTrue(chunked == whole, "\(name) random chunks, buffer \(limit)")
            }
        }
    }

    func testIdsWrapInTheRecordedSession() throws {
        let (_, index) = try load("c2s")
        let ids = index.filter { $0.type.hasPrefix("MESSAGE") }.compactMap(\.id)
        XCTAssertEqual(Array(ids.prefix(8)), [65530, 65531, 65532, 65533, 65534, 65535, 0, 1])
    }

    func testWriterReproducesBothStreamsByteForByte() throws {
        for name in ["c2s", "s2c"] {
            let (stream, index) = try load(name)
            var rebuilt: [UInt8] = []
            rebuilt.reserveCapacity(stream.count)
            for entry in index {
                switch entry.type {
                case "HANDSHAKE":
                    let info = try Array(entry.json!.utf8).withUnsafeBytes { try PeerInfo(json: $0) }
                    rebuilt += info.handshakeBytes
                case "KEEPALIVE":
                    rebuilt += PacketWriter.keepalive
                default:
                    let length = entry.length!
                    let header = entry.type.hasSuffix("_BIG") ? 7 : 5
                    let payload = Array(stream[(entry.offset + header)..<(entry.offset + header + length)])
                    rebuilt += PacketWriter.frame(isResponse: entry.type.hasPrefix("RESPONSE"), id: entry.id!, payload: payload)
                }
                XCTAssertEqual(rebuilt.count, index.first { $0.offset > entry.offset }?.offset ?? stream.count,
                               "\(name): packet at \(entry.offset) has the recorded size")
            }
            XCTAssertTrue(rebuilt == stream, "\(name): the writer's bytes equal the recording")
        }
    }
}
