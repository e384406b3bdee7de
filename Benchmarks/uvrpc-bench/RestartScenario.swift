import Foundation
import UVLoop
import UVRPC

/// What a pool went through while its server was killed and restarted
/// (the restart scenario; Docs/MANY_MACHINES.md quotes it).
struct RestartResult {
    /// From the restarted server's listening line to the first call answered after it.
    var firstSuccessAfterRestartMilliseconds: Double
    /// From the restart to the answer of a wait-for-ready call made during the outage.
    var waitForReadyAnsweredAfterRestartMilliseconds: Double
    /// Plain calls that failed after they were written (lost: the caller cannot know whether they ran).
    var plainCallsLost: Int
    /// Plain calls that failed before they were written (the outage, failing fast).
    var plainCallsFailedUnsent: Int
    var plainCallsAnswered: Int
    /// Idempotent calls that failed in the end, and those answered.
    var idempotentCallsFailed: Int
    var idempotentCallsAnswered: Int
    /// Retries the pool made of idempotent calls.
    var retries: Int
}

/// Runs 16 callers (8 plain, 8 idempotent, one call at a time each) through a
/// pool with default settings against `uvrpc serve`, kills the server
/// (SIGKILL) after `warmUp`, restarts it on the same port `downtime` later,
/// and keeps calling for `after`.
func measureRestart(warmUp: Double = 0.5, downtime: Double = 0.5, after: Double = 1.0) throws -> RestartResult {
    var server = try Server.start(.swift, cpu: nil)
    defer { server.child.stop() }
    let port = server.address.split(separator: ":").last.map(String.init) ?? "0"
    let group = try EventLoopGroup(name: "restart", loopCount: 1)
    guard let address = SocketAddress(parsing: server.address) else { throw BenchError("restart: server at '\(server.address)'") }
    let pool = try runBlocking { await RPCClientPool.connect(to: [address], on: group) }
    struct Tally { var lost = 0, unsent = 0, answered = 0, idempotentFailed = 0, idempotentAnswered = 0 }
    let tally = LockedValue(Tally())
    let stop = LockedValue(false)
    let restartedAt = LockedValue<Double?>(nil)
    let firstSuccessAfterRestart = LockedValue<Double?>(nil)
    let clock = ContinuousClock()
    let start = clock.now
    let seconds: @Sendable () -> Double = {
        let d = clock.now - start
        return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
    }
    let callers = Task {
        await withTaskGroup(of: Void.self) { group in
            for caller in 0..<16 {
                group.addTask {
                    let idempotent = caller >= 8
                    while !stop.withLock({ $0 }) {
                        do {
                            _ = try await pool.send([UInt8(caller)], timeout: .seconds(5), idempotent: idempotent)
                            let now = seconds()
                            if let restarted = restartedAt.withLock({ $0 }), now >= restarted {
                                firstSuccessAfterRestart.withLock { if $0 == nil { $0 = now } }
                            }
                            tally.withLock { if idempotent { $0.idempotentAnswered += 1 } else { $0.answered += 1 } }
                        } catch let error as RPCError {
                            tally.withLock {
                                if idempotent { $0.idempotentFailed += 1 } else if error.requestWasSent { $0.lost += 1 } else { $0.unsent += 1 }
                            }
                            // A caller that failed fast would spin: it calls again after a moment, as a client would.
                            try? await Task.sleep(for: .milliseconds(10))
                        } catch {
                            try? await Task.sleep(for: .milliseconds(10))
                        }
                    }
                }
            }
        }
    }
    Thread.sleep(forTimeInterval: warmUp)
    kill(server.child.pid, SIGKILL)
    server.child.stop()
    Thread.sleep(forTimeInterval: downtime / 2)
    // Made during the outage: waits for the server to come back.
    let waiting = Task { () -> Double? in
        do {
            _ = try await pool.send([99], timeout: .seconds(20), waitForReady: true)
            return seconds()
        } catch {
            return nil
        }
    }
    Thread.sleep(forTimeInterval: downtime / 2)
    server = try Server.start(.swift, cpu: nil, port: port)
    restartedAt.withLock { $0 = seconds() }
    Thread.sleep(forTimeInterval: after)
    stop.withLock { $0 = true }
    let waitedUntil = try runBlocking { await waiting.value }
    try runBlocking { await callers.value }
    let retries = pool.retriesMade
    try runBlocking { await pool.close() }
    _ = try runBlocking { await group.shutdown() }
    let restarted = restartedAt.withLock { $0 }!
    guard let first = firstSuccessAfterRestart.withLock({ $0 }), let waited = waitedUntil else {
        throw BenchError("restart: no call was answered after the server came back")
    }
    let counts = tally.withLock { $0 }
    return RestartResult(firstSuccessAfterRestartMilliseconds: (first - restarted) * 1000,
                         waitForReadyAnsweredAfterRestartMilliseconds: (waited - restarted) * 1000,
                         plainCallsLost: counts.lost, plainCallsFailedUnsent: counts.unsent, plainCallsAnswered: counts.answered,
                         idempotentCallsFailed: counts.idempotentFailed, idempotentCallsAnswered: counts.idempotentAnswered,
                         retries: retries)
}
