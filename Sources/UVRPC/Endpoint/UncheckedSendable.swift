/// Carries a value the compiler cannot prove Sendable across a `@Sendable`
/// boundary; each use states why it is only touched on one thread.
struct UncheckedSendable<Value>: @unchecked Sendable { // see each use for the invariant
    let value: Value
    init(_ value: Value) { self.value = value }
}
