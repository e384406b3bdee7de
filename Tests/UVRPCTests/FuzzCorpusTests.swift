import EndpointFuzzHarness
import Foundation
import UVRPC
import XCTest

/// Replays the fuzzer's corpus (Fuzz/corpus, kept by scripts/fuzz.sh): every
/// input parses without crashing, and identically whole, split and byte by
/// byte; and every input goes through a whole endpoint (the fuzz target's
/// harness) without breaking an invariant.
final class FuzzCorpusTests: XCTestCase {
    private var corpus: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus")
    }

    func testEveryCorpusInputGoesThroughAWholeEndpoint() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: corpus.path).sorted()
        XCTAssertFalse(files.isEmpty, "the corpus is committed with the repository")
        var responses = 0
        for name in files {
            responses += fuzzEndpoint(try [UInt8](Data(contentsOf: corpus.appendingPathComponent(name))))
        }
        // Not a vacuous pass: the corpus holds messages that the handlers answer.
        XCTAssertGreaterThan(responses, 100, "responses written over the whole corpus")
    }

    func testEveryCorpusInputParsesTheSameWayHoweverItIsCut() throws {
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus")
        let files = try FileManager.default.contentsOfDirectory(atPath: corpus.path).sorted()
        XCTAssertFalse(files.isEmpty, "the corpus is committed with the repository")
        func outcome(_ data: [UInt8], direct: Bool = false, _ chunk: @escaping () -> Int) -> String {
            do {
                return try parseInChunks(data, bufferLimit: 4096, maximumPayloadSize: 1 << 20, allowTrailing: true,
                                        direct: direct, extensions: .all, chunkSize: chunk)
                    .map(\.description).joined(separator: ",")
            } catch {
                return "violation: \(error)"
            }
        }
        for name in files {
            let data = try [UInt8](Data(contentsOf: corpus.appendingPathComponent(name)))
            _ = data.withUnsafeBytes { raw in Result { () throws(ProtocolViolation) in try PeerInfo(json: raw) } }
            let whole = outcome(data) { data.count }
            var first = true
            let cut = data.isEmpty ? 1 : Int(data[0]) % max(1, data.count) + 1
            XCTAssertEqual(outcome(data) { defer { first = false }; return first ? cut : data.count }, whole, name)
            if data.count <= 20_000 { XCTAssertEqual(outcome(data) { 1 }, whole, name) }
            let step = data.isEmpty ? 1 : Int(data[data.count - 1]) % 97 + 1
            XCTAssertEqual(outcome(data, direct: true) { step }, whole, "\(name), direct reads")
        }
    }
}
