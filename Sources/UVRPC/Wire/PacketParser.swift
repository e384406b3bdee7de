/// Receives what ``PacketParser`` finds, frame by frame, as direct calls:
/// no enum and no closure per frame (the parser is specialised for each sink).
/// Payloads are borrowed views, valid only during the call. Each method
/// returns whether parsing should go on.
package protocol PacketSink: AnyObject {
    /// The peer's handshake (always first, exactly once).
    func receivedHandshake(_ info: PeerInfo) -> Bool
    /// `count` KEEPALIVE packets in a row (one or more): one unit of work.
    func receivedKeepalives(_ count: Int) -> Bool
    /// A MESSAGE or MESSAGE_BIG packet.
    func receivedMessage(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool
    /// A RESPONSE or RESPONSE_BIG packet, or a chunked response complete.
    func receivedResponse(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool
    /// An ERROR packet (extension `error`): the answer to our call `id` failed in the peer's handler.
    func receivedError(id: UInt16, code: UInt8, reason: UnsafeRawBufferPointer) -> Bool
    /// A CANCEL packet (extension `cancel`): the peer gave up its call `id`
    /// (a chunked message `id` being received was dropped already:
    /// `droppedPartialMessage` says whether there was one).
    func receivedCancel(id: UInt16, droppedPartialMessage: Bool) -> Bool
    /// A CANCEL_ACK packet (extension `cancel`): the peer is done with our
    /// cancelled call `id` (a chunked response `id` being received was dropped already).
    func receivedCancelAcknowledgement(id: UInt16) -> Bool
    /// A GOAWAY packet (extension `goaway`).
    func receivedGoAway() -> Bool
    /// A CHUNK_ACK packet (extension `chunk`): the peer consumed `bytes` more of our chunks.
    func receivedChunkAcknowledgement(bytes: Int) -> Bool
    /// A METADATA packet (extension `meta`): the entries of message `id`'s
    /// metadata, a view valid only during the call.
    func receivedMetadata(id: UInt16, entries: UnsafeRawBufferPointer) -> Bool
    /// A response is about to arrive in parts (a RESPONSE_BIG too big to
    /// wait for in the read buffer, or a RESPONSE_START): whether a call
    /// waits for it. One no call waits for is skipped as it arrives, never buffered.
    func awaitsResponse(id: UInt16) -> Bool
    /// A payload that arrives in parts could not be buffered (`reason`): its
    /// bytes are skipped as they arrive, and it is never delivered.
    func refusedPayload(isMessage: Bool, id: UInt16, size: Int, reason: PayloadRefusal) -> Bool
}

extension PacketSink {
    /// Every response is awaited (a sink that keeps no call table).
    package func awaitsResponse(id: UInt16) -> Bool { true }
    /// A refused payload is only skipped.
    package func refusedPayload(isMessage: Bool, id: UInt16, size: Int, reason: PayloadRefusal) -> Bool { true }
    /// Metadata is ignored (a sink that handles no calls).
    package func receivedMetadata(id: UInt16, entries: UnsafeRawBufferPointer) -> Bool { true }
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
/// a protocol violation thrown before anything is allocated. Such buffers
/// come from ``memory`` (the connection's budget and a shared one); a
/// payload they cannot hold, and a response no call waits for, is skipped
/// as it arrives instead (see PacketParser+Partials.swift).
///
/// The packets of an extension (types 6-15) are accepted only when both
/// handshakes announced it (``agreedExtensions``); before, they are unknown
/// packet types like any other. Chunked payloads (extension `chunk`) are
/// reassembled here: a START allocates the exact-size buffer, each CHUNK is
/// copied (or read straight, see ``bigPayloadRemainder``) into place, and the
/// complete payload goes to the sink as if it had come in one packet.
package struct PacketParser: ~Copyable {
    enum State {
        case handshakeLength
        case handshakeBody(length: Int)
        case packets
        /// Receiving the `total`-byte payload of a big frame into `bigBuffer`
        /// (or skipping it, when `bigBuffer` is nil).
        case bigPayload(isMessage: Bool, id: UInt16, filled: Int, total: Int)
        /// Inside a CHUNK of transfer `key`, with `remaining` of its bytes still to come.
        case chunkPayload(key: UInt32, remaining: Int)
    }

    /// A chunked payload being reassembled (or skipped).
    struct Transfer {
        /// Invariant: owned by the parser from START until delivered or dropped;
        /// holds at least `total` bytes (more when it is the spare buffer reused).
        /// Nil for a payload being skipped (refused, or a response no call waits for).
        var buffer: UnsafeMutableRawBufferPointer?
        /// The payload's length, announced by START.
        var total: Int
        var filled = 0
        var progress: Progress
    }

    /// When a payload in parts last made progress (``progressQuantum`` bytes, or its start).
    struct Progress {
        var at: UInt64
        var filled: Int
    }
    /// The buffer of the last big transfer delivered, kept for the next one:
    /// steady big traffic then allocates, faults in and unmaps nothing
    /// (each of which stalls the loop). Freed by ``releaseSpareBuffer()``
    /// when the connection is idle, and at the end.
    var spareBuffer: UnsafeMutableRawBufferPointer?
    /// Transfers in progress, by `Self.transferKey`.
    var transfers: [UInt32: Transfer] = [:]
    var messageTransfers = 0
    var responseTransfers = 0
    /// Extensions this side announces; with the peer's, they make ``agreedExtensions``.
    package let localExtensions: RPCExtensions
    /// The extensions both handshakes announced (empty until the peer's arrived).
    package internal(set) var agreedExtensions: RPCExtensions = []
    /// CHUNK payload bytes consumed and not yet acknowledged to the peer
    /// (the endpoint sends a CHUNK_ACK after each read: ``takeChunkBytesToAcknowledge()``).
    package internal(set) var chunkBytesToAcknowledge = 0
    /// A CHUNK remainder at least this long is offered for a direct read
    /// (this library's 8 KiB chunks never are: a read syscall per chunk
    /// costs more than copying them out of the shared read buffer; a peer's
    /// longer chunks, up to 64 KiB, can be).
    static let directChunkReadMinimum = 4096

    @inline(__always)
    static func transferKey(isMessage: Bool, id: UInt16) -> UInt32 { (isMessage ? 0x1_0000 : 0) | UInt32(id) }

    var state = State.handshakeLength
    /// Exact-size storage of the big payload being received, else nil.
    /// Invariant: owned by this parser; freed after delivery or in deinit.
    var bigBuffer: UnsafeMutableRawBufferPointer?
    /// Progress of the big payload being received.
    var bigProgress = Progress(at: 0, filled: 0)
    /// Where payload buffers come from, within the connection's and the shared budget.
    package var memory: PayloadMemory
    /// The caller's clock (loop milliseconds), set before each parse: when
    /// payloads in parts made progress (see `stalledPayload(now:timeout:)`).
    package var clock: UInt64 = 0
    /// Bytes consumed since the start of the stream (for error messages).
    package internal(set) var streamOffset: UInt64 = 0

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
        if case .chunkPayload(let key, let remaining) = state, remaining >= Self.directChunkReadMinimum,
           let transfer = transfers[key], let buffer = transfer.buffer {
            // Safe: as below; a transfer's buffer is freed only when it is delivered or dropped.
            return UnsafeMutableRawBufferPointer(rebasing: buffer[transfer.filled..<(transfer.filled + remaining)])
        }
        guard case .bigPayload(_, _, let filled, _) = state, let buffer = bigBuffer else { return nil }
        // Safe: the buffer lives until the payload is delivered or discarded, which
        // only didFillBigPayload / discardPartialPacket / deinit do.
        return UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])
    }

    /// Records `count` stream bytes written into ``bigPayloadRemainder``;
    /// delivers the packet when its payload is complete.
    package mutating func didFillBigPayload(_ count: Int, into sink: some PacketSink) {
        if case .chunkPayload(let key, let remaining) = state {
            precondition(count >= 0 && count <= remaining,
                         "PacketParser.didFillBigPayload(\(count)) exceeds the \(remaining) bytes left of the chunk")
            streamOffset += UInt64(count)
            transfers[key]!.filled += count
            noteTransferProgress(key)
            if count < remaining {
                state = .chunkPayload(key: key, remaining: remaining - count)
            } else {
                state = .packets
                _ = finishChunk(key, into: sink)
            }
            return
        }
        guard case .bigPayload(let isMessage, let id, let filled, let total) = state, let buffer = bigBuffer else {
            preconditionFailure("PacketParser.didFillBigPayload without a big payload being received")
        }
        precondition(count >= 0 && filled + count <= total,
                     "PacketParser.didFillBigPayload(\(count)) exceeds the \(total - filled) bytes left")
        streamOffset += UInt64(count)
        noteBigProgress(filled: filled + count)
        if filled + count < total {
            state = .bigPayload(isMessage: isMessage, id: id, filled: filled + count, total: total)
            return
        }
        state = .packets
        bigBuffer = nil
        defer { memory.free(buffer) }
        let payload = UnsafeRawBufferPointer(buffer)
        _ = isMessage ? sink.receivedMessage(id: id, payload: payload) : sink.receivedResponse(id: id, payload: payload)
    }

    /// Creates a parser at the start of a stream; `extensions` are the ones
    /// this side announces (the packets of those the peer announces too are accepted).
    package init(maximumPayloadSize: Int = 64 << 20, maximumHandshakeSize: Int = 65536,
                inlinePayloadLimit: Int = 65536, extensions: RPCExtensions = [], memory: PayloadMemory = PayloadMemory()) {
        self.maximumPayloadSize = maximumPayloadSize
        self.maximumHandshakeSize = maximumHandshakeSize
        self.inlinePayloadLimit = inlinePayloadLimit
        self.localExtensions = extensions
        self.memory = memory
    }

    deinit {
        // What is still held goes back to the shared budget with the buffers.
        memory.shared?.release(memory.held)
        if let bigBuffer { BufferReleaser.free(bigBuffer) }
        for transfer in transfers.values { if let buffer = transfer.buffer { BufferReleaser.free(buffer) } }
        if let spareBuffer { BufferReleaser.free(spareBuffer) }
    }

    /// Drops a big payload being received and every chunked transfer (frees
    /// their buffers); for a stream that ended. Parsing must not continue afterwards.
    package mutating func discardPartialPacket() {
        if let buffer = bigBuffer { memory.free(buffer) }
        bigBuffer = nil
        for transfer in transfers.values { if let buffer = transfer.buffer { memory.free(buffer) } }
        transfers.removeAll()
        if let spare = spareBuffer { memory.free(spare) }
        spareBuffer = nil
        messageTransfers = 0
        responseTransfers = 0
        switch state {
        case .bigPayload, .chunkPayload: state = .packets
        default: break
        }
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
                    // A run of KEEPALIVEs is one unit of work: a flood of them costs a scan, not a call each.
                    let first = offset
                    offset += 1
                    while offset < count && input[offset] == 1 { offset += 1 }
                    if !sink.receivedKeepalives(offset - first) { return offset }
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
                        // Too big to wait for in the caller's buffer: stream it into its own (or skip it).
                        offset += header
                        if !startBigPayload(isMessage: isMessage, id: id, length: length, into: sink) { return offset }
                    } else {
                        return offset // wait for the rest of the frame
                    }
                case 6...15:
                    let (used, goOn) = try parseExtensionPacket(type, input, at: offset, into: sink)
                    if used == 0 { return offset }
                    offset += used
                    if !goOn { return offset }
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

            case .bigPayload(let isMessage, let id, let filled, let total):
                let n = min(available, total - filled)
                if let buffer = bigBuffer { // else skipped
                    buffer.baseAddress!.advanced(by: filled)
                        .copyMemory(from: input.baseAddress!.advanced(by: offset), byteCount: n)
                }
                offset += n
                noteBigProgress(filled: filled + n)
                if filled + n < total {
                    state = .bigPayload(isMessage: isMessage, id: id, filled: filled + n, total: total)
                    return offset
                }
                state = .packets
                guard let buffer = bigBuffer else { continue }
                bigBuffer = nil
                defer { memory.free(buffer) }
                let payload = UnsafeRawBufferPointer(buffer)
                let goOn = isMessage ? sink.receivedMessage(id: id, payload: payload)
                                     : sink.receivedResponse(id: id, payload: payload)
                if !goOn { return offset }

            case .chunkPayload(let key, let remaining):
                let (used, goOn) = continueChunk(key, remaining: remaining, input, at: offset, into: sink)
                offset += used
                if !goOn || used < remaining { return offset }

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
                agreedExtensions = localExtensions.intersection(info.extensions)
                if !sink.receivedHandshake(info) { return offset }
            }
        }
        return offset
    }
}
