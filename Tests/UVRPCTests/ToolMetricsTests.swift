import Foundation
import ServerChild
import UVLoop
import UVTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP connection to `address`, as an outside client makes one; reads time out after 10 s.
private func connectBlocking(_ address: SocketAddress) throws -> Int32 { try connectTCP(to: address, receiveTimeout: 10) }

/// `GET path` over HTTP/1.1; returns the status line's code and the body.
private func httpGet(_ address: SocketAddress, _ path: String) throws -> (status: Int, body: String) {
    let fd = try connectBlocking(address)
    defer { close(fd) }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: \(address)\r\n\r\n".utf8)
    guard write(fd, request, request.count) == request.count else { throw TestTimeout(what: "sending the request") }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true { // the server closes after its answer
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n"), let code = Int(text.split(separator: " ").dropFirst().first ?? "") else {
        throw TestTimeout(what: "an HTTP response, got '\(text)'")
    }
    return (code, String(text[split.upperBound...]))
}

/// Checks `text` against the Prometheus text exposition format (0.0.4) and
/// returns every sample as "name{labels}" -> value; fails on any other line.
private func parsePrometheus(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> [String: Double] {
    let name = "[a-zA-Z_:][a-zA-Z0-9_:]*"
    let label = "[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\\\\n]|\\\\.)*\""
    let sample = try! NSRegularExpression(pattern: "^(\(name)(?:\\{\(label)(?:,\(label))*\\})?) ([-+]?(?:[0-9]*\\.?[0-9]+(?:[eE][-+]?[0-9]+)?|NaN|Inf))$")
    let type = try! NSRegularExpression(pattern: "^# TYPE \(name) (counter|gauge|histogram|summary|untyped)$")
    var samples: [String: Double] = [:]
    for row in text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) {
        let range = NSRange(row.startIndex..., in: row)
        if row.hasPrefix("# HELP ") || type.firstMatch(in: row, range: range) != nil { continue }
        guard let match = sample.firstMatch(in: row, range: range),
              let key = Range(match.range(at: 1), in: row), let value = Range(match.range(at: 2), in: row) else {
            XCTFail("not a Prometheus text line: '\(row)'", file: file, line: line)
            continue
        }
        samples[String(row[key])] = Double(row[value].replacingOccurrences(of: "Inf", with: "inf"))
    }
    return samples
}

/// `uvrpc serve --metrics`: the Prometheus page, and what an operator sees
/// when connections arrive past the open-files limit.
final class ToolMetricsTests: XCTestCase {
    private func skipUnlessBuilt() throws {
        guard FileManager.default.isExecutableFile(atPath: uvrpcTool.path) else {
            throw XCTSkip("\(uvrpcTool.path) is not built (make test builds it)")
        }
    }

    /// The second stdout line, `metrics on http://HOST:PORT/metrics`, parsed.
    private func metricsAddress(of server: ServeProcess) throws -> SocketAddress {
        try server.waitForOutput("/metrics\n")
        let line = String(server.stdout.split(separator: "\n")[0])
        let pattern = try NSRegularExpression(pattern: "^metrics on http://(127\\.0\\.0\\.1:[0-9]+)/metrics$")
        guard let match = pattern.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)),
              let hostPort = Range(match.range(at: 1), in: line), let address = SocketAddress(parsing: String(line[hostPort])) else {
            throw TestTimeout(what: "'metrics on http://HOST:PORT/metrics' as the second line, got '\(line)'")
        }
        return address
    }

    func testServeMetricsOutputParsesAsPrometheusTextAndCountsTheCalls() throws {
        try skipUnlessBuilt()
        let server = try ServeProcess(tool: uvrpcTool, ["--metrics", "127.0.0.1:0"])
        defer { _ = try? server.stop() }
        let metrics = try metricsAddress(of: server)
        let call = try runTool(["call", "--connect", "\(server.address)", "--count", "300", "--size", "100", "--concurrency", "8"])
        XCTAssertEqual(call.status, 0, call.output)

        let page = try httpGet(metrics, "/metrics")
        XCTAssertEqual(page.status, 200)
        let samples = parsePrometheus(page.body)
        // Published before the call finished (each loop turn publishes what it counted).
        XCTAssertEqual(samples["uvrpc_connections_accepted_total"], 1, page.body)
        XCTAssertEqual(samples["uvrpc_messages_received_total"], 300, page.body)
        XCTAssertEqual(samples["uvrpc_responses_sent_total"], 300, page.body)
        XCTAssertGreaterThanOrEqual(samples["uvrpc_bytes_received_total"] ?? 0, 300 * 104, page.body)
        XCTAssertGreaterThanOrEqual(samples["uvrpc_bytes_sent_total"] ?? 0, 300 * 104, page.body)
        for name in ["uvrpc_connections_open", "uvrpc_calls_sent_total", "uvrpc_calls_in_flight",
                     "uvrpc_connections_closed_total{reason=\"peer_closed\"}", "uvrpc_calls_failed_total{error=\"timed_out\"}",
                     "uvrpc_protocol_violations_total{violation=\"unknown_packet_type\"}", "uvrpc_call_duration_seconds_count"] {
            XCTAssertNotNil(samples[name], "\(name) in\n\(page.body)")
        }
        XCTAssertEqual(try httpGet(metrics, "/elsewhere").status, 404)
        XCTAssertEqual(try server.stop(), 0)
    }

    /// The metrics port keeps to its own budget: 16 connections at once (a
    /// new one closes the oldest, so idle ones cannot lock a scraper out),
    /// each closed when its request has not come within 10 s.
    func testTheMetricsPortHoldsAtMostSixteenConnectionsAndClosesIdleOnes() throws {
        try skipUnlessBuilt()
        let server = try ServeProcess(tool: uvrpcTool, ["--metrics", "127.0.0.1:0"])
        defer { _ = try? server.stop() }
        let metrics = try metricsAddress(of: server)
        let idle = try (0..<20).map { _ in try connectBlocking(metrics) }
        defer { for fd in idle { close(fd) } }
        var byte: UInt8 = 0
        for fd in idle.prefix(4) {
            let n = read(fd, &byte, 1) // the end of the stream or a reset, not the 10 s read timeout
            XCTAssertTrue(n == 0 || (n < 0 && errno == ECONNRESET), "the oldest are closed (read \(n), errno \(errno))")
        }
        XCTAssertEqual(try httpGet(metrics, "/metrics").status, 200, "a scraper still gets its page")
        // The rest are closed once they have sent no request for 10 s (the read timeout of connectBlocking is 10 s too).
        let started = monotonicMilliseconds()
        var closedAt: Double?
        while closedAt == nil && monotonicMilliseconds() - started < 30_000 {
            if read(idle[19], &byte, 1) <= 0 && errno != EAGAIN && errno != EWOULDBLOCK { closedAt = monotonicMilliseconds() }
        }
        XCTAssertNotNil(closedAt, "an idle connection is closed within 30 s")
        XCTAssertEqual(try server.stop(), 0)
    }

    /// With 64 open files and 120 connections arriving, the connections past
    /// the limit are refused at once (closed, not left waiting), the operator
    /// is told once for the burst with the limit, they are counted, and the
    /// server accepts again once descriptors are free: with one loop, and
    /// with a listening socket per loop (reuse-port, which libuv's own
    /// listener would refuse silently).
    func testRunningOutOfDescriptorsIsLoggedOncePerBurstCountedAndRecovered() throws {
        try skipUnlessBuilt()
        for spread in ["", "--loops 2 --spread reuse-port"] {
            try checkRunningOutOfDescriptors(spread)
        }
    }

    private func checkRunningOutOfDescriptors(_ spread: String) throws {
        let command = "ulimit -n 64 && exec '\(uvrpcTool.path)' serve --port 0 --metrics 127.0.0.1:0 \(spread)"
        let server = try ServeProcess(executable: URL(fileURLWithPath: "/bin/sh"), arguments: ["-c", command])
        defer { _ = try? server.stop() }
        let metrics = try metricsAddress(of: server)
        var clients: [Int32] = []
        defer { for fd in clients { close(fd) } }
        for _ in 0..<120 { clients.append(try connectBlocking(server.address)) } // the kernel completes each handshake
        // Every client learns its fate: the server's handshake (served) or the end of the stream (refused).
        var served: [Int32] = [], refused = 0
        for fd in clients {
            var byte: UInt8 = 0
            if read(fd, &byte, 1) == 1 { served.append(fd) } else { refused += 1 }
        }
        XCTAssertGreaterThan(refused, 0, "some connections were past the limit")
        XCTAssertGreaterThan(served.count, 20, "the rest were served")
        try server.waitForLog("refusing connections: out of file descriptors")
        XCTAssertTrue(server.stderr.contains("64 open files"), server.stderr)
        // Free descriptors, then a new connection is served again and the burst's end is told.
        for fd in served.prefix(10) { close(fd) }
        clients.removeAll { served.prefix(10).contains($0) }
        // The metrics page (itself refused while no descriptor is free) tells when the server closed them.
        try waitUntil("the server to close the 10 freed connections") {
            guard let page = try? httpGet(metrics, "/metrics") else { return false }
            // Closed with unread bytes, so the server sees a reset: count every reason.
            let closed = parsePrometheus(page.body).filter { $0.key.hasPrefix("uvrpc_connections_closed_total{") }
            return closed.values.reduce(0, +) >= 10
        }
        let again = try connectBlocking(server.address)
        clients.append(again)
        var byte: UInt8 = 0
        XCTAssertEqual(read(again, &byte, 1), 1, "served again once descriptors are free")
        try server.waitForLog("accepting connections again")
        // Told once per burst, not per connection (a descriptor freed meanwhile, by anything in
        // the process, ends a burst early: under ThreadSanitizer its runtime's own files do);
        // every refusal is in the bursts' counts.
        let stderr = server.stderr
        let bursts = stderr.components(separatedBy: "refusing connections").count - 1
        XCTAssertTrue(bursts >= 1 && bursts <= 3, "told once per burst (\(bursts) bursts):\n\(stderr)")
        let counted = stderr.components(separatedBy: "rpc.refused=").dropFirst()
            .compactMap { Int($0.prefix { $0.isNumber }) }.reduce(0, +)
        XCTAssertEqual(counted, refused, stderr)
        let samples = parsePrometheus(try httpGet(metrics, "/metrics").body)
        XCTAssertEqual(samples["uvrpc_accept_errors_total{error=\"EMFILE\"}"], Double(refused))
        XCTAssertEqual(try server.stop(), 0)
    }
}
