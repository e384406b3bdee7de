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

    func testIDsThatStartAtTheSameSlotKeepTheirOwnValues() {
        var map = MessageIDMap<String>()
        map[0] = "first" // sizes the table (16 slots)
        XCTAssertEqual(map.removeValue(forKey: 0), "first")
        // Four ids whose first slot is the same, found by the map's own placement.
        let slot = map.home(3)
        let ids = Array((0...UInt16.max).lazy.filter { map.home($0) == slot }.prefix(4))
        XCTAssertEqual(ids.count, 4)
        let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3])
        map[a] = "a"
        map[b] = "b"
        map[c] = "c"
        XCTAssertEqual(map.count, 3)
        XCTAssertEqual(map[b], "b")
        XCTAssertEqual(map.removeValue(forKey: a), "a", "removing the first of a run")
        XCTAssertNil(map[a])
        XCTAssertEqual(map[b], "b", "found past the removed slot")
        XCTAssertEqual(map[c], "c")
        map[b] = "B"
        XCTAssertEqual(map[b], "B", "replaced in place")
        XCTAssertEqual(map.count, 2)
        map[d] = "d"
        XCTAssertEqual(Set(map.elements.map(\.id)), [b, c, d])
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
