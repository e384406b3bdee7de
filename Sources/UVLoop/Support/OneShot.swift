/// A value delivered once, to one waiting task, by whichever comes first:
/// the producer (``resume(_:)``) or the task's cancellation. Either may come
/// before the task is waiting. What every cancellable wait of this package
/// is made of (a server's address, an endpoint's close, a listener's end).
package final class OneShot<Value: Sendable>: Sendable {
    private enum State {
        case waiting
        case installed(CheckedContinuation<Value, Never>)
        case resolved(Value)
        case done
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
    }

    private func install(_ continuation: CheckedContinuation<Value, Never>) {
        let early = state.withLock { state -> Value? in
            guard case .resolved(let value) = state else {
                state = .installed(continuation)
                return nil
            }
            state = .done
            return value
        }
        if let early { continuation.resume(returning: early) }
    }

    /// Delivers `value` (the first delivery wins; later ones are ignored).
    package func resume(_ value: Value) {
        let continuation = state.withLock { state -> CheckedContinuation<Value, Never>? in
            switch state {
            case .waiting:
                state = .resolved(value)
                return nil
            case .installed(let continuation):
                state = .done
                return continuation
            case .resolved, .done:
                return nil
            }
        }
        continuation?.resume(returning: value)
    }
}
