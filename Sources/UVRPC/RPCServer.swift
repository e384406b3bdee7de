import Logging
import UVLoop

/// Listens for connections and speaks efro.rpc on each: every accepted
/// connection becomes an ``RPCEndpoint`` handed to `onEndpoint`, where the
/// caller sets ``RPCEndpoint/onMessage``. One misbehaving connection closes
/// alone; the server keeps serving the others. Loop-bound.
///
/// A listening server keeps itself alive until ``close(closingEndpoints:)``
/// or loop shutdown, so dropping the reference does not stop it.
public final class RPCServer {
    /// The listening socket.
    public let listener: Listener
    /// Settings of every endpoint it makes.
    public let configuration: RPCEndpoint.Configuration
    /// The endpoints that are open, in no particular order.
    public var endpoints: [RPCEndpoint] { Array(open.values) }
    private var open: [ObjectIdentifier: RPCEndpoint] = [:]
    private let logger: Logger

    /// The bound address (with the chosen port when listening on port 0).
    public var address: SocketAddress { listener.address }

    /// Starts listening on `address` (TCP or `unix:` path) on `loop`.
    /// - Parameter onEndpoint: called on the loop with each new endpoint
    ///   (its handshake already sent); set its handlers here.
    /// - Throws: ``UVError`` naming the address when binding fails.
    public init(loop: EventLoop, address: SocketAddress,
                configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                backlog: Int32 = 511, logger: Logger? = nil,
                onEndpoint: @escaping (RPCEndpoint) -> Void) throws(UVError) {
        loop.preconditionInEventLoop("RPCServer.init")
        self.configuration = configuration
        let logger = logger ?? Logger(label: "uvrpc", factory: { _ in SwiftLogNoOpLogHandler() })
        self.logger = logger
        // The accept closure needs self; it is set right after the listener exists.
        let box = ServerBox()
        listener = try loop.listen(on: address, backlog: backlog, options: configuration.connectionOptions) { connection in
            box.server?.accept(connection, onEndpoint: onEndpoint)
        }
        listener.onAcceptError = { error in logger.warning("accept failed", metadata: ["rpc.error": "\(error)"]) }
        box.server = self
    }

    private func accept(_ connection: Connection, onEndpoint: (RPCEndpoint) -> Void) {
        let endpoint = RPCEndpoint(connection: connection, configuration: configuration, logger: logger)
        let key = ObjectIdentifier(endpoint)
        open[key] = endpoint
        endpoint.didCloseForOwner = { [weak self] in self?.open[key] = nil }
        onEndpoint(endpoint)
    }

    /// Stops accepting; with `closingEndpoints`, closes every open endpoint too.
    public func close(closingEndpoints: Bool = true) {
        listener.loop.preconditionInEventLoop("RPCServer.close(closingEndpoints:)")
        listener.close()
        if closingEndpoints { for endpoint in open.values { endpoint.close() } }
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
    public static func connect(to address: SocketAddress, on loop: EventLoop, timeout: Duration = .seconds(10),
                               configuration: RPCEndpoint.Configuration = RPCEndpoint.Configuration(),
                               logger: Logger? = nil,
                               completion: @escaping (Result<RPCEndpoint, ConnectError>) -> Void) {
        loop.connect(to: address, timeout: timeout, options: configuration.connectionOptions) { result in
            completion(result.map { RPCEndpoint(connection: $0, configuration: configuration, logger: logger) })
        }
    }
}
