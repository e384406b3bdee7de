import Foundation
import XCTest

/// Blocking calls on any event loop's thread are refused with a message that
/// names the call and the loop (blocking one loop while it waits for another
/// can deadlock): each runs in a child process (uvloop-misuse), which must
/// stop by the refusal, never hang or return.
final class LoopMisuseTests: XCTestCase {
    private var misuse: URL { uvrpcTool.deletingLastPathComponent().appendingPathComponent("uvloop-misuse") }

    private func refusal(_ what: String) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: misuse.path) else {
            throw XCTSkip("\(misuse.path) is not built (make test builds it)")
        }
        let process = Process()
        process.executableURL = misuse
        process.arguments = [what]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let ended = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in ended.signal() }
        if ended.wait(timeout: .now() + 30) == .timedOut {
            process.terminate()
            XCTFail("\(what): the process hung instead of refusing the call")
        }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertNotEqual(process.terminationStatus, 0, "\(what) was not refused: \(text)")
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
