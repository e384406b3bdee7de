import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Spans through swift-distributed-tracing, across two UVRPC processes that
/// each bootstrapped a W3C test tracer (`uvrpc-trace-peer`, Tests/TracePeer):
/// the trace travels in the calls' `traceparent` metadata.
final class TracingTests: XCTestCase {
    /// One span line of uvrpc-trace-peer.
    private struct SpanLine: Equatable, CustomStringConvertible {
        var name, kind, trace, span, parent, status: String
        var description: String { "\(name) \(kind) trace=\(trace) span=\(span) parent=\(parent) status=\(status)" }

        static func parse(_ output: String) -> [SpanLine] {
            output.split(separator: "\n").compactMap { line in
                let words = line.split(separator: " ").map(String.init)
                guard words.count == 7, words[0] == "span" else { return nil }
                func value(_ word: String) -> String { String(word.drop { $0 != "=" }.dropFirst()) }
                return SpanLine(name: words[1], kind: words[2], trace: value(words[3]), span: value(words[4]),
                                parent: value(words[5]), status: value(words[6]))
            }
        }
    }

    func testACallAndTheCallBackItMakesAreOneTraceAcrossTwoProcesses() throws {
        let peer = uvrpcTool.deletingLastPathComponent().appendingPathComponent("uvrpc-trace-peer")
        guard FileManager.default.isExecutableFile(atPath: peer.path) else {
            throw XCTSkip("\(peer.path) is not built (make test builds it)")
        }
        let server = try ServeProcess(executable: peer, arguments: ["serve"])
        let (status, output) = try runToCompletion(peer, ["call", "\(server.address)"])
        XCTAssertEqual(status, 0, output)
        // The server prints its handler's span as the handler ends, which is before the client's call ends.
        try server.waitForOutput("span uvrpc.handle")
        _ = try server.stop() // SIGTERM: the peer has nothing to flush
        let client = SpanLine.parse(output), served = SpanLine.parse(server.stdout)
        // Client: its root span, its call, and the handler of the server's call back (ended first).
        guard client.count == 3, served.count == 2 else {
            return XCTFail("expected 3 client and 2 server spans:\n\(output)\n---\n\(server.stdout)")
        }
        let (callBackHandler, call, root) = (client[0], client[1], client[2])
        let (callBack, handler) = (served[0], served[1])
        XCTAssertEqual([root.name, root.parent], ["test.root", "none"])
        XCTAssertEqual([call.name, call.kind, call.parent], ["uvrpc.call", "client", root.span])
        XCTAssertEqual([handler.name, handler.kind, handler.parent], ["uvrpc.handle", "server", call.span],
                       "the server's handler span is the client call's child, across the process boundary")
        XCTAssertEqual([callBack.name, callBack.kind, callBack.parent], ["uvrpc.call", "client", handler.span],
                       "a call made inside the handler is its child")
        XCTAssertEqual([callBackHandler.name, callBackHandler.kind, callBackHandler.parent], ["uvrpc.handle", "server", callBack.span])
        XCTAssertEqual(Set((client + served).map(\.trace)), [root.trace], "one trace")
        XCTAssertEqual(Set((client + served).map(\.status)), ["ok"])
        XCTAssertEqual(root.trace.count, 32)
    }
}
