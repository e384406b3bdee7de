import Prometheus
import UVLoop

/// The `/metrics` page of `uvrpc serve --metrics`: a minimal HTTP/1.x server
/// on one of the tool's loops that answers `GET /metrics` with the Prometheus
/// text format (swift-prometheus renders it) and closes each connection after
/// its answer. Enough for a Prometheus scraper or `curl`; not a web server.
///
/// Its own small budget, so that it can never hold what the RPC port needs:
/// at most ``maximumConnections`` connections at once (a new one closes the
/// oldest, so that idle connections cannot lock a scraper out), each closed
/// if its request has not arrived within ``requestTimeout``.
enum MetricsPage {
    /// Largest request head read; a longer one is refused.
    static let maximumRequestHead = 8 << 10
    /// Connections open at once; a new one past it closes the oldest.
    static let maximumConnections = 16
    /// How long a connection may take to send its request (and be answered).
    static let requestTimeout = Duration.seconds(10)

    /// Starts serving `registry` on `address` on `loop` (from any thread) and
    /// returns the bound address (with the chosen port for port 0).
    static func serve(_ registry: PrometheusCollectorRegistry, on address: SocketAddress,
                      loop: EventLoop) throws -> SocketAddress {
        try loop.submitAndWait {
            var open: [Connection] = [] // oldest first; on the loop
            // The listener keeps itself alive until the loop shuts down.
            return try loop.listen(on: address) { connection in
                if open.count >= maximumConnections { open.removeFirst().abort() }
                open.append(connection)
                let deadline = loop.scheduleTimer(after: requestTimeout) { connection.abort() }
                connection.onClose = { [unowned connection] _ in
                    open.removeAll { $0 === connection }
                    deadline.cancel()
                }
                connection.onRead = { bytes in answer(bytes, on: connection, registry: registry) }
            }.address
        }
    }

    /// Answers once the request head is complete; returns the bytes consumed.
    private static func answer(_ bytes: UnsafeRawBufferPointer, on connection: Connection,
                               registry: PrometheusCollectorRegistry) -> Int {
        guard let end = headEnd(bytes) else {
            if bytes.count > maximumRequestHead { reply(431, "request head too large\n", on: connection) }
            return bytes.count > maximumRequestHead ? bytes.count : 0 // wait for the rest of the head
        }
        let requestLine = String(decoding: bytes[..<(bytes.firstIndex(of: UInt8(ascii: "\r")) ?? end)], as: UTF8.self)
        let parts = requestLine.split(separator: " ")
        if parts.count != 3 || !parts[2].hasPrefix("HTTP/1.") {
            reply(400, "bad request\n", on: connection)
        } else if parts[0] != "GET" {
            reply(405, "only GET\n", on: connection)
        } else if parts[1] != "/metrics" && !parts[1].hasPrefix("/metrics?") {
            reply(404, "the metrics are at /metrics\n", on: connection)
        } else {
            reply(200, registry.emitToBuffer(), contentType: "text/plain; version=0.0.4; charset=utf-8", on: connection)
        }
        return bytes.count
    }

    /// The offset just past the blank line ending the request head, if it arrived.
    private static func headEnd(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i + 4
        }
        return nil
    }

    private static func reply(_ status: Int, _ text: String, on connection: Connection) {
        reply(status, Array(text.utf8), contentType: "text/plain; charset=utf-8", on: connection)
    }

    private static func reply(_ status: Int, _ body: [UInt8], contentType: String, on connection: Connection) {
        let reason = [200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                      431: "Request Header Fields Too Large"][status] ?? "Error"
        let head = "HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(contentType)\r\n"
            + "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        try? connection.write(Array(head.utf8) + body)
        connection.close() // after the answer is flushed
    }
}
