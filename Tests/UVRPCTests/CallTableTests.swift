@testable import UVRPC
import XCTest

final class CallTableTests: XCTestCase {
    func testIdsStartAt65530AndWrap() {
        var table = CallTable<Int>()
        var ids: [UInt16] = []
        for i in 0..<8 {
            let id = table.insert(i, deadline: 100, closeOnError: true)!
            ids.append(id)
            XCTAssertEqual(table.remove(id), i)
        }
        XCTAssertEqual(ids, [65530, 65531, 65532, 65533, 65534, 65535, 0, 1])
        XCTAssertEqual(table.count, 0)
    }

    func testAllIdsInFlightFailsAndNeverReusesALiveId() {
        var table = CallTable<Int>()
        var live = Set<UInt16>()
        for i in 0..<65536 {
            guard let id = table.insert(i, deadline: UInt64(i), closeOnError: false) else { return XCTFail("ran out at \(i)") }
            XCTAssertTrue(live.insert(id).inserted, "id \(id) handed out twice")
        }
        XCTAssertTrue(table.isExhausted)
        XCTAssertNil(table.insert(-1, deadline: 0, closeOnError: false), "no id is free")
        // Free one in the middle: the next call gets exactly that id.
        XCTAssertNotNil(table.remove(1234))
        XCTAssertEqual(table.insert(-2, deadline: 0, closeOnError: false), 1234)
        XCTAssertNil(table.insert(-3, deadline: 0, closeOnError: false))
    }

    func testASlowCallKeepsItsIdWhileLaterIdsWrapAroundIt() {
        var table = CallTable<Int>()
        let slow = table.insert(0, deadline: 1_000_000, closeOnError: true)!
        // 70 000 quick calls go around the id space past the slow one.
        for i in 1...70_000 {
            let id = table.insert(i, deadline: UInt64(i), closeOnError: true)!
            XCTAssertNotEqual(id, slow)
            XCTAssertEqual(table.remove(id), i)
        }
        XCTAssertTrue(table.isLive(slow))
        XCTAssertEqual(table.remove(slow), 0)
    }

    func testUnknownAndRepeatedRemovalsAreIgnored() {
        var table = CallTable<Int>()
        let id = table.insert(5, deadline: 10, closeOnError: true)!
        XCTAssertNil(table.remove(id &+ 1))
        XCTAssertEqual(table.remove(id), 5)
        XCTAssertNil(table.remove(id), "a late response for a finished call is unknown")
    }

    func testDeadlinesExpireInOrderWhateverTheInsertionOrder() {
        var table = CallTable<String>()
        let a = table.insert("a", deadline: 300, closeOnError: true)!
        let b = table.insert("b", deadline: 100, closeOnError: true)!
        let c = table.insert("c", deadline: 200, closeOnError: true)!
        let d = table.insert("d", deadline: 300, closeOnError: true)!
        XCTAssertEqual(table.earliestDeadline, 100)
        XCTAssertEqual(table.liveIDs(), [b, c, a, d])
        XCTAssertNil(table.popExpired(now: 99))
        XCTAssertEqual(table.popExpired(now: 250), b)
        _ = table.remove(b)
        XCTAssertEqual(table.popExpired(now: 250), c)
        _ = table.remove(c)
        XCTAssertNil(table.popExpired(now: 250))
        _ = table.remove(a)
        XCTAssertEqual(table.liveIDs(), [d])
        XCTAssertEqual(table.earliestDeadline, 300)
    }
}
