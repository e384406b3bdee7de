// libFuzzer target for the efro.rpc PacketParser and the handshake reader.
// Built by scripts/fuzz.sh with `swiftc -parse-as-library -sanitize=fuzzer,address`
// together with Sources/UVRPC/Wire.swift and PacketParser.swift.
//
// Each input is parsed four ways: whole, split at a point chosen by its first
// byte, one byte at a time, and in chunks that go straight into a big
// payload's buffer whenever the parser offers one (as the endpoint's direct
// reads do); all must agree (same packets, same error), and nothing may
// crash, hang or allocate past the payload limit.

/// One parse outcome, compared across the three feeding patterns.
enum Outcome: Equatable {
    case packet(kind: UInt8, id: UInt16, payload: [UInt8])
    case handshake(PeerInfo)
    case violation(ProtocolViolation)
}

func parse(_ data: [UInt8], direct: Bool = false, chunk: (Int) -> Int) -> [Outcome] {
    var parser = PacketParser(maximumPayloadSize: 1 << 20, inlinePayloadLimit: 4096 - 7)
    var outcomes: [Outcome] = []
    var pending: [UInt8] = []
    var position = 0
    func record(_ packet: ParsedPacket) -> Bool {
        switch packet {
        case .handshake(let info): outcomes.append(.handshake(info))
        case .keepalive: outcomes.append(.packet(kind: 1, id: 0, payload: []))
        case .message(let id, let p): outcomes.append(.packet(kind: 2, id: id, payload: Array(p)))
        case .response(let id, let p): outcomes.append(.packet(kind: 3, id: id, payload: Array(p)))
        }
        return true
    }
    while position < data.count {
        let n = min(max(1, chunk(position)), data.count - position)
        if direct, pending.isEmpty, let remainder = parser.bigPayloadRemainder {
            // A direct read: the bytes land in the payload's own buffer.
            let m = min(n, remainder.count)
            data.withUnsafeBytes { raw in
                remainder.baseAddress!.copyMemory(from: raw.baseAddress! + position, byteCount: m)
            }
            position += m
            parser.didFillBigPayload(m, record)
            continue
        }
        pending.append(contentsOf: data[position..<position + n])
        position += n
        let result: Result<Int, ProtocolViolation> = pending.withUnsafeBytes { raw in
            Result { () throws(ProtocolViolation) -> Int in
                try parser.parse(raw, record)
            }
        }
        switch result {
        case .success(let consumed):
            precondition(consumed >= 0 && consumed <= pending.count, "consumed \(consumed) of \(pending.count)")
            pending.removeFirst(consumed)
            // The parser must never leave more than one buffer's worth waiting.
            precondition(pending.count <= 4096 + 65536, "left \(pending.count) bytes unconsumed")
        case .failure(let violation):
            outcomes.append(.violation(violation))
            return outcomes
        }
    }
    return outcomes
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    let data = count > 0 ? Array(UnsafeRawBufferPointer(start: start, count: count)) : []
    // The handshake reader alone, on the raw bytes.
    _ = data.withUnsafeBytes { raw in Result { () throws(ProtocolViolation) in try PeerInfo(json: raw) } }
    let whole = parse(data) { _ in data.count }
    let cut = data.isEmpty ? 1 : Int(data[0]) % max(1, data.count) + 1
    var first = true
    let split = parse(data) { _ in defer { first = false }; return first ? cut : data.count }
    let bytewise = parse(data) { _ in 1 }
    let step = data.isEmpty ? 1 : Int(data[data.count - 1]) % 97 + 1
    let direct = parse(data, direct: true) { _ in step }
    precondition(whole == split, "whole and split parses differ")
    precondition(whole == bytewise, "whole and byte-by-byte parses differ")
    precondition(whole == direct, "whole and direct-read parses differ")
    return 0
}
