import Dispatch
import Synchronization
import UVLoop

/// The `shared` scenario: what one update of state shared by every loop
/// costs, from code running on the loops (as handlers do), with every loop
/// updating at once. Three ways (Docs/COMMON_TASKS.md, "Sharing state
/// across loops"): a `Mutex` every loop takes, an actor every loop awaits,
/// and one shard per loop (a plain value on each loop; a reader sums them).
enum SharingWay: String, CaseIterable {
    case mutex, actor, shards
}

/// Nanoseconds per update on each loop, with `loops` loops updating at once.
func measureSharedState(_ way: SharingWay, loops: Int, updates: Int) async throws -> Double {
    let group = try EventLoopGroup(name: "shared", loopCount: loops)
    let mutex = LockedCounter()
    let counter = Counter()
    let shards = group.loops.map { loop in LoopBoundBox.sendingValue(0, loop: loop) }
    let start = ContinuousClock.now
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        for (index, loop) in group.loops.enumerated() {
            let shard = shards[index]
            tasks.addTask(executorPreference: loop.taskExecutor) {
                switch way {
                case .mutex:
                    for _ in 0..<updates { mutex.value.withLock { $0 &+= 1 } }
                case .actor:
                    for _ in 0..<updates { await counter.add() }
                case .shards:
                    for _ in 0..<updates { shard.value &+= 1 } // on this loop: its own shard
                }
            }
        }
        try await tasks.waitForAll()
    }
    let elapsed = ContinuousClock.now - start
    let total: Int
    switch way {
    case .mutex: total = mutex.value.withLock { $0 }
    case .actor: total = await counter.total
    case .shards:
        var sum = 0
        for shard in shards { sum += try await shard.loop.submit { shard.value } } // a reader sums the shards
        total = sum
    }
    _ = await group.shutdown() // (not syncShutdown: this task may be resumed on one of the loops)
    precondition(total == loops * updates, "shared: \(way) counted \(total) of \(loops * updates) updates")
    let (seconds, attoseconds) = elapsed.components
    return (Double(seconds) * 1e9 + Double(attoseconds) / 1e9) / Double(updates)
}

/// The `Mutex` every loop takes (in a class, so that the tasks share it).
private final class LockedCounter: Sendable {
    let value = Mutex(0)
}

/// The actor every loop awaits.
private actor Counter {
    private(set) var total = 0
    func add() { total &+= 1 }
}
