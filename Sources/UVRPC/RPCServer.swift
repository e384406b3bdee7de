import Logging
import UVLoop

/// Listens for connections and speaks efro.rpc on each: every accepted
/// connection becomes an ``RPCEndpoint``. One misbehaving connection closes
/// alone; the server keeps serving the others.
///
/// Two ways to use it:
/// - callback API: `RPCServer(loop:address:...) { endpoint in ... }` on the
///   loop thread; `onEndpoint` sets each endpoint's handlers before any byte
///   is read.
/// - async API: `try await RPCServer.bind(...)` from anywhere, with an async
///   message handler for every endpoint, ``endpoints`` as an `AsyncSequence`,
///   ``run()`` to wait until it is over and ``shutdown()`` to end it.
///
/// A listening server keeps itself alive until ``close(closingEndpoints:)``,
/// ``shutdown()`` or loop shutdown, so dropping the reference does not stop it.
public final class RPCServer: @unchecked Sendable { // mutable state on the loop thread only
    // Sendable invariant: `open`, `listenerClosed` and `finishWaiters` are
    // touched only on the loop thread; the async API hops there first. The
    // other stored properties are immutable.

    /// The loop the server and its endpoints run on.
    public let loop: EventLoop
    /// The bound address (with the chosen port when listening on port 0).
    public let address: SocketAddress
    /// Settings of every endpoint it makes.
    public let configuration: RPCEndpoint.Configuration
    /// New endpoints, in accept order, for `for await endpoint in server.endpoints`.
    /// Endpoints nobody consumed are kept up to the newest 1024 (older ones
    /// keep being served; they are only not delivered here; a closed one
    /// kept here has released its buffers). Ends when the server has shut down.
    public let endpoints: AsyncStream<RPCEndpoint>

    private let listener: Listener
    private let endpointsContinuation: AsyncStream<RPCEndpoint>.Continuation
    private var open: [ObjectIdentifier: RPCEndpoint] = [:]
    private var listenerClosed = false
    private var finishWaiters: [CheckedContinuation<Void, Never>] = []
    private let logger: Logger

    /// The endpoints that are open, in no particular order. Loop-bound.
    public var openEndpoints: [RPCEndpoint] {
        loop.preconditionInEventLoop("RPCServer.openEndpoints")
        return Array(open.values)
    }

    /// Starts listening on `address` (TCP or `unix:` path) on `loop`; must be
    /// called on the loop thread.
    /// - Parameter onEndpoint: called on the loop with each new endpoint
    ///   (its handshake already sent); set its handlers here.
    /// - Throws: ``UVError`` naming the address when binding fails.
    public init(loop: EventLoop, address: SocketAddress,
                configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                backlog: Int32 = 511, logger: Logger? = nil,
                onEndpoint: @escaping (RPCEndpoint) -> Void) throws(UVError) {
        loop.preconditionInEventLoop("RPCServer.init")
        self.loop = loop
        self.configuration = configuration
        let logger = logger ?? Logger(label: "uvrpc", factory: { _ in SwiftLogNoOpLogHandler() })
        self.logger = logger
        (endpoints, endpointsContinuation) = AsyncStream.makeStream(of: RPCEndpoint.self,
                                                                    bufferingPolicy: .bufferingNewest(1024))
        // The accept closure needs self; it is set right after the listener exists.
        let box = ServerBox()
        listener = try loop.listen(on: address, backlog: backlog, options: configuration.connectionOptions) { connection in
            box.server?.accept(connection, onEndpoint: onEndpoint)
        }
        self.address = listener.address
        listener.onAcceptError = { error in logger.warning("accept failed", metadata: ["rpc.error": "\(error)"]) }
        listener.onClose = { [unowned self] in
            self.listenerClosed = true
            self.endpointsContinuation.finish()
            self.resumeFinishWaitersIfDone()
        }
        box.server = self
    }

    /// Starts listening from any thread or task (it hops onto the loop);
    /// every endpoint answers incoming messages with `handler` (each in its
    /// own task on the loop), if one is given.
    public static func bind(on loop: EventLoop, address: SocketAddress,
                            configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                            backlog: Int32 = 511, logger: Logger? = nil,
                            handler: (@Sendable ([UInt8]) async throws -> [UInt8])? = nil) async throws -> RPCServer {
        let result: Result<RPCServer, UVError> = await withCheckedContinuation { continuation in
            let make: @Sendable () -> Void = {
                continuation.resume(returning: Result { () throws(UVError) in
                    try RPCServer(loop: loop, address: address, configuration: configuration, backlog: backlog,
                                  logger: logger) { endpoint in
                        if let handler { endpoint.onMessage(handler) }
                    }
                })
            }
            if loop.inEventLoop { make() } else if !loop.execute(make) {
                continuation.resume(returning: .failure(.loopShutDown(operation: "listen", target: "\(address)")))
            }
        }
        return try result.get()
    }

    private func accept(_ connection: Connection, onEndpoint: (RPCEndpoint) -> Void) {
        let endpoint = RPCEndpoint(connection: connection, configuration: configuration, logger: logger)
        let key = ObjectIdentifier(endpoint)
        open[key] = endpoint
        endpoint.didCloseForOwner = { [weak self] in
            guard let self else { return }
            self.open[key] = nil
            self.resumeFinishWaitersIfDone()
        }
        onEndpoint(endpoint)
        endpointsContinuation.yield(endpoint)
    }

    /// Stops accepting; with `closingEndpoints`, closes every open endpoint too.
    /// Loop-bound; ``shutdown()`` is the same from anywhere, and waits.
    public func close(closingEndpoints: Bool = true) {
        loop.preconditionInEventLoop("RPCServer.close(closingEndpoints:)")
        listener.close()
        if closingEndpoints { for endpoint in open.values { endpoint.close() } }
    }

    /// Waits until the server is over: its listener closed and every one of its
    /// endpoints closed. Callable from any thread or task.
    public func run() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait: @Sendable () -> Void = {
                self.finishWaiters.append(continuation)
                self.resumeFinishWaitersIfDone()
            }
            if loop.inEventLoop { wait() } else if !loop.execute(wait) { continuation.resume() }
        }
    }

    /// Graceful shutdown: closes the listener, then every endpoint (each
    /// fails its in-flight calls and flushes what it owes), and returns when
    /// everything is closed. Callable from any thread or task.
    public func shutdown() async {
        let closeAll: @Sendable () -> Void = { self.close(closingEndpoints: true) }
        if loop.inEventLoop { closeAll() } else { loop.execute(closeAll) }
        await run()
    }

    private func resumeFinishWaitersIfDone() {
        guard listenerClosed, open.isEmpty, !finishWaiters.isEmpty else { return }
        let waiters = finishWaiters
        finishWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }
}

/// Lets the listener's accept closure reach the server. The reference is
/// strong on purpose: a listening server stays alive (like an open SwiftNIO
/// server channel) until it is closed or its loop shuts down, which drops the
/// listener's closure and so this box.
private final class ServerBox {
    var server: RPCServer?
}

/// Connects to an efro.rpc peer.
public enum RPCClient {
    /// Connects to `address` (TCP or `unix:` path) on `loop` and calls
    /// `completion` on the loop with a ready ``RPCEndpoint`` (its handshake
    /// sent; the peer's may still be on its way), or the ``ConnectError``.
    /// Must be called on the loop thread.
    public static func connect(to address: SocketAddress, on loop: EventLoop, timeout: Duration = .seconds(10),
                               configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                               logger: Logger? = nil,
                               completion: @escaping (Result<RPCEndpoint, ConnectError>) -> Void) {
        loop.connect(to: address, timeout: timeout, options: configuration.connectionOptions) { result in
            completion(result.map { RPCEndpoint(connection: $0, configuration: configuration, logger: logger) })
        }
    }

    /// Connects from any thread or task and returns the endpoint; fails after
    /// `timeout` with ``ConnectError/timedOut(address:timeout:)``. Incoming
    /// messages wait for a handler (``RPCEndpoint/onMessage(_:)``), or are
    /// handled at once by `handler` when one is given.
    public static func connect(to address: SocketAddress, on loop: EventLoop, timeout: Duration = .seconds(10),
                               configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                               logger: Logger? = nil,
                               handler: (@Sendable ([UInt8]) async throws -> [UInt8])? = nil)
        async throws(ConnectError) -> RPCEndpoint {
        let result: Result<RPCEndpoint, ConnectError> = await withCheckedContinuation { continuation in
            let start: @Sendable () -> Void = {
                connect(to: address, on: loop, timeout: timeout, configuration: configuration, logger: logger) { result in
                    if case .success(let endpoint) = result, let handler { endpoint.onMessage(handler) }
                    continuation.resume(returning: result)
                }
            }
            if loop.inEventLoop { start() } else if !loop.execute(start) {
                continuation.resume(returning: .failure(.loopShutDown(address: "\(address)")))
            }
        }
        return try result.get()
    }
}
