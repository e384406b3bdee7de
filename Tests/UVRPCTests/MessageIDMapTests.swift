@testable import UVRPC
import XCTest

/// ``MessageIDMap`` alone, against a `Dictionary` as the model.
final class MessageIDMapTests: XCTestCase {
    func testAnEmptyMapFindsNothing() {
        var map = MessageIDMap<Int>()
        XCTAssertTrue(map.isEmpty)
        XCTAssertNil(map[0])
        XCTAssertNil(map.removeValue(forKey: 7))
        XCTAssertTrue(map.elements.isEmpty)
    }

    func testIDsSharingLowBitsKeepTheirOwnValues() {
        var map = MessageIDMap<String>()
        // 16 slots at first: 3, 19, 35 all start at slot 3.
        map[3] = "a"
        map[19] = "b"
        map[35] = "c"
        XCTAssertEqual(map.count, 3)
        XCTAssertEqual(map[19], "b")
        XCTAssertEqual(map.removeValue(forKey: 3), "a", "removing the first of a run")
        XCTAssertNil(map[3])
        XCTAssertEqual(map[19], "b", "found past the removed slot")
        XCTAssertEqual(map[35], "c")
        map[19] = "B"
        XCTAssertEqual(map[19], "B", "replaced in place")
        XCTAssertEqual(map.count, 2)
        map[51] = "d"
        XCTAssertEqual(Set(map.elements.map(\.id)), [19, 35, 51])
    }

    func testTheTableStaysWithinItsBoundWithEveryIDLive() {
        // Found in review: many live ids cycling in order doubled the table past its stated bound.
        var map = MessageIDMap<Int>()
        for id in 0..<65_536 { map[UInt16(id)] = id }
        for round in 0..<30_000 { // the oldest ends, its id comes back with a newer message
            let id = UInt16(round)
            XCTAssertEqual(map.removeValue(forKey: id), round)
            map[id] = 65_536 + round
        }
        XCTAssertEqual(map.count, 65_536)
        XCTAssertLessThanOrEqual(map.capacity, MessageIDMap<Int>.maximumCapacity)
        XCTAssertEqual(map[0], 65_536)
        XCTAssertEqual(map[65_535], 65_535)
    }

    func testManyOperationsAgreeWithADictionary() {
        var map = MessageIDMap<UInt64>()
        var model: [UInt16: UInt64] = [:]
        var random = SystemRandomNumberGenerator()
        var nextID: UInt16 = 0
        for step in 0..<60_000 {
            let choice = random.next(upperBound: UInt8(10))
            // Mostly in-order ids (as peers send them), some anywhere, some wrapping.
            let id: UInt16 = choice < 6 ? nextID : UInt16.random(in: 0...UInt16.max, using: &random)
            if choice < 6 { nextID &+= 1 }
            if choice < 7 {
                map[id] = UInt64(step)
                model[id] = UInt64(step)
            } else {
                // Remove something present (the oldest in-order id, usually) or absent.
                let victim = model.keys.randomElement(using: &random) ?? id
                XCTAssertEqual(map.removeValue(forKey: victim), model.removeValue(forKey: victim))
            }
            if model.count > 3000 { // bound the size, the way in-flight limits do
                for key in model.keys.prefix(1500) { XCTAssertEqual(map.removeValue(forKey: key), model.removeValue(forKey: key)) }
            }
            if step % 997 == 0 {
                XCTAssertEqual(map.count, model.count)
                for (key, value) in model { XCTAssertEqual(map[key], value) }
                XCTAssertEqual(Dictionary(uniqueKeysWithValues: map.elements.map { ($0.id, $0.value) }), model)
            }
        }
        map.removeAll()
        XCTAssertTrue(map.isEmpty)
        XCTAssertNil(map[nextID &- 1])
    }
}
