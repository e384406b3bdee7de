@testable import UVRPC
import XCTest

/// A very long timeout sent as a deadline.
final class HugeTimeoutTests: XCTestCase {
    /// A timeout the call table takes (its milliseconds fit a UInt64) must
    /// encode as a deadline: `seconds * 1_000_000` overflowed Int64 past
    /// about 292 000 years and trapped (a crash, only towards a `meta` peer).
    func testAVeryLongTimeoutEncodesAsTheLargestDeadline() throws {
        let long = Duration.seconds(10_000_000_000_000) // 1e16 ms: the call table takes it
        XCTAssertEqual(long.roundedUpMilliseconds, 10_000_000_000_000_000)
        let entries = try RPCMetadata().encoded(deadline: long).get()
        let decoded = try entries.withUnsafeBytes { try RPCMetadata.decode($0).get() }
        XCTAssertEqual(decoded.deadlineMicroseconds, UInt64(Int64.max), "clamped")
    }
}
