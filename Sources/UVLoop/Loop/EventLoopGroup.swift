import CLibUV
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Several event loops, each on a thread of its own: how a process uses
/// more than one core (SwiftNIO's `MultiThreadedEventLoopGroup` is the model).
///
/// The loops share no mutable state. A connection is made on one loop and
/// stays there for its whole life; the only traffic between loops is work
/// handed over with ``EventLoop/execute(_:)`` (a new connection's descriptor,
/// a call from another thread). Loop `i` is named `NAME-i`, and so is its
/// thread (`top -H`, debuggers, `/proc/PID/task/*/comm`).
///
/// ```swift
/// let group = try EventLoopGroup(name: "rpc")          // one loop per CPU
/// let loop = group.next()                              // round robin
/// // ...
/// await group.shutdown()                        // closes every loop
/// ```
public final class EventLoopGroup: Sendable {
    /// The group's name; loop `i` and its thread are named `NAME-i`.
    public let name: String
    /// The loops, in order (loop `i` is `loops[i]`).
    public let loops: [EventLoop]
    private let nextIndex = Atomic<Int>(0)

    /// CPUs this process may run on: its affinity mask (`sched_getaffinity`),
    /// which `taskset`, cgroups' cpusets and container limits narrow.
    public static var availableCPUCount: Int { Int(uvrpc_available_cpus()) }

    /// Makes `loopCount` loops and starts each on its own thread.
    /// - Parameters:
    ///   - name: names the loops and their threads `NAME-0`, `NAME-1`, ...
    ///     (Linux keeps 15 bytes of a thread name).
    ///   - loopCount: how many loops; by default ``availableCPUCount``.
    ///   - pinsThreads: pin loop `i`'s thread to the `i`-th CPU this process
    ///     may run on (wrapping around when there are more loops than CPUs).
    ///     Off by default: the kernel's scheduler usually does well, and
    ///     pinning fights other pinned processes on a shared machine.
    /// - Throws: ``UVError`` when a loop cannot be created (the loops made
    ///   before it are shut down again).
    public init(name: String = "uvloop", loopCount: Int? = nil, pinsThreads: Bool = false) throws(UVError) {
        let count = loopCount ?? Self.availableCPUCount
        precondition(count > 0, "EventLoopGroup '\(name)': loopCount must be at least 1, not \(count)")
        self.name = name
        var loops: [EventLoop] = []
        loops.reserveCapacity(count)
        for index in 0..<count {
            do throws(UVError) {
                loops.append(try EventLoop(name: "\(name)-\(index)"))
            } catch {
                throw error // the loops made so far never ran: each closes itself in deinit
            }
        }
        self.loops = loops
        let cpus = Self.availableCPUCount
        for (index, loop) in loops.enumerated() {
            let cpu = pinsThreads ? uvrpc_nth_available_cpu(Int32(index % cpus)) : -1
            loop.start(pinnedTo: cpu >= 0 ? cpu : nil)
        }
    }

    /// The next loop, round robin (thread-safe): where to put the next
    /// connection or piece of work.
    public func next() -> EventLoop {
        let index = nextIndex.wrappingAdd(1, ordering: .relaxed).oldValue
        return loops[Int(UInt(bitPattern: index) % UInt(loops.count))]
    }

    /// The group's loop the caller is running on, or nil when the caller is
    /// not on one of them.
    public var current: EventLoop? {
        guard let loop = EventLoop.current, loops.contains(where: { $0 === loop }) else { return nil }
        return loop
    }

    /// Asks every loop to shut down (see ``EventLoop/beginShutdown()``); returns at once.
    public func beginShutdown() {
        for loop in loops { loop.beginShutdown() }
    }

    /// Shuts every loop down and blocks the calling thread, at most `timeout`
    /// in all, until each has stopped; ``shutdown()`` is the async form.
    /// Refused on every event-loop thread (see ``EventLoop/syncShutdown(timeout:)``).
    /// - Returns: 0 when every loop's `uv_loop_close` returned 0; the first
    ///   other status otherwise; nil when a loop did not stop in time.
    @discardableResult
    public func syncShutdown(timeout: Duration = .seconds(30)) -> Int32? {
        EventLoop.refuseBlockingOnALoop("EventLoopGroup '\(name)': syncShutdown()")
        beginShutdown()
        let deadline = ContinuousClock.now + timeout
        var statuses: [Int32?] = []
        for loop in loops {
            let remaining = max(.zero, deadline - ContinuousClock.now)
            statuses.append(loop.syncShutdown(timeout: remaining))
        }
        return Self.combined(statuses)
    }

    /// Shuts every loop down and returns, without blocking a thread, once
    /// each has stopped; see ``syncShutdown(timeout:)``. Must not be
    /// awaited by a task bound to one of the group's loops (see
    /// ``EventLoop/shutdown()``). Returns nil at once when the
    /// task is cancelled (the loops still shut down).
    @discardableResult
    public func shutdown() async -> Int32? {
        if let bound = loops.first(where: { $0.currentTaskPrefersThisLoop }) {
            preconditionFailure("EventLoopGroup '\(name)': shutdown() awaited by a task that prefers its loop '\(bound.name)' "
                                + "would never resume (it resumes on the closed loop)")
        }
        beginShutdown()
        var statuses: [Int32?] = []
        for loop in loops { statuses.append(await loop.shutdown()) }
        return Self.combined(statuses)
    }

    private static func combined(_ statuses: [Int32?]) -> Int32? {
        var result: Int32 = 0
        for status in statuses {
            guard let status else { return nil }
            if result == 0 { result = status }
        }
        return result
    }
}
