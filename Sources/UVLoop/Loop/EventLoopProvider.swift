/// Where a server's or client's connections may live: one ``EventLoop``, or
/// every loop of an ``EventLoopGroup``. Both conform, so an API that takes
/// loops takes either (SwiftNIO's `EventLoopGroup` protocol is the model).
public protocol EventLoopProvider: Sendable {
    /// The loops, in order (one for a single loop).
    var loops: [EventLoop] { get }
    /// The loop for the next connection or piece of work (round robin in a group).
    func next() -> EventLoop
}

extension EventLoop: EventLoopProvider {
    /// This loop alone.
    public var loops: [EventLoop] { [self] }
    /// This loop.
    public func next() -> EventLoop { self }
}

extension EventLoopGroup: EventLoopProvider {}
