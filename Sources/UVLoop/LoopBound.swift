/// A value that may be touched only on one ``EventLoop``'s thread, made
/// `Sendable` so that it can ride in closures handed to
/// ``EventLoop/execute(_:)``. Every access checks the thread (like SwiftNIO's
/// `NIOLoopBound`).
public struct LoopBound<Value>: @unchecked Sendable {
    // Sendable invariant: `storage` is read only on `loop`'s thread, which
    // every accessor checks with a precondition.
    /// The loop the value belongs to.
    public let loop: EventLoop
    private let storage: Value

    /// Wraps `value`; may be called on any thread (the value is only read on the loop).
    public init(_ value: sending Value, loop: EventLoop) {
        self.loop = loop
        self.storage = value
    }

    /// The value; stops the program when read off the loop thread.
    public var value: Value {
        loop.preconditionInEventLoop("LoopBound.value")
        return storage
    }
}

/// A mutable box whose contents may be touched only on one ``EventLoop``'s
/// thread (like SwiftNIO's `NIOLoopBoundBox`).
public final class LoopBoundBox<Value>: @unchecked Sendable {
    // Sendable invariant: `storage` is read and written only on `loop`'s
    // thread, which every accessor checks with a precondition.
    /// The loop the value belongs to.
    public let loop: EventLoop
    private var storage: Value

    /// Wraps `value`; may be called on any thread (the value is only used on the loop).
    public init(_ value: sending Value, loop: EventLoop) {
        self.loop = loop
        self.storage = value
    }

    /// The value; stops the program when used off the loop thread.
    public var value: Value {
        get { loop.preconditionInEventLoop("LoopBoundBox.value"); return storage }
        set { loop.preconditionInEventLoop("LoopBoundBox.value"); storage = newValue }
    }
}
