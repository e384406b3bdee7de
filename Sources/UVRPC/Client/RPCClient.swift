import Logging
import UVLoop

/// Connects to an efro.rpc peer.
public enum RPCClient {
    /// The callback layer: connects to `address` (TCP or `unix:` path) on
    /// `loop` and calls `completion` on the loop with a ready ``RPCEndpoint``
    /// (its handshake sent; the peer's may still be on its way), or the
    /// `ConnectError`. Must be called on the loop thread (the completion may
    /// then use loop-bound state); from elsewhere, use the async form.
    public static func connect(to address: SocketAddress, on loop: EventLoop, timeout: Duration = .seconds(10),
                               configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                               logger: Logger? = nil,
                               completion: @escaping (Result<RPCEndpoint, ConnectError>) -> Void) {
        connect(to: address, hostName: nil, on: loop, timeout: timeout, configuration: configuration, logger: logger,
                completion: completion)
    }

    /// ``connect(to:on:timeout:configuration:logger:completion:)`` to an
    /// address resolved from `hostName` (the TLS server name, unless the configuration gives one).
    static func connect(to address: SocketAddress, hostName: String?, on loop: EventLoop, timeout: Duration,
                        configuration: RPCEndpoint.Configuration, logger: Logger?,
                        completion: @escaping (Result<RPCEndpoint, ConnectError>) -> Void) {
        loop.connect(to: address, hostName: hostName, timeout: timeout, options: configuration.connectionOptions) { result in
            completion(result.map { RPCEndpoint(connection: $0, configuration: configuration, logger: logger) })
        }
    }

    /// Connects to `address` (TCP or `unix:` path) from any thread or task
    /// and returns the endpoint's `Sendable` handle: the way for most
    /// clients. With a group, the connection goes to its next loop (round
    /// robin) and lives there for its whole life.
    /// Incoming messages (a server may call its clients too) are answered by
    /// `handler`, as a server's are; without one, they wait (up to 1024)
    /// and are never answered.
    /// - Throws: `ConnectError` (UVLoop): timed out after `timeout`, a refused or
    ///   failed connect naming the address, or the loop shut down.
    public static func connect(to address: SocketAddress, on loops: some EventLoopProvider, timeout: Duration = .seconds(10),
                               configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                               logger: Logger? = nil,
                               handler: RPCHandler? = nil)
        async throws(ConnectError) -> RPCAsyncEndpoint {
        let loop = loops.next()
        let result: Result<RPCAsyncEndpoint, ConnectError> = await withHandOff { deliver in
            let start: @Sendable () -> Void = {
                connect(to: address, on: loop, timeout: timeout, configuration: configuration, logger: logger) { result in
                    if case .success(let endpoint) = result, let handler { handler.install(endpoint) }
                    deliver(result.map(\.asyncEndpoint))
                }
            }
            if loop.inEventLoop { start() } else if !loop.execute(start) {
                deliver(.failure(.loopShutDown(address: "\(address)")))
            }
        }
        return try result.get()
    }
}
