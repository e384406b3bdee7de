import Foundation

/// A server implementation: `uvrpc serve` (callback API), the README's async
/// echo server (`example-async-echo-server`), `uvrpc serve --metrics` (a
/// Prometheus backend bootstrapped), the C baseline, or another's.
enum Impl: String, Codable {
    case swift, swiftAsync = "swift-async", swiftTyped = "swift-typed", swiftMetrics = "swift-metrics", swiftTLS = "swift-tls", c, cTLS = "c-tls", external
}

/// One measured figure set, as written to --json.
struct Measurement {
    var scenario: String
    var impl: Impl
    var params: String
    var callsPerSecond: Double?
    var megabytesPerSecond: Double?
    var p50: Double?
    var p99: Double?
    var p999: Double?
    var mallocsPerCall: Double?
    var bytesPerConnection: Double?
    /// Server CPU seconds (user + system) per million calls.
    var cpuPerMillionCalls: Double?
    /// Open connections of each server loop under load.
    var loopConnections: [Int]?
    /// CPU seconds each server loop's thread used under load.
    var loopCPUSeconds: [Double]?
    /// Nanoseconds per operation (the shared scenario: per update on each loop).
    var nanosecondsPerOperation: Double?
}

extension Measurement: Encodable {
    enum CodingKeys: String, CodingKey {
        case scenario, impl, params, calls_per_s, mb_per_s, p50_us, p99_us, p999_us, mallocs_per_call, bytes_per_conn
        case cpu_s_per_million_calls, loop_connections, loop_cpu_s, ns_per_op
    }

    /// Every field is written; absent ones as null.
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(scenario, forKey: .scenario)
        try c.encode(impl.rawValue, forKey: .impl)
        try c.encode(params, forKey: .params)
        try c.encode(callsPerSecond, forKey: .calls_per_s)
        try c.encode(megabytesPerSecond, forKey: .mb_per_s)
        try c.encode(p50, forKey: .p50_us)
        try c.encode(p99, forKey: .p99_us)
        try c.encode(p999, forKey: .p999_us)
        try c.encode(mallocsPerCall, forKey: .mallocs_per_call)
        try c.encode(bytesPerConnection, forKey: .bytes_per_conn)
        try c.encode(cpuPerMillionCalls, forKey: .cpu_s_per_million_calls)
        try c.encode(loopConnections, forKey: .loop_connections)
        try c.encode(loopCPUSeconds, forKey: .loop_cpu_s)
        try c.encode(nanosecondsPerOperation, forKey: .ns_per_op)
    }
}

/// One line of the printed table: a figure for Swift and for C.
struct Row {
    var scenario: String
    var params: String
    var metric: String
    var swift: Double?
    var c: Double?
    /// True when a larger figure is better (throughput), false for latency and memory.
    var higherIsBetter: Bool

    var ratio: Double? {
        guard let swift, let c, c != 0 else { return nil }
        return swift / c
    }
}

func format(_ value: Double?) -> String {
    guard let value else { return "-" }
    if value.isInfinite { return "inf" }
    if value >= 100_000 { return String(format: "%.0f", value) }
    if value >= 100 { return String(format: "%.0f", value) }
    if value >= 10 { return String(format: "%.1f", value) }
    return String(format: "%.2f", value)
}

/// The table; with `impls.1 == nil` (an external server) a single column of figures.
func table(_ rows: [Row], impls: (String, String?)) -> String {
    let single = impls.1 == nil
    let header = ["scenario", "params", "metric", impls.0] + (single ? [] : [impls.1!, "\(impls.0)/\(impls.1!)"])
    let lines = rows.map { row in
        [row.scenario, row.params, row.metric, format(row.swift)]
            + (single ? [] : [format(row.c), row.ratio.map { $0.isFinite ? String(format: "%.2f", $0) : "-" } ?? "-"])
    }
    let widths = (0..<header.count).map { i in ([header] + lines).map { $0[i].count }.max()! }
    func render(_ cells: [String]) -> String {
        cells.enumerated().map { i, cell in
            i < 3 ? cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
                  : String(repeating: " ", count: widths[i] - cell.count) + cell
        }.joined(separator: "  ")
    }
    let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
    return ([render(header), rule] + lines.map(render)).joined(separator: "\n")
}

/// A plain SVG chart: per row, a Swift bar and a C bar scaled to the larger.
func svgChart(_ rows: [Row], title: String) -> String {
    let rowHeight = 34, labelWidth = 300, barWidth = 420, top = 50
    let height = top + rows.count * rowHeight + 40
    var svg = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(labelWidth + barWidth + 140)" height="\(height)" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="10" y="22" font-size="15" font-weight="bold">\(title)</text>
        <rect x="\(labelWidth)" y="30" width="12" height="10" fill="#f05138"/><text x="\(labelWidth + 16)" y="39">Swift (UVRPC)</text>
        <rect x="\(labelWidth + 120)" y="30" width="12" height="10" fill="#555"/><text x="\(labelWidth + 136)" y="39">C (plain libuv)</text>

        """
    for (i, row) in rows.enumerated() {
        let y = top + i * rowHeight
        let largest = max(row.swift ?? 0, row.c ?? 0)
        let scale = largest > 0 ? Double(barWidth) / largest : 0
        let better = row.higherIsBetter ? "higher is better" : "lower is better"
        svg += "<text x=\"10\" y=\"\(y + 14)\">\(row.scenario) \(row.params): \(row.metric)</text>\n"
        svg += "<text x=\"10\" y=\"\(y + 27)\" fill=\"#888\" font-size=\"10\">\(better)</text>\n"
        for (j, (value, color)) in [(row.swift, "#f05138"), (row.c, "#555")].enumerated() {
            guard let value else { continue }
            let w = max(1, Int(value * scale))
            let by = y + 2 + j * 14
            svg += "<rect x=\"\(labelWidth)\" y=\"\(by)\" width=\"\(w)\" height=\"12\" fill=\"\(color)\"/>\n"
            svg += "<text x=\"\(labelWidth + w + 4)\" y=\"\(by + 10)\" font-size=\"10\">\(format(value))</text>\n"
        }
    }
    svg += "</svg>\n"
    return svg
}
