@testable import UVRPC
import XCTest

/// ``OutgoingCalls`` alone: the in-flight count, which deadline to arm,
/// expiry, and the sends that wait for the handshake or for writability.
/// No endpoint, no loop (calls are tagged ones: plain values).
final class OutgoingCallsTests: XCTestCase {
    private func call(_ tag: UInt64) -> RPCEndpoint.PendingCall {
        RPCEndpoint.PendingCall(completion: .tagged(tag), timeout: .seconds(1), startedAt: 0)
    }

    private func send(_ tag: UInt64, payload: [UInt8] = [1, 2, 3]) -> RPCEndpoint.QueuedSend {
        RPCEndpoint.QueuedSend(payload: payload, timeout: nil, closeOnError: true, completion: .tagged(tag))
    }

    private func tag(of completion: RPCEndpoint.Completion) -> UInt64? {
        if case .tagged(let tag) = completion { return tag }
        return nil
    }

    func testInFlightCountsCallsInTheTableAndEverySendStillWaiting() {
        var calls = OutgoingCalls()
        XCTAssertEqual(calls.inFlightCount, 0)
        XCTAssertTrue(calls.isIdle)
        let id = calls.insert(call(1), deadline: 100, closeOnError: true)!
        calls.deferUntilHandshake(send(2))
        calls.block(send(3))
        calls.block(send(4))
        XCTAssertEqual(calls.inFlightCount, 4)
        XCTAssertFalse(calls.isIdle)
        _ = calls.takeBlocked()
        XCTAssertEqual(calls.inFlightCount, 3, "a blocked send taken to be started is no longer waiting")
        XCTAssertNotNil(calls.remove(id))
        XCTAssertEqual(calls.inFlightCount, 2)
        XCTAssertEqual(calls.takeUnsent().compactMap { tag(of: $0.completion) }, [2, 4], "deferred first, then blocked")
        XCTAssertEqual(calls.inFlightCount, 0)
        XCTAssertTrue(calls.isIdle)
    }

    func testAReservedIDIsNotInFlightNorKeepsTheCallsBusy() {
        var calls = OutgoingCalls()
        let id = calls.insert(call(1), deadline: 100, closeOnError: false)!
        XCTAssertTrue(calls.isAwaited(id))
        XCTAssertEqual(tag(of: calls.reserve(id)!.completion), 1)
        XCTAssertFalse(calls.isAwaited(id))
        XCTAssertEqual(calls.reservedCount, 1)
        XCTAssertEqual(calls.inFlightCount, 0)
        XCTAssertTrue(calls.isIdle, "drain does not wait for a CANCEL_ACK")
        XCTAssertTrue(calls.release(id))
        XCTAssertFalse(calls.release(id))
        XCTAssertEqual(calls.reservedCount, 0)
    }

    // MARK: Deadlines

    func testTheTimerIsArmedForTheEarliestDeadlineAndOnlyMovedEarlier() {
        var calls = OutgoingCalls()
        XCTAssertTrue(calls.needsEarlierTimer(for: 500), "nothing armed")
        XCTAssertNil(calls.armEarliest(now: 0), "no call, nothing to arm")
        XCTAssertEqual(calls.armedDeadline, .max)

        _ = calls.insert(call(1), deadline: 500, closeOnError: true)
        XCTAssertEqual(calls.armEarliest(now: 100), 400)
        XCTAssertEqual(calls.armedDeadline, 500)
        XCTAssertFalse(calls.needsEarlierTimer(for: 500))
        XCTAssertFalse(calls.needsEarlierTimer(for: 900), "a later deadline waits for the timer's next firing")
        XCTAssertTrue(calls.needsEarlierTimer(for: 300))

        _ = calls.insert(call(2), deadline: 300, closeOnError: true)
        XCTAssertEqual(calls.armEarliest(now: 100), 200)
        XCTAssertEqual(calls.armedDeadline, 300)
        XCTAssertEqual(calls.armEarliest(now: 400), 0, "a deadline already passed fires at once")
    }

    func testAFiredTimerDisarmsAndCompletedCallsLeaveItArmed() {
        var calls = OutgoingCalls()
        let id = calls.insert(call(1), deadline: 500, closeOnError: true)!
        _ = calls.armEarliest(now: 0)
        _ = calls.remove(id)
        XCTAssertEqual(calls.armedDeadline, 500, "completing a call never touches the timer")
        calls.deadlineTimerFired()
        XCTAssertEqual(calls.armedDeadline, .max)
        XCTAssertTrue(calls.needsEarlierTimer(for: 10_000))
    }

    func testExpiredCallsComeOutInDeadlineOrderWithTheirCloseOnError() {
        var calls = OutgoingCalls()
        let late = calls.insert(call(1), deadline: 300, closeOnError: true)!
        let early = calls.insert(call(2), deadline: 100, closeOnError: false)!
        XCTAssertNil(calls.nextExpired(now: 99))
        let first = calls.nextExpired(now: 300)
        XCTAssertEqual(first?.id, early)
        XCTAssertEqual(first?.closesOnError, false)
        XCTAssertEqual(calls.nextExpired(now: 300)?.id, early, "it stays until the endpoint removes it")
        _ = calls.reserve(early)
        let second = calls.nextExpired(now: 300)
        XCTAssertEqual(second?.id, late)
        XCTAssertEqual(second?.closesOnError, true)
        _ = calls.remove(late)
        XCTAssertNil(calls.nextExpired(now: 300))
        XCTAssertEqual(calls.liveIDs(), [], "a reserved id is out of the deadline list")
    }

    // MARK: Sends that wait

    func testDeferredSendsAreTakenOnceInOrder() {
        var calls = OutgoingCalls()
        for tag in 1...3 as ClosedRange<UInt64> { calls.deferUntilHandshake(send(tag)) }
        XCTAssertEqual(calls.takeDeferred().compactMap { tag(of: $0.completion) }, [1, 2, 3])
        XCTAssertTrue(calls.deferred.isEmpty)
        XCTAssertTrue(calls.takeDeferred().isEmpty)
    }

    func testACancelledAsyncCallLeavesTheDeferredSends() {
        var calls = OutgoingCalls()
        let cancelled = AsyncCall(), other = AsyncCall()
        calls.deferUntilHandshake(RPCEndpoint.QueuedSend(payload: [], timeout: nil, closeOnError: true, completion: .async(cancelled)))
        calls.deferUntilHandshake(RPCEndpoint.QueuedSend(payload: [], timeout: nil, closeOnError: true, completion: .async(other)))
        calls.deferUntilHandshake(send(7))
        calls.dropDeferred(cancelled)
        XCTAssertEqual(calls.deferred.count, 2)
        if case .async(let left) = calls.deferred[0].completion { XCTAssertTrue(left === other) } else { XCTFail("the other async call stays first") }
        XCTAssertEqual(tag(of: calls.deferred[1].completion), 7)
    }

    func testBlockedSendsAreTakenOldestFirstAndLetGoOfTheirBytes() {
        var calls = OutgoingCalls()
        XCTAssertFalse(calls.hasBlockedSends)
        calls.block(send(1, payload: [1]))
        calls.block(send(2, payload: [2, 2]))
        XCTAssertTrue(calls.hasBlockedSends)
        let first = calls.takeBlocked()
        XCTAssertEqual(first.flatMap { tag(of: $0.completion) }, 1)
        XCTAssertEqual(first?.payload, [1], "the send taken keeps its payload")
        XCTAssertEqual(calls.blockedHead, 1)
        XCTAssertEqual(calls.blocked[0].payload, [], "its slot holds the bytes no longer")
        calls.block(send(3))
        XCTAssertEqual(calls.takeBlocked().flatMap { tag(of: $0.completion) }, 2)
        XCTAssertEqual(calls.takeBlocked().flatMap { tag(of: $0.completion) }, 3)
        XCTAssertFalse(calls.hasBlockedSends)
        XCTAssertEqual(calls.blockedHead, 0, "drained: the queue starts over")
        XCTAssertTrue(calls.blocked.isEmpty)
        XCTAssertNil(calls.takeBlocked())
    }

    func testUnsentSendsAreOnlyThoseNotYetTaken() {
        var calls = OutgoingCalls()
        calls.block(send(1))
        calls.block(send(2))
        _ = calls.takeBlocked()
        calls.deferUntilHandshake(send(3))
        XCTAssertEqual(calls.takeUnsent().compactMap { tag(of: $0.completion) }, [3, 2])
        XCTAssertFalse(calls.hasBlockedSends)
        XCTAssertEqual(calls.blockedHead, 0)
    }
}
