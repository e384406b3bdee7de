import CLibUV
import Dispatch
import Synchronization
import UVLoop
#if canImport(Glibc)
import Glibc
#endif

/// What the tool checks and sets up before it opens anything: enough file
/// descriptors for its fixed needs, and its signal handling.
///
/// Two things in a process cannot fail cleanly when the open-files limit is
/// reached: Dispatch (behind Swift concurrency) stops the process when it
/// cannot make its epoll and timer descriptors, and a Dispatch signal source
/// that cannot get its descriptor leaves the signal ignored. So the tool
/// checks its headroom first and exits with a message naming the limit, and
/// watches signals on an event loop, which needs no descriptor of its own.
enum ProcessLimits {
    /// Descriptors Dispatch's event machinery may open on first use (an
    /// epoll, an eventfd and a timer per clock), counted generously.
    static let dispatchDescriptors = 6
    /// libuv's process-wide signal lock pipe (made with the first loop).
    static let libuvProcessDescriptors = 2
    /// Per loop: its epoll, its signal pipe (2), libuv's eventfd for its
    /// thread pool, and the loop's own wakeup eventfd (``LoopWakeup``).
    static let descriptorsPerLoop = 5

    /// Exits the command (status 3) with a message naming the open-files
    /// limit when fewer descriptors are free than `loops` event loops and
    /// `sockets` sockets need besides the fixed ones. Limits over 65 536 are
    /// not checked (counting would take longer than it could matter).
    static func checkDescriptorHeadroom(command: String, loops: Int, sockets: Int) throws {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0,
              limit.rlim_cur <= 65536 else { return }
        let open = Int(uvrpc_count_open_descriptors(Int32(limit.rlim_cur)))
        let needed = dispatchDescriptors + libuvProcessDescriptors + descriptorsPerLoop * loops + sockets
        let free = Int(limit.rlim_cur) - open
        guard free < needed else { return }
        printError("\(command): the open-files limit (ulimit -n) is \(limit.rlim_cur) and \(open) are open; "
                   + "\(loops) event loop\(loops == 1 ? "" : "s") and \(sockets) socket\(sockets == 1 ? "" : "s") "
                   + "need at least \(needed) more (raise the limit to \(open + needed) or more)")
        throw ToolExit.cannotConnect
    }

    /// The command's loops, after checking that the descriptors they and
    /// `sockets` sockets need are there; a failure says so and exits 3.
    static func startLoops(command: String, name: String, loops: Int, sockets: Int) throws -> EventLoopGroup {
        try checkDescriptorHeadroom(command: command, loops: loops, sockets: sockets)
        do {
            return try EventLoopGroup(name: name, loopCount: loops)
        } catch {
            printError("\(command): cannot start: \(error)")
            throw ToolExit.cannotConnect
        }
    }
}

/// SIGINT and SIGTERM (and optionally SIGUSR1), watched on an event loop:
/// the first SIGINT or SIGTERM lets ``waitForStop()`` return (the caller
/// drains); a second one calls `onSecond` at once (stop now, do not wait
/// for the drain). libuv's signal handling uses the loop's own signal pipe,
/// made with the loop, so it works when connections took every other
/// descriptor; a signal that cannot be watched is an error here.
final class StopSignals: Sendable {
    private let stop = DispatchSemaphore(value: 0)
    private let received = Atomic<Int>(0)

    /// Watches the signals on `loop` (from any thread but the loop's).
    /// - Parameters:
    ///   - onSecond: runs on the loop when a second SIGINT or SIGTERM arrives.
    ///   - onReport: runs on a Dispatch queue at each SIGUSR1, if given.
    init(on loop: EventLoop, onSecond: @escaping @Sendable () -> Void,
         onReport: (@Sendable () -> Void)? = nil) throws {
        try loop.submitAndWait { [self] in
            // The watchers live until the loop shuts down (handles keep themselves).
            try loop.onSignals([SIGINT, SIGTERM]) { _ in
                if self.received.wrappingAdd(1, ordering: .relaxed).newValue == 1 { self.stop.signal() } else { onSecond() }
            }
            if let onReport {
                try loop.onSignals([SIGUSR1]) { _ in DispatchQueue.global().async { onReport() } }
            }
        }
    }

    /// Stops reacting to SIGINT and SIGTERM for the rest of the process's
    /// life (it is about to exit after its drain): blocks them on every loop
    /// thread and the calling thread, so that a late one neither runs a
    /// handler nor meets the default action libuv restores when the
    /// watchers close (which would end the process by that signal).
    static func blockWatchedSignals(on loops: [EventLoop]) {
        for loop in loops { _ = try? loop.submitAndWait { changeMask(SIG_BLOCK) } }
        blockOnThisThread()
    }

    /// Keeps the signals the tool watches off the calling thread (call it
    /// once the loops are started: they take them, and only they may, for
    /// ``blockWatchedSignals(on:)`` to leave no thread that could).
    static func blockOnThisThread() {
        changeMask(SIG_BLOCK)
    }

    /// Unblocks the signals the tool watches on the calling thread, whose
    /// mask threads made after it inherit: a parent may start the tool with
    /// them blocked (a Swift concurrency or Dispatch thread blocks every
    /// signal), and libuv's handler only runs on a thread that takes them.
    /// Call before any event loop starts.
    static func unblockWatchedSignals() {
        changeMask(SIG_UNBLOCK)
    }

    private static func changeMask(_ how: Int32) {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in [SIGINT, SIGTERM, SIGUSR1] { sigaddset(&set, signal) }
        pthread_sigmask(how, &set, nil)
    }

    /// Blocks until the first SIGINT or SIGTERM.
    func waitForStop() { stop.wait() }

    /// True once a second SIGINT or SIGTERM arrived.
    var stoppedAtOnce: Bool { received.load(ordering: .relaxed) > 1 }
}
