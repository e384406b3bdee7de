@testable import UVRPC
import XCTest

/// ``OutgoingTransfers`` alone: how many start, chunks in turn, the window,
/// acknowledgements and their verdicts, removal. No endpoint, no loop.
final class OutgoingTransfersTests: XCTestCase {
    private let chunk = RPCEndpoint.chunkPayloadSize

    private func transfer(_ id: UInt16, isResponse: Bool = false, size: Int) -> OutgoingTransfers.Transfer {
        OutgoingTransfers.Transfer(isResponse: isResponse, id: id, payload: (0..<size).map { UInt8(truncatingIfNeeded: $0) })
    }

    /// Adds and activates (as the endpoint does once its START is written).
    private func start(_ transfers: inout OutgoingTransfers, _ t: OutgoingTransfers.Transfer) {
        if let now = transfers.add(t) { transfers.activate(now) }
    }

    func testAtMostFourOfEachKindAreActiveAndTheRestWaitInOrder() {
        var transfers = OutgoingTransfers()
        for id in 0..<6 as Range<UInt16> { start(&transfers, transfer(id, size: 100)) }
        XCTAssertNotNil(transfers.add(transfer(100, isResponse: true, size: 100)), "responses are counted apart")
        XCTAssertEqual(transfers.active.map(\.id), [0, 1, 2, 3])
        XCTAssertEqual(transfers.waiting.map(\.id), [4, 5])
        XCTAssertEqual(transfers.unsentBytes, 700, "waiting and not yet started transfers count as unsent")
        XCTAssertNil(transfers.nextWaiting(isResponse: true))
        XCTAssertEqual(transfers.nextWaiting(isResponse: false)?.id, 4)
        XCTAssertFalse(transfers.isIdle)
    }

    func testAFailedStartUncountsItsBytes() {
        var transfers = OutgoingTransfers()
        let t = transfers.add(transfer(1, size: 500))!
        XCTAssertEqual(transfers.unsentBytes, 500)
        transfers.activationFailed(t)
        XCTAssertEqual(transfers.unsentBytes, 0)
        XCTAssertTrue(transfers.isIdle)
    }

    func testChunksGoOneTransferAfterAnotherAndTheLastEndsIt() {
        var transfers = OutgoingTransfers()
        start(&transfers, transfer(1, size: chunk + 10))
        start(&transfers, transfer(2, size: 2 * chunk))
        var order: [(UInt16, Int)] = []
        var finished: [UInt16] = []
        while !transfers.active.isEmpty {
            let next = transfers.nextChunk()
            order.append((next.id, next.range.count))
            if let done = transfers.chunkWritten(next, now: 0) { finished.append(done.id) }
        }
        XCTAssertEqual(order.map(\.0), [1, 2, 1, 2])
        XCTAssertEqual(order.map(\.1), [chunk, chunk, 10, chunk])
        XCTAssertEqual(finished, [1, 2])
        XCTAssertEqual(transfers.unsentBytes, 0)
        XCTAssertEqual(transfers.unacknowledgedBytes, 3 * chunk + 10)
    }

    func testAChunkLendsTheBytesOfItsRange() {
        var transfers = OutgoingTransfers()
        let t = transfer(1, size: chunk + 3)
        start(&transfers, t)
        let first = transfers.nextChunk()
        XCTAssertEqual(first.range, 0..<chunk)
        _ = transfers.chunkWritten(first, now: 0)
        let last = transfers.nextChunk()
        XCTAssertEqual(last.range, chunk..<(chunk + 3))
        XCTAssertEqual(transfers.withBytes(of: last) { Array($0) }, Array(t.payload[chunk...]))
    }

    func testTheWindowIsSmallWhileSmallPacketsFlow() {
        var transfers = OutgoingTransfers()
        let memory = RPCEndpoint.smallTrafficMemory
        XCTAssertEqual(transfers.window(smallPacketsWritten: 0, now: 5000), RPCEndpoint.bulkWindow, "no small packet yet")
        XCTAssertEqual(transfers.window(smallPacketsWritten: 1, now: 5000), RPCEndpoint.latencyWindow)
        XCTAssertEqual(transfers.window(smallPacketsWritten: 1, now: 5000 + memory - 1), RPCEndpoint.latencyWindow)
        XCTAssertEqual(transfers.window(smallPacketsWritten: 1, now: 5000 + memory), RPCEndpoint.bulkWindow,
                       "no small packet for a second")
    }

    func testChunksGoOnlyWithinTheWindowUnlessReadingIsPausedAndTheConnectionDrained() {
        var transfers = OutgoingTransfers()
        XCTAssertFalse(transfers.mayWriteChunk(window: .max, readingPaused: false, pendingWriteBytes: 0), "nothing to send")
        start(&transfers, transfer(1, size: 10 * chunk))
        let window = 2 * chunk
        XCTAssertTrue(transfers.mayWriteChunk(window: window, readingPaused: false, pendingWriteBytes: 0))
        _ = transfers.chunkWritten(transfers.nextChunk(), now: 0)
        _ = transfers.chunkWritten(transfers.nextChunk(), now: 0)
        XCTAssertFalse(transfers.mayWriteChunk(window: window, readingPaused: false, pendingWriteBytes: 0), "the window is full")
        XCTAssertTrue(transfers.mayWriteChunk(window: window, readingPaused: true, pendingWriteBytes: 0),
                      "acknowledgements are not read while paused: the connection's own bytes decide")
        XCTAssertFalse(transfers.mayWriteChunk(window: window, readingPaused: true, pendingWriteBytes: RPCEndpoint.latencyWindow))
        XCTAssertTrue(transfers.acknowledge(chunk, now: 10))
        XCTAssertTrue(transfers.mayWriteChunk(window: window, readingPaused: false, pendingWriteBytes: 0))
    }

    func testMoreAcknowledgedThanSentIsRefused() {
        var transfers = OutgoingTransfers()
        start(&transfers, transfer(1, size: 3 * chunk))
        _ = transfers.chunkWritten(transfers.nextChunk(), now: 0)
        XCTAssertFalse(transfers.acknowledge(chunk + 1, now: 5))
        XCTAssertEqual(transfers.unacknowledgedBytes, chunk, "unchanged")
        XCTAssertTrue(transfers.acknowledge(chunk, now: 5))
        XCTAssertEqual(transfers.unacknowledgedBytes, 0)
    }

    func testAcknowledgementsMoveTheProgressClockBy64KiB() {
        var transfers = OutgoingTransfers()
        start(&transfers, transfer(1, size: 16 * chunk))
        for _ in 0..<16 { _ = transfers.chunkWritten(transfers.nextChunk(), now: 100) }
        XCTAssertEqual(transfers.ackProgressAt, 100, "the first chunk with nothing unacknowledged starts the clocks")
        XCTAssertTrue(transfers.acknowledge(chunk, now: 200))
        XCTAssertEqual(transfers.lastProgressAt, 200)
        XCTAssertEqual(transfers.ackProgressAt, 100, "8 KiB is not progress yet")
        XCTAssertTrue(transfers.acknowledge(PacketParser.progressQuantum - chunk, now: 300))
        XCTAssertEqual(transfers.ackProgressAt, 300, "64 KiB acknowledged since")
        XCTAssertEqual(transfers.ackedSinceProgress, 0)
    }

    func testTheAcknowledgementVerdicts() {
        var transfers = OutgoingTransfers()
        XCTAssertEqual(transfers.acknowledgementVerdict(now: 1_000_000, readingPaused: false, progressTimeout: 100,
                                                        writeTimeout: 50), .fine, "nothing unacknowledged")
        start(&transfers, transfer(1, size: 4 * chunk))
        _ = transfers.chunkWritten(transfers.nextChunk(), now: 1000)
        XCTAssertEqual(transfers.acknowledgementVerdict(now: 1049, readingPaused: false, progressTimeout: 100, writeTimeout: 50), .fine)
        XCTAssertEqual(transfers.acknowledgementVerdict(now: 1050, readingPaused: false, progressTimeout: 100, writeTimeout: 50),
                       .writeTimedOut)
        XCTAssertEqual(transfers.acknowledgementVerdict(now: 1050, readingPaused: false, progressTimeout: 100, writeTimeout: nil),
                       .fine, "no write timeout configured")
        XCTAssertEqual(transfers.acknowledgementVerdict(now: 1100, readingPaused: false, progressTimeout: 100, writeTimeout: nil),
                       .stalled)
        XCTAssertEqual(transfers.acknowledgementVerdict(now: 9999, readingPaused: true, progressTimeout: 100, writeTimeout: 50),
                       .fine, "acknowledgements are not read while paused")
        // A trickle: acknowledged now and then, but less than 64 KiB per progress timeout.
        XCTAssertTrue(transfers.acknowledge(10, now: 1090))
        XCTAssertEqual(transfers.acknowledgementVerdict(now: 1100, readingPaused: false, progressTimeout: 100, writeTimeout: 50),
                       .stalled)
        transfers.restartClocks(now: 1100)
        XCTAssertEqual(transfers.acknowledgementVerdict(now: 1140, readingPaused: false, progressTimeout: 100, writeTimeout: 50), .fine)
        transfers.restartProgressClock(now: 1200)
        XCTAssertEqual(transfers.acknowledgementVerdict(now: 1250, readingPaused: false, progressTimeout: 100, writeTimeout: 500),
                       .fine)
    }

    func testRemovingATransferUncountsWhatWasNotSent() {
        var transfers = OutgoingTransfers()
        for id in 0..<5 as Range<UInt16> { start(&transfers, transfer(id, size: 2 * chunk)) }
        _ = transfers.chunkWritten(transfers.nextChunk(), now: 0) // a chunk of transfer 0
        XCTAssertEqual(transfers.unsentBytes, 10 * chunk - chunk)
        XCTAssertNil(transfers.remove(isResponse: true, id: 0), "a response with that id is not sent")
        let removed = transfers.remove(isResponse: false, id: 0)
        XCTAssertEqual(removed?.transfer.id, 0)
        XCTAssertEqual(removed?.wasActive, true)
        XCTAssertEqual(transfers.unsentBytes, 8 * chunk)
        let waiting = transfers.remove(isResponse: false, id: 4)
        XCTAssertEqual(waiting?.wasActive, false)
        XCTAssertEqual(transfers.unsentBytes, 6 * chunk)
        XCTAssertEqual(transfers.unacknowledgedBytes, chunk, "what was written stays unacknowledged")
    }

    func testRemoveAllLeavesNothing() {
        var transfers = OutgoingTransfers()
        for id in 0..<6 as Range<UInt16> { start(&transfers, transfer(id, size: 2 * chunk)) }
        _ = transfers.chunkWritten(transfers.nextChunk(), now: 0)
        XCTAssertEqual(transfers.removeAll().map(\.id), [0, 1, 2, 3, 4, 5])
        XCTAssertTrue(transfers.isIdle)
        XCTAssertEqual(transfers.unsentBytes, 0)
        XCTAssertEqual(transfers.unacknowledgedBytes, 0)
    }
}
