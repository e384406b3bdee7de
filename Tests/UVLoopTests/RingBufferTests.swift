import UVLoop
import XCTest

/// Writes `bytes` into `ring`; returns how many fitted.
@discardableResult
private func put(_ ring: RingBuffer, _ bytes: [UInt8]) -> Int {
    bytes.withUnsafeBytes { ring.write($0) }
}

final class RingBufferTests: XCTestCase {
    /// Reads every readable byte through the two regions.
    private func contents(_ ring: RingBuffer) -> [UInt8] {
        let (a, b) = ring.readableRegions
        return Array(a) + Array(b)
    }

    func testCapacityIsRoundedUpToAPowerOfTwo() {
        XCTAssertEqual(RingBuffer(initialCapacity: 5000).capacity, 8192)
        XCTAssertEqual(RingBuffer(initialCapacity: 4096).capacity, 4096)
        XCTAssertEqual(RingBuffer(initialCapacity: 1).capacity, 1)
    }

    func testWriteAndReadAtEveryWrapOffset() {
        let capacity = 64
        for offset in 0..<capacity {
            for length in 1...capacity {
                let ring = RingBuffer(initialCapacity: capacity, maximumCapacity: capacity)
                // Move the head to `offset` without emptying the ring (emptying resets it).
                let filler = [UInt8](repeating: 0xEE, count: offset + 1)
                filler.withUnsafeBytes { XCTAssertEqual(ring.write($0), offset + 1) }
                ring.consume(offset)
                let data = (0..<length - 1).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ offset) }
                data.withUnsafeBytes { XCTAssertEqual(ring.write($0), length - 1) }
                XCTAssertEqual(ring.readableCount, length)
                XCTAssertEqual(contents(ring), [0xEE] + data, "offset \(offset) length \(length)")
                XCTAssertEqual(ring.isWrapped, offset + length > capacity)
                var copy = [UInt8](repeating: 0, count: length)
                copy.withUnsafeMutableBytes { ring.copyBytes(at: 0, count: length, into: $0.baseAddress!) }
                XCTAssertEqual(copy, [0xEE] + data)
                ring.linearize()
                XCTAssertFalse(ring.isWrapped)
                XCTAssertEqual(Array(ring.firstReadableRegion), [0xEE] + data, "after linearize, offset \(offset) length \(length)")
                ring.consume(length)
                XCTAssertEqual(ring.readableCount, 0)
                XCTAssertEqual(ring.writableRegion().count, capacity, "an empty ring offers all its space")
            }
        }
    }

    func testFullRingOffersNoSpaceAndGrowsKeepingBytes() {
        let ring = RingBuffer(initialCapacity: 16, maximumCapacity: 64)
        let data = (0..<16).map { UInt8($0) }
        put(ring, [UInt8](repeating: 9, count: 10))
        ring.consume(10)
        put(ring, [UInt8](repeating: 9, count: 6)) // head at 10, not empty
        ring.consume(6)
        data.withUnsafeBytes { XCTAssertEqual(ring.write($0), 16) }
        XCTAssertEqual(ring.writableRegion().count, 0)
        XCTAssertTrue(ring.grow(toFit: 40))
        XCTAssertEqual(ring.capacity, 64)
        XCTAssertEqual(contents(ring), data)
        XCTAssertFalse(ring.grow(toFit: 65), "growth stops at the maximum")
        XCTAssertEqual(ring.capacity, 64)
    }

    func testShrinksBackWhenDrained() {
        let ring = RingBuffer(initialCapacity: 16, maximumCapacity: 1024)
        XCTAssertTrue(ring.grow(toFit: 1000))
        XCTAssertEqual(ring.capacity, 1024)
        let data = [UInt8](repeating: 3, count: 900)
        data.withUnsafeBytes { XCTAssertEqual(ring.write($0), 900) }
        ring.shrinkIfPossible()
        XCTAssertEqual(ring.capacity, 1024, "cannot shrink below the readable bytes")
        ring.consume(895)
        ring.shrinkIfPossible()
        XCTAssertEqual(ring.capacity, 16)
        XCTAssertEqual(contents(ring), [3, 3, 3, 3, 3])
    }

    func testLinearizeWithSmallGapUsesScratchCorrectly() {
        // Large wrapped contents (gap smaller than the end part): the scratch path.
        let ring = RingBuffer(initialCapacity: 32, maximumCapacity: 32)
        put(ring, [UInt8](repeating: 0, count: 20))
        ring.consume(19) // head 19, 1 byte left
        let data = (1...29).map { UInt8($0) }
        data.withUnsafeBytes { XCTAssertEqual(ring.write($0), 29) } // 30 bytes: 13 at end, 17 at front
        XCTAssertTrue(ring.isWrapped)
        ring.linearize()
        XCTAssertEqual(Array(ring.firstReadableRegion), [0] + data)
    }

    /// Random operations checked against a plain array model.
    func testRandomOperationsMatchAnArrayModel() {
        var rng = SystemRandomNumberGenerator()
        for round in 0..<200 {
            let ring = RingBuffer(initialCapacity: 8, maximumCapacity: 256)
            var model: [UInt8] = []
            var next: UInt8 = 0
            for _ in 0..<300 {
                switch Int.random(in: 0..<10, using: &rng) {
                case 0..<4:
                    let n = Int.random(in: 0...40, using: &rng)
                    let bytes = (0..<n).map { _ -> UInt8 in next &+= 1; return next }
                    let written = bytes.withUnsafeBytes { ring.write($0) }
                    XCTAssertEqual(written, min(n, ring.capacity - model.count))
                    model += bytes.prefix(written)
                case 4..<7:
                    let n = Int.random(in: 0...model.count, using: &rng)
                    ring.consume(n)
                    model.removeFirst(n)
                case 7:
                    ring.linearize()
                    XCTAssertEqual(Array(ring.firstReadableRegion), model)
                case 8:
                    let target = Int.random(in: 1...300, using: &rng)
                    let grew = ring.grow(toFit: target)
                    XCTAssertEqual(grew, target <= 256)
                default:
                    ring.shrinkIfPossible()
                }
                XCTAssertEqual(ring.readableCount, model.count, "round \(round)")
                XCTAssertEqual(contents(ring), model, "round \(round)")
                if !model.isEmpty {
                    let offset = Int.random(in: 0..<model.count, using: &rng)
                    let count = Int.random(in: 0...(model.count - offset), using: &rng)
                    var copy = [UInt8](repeating: 0, count: count)
                    copy.withUnsafeMutableBytes { ring.copyBytes(at: offset, count: count, into: $0.baseAddress!) }
                    XCTAssertEqual(copy, Array(model[offset..<offset + count]))
                }
            }
        }
    }
}
