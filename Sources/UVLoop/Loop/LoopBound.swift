/// A value that may be touched only on one ``EventLoop``'s thread, made
/// `Sendable` so that it can ride in closures handed to
/// ``EventLoop/execute(_:)``. Every access checks the thread (like SwiftNIO's
/// `NIOLoopBound`).
public struct LoopBound<Value>: @unchecked Sendable { // value read only on `loop`, checked per access
    // Sendable invariant: `storage` is read only on `loop`'s thread, which
    // every accessor checks with a precondition; it was created there or
    // handed over with `sending` (no other reference remains elsewhere).
    /// The loop the value belongs to.
    public let loop: EventLoop
    private let storage: Value

    /// Wraps `value`, which lives on `loop`; must be called on the loop's thread.
    public init(_ value: Value, loop: EventLoop) {
        loop.preconditionInEventLoop("LoopBound.init")
        self.loop = loop
        self.storage = value
    }

    private init(unchecked value: Value, loop: EventLoop) {
        self.loop = loop
        self.storage = value
    }

    /// Wraps `value` from any thread; `sending` guarantees that the caller
    /// keeps no other reference to it.
    public static func sendingValue(_ value: sending Value, loop: EventLoop) -> LoopBound {
        LoopBound(unchecked: value, loop: loop)
    }

    /// The value; stops the program when read off the loop thread.
    public var value: Value {
        loop.preconditionInEventLoop("LoopBound.value")
        return storage
    }
}

/// A mutable box whose contents may be touched only on one ``EventLoop``'s
/// thread (like SwiftNIO's `NIOLoopBoundBox`).
public final class LoopBoundBox<Value>: @unchecked Sendable { // value used only on `loop`, checked per access
    // Sendable invariant: `storage` is read and written only on `loop`'s
    // thread, which every accessor checks with a precondition; it was created
    // there or handed over with `sending`.
    /// The loop the value belongs to.
    public let loop: EventLoop
    private var storage: Value

    /// Wraps `value`, which lives on `loop`; must be called on the loop's thread.
    public init(_ value: Value, loop: EventLoop) {
        loop.preconditionInEventLoop("LoopBoundBox.init")
        self.loop = loop
        self.storage = value
    }

    private init(unchecked value: Value, loop: EventLoop) {
        self.loop = loop
        self.storage = value
    }

    /// Wraps `value` from any thread; `sending` guarantees that the caller
    /// keeps no other reference to it.
    public static func sendingValue(_ value: sending Value, loop: EventLoop) -> LoopBoundBox {
        LoopBoundBox(unchecked: value, loop: loop)
    }

    /// The value; stops the program when used off the loop thread.
    public var value: Value {
        get { loop.preconditionInEventLoop("LoopBoundBox.value"); return storage }
        set { loop.preconditionInEventLoop("LoopBoundBox.value"); storage = newValue }
    }
}
