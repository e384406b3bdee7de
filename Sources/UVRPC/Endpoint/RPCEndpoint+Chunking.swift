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
/// then waits behind about a loopback's 30 µs of chunks), and the larger
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
extension RPCEndpoint {
    /// A payload being sent in chunks.
    struct OutgoingTransfer {
        var isResponse: Bool
        var id: UInt16
        var payload: [UInt8]
        /// Bytes of `payload` already written as chunks.
        var sent = 0
    }

    /// Bytes of payload per CHUNK (the last chunk of a payload may be shorter).
    static let chunkPayloadSize = 8192
    /// The window while small packets flow (see the type's comment).
    static let latencyWindow = 32 << 10
    /// The window while only big transfers flow.
    static let bulkWindow = 1 << 20
    /// Small packets written within this many milliseconds keep the latency window.
    static let smallTrafficMemory: UInt64 = 1000

    /// The current window: ``latencyWindow`` when small packets were written
    /// on this loop within ``smallTrafficMemory``, else ``bulkWindow``.
    var chunkWindow: Int {
        // The loop's packet counters: no cost on the small-packet path, and a
        // busy neighbour connection on the loop counts as small traffic too.
        let small = metrics.callsSent &+ metrics.responsesSent
        let now = loopNow
        if small != outgoing.smallPacketsAtLastPump {
            outgoing.smallPacketsAtLastPump = small
            outgoing.lastSmallPacketAt = now
        }
        return now &- outgoing.lastSmallPacketAt < Self.smallTrafficMemory ? Self.latencyWindow : Self.bulkWindow
    }

    /// Whether a payload of `count` bytes goes out as a chunked transfer.
    @inline(__always)
    func sendsChunked(_ count: Int) -> Bool {
        count > Wire.maximumShortPayload && agreed.contains(.chunking)
    }

    /// Starts sending `payload` as message (or response) `id` in chunks.
    /// `owned`, when given, holds the same bytes as `payload` and is kept instead of a copy.
    func startTransfer(isResponse: Bool, id: UInt16, payload: UnsafeRawBufferPointer, owned: [UInt8]? = nil) {
        let transfer = OutgoingTransfer(isResponse: isResponse, id: id, payload: owned ?? Array(payload))
        outgoing.unsentBytes += payload.count
        payloadBudget?.charge(payload.count) // given back by discard(_:)
        if outgoing.active.lazy.filter({ $0.isResponse == isResponse }).count < Wire.maximumTransfers {
            activate(transfer)
        } else {
            outgoing.waiting.append(transfer)
        }
        connection.wantsWriteProgress = true
        pumpChunks()
    }

    /// Writes a transfer's START and puts it among those being sent.
    private func activate(_ transfer: OutgoingTransfer) {
        let header = PacketWriter.wideHeader(transfer.isResponse ? .responseStart : .messageStart,
                                             id: transfer.id, length: transfer.payload.count)
        do {
            try writeControlPacket(header, headerCount: 7)
            outgoing.active.append(transfer)
        } catch {
            outgoing.unsentBytes -= transfer.payload.count - transfer.sent // closing: the close path reports it
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
        while !outgoing.active.isEmpty, !closing,
              outgoing.unacknowledgedBytes + Self.chunkPayloadSize <= window
                || (pausedForBackpressure && connection.pendingWriteBytes < Self.latencyWindow) {
            if outgoing.cursor >= outgoing.active.count { outgoing.cursor = 0 }
            let i = outgoing.cursor
            let (id, isResponse, sent) = (outgoing.active[i].id, outgoing.active[i].isResponse, outgoing.active[i].sent)
            let n = min(Self.chunkPayloadSize, outgoing.active[i].payload.count - sent)
            let header = PacketWriter.shortHeader(isResponse ? .responseChunk : .messageChunk, id: id, length: n)
            let written = outgoing.active[i].payload.withUnsafeBytes { all in
                Result { () throws(ConnectionError) in
                    try connection.write(header: header, headerCount: 5,
                                         payload: UnsafeRawBufferPointer(rebasing: all[sent..<(sent + n)]))
                }
            }
            guard case .success = written else { return } // closing: the close path ends the transfers
            outgoing.active[i].sent += n
            outgoing.unsentBytes -= n
            if outgoing.unacknowledgedBytes == 0 { (outgoing.lastProgressAt, outgoing.ackProgressAt) = (loopNow, loopNow) }
            outgoing.unacknowledgedBytes += n
            if sent + n == outgoing.active[i].payload.count {
                discard(outgoing.active.remove(at: i))
                transferEnded(isResponse: isResponse)
            } else {
                outgoing.cursor = i + 1
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
        guard bytes <= outgoing.unacknowledgedBytes else {
            protocolViolated(.excessChunkAcknowledgement(acknowledged: bytes, outstanding: outgoing.unacknowledgedBytes))
            return false
        }
        outgoing.unacknowledgedBytes -= bytes
        outgoing.lastProgressAt = loopNow
        outgoing.ackedSinceProgress += bytes
        if outgoing.ackedSinceProgress >= PacketParser.progressQuantum || outgoing.unacknowledgedBytes == 0 {
            (outgoing.ackProgressAt, outgoing.ackedSinceProgress) = (outgoing.lastProgressAt, 0)
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
        guard outgoing.unacknowledgedBytes > 0, !pausedForBackpressure else { return }
        // A trickle of acknowledgements (less than 64 KiB per progress timeout) holds our chunks as long.
        let progressTimeout = configuration.payloadProgressTimeout
        if now &- outgoing.ackProgressAt >= progressTimeout.roundedUpMilliseconds {
            logger.info("the peer acknowledged less than 64 KiB of chunks within the progress timeout; closing", metadata: [
                "rpc.peer": "\(peerDescription)",
                "rpc.unacknowledged": "\(outgoing.unacknowledgedBytes)", "rpc.unsent": "\(outgoing.unsentBytes)",
            ])
            return close(reason: .payloadStalled(progressTimeout))
        }
        guard let timeout = connection.options.writeTimeout, now &- outgoing.lastProgressAt >= timeout.roundedUpMilliseconds else { return }
        logger.info("the peer acknowledged no chunk for the write timeout; closing", metadata: [
            "rpc.peer": "\(peerDescription)",
            "rpc.unacknowledged": "\(outgoing.unacknowledgedBytes)",
        ])
        close(reason: .connectionFailed(.writeTimedOut(connection: connection.label,
                                                       pendingBytes: outgoing.unacknowledgedBytes + outgoing.unsentBytes,
                                                       timeout: timeout)))
    }

    /// Tops the window up on the next loop iteration (after its reads).
    func schedulePump() {
        guard !outgoing.active.isEmpty, !closing, outgoing.pumpTimer?.isActive != true else { return }
        if outgoing.pumpTimer == nil { outgoing.pumpTimer = eventLoop.makeTimer { [unowned self] in self.pumpChunks() } }
        outgoing.pumpTimer!.start(after: .zero)
    }

    /// Drops the transfer of message (or response) `id`, started or waiting,
    /// if there is one: its call was cancelled.
    func dropTransfer(isResponse: Bool, id: UInt16) {
        if let i = outgoing.active.firstIndex(where: { $0.id == id && $0.isResponse == isResponse }) {
            let transfer = outgoing.active.remove(at: i)
            outgoing.unsentBytes -= transfer.payload.count - transfer.sent
            discard(transfer)
            transferEnded(isResponse: isResponse)
        } else if let i = outgoing.waiting.firstIndex(where: { $0.id == id && $0.isResponse == isResponse }) {
            let transfer = outgoing.waiting.remove(at: i)
            outgoing.unsentBytes -= transfer.payload.count
            discard(transfer)
        }
    }

    /// After a transfer of that kind ended: starts the next waiting one, and
    /// lets held-back work go on once the transfers' bytes are low again.
    private func transferEnded(isResponse: Bool) {
        if let next = outgoing.waiting.firstIndex(where: { $0.isResponse == isResponse }) {
            activate(outgoing.waiting.remove(at: next))
        }
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
        for transfer in outgoing.active + outgoing.waiting { discard(transfer) }
        outgoing.active.removeAll()
        outgoing.waiting.removeAll()
        outgoing.unsentBytes = 0
        outgoing.unacknowledgedBytes = 0
        connection.wantsWriteProgress = false
        outgoing.pumpTimer?.close()
        outgoing.pumpTimer = nil
    }
}
