import UVLoop

/// How incoming messages are answered: the handler a server
/// (``RPCServer``), a client (``RPCClient``'s `connect`) or a pool
/// (``RPCClientPool``) gives every endpoint it makes.
///
/// ```swift
/// let server = RPCServer(configuration: .init(address: address), on: loops,
///                        handler: .async { request, context in request.payload })
/// ```
public struct RPCHandler: Sendable {
    let install: @Sendable (RPCEndpoint) -> Void

    /// Answers every message with `handler`'s return value: the way for
    /// most servers and clients. `handler` gets the message (``RPCAsyncRequest``) and
    /// where it came from (``RPCHandlerContext``).
    ///
    /// Handlers run in worker tasks on the endpoint's loop, concurrently:
    /// one that awaits holds up no other. The closure is
    /// `nonisolated(nonsending)`: it runs on its caller's executor, the
    /// loop, with no executor switch per message. When the peer cancels the call,
    /// the handler's task is cancelled and its return value is not sent.
    /// A handler that throws is logged; a UVRPC peer gets an error answer
    /// ("the handler failed", code ``RPCError/Code/handlerFailed``,
    /// unless the error is an ``RPCPublicError``: then its own code and
    /// text), an efro.rpc peer nothing, as the reference does.
    ///
    /// `interceptors` run around every call, the first outermost (see
    /// ``RPCServerInterceptor``).
    public static func async(
        interceptors: [any RPCServerInterceptor] = [],
        _ handler: nonisolated(nonsending) @escaping @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8]
    ) -> RPCHandler {
        let body = interceptors.isEmpty ? handler : intercepted(handler, by: interceptors)
        return RPCHandler { $0.installAsyncHandler(body) }
    }

    /// The advanced, zero-copy layer: `setUp` runs on each new endpoint's
    /// loop, before any byte is read, and sets its callback handlers
    /// (``RPCEndpoint/onMessage``, ``RPCEndpoint/onClose``...).
    public static func callback(_ setUp: @escaping @Sendable (RPCEndpoint) -> Void) -> RPCHandler {
        RPCHandler(install: setUp)
    }
}
