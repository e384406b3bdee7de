/// A value delivered once, to one waiting task, by whichever comes first:
/// the producer (``resume(_:)``) or the task's cancellation. Either may come
/// before the task is waiting. What every cancellable wait of this package
/// is made of (a server's address, an endpoint's close, a listener's end).
///
/// The value travels through the lock, not through the continuation (see
/// ``withHandOff(_:)``: ThreadSanitizer then sees what the producer built
/// before it delivered as ordered before the task's reads).
package final class OneShot<Value: Sendable>: Sendable {
    private enum State {
        case waiting
        case installed(CheckedContinuation<Void, Never>)
        case resolved(Value)
        case taken
    }
    private let state = LockedValue(State.waiting)

    package init() {}

    /// Waits for the value; `cancelled` is returned at once when the task is
    /// (or gets) cancelled first. `register` hands this to the producer.
    package func wait(orWhenCancelled cancelled: Value, register: (OneShot<Value>) -> Void) async -> Value {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                install(continuation)
                register(self)
            }
        } onCancel: {
            resume(cancelled)
        }
        return state.withLock { state in
            // The continuation is resumed only after a value is stored.
            guard case .resolved(let value) = state else { preconditionFailure("OneShot resumed without a value") }
            state = .taken
            return value
        }
    }

    private func install(_ continuation: CheckedContinuation<Void, Never>) {
        let early = state.withLock { state -> Bool in
            if case .resolved = state { return true }
            state = .installed(continuation)
            return false
        }
        if early { continuation.resume() }
    }

    /// Delivers `value` (the first delivery wins; later ones are ignored).
    package func resume(_ value: Value) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
            switch state {
            case .waiting:
                state = .resolved(value)
                return nil
            case .installed(let continuation):
                state = .resolved(value)
                return continuation
            case .resolved, .taken:
                return nil
            }
        }
        continuation?.resume()
    }
}
