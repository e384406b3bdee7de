import Synchronization

/// What a METADATA packet said about one incoming message (extension
/// `meta`): its metadata and deadline. Made only for a message that came
/// with metadata; shared by its request and context.
final class IncomingCall: Sendable {
    /// The caller's entries (without the deadline's).
    let metadata: RPCMetadata
    /// When the caller stops waiting, on this process's clock; nil without a deadline.
    let deadline: ContinuousClock.Instant?
    /// The same in loop milliseconds (for the endpoint's handler deadline timer).
    let loopDeadline: UInt64?

    init(metadata: RPCMetadata, deadline: ContinuousClock.Instant?, loopDeadline: UInt64?) {
        self.metadata = metadata
        self.deadline = deadline
        self.loopDeadline = loopDeadline
    }

    /// An incoming message without metadata: empty, no deadline.
    static let none = IncomingCall(metadata: RPCMetadata(), deadline: nil, loopDeadline: nil)
}

/// The deadline of the handler a task runs for (bound only when its call
/// came with one): a call made from that task inherits it
/// (``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)``).
enum InheritedDeadline {
    @TaskLocal static var current: ContinuousClock.Instant?

    /// Set once any handler of this process ran with a deadline bound: until
    /// then a send skips the task-local lookup (about 70 instructions per
    /// call). Relaxed is enough: a task that sees a deadline bound runs
    /// after the store that preceded binding it.
    static let everBound = Atomic<Bool>(false)
}
