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
        // Negative ones are 0: under a second their components are (0, negative attoseconds),
        // which trapped (a pool call sent with a deadline just past: SIGILL, found by an outside attack).
        XCTAssertEqual(Duration.milliseconds(-500).roundedUpMilliseconds, 0)
        XCTAssertEqual(Duration.seconds(-2).roundedUpMilliseconds, 0)
        XCTAssertEqual(Duration.zero.roundedUpMilliseconds, 0)
        XCTAssertEqual(Duration.nanoseconds(1).roundedUpMilliseconds, 1)
        XCTAssertEqual(Duration.milliseconds(1500).roundedUpMilliseconds, 1500)
        let entries = try RPCMetadata().encoded(deadline: long).get()
        let decoded = try entries.withUnsafeBytes { try RPCMetadata.decode($0).get() }
        XCTAssertEqual(decoded.deadlineMicroseconds, UInt64(Int64.max), "clamped")
    }
}
