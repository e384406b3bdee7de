import UVRPC

/// A parsed unit with its payload copied, for comparing runs.
enum Event: Equatable, CustomStringConvertible {
    case handshake(PeerInfo)
    case keepalive
    case message(id: UInt16, payload: [UInt8])
    case response(id: UInt16, payload: [UInt8])
    case error(id: UInt16, reason: String)
    case cancel(id: UInt16)
    case cancelAcknowledged(id: UInt16)
    case goAway
    case chunkAcknowledged(bytes: Int)
    case metadata(id: UInt16, entries: [UInt8])

    var description: String {
        switch self {
        case .handshake(let i): return "handshake(\(i))"
        case .keepalive: return "keepalive"
        case .message(let id, let p): return "message(\(id), \(p.count) bytes)"
        case .response(let id, let p): return "response(\(id), \(p.count) bytes)"
        case .error(let id, let reason): return "error(\(id), \(reason))"
        case .cancel(let id): return "cancel(\(id))"
        case .cancelAcknowledged(let id): return "cancelAcknowledged(\(id))"
        case .goAway: return "goAway"
        case .chunkAcknowledged(let n): return "chunkAcknowledged(\(n))"
        case .metadata(let id, let entries): return "metadata(\(id), \(entries.count) bytes)"
        }
    }
}

/// A sink that records what the parser hands it, payloads copied; stops
/// the parse after `limit` units.
final class EventRecorder: PacketSink {
    var events: [Event] = []
    var limit = Int.max
    func receivedHandshake(_ info: PeerInfo) -> Bool { record(.handshake(info)) }
    /// A run counts as one unit (as the parser treats it), recorded once per KEEPALIVE
    /// so that the events do not depend on where the stream was cut.
    func receivedKeepalives(_ count: Int) -> Bool {
        events += repeatElement(.keepalive, count: count - 1)
        return record(.keepalive)
    }
    func receivedMessage(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool {
        record(.message(id: id, payload: Array(payload)))
    }
    func receivedResponse(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool {
        record(.response(id: id, payload: Array(payload)))
    }
    func receivedError(id: UInt16, code: UInt8, reason: UnsafeRawBufferPointer) -> Bool {
        record(.error(id: id, reason: String(decoding: reason, as: UTF8.self)))
    }
    func receivedCancel(id: UInt16, droppedPartialMessage: Bool) -> Bool { record(.cancel(id: id)) }
    func receivedCancelAcknowledgement(id: UInt16) -> Bool { record(.cancelAcknowledged(id: id)) }
    func receivedGoAway() -> Bool { record(.goAway) }
    func receivedChunkAcknowledgement(bytes: Int) -> Bool { record(.chunkAcknowledged(bytes: bytes)) }
    func receivedMetadata(id: UInt16, entries: UnsafeRawBufferPointer) -> Bool { record(.metadata(id: id, entries: Array(entries))) }
    private func record(_ event: Event) -> Bool {
        events.append(event)
        return events.count < limit
    }
}

/// Feeds `stream` to a new parser the way a connection does: each chunk is
/// appended to the unconsumed bytes, which are offered again. `chunkSize`
/// gives the size of each next chunk. `bufferLimit` plays the ring's
/// capacity: payloads that cannot fit go through the parser's own buffer.
/// With `allowTrailing`, an unfinished unit at the end is fine (fuzz inputs).
/// With `direct`, chunks go straight into a big payload's buffer whenever the
/// parser offers one and nothing is pending, as the endpoint's direct reads do.
func parseInChunks(_ stream: [UInt8], bufferLimit: Int = 8192, maximumPayloadSize: Int = 64 << 20,
                   allowTrailing: Bool = false, direct: Bool = false, extensions: RPCExtensions = [],
                   chunkSize: () -> Int) throws(ProtocolViolation) -> [Event] {
    var parser = PacketParser(maximumPayloadSize: maximumPayloadSize, inlinePayloadLimit: bufferLimit - 7,
                              extensions: extensions)
    let recorder = EventRecorder()
    var pending: [UInt8] = []
    var position = 0
    while position < stream.count {
        let n = min(max(1, chunkSize()), stream.count - position)
        if direct, pending.isEmpty, let remainder = parser.bigPayloadRemainder {
            let m = min(n, remainder.count)
            stream.withUnsafeBytes { raw in remainder.baseAddress!.copyMemory(from: raw.baseAddress! + position, byteCount: m) }
            position += m
            parser.didFillBigPayload(m, into: recorder)
            continue
        }
        pending.append(contentsOf: stream[position..<position + n])
        position += n
        let consumed = try withBytes(pending) { (raw) throws(ProtocolViolation) -> Int in
            try parser.parse(raw, into: recorder)
        }
        pending.removeFirst(consumed)
        precondition(pending.count <= max(bufferLimit, 65536 + 7), "the parser left more than a buffer's worth unconsumed")
    }
    precondition(allowTrailing || pending.isEmpty, "bytes left unconsumed at the end: \(pending.count)")
    return recorder.events
}

/// `withUnsafeBytes` for bodies with typed throws (the standard one rethrows `any Error`).
func withBytes<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(ProtocolViolation) -> R) throws(ProtocolViolation) -> R {
    try bytes.withUnsafeBytes { raw in Result { () throws(ProtocolViolation) in try body(raw) } }.get()
}

/// A deterministic generator for chunk sizes and streams.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
}
