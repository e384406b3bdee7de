import Foundation
import UVLoop

/// What one run of the cores scenario measured on one server.
struct CoresRun {
    var callsPerSecond: Double
    /// Server CPU seconds (user + system) per million calls, over the load's whole life.
    var cpuPerMillionCalls: Double
    /// Open connections of each loop while the load was connected.
    var loopConnections: [Int]
    /// CPU seconds each loop's thread used during the load.
    var loopCPUSeconds: [Double]
}

/// The servers of the cores scenario at one loop count.
enum CoresServer: Hashable, CustomStringConvertible {
    case swift(spread: String)
    case c

    var impl: Impl { if case .c = self { return .c } else { return .swift } }
    var spread: String { if case .swift(let spread) = self { return spread } else { return "reuse-port" } }
    /// The prefix of its loop threads' names.
    var threadPrefix: String { impl == .c ? "uvrpc-c-" : "uvrpc-serve-" }
    var description: String { impl == .c ? "C" : "Swift \(spread)" }
}

extension Bench {
    /// The cores scenario: for N = 1 and N = every CPU, 64 connections with
    /// 16 calls of 64 B in flight each against Swift (both spreads) and C
    /// servers of N loops, unpinned, interleaved `repeat` rounds.
    func measureCores(progress: (String) -> Void) throws -> (measurements: [Measurement], rows: [Row]) {
        let cpus = EventLoopGroup.availableCPUCount
        let loopCounts = cpus > 1 ? [1, cpus] : [1]
        var medians: [Int: [CoresServer: CoresRun]] = [:]
        for loops in loopCounts {
            // One Swift server at N = 1: with one loop both spreads are one plain listener.
            let kinds: [CoresServer] = loops == 1 ? [.swift(spread: "round-robin"), .c]
                                                  : [.swift(spread: "round-robin"), .swift(spread: "reuse-port"), .c]
            var servers: [(CoresServer, Server)] = []
            defer { for (_, server) in servers { server.child.stop() } }
            for kind in kinds { servers.append((kind, try Server.start(kind.impl, cpu: nil, loops: loops, spread: kind.spread))) }
            var runs: [CoresServer: [CoresRun]] = [:]
            for round in 1...`repeat` {
                for (kind, server) in servers {
                    progress("cores: \(loops) loop(s), \(kind) server, 64 connections x 16 in flight, \(duration) s, run \(round) of \(`repeat`)")
                    runs[kind, default: []].append(try coresRun(server, kind: kind))
                }
            }
            medians[loops] = runs.mapValues(Self.median)
        }
        return coresReport(medians, loopCounts: loopCounts)
    }

    private func coresRun(_ server: Server, kind: CoresServer) throws -> CoresRun {
        let cpuBefore = try server.child.cpuSeconds()
        let threadsBefore = try server.child.threadCPUSeconds(namePrefix: kind.threadPrefix)
        var cpuAfter = 0.0, threadsAfter: [String: Double] = [:], connections: [Int] = []
        let result = try runLoad(address: server.address, connections: 64, concurrency: 16, size: 64,
                                 duration: duration, latency: false, cpu: nil) { _ in
            cpuAfter = try server.child.cpuSeconds()
            threadsAfter = try server.child.threadCPUSeconds(namePrefix: kind.threadPrefix)
            connections = try server.child.connectionsPerLoop()
        }
        let calls = Double(result.total_calls ?? result.calls)
        let loopCPU = (0..<connections.count).map { index -> Double in
            let name = "\(kind.threadPrefix)\(index)"
            return (threadsAfter[name] ?? 0) - (threadsBefore[name] ?? 0)
        }
        return CoresRun(callsPerSecond: result.calls_per_s, cpuPerMillionCalls: (cpuAfter - cpuBefore) / calls * 1e6,
                        loopConnections: connections, loopCPUSeconds: loopCPU)
    }

    /// The median of each figure (per loop, element-wise for the lists).
    private static func median(_ runs: [CoresRun]) -> CoresRun {
        func mid(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let loops = runs[0].loopConnections.count
        return CoresRun(callsPerSecond: mid(runs.map(\.callsPerSecond)),
                        cpuPerMillionCalls: mid(runs.map(\.cpuPerMillionCalls)),
                        loopConnections: (0..<loops).map { i in Int(mid(runs.map { Double($0.loopConnections[safe: i] ?? 0) })) },
                        loopCPUSeconds: (0..<loops).map { i in mid(runs.map { $0.loopCPUSeconds[safe: i] ?? 0 }) })
    }

    private func coresReport(_ medians: [Int: [CoresServer: CoresRun]], loopCounts: [Int])
        -> (measurements: [Measurement], rows: [Row]) {
        var measurements: [Measurement] = []
        var rows: [Row] = []
        for loops in loopCounts {
            for (kind, run) in medians[loops]!.sorted(by: { $0.key.description < $1.key.description }) {
                measurements.append(Measurement(
                    scenario: "cores", impl: kind.impl,
                    params: "loops=\(loops),spread=\(kind.spread),connections=64,concurrency=16,size=64",
                    callsPerSecond: run.callsPerSecond, cpuPerMillionCalls: run.cpuPerMillionCalls,
                    loopConnections: run.loopConnections, loopCPUSeconds: run.loopCPUSeconds))
            }
        }
        let one = medians[1]!
        let c1 = one[.c]!, swift1 = one[.swift(spread: "round-robin")]!
        rows.append(Row(scenario: "cores", params: "N=1, 64x16", metric: "calls/s",
                        swift: swift1.callsPerSecond, c: c1.callsPerSecond, higherIsBetter: true))
        rows.append(Row(scenario: "cores", params: "N=1, 64x16", metric: "CPU s/Mcall",
                        swift: swift1.cpuPerMillionCalls, c: c1.cpuPerMillionCalls, higherIsBetter: false))
        guard let top = loopCounts.last, top > 1, let many = medians[top] else { return (measurements, rows) }
        let cN = many[.c]!
        for spread in ["round-robin", "reuse-port"] {
            let swiftN = many[.swift(spread: spread)]!
            let params = "N=\(top), \(spread)"
            rows.append(Row(scenario: "cores", params: params, metric: "calls/s",
                            swift: swiftN.callsPerSecond, c: cN.callsPerSecond, higherIsBetter: true))
            rows.append(Row(scenario: "cores", params: params, metric: "CPU s/Mcall",
                            swift: swiftN.cpuPerMillionCalls, c: cN.cpuPerMillionCalls, higherIsBetter: false))
            rows.append(Row(scenario: "cores", params: params, metric: "speed-up vs N=1",
                            swift: swiftN.callsPerSecond / swift1.callsPerSecond,
                            c: cN.callsPerSecond / c1.callsPerSecond, higherIsBetter: true))
            rows.append(Row(scenario: "cores", params: params, metric: "CPU/call vs N=1",
                            swift: swiftN.cpuPerMillionCalls / swift1.cpuPerMillionCalls,
                            c: cN.cpuPerMillionCalls / c1.cpuPerMillionCalls, higherIsBetter: false))
            rows.append(Row(scenario: "cores", params: params, metric: "conns max/min",
                            swift: Self.spreadRatio(swiftN.loopConnections.map(Double.init)),
                            c: Self.spreadRatio(cN.loopConnections.map(Double.init)), higherIsBetter: false))
            rows.append(Row(scenario: "cores", params: params, metric: "loop CPU max/min",
                            swift: Self.spreadRatio(swiftN.loopCPUSeconds),
                            c: Self.spreadRatio(cN.loopCPUSeconds), higherIsBetter: false))
        }
        return (measurements, rows)
    }

    /// max / min of per-loop figures (infinity when a loop got nothing).
    private static func spreadRatio(_ values: [Double]) -> Double? {
        guard let most = values.max(), let least = values.min() else { return nil }
        return least > 0 ? most / least : .infinity
    }

    /// The fanin scenario: 1 call in flight on each of 1 000, 10 000 and
    /// 30 000 connections (as many as the open-files limit allows), calls/s
    /// and the server's resident memory per busy connection, a fresh server
    /// for every run.
    func measureFanin(progress: (String) -> Void, serverCPU: Int?, loadCPU: Int?)
        throws -> (measurements: [Measurement], rows: [Row]) {
        var measurements: [Measurement] = []
        var rows: [Row] = []
        let impls: [Impl] = [.swift, .c]
        let fit = maximumConnections()
        for wanted in [1000, 10_000, 30_000] {
            let count = min(wanted, fit)
            let label = count == wanted ? "\(count / 1000)k conns" : "\(count / 1000)k conns (of \(wanted / 1000)k: fd limit)"
            if count < wanted {
                FileHandle.standardError.write(Data(
                    "uvrpc-bench: fanin at \(wanted) connections runs with \(count): the open-files hard limit is \(openFilesHardLimit()) per process (raise it with ulimit -Hn as root)\n".utf8))
            }
            var runs: [Impl: [(calls: Double, perConnection: Double)]] = [:]
            for round in 1...`repeat` {
                for impl in impls {
                    progress("fanin: \(count) connections, 1 call in flight each, \(impl.rawValue) server, run \(round) of \(`repeat`)")
                    let server = try Server.start(impl, cpu: serverCPU)
                    defer { server.child.stop() }
                    let before = try server.child.residentBytes()
                    let peakReset = server.child.resetPeakResident()
                    var peak = 0
                    let result = try runLoad(address: server.address, connections: count, concurrency: 1, size: 64,
                                             duration: duration, latency: false, cpu: loadCPU) { _ in
                        peak = peakReset ? try server.child.peakResidentBytes() : try server.child.residentBytes()
                    }
                    runs[impl, default: []].append((result.calls_per_s, Double(peak - before) / Double(count)))
                }
            }
            var m: [Measurement] = []
            for impl in impls {
                let values = runs[impl]!
                let calls = values.map(\.calls).sorted()[values.count / 2]
                let perConnection = values.map(\.perConnection).sorted()[values.count / 2]
                m.append(Measurement(scenario: "fanin", impl: impl, params: "connections=\(count),concurrency=1,size=64",
                                     callsPerSecond: calls, bytesPerConnection: perConnection))
            }
            measurements += m
            rows.append(Row(scenario: "fanin", params: label, metric: "calls/s", swift: m[0].callsPerSecond,
                            c: m[1].callsPerSecond, higherIsBetter: true))
            rows.append(Row(scenario: "fanin", params: label, metric: "RSS B/busy conn", swift: m[0].bytesPerConnection,
                            c: m[1].bytesPerConnection, higherIsBetter: false))
        }
        return (measurements, rows)
    }
}

extension Array {
    subscript(safe index: Int) -> Element? { indices.contains(index) ? self[index] : nil }
}
