/// The extension packets (types 6-15) and the reassembly of chunked
/// payloads (their buffers: PacketParser+Partials.swift): the part of
/// ``PacketParser`` that only a peer which announced
/// the extensions reaches (see Docs/PROTOCOL.md, "Extensions"). Kept out of
/// `parse`'s body: inlined there, it made the specialised frame loop stop
/// inlining the sink's `receivedMessage`.
extension PacketParser {
    /// Returns ``chunkBytesToAcknowledge`` and starts counting again.
    package mutating func takeChunkBytesToAcknowledge() -> Int {
        defer { chunkBytesToAcknowledge = 0 }
        return chunkBytesToAcknowledge
    }

    /// Drops transfer `key` if it is in progress (its sender gave it up);
    /// whether there was one.
    @discardableResult
    mutating func dropTransfer(_ key: UInt32) -> Bool {
        guard let transfer = transfers.removeValue(forKey: key) else { return false }
        if let buffer = transfer.buffer { recycle(buffer) }
        if key & 0x1_0000 != 0 { messageTransfers -= 1 } else { responseTransfers -= 1 }
        return true
    }

    /// After a chunk's last byte: delivers transfer `key` if it is complete.
    /// Returns whether parsing should go on.
    @inline(never)
    mutating func finishChunk(_ key: UInt32, into sink: some PacketSink) -> Bool {
        guard let transfer = transfers[key], transfer.filled == transfer.total else { return true }
        transfers[key] = nil
        let isMessage = key & 0x1_0000 != 0
        if isMessage { messageTransfers -= 1 } else { responseTransfers -= 1 }
        guard let buffer = transfer.buffer else { return true } // skipped: nothing to deliver
        defer { recycle(buffer) }
        let id = UInt16(truncatingIfNeeded: key)
        let payload = UnsafeRawBufferPointer(rebasing: buffer[0..<transfer.total])
        return isMessage ? sink.receivedMessage(id: id, payload: payload) : sink.receivedResponse(id: id, payload: payload)
    }

    /// Copies the next bytes of the CHUNK being received from `input` at
    /// `offset` into place; returns the bytes taken and whether to go on.
    @inline(never)
    mutating func continueChunk(_ key: UInt32, remaining: Int, _ input: UnsafeRawBufferPointer, at offset: Int,
                                        into sink: some PacketSink) -> (Int, Bool) {
        let n = min(input.count - offset, remaining)
        let transfer = transfers[key]!
        if let buffer = transfer.buffer { // else skipped
            // Safe: n bytes are inside `input`, and `remaining` was checked against the buffer.
            (buffer.baseAddress! + transfer.filled).copyMemory(from: input.baseAddress! + offset, byteCount: n)
        }
        transfers[key]!.filled += n
        noteTransferProgress(key)
        if n < remaining {
            state = .chunkPayload(key: key, remaining: remaining - n)
            return (n, true)
        }
        state = .packets
        return (n, finishChunk(key, into: sink))
    }

    /// Whether the packet type `type` belongs to an extension both sides announced.
    @inline(__always)
    func agreed(_ type: UInt8) -> Bool {
        switch type {
        case 6: return agreedExtensions.contains(.errorAnswers)
        case 7, 8: return agreedExtensions.contains(.cancellation)
        case 9, 10, 11, 12, 14: return agreedExtensions.contains(.chunking)
        case 13: return agreedExtensions.contains(.goAway)
        case 15: return agreedExtensions.contains(.metadata)
        default: return false
        }
    }

    /// Parses one extension packet (type 6-15, agreed) at `offset`. Returns
    /// the bytes it consumed (0: wait for more) and whether to go on.
    /// (Not inlined: inside `parse` it made the specialised per-frame path
    /// stop inlining the sink's `receivedMessage`, ~27 instructions per call.)
    @inline(never)
    mutating func parseExtensionPacket(_ type: UInt8, _ input: UnsafeRawBufferPointer, at offset: Int,
                                               into sink: some PacketSink) throws(ProtocolViolation) -> (Int, Bool) {
        let available = input.count - offset
        func u16(_ at: Int) -> Int { Int(input[offset + at]) << 8 | Int(input[offset + at + 1]) }
        guard agreed(type) else {
            // Not agreed: an unknown type, as for the reference (see the type's comment).
            throw .unknownPacketType(type, streamOffset: streamOffset + UInt64(offset))
        }
        switch type {
        case 13:
            return (1, sink.receivedGoAway())
        case 15:
            guard available >= 5 else { return (0, true) }
            let length = u16(3)
            if length > Wire.maximumMetadata { throw .metadataTooLong(declared: length, limit: Wire.maximumMetadata) }
            guard available >= 5 + length else { return (0, true) }
            let entries = UnsafeRawBufferPointer(rebasing: input[(offset + 5)..<(offset + 5 + length)])
            return (5 + length, sink.receivedMetadata(id: UInt16(u16(1)), entries: entries))
        case 14:
            guard available >= 5 else { return (0, true) }
            return (5, sink.receivedChunkAcknowledgement(bytes: u16(1) << 16 | u16(3)))
        case 7, 8:
            guard available >= 3 else { return (0, true) }
            let id = UInt16(u16(1))
            if type == 7 {
                let dropped = dropTransfer(Self.transferKey(isMessage: true, id: id))
                return (3, sink.receivedCancel(id: id, droppedPartialMessage: dropped))
            }
            dropTransfer(Self.transferKey(isMessage: false, id: id))
            return (3, sink.receivedCancelAcknowledgement(id: id))
        case 6:
            guard available >= 6 else { return (0, true) }
            let length = u16(4)
            if length > Wire.maximumErrorReason { throw .errorReasonTooLong(declared: length, limit: Wire.maximumErrorReason) }
            guard available >= 6 + length else { return (0, true) }
            let reason = UnsafeRawBufferPointer(rebasing: input[(offset + 6)..<(offset + 6 + length)])
            return (6 + length, sink.receivedError(id: UInt16(u16(1)), code: input[offset + 3], reason: reason))
        case 9, 10:
            guard available >= 7 else { return (0, true) }
            let packet = PacketType(rawValue: type)!
            let id = UInt16(u16(1))
            let total = u16(3) << 16 | u16(5)
            if total > maximumPayloadSize { throw .payloadTooLarge(declared: total, limit: maximumPayloadSize, packet: packet) }
            let isMessage = type == 9
            let key = Self.transferKey(isMessage: isMessage, id: id)
            if transfers[key] != nil { throw .transferAlreadyStarted(packet: packet, id: id) }
            if (isMessage ? messageTransfers : responseTransfers) >= Wire.maximumTransfers {
                throw .tooManyTransfers(packet: packet, limit: Wire.maximumTransfers)
            }
            if total == 0 {
                let empty = UnsafeRawBufferPointer(start: nil, count: 0)
                return (7, isMessage ? sink.receivedMessage(id: id, payload: empty) : sink.receivedResponse(id: id, payload: empty))
            }
            // Kept only when it will be delivered and the budgets allow; else skipped as it arrives.
            var buffer: UnsafeMutableRawBufferPointer?
            var goOn = true
            if isMessage || sink.awaitsResponse(id: id) {
                switch reassemblyBuffer(total) {
                case .success(let made): buffer = made
                case .failure(let reason): goOn = sink.refusedPayload(isMessage: isMessage, id: id, size: total, reason: reason)
                }
            }
            transfers[key] = Transfer(buffer: buffer, total: total, progress: Progress(at: clock, filled: 0))
            if isMessage { messageTransfers += 1 } else { responseTransfers += 1 }
            return (7, goOn)
        default: // 11, 12
            guard available >= 5 else { return (0, true) }
            let packet = PacketType(rawValue: type)!
            let id = UInt16(u16(1))
            let length = u16(3)
            let key = Self.transferKey(isMessage: type == 11, id: id)
            guard let transfer = transfers[key] else { throw .chunkNotStarted(packet: packet, id: id) }
            if transfer.filled + length > transfer.total {
                throw .chunkPastEnd(packet: packet, id: id, total: transfer.total, through: transfer.filled + length)
            }
            let n = min(available - 5, length)
            if n > 0, let buffer = transfer.buffer { // else skipped
                // Safe: n bytes are inside `input` and, by the check above, inside the buffer.
                (buffer.baseAddress! + transfer.filled)
                    .copyMemory(from: input.baseAddress! + offset + 5, byteCount: n)
            }
            transfers[key]!.filled += n
            noteTransferProgress(key)
            chunkBytesToAcknowledge += length // the whole chunk is taken, even the part still to come
            if n < length {
                state = .chunkPayload(key: key, remaining: length - n)
                return (5 + n, true)
            }
            return (5 + n, finishChunk(key, into: sink))
        }
    }
}
