/// Counts down from a number of parts to zero, then runs everything that
/// waits for it; thread-safe. Used where something is over once each of
/// several loops has said so (a group listener's parts, a pool's first
/// connection attempts).
package final class Countdown: Sendable {
    private struct State {
        var remaining: Int
        var waiters: [@Sendable () -> Void] = []
    }
    private let state: LockedValue<State>

    /// A countdown from `count` parts.
    package init(_ count: Int) { state = LockedValue(State(remaining: count)) }

    /// One part is done; at zero, the waiters run (on the calling thread).
    package func countDown() {
        let waiters = state.withLock { state -> [@Sendable () -> Void] in
            state.remaining -= 1
            guard state.remaining == 0 else { return [] }
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter() }
    }

    /// Runs `body` once the count reaches zero (at once if it has).
    package func whenDone(_ body: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            if state.remaining <= 0 { return true }
            state.waiters.append(body)
            return false
        }
        if now { body() }
    }

    /// Returns once the count reaches zero.
    package func wait() async {
        await withCheckedContinuation { continuation in whenDone { continuation.resume() } }
    }
}
