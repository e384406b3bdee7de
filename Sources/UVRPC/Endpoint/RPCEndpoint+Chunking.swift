import UVLoop

/// Chunked big payloads (extension `chunk`): the sending half.
///
/// With the extension agreed, a payload over 65535 bytes is not written as
/// one MESSAGE_BIG / RESPONSE_BIG (which the connection would send whole
/// before anything written after it) but as a *transfer*: a START with the
/// total length, then CHUNKs of up to ``chunkPayloadSize`` bytes, one chunk
/// per transfer in turn (big transfers share the connection fairly), and
/// only while fewer than ``chunkWindow`` chunk bytes are on their way: a
/// small packet written meanwhile waits behind at most that many. The connection calls back after each flush
/// (`Connection.onWriteProgress`), which tops the window up again on the
/// loop's next iteration: never in the same turn, or a fast socket would
/// take the whole payload in one turn while nothing is read.
///
/// "On their way" counts every buffer between the two sides: the kernel's
/// socket buffers hold megabytes, so a limit on this side's unsent bytes
/// alone would still let a small packet queue behind that much. The peer
/// acknowledges the chunk bytes it has read (CHUNK_ACK, after each read),
/// and the window bounds the bytes written and not yet acknowledged. It is
/// ``latencyWindow`` while small packets flow on the loop (a small call
/// then waits behind at most that much: 64 KiB, tens of microseconds on
/// loopback), and the larger
/// ``bulkWindow`` while only big transfers do (throughput is the window per
/// round trip).
///
/// At most ``Wire/maximumTransfers`` transfers of each kind (messages,
/// responses) are in progress at once, as the peer enforces; more wait,
/// in order, without their START written. A started transfer ends when its
/// last chunk is written, or when its call is cancelled (CANCEL for our
/// message, which tells the peer to drop what it reassembled; the peer's
/// CANCEL for a response we are sending, answered by CANCEL_ACK, which
/// tells it the same).
///
/// The transfers, the window and the acknowledgement clocks are
/// ``OutgoingTransfers``' (`outgoing`); the writing is here.
extension RPCEndpoint {
    typealias OutgoingTransfer = OutgoingTransfers.Transfer

    /// Bytes of payload per CHUNK (the last chunk of a payload may be shorter).
    static let chunkPayloadSize = 8192
    /// The window while small packets flow (see the type's comment).
    static let latencyWindow = 64 << 10
    /// The window while only big transfers flow.
    static let bulkWindow = 1 << 20
    /// Small packets written within this many milliseconds keep the latency window.
    static let smallTrafficMemory: UInt64 = 1000

    /// The current window: ``latencyWindow`` when small packets were written
    /// on this loop within ``smallTrafficMemory``, else ``bulkWindow``.
    var chunkWindow: Int {
        // The loop's packet counters: no cost on the small-packet path, and a
        // busy neighbour connection on the loop counts as small traffic too.
        // Chunked transfers are counted among the calls and responses but are
        // not small packets: counted as such, a stream of big calls one after
        // another kept the latency window, a third of the bulk throughput.
        outgoing.window(smallPacketsWritten: metrics.callsSent &+ metrics.responsesSent &- metrics.chunkedTransfersSent,
                        now: loopNow)
    }

    /// Whether a payload of `count` bytes goes out as a chunked transfer.
    @inline(__always)
    func sendsChunked(_ count: Int) -> Bool {
        count > Wire.maximumShortPayload && agreed.contains(.chunking)
    }

    /// Starts sending `payload` as message (or response) `id` in chunks.
    /// `owned`, when given, holds the same bytes as `payload` and is kept instead of a copy.
    func startTransfer(isResponse: Bool, id: UInt16, payload: UnsafeRawBufferPointer, owned: [UInt8]? = nil,
                       metadata: [UInt8]? = nil, metadataDeadlineSince: UInt64? = nil) {
        let transfer = OutgoingTransfer(isResponse: isResponse, id: id, payload: owned ?? Array(payload), metadata: metadata,
                                        metadataDeadlineSince: metadataDeadlineSince)
        // Counted as sent, and as chunked, before its first chunks go: the
        // chunk window (chunkWindow) tells small packets from big ones by both.
        if isResponse { metrics.responsesSent &+= 1 } else { metrics.callsSent &+= 1 }
        metrics.chunkedTransfersSent &+= 1
        payloadBudget?.charge(payload.count) // given back by discard(_:)
        if let startsNow = outgoing.add(transfer) { activate(startsNow) }
        connection.wantsWriteProgress = true
        pumpChunks()
    }

    /// Writes a transfer's START and puts it among those being sent.
    private func activate(_ transfer: OutgoingTransfer) {
        let header = PacketWriter.wideHeader(transfer.isResponse ? .responseStart : .messageStart,
                                             id: transfer.id, length: transfer.payload.count)
        do {
            if var metadata = transfer.metadata {
                // The deadline is the time left when it is written: less what the transfer waited for its slot.
                if let since = transfer.metadataDeadlineSince, loopNow > since {
                    metadata = RPCMetadata.entries(metadata, deadlineLessBy: loopNow - since)
                }
                try writeMetadata(id: transfer.id, metadata)
            }
            try writeControlPacket(header, headerCount: 7)
            outgoing.activate(transfer)
        } catch {
            outgoing.activationFailed(transfer) // closing: the close path reports it
            discard(transfer)
        }
    }

    /// Writes chunks, one per transfer in turn, while fewer than
    /// ``chunkWindow`` chunk bytes are on their way.
    func pumpChunks() {
        guard !outgoing.active.isEmpty else { return }
        let window = chunkWindow
        // While reading is paused (backpressure), the peer's CHUNK_ACKs are not
        // read either: chunks then go as the connection drains (what the
        // window would let pass, minus the acknowledgements), or neither side moves.
        while !closing, outgoing.mayWriteChunk(window: window, readingPaused: pausedForBackpressure,
                                               pendingWriteBytes: connection.pendingWriteBytes) {
            let chunk = outgoing.nextChunk()
            let header = PacketWriter.shortHeader(chunk.isResponse ? .responseChunk : .messageChunk, id: chunk.id,
                                                  length: chunk.range.count)
            let written = outgoing.withBytes(of: chunk) { bytes in
                Result { () throws(ConnectionError) in try connection.write(header: header, headerCount: 5, payload: bytes) }
            }
            guard case .success = written else { return } // closing: the close path ends the transfers
            if let finished = outgoing.chunkWritten(chunk, now: loopNow) {
                discard(finished)
                transferEnded(isResponse: chunk.isResponse)
            }
        }
    }

    /// Tells the peer how many chunk bytes this side read (after each read).
    func acknowledgeChunks() {
        let count = parser.takeChunkBytesToAcknowledge()
        guard !closing else { return }
        try? writeControlPacket(PacketWriter.countHeader(.chunkAcknowledged, count: count), headerCount: 5)
    }

    package func receivedChunkAcknowledgement(bytes: Int) -> Bool {
        guard outgoing.acknowledge(bytes, now: loopNow) else {
            protocolViolated(.excessChunkAcknowledgement(acknowledged: bytes, outstanding: outgoing.unacknowledgedBytes))
            return false
        }
        pumpChunks()
        return countPacket()
    }

    /// The write timeout, for chunks: a peer that acknowledges none of the
    /// chunk bytes it was sent for ``Configuration/writeTimeout`` reads
    /// nothing (its kernel buffers can hold the whole window, so the
    /// connection's own write timeout never sees a write wait), and is cut
    /// off the same way. Checked with the liveness checks.
    func checkChunkAcknowledgements(now: UInt64) {
        let progressTimeout = configuration.payloadProgressTimeout
        let writeTimeout = connection.options.writeTimeout
        switch outgoing.acknowledgementVerdict(now: now, readingPaused: pausedForBackpressure,
                                               progressTimeout: progressTimeout.roundedUpMilliseconds,
                                               writeTimeout: writeTimeout?.roundedUpMilliseconds) {
        case .fine:
            return
        case .stalled:
            // A trickle of acknowledgements (less than 64 KiB per progress timeout) holds our chunks as long.
            logger.info("the peer acknowledged less than 64 KiB of chunks within the progress timeout; closing", metadata: [
                "rpc.peer": "\(peerDescription)",
                "rpc.unacknowledged": "\(outgoing.unacknowledgedBytes)", "rpc.unsent": "\(outgoing.unsentBytes)",
            ])
            close(reason: .payloadStalled(progressTimeout))
        case .writeTimedOut:
            logger.info("the peer acknowledged no chunk for the write timeout; closing", metadata: [
                "rpc.peer": "\(peerDescription)",
                "rpc.unacknowledged": "\(outgoing.unacknowledgedBytes)",
            ])
            close(reason: .connectionFailed(.writeTimedOut(connection: connection.label,
                                                           pendingBytes: outgoing.unacknowledgedBytes + outgoing.unsentBytes,
                                                           timeout: writeTimeout!)))
        }
    }

    /// Tops the window up on the next loop iteration (after its reads).
    func schedulePump() {
        guard !outgoing.active.isEmpty, !closing, pumpTimer?.isActive != true else { return }
        if pumpTimer == nil { pumpTimer = eventLoop.makeTimer { [unowned self] in self.pumpChunks() } }
        pumpTimer!.start(after: .zero)
    }

    /// Drops the transfer of message (or response) `id`, started or waiting,
    /// if there is one: its call was cancelled.
    func dropTransfer(isResponse: Bool, id: UInt16) {
        guard let (transfer, wasActive) = outgoing.remove(isResponse: isResponse, id: id) else { return }
        discard(transfer)
        if wasActive { transferEnded(isResponse: isResponse) }
    }

    /// After a transfer of that kind ended: starts the next waiting one, and
    /// lets held-back work go on once the transfers' bytes are low again.
    private func transferEnded(isResponse: Bool) {
        if let next = outgoing.nextWaiting(isResponse: isResponse) { activate(next) }
        if outgoing.active.isEmpty { connection.wantsWriteProgress = false }
        if pausedForBackpressure && !readingBackpressured { resumeReadingAfterBackpressure() }
        closeIfDrained()
    }

    /// A transfer ended (sent, cancelled or dropped): its payload is released
    /// (off the loop when big) and its charge to the shared budget given back.
    private func discard(_ transfer: OutgoingTransfer) {
        payloadBudget?.release(transfer.payload.count)
        BufferReleaser.release(transfer.payload)
    }

    /// Forgets every transfer (the endpoint is closing).
    func dropAllTransfers() {
        for transfer in outgoing.removeAll() { discard(transfer) }
        connection.wantsWriteProgress = false
        pumpTimer?.close()
        pumpTimer = nil
    }
}
