import Foundation
import XCTest

/// Blocking calls on any event loop's thread are refused with a message that
/// names the call and the loop (blocking one loop while it waits for another
/// can deadlock): each runs in a child process (uvloop-misuse), which must
/// stop by the refusal, never hang or return.
final class LoopMisuseTests: XCTestCase {
    private var misuse: URL { uvrpcTool.deletingLastPathComponent().appendingPathComponent("uvloop-misuse") }

    /// Runs the misuse `what` in a child (at most 60 s: a child that hangs
    /// instead of refusing is terminated and fails the test); its output.
    private func refusal(_ what: String) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: misuse.path) else {
            throw XCTSkip("\(misuse.path) is not built (make test builds it)")
        }
        // Without Swift's crash backtracer: under ThreadSanitizer, its suspending
        // of every thread can deadlock with the sanitizer's own crash handling.
        let (status, text) = try runToCompletion(misuse, [what], environment: ["SWIFT_BACKTRACE": "enable=no"])
        XCTAssertNotEqual(status, 0, "\(what) was not refused: \(text)")
        XCTAssertFalse(text.contains("the blocking call returned"), text)
        return text
    }

    func testSyncShutdownOfAnotherLoopIsRefusedOnALoop() throws {
        let text = try refusal("syncShutdown-of-another-loop")
        XCTAssertTrue(text.contains("EventLoop 'other': syncShutdown() blocks its thread, and it was called on event loop 'caller'"), text)
    }

    func testSyncShutdownOfAGroupIsRefusedOnALoop() throws {
        let text = try refusal("syncShutdown-of-a-group")
        XCTAssertTrue(text.contains("EventLoopGroup 'group': syncShutdown() blocks its thread, and it was called on event loop 'caller'"), text)
    }

    func testSubmitAndWaitOnAnotherLoopIsRefusedOnALoop() throws {
        let text = try refusal("submitAndWait-on-another-loop")
        XCTAssertTrue(text.contains("EventLoop 'other': submitAndWait blocks its thread, and it was called on event loop 'caller'"), text)
        XCTAssertTrue(text.contains("use the async form"), text)
    }
}
