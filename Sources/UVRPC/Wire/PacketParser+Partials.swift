/// Payloads that arrive in parts (a MESSAGE_BIG / RESPONSE_BIG too big to
/// wait for in the read buffer, a chunked transfer): where their bytes go,
/// what they may hold, and whether they keep moving.
///
/// - A buffer is taken from ``memory`` only for a payload that will be
///   delivered: a response no call waits for (late, cancelled, never asked
///   for) is skipped as it arrives, and so is a payload the connection's
///   budget, the shared budget or the allocator cannot hold; the sink hears
///   of the refusal once (``PacketSink/refusedPayload(isMessage:id:size:reason:)``)
///   and the stream goes on.
/// - Every payload in parts records when it last moved
///   ``progressQuantum`` bytes (or started): ``stalledPayload(now:timeout:)``
///   finds one that a peer keeps open by trickling bytes.
extension PacketParser {
    /// The bytes a payload in parts must move within the progress timeout (or reach its end).
    package static let progressQuantum = 64 << 10

    /// A payload in parts that stopped moving.
    package struct StalledPayload: Equatable, Sendable {
        package var isMessage: Bool
        package var id: UInt16
        package var received: Int
        package var total: Int
    }

    /// Begins a big frame's payload: a buffer for it, or skipping. Returns whether to go on.
    mutating func startBigPayload(isMessage: Bool, id: UInt16, length: Int, into sink: some PacketSink) -> Bool {
        var goOn = true
        bigBuffer = nil
        if isMessage || sink.awaitsResponse(id: id) {
            switch allocatePayload(length) {
            case .success(let buffer): bigBuffer = buffer
            case .failure(let reason): goOn = sink.refusedPayload(isMessage: isMessage, id: id, size: length, reason: reason)
            }
        }
        bigProgress = Progress(at: clock, filled: 0)
        state = .bigPayload(isMessage: isMessage, id: id, filled: 0, total: length)
        return goOn
    }

    /// A buffer of `count` bytes from ``memory``; when a budget refuses it
    /// and the spare buffer is held, the spare is given back first.
    mutating func allocatePayload(_ count: Int) -> Result<UnsafeMutableRawBufferPointer, PayloadRefusal> {
        let first = memory.allocate(count)
        guard case .failure = first, let spare = spareBuffer else { return first }
        spareBuffer = nil
        memory.free(spare)
        return memory.allocate(count)
    }

    /// A buffer for a transfer of `total` bytes: the spare one when it fits
    /// without wasting more than half of it, else a new one.
    mutating func reassemblyBuffer(_ total: Int) -> Result<UnsafeMutableRawBufferPointer, PayloadRefusal> {
        if let spare = spareBuffer, spare.count >= total, spare.count / 2 <= total {
            spareBuffer = nil
            return .success(spare)
        }
        return allocatePayload(total)
    }

    /// Takes back a delivered or dropped transfer's buffer: kept as the spare when big, else freed.
    mutating func recycle(_ buffer: UnsafeMutableRawBufferPointer) {
        if buffer.count >= BufferReleaser.threshold {
            if let old = spareBuffer {
                if old.count >= buffer.count { return memory.free(buffer) }
                memory.free(old)
            }
            spareBuffer = buffer
        } else {
            memory.free(buffer)
        }
    }

    /// Frees the spare reassembly buffer (the connection went idle).
    package mutating func releaseSpareBuffer() {
        if let spare = spareBuffer { memory.free(spare) }
        spareBuffer = nil
    }

    // MARK: Progress

    /// Moves the big payload's progress mark to now once `filled` is a quantum past it.
    @inline(__always)
    mutating func noteBigProgress(filled: Int) {
        if filled &- bigProgress.filled >= Self.progressQuantum { bigProgress = Progress(at: clock, filled: filled) }
    }

    /// ``noteProgress(_:filled:)`` for transfer `key`.
    mutating func noteTransferProgress(_ key: UInt32) {
        guard let transfer = transfers[key] else { return }
        if transfer.filled &- transfer.progress.filled >= Self.progressQuantum {
            transfers[key]!.progress = Progress(at: clock, filled: transfer.filled)
        }
    }

    /// A payload in parts that has not moved ``progressQuantum`` bytes (or
    /// to its end) for `timeout` milliseconds up to `now`, if there is one.
    package func stalledPayload(now: UInt64, timeout: UInt64) -> StalledPayload? {
        if case .bigPayload(let isMessage, let id, let filled, let total) = state, now &- bigProgress.at >= timeout {
            return StalledPayload(isMessage: isMessage, id: id, received: filled, total: total)
        }
        for (key, transfer) in transfers where now &- transfer.progress.at >= timeout {
            return StalledPayload(isMessage: key & 0x1_0000 != 0, id: UInt16(truncatingIfNeeded: key),
                                  received: transfer.filled, total: transfer.total)
        }
        return nil
    }

    /// Starts every progress clock again at `now` (the caller stopped
    /// reading for a while: the peer's payloads could not move meanwhile).
    package mutating func restartProgressClocks(now: UInt64) {
        bigProgress.at = now
        for key in transfers.keys { transfers[key]!.progress.at = now }
    }

    /// Whether the payload of a message is being received (kept, not skipped):
    /// a message that counts as work in flight.
    package var hasPartialMessage: Bool {
        if case .bigPayload(let isMessage, _, _, _) = state, isMessage, bigBuffer != nil { return true }
        return messageTransfers > 0 && transfers.contains { $0.key & 0x1_0000 != 0 && $0.value.buffer != nil }
    }

    /// Payloads in parts being received or skipped now (for tests).
    package var partialPayloadCount: Int {
        var count = transfers.count
        if case .bigPayload = state { count += 1 }
        return count
    }
}
