/// Receives what ``PacketParser`` finds, frame by frame, as direct calls:
/// no enum and no closure per frame (the parser is specialised for each sink).
/// Payloads are borrowed views, valid only during the call. Each method
/// returns whether parsing should go on.
package protocol PacketSink: AnyObject {
    /// The peer's handshake (always first, exactly once).
    func receivedHandshake(_ info: PeerInfo) -> Bool
    /// A KEEPALIVE packet.
    func receivedKeepalive() -> Bool
    /// A MESSAGE or MESSAGE_BIG packet.
    func receivedMessage(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool
    /// A RESPONSE or RESPONSE_BIG packet.
    func receivedResponse(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool
}

/// The incremental efro.rpc stream parser: a state machine over bytes.
///
/// Contract (the same as SwiftNIO's `ByteToMessageDecoder`): ``parse(_:_:)``
/// is given the unconsumed bytes of the stream, hands every complete unit
/// it finds to a ``PacketSink``, and returns how many bytes it consumed. The caller keeps the
/// rest and offers it again, followed by newer bytes, on the next read. So the
/// stream may be cut at any byte boundary.
///
/// No allocation per frame: a payload that fits in the caller's buffer
/// (``inlinePayloadLimit``) is delivered as a view into it. A larger payload
/// gets one exact-size buffer, filled as bytes arrive, delivered once
/// complete and then freed. A declared length over ``maximumPayloadSize`` is
/// a protocol violation thrown before anything is allocated.
package struct PacketParser: ~Copyable {
    private enum State {
        case handshakeLength
        case handshakeBody(length: Int)
        case packets
        /// Filling `bigBuffer` with the payload of a big frame.
        case bigPayload(isMessage: Bool, id: UInt16, filled: Int)
    }

    private var state = State.handshakeLength
    /// Exact-size storage of the big payload being received, else nil.
    /// Invariant: owned by this parser; freed after delivery or in deinit.
    private var bigBuffer: UnsafeMutableRawBufferPointer?
    /// Bytes consumed since the start of the stream (for error messages).
    package private(set) var streamOffset: UInt64 = 0

    /// Largest payload accepted; a larger declared length is a protocol violation.
    package var maximumPayloadSize: Int
    /// Largest handshake JSON accepted.
    package var maximumHandshakeSize: Int
    /// Payloads up to this size are awaited in the caller's buffer and
    /// delivered in place; larger ones go through an exact-size buffer. Set
    /// it to what the caller's buffer can hold contiguously, minus a header.
    package var inlinePayloadLimit: Int

    /// True once the peer's handshake was parsed.
    package var hasHandshake: Bool {
        if case .handshakeLength = state { return false }
        if case .handshakeBody = state { return false }
        return true
    }

    /// True when the next byte starts a packet (after the handshake, not
    /// inside a big payload): the caller may look at it to decide whether to go on.
    package var isAtPacketBoundary: Bool {
        if case .packets = state { return true }
        return false
    }

    /// While a big payload is being received, the part of its buffer still to
    /// be filled: a caller may read the next bytes of the stream straight
    /// into it (no copy) and then call ``didFillBigPayload(_:_:)``. Else nil.
    package var bigPayloadRemainder: UnsafeMutableRawBufferPointer? {
        guard case .bigPayload(_, _, let filled) = state, let buffer = bigBuffer else { return nil }
        // Safe: the buffer lives until the payload is delivered or discarded, which
        // only didFillBigPayload / discardPartialPacket / deinit do.
        return UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])
    }

    /// Records `count` stream bytes written into ``bigPayloadRemainder``;
    /// delivers the packet when its payload is complete.
    package mutating func didFillBigPayload(_ count: Int, into sink: some PacketSink) {
        guard case .bigPayload(let isMessage, let id, let filled) = state, let buffer = bigBuffer else {
            preconditionFailure("PacketParser.didFillBigPayload without a big payload being received")
        }
        precondition(count >= 0 && filled + count <= buffer.count,
                     "PacketParser.didFillBigPayload(\(count)) exceeds the \(buffer.count - filled) bytes left")
        streamOffset += UInt64(count)
        if filled + count < buffer.count {
            state = .bigPayload(isMessage: isMessage, id: id, filled: filled + count)
            return
        }
        state = .packets
        bigBuffer = nil
        defer { buffer.deallocate() }
        let payload = UnsafeRawBufferPointer(buffer)
        _ = isMessage ? sink.receivedMessage(id: id, payload: payload) : sink.receivedResponse(id: id, payload: payload)
    }

    /// Creates a parser at the start of a stream.
    package init(maximumPayloadSize: Int = 64 << 20, maximumHandshakeSize: Int = 65536,
                inlinePayloadLimit: Int = 65536) {
        self.maximumPayloadSize = maximumPayloadSize
        self.maximumHandshakeSize = maximumHandshakeSize
        self.inlinePayloadLimit = inlinePayloadLimit
    }

    deinit {
        bigBuffer?.deallocate()
    }

    /// Drops a big payload being received (frees its buffer); for a stream
    /// that ended. Parsing must not continue afterwards.
    package mutating func discardPartialPacket() {
        bigBuffer?.deallocate()
        bigBuffer = nil
        if case .bigPayload = state { state = .packets }
    }

    /// Parses as many complete units of `input` as possible, handing each to
    /// `sink`; stops early when the sink returns false.
    /// - Returns: the number of bytes consumed from the front of `input`.
    /// - Throws: ``ProtocolViolation`` on the first invalid byte; the stream
    ///   cannot continue after that.
    package mutating func parse(_ input: UnsafeRawBufferPointer,
                                into sink: some PacketSink) throws(ProtocolViolation) -> Int {
        var offset = 0
        defer { streamOffset += UInt64(offset) }
        let count = input.count
        while offset < count {
            if case .packets = state, let base = input.baseAddress {
                // The common case first: whole short MESSAGE / RESPONSE frames,
                // read with unchecked loads (each one is inside `input` by the
                // length checks), one after another without leaving this loop.
                while count - offset >= Wire.shortHeaderSize {
                    let p = base + offset
                    let type = p.load(as: UInt8.self)
                    guard type == 2 || type == 3 else { break }
                    let length = Int(p.load(fromByteOffset: 3, as: UInt8.self)) << 8
                        | Int(p.load(fromByteOffset: 4, as: UInt8.self))
                    guard count - offset - Wire.shortHeaderSize >= length, length <= maximumPayloadSize else { break }
                    let id = UInt16(p.load(fromByteOffset: 1, as: UInt8.self)) << 8
                        | UInt16(p.load(fromByteOffset: 2, as: UInt8.self))
                    let payload = UnsafeRawBufferPointer(start: p + Wire.shortHeaderSize, count: length)
                    offset += Wire.shortHeaderSize + length
                    let goOn = type == 2 ? sink.receivedMessage(id: id, payload: payload)
                                         : sink.receivedResponse(id: id, payload: payload)
                    if !goOn { return offset }
                }
                if offset == count { break }
            }
            let available = count - offset
            switch state {
            case .packets:
                let type = input[offset]
                switch type {
                case 1:
                    offset += 1
                    if !sink.receivedKeepalive() { return offset }
                case 2, 3, 4, 5:
                    let big = type >= 4
                    let header = big ? Wire.bigHeaderSize : Wire.shortHeaderSize
                    guard available >= header else { return offset }
                    let id = UInt16(input[offset + 1]) << 8 | UInt16(input[offset + 2])
                    let length: Int
                    if big {
                        length = Int(input[offset + 3]) << 24 | Int(input[offset + 4]) << 16
                            | Int(input[offset + 5]) << 8 | Int(input[offset + 6])
                    } else {
                        length = Int(input[offset + 3]) << 8 | Int(input[offset + 4])
                    }
                    let isMessage = type == 2 || type == 4
                    if length > maximumPayloadSize {
                        streamOffset += UInt64(offset)
                        offset = 0
                        throw .payloadTooLarge(declared: length, limit: maximumPayloadSize,
                                               packet: PacketType(rawValue: type)!)
                    }
                    if available >= header + length {
                        let payload = UnsafeRawBufferPointer(rebasing: input[(offset + header)..<(offset + header + length)])
                        offset += header + length
                        let goOn = isMessage ? sink.receivedMessage(id: id, payload: payload)
                                             : sink.receivedResponse(id: id, payload: payload)
                        if !goOn { return offset }
                    } else if length > inlinePayloadLimit {
                        // Too big to wait for in the caller's buffer: stream it into its own.
                        bigBuffer = .allocate(byteCount: length, alignment: 16)
                        offset += header
                        state = .bigPayload(isMessage: isMessage, id: id, filled: 0)
                    } else {
                        return offset // wait for the rest of the frame
                    }
                case 0:
                    streamOffset += UInt64(offset)
                    let at = streamOffset
                    offset = 0
                    throw .secondHandshake(streamOffset: at)
                default:
                    streamOffset += UInt64(offset)
                    let at = streamOffset
                    offset = 0
                    throw .unknownPacketType(type, streamOffset: at)
                }

            case .bigPayload(let isMessage, let id, let filled):
                let buffer = bigBuffer!
                let n = min(available, buffer.count - filled)
                buffer.baseAddress!.advanced(by: filled)
                    .copyMemory(from: input.baseAddress!.advanced(by: offset), byteCount: n)
                offset += n
                if filled + n < buffer.count {
                    state = .bigPayload(isMessage: isMessage, id: id, filled: filled + n)
                    return offset
                }
                state = .packets
                bigBuffer = nil
                defer { buffer.deallocate() }
                let payload = UnsafeRawBufferPointer(buffer)
                let goOn = isMessage ? sink.receivedMessage(id: id, payload: payload)
                                     : sink.receivedResponse(id: id, payload: payload)
                if !goOn { return offset }

            case .handshakeLength:
                guard available >= 4 else { return offset }
                let length = UInt32(input[offset]) << 24 | UInt32(input[offset + 1]) << 16
                    | UInt32(input[offset + 2]) << 8 | UInt32(input[offset + 3])
                if Int(length) > maximumHandshakeSize {
                    throw .handshakeTooLarge(declared: length, limit: maximumHandshakeSize)
                }
                offset += 4
                state = .handshakeBody(length: Int(length))

            case .handshakeBody(let length):
                guard available >= length else { return offset }
                let info = try PeerInfo(json: UnsafeRawBufferPointer(rebasing: input[offset..<(offset + length)]))
                offset += length
                state = .packets
                if !sink.receivedHandshake(info) { return offset }
            }
        }
        return offset
    }
}
