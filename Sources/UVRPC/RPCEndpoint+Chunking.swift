import UVLoop

/// Chunked big payloads (extension `chunk`): the sending half.
///
/// With the extension agreed, a payload over 65535 bytes is not written as
/// one MESSAGE_BIG / RESPONSE_BIG (which the connection would send whole
/// before anything written after it) but as a *transfer*: a START with the
/// total length, then CHUNKs of up to ``Wire/chunkSize`` bytes. Chunks are
/// fed to the connection only while it holds less than ``chunkWindow``
/// unsent bytes, one chunk per transfer in turn, so a small packet written
/// meanwhile waits behind at most that window, and big transfers share the
/// connection fairly. The connection calls back after each flush
/// (`Connection.onWriteProgress`), which tops the window up again.
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

    /// Unsent bytes the connection may hold before more chunks are written.
    static let chunkWindow = 128 << 10

    /// Whether a payload of `count` bytes goes out as a chunked transfer.
    @inline(__always)
    func sendsChunked(_ count: Int) -> Bool {
        count > Wire.maximumShortPayload && agreed.contains(.chunking)
    }

    /// Starts sending `payload` as message (or response) `id` in chunks.
    /// `owned`, when given, holds the same bytes as `payload` and is kept instead of a copy.
    func startTransfer(isResponse: Bool, id: UInt16, payload: UnsafeRawBufferPointer, owned: [UInt8]? = nil) {
        let transfer = OutgoingTransfer(isResponse: isResponse, id: id, payload: owned ?? Array(payload))
        unsentTransferBytes += payload.count
        if activeTransfers.lazy.filter({ $0.isResponse == isResponse }).count < Wire.maximumTransfers {
            activate(transfer)
        } else {
            waitingTransfers.append(transfer)
        }
        connection.wantsWriteProgress = true
        pumpChunks()
    }

    /// Writes a transfer's START and puts it among those being sent.
    private func activate(_ transfer: OutgoingTransfer) {
        let header = PacketWriter.wideHeader(transfer.isResponse ? .responseStart : .messageStart,
                                             id: transfer.id, length: transfer.payload.count)
        do {
            try connection.write(header: header, headerCount: 7, payload: UnsafeRawBufferPointer(start: nil, count: 0))
            activeTransfers.append(transfer)
        } catch {
            unsentTransferBytes -= transfer.payload.count - transfer.sent // closing: the close path reports it
        }
    }

    /// Writes chunks, one per transfer in turn, while the connection holds
    /// less than ``chunkWindow`` unsent bytes.
    func pumpChunks() {
        while !activeTransfers.isEmpty, !closing, connection.pendingWriteBytes < Self.chunkWindow {
            if transferCursor >= activeTransfers.count { transferCursor = 0 }
            let i = transferCursor
            let (id, isResponse, sent) = (activeTransfers[i].id, activeTransfers[i].isResponse, activeTransfers[i].sent)
            let n = min(Wire.chunkSize, activeTransfers[i].payload.count - sent)
            let header = PacketWriter.shortHeader(isResponse ? .responseChunk : .messageChunk, id: id, length: n)
            let written = activeTransfers[i].payload.withUnsafeBytes { all in
                Result { () throws(ConnectionError) in
                    try connection.write(header: header, headerCount: 5,
                                         payload: UnsafeRawBufferPointer(rebasing: all[sent..<(sent + n)]))
                }
            }
            guard case .success = written else { return } // closing: the close path ends the transfers
            activeTransfers[i].sent += n
            unsentTransferBytes -= n
            if sent + n == activeTransfers[i].payload.count {
                activeTransfers.remove(at: i)
                transferEnded(isResponse: isResponse)
            } else {
                transferCursor = i + 1
            }
        }
    }

    /// Drops the transfer of message (or response) `id`, started or waiting,
    /// if there is one: its call was cancelled.
    func dropTransfer(isResponse: Bool, id: UInt16) {
        if let i = activeTransfers.firstIndex(where: { $0.id == id && $0.isResponse == isResponse }) {
            let transfer = activeTransfers.remove(at: i)
            unsentTransferBytes -= transfer.payload.count - transfer.sent
            transferEnded(isResponse: isResponse)
        } else if let i = waitingTransfers.firstIndex(where: { $0.id == id && $0.isResponse == isResponse }) {
            unsentTransferBytes -= waitingTransfers.remove(at: i).payload.count
        }
    }

    /// After a transfer of that kind ended: starts the next waiting one, and
    /// lets held-back work go on once the transfers' bytes are low again.
    private func transferEnded(isResponse: Bool) {
        if let next = waitingTransfers.firstIndex(where: { $0.isResponse == isResponse }) {
            activate(waitingTransfers.remove(at: next))
        }
        if activeTransfers.isEmpty { connection.wantsWriteProgress = false }
        if pausedForBackpressure && !readingBackpressured { resumeReadingAfterBackpressure() }
    }

    /// Forgets every transfer (the endpoint is closing).
    func dropAllTransfers() {
        activeTransfers.removeAll()
        waitingTransfers.removeAll()
        unsentTransferBytes = 0
        connection.wantsWriteProgress = false
    }
}
