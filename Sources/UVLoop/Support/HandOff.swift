/// Waits for a value that another thread (a loop) delivers, and passes it
/// through a pthread mutex rather than through the continuation.
///
/// Both carry it safely: the concurrency runtime orders a resume before the
/// resumed task's next step. But ThreadSanitizer does not see that order
/// when the value arrives before the task has finished suspending
/// (swiftlang/swift#57803), and reports the task's first reads of what the
/// loop built (an endpoint's fields) as races: `make test-tsan` failed in
/// CI on RPCClient.connect that way. Taking the value out under the lock
/// the loop put it in under makes the order one TSan sees.
///
/// `start` gets the delivery function; it must be called exactly once.
package func withHandOff<Value: Sendable>(_ start: (_ deliver: @escaping @Sendable (Value) -> Void) -> Void) async -> Value {
    let box = LockedValue<Value?>(nil)
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        start { value in
            box.withLock { $0 = value }
            continuation.resume()
        }
    }
    // Delivered before the resume: never nil here.
    return box.withLock { $0! }
}
