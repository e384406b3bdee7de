@testable import UVRPC
import XCTest

final class PayloadSparesTests: XCTestCase {
    private func copy(_ spares: PayloadSpares, _ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { spares.copy($0) }
    }

    func testARecycledArrayCarriesTheNextMessageOfItsSize() {
        let spares = PayloadSpares()
        var first = copy(spares, [1, 2, 3])
        let storage = first.withUnsafeBytes { $0.baseAddress }
        spares.recycle(&first)
        XCTAssertEqual(first, [], "the worker's array is moved into the spares")
        XCTAssertEqual(spares.count, 1)
        let second = copy(spares, [4, 5, 6])
        XCTAssertEqual(second, [4, 5, 6])
        XCTAssertEqual(second.withUnsafeBytes { $0.baseAddress }, storage, "the same buffer, no allocation")
        XCTAssertEqual(spares.count, 0)
    }

    func testAnArrayTheHandlerKeptIsNotOverwritten() {
        let spares = PayloadSpares()
        var payload = copy(spares, [1, 2, 3])
        let keptByTheHandler = payload
        spares.recycle(&payload)
        let next = copy(spares, [7, 8, 9])
        XCTAssertEqual(next, [7, 8, 9])
        XCTAssertEqual(keptByTheHandler, [1, 2, 3], "copy-on-write: the kept array keeps its bytes")
    }

    func testASpareOfAnotherSizeIsDropped() {
        let spares = PayloadSpares()
        var payload = copy(spares, [1, 2, 3])
        spares.recycle(&payload)
        XCTAssertEqual(copy(spares, [1, 2, 3, 4]), [1, 2, 3, 4])
        XCTAssertEqual(spares.count, 0)
    }

    func testTheSparesAreBounded() {
        let spares = PayloadSpares()
        var big = [UInt8](repeating: 1, count: PayloadSpares.maximumCapacity + 1)
        spares.recycle(&big)
        var empty: [UInt8] = []
        spares.recycle(&empty)
        XCTAssertEqual(spares.count, 0, "big and empty arrays are not kept")
        for _ in 0..<(PayloadSpares.maximumCount + 10) {
            var payload = [UInt8](repeating: 2, count: 8)
            spares.recycle(&payload)
        }
        XCTAssertEqual(spares.count, PayloadSpares.maximumCount)
    }
}
