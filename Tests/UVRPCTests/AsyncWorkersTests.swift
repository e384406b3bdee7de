@testable import UVRPC
import UVLoop
import XCTest

/// ``AsyncWorkers`` alone: the queue, when a worker must be scheduled, parked
/// workers first, the idle bound and the stop. No endpoint, no loop: the
/// continuations are real ones, resumed within the test.
final class AsyncWorkersTests: XCTestCase {
    func testTheFirstRequestNeedsAWorkerAndLaterOnesWaitForIt() {
        var workers = AsyncWorkers()
        XCTAssertTrue(workers.enqueue(id: 1, payload: [1]), "no worker on its way")
        guard case .start(let key) = workers.scheduleWorker() else { return XCTFail("no parked worker: a new one starts") }
        XCTAssertEqual(key, 0)
        XCTAssertFalse(workers.enqueue(id: 2, payload: [2]), "one is on its way")
        XCTAssertEqual(workers.scheduled, 1)
        workers.workerStarted()
        XCTAssertEqual(workers.scheduled, 0)
        XCTAssertTrue(workers.enqueue(id: 3, payload: [3]), "the running worker may suspend in a handler")
    }

    func testRequestsAreTakenInOrderAndTheQueueResetsWhenDrained() {
        var workers = AsyncWorkers()
        for id: UInt16 in 1...3 { _ = workers.enqueue(id: id, payload: [UInt8(id)]) }
        XCTAssertEqual(workers.queuedCount, 3)
        XCTAssertEqual(Array(workers.queuedIDs), [1, 2, 3])
        XCTAssertEqual(workers.next()?.id, 1)
        XCTAssertEqual(workers.head, 1)
        XCTAssertEqual(Array(workers.queuedIDs), [2, 3])
        XCTAssertEqual(workers.next()?.payload, [2])
        XCTAssertEqual(workers.next()?.id, 3)
        XCTAssertEqual(workers.head, 0, "drained: the queue starts over")
        XCTAssertTrue(workers.queue.isEmpty)
        XCTAssertNil(workers.next())
    }

    func testAnotherWorkerIsNeededOnlyWhileRequestsRemainAndNoneIsOnItsWay() {
        var workers = AsyncWorkers()
        XCTAssertFalse(workers.needsAnotherWorker, "nothing queued")
        _ = workers.enqueue(id: 1, payload: [])
        _ = workers.enqueue(id: 2, payload: [])
        _ = workers.scheduleWorker()
        workers.workerStarted()
        XCTAssertNotNil(workers.next())
        XCTAssertTrue(workers.needsAnotherWorker, "one left, none scheduled")
        _ = workers.scheduleWorker()
        XCTAssertFalse(workers.needsAnotherWorker, "one is on its way")
        workers.workerStarted()
        XCTAssertNotNil(workers.next())
        XCTAssertFalse(workers.needsAnotherWorker, "nothing left")
    }

    func testNewWorkersGetNewKeys() {
        var workers = AsyncWorkers()
        var keys: [UInt64] = []
        for _ in 0..<3 {
            guard case .start(let key) = workers.scheduleWorker() else { return XCTFail("nothing parked") }
            keys.append(key)
        }
        XCTAssertEqual(keys, [0, 1, 2])
        XCTAssertEqual(workers.scheduled, 3)
    }

    func testAParkedWorkerIsWokenBeforeANewOneStarts() async {
        var workers = AsyncWorkers()
        // Resumed exactly once: through the wake below (or at once if the test fails).
        let woken: Bool = await withUnsafeContinuation { continuation in
            workers.park(continuation)
            XCTAssertEqual(workers.idle.count, 1)
            switch workers.scheduleWorker() {
            case .resume(let parked): parked.resume(returning: true)
            case .start: XCTFail("a parked worker was there"); continuation.resume(returning: false)
            }
        }
        XCTAssertTrue(woken)
        XCTAssertTrue(workers.idle.isEmpty)
        XCTAssertEqual(workers.nextKey, 0, "no task was started")
    }

    func testAtMostSixteenWorkersPark() async {
        // Sixteen tasks park at once (each says so from inside its continuation's body, before it suspends).
        let workers = SharedWorkers()
        let (parkedSignals, signal) = AsyncStream<Void>.makeStream()
        await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<AsyncWorkers.maximumIdleWorkers {
                group.addTask {
                    // Resumed exactly once: by the loop over stop()'s result below.
                    await withUnsafeContinuation { continuation in
                        workers.state.withLock { XCTAssertTrue($0.mayPark); $0.park(continuation) }
                        signal.yield()
                    }
                }
            }
            var parked = 0
            for await _ in parkedSignals {
                parked += 1
                if parked == AsyncWorkers.maximumIdleWorkers { break }
            }
            XCTAssertFalse(workers.state.withLock { $0.mayPark }, "a seventeenth worker ends instead")
            for worker in workers.state.withLock({ $0.stop() }) { worker.resume(returning: false) }
            XCTAssertTrue(workers.state.withLock { $0.mayPark })
            for await woken in group { XCTAssertFalse(woken) }
        }
    }

    func testAQueuedRequestCanBeRemovedButNotATakenOne() {
        var workers = AsyncWorkers()
        for id: UInt16 in 1...3 { _ = workers.enqueue(id: id, payload: []) }
        XCTAssertEqual(workers.next()?.id, 1)
        XCTAssertFalse(workers.removeQueued(id: 1), "already taken by a worker")
        XCTAssertTrue(workers.removeQueued(id: 3))
        XCTAssertFalse(workers.removeQueued(id: 3))
        XCTAssertEqual(Array(workers.queuedIDs), [2])
    }

    func testIdleOnlyWithNothingQueuedAndNoHandlerRunning() {
        var workers = AsyncWorkers()
        XCTAssertTrue(workers.isIdle)
        _ = workers.enqueue(id: 1, payload: [])
        XCTAssertFalse(workers.isIdle, "a request is queued")
        _ = workers.next()
        workers.handlerStarted()
        XCTAssertFalse(workers.isIdle, "its handler runs")
        XCTAssertEqual(workers.running, 1)
        workers.handlerEnded()
        XCTAssertTrue(workers.isIdle)
    }

    func testStopEmptiesTheQueueAndHandsBackEveryParkedWorker() async {
        var workers = AsyncWorkers()
        _ = workers.enqueue(id: 1, payload: [])
        _ = workers.enqueue(id: 2, payload: [])
        _ = workers.next()
        // Resumed exactly once: stop() hands it back and it is resumed with false.
        let woken: Bool = await withUnsafeContinuation { continuation in
            workers.park(continuation)
            let parked = workers.stop()
            XCTAssertEqual(parked.count, 1)
            for worker in parked { worker.resume(returning: false) }
        }
        XCTAssertFalse(woken, "a stopped worker ends")
        XCTAssertEqual(workers.queuedCount, 0)
        XCTAssertTrue(workers.idle.isEmpty)
        XCTAssertTrue(workers.isIdle)
    }

    func testTasksAreRegisteredByKeyAndForgotten() async {
        var workers = AsyncWorkers()
        guard case .start(let key) = workers.scheduleWorker() else { return XCTFail("nothing parked") }
        let task = Task<Void, Never> {}
        workers.register(task, key: key)
        XCTAssertNotNil(workers.tasks[key])
        workers.unregister(key: key)
        XCTAssertTrue(workers.tasks.isEmpty)
        await task.value
    }
}

/// Workers shared by the tasks of a test, under a lock: a pthread mutex
/// (`LockedValue`), which ThreadSanitizer sees; it does not see
/// `Synchronization.Mutex` on Linux and reported the tasks' parking as a race.
private final class SharedWorkers: Sendable {
    let state = LockedValue(AsyncWorkers())
}
