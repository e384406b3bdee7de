import ArgumentParser
import Foundation
import ServerChild
import UVLoop
import UVRPC

@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uvrpc-bench",
        abstract: "Measure UVRPC against a plain C libuv implementation of efro.rpc, in the same run.",
        discussion: """
            Each scenario runs the same C load generator (a separate process) against the Swift \
            server (`uvrpc serve`) and the C server (`uvrpc-c serve`), both started as child \
            processes, and prints Swift, C and Swift/C. Scenarios: small (with a row for the \
            README's async echo server), latency, medium, bulk, tls (both servers over TLS, and against their own \
            plaintext), fanin, cores, allocs, idle, hol (Swift only: 64 B calls beside 64 MiB echoes, chunked \
            and not, against an idle connection), shared (Swift only: one counter updated from every loop at once, \
            by a Mutex, an actor or per-loop shards), client (Swift callers, callback and async, on the loop and \
            from the global executor, and the pool, against the C server, beside the C load generator against it), \
            typed (Swift only: typed calls of the scores protocol, Echo and SubmitScore, against the raw async path), \
            restart (Swift only: a pool's callers while its server is killed and restarted) \
            (default: all). With --pin same (the default) server and load share CPU 0; \
            split puts them on CPUs 0 and 1; none leaves placement to the kernel. The cores scenario \
            always runs unpinned: its servers run one loop, then one loop per CPU.
            """
    )

    @Option(name: .customLong("scenario"), help: "Scenarios to run (repeatable, or comma-separated).")
    var scenarios: [String] = []

    @Option(help: "Seconds each measurement runs (after a 0.2 s warm-up).")
    var duration: Double = 1.0

    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    @Option(help: "Write an SVG chart of the results to this file.")
    var svg: String?

    @Option(help: "Placement of server and load generator: same, split or none.")
    var pin: String = "same"

    @Flag(help: "Run the Swift echo server only (for another implementation's load generator).")
    var serve = false

    @Option(help: "With --serve, the port to listen on.")
    var port = 0

    @Option(help: "Load another implementation's server at HOST:PORT instead of starting the Swift and C ones.")
    var connect: String?

    @Option(help: "Run each load measurement this many times and report the median of each figure.")
    var `repeat` = 1

    @Option(help: "Idle connections for the idle scenario.")
    var idleConnections = 10_000

    @Option(help: ArgumentHelp("Be a Swift caller of this kind (callback, async-loop, async-global, pool) against --connect (the client scenario's child).", visibility: .hidden))
    var call: String?

    @Option(help: ArgumentHelp("With --call: calls in flight.", visibility: .hidden))
    var concurrency = 1

    @Option(help: ArgumentHelp("With --call: payload bytes.", visibility: .hidden))
    var size = 64

    @Option(help: ArgumentHelp("With --call pool: loops (one connection each).", visibility: .hidden))
    var callLoops = 1

    static let allScenarios = ["small", "latency", "medium", "bulk", "tls", "fanin", "cores", "allocs", "idle", "hol", "shared",
                               "client", "typed", "restart"]

    func validate() throws {
        guard ["same", "split", "none"].contains(pin) else { throw ValidationError("--pin must be same, split or none") }
        guard duration > 0 else { throw ValidationError("--duration must be positive") }
        guard `repeat` > 0 else { throw ValidationError("--repeat must be positive") }
        if let call, CallerMode(rawValue: call) == nil || connect == nil {
            throw ValidationError("--call takes \(CallerMode.allCases.map(\.rawValue).joined(separator: ", ")) and needs --connect")
        }
        for s in selected where !Self.allScenarios.contains(s) {
            throw ValidationError("unknown scenario '\(s)'; known: \(Self.allScenarios.joined(separator: ", "))")
        }
    }

    var selected: [String] {
        let list = scenarios.flatMap { $0.split(separator: ",").map(String.init) }
        return list.isEmpty ? Self.allScenarios : list
    }

    var cpus: (server: Int?, load: Int?) {
        switch pin {
        case "same": return (0, 0)
        case "split": return (0, 1)
        default: return (nil, nil)
        }
    }

    func run() throws {
        if serve { return try serveSwift() }
        if let call, let connect {
            return try runCallerChild(mode: CallerMode(rawValue: call)!, address: connect, concurrency: concurrency,
                                      size: size, duration: duration, loops: callLoops)
        }
        _ = openSSLAllocationsCounted // before any OpenSSL call of this process
        raiseFileLimit()
        let started = Date()
        var progressIndex = 0
        func progress(_ what: String) {
            progressIndex += 1
            let line = String(format: "[%5.1fs] %@\n", Date().timeIntervalSince(started), what)
            FileHandle.standardError.write(Data(line.utf8))
        }
        var measurements: [Measurement] = []
        var rows: [Row] = []
        let impls: [Impl] = connect == nil ? [.swift, .c] : [.external]
        let (serverCPU, loadCPU) = cpus

        /// Runs `body` with a fresh server of each implementation.
        func withServers(_ body: (Impl, String, Server?) throws -> Void) throws {
            for impl in impls {
                if impl == .external {
                    try body(impl, connect!, nil)
                } else {
                    let server = try Server.start(impl, cpu: serverCPU)
                    defer { server.child.stop() }
                    try body(impl, server.address, server)
                }
            }
        }
        /// Runs `load` against a fresh server of each implementation, all
        /// started at once and loaded in turn (Swift, C, Swift, C, ...), `repeat`
        /// rounds; returns each one's median. Interleaving spreads the
        /// machine's passing load over both instead of landing on one.
        func interleavedLoads(_ what: String, impls: [Impl] = impls,
                              _ load: (String) throws -> LoadResult) throws -> [(Impl, LoadResult)] {
            var servers: [(impl: Impl, address: String, server: Server?)] = []
            defer { for entry in servers { entry.server?.child.stop() } }
            for impl in impls {
                if impl == .external {
                    servers.append((impl, connect!, nil))
                } else {
                    let server = try Server.start(impl, cpu: serverCPU)
                    servers.append((impl, server.address, server))
                }
            }
            var runs: [Impl: [LoadResult]] = [:]
            for round in 1...`repeat` {
                for entry in servers {
                    progress("\(what), \(entry.impl.rawValue) server, \(duration) s, run \(round) of \(`repeat`)")
                    runs[entry.impl, default: []].append(try load(entry.address))
                }
            }
            return servers.map { ($0.impl, medianResult(runs[$0.impl]!)) }
        }
        func value(_ m: [Measurement], _ impl: Impl, _ key: KeyPath<Measurement, Double?>) -> Double? {
            m.first { $0.impl == impl }?[keyPath: key]
        }
        func addRow(_ scenario: String, _ params: String, _ metric: String, _ m: [Measurement],
                    _ key: KeyPath<Measurement, Double?>, higherIsBetter: Bool, first: Impl = impls[0]) {
            rows.append(Row(scenario: scenario, params: params, metric: metric, swift: value(m, first, key),
                            c: impls.count > 1 ? value(m, .c, key) : nil, higherIsBetter: higherIsBetter))
        }

        let wanted = Set(selected)
        if wanted.contains("small") || wanted.contains("latency") {
            for concurrency in wanted.contains("small") ? [1, 16, 256, 4096] : [1] {
                var m: [Measurement] = []
                for (impl, r) in try interleavedLoads("small: 64 B, concurrency \(concurrency)", { address in
                    try runLoad(address: address, concurrency: concurrency, size: 64, duration: duration,
                                latency: concurrency == 1, cpu: loadCPU)
                }) {
                    m.append(Measurement(scenario: "small", impl: impl, params: "size=64,concurrency=\(concurrency)",
                                         callsPerSecond: r.calls_per_s))
                    if concurrency == 1 {
                        m.append(Measurement(scenario: "latency", impl: impl, params: "size=64,concurrency=1",
                                             p50: r.p50_us, p99: r.p99_us, p999: r.p999_us))
                    }
                }
                let small = m.filter { $0.scenario == "small" }
                if wanted.contains("small") {
                    measurements += small
                    addRow("small", "64 B, c=\(concurrency)", "calls/s", small, \.callsPerSecond, higherIsBetter: true)
                }
                if concurrency == 1 && wanted.contains("latency") {
                    let latency = m.filter { $0.scenario == "latency" }
                    measurements += latency
                    addRow("latency", "64 B, c=1", "p50 µs", latency, \.p50, higherIsBetter: false)
                    addRow("latency", "64 B, c=1", "p99 µs", latency, \.p99, higherIsBetter: false)
                    addRow("latency", "64 B, c=1", "p99.9 µs", latency, \.p999, higherIsBetter: false)
                }
            }
        }
        if wanted.contains("small") && connect == nil {
            // The README's async echo server (one task-based handler, default
            // settings) against the C server, 64 and 256 calls of 64 B in flight.
            for concurrency in [64, 256] {
                var m: [Measurement] = []
                for (impl, r) in try interleavedLoads("small: 64 B, concurrency \(concurrency), async echo server",
                                                       impls: [.swiftAsync, .c], { address in
                    try runLoad(address: address, concurrency: concurrency, size: 64, duration: duration, latency: false,
                                cpu: loadCPU)
                }) {
                    m.append(Measurement(scenario: "small", impl: impl,
                                         params: "size=64,concurrency=\(concurrency),server=async-example",
                                         callsPerSecond: r.calls_per_s))
                }
                measurements += m
                addRow("small", "64 B, c=\(concurrency), async", "calls/s", m, \.callsPerSecond, higherIsBetter: true,
                       first: .swiftAsync)
            }
            // uvrpc serve with a Prometheus backend bootstrapped (--metrics), against C.
            for concurrency in [16, 256] {
                var withMetrics: [Measurement] = []
                for (impl, r) in try interleavedLoads("small: 64 B, concurrency \(concurrency), metrics on",
                                                       impls: [.swiftMetrics, .c], { address in
                    try runLoad(address: address, concurrency: concurrency, size: 64, duration: duration,
                                latency: false, cpu: loadCPU)
                }) {
                    withMetrics.append(Measurement(scenario: "small", impl: impl,
                                                   params: "size=64,concurrency=\(concurrency),metrics=on",
                                                   callsPerSecond: r.calls_per_s))
                }
                measurements += withMetrics
                addRow("small", "64 B, c=\(concurrency), metrics", "calls/s", withMetrics, \.callsPerSecond,
                       higherIsBetter: true, first: .swiftMetrics)
            }
        }
        if wanted.contains("medium") {
            // Just under, just over and well over the short-frame limit (65535 B).
            for size in [16 << 10, 64 << 10, 256 << 10] {
                var m: [Measurement] = []
                for (impl, r) in try interleavedLoads("medium: \(size >> 10) KiB messages, concurrency 4", { address in
                    try runLoad(address: address, concurrency: 4, size: size, duration: duration, latency: false, cpu: loadCPU)
                }) {
                    m.append(Measurement(scenario: "medium", impl: impl, params: "size=\(size),concurrency=4",
                                         megabytesPerSecond: r.mb_per_s))
                }
                measurements += m
                addRow("medium", "\(size >> 10) KiB, c=4", "MB/s", m, \.megabytesPerSecond, higherIsBetter: true)
            }
        }
        if wanted.contains("bulk") {
            for size in [1 << 20, 16 << 20] {
                var m: [Measurement] = []
                for (impl, r) in try interleavedLoads("bulk: \(size >> 20) MiB messages", { address in
                    try runLoad(address: address, concurrency: 1, size: size, duration: max(duration, 1.5),
                                latency: false, cpu: loadCPU)
                }) {
                    m.append(Measurement(scenario: "bulk", impl: impl, params: "size=\(size),concurrency=1",
                                         megabytesPerSecond: r.mb_per_s))
                }
                measurements += m
                addRow("bulk", "\(size >> 20) MiB", "MB/s", m, \.megabytesPerSecond, higherIsBetter: true)
            }
        }
        if wanted.contains("tls") && connect == nil {
            // Both servers over TLS (and each against its own plaintext figure, in the same run).
            let ca = try benchTLSFiles.get().ca
            for (label, concurrency, size, metric) in [("64 B, c=256", 256, 64, "calls/s"), ("16 MiB", 1, 16 << 20, "MB/s")] {
                let key: KeyPath<Measurement, Double?> = metric == "calls/s" ? \.callsPerSecond : \.megabytesPerSecond
                func measurement(_ impl: Impl, _ r: LoadResult) -> Measurement {
                    var m = Measurement(scenario: "tls", impl: impl, params: "size=\(size),concurrency=\(concurrency)")
                    if metric == "calls/s" { m.callsPerSecond = r.calls_per_s } else { m.megabytesPerSecond = r.mb_per_s }
                    return m
                }
                let seconds = size > 1 << 20 ? max(duration, 1.5) : duration
                var m: [Measurement] = []
                for (impl, r) in try interleavedLoads("tls: \(label) over TLS", impls: [.swiftTLS, .cTLS], { address in
                    try runLoad(address: address, concurrency: concurrency, size: size, duration: seconds, latency: false,
                                cpu: loadCPU, tlsCA: ca)
                }) { m.append(measurement(impl, r)) }
                var plain: [Measurement] = []
                for (impl, r) in try interleavedLoads("tls: \(label) in plaintext", impls: [.swift, .c], { address in
                    try runLoad(address: address, concurrency: concurrency, size: size, duration: seconds, latency: false,
                                cpu: loadCPU)
                }) { plain.append(measurement(impl, r)) }
                measurements += m + plain.map { var p = $0; p.params += ",plaintext"; return p }
                rows.append(Row(scenario: "tls", params: label, metric: metric, swift: value(m, .swiftTLS, key),
                                c: value(m, .cTLS, key), higherIsBetter: true))
                let swiftShare = value(m, .swiftTLS, key).flatMap { tls in value(plain, .swift, key).map { tls / $0 } }
                let cShare = value(m, .cTLS, key).flatMap { tls in value(plain, .c, key).map { tls / $0 } }
                rows.append(Row(scenario: "tls", params: "\(label), TLS/plain", metric: "ratio", swift: swiftShare, c: cShare,
                                higherIsBetter: true))
            }
            // Handshakes: a fresh connection per call, 8 at a time, each server in turn.
            var rates: [Impl: [Double]] = [:]
            var servers: [(Impl, Server)] = []
            defer { for (_, server) in servers { server.child.stop() } }
            for impl in [Impl.swiftTLS, .cTLS] { servers.append((impl, try Server.start(impl, cpu: serverCPU))) }
            for round in 1...`repeat` {
                for (impl, server) in servers {
                    progress("tls: handshakes, \(impl.rawValue) server, \(duration) s, run \(round) of \(`repeat`)")
                    rates[impl, default: []].append(try runChurn(address: server.address, lanes: 8, duration: duration,
                                                                 cpu: loadCPU, tlsCA: ca))
                }
            }
            func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
            for impl in [Impl.swiftTLS, .cTLS] {
                var m = Measurement(scenario: "tls", impl: impl, params: "handshakes,lanes=8")
                m.callsPerSecond = median(rates[impl]!)
                measurements.append(m)
            }
            rows.append(Row(scenario: "tls", params: "handshakes, 8 at a time", metric: "handshakes/s",
                            swift: median(rates[.swiftTLS]!), c: median(rates[.cTLS]!), higherIsBetter: true))
        }
        if wanted.contains("fanin") && connect == nil {
            let (m, r) = try measureFanin(progress: progress, serverCPU: serverCPU, loadCPU: loadCPU)
            measurements += m
            rows += r
        }
        if wanted.contains("cores") && connect == nil {
            let (m, r) = try measureCores(progress: progress)
            measurements += m
            rows += r
        }
        if wanted.contains("restart") && connect == nil {
            // A pool (default settings) while its server is killed and restarted: Docs/MANY_MACHINES.md.
            progress("restart: 16 callers through a pool; SIGKILL the server after 0.5 s, restart it 0.5 s later")
            let r = try measureRestart()
            let label = "pool, server killed 0.5 s then restarted, 16 callers"
            let figures: [(params: String, metric: String, value: Double, higherIsBetter: Bool)] = [
                (label, "ms to first answer after restart", r.firstSuccessAfterRestartMilliseconds, false),
                (label, "ms wait-for-ready answered after restart", r.waitForReadyAnsweredAfterRestartMilliseconds, false),
                (label + ", plain", "calls lost (written)", Double(r.plainCallsLost), false),
                (label + ", plain", "calls failed fast (unsent)", Double(r.plainCallsFailedUnsent), false),
                (label + ", plain", "calls answered", Double(r.plainCallsAnswered), true),
                (label + ", idempotent", "calls failed", Double(r.idempotentCallsFailed), false),
                (label + ", idempotent", "calls answered", Double(r.idempotentCallsAnswered), true),
                (label + ", idempotent", "retries", Double(r.retries), false),
            ]
            for figure in figures {
                rows.append(Row(scenario: "restart", params: figure.params, metric: figure.metric, swift: figure.value, c: nil,
                                higherIsBetter: figure.higherIsBetter))
            }
        }
        if wanted.contains("hol") && connect == nil {
            // Swift client and server in this process; the figure is the ratio to the idle connection.
            var results: [HeadOfLineMode: [HeadOfLineResult]] = [:]
            for round in 1...`repeat` {
                for mode in HeadOfLineMode.allCases {
                    progress("hol: 16 calls of 64 B in flight, \(mode.rawValue), \(max(duration, 2)) s, run \(round) of \(`repeat`)")
                    let result = try measureHeadOfLine(mode, seconds: max(duration, 2))
                    progress("hol: \(mode.rawValue): \(result.smallCalls) small calls, \(result.bigCalls) big calls of 64 MiB answered")
                    results[mode, default: []].append(result)
                }
            }
            func median(_ mode: HeadOfLineMode, _ key: KeyPath<HeadOfLineResult, Double>) -> Double {
                let values = results[mode]!.map { $0[keyPath: key] }.sorted()
                return values[values.count / 2]
            }
            for mode in HeadOfLineMode.allCases where mode.hasSmallCalls {
                let label = mode == .idle ? "64 B, 16 in flight, idle connection" : "64 B, 16 in flight, beside 64 MiB both ways, \(mode.rawValue)"
                let (p50, p99) = (median(mode, \.p50Microseconds), median(mode, \.p99Microseconds))
                measurements.append(Measurement(scenario: "hol", impl: .swift, params: "mode=\(mode.rawValue)", p50: p50, p99: p99))
                rows.append(Row(scenario: "hol", params: label, metric: "p50 us", swift: p50, c: nil, higherIsBetter: false))
                rows.append(Row(scenario: "hol", params: label, metric: "p99 us", swift: p99, c: nil, higherIsBetter: false))
            }
            for mode in HeadOfLineMode.allCases where mode.hasBigCalls {
                let rate = median(mode, \.bigMegabytesPerSecond)
                let label = mode.hasSmallCalls ? "64 MiB echoes beside the small calls, \(mode.rawValue)" : "64 MiB echoes alone, \(mode.rawValue.dropFirst(5))"
                var m = Measurement(scenario: "hol", impl: .swift, params: "mode=\(mode.rawValue),big")
                m.megabytesPerSecond = rate
                measurements.append(m)
                rows.append(Row(scenario: "hol", params: label, metric: "MB/s", swift: rate, c: nil, higherIsBetter: true))
            }
            for mode in [HeadOfLineMode.chunked, .unchunked] {
                rows.append(Row(scenario: "hol", params: "p99 \(mode.rawValue) / p99 idle (target for chunked <= 3)", metric: "ratio",
                                swift: median(mode, \.p99Microseconds) / median(.idle, \.p99Microseconds), c: nil, higherIsBetter: false))
            }
        }
        if wanted.contains("idle") && connect == nil {
            var m: [Measurement] = []
            try withServers { impl, _, server in
                progress("idle: \(idleConnections) idle connections, \(impl.rawValue) server")
                let perConnection = try idleBytesPerConnection(server: server!, connections: idleConnections, cpu: loadCPU)
                m.append(Measurement(scenario: "idle", impl: impl, params: "connections=\(idleConnections)",
                                     bytesPerConnection: perConnection))
            }
            measurements += m
            addRow("idle", "\(idleConnections / 1000)k conns", "bytes/conn", m, \.bytesPerConnection, higherIsBetter: false)
        }
        if wanted.contains("allocs") {
            let cpus = EventLoopGroup.availableCPUCount
            // Both APIs on one loop per side; the callback API also on one loop per CPU per side.
            // Then both again with a Prometheus backend bootstrapped (once per process, so last).
            let runs = [(AllocationAPI.callback, 1, false), (.async, 1, false)] + (cpus > 1 ? [(.callback, cpus, false)] : [])
                + [(.callback, 1, true), (.async, 1, true)]
            // And the callback API over TLS: UVRPC's own allocations apart from OpenSSL's.
            for (api, loops, metrics) in runs {
                if metrics { _ = benchMetricsRegistry }
                progress("allocs: \(api.rawValue) API, \(loops) loop(s) per side\(metrics ? ", metrics on" : ""), in this process")
                let figures = try measureAllocations(api: api, calls: 100_000, loops: loops)
                let params = (loops == 1 ? "api=\(api.rawValue)" : "api=\(api.rawValue),loops=\(loops)")
                    + (metrics ? ",metrics=on" : "")
                let label = (loops == 1 ? api.rawValue : "\(api.rawValue), \(loops) loops") + (metrics ? ", metrics" : "")
                for (side, value) in [("server", figures.server), ("client", figures.client)] {
                    measurements.append(Measurement(scenario: "allocs", impl: .swift, params: "\(params),side=\(side)",
                                                    mallocsPerCall: value))
                    rows.append(Row(scenario: "allocs", params: "\(label), \(side)", metric: "mallocs/call",
                                    swift: value, c: nil, higherIsBetter: false))
                }
            }
            progress("allocs: callback API over TLS, 1 loop per side, in this process")
            let tls = try measureAllocations(api: .callback, calls: 100_000, loops: 1, tls: true)
            for (side, total, openSSL) in [("server", tls.server, tls.serverOpenSSL), ("client", tls.client, tls.clientOpenSSL)] {
                // UVRPC's own share (everything but OpenSSL's), and OpenSSL's reported apart.
                measurements.append(Measurement(scenario: "allocs", impl: .swift, params: "api=callback,tls=on,side=\(side)",
                                                mallocsPerCall: total - openSSL))
                measurements.append(Measurement(scenario: "allocs", impl: .swift,
                                                params: "api=callback,tls=on,openssl,side=\(side)", mallocsPerCall: openSSL))
                rows.append(Row(scenario: "allocs", params: "callback, TLS, \(side) (UVRPC)", metric: "mallocs/call",
                                swift: total - openSSL, c: nil, higherIsBetter: false))
                rows.append(Row(scenario: "allocs", params: "callback, TLS, \(side) (OpenSSL)", metric: "mallocs/call",
                                swift: openSSL, c: nil, higherIsBetter: false))
            }
        }
        if wanted.contains("shared") {
            let loops = max(2, EventLoopGroup.availableCPUCount)
            for way in SharingWay.allCases {
                progress("shared: one counter updated from \(loops) loops at once, by \(way.rawValue), in this process")
                let updates = way == .actor ? 200_000 : 2_000_000
                let nanoseconds = try runBlocking { try await measureSharedState(way, loops: loops, updates: updates) }
                measurements.append(Measurement(scenario: "shared", impl: .swift, params: "way=\(way.rawValue),loops=\(loops)",
                                                nanosecondsPerOperation: nanoseconds))
                rows.append(Row(scenario: "shared", params: "\(way.rawValue), \(loops) loops at once", metric: "ns/update",
                                swift: nanoseconds, c: nil, higherIsBetter: false))
            }
        }
        if wanted.contains("client") && connect == nil {
            // Swift callers against the C server, beside the C load generator against the same server.
            let server = try Server.start(.c, cpu: serverCPU)
            defer { server.child.stop() }
            let callers: [(mode: CallerMode, loops: Int)] = [(.callback, 1), (.asyncOnLoop, 1), (.asyncGlobal, 1),
                                                             (.pool, 1), (.pool, 2)]
            for (size, concurrency) in [(64, 1), (64, 64), (64, 256), (4096, 64)] {
                let shape = (size >= 1024 ? "\(size / 1024) KiB" : "\(size) B") + ", c=\(concurrency)"
                // The C load generator with as many connections as the caller has (at most one per call in flight).
                var cRuns: [Int: [LoadResult]] = [:], swiftRuns: [String: [LoadResult]] = [:]
                for round in 1...`repeat` {
                    for connections in Set(callers.map { min($0.loops, concurrency) }).sorted() {
                        progress("client: \(shape), C load generator, \(connections) connection(s), run \(round) of \(`repeat`)")
                        cRuns[connections, default: []].append(try runLoad(
                            address: server.address, connections: connections, concurrency: concurrency / connections,
                            size: size, duration: duration, latency: false, cpu: loadCPU))
                    }
                    for caller in callers {
                        progress("client: \(shape), Swift \(caller.mode.label), \(caller.loops) loop(s), run \(round) of \(`repeat`)")
                        swiftRuns["\(caller.mode.rawValue)-\(caller.loops)", default: []].append(try runSwiftCaller(
                            caller.mode, address: server.address, loops: caller.loops, concurrency: concurrency, size: size,
                            duration: duration, cpu: loadCPU))
                    }
                }
                for caller in callers {
                    let swift = medianResult(swiftRuns["\(caller.mode.rawValue)-\(caller.loops)"]!)
                    let c = medianResult(cRuns[min(caller.loops, concurrency)]!)
                    let params = "caller=\(caller.mode.rawValue),loops=\(caller.loops),size=\(size),concurrency=\(concurrency)"
                    let m = [Measurement(scenario: "client", impl: .swift, params: params, callsPerSecond: swift.calls_per_s,
                                         mallocsPerCall: swift.mallocs_per_call, cpuPerMillionCalls: swift.cpuPerMillionCalls),
                             Measurement(scenario: "client", impl: .c, params: params, callsPerSecond: c.calls_per_s,
                                         cpuPerMillionCalls: c.cpuPerMillionCalls)]
                    measurements += m
                    let label = "\(shape), \(caller.mode.label)" + (caller.mode == .pool ? " over \(caller.loops) loop(s)" : "")
                    addRow("client", label, "calls/s", m, \.callsPerSecond, higherIsBetter: true)
                    addRow("client", label, "caller CPU s/M calls", m, \.cpuPerMillionCalls, higherIsBetter: false)
                    addRow("client", label, "caller mallocs/call", m, \.mallocsPerCall, higherIsBetter: false)
                }
            }
        }
        if wanted.contains("typed") && connect == nil {
            // Typed calls (the scores protocol) between a typed server and typed callers, beside the raw async
            // path (the async echo server and async callers) in the same run: what the typed layer costs.
            let raw = try Server.start(.swiftAsync, cpu: serverCPU)
            defer { raw.child.stop() }
            let typed = try Server.start(.swiftTyped, cpu: serverCPU)
            defer { typed.child.stop() }
            let runs: [(key: String, label: String, mode: CallerMode, address: String)] = [
                ("raw", "raw async: async echo server, async callers on the loop", .asyncOnLoop, raw.address),
                ("echo", "typed Echo: typed server, typed callers on the loop", .typedEcho, typed.address),
                ("submit", "typed SubmitScore: typed server, typed callers on the loop", .typedSubmit, typed.address),
            ]
            var results: [String: [LoadResult]] = [:]
            for round in 1...`repeat` {
                for run in runs {
                    progress("typed: 64 B, c=64, \(run.key), run \(round) of \(`repeat`)")
                    results[run.key, default: []].append(try runSwiftCaller(run.mode, address: run.address, loops: 1, concurrency: 64,
                                                                           size: 64, duration: duration, cpu: loadCPU))
                }
            }
            let medians = results.mapValues(medianResult)
            for run in runs {
                let result = medians[run.key]!
                measurements.append(Measurement(scenario: "typed", impl: run.key == "raw" ? .swiftAsync : .swiftTyped,
                                                params: "call=\(run.key),size=64,concurrency=64", callsPerSecond: result.calls_per_s,
                                                mallocsPerCall: result.mallocs_per_call, cpuPerMillionCalls: result.cpuPerMillionCalls))
                rows.append(Row(scenario: "typed", params: "64 B, c=64, \(run.label)", metric: "calls/s",
                                swift: result.calls_per_s, c: nil, higherIsBetter: true))
                rows.append(Row(scenario: "typed", params: "64 B, c=64, \(run.label)", metric: "caller mallocs/call",
                                swift: result.mallocs_per_call, c: nil, higherIsBetter: false))
            }
            for (key, label, nanoseconds, mallocs) in try measureTypedCodec(size: 64) {
                measurements.append(Measurement(scenario: "typed", impl: .swiftTyped, params: "codec=\(key),size=64",
                                                mallocsPerCall: mallocs, nanosecondsPerOperation: nanoseconds))
                rows.append(Row(scenario: "typed", params: "64 B: \(label)", metric: "ns", swift: nanoseconds, c: nil, higherIsBetter: false))
                rows.append(Row(scenario: "typed", params: "64 B: \(label)", metric: "mallocs", swift: mallocs, c: nil, higherIsBetter: false))
            }
            for key in ["echo", "submit"] {
                let ratio = medians[key]!.calls_per_s / medians["raw"]!.calls_per_s
                rows.append(Row(scenario: "typed", params: "\(key == "echo" ? "Echo" : "SubmitScore") typed / raw async"
                                + (key == "echo" ? " (target >= 0.5)" : ""), metric: "ratio", swift: ratio, c: nil, higherIsBetter: true))
            }
        }
        let names: (String, String?) = connect == nil ? ("Swift", "C") : ("external", nil)
        print("uvrpc-bench: placement \(pin) (server CPU \(serverCPU.map(String.init) ?? "any"), load CPU \(loadCPU.map(String.init) ?? "any")), \(duration) s per measurement, median of \(`repeat`), \(ProcessInfo.processInfo.activeProcessorCount) CPUs")
        print(table(rows, impls: names))
        print(String(format: "total %.1f s", Date().timeIntervalSince(started)))
        if let json {
            struct Output: Encodable { let results: [Measurement] }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(Output(results: measurements)).write(to: URL(fileURLWithPath: json))
        }
        if let svg {
            let chartRows = rows.filter { $0.c != nil }
            try svgChart(chartRows, title: "UVRPC (Swift) vs plain C libuv, efro.rpc echo, placement \(pin)")
                .write(toFile: svg, atomically: true, encoding: .utf8)
        }
    }

    /// Runs the load `repeat` times against the same server; the median of each figure.
    /// The median of each figure over `runs`.
    func medianResult(_ runs: [LoadResult]) -> LoadResult {
        func median(_ key: (LoadResult) -> Double?) -> Double? {
            let values = runs.compactMap(key).sorted()
            return values.isEmpty ? nil : values[values.count / 2]
        }
        return LoadResult(calls: runs.map(\.calls).sorted()[runs.count / 2], seconds: median { $0.seconds }!,
                          calls_per_s: median { $0.calls_per_s }!, mb_per_s: median { $0.mb_per_s }!,
                          total_calls: median { $0.total_calls.map(Double.init) }.map { Int($0) },
                          p50_us: median { $0.p50_us }, p99_us: median { $0.p99_us }, p999_us: median { $0.p999_us },
                          cpu_s: median { $0.cpu_s }, mallocs_per_call: median { $0.mallocs_per_call })
    }

    /// `--serve`: the Swift echo server, until SIGINT/SIGTERM.
    func serveSwift() throws {
        let loop = try EventLoop(name: "bench-serve")
        var configuration = RPCServer.Configuration(address: .ipv4(host: "127.0.0.1", port: port))
        configuration.backlog = 4096
        let server = RPCServer(configuration: configuration, on: loop, handler: .callback { endpoint in
            endpoint.onMessage = { request in try request.respond(request.payload) }
        })
        Task.detached {
            do {
                let running = try await server.start()
                print("listening on \(running.address)")
                fflush(nil)
            } catch {
                FileHandle.standardError.write(Data("uvrpc-bench: cannot listen: \(error)\n".utf8))
                loop.beginShutdown()
            }
        }
        let sources = [SIGINT, SIGTERM].map { signum -> DispatchSourceSignal in
            signal(signum, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signum, queue: .global())
            source.setEventHandler { loop.beginShutdown() }
            source.resume()
            return source
        }
        // The sources must outlive the loop: a released source stops watching.
        try withExtendedLifetime(sources) { try loop.run() }
    }

    /// 10k connections need 10k descriptors in each process: raise the limit
    /// to 65536 (the hard limit too, where allowed) or else to the hard one,
    /// and say so when that is too low. The children inherit it.
    func raiseFileLimit() {
        var limit = rlimit()
        guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else { return }
        var wanted = rlimit(rlim_cur: 65536, rlim_max: max(65536, limit.rlim_max))
        if limit.rlim_cur < 65536 && setrlimit(RLIMIT_NOFILE_VALUE, &wanted) != 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(RLIMIT_NOFILE_VALUE, &limit)
        }
        if openFilesHardLimit() < idleConnections + 100 {
            FileHandle.standardError.write(Data(
                "uvrpc-bench: the open-files hard limit is \(limit.rlim_max), too low for \(idleConnections) idle connections; raise it (ulimit -Hn) or pass --idle-connections\n".utf8))
        }
    }
}

/// The open-files hard limit of this process (what its children may raise theirs to).
func openFilesHardLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else { return 1024 }
    return Int(min(limit.rlim_max, 1 << 30))
}

/// Most connections one process can hold under that limit (in thousands, with room for its own descriptors).
func maximumConnections() -> Int {
    (openFilesHardLimit() - 200) / 1000 * 1000
}

/// RLIMIT_NOFILE as the Int32 that getrlimit takes on Linux.
let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
