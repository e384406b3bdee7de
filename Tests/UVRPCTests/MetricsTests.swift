import CoreMetrics
import ExampleScores
import MetricsTestKit
import UVLoop
import UVRPC
import UVRPCMessages
import UVTestSupport
import XCTest

/// The swift-metrics backend of this test process: bootstrapped once, before
/// the loops of the metrics tests make their metric objects. (Loops of other
/// tests made later publish to it too, which is harmless: these tests compare
/// figures before and after.)
let testMetrics: TestMetrics = {
    let metrics = TestMetrics()
    MetricsSystem.bootstrap(metrics)
    return metrics
}()

/// The figures UVRPC reports through swift-metrics, read from a test backend.
final class MetricsTests: XCTestCase {
    private struct Figures: Equatable {
        var accepted: Int64 = 0, received: Int64 = 0, responses: Int64 = 0, sent: Int64 = 0
        var timedOut: Int64 = 0, closedLocal: Int64 = 0, closedByPeer: Int64 = 0, closedByViolation: Int64 = 0
        var violations: Int64 = 0, bytesIn: Int64 = 0, bytesOut: Int64 = 0, durations = 0
        var inFlight: Double = 0, open: Double = 0

        static func read() -> Figures {
            func total(_ label: String, _ dimensions: [(String, String)] = []) -> Int64 {
                testMetrics.counters(label: label, dimensions: dimensions).map(\.totalValue).reduce(0, +)
            }
            return Figures(
                accepted: total("uvrpc_connections_accepted_total"),
                received: total("uvrpc_messages_received_total"),
                responses: total("uvrpc_responses_sent_total"),
                sent: total("uvrpc_calls_sent_total"),
                timedOut: total("uvrpc_calls_failed_total", [("error", "timed_out")]),
                closedLocal: total("uvrpc_connections_closed_total", [("reason", "local")]),
                closedByPeer: total("uvrpc_connections_closed_total", [("reason", "peer_closed")]),
                closedByViolation: total("uvrpc_connections_closed_total", [("reason", "protocol_violation")]),
                violations: total("uvrpc_protocol_violations_total"),
                bytesIn: total("uvrpc_bytes_received_total"),
                bytesOut: total("uvrpc_bytes_sent_total"),
                durations: (try? testMetrics.expectTimer("uvrpc_call_duration_seconds"))?.values.count ?? 0,
                inFlight: (try? testMetrics.expectMeter("uvrpc_calls_in_flight"))?.lastValue ?? 0,
                open: (try? testMetrics.expectMeter("uvrpc_connections_open"))?.lastValue ?? 0)
        }
    }

    func testHandlersAreTimedOverallAndTypedOnesByMessageType() async throws {
        _ = testMetrics
        func count(_ label: String, _ dimensions: [(String, String)] = []) -> Int {
            (try? testMetrics.expectTimer(label, dimensions))?.values.count ?? 0
        }
        let overall = count("uvrpc_handler_duration_seconds")
        let pings = count("uvrpc_message_handler_duration_seconds", [("type", "Ping")])
        let fails = count("uvrpc_message_handler_duration_seconds", [("type", "Fail")])
        let harness = try LoopHarness("metrics-typed")
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                         on: harness.loop, handler: try .messages(ScoreBoard().handlers())).start()
        let endpoint = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        let client = RPCMessageClient(endpoint, protocol: scoresProtocol)
        for _ in 0..<5 { try await client.send(Ping()) }
        for clean in [true, false] { _ = try? await client.send(Fail(reason: "x", clean: clean)) } // a handler that throws is timed too
        await endpoint.close()
        harness.shutdownCleanly() // the loop publishes what is left as it closes
        XCTAssertEqual(count("uvrpc_message_handler_duration_seconds", [("type", "Ping")]) - pings, 5)
        XCTAssertEqual(count("uvrpc_message_handler_duration_seconds", [("type", "Fail")]) - fails, 2)
        XCTAssertEqual(count("uvrpc_handler_duration_seconds") - overall, 7, "every async handler call, typed or not")
    }

    func testCountersEqualTheCallsMade() throws {
        _ = testMetrics
        let before = Figures.read()
        let server = try LoopHarness("metrics-server")
        let client = try LoopHarness("metrics-client")
        let calls = 50, size = 100
        let serverSawTheEnd = Promise<RPCCloseReason>()
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration(keepaliveInterval: .seconds(60))), on: server.loop, handler: .callback { endpoint in
                endpoint.onMessage = { request in
                    if request.payload.first != 0 { try request.respond(request.payload) } // [0...] is never answered
                }
                endpoint.onClose = { serverSawTheEnd.fulfill($0) }
            }).startAndWait().address
        let outcomes = Promise<[String]>()
        try client.sync {
            RPCClient.connect(to: address, on: client.loop,
                              configuration: testConfiguration(keepaliveInterval: .seconds(60))) { result in
                guard case .success(let endpoint) = result else { return outcomes.fulfill(["\(result)"]) }
                var seen: [String] = []
                func record(_ result: Result<[UInt8], RPCError>) {
                    switch result {
                    case .success(let bytes): seen.append(bytes.count == size ? "ok" : "short")
                    case .failure(let error): seen.append("\(error)")
                    }
                    if seen.count == calls + 1 { endpoint.close(); outcomes.fulfill(seen) }
                }
                endpoint.send([0], timeout: .milliseconds(50), closeOnError: false) { record($0) }
                for _ in 0..<calls { endpoint.send([UInt8](repeating: 7, count: size)) { record($0) } }
            }
        }
        let seen = try outcomes.wait("the calls")
        XCTAssertEqual(seen.filter { $0 == "ok" }.count, calls, "\(seen)")
        XCTAssertEqual(try serverSawTheEnd.wait("the server's endpoint closing"), .peerClosed)
        // The loops publish at the end of each turn, and once more when they close.
        client.shutdownCleanly()
        server.shutdownCleanly()
        let after = Figures.read()

        XCTAssertEqual(after.accepted - before.accepted, 1)
        XCTAssertEqual(after.sent - before.sent, Int64(calls + 1))
        XCTAssertEqual(after.received - before.received, Int64(calls + 1), "every message the server received")
        XCTAssertEqual(after.responses - before.responses, Int64(calls))
        XCTAssertEqual(after.timedOut - before.timedOut, 1)
        XCTAssertEqual(after.durations - before.durations, calls + 1, "every call that ended was timed")
        XCTAssertEqual(after.closedLocal - before.closedLocal, 1, "the client closed")
        XCTAssertEqual(after.closedByPeer - before.closedByPeer, 1, "the server saw the client go")
        XCTAssertEqual(after.inFlight, before.inFlight, "no call left in flight")
        XCTAssertEqual(after.open, before.open, "no connection left open")
        let framed = Int64(calls * (size + 4))
        XCTAssertGreaterThanOrEqual(after.bytesIn - before.bytesIn, 2 * framed, "both sides' frames were read")
        XCTAssertGreaterThanOrEqual(after.bytesOut - before.bytesOut, after.bytesIn - before.bytesIn)
    }

    func testAProtocolViolationIsCountedByKind() throws {
        _ = testMetrics
        let before = Figures.read()
        let harness = try LoopHarness("metrics-violation")
        let closed = Promise<RPCCloseReason>()
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: harness.loop, handler: .callback { endpoint in
                endpoint.onClose = { closed.fulfill($0) }
            }).startAndWait().address
        try harness.sync {
            harness.loop.connect(to: address) { result in
                guard case .success(let connection) = result else { return }
                connection.onRead = { $0.count }
                try? connection.write(PeerInfo(keepaliveInterval: 10).handshakeBytes + [0x09]) // no such packet type
            }
        }
        guard case .protocolViolation(let violation) = try closed.wait("the server's close").kind,
              case .unknownPacketType = violation.kind else {
            return XCTFail("expected an unknown packet type")
        }
        harness.shutdownCleanly()
        let after = Figures.read()
        XCTAssertEqual(after.violations - before.violations, 1)
        XCTAssertEqual(after.closedByViolation - before.closedByViolation, 1)
        XCTAssertEqual(testMetrics.counters(label: "uvrpc_protocol_violations_total",
                                            dimensions: [("violation", "unknown_packet_type")]).count, 1)
    }
}
