import Foundation
import UVTestSupport
import XCTest

/// Examples/KeyValueServer and Examples/KeyValueClient, as processes, the way
/// a reader of the docs would run them.
final class KeyValueExampleTests: XCTestCase {
    private func example(_ name: String) throws -> URL {
        let binary = uvrpcTool.deletingLastPathComponent().appendingPathComponent(name)
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("\(binary.path) is not built (make test builds it)")
        }
        return binary
    }

    func testTheClientsCommandsAreAnsweredAndTheServerDrainsOnSIGTERM() throws {
        let server = try ServeProcess(executable: try example("example-kv-server"), arguments: ["0"])
        defer { _ = try? server.stop() }
        guard case .ipv4(_, let port) = server.address else { return XCTFail("\(server.address)") }

        let (status, printed) = try runToCompletion(try example("example-kv-client"), ["\(port)"], seconds: 30)
        XCTAssertEqual(status, 0, printed)
        let lines = printed.split(separator: "\n").map(String.init)
        XCTAssertEqual(Array(lines.prefix(6)), [
            "SET greeting hello -> OK", "GET greeting -> hello", "DEL greeting -> OK", "GET greeting -> NOT_FOUND",
            "SET session abc ttl=50 -> OK", "session expired",
        ], printed)
        // Per-connection state: the commands counted on this connection (5, the polls, STATS itself).
        XCTAssertEqual(lines.count, 7, printed)
        let counted = lines.last.flatMap { Int($0.replacingOccurrences(of: "STATS -> commands on this connection: ", with: "")) }
        XCTAssertGreaterThanOrEqual(counted ?? 0, 7, printed)
        XCTAssertEqual(try server.stop(), 0, "SIGTERM drains the server and it exits 0")
    }
}
