import Foundation
import UVLoop
import UVTestSupport
import XCTest

/// The typed examples, run as a user would: example-typed-server and
/// example-typed-client against each other, and each against a Python
/// efro.message peer written from MESSAGES.md (`Tests/Peers/efro_message_peer.py`).
final class TypedExampleTests: XCTestCase {
    /// The lines the client prints against a fresh server (MESSAGES.md's scores semantics).
    static let expectedLines = [
        "submit rank=1 best=10", "submit rank=1 best=30", "submit rank=2 best=20", "top bob:30 alice:20", "top bob:30 alice:20",
        "ping ok", "fail clean: nope", "fail remote", "echo ok 100000",
    ]

    private func example(_ name: String) throws -> URL {
        let binary = uvrpcTool.deletingLastPathComponent().appendingPathComponent(name)
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("\(binary.path) is not built (make test builds it)")
        }
        return binary
    }

    private var peerScript: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Peers/efro_message_peer.py").path
    }

    private func python() throws -> URL { try python3() }

    private func lines(_ output: String) -> [String] {
        output.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
    }

    func testTheTypedClientAgainstTheTypedServer() throws {
        let server = try ServeProcess(executable: try example("example-typed-server"), arguments: ["0"])
        defer { _ = try? server.stop() }
        let (status, output) = try runToCompletion(try example("example-typed-client"), ["\(server.address)"], seconds: 60)
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(lines(output), Self.expectedLines, output)
        XCTAssertFalse(output.contains("boom"), "an internal error's reason is not sent")
        try waitUntil("the server to log the internal failure") { (server.stdout + server.stderr).contains("the handler of Fail failed") }
    }

    func testAPythonEfroMessageClientAgainstTheTypedServer() throws {
        let server = try ServeProcess(executable: try example("example-typed-server"), arguments: ["0"])
        defer { _ = try? server.stop() }
        let (status, output) = try runToCompletion(try python(), [peerScript, "client", "\(server.address)"], seconds: 60)
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(lines(output), Self.expectedLines, output)
    }

    func testTheTypedServerAnswersBadMessagesAndServesOn() throws {
        let server = try ServeProcess(executable: try example("example-typed-server"), arguments: ["0"])
        defer { _ = try? server.stop() }
        let (status, output) = try runToCompletion(try python(), [peerScript, "probe", "\(server.address)"], seconds: 60)
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(lines(output).last, "probe ok", output)
    }

    func testTheTypedClientAgainstAPythonEfroMessageServer() throws {
        let server = try ServeProcess(executable: try python(), arguments: [peerScript, "server", "0"])
        defer { _ = try? server.stop() }
        let (status, output) = try runToCompletion(try example("example-typed-client"), ["\(server.address)"], seconds: 60)
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(lines(output), Self.expectedLines, output)
    }
}
