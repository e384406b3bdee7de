/// The chunked transfers an endpoint sends (extension `chunk`) and their
/// flow control: which transfer's chunk goes next, whether the window lets
/// it go, and the acknowledgement clocks. The endpoint writes the packets
/// and runs the pump (``RPCEndpoint+Chunking.swift``, where the window and
/// its reasons are described).
struct OutgoingTransfers {
    /// A payload being sent in chunks.
    struct Transfer {
        var isResponse: Bool
        var id: UInt16
        var payload: [UInt8]
        /// Bytes of `payload` already written as chunks.
        var sent = 0
        /// A message's METADATA entries (extension `meta`), written right before its START.
        var metadata: [UInt8]? = nil
        /// When `metadata` ends with a deadline entry: the loop time it was
        /// encoded at (a transfer that waits for a slot sends what is left).
        var metadataDeadlineSince: UInt64? = nil
    }

    /// The next chunk to write: bytes `range` of the active transfer at `index`.
    struct Chunk: Equatable {
        var index: Int
        var id: UInt16
        var isResponse: Bool
        var range: Range<Int>
    }

    /// What the acknowledgements say about the peer (``acknowledgementVerdict(now:readingPaused:progressTimeout:writeTimeout:)``).
    enum AcknowledgementVerdict: Equatable {
        case fine
        /// Less than 64 KiB acknowledged within the payload progress timeout.
        case stalled
        /// Nothing acknowledged for the write timeout: the peer reads nothing.
        case writeTimedOut
    }

    /// Transfers being sent, and those waiting for a turn (at most
    /// ``Wire/maximumTransfers`` of each kind are active).
    private(set) var active: [Transfer] = []
    private(set) var waiting: [Transfer] = []
    /// The active transfer whose chunk goes next (round robin).
    private(set) var cursor = 0
    /// Payload bytes of transfers not yet written to the connection.
    private(set) var unsentBytes = 0
    /// CHUNK payload bytes written and not yet acknowledged by the peer (kept under the chunk window).
    private(set) var unacknowledgedBytes = 0
    /// When the peer last acknowledged chunk bytes, or chunk bytes went out
    /// with none unacknowledged (loop milliseconds): for the acknowledgement timeout.
    private(set) var lastProgressAt: UInt64 = 0
    /// When the peer's acknowledgements last moved 64 KiB (or cleared every
    /// chunk byte), and the bytes acknowledged since: for the payload progress timeout.
    private(set) var ackProgressAt: UInt64 = 0
    private(set) var ackedSinceProgress = 0
    /// The loop's count of MESSAGE / RESPONSE packets written, when chunks were last written.
    private(set) var smallPacketsAtLastPump = 0
    /// When a small packet was last seen written (loop milliseconds).
    private(set) var lastSmallPacketAt: UInt64 = 0

    /// No transfer being sent or waiting (for drain).
    var isIdle: Bool { active.isEmpty && waiting.isEmpty }

    /// The window at `now`, given the loop's count of small packets written:
    /// ``RPCEndpoint/latencyWindow`` when that count moved within
    /// ``RPCEndpoint/smallTrafficMemory``, else ``RPCEndpoint/bulkWindow``.
    mutating func window(smallPacketsWritten small: Int, now: UInt64) -> Int {
        if small != smallPacketsAtLastPump {
            smallPacketsAtLastPump = small
            lastSmallPacketAt = now
        }
        return now &- lastSmallPacketAt < RPCEndpoint.smallTrafficMemory ? RPCEndpoint.latencyWindow : RPCEndpoint.bulkWindow
    }

    // MARK: Starting and ending transfers

    /// Counts a new transfer's bytes as unsent; returns it when it may start
    /// now (fewer than ``Wire/maximumTransfers`` of its kind are active; the
    /// caller writes its START, then ``activate(_:)``), or queues it and returns nil.
    mutating func add(_ transfer: Transfer) -> Transfer? {
        unsentBytes += transfer.payload.count
        if active.lazy.filter({ $0.isResponse == transfer.isResponse }).count < Wire.maximumTransfers { return transfer }
        waiting.append(transfer)
        return nil
    }

    /// Its START was written: the transfer is among those being sent.
    mutating func activate(_ transfer: Transfer) { active.append(transfer) }

    /// Its START could not be written (closing): its bytes will never be sent.
    mutating func activationFailed(_ transfer: Transfer) { unsentBytes -= transfer.payload.count - transfer.sent }

    /// Takes the oldest waiting transfer of a kind (one of that kind ended), if any.
    mutating func nextWaiting(isResponse: Bool) -> Transfer? {
        guard let next = waiting.firstIndex(where: { $0.isResponse == isResponse }) else { return nil }
        return waiting.remove(at: next)
    }

    /// Removes the transfer of message (or response) `id`, active or waiting,
    /// and uncounts its unsent bytes; `wasActive` says which it was.
    mutating func remove(isResponse: Bool, id: UInt16) -> (transfer: Transfer, wasActive: Bool)? {
        if let i = active.firstIndex(where: { $0.id == id && $0.isResponse == isResponse }) {
            let transfer = active.remove(at: i)
            unsentBytes -= transfer.payload.count - transfer.sent
            return (transfer, true)
        }
        if let i = waiting.firstIndex(where: { $0.id == id && $0.isResponse == isResponse }) {
            let transfer = waiting.remove(at: i)
            unsentBytes -= transfer.payload.count
            return (transfer, false)
        }
        return nil
    }

    /// Takes every transfer, active then waiting (the endpoint is closing); nothing is unsent or unacknowledged after.
    mutating func removeAll() -> [Transfer] {
        let all = active + waiting
        active.removeAll()
        waiting.removeAll()
        unsentBytes = 0
        unacknowledgedBytes = 0
        return all
    }

    // MARK: Chunks

    /// Whether another chunk may go: fewer than `window` chunk bytes would be
    /// unacknowledged, or (`readingPaused`: the peer's acknowledgements are
    /// not read either) the connection has drained below ``RPCEndpoint/latencyWindow``.
    func mayWriteChunk(window: Int, readingPaused: Bool, pendingWriteBytes: @autoclosure () -> Int) -> Bool {
        !active.isEmpty && (unacknowledgedBytes + RPCEndpoint.chunkPayloadSize <= window
            || (readingPaused && pendingWriteBytes() < RPCEndpoint.latencyWindow))
    }

    /// The next chunk, of the active transfers in turn; there must be one.
    mutating func nextChunk() -> Chunk {
        if cursor >= active.count { cursor = 0 }
        let transfer = active[cursor]
        let n = min(RPCEndpoint.chunkPayloadSize, transfer.payload.count - transfer.sent)
        return Chunk(index: cursor, id: transfer.id, isResponse: transfer.isResponse,
                     range: transfer.sent..<(transfer.sent + n))
    }

    /// Calls `body` with the bytes of `chunk`, borrowed from its transfer.
    func withBytes<R>(of chunk: Chunk, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        // Valid only during `body`: a view into the transfer's array, within its bounds (`range` came from `nextChunk()`).
        try active[chunk.index].payload.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[chunk.range])) }
    }

    /// `chunk` was written at `now`: counts it sent and unacknowledged, and
    /// returns its transfer when that was the last chunk (it is no longer
    /// active); else the cursor moves to the next transfer.
    mutating func chunkWritten(_ chunk: Chunk, now: UInt64) -> Transfer? {
        let n = chunk.range.count
        active[chunk.index].sent += n
        unsentBytes -= n
        if unacknowledgedBytes == 0 { (lastProgressAt, ackProgressAt) = (now, now) }
        unacknowledgedBytes += n
        if chunk.range.upperBound == active[chunk.index].payload.count { return active.remove(at: chunk.index) }
        cursor = chunk.index + 1
        return nil
    }

    // MARK: Acknowledgements

    /// The peer acknowledged `bytes` chunk bytes at `now`; false (and nothing
    /// changes) when that is more than were unacknowledged: a protocol violation.
    mutating func acknowledge(_ bytes: Int, now: UInt64) -> Bool {
        guard bytes <= unacknowledgedBytes else { return false }
        unacknowledgedBytes -= bytes
        lastProgressAt = now
        ackedSinceProgress += bytes
        if ackedSinceProgress >= PacketParser.progressQuantum || unacknowledgedBytes == 0 {
            (ackProgressAt, ackedSinceProgress) = (lastProgressAt, 0)
        }
        return true
    }

    /// Whether the peer takes the chunks it was sent, at `now` (timeouts in
    /// milliseconds; no `writeTimeout`: none). Nothing to say while nothing is
    /// unacknowledged, or while reading is paused (its acknowledgements are not read).
    func acknowledgementVerdict(now: UInt64, readingPaused: Bool, progressTimeout: UInt64,
                                writeTimeout: UInt64?) -> AcknowledgementVerdict {
        guard unacknowledgedBytes > 0, !readingPaused else { return .fine }
        // A trickle of acknowledgements (less than 64 KiB per progress timeout) holds our chunks as long.
        if now &- ackProgressAt >= progressTimeout { return .stalled }
        guard let writeTimeout, now &- lastProgressAt >= writeTimeout else { return .fine }
        return .writeTimedOut
    }

    /// The loop was held up: the acknowledgements could not be read meanwhile,
    /// so the progress clock starts again.
    mutating func restartProgressClock(now: UInt64) { (ackProgressAt, ackedSinceProgress) = (now, 0) }

    /// Reading resumes after backpressure: neither acknowledgement clock counts the pause.
    mutating func restartClocks(now: UInt64) {
        (lastProgressAt, ackProgressAt, ackedSinceProgress) = (now, now, 0)
    }
}
