@testable import UVRPC
import XCTest

/// ``OwedAnswers`` alone: tokens, the current request, kept requests, the
/// peer's CANCEL and its credits, async handlers, waiting messages, and what
/// drain asks of it. No endpoint, no loop.
final class OwedAnswersTests: XCTestCase {
    // MARK: Tokens and the current request

    func testTokensAreASequenceAboveTheMessageID() {
        var answers = OwedAnswers()
        let first = answers.beginHandlerCall(id: 7)
        XCTAssertEqual(first.token, 1 << 16 | 7)
        XCTAssertEqual(first.id, 7)
        _ = answers.claimCurrent()
        XCTAssertFalse(answers.endHandlerCall(first))
        let second = answers.beginHandlerCall(id: 7)
        XCTAssertEqual(second.token, 2 << 16 | 7, "the same id gets a new token")
        XCTAssertNotEqual(first.token, second.token)
    }

    func testTheCurrentRequestIsAnsweredOnce() {
        var answers = OwedAnswers()
        XCTAssertFalse(answers.isHandling)
        let call = answers.beginHandlerCall(id: 3)
        XCTAssertTrue(answers.isHandling)
        XCTAssertTrue(answers.isCurrent(call.token))
        XCTAssertFalse(answers.currentAnswered)
        XCTAssertTrue(answers.claimCurrent())
        XCTAssertFalse(answers.claimCurrent(), "a second answer is refused")
        XCTAssertFalse(answers.endHandlerCall(call), "answered: nothing to keep")
        XCTAssertFalse(answers.isHandling)
        XCTAssertFalse(answers.isCurrent(call.token))
        XCTAssertTrue(answers.owesNothing)
    }

    func testANestedHandlerCallRestoresTheOuterRequest() {
        var answers = OwedAnswers()
        let outer = answers.beginHandlerCall(id: 1)
        let inner = answers.beginHandlerCall(id: 2)
        XCTAssertTrue(answers.isCurrent(inner.token))
        XCTAssertTrue(answers.claimCurrent())
        XCTAssertFalse(answers.endHandlerCall(inner))
        XCTAssertTrue(answers.isCurrent(outer.token), "the outer request is current again")
        XCTAssertFalse(answers.currentAnswered, "and still unanswered")
        XCTAssertTrue(answers.endHandlerCall(outer), "left unanswered")
        XCTAssertEqual(answers.currentToken, 0)
    }

    // MARK: Kept requests

    func testAnUnansweredRequestIsKeptAndClaimedLaterOnce() {
        var answers = OwedAnswers()
        let call = answers.beginHandlerCall(id: 9)
        XCTAssertTrue(answers.endHandlerCall(call))
        answers.keep(call, since: 100)
        XCTAssertFalse(answers.owesNothing)
        XCTAssertTrue(answers.keeps(token: call.token))
        XCTAssertFalse(answers.isCurrent(call.token))
        XCTAssertEqual(answers.claimKept(token: call.token), .claimed)
        XCTAssertFalse(answers.keeps(token: call.token))
        XCTAssertEqual(answers.claimKept(token: call.token), .notKept, "a second answer is refused")
        XCTAssertTrue(answers.owesNothing)
    }

    func testANewMessageWithTheSameIDSupersedesAKeptRequest() {
        var answers = OwedAnswers()
        XCTAssertNil(answers.takeSuperseded(id: 4), "nothing kept")
        let old = answers.keepUnanswered(id: 4, since: 50)
        XCTAssertNil(answers.takeSuperseded(id: 5), "another id")
        XCTAssertEqual(answers.takeSuperseded(id: 4), OwedAnswers.KeptRequest(token: old.token, since: 50))
        XCTAssertEqual(answers.claimKept(token: old.token), .notKept, "a superseded request can no longer be answered")
    }

    func testAKeptRequestIsNotClaimedWithAnotherToken() {
        var answers = OwedAnswers()
        let call = answers.keepUnanswered(id: 6, since: 0)
        let stale = 99 << 16 | UInt64(6)
        XCTAssertEqual(answers.claimKept(token: stale), .notKept)
        XCTAssertTrue(answers.keeps(token: call.token), "the kept request is untouched")
    }

    func testOverdueRequestsAreReportedOnceEach() {
        var answers = OwedAnswers()
        for (id, since) in [(UInt16(1), UInt64(0)), (2, 500), (3, 900)] {
            _ = answers.keepUnanswered(id: id, since: since)
        }
        let first = answers.markOverdue(now: 1000, limit: 400)
        XCTAssertEqual(first.map(\.id).sorted(), [1, 2])
        XCTAssertEqual(first.first { $0.id == 1 }?.waited, 1000)
        XCTAssertEqual(first.first { $0.id == 2 }?.waited, 500)
        XCTAssertTrue(answers.markOverdue(now: 1200, limit: 400).isEmpty, "3 has waited 300 ms")
        XCTAssertEqual(answers.markOverdue(now: 1400, limit: 400).map(\.id), [3], "1 and 2 were reported already")
        XCTAssertTrue(answers.markOverdue(now: 5000, limit: 400).isEmpty)
        XCTAssertEqual(answers.unanswered.count, 3, "reporting keeps them answerable")
    }

    func testDroppingKeptRequestsReturnsTheirIDsSorted() {
        var answers = OwedAnswers()
        for id: UInt16 in [30, 10, 20] {
            _ = answers.keepUnanswered(id: id, since: 0)
        }
        XCTAssertEqual(answers.dropKept(), [10, 20, 30])
        XCTAssertTrue(answers.unanswered.isEmpty)
        XCTAssertEqual(answers.dropKept(), [])
    }

    // MARK: The peer's CANCEL

    func testACancelWithoutAMessageIsUnexpected() {
        var answers = OwedAnswers()
        var workers = AsyncWorkers()
        XCTAssertEqual(answers.peerCancelled(id: 1, droppedPartialMessage: false, queue: &workers), .unexpected)
        answers.messageArrived()
        XCTAssertEqual(answers.peerCancelled(id: 1, droppedPartialMessage: false, queue: &workers), .nothing)
        XCTAssertEqual(answers.peerCancelled(id: 1, droppedPartialMessage: false, queue: &workers), .unexpected,
                       "one CANCEL per message")
        XCTAssertEqual(answers.cancelCredits, 0)
    }

    func testACancelOfAMessageStillArrivingSpendsNoCredit() {
        var answers = OwedAnswers()
        var workers = AsyncWorkers()
        XCTAssertEqual(answers.peerCancelled(id: 2, droppedPartialMessage: true, queue: &workers), .messageStillArriving)
        XCTAssertEqual(answers.cancelCredits, 0)
    }

    func testACancelReachesAKeptRequest() {
        var answers = OwedAnswers()
        var workers = AsyncWorkers()
        answers.messageArrived()
        let call = answers.keepUnanswered(id: 8, since: 0)
        XCTAssertEqual(answers.peerCancelled(id: 8, droppedPartialMessage: false, queue: &workers), .keptRequest)
        XCTAssertTrue(answers.wasCancelled(token: call.token))
        XCTAssertFalse(answers.keeps(token: call.token))
        XCTAssertEqual(answers.claimKept(token: call.token), .cancelled)
        XCTAssertTrue(answers.owesNothing)
    }

    func testACancelReachesARunningHandlerFirstThenAQueuedOneThenAWaitingOne() {
        var answers = OwedAnswers()
        var workers = AsyncWorkers()
        for _ in 0..<4 { answers.messageArrived() }
        let sequence = answers.beginAsyncHandler(id: 5, worker: 42)
        _ = workers.enqueue(id: 5, payload: [1])
        XCTAssertTrue(answers.hold(id: 5, payload: UnsafeRawBufferPointer(start: nil, count: 0))) // empty view: nothing behind it

        XCTAssertEqual(answers.peerCancelled(id: 5, droppedPartialMessage: false, queue: &workers), .runningHandler(worker: 42))
        XCTAssertEqual(answers.peerCancelled(id: 5, droppedPartialMessage: false, queue: &workers), .queuedMessage,
                       "the running handler was cancelled already")
        XCTAssertEqual(workers.queuedCount, 0)
        XCTAssertEqual(answers.peerCancelled(id: 5, droppedPartialMessage: false, queue: &workers), .waitingMessage)
        XCTAssertTrue(answers.waitingMessages.isEmpty)
        XCTAssertEqual(answers.peerCancelled(id: 5, droppedPartialMessage: false, queue: &workers), .nothing)
        XCTAssertFalse(answers.endAsyncHandler(id: 5, sequence: sequence), "a cancelled handler's answer is not sent")
        XCTAssertTrue(answers.runningRequests.isEmpty)
    }

    // MARK: Async handlers

    func testAnAsyncHandlerAnswersUnlessANewerMessageTookItsID() {
        var answers = OwedAnswers()
        let first = answers.beginAsyncHandler(id: 3, worker: 0)
        let second = answers.beginAsyncHandler(id: 3, worker: 1)
        XCTAssertNotEqual(first, second)
        XCTAssertFalse(answers.endAsyncHandler(id: 3, sequence: first), "superseded")
        XCTAssertEqual(answers.runningRequests[3]?.sequence, second, "the newer entry stays")
        XCTAssertTrue(answers.endAsyncHandler(id: 3, sequence: second))
        XCTAssertTrue(answers.runningRequests.isEmpty)
    }

    func testAsyncAndCallbackRequestsShareOneSequence() {
        var answers = OwedAnswers()
        let call = answers.beginHandlerCall(id: 1)
        _ = answers.claimCurrent()
        _ = answers.endHandlerCall(call)
        XCTAssertEqual(answers.beginAsyncHandler(id: 1, worker: 0), 2)
        XCTAssertEqual(answers.beginHandlerCall(id: 1).token >> 16, 3)
    }

    // MARK: Messages waiting for a handler

    func testWaitingMessagesAreBoundedAndTakenInOrder() {
        var answers = OwedAnswers()
        let payload: [UInt8] = [1, 2, 3]
        payload.withUnsafeBytes { raw in // valid during this closure only; hold(...) copies it
            for id in 0..<OwedAnswers.maximumWaitingMessages {
                XCTAssertTrue(answers.hold(id: UInt16(id), payload: raw))
            }
            XCTAssertFalse(answers.hold(id: 9999, payload: raw), "the 1025th is refused")
        }
        XCTAssertFalse(answers.owesNothing)
        let taken = answers.takeWaitingMessages()
        XCTAssertEqual(taken.count, OwedAnswers.maximumWaitingMessages)
        XCTAssertEqual(taken.first?.id, 0)
        XCTAssertEqual(taken.last?.id, UInt16(OwedAnswers.maximumWaitingMessages - 1))
        XCTAssertEqual(taken[5].payload, payload, "the payload is copied")
        XCTAssertTrue(answers.waitingMessages.isEmpty)
        XCTAssertTrue(answers.owesNothing)
    }

    // MARK: Draining

    func testOwedIDsLeaveOutWhatThePeerCancelled() {
        var answers = OwedAnswers()
        var workers = AsyncWorkers()
        for _ in 0..<8 { answers.messageArrived() }
        for id: UInt16 in [40, 41] {
            _ = answers.keepUnanswered(id: id, since: 0)
        }
        _ = answers.beginAsyncHandler(id: 20, worker: 0)
        _ = answers.beginAsyncHandler(id: 21, worker: 1)
        _ = workers.enqueue(id: 30, payload: [])
        _ = workers.enqueue(id: 31, payload: [])
        XCTAssertTrue(answers.hold(id: 10, payload: UnsafeRawBufferPointer(start: nil, count: 0))) // empty view: nothing behind it
        XCTAssertEqual(answers.peerCancelled(id: 41, droppedPartialMessage: false, queue: &workers), .keptRequest)
        XCTAssertEqual(answers.peerCancelled(id: 21, droppedPartialMessage: false, queue: &workers), .runningHandler(worker: 1))
        XCTAssertEqual(answers.peerCancelled(id: 31, droppedPartialMessage: false, queue: &workers), .queuedMessage)
        XCTAssertEqual(answers.owedMessageIDs(queued: workers.queuedIDs), [10, 20, 30, 40])
    }

    /// A request kept under the id of an older, cancelled one is still owed
    /// its answer (the cancel was for the older request's token).
    func testARequestKeptUnderACancelledRequestsIdIsStillOwed() {
        var answers = OwedAnswers()
        var workers = AsyncWorkers()
        answers.messageArrived()
        _ = answers.keepUnanswered(id: 7, since: 0)
        XCTAssertEqual(answers.peerCancelled(id: 7, droppedPartialMessage: false, queue: &workers), .keptRequest)
        XCTAssertEqual(answers.owedMessageIDs(queued: workers.queuedIDs), [], "the cancelled request is owed nothing")
        answers.messageArrived()
        _ = answers.takeSuperseded(id: 7)
        let newer = answers.keepUnanswered(id: 7, since: 1)
        XCTAssertTrue(answers.keeps(token: newer.token))
        XCTAssertFalse(answers.wasCancelled(token: newer.token))
        XCTAssertEqual(answers.owedMessageIDs(queued: workers.queuedIDs), [7], "the newer request is owed its answer")
    }

    func testOwesNothingOnlyWhenNothingIsKeptRunningOrWaiting() {
        var answers = OwedAnswers()
        XCTAssertTrue(answers.owesNothing)
        let call = answers.beginHandlerCall(id: 1)
        XCTAssertFalse(answers.owesNothing, "a callback handler is running")
        _ = answers.endHandlerCall(call)
        XCTAssertTrue(answers.owesNothing, "left unanswered but not kept (the endpoint was closing)")
        answers.keep(call, since: 0)
        XCTAssertFalse(answers.owesNothing)
        answers.dropHandlersAndCancellations()
        XCTAssertFalse(answers.owesNothing, "kept requests are dropped separately (and logged)")
        _ = answers.dropKept()
        XCTAssertTrue(answers.owesNothing)
    }
}

private extension OwedAnswers {
    /// A request whose handler returned without answering it: now kept.
    mutating func keepUnanswered(id: UInt16, since: UInt64) -> HandlerCall {
        let call = beginHandlerCall(id: id)
        _ = endHandlerCall(call)
        keep(call, since: since)
        return call
    }
}
