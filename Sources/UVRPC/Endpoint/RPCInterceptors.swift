/// Runs around every async handler call of a server or client: sees the
/// request, its metadata and context before the handler, may reject it by
/// throwing (an ``RPCError`` with a code such as
/// ``RPCError/Code/unauthenticated`` travels to a UVRPC caller as that
/// code), and may wrap the call (timing, logging) or change what goes in or
/// comes out.
///
/// Give them in order to ``RPCHandler/async(interceptors:_:)`` (or the typed
/// handlers' `RPCHandler.messages(_:interceptors:)`): the first runs
/// outermost, and each calls `next` to go on (or does not, to answer itself).
///
/// ```swift
/// struct RequireToken: RPCServerInterceptor {
///     nonisolated(nonsending)
///     func intercept(_ request: RPCAsyncRequest, context: RPCHandlerContext,
///                    next: nonisolated(nonsending) @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8])
///         async throws -> [UInt8] {
///         guard context.metadata["authorization"] == "Bearer s3cret" else {
///             throw RPCError(code: .unauthenticated, message: "no valid token")
///         }
///         return try await next(request, context)
///     }
/// }
/// ```
///
/// Interceptors run on the endpoint's loop, in the handler's task, with no
/// executor switch (`nonisolated(nonsending)`); with none, a handler call
/// costs nothing more.
public protocol RPCServerInterceptor: Sendable {
    /// Handles one call: typically checks, then `try await next(request, context)`.
    nonisolated(nonsending)
    func intercept(_ request: RPCAsyncRequest, context: RPCHandlerContext,
                   next: nonisolated(nonsending) @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8])
        async throws -> [UInt8]
}

/// One outgoing call as a client interceptor (``RPCClientInterceptor``) sees it.
public struct RPCOutgoingCall: Sendable {
    /// The message's bytes.
    public var payload: [UInt8]
    /// The metadata it carries (extension `meta`).
    public var metadata: RPCMetadata
    /// Its timeout (nil: the endpoint's ``RPCEndpoint/Configuration/messageTimeout``,
    /// or what is left of a deadline the calling handler inherited).
    public var timeout: Duration?
    /// The label of the endpoint it goes out on (``RPCEndpoint/label``).
    public let endpoint: String
}

/// Runs around every async call made on an endpoint (``RPCAsyncEndpoint/send(_:metadata:timeout:closeOnError:)``,
/// and so the pool's and typed calls): sees and may change the call (add
/// metadata such as an auth token), may fail it without sending it, and may
/// wrap it (timing, logging, retries).
///
/// Set them in order in ``RPCEndpoint/Configuration/interceptors``: the
/// first runs outermost, and each calls `next` to go on.
///
/// ```swift
/// struct AddToken: RPCClientInterceptor {
///     nonisolated(nonsending)
///     func intercept(_ call: RPCOutgoingCall,
///                    next: nonisolated(nonsending) @Sendable (RPCOutgoingCall) async throws -> [UInt8]) async throws -> [UInt8] {
///         var call = call
///         call.metadata["authorization"] = "Bearer s3cret"
///         return try await next(call)
///     }
/// }
/// ```
///
/// The callback layer's sends (``RPCEndpoint/send(_:timeout:closeOnError:completion:)``,
/// tagged sends) are not intercepted.
public protocol RPCClientInterceptor: Sendable {
    /// Makes one call: typically `try await next(call)`, around it.
    nonisolated(nonsending)
    func intercept(_ call: RPCOutgoingCall,
                   next: nonisolated(nonsending) @Sendable (RPCOutgoingCall) async throws -> [UInt8]) async throws -> [UInt8]
}

/// `body` behind `interceptors`, the first outermost.
func intercepted(_ body: @escaping AsyncHandlerBody, by interceptors: [any RPCServerInterceptor]) -> AsyncHandlerBody {
    var chain = body
    for interceptor in interceptors.reversed() {
        let next = chain
        chain = { request, context in try await interceptor.intercept(request, context: context, next: next) }
    }
    return chain
}
