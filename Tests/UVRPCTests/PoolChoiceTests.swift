@testable import UVRPC
import XCTest

/// The pool's power-of-two choices, made without a system random number per call.
final class PoolChoiceTests: XCTestCase {
    /// Consecutive turns give pairs that spread over every pair of
    /// connections about evenly, whatever the seed (fixed seeds: the
    /// result is the same on every run).
    func testTwoChoicesFromConsecutiveTurnsSpreadOverEveryPair() {
        for seed: UInt64 in [0, 1, 0x1234_5678_9ABC_DEF0, .max] {
            for count in [2, 3, 7] {
                var pairs = [Int](repeating: 0, count: count * count)
                let turns = 1000 * count * count
                for ticket in 0..<UInt64(turns) {
                    let (first, second) = RPCClientPool.twoChoices(seed: seed, ticket: ticket, count: count)
                    XCTAssertTrue((0..<count).contains(first) && (0..<count).contains(second))
                    pairs[first * count + second] += 1
                }
                // 1000 expected in each pair; 700 or 1300 would be about ten standard deviations off.
                XCTAssertTrue(pairs.allSatisfy { (700...1300).contains($0) }, "seed \(seed), \(count) connections: \(pairs)")
            }
        }
    }
}
