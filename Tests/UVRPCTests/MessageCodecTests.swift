import ExampleScores
import Foundation
@testable import UVRPCMessages
import XCTest

/// The efro.message JSON codec against the reference's own JSON
/// (`../shared/fixtures/messages/scores.jsonl`) and MESSAGES.md's rules.
final class MessageCodecTests: XCTestCase {
    private let codec = RPCMessageJSONCodec()

    /// JSON text as a comparable value (key order aside).
    private func jsonValue(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) throws -> NSObject {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed]) as? NSObject,
                      file: file, line: line)
    }

    private func encode(_ value: some Encodable, typeID: Int = 0) throws -> String {
        String(decoding: try codec.encode(value, typeID: typeID), as: UTF8.self)
    }

    private func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        try codec.reader(for: Array(text.utf8)).decode(T.self)
    }

    /// Decodes a message payload as the protocol's type for its id.
    private func decodeMessage(_ payload: [UInt8]) throws -> (id: Int, message: any RPCMessage) {
        let reader = try scoresProtocol.codec.reader(for: payload)
        guard let type = scoresProtocol.messages[reader.typeID] else { throw UnknownID(id: reader.typeID) }
        func open<M: RPCMessage>(_ type: M.Type) throws -> any RPCMessage { try reader.decode(M.self) }
        return (reader.typeID, try open(type))
    }

    private static let at = Date(timeIntervalSince1970: 1_796_581_805.123456) // 2026-12-06T18:30:05.123456Z

    /// Each fixture line's value, in the file's order: a message or response to
    /// encode and decode, or a system response.
    private enum Expected {
        case message(any RPCMessage & Equatable)
        case response(any RPCResponseMessage)
        case empty
        case error(RPCMessageError.Kind, String)
    }

    private let expected: [Expected] = [
        .message(SubmitScore(player: "alice", score: 20, mode: .classic, at: at)),
        .message(SubmitScore(player: "bob", score: 30, mode: .blitz, at: at, replay: Data([1, 2, 3]))),
        .message(SubmitScore(player: "zoë \"q\"", score: -5, mode: .classic, at: Date(timeIntervalSince1970: 915_246_245))),
        .message(TopScores()),
        .message(TopScores(count: 2)),
        .message(Ping()),
        .message(Fail(reason: "nope", clean: true)),
        .message(Fail(reason: "boom", clean: false)),
        .message(Echo(data: Data([0x00, 0xFF, 0x68, 0x69]), note: nil)),
        .message(Echo(data: Data(), note: "x")),
        .response(SubmitResult(rank: 1, best: 20)),
        .response(TopScoresResult(entries: [ScoreEntry(player: "bob", score: 30), ScoreEntry(player: "alice", score: 20)])),
        .response(TopScoresResult(entries: [])),
        .response(EchoResult(data: Data("ab".utf8), note: "n")),
        .empty,
        .error(.remoteClean, "nope"),
        .error(.remote, "An internal error has occurred."),
    ]

    private func fixtureLines() throws -> [[String: String]] {
        let shared = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/fixtures/messages/scores.jsonl")
        guard FileManager.default.fileExists(atPath: shared.path) else { throw XCTSkip("no ../shared/fixtures/messages beside this clone") }
        return try String(contentsOf: shared, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String])
        }
    }

    /// Decodes `json` as the protocol does, as a message or as an answer to `message`.
    private func roundTrip<M: RPCMessage & Equatable>(_ value: M, fixture json: String, desc: String) throws {
        let (id, decoded) = try decodeMessage(Array(json.utf8))
        XCTAssertEqual(id, scoresProtocol.id(of: M.self), desc)
        XCTAssertEqual(decoded as? M, value, desc)
        XCTAssertEqual(try jsonValue(scoresProtocol.encode(value)), try jsonValue(Array(json.utf8)), desc)
    }

    /// Decodes `json` as the answer to an `M`, and encodes `value` back as the handler of an `M` would.
    private func roundTrip<M: RPCMessage>(_ value: M.Response, of message: M.Type, fixture json: String, desc: String) throws
        where M.Response: Equatable {
        XCTAssertEqual(try scoresProtocol.decodeAnswer(Array(json.utf8), to: M.self, from: "peer"), value, desc)
        XCTAssertEqual(try jsonValue(scoresProtocol.answerEncoder(for: M.self)(value)), try jsonValue(Array(json.utf8)), desc)
    }

    func testEveryFixtureLineDecodesToItsValueAndEncodesBackToTheSameJSON() throws {
        let lines = try fixtureLines()
        XCTAssertEqual(lines.count, expected.count, "one expected value per fixture line")
        for (line, value) in zip(lines, expected) {
            let json = try XCTUnwrap(line["json"]), desc = line["desc"] ?? json
            switch value {
            case .message(let message):
                XCTAssertEqual(line["kind"], "message", desc)
                try roundTrip(message, fixture: json, desc: desc)
            case .response(let response):
                XCTAssertEqual(line["kind"], "response", desc)
                switch response {
                case let value as SubmitResult: try roundTrip(value, of: SubmitScore.self, fixture: json, desc: desc)
                case let value as TopScoresResult: try roundTrip(value, of: TopScores.self, fixture: json, desc: desc)
                case let value as EchoResult: try roundTrip(value, of: Echo.self, fixture: json, desc: desc)
                default: XCTFail("no round trip for \(response)")
                }
            case .empty:
                XCTAssertEqual(try scoresProtocol.decodeAnswer(Array(json.utf8), to: Ping.self, from: "peer"), RPCNoResponse(), desc)
                XCTAssertEqual(try jsonValue(scoresProtocol.answerEncoder(for: Ping.self)(RPCNoResponse())), try jsonValue(Array(json.utf8)), desc)
            case .error(let kind, let text):
                XCTAssertThrowsError(try scoresProtocol.decodeAnswer(Array(json.utf8), to: Fail.self, from: "peer"), desc) { error in
                    XCTAssertEqual(error as? RPCMessageError, RPCMessageError(kind, text), desc)
                }
                XCTAssertEqual(try jsonValue(scoresProtocol.encodeError(kind, text)), try jsonValue(Array(json.utf8)), desc)
            }
        }
    }

    func testTheEncoderWritesCompactJSONInTheReferencesForms() throws {
        XCTAssertEqual(try encode(SubmitScore(player: "a\"b\\c\n\u{1}é", score: -5, mode: .blitz,
                                              at: Date(timeIntervalSince1970: 0.000_001), replay: Data([0xFB, 0xFF]))),
                       #"{"t":0,"m":{"p":"a\"b\\c\n\u0001é","s":-5,"m":"blitz","t":[1970,1,1,0,0,0,1],"r":"+/8="}}"#)
        XCTAssertEqual(try encode(Ping(), typeID: 2), #"{"t":2,"m":{}}"#)
        XCTAssertEqual(try encode(Echo(data: Data(), note: nil), typeID: 4), #"{"t":4,"m":{"d":"","n":null}}"#)
        struct Numbers: Codable { var a: Double; var b: Double; var c: [Int8]; var d: UInt64; var e: Int64; var f: Duration }
        XCTAssertEqual(try encode(Numbers(a: 3, b: 0.1, c: [-128, 0, 127], d: .max, e: .min, f: .milliseconds(-1500))),
                       #"{"t":0,"m":{"a":3.0,"b":0.1,"c":[-128,0,127],"d":18446744073709551615,"e":-9223372036854775808,"f":[-1,86398,500000]}}"#)
        struct NotANumber: Codable { var x: Double }
        XCTAssertThrowsError(try encode(NotANumber(x: .nan))) { error in
            XCTAssertTrue(describe(error).contains("x"), describe(error))
        }
    }

    func testNestedContainersCloseWhereTheyEnd() throws {
        struct Inner: Codable, Equatable { var a: [[Int]]; var b: [String: Int]; var c: [Inner]? }
        struct Outer: Codable, Equatable { var inner: Inner; var list: [Inner]; var last: Bool }
        let value = Outer(inner: Inner(a: [[1, 2], [], [3]], b: ["k": 1], c: [Inner(a: [], b: [:], c: nil)]),
                          list: [Inner(a: [[0]], b: [:], c: [])], last: true)
        let text = try encode(value)
        XCTAssertEqual(text, #"{"t":0,"m":{"inner":{"a":[[1,2],[],[3]],"b":{"k":1},"c":[{"a":[],"b":{}}]},"list":[{"a":[[0]],"b":{},"c":[]}],"last":true}}"#)
        XCTAssertEqual(try decode(Outer.self, text), value)
    }

    func testDatesKeepTheirMicrosecondsAcrossCalendarEdges() throws {
        struct When: Codable, Equatable { var t: Date }
        for (fields, seconds) in [([2000, 2, 29, 23, 59, 59, 999_999], 951_868_799.999999), ([1969, 12, 31, 23, 59, 59, 500_000], -0.5),
                                  ([1900, 3, 1, 0, 0, 0, 0], -2_203_891_200.0), ([2096, 2, 29, 12, 0, 0, 1], 3_981_355_200.000001)] {
            let text = #"{"t":0,"m":{"t":\#(fields)}}"#.replacingOccurrences(of: " ", with: "")
            let decoded = try decode(When.self, text)
            XCTAssertEqual(decoded.t.timeIntervalSince1970, seconds, accuracy: 0.000_001, text)
            XCTAssertEqual(try encode(decoded), text)
        }
        for bad in ["[2001,2,29,0,0,0,0]", "[2026,13,1,0,0,0,0]", "[2026,1,1,24,0,0,0]", "[2026,1,1,0,0,0,1000000]", "[2026,1,1]", #""2026""#] {
            XCTAssertThrowsError(try decode(When.self, #"{"t":0,"m":{"t":\#(bad)}}"#), bad)
        }
    }

    func testReadersTakeAnyValidJSONAndIgnoreKeysTheyDoNotKnow() throws {
        XCTAssertEqual(try decode(TopScores.self, " { \"m\" : { \"n\" : 3 , \"zz\" : [ { } , null ] } , \"t\" : 1 } "), TopScores(count: 3))
        XCTAssertEqual(try decode(TopScores.self, #"{"t":1}"#), TopScores(), "a missing m reads as {}")
        XCTAssertEqual(try decode(Fail.self, #"{"t":3,"m":{"r":"\u00e9\ud83d\ude00\/\t","r2":1}}"#), Fail(reason: "é😀/\t"))
        XCTAssertEqual(try decode(Fail.self, #"{"t":3,"m":{"r":"a","r":"b"}}"#).reason, "b", "the last of a repeated key, as Python reads it")
        XCTAssertEqual(try decode(Echo.self, #"{"t":4,"m":{"d":"AQI"}}"#), Echo(data: Data([1, 2])), "base64 without its padding")
    }

    func testWhatDoesNotDecodeSaysWhatAndWhere() throws {
        let cases: [(String, String)] = [
            ("not json", "not valid JSON at byte 0"),
            (#"{"t":0,"m":{"p":"x"}}"#, #"missing field "s""#),
            (#"{"t":4,"m":{"d":5,"n":null}}"#, "expected bytes as base64 text, found a number at m.d"),
            (#"{"t":4,"m":{"d":"!!!!","n":null}}"#, "not base64 text at m.d"),
            (#"{"t":1,"m":{"n":1.5}}"#, "1.5 is not an integer that fits Int at m.n"),
            (#"{"t":1,"m":{"n":99999999999999999999}}"#, "is not an integer that fits Int"),
            (#"{"t":1,"m":{"n":1}"#, "the text ends inside a container"),
            (#"{"t":1,"m":{"n":01}}"#, "leading zero"),
            (#"{"t":3,"m":{"r":"\x"}}"#, "an unknown escape"),
            (#"{"m":{}}"#, #"missing field "t""#),
            (#"[1]"#, "not a JSON object"),
            (String(repeating: "[", count: 200) + String(repeating: "]", count: 200), "nested deeper than 64"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try decodeMessage(Array(text.utf8)), text) { error in
                XCTAssertTrue(describe(error).contains(expected), "\(text): \(describe(error))")
            }
        }
        XCTAssertThrowsError(try decodeMessage(Array(#"{"t":99,"m":{}}"#.utf8))) { error in
            XCTAssertEqual((error as? UnknownID)?.id, 99)
        }
        XCTAssertThrowsError(try decodeMessage([0x22, 0xFF, 0x22])) // a string that is not UTF-8, and not an object
        XCTAssertThrowsError(try decode(Fail.self, "{\"t\":3,\"m\":{\"r\":\"\u{1}\"}}"), "a raw control character in a string")
    }

    func testEveryByteOfBase64RoundTrips() throws {
        for count in 0..<70 {
            let bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ count) }
            var text: [UInt8] = []
            bytes.withUnsafeBytes { Base64.encode($0, into: &text) }
            XCTAssertEqual(String(decoding: text, as: UTF8.self), Data(bytes).base64EncodedString())
            XCTAssertEqual(text.withUnsafeBytes { base64Decoded($0) }, bytes)
        }
        for bad in ["A", "A===", "AB=C", "ab$d", "AAAAA"] {
            XCTAssertNil(Array(bad.utf8).withUnsafeBytes { base64Decoded($0) }, bad)
        }
    }

    // MARK: What an outside review found (each failed, or trapped, before its fix)

    func testHostileDurationsAndDatesAreErrorsNotTraps() throws {
        struct Span: Codable, Equatable { var d: Duration }
        XCTAssertThrowsError(try decode(Span.self, #"{"t":0,"m":{"d":[0,0,-9223372036854775808]}}"#), "abs(Int64.min) trapped")
        XCTAssertThrowsError(try decode(Span.self, #"{"t":0,"m":{"d":[1000000000,0,0]}}"#), "over timedelta's 999 999 999 days")
        XCTAssertEqual(try decode(Span.self, #"{"t":0,"m":{"d":[999999999,86399,999999]}}"#).d,
                       .seconds(999_999_999 * 86_400 + 86_399) + .microseconds(999_999), "timedelta.max reads")
        XCTAssertEqual(try encode(Span(d: .seconds(999_999_999 * 86_400 + 86_399) + .microseconds(999_999))),
                       #"{"t":0,"m":{"d":[999999999,86399,999999]}}"#, "and writes back")
        XCTAssertThrowsError(try encode(Span(d: .seconds(Int64.max))), "a Duration over 292 years trapped in the encoder")
        struct When: Codable { var t: Date }
        for far in [Date(timeIntervalSince1970: 1e13), Date(timeIntervalSince1970: -1e12), Date(timeIntervalSinceReferenceDate: .nan),
                    Date(timeIntervalSinceReferenceDate: .infinity), Date(timeIntervalSince1970: 400_000_000_000)] {
            XCTAssertThrowsError(try encode(When(t: far)), "\(far): trapped, or was written as a year no reader takes")
        }
        XCTAssertEqual(try encode(When(t: Date(timeIntervalSince1970: -62_135_596_800))), #"{"t":0,"m":{"t":[1,1,1,0,0,0,0]}}"#)
    }

    func testNegativeZeroKeepsItsSignAsPythonWritesIt() throws {
        struct Number: Codable { var x: Double }
        XCTAssertEqual(try encode(Number(x: -0.0)), #"{"t":0,"m":{"x":-0.0}}"#)
        XCTAssertEqual(try decode(Number.self, #"{"t":0,"m":{"x":-0.0}}"#).x.sign, .minus)
    }

    func testBigObjectsAreReadThroughAKeyIndexWithTheLastRepeatedKeyWinning() throws {
        struct Table: Codable, Equatable { var e: [String: Int] }
        let keys = (0..<5000).map { "key\($0)" }
        let text = #"{"t":0,"m":{"e":{"# + keys.enumerated().map { #""\#($1)":\#($0)"# }.joined(separator: ",") + #","key7":-7}}}"#
        let table = try decode(Table.self, text)
        XCTAssertEqual(table.e.count, 5000)
        XCTAssertEqual(table.e["key4999"], 4999)
        XCTAssertEqual(table.e["key7"], -7, "the last of a repeated key, in an indexed object too")
        struct Wide: Codable { var k20: Int }
        let wide = #"{"t":0,"m":{"# + (0..<30).map { #""k\#($0)":\#($0)"# }.joined(separator: ",") + "}}"
        XCTAssertEqual(try decode(Wide.self, wide).k20, 20)
    }

    func testKeysMatchByteForByteEscapedOrNot() throws {
        struct Accent: Codable { var é: Int? }
        XCTAssertEqual(try decode(Accent.self, #"{"t":0,"m":{"\u00e9":1}}"#).é, 1, "an escaped key is the same key")
        XCTAssertNil(try decode(Accent.self, #"{"t":0,"m":{"e\u0301":1}}"#).é, "e + combining acute is another key, as in Python")
    }

    func testBase64WithAnEscapedSlashReads() throws {
        XCTAssertEqual(try decode(Echo.self, #"{"t":4,"m":{"d":"\/w==","n":null}}"#).data, Data([0xFF]))
    }

    func testANumberOnlyADoubleHoldsIsNotAFloat() throws {
        struct Small: Codable { var f: Float }
        XCTAssertThrowsError(try decode(Small.self, #"{"t":0,"m":{"f":1e39}}"#))
        XCTAssertEqual(try decode(Small.self, #"{"t":0,"m":{"f":1.5}}"#).f, 1.5)
    }

    func testWhatIsReadCanBeWrittenBackAndTheIndexIsBounded() throws {
        let limit = StreamingEncoder.maximumDepth
        XCTAssertEqual(JSONTape.maximumDepth, limit, "the reader takes no deeper nesting than the writer writes")
        let nested = String(repeating: "[", count: limit) + String(repeating: "]", count: limit)
        XCTAssertThrowsError(try codec.reader(for: Array(#"{"t":0,"m":{"v":\#(nested)}}"#.utf8)))
        XCTAssertThrowsError(try codec.reader(for: Array(("[" + String(repeating: "0,", count: JSONTape.maximumNodes) + "0]").utf8)),
                             "more values than the index holds")
    }

    func testASuperclassMayWriteIntoItsSubclassesContainerAfterANestedOne() throws {
        class Base: Codable { var a = 1 }
        final class Derived: Base {
            var i = 2
            enum Keys: String, CodingKey { case n }
            enum Inner: String, CodingKey { case i }
            override func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: Keys.self)
                var nested = container.nestedContainer(keyedBy: Inner.self, forKey: .n)
                try nested.encode(i, forKey: .i)
                try super.encode(to: encoder)
            }
        }
        XCTAssertEqual(try encode(Derived()), #"{"t":0,"m":{"n":{"i":2},"a":1}}"#)
    }
}

/// A message id the test's protocol does not have.
private struct UnknownID: Error {
    var id: Int
}

/// What base64 `text` decodes to through the decoder's own two steps (count, then decode), or nil.
private func base64Decoded(_ text: UnsafeRawBufferPointer) -> [UInt8]? {
    guard let count = Base64.decodedCount(text) else { return nil }
    var bytes = [UInt8](repeating: 0, count: count)
    return bytes.withUnsafeMutableBytes { Base64.decode(text, into: $0) } ? bytes : nil
}
