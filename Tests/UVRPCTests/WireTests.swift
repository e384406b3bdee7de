import UVRPC
import XCTest

/// The byte vectors of shared/PROTOCOL.md.
final class WireTests: XCTestCase {
    func testHandshakeVectorEncodes() {
        let info = PeerInfo(keepaliveInterval: 10.73)
        XCTAssertEqual(info.json, #"{"p":2,"k":10.73}"#)
        XCTAssertEqual(info.handshakeBytes, [0x00, 0x00, 0x00, 0x11, 0x7b, 0x22, 0x70, 0x22, 0x3a, 0x32, 0x2c,
                                             0x22, 0x6b, 0x22, 0x3a, 0x31, 0x30, 0x2e, 0x37, 0x33, 0x7d])
    }

    func testKeepaliveIntervalsAreWrittenAsPythonWritesFloats() {
        XCTAssertEqual(PeerInfo(keepaliveInterval: 5).json, #"{"p":2,"k":5.0}"#)
        XCTAssertEqual(PeerInfo(keepaliveInterval: 0.05).json, #"{"p":2,"k":0.05}"#)
        XCTAssertEqual(PeerInfo(keepaliveInterval: 1e-05).json, #"{"p":2,"k":1e-05}"#)
        XCTAssertEqual(PeerInfo(keepaliveInterval: 1e16).json, #"{"p":2,"k":1e+16}"#)
    }

    func testPacketVectorsEncode() {
        XCTAssertEqual(PacketWriter.keepalive, [0x01])
        XCTAssertEqual(PacketWriter.frame(isResponse: false, id: 7, payload: Array("hi".utf8)), [0x02, 0x00, 0x07, 0x00, 0x02, 0x68, 0x69])
        XCTAssertEqual(PacketWriter.frame(isResponse: true, id: 7, payload: Array("ok".utf8)), [0x03, 0x00, 0x07, 0x00, 0x02, 0x6f, 0x6b])
        XCTAssertEqual(PacketWriter.frame(isResponse: false, id: 65535, payload: []), [0x02, 0xff, 0xff, 0x00, 0x00])
        let big = [UInt8](repeating: 0x5a, count: 70000)
        let frame = PacketWriter.frame(isResponse: false, id: 1, payload: big)
        XCTAssertEqual(Array(frame.prefix(7)), [0x04, 0x00, 0x01, 0x00, 0x01, 0x11, 0x70])
        XCTAssertEqual(frame.count, 70007)
        XCTAssertEqual(Array(PacketWriter.frame(isResponse: true, id: 1, payload: big).prefix(1)), [0x05])
        // The boundary: 65535 is short, 65536 is big.
        XCTAssertEqual(PacketWriter.frame(isResponse: false, id: 1, payload: [UInt8](repeating: 0, count: 65535)).first, 2)
        XCTAssertEqual(PacketWriter.frame(isResponse: false, id: 1, payload: [UInt8](repeating: 0, count: 65536)).first, 4)
    }

    func testPacketVectorsDecode() throws {
        var stream = PeerInfo(keepaliveInterval: 10.73).handshakeBytes
        stream += [0x01]
        stream += [0x02, 0x00, 0x07, 0x00, 0x02, 0x68, 0x69]
        stream += [0x03, 0x00, 0x07, 0x00, 0x02, 0x6f, 0x6b]
        stream += [0x02, 0xff, 0xff, 0x00, 0x00]
        stream += [0x04, 0x00, 0x01, 0x00, 0x01, 0x11, 0x70] + [UInt8](repeating: 0x5a, count: 70000)
        stream += [0x05, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x21] // a *_BIG packet with a small length is valid
        let events = try parseInChunks(stream, chunkSize: { stream.count })
        XCTAssertEqual(events, [
            .handshake(PeerInfo(keepaliveInterval: 10.73)),
            .keepalive,
            .message(id: 7, payload: Array("hi".utf8)),
            .response(id: 7, payload: Array("ok".utf8)),
            .message(id: 65535, payload: []),
            .message(id: 1, payload: [UInt8](repeating: 0x5a, count: 70000)),
            .response(id: 2, payload: [0x21]),
        ])
    }

    private func peer(_ json: String) throws(ProtocolViolation) -> PeerInfo {
        let bytes = Array(json.utf8)
        return try withBytes(bytes) { (raw) throws(ProtocolViolation) in try PeerInfo(json: raw) }
    }

    func testHandshakeIsReadLiberally() throws {
        XCTAssertEqual(try peer(#"{"p":2,"k":10.73}"#), PeerInfo(protocolVersion: 2, keepaliveInterval: 10.73))
        XCTAssertEqual(try peer(#"{"k":5,"p":2}"#), PeerInfo(protocolVersion: 2, keepaliveInterval: 5))
        XCTAssertEqual(try peer(#"{"k":5.0,"p":1}"#), PeerInfo(protocolVersion: 1, keepaliveInterval: 5))
        XCTAssertEqual(try peer(" \n{ \"p\" : 3 ,\t\"k\" : 1e1 } \r\n"), PeerInfo(protocolVersion: 3, keepaliveInterval: 10))
        XCTAssertEqual(try peer(#"{"x":{"y":[1,2,{"z":null}],"w":"a\"b\u00e9"},"p":2,"t":true,"f":false,"k":0.5,"n":-1.5e-3}"#),
                       PeerInfo(protocolVersion: 2, keepaliveInterval: 0.5))
        XCTAssertEqual(try peer(#"{"p":2.0,"k":1}"#).protocolVersion, 2)
        // Keys and names are compared after their escapes are decoded (any valid JSON is taken).
        XCTAssertEqual(try peer(#"{"\u0070":2,"\u006B":10.73}"#), PeerInfo(protocolVersion: 2, keepaliveInterval: 10.73))
        XCTAssertEqual(try peer(#"{"p":2,"k":1,"x":["c\u0061ncel","\ud83d\ude00","meta\/"]}"#).extensions, [.cancellation])
        XCTAssertEqual(try peer(#"{"p":2,"k":1,"\ud800":5}"#).keepaliveInterval, 1) // a lone surrogate is a key like any other
    }

    func testMalformedHandshakesAreRejectedWithAReason() {
        let cases: [(String, String)] = [
            (#"{"k":5}"#, "missing \"p\""),
            (#"{"p":2}"#, "missing \"k\""),
            (#"[1,2]"#, "expected '{'"),
            (#"{"p":2,"k":5} x"#, "trailing"),
            (#"{"p":"2","k":5}"#, "not a number"),
            (#"{"p":2.5,"k":5}"#, "not a protocol version"),
            (#"{"p":2,"k":-1}"#, "not a keepalive interval"),
            (#"{"p":2,"k":5"#, "unterminated"),
            (#"{"p":02,"k":5}"#, "leading zero"),
            (#"{"p":2,"k":5,}"#, "expected a string"),
            ("", "expected '{'"),
            ("{\"p\":2,\"k\":5,\"s\":\"\u{01}\"}", "control character"),
            ("{\"a\":" + String(repeating: "[", count: 10_000) + "}", "nesting"),
        ]
        for (json, reason) in cases {
            XCTAssertThrowsError(try peer(json), json) { error in
                guard let error = error as? ProtocolViolation, case .malformedHandshake(let why) = error.kind else {
                    return XCTFail("\(json): wrong error \(error)")
                }
                XCTAssertTrue(why.contains(reason), "\(json): \(why) should mention \(reason)")
            }
        }
    }

    func testFrameHeaderBitsMatchTheEncodedFrame() {
        for n in [0, 1, 255, 256, 65535, 65536, 70000] {
            for id: UInt16 in [0, 1, 0x1234, 65535] {
                for isResponse in [false, true] {
                    let header = PacketWriter.header(isResponse: isResponse, id: id, payloadCount: n)
                    let bytes = withUnsafeBytes(of: header.bits.littleEndian) { Array($0.prefix(header.count)) }
                    // Written out from the wire format (PROTOCOL.md), not from the writer.
                    let big = n > 65535
                    let type: UInt8 = (isResponse ? 3 : 2) + (big ? 2 : 0)
                    let length: [UInt8] = big ? [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)]
                                              : [UInt8(n >> 8), UInt8(n & 0xff)]
                    let expected = [type, UInt8(id >> 8), UInt8(id & 0xff)] + length
                    XCTAssertEqual(bytes, expected, "n=\(n) id=\(id) response=\(isResponse)")
                }
            }
        }
        let big = PacketWriter.header(isResponse: true, id: 0xABCD, payloadCount: 16 << 20)
        XCTAssertEqual(withUnsafeBytes(of: big.bits.littleEndian) { Array($0.prefix(big.count)) },
                       [5, 0xAB, 0xCD, 0x01, 0x00, 0x00, 0x00])
    }
}
