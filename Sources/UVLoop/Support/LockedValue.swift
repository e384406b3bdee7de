#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value guarded by a pthread mutex, for handing results between a loop
/// thread and other threads.
///
/// A pthread mutex rather than `Synchronization.Mutex`: on Linux the latter
/// locks with raw futex calls that ThreadSanitizer cannot see, so every
/// access it guards is reported as a race.
package final class LockedValue<Value>: @unchecked Sendable { // value touched only under the mutex
    // Sendable invariant: `value` is only read or written between
    // pthread_mutex_lock and pthread_mutex_unlock of `mutex`.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    /// No dynamic exclusivity check: the mutex already makes each access
    /// exclusive (the check cost ~30 instructions per lock on the pool's path).
    @exclusivity(unchecked) private var value: Value

    /// Wraps `value`.
    package init(_ value: sending Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    @inline(__always)
    package func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
