import ExampleScores
import Foundation
import MallocCounter
import Synchronization
import UVLoop
import UVRPC
import UVRPCMessages

/// The ways a Swift program calls a server, as the client scenario measures
/// them (each in a child process, against the C server, beside the C load
/// generator against the same server).
enum CallerMode: String, CaseIterable {
    /// Tagged callback sends on the loop (`send(_:tag:)`, `onTaggedResponse`):
    /// the advanced, allocation-free layer.
    case callback
    /// Tasks that prefer the loop's executor, each awaiting `send` in turn.
    case asyncOnLoop = "async-loop"
    /// Tasks with no executor preference (as most code makes them), each awaiting `send` in turn.
    case asyncGlobal = "async-global"
    /// An `RPCClientPool` with one connection per loop; tasks with no preference awaiting `pool.send`.
    case pool
    /// Typed calls (`RPCMessageClient`, the scores protocol's Echo of `size` bytes) from tasks on the loop.
    case typedEcho = "typed-echo"
    /// Typed calls of the scores protocol's SubmitScore from tasks on the loop.
    case typedSubmit = "typed-submit"

    /// How a table row names it.
    var label: String {
        switch self {
        case .callback: return "callback caller on the loop"
        case .asyncOnLoop: return "async caller, tasks on the loop"
        case .asyncGlobal: return "async caller, global executor"
        case .pool: return "pool"
        case .typedEcho: return "typed Echo caller, tasks on the loop"
        case .typedSubmit: return "typed SubmitScore caller, tasks on the loop"
        }
    }
}

/// What a caller child counts: calls answered (checked: an answer of the
/// wrong length counts as a failure) and calls that failed.
private let answeredCalls = Atomic<Int>(0)
private let failedCalls = Atomic<Int>(0)
private let stopCalling = Atomic<Bool>(false)

/// CPU seconds (user + system) this process used so far.
private func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// `uvrpc-bench --call MODE`: this process is the Swift caller. It keeps
/// `concurrency` calls of `size` bytes in flight against `address` for
/// `duration` seconds after a 0.2 s warm-up, then prints one JSON line as
/// the C load generator does, plus its CPU seconds and mallocs per call over
/// the measured window.
func runCallerChild(mode: CallerMode, address: String, concurrency: Int, size: Int, duration: Double,
                    loops: Int) throws {
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
        throw BenchError("--connect wants HOST:PORT, not '\(address)'")
    }
    let target = SocketAddress.ipv4(host: String(address[..<colon]), port: port)
    let group = try EventLoopGroup(name: "bench-call", loopCount: mode == .pool ? loops : 1)
    defer { group.syncShutdown() }
    let payload = [UInt8](repeating: 0x42, count: size)

    // Connect and start calling; the calls run until stopCalling is set.
    // Returns what ends the run: it waits for the callers, then closes.
    let finish = try runBlocking { () -> @Sendable () async -> Void in
        @Sendable func check(_ answer: [UInt8]) {
            if answer.count == size { answeredCalls.add(1, ordering: .relaxed) } else { failedCalls.add(1, ordering: .relaxed) }
        }
        switch mode {
        case .callback:
            let endpoint = try await RPCClient.connect(to: target, on: group.loops[0])
            try await endpoint.withEndpoint { endpoint in
                endpoint.onTaggedResponse = { _, result in
                    guard case .success(let answer) = result, answer.count == size else {
                        // Not sent again: a failure can come before send returns (a closed
                        // endpoint), and sending again from here would recurse without end.
                        failedCalls.add(1, ordering: .relaxed)
                        return
                    }
                    answeredCalls.add(1, ordering: .relaxed)
                    if !stopCalling.load(ordering: .relaxed) { payload.withUnsafeBytes { endpoint.send($0, tag: 0) } }
                }
                for _ in 0..<concurrency { payload.withUnsafeBytes { endpoint.send($0, tag: 0) } }
            }
            return { await endpoint.close(gracePeriod: .seconds(5)) } // the last answers end the calls
        case .asyncOnLoop, .asyncGlobal:
            let endpoint = try await RPCClient.connect(to: target, on: group.loops[0])
            var callers: [Task<Void, Never>] = []
            for _ in 0..<concurrency {
                let body: @Sendable () async -> Void = {
                    while !stopCalling.load(ordering: .relaxed) {
                        do { check(try await endpoint.send(payload)) } catch { failedCalls.add(1, ordering: .relaxed) }
                    }
                }
                callers.append(mode == .asyncOnLoop ? Task(executorPreference: group.loops[0].taskExecutor, operation: body)
                                                    : Task.detached(operation: body))
            }
            return { [callers] in
                for caller in callers { await caller.value }
                await endpoint.close()
            }
        case .typedEcho, .typedSubmit:
            let endpoint = try await RPCClient.connect(to: target, on: group.loops[0])
            let client = RPCMessageClient(endpoint, protocol: scoresProtocol)
            let data = Data(payload)
            let at = Date()
            var callers: [Task<Void, Never>] = []
            for index in 0..<concurrency {
                // One player per caller and process: the server keeps its board between runs.
                let player = "player-\(getpid())-\(index)"
                callers.append(Task(executorPreference: group.loops[0].taskExecutor) {
                    var score = 0
                    while !stopCalling.load(ordering: .relaxed) {
                        do {
                            let answered: Bool
                            if mode == .typedEcho {
                                answered = try await client.send(Echo(data: data, note: nil)).data.count == size
                            } else {
                                score += 1
                                answered = try await client.send(SubmitScore(player: player, score: score, mode: .classic, at: at)).best == score
                            }
                            if answered { answeredCalls.add(1, ordering: .relaxed) } else { failedCalls.add(1, ordering: .relaxed) }
                        } catch {
                            failedCalls.add(1, ordering: .relaxed)
                        }
                    }
                })
            }
            return { [callers] in
                for caller in callers { await caller.value }
                await endpoint.close()
            }
        case .pool:
            var configuration = RPCClientPool.Configuration()
            configuration.connectionsPerAddress = loops
            let pool = await RPCClientPool.connect(to: [target], on: group, configuration: configuration)
            var callers: [Task<Void, Never>] = []
            for _ in 0..<concurrency {
                callers.append(Task.detached {
                    while !stopCalling.load(ordering: .relaxed) {
                        do { check(try await pool.send(payload)) } catch { failedCalls.add(1, ordering: .relaxed) }
                    }
                })
            }
            return { [callers] in
                for caller in callers { await caller.value }
                await pool.close()
            }
        }
    }

    usleep(200_000) // the warm-up: connections made, buffers and tables at their steady size
    let startCalls = answeredCalls.load(ordering: .relaxed), startCPU = processCPUSeconds()
    let startMallocs = uvrpc_total_allocations(), start = Date()
    usleep(UInt32(duration * 1_000_000)) // the measured window
    let endCalls = answeredCalls.load(ordering: .relaxed), endCPU = processCPUSeconds()
    let endMallocs = uvrpc_total_allocations(), seconds = Date().timeIntervalSince(start)
    stopCalling.store(true, ordering: .relaxed)
    try runBlocking { await finish() }

    let calls = endCalls - startCalls
    guard failedCalls.load(ordering: .relaxed) == 0 else {
        throw BenchError("\(failedCalls.load(ordering: .relaxed)) calls failed or got a wrong answer (\(mode.rawValue))")
    }
    let line = String(format: "{\"calls\":%d,\"seconds\":%.6f,\"calls_per_s\":%.1f,\"mb_per_s\":%.3f,\"total_calls\":%d,"
                      + "\"cpu_s\":%.4f,\"mallocs_per_call\":%.3f}",
                      calls, seconds, Double(calls) / seconds, Double(calls * size) / seconds / 1e6,
                      answeredCalls.load(ordering: .relaxed), endCPU - startCPU,
                      Double(endMallocs - startMallocs) / Double(max(calls, 1)))
    print(line)
    fflush(nil)
}

/// Runs a Swift caller child (`uvrpc-bench --call`) against `address` and
/// returns what it measured.
func runSwiftCaller(_ mode: CallerMode, address: String, loops: Int, concurrency: Int, size: Int, duration: Double,
                    cpu: Int?) throws -> LoadResult {
    let child = try Child(try sibling("uvrpc-bench"),
                          ["--call", mode.rawValue, "--connect", address, "--call-loops", "\(loops)",
                           "--concurrency", "\(concurrency)", "--size", "\(size)", "--duration", "\(duration)"], cpu: cpu)
    defer { child.stop() }
    let line = try child.readLine(seconds: duration + 60)
    do {
        return try JSONDecoder().decode(LoadResult.self, from: Data(line.utf8))
    } catch {
        throw BenchError("the \(mode.rawValue) caller said '\(line)'")
    }
}
