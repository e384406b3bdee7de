import Logging
import UVLoop

/// What a server's listener and endpoints share: the open endpoints and the
/// end of the server. Its methods are called on the endpoints' loops (accept,
/// close) and from any thread (listing, closing, waiting).
final class ServerCore: Sendable {
    let configuration: RPCEndpoint.Configuration
    let logger: Logger
    /// The handshake every endpoint writes, made once.
    private let handshake: [UInt8]
    /// The memory budget all its endpoints share (``RPCEndpoint/Configuration/maximumServerPayloadMemory``).
    let payloadBudget: MemoryBudget
    /// New TLS connections per peer address (``RPCEndpoint/Configuration/tlsHandshakesPerPeer``), when serving TLS.
    private let handshakeLimiter: PeerRateLimiter?
    private let onEndpoint: @Sendable (RPCEndpoint) -> Void
    private let admit: (@Sendable (SocketAddress?) -> RPCServer.Admission)?
    private let continuation: AsyncStream<RPCAsyncEndpoint>.Continuation

    private struct State {
        var open: [ObjectIdentifier: RPCAsyncEndpoint] = [:]
        /// Set by close: connections still arriving are turned away.
        var admitting = true
        var listenerClosed = false
        var finishWaiters: [@Sendable () -> Void] = []
    }
    private let state = LockedValue(State())
    /// Connections refused for lack of descriptors since the last accepted one.
    private let refusedForDescriptors = LockedValue(0)

    private init(configuration: RPCEndpoint.Configuration, logger: Logger,
                 continuation: AsyncStream<RPCAsyncEndpoint>.Continuation,
                 admit: (@Sendable (SocketAddress?) -> RPCServer.Admission)?,
                 onEndpoint: @escaping @Sendable (RPCEndpoint) -> Void) {
        self.admit = admit
        self.configuration = configuration
        self.logger = logger
        self.handshake = configuration.handshakeBytes
        self.payloadBudget = MemoryBudget(limit: configuration.maximumServerPayloadMemory)
        self.handshakeLimiter = configuration.tls == nil ? nil
            : configuration.tlsHandshakesPerPeer.map(PeerRateLimiter.init)
        self.continuation = continuation
        self.onEndpoint = onEndpoint
    }

    static func make(configuration: RPCEndpoint.Configuration, logger: Logger?,
                     admit: (@Sendable (SocketAddress?) -> RPCServer.Admission)?,
                     onEndpoint: @escaping @Sendable (RPCEndpoint) -> Void) -> (ServerCore, AsyncStream<RPCAsyncEndpoint>) {
        let (endpoints, continuation) = AsyncStream.makeStream(of: RPCAsyncEndpoint.self, bufferingPolicy: .bufferingNewest(1024))
        let logger = logger ?? Logger(label: "uvrpc", factory: { _ in SwiftLogNoOpLogHandler() })
        return (ServerCore(configuration: configuration, logger: logger, continuation: continuation,
                           admit: admit, onEndpoint: onEndpoint), endpoints)
    }

    var openEndpoints: [RPCAsyncEndpoint] { state.withLock { Array($0.open.values) } }

    /// Makes the endpoint of a new connection (on the connection's loop).
    func accept(_ connection: Connection) {
        LoopMetrics.of(connection.loop).connectionsAccepted &+= 1
        acceptRecovered()
        if let handshakeLimiter, let peer = connection.remoteAddress?.host, !handshakeLimiter.allow(peer) {
            LoopMetrics.of(connection.loop).connectionsRefused[RefusalKind.tlsHandshakeRate.rawValue, default: 0] &+= 1
            logger.info("connection refused: the peer opens TLS connections faster than its limit",
                        metadata: ["rpc.peer": "\(connection.label)"])
            return connection.abort() // before its handshake costs anything
        }
        var values = RPCConnectionValues()
        if let admit {
            switch admit(connection.remoteAddress).decision {
            case .accept(let value):
                values = value
            case .refuse:
                logger.debug("connection refused by the admit hook", metadata: ["rpc.peer": "\(connection.label)"])
                return connection.close()
            }
        }
        let endpoint = RPCEndpoint(connection: connection, configuration: configuration, label: nil, logger: logger,
                                   handshake: handshake, payloadBudget: payloadBudget)
        let key = ObjectIdentifier(endpoint)
        let admitted = state.withLock { state -> Bool in
            guard state.admitting else { return false }
            state.open[key] = endpoint.asyncEndpoint
            return true
        }
        guard admitted else { return endpoint.close() } // arrived after close(): turned away
        endpoint._connectionValues = values
        endpoint.didCloseForOwner = { [self] in endpointDidClose(key) }
        onEndpoint(endpoint)
        continuation.yield(endpoint.asyncEndpoint)
    }

    /// Counts a failed accept (on the listener's loop) and logs it: once per
    /// burst when the process is out of descriptors (libuv keeps a reserve
    /// descriptor to turn such connections away instead of spinning), else each time.
    func acceptFailed(_ error: UVError) {
        if let loop = EventLoop.current { LoopMetrics.of(loop).acceptErrors[error.name, default: 0] += 1 }
        guard error.isOutOfDescriptors else {
            return logger.warning("accept failed", metadata: ["rpc.error": "\(error)"])
        }
        let first = refusedForDescriptors.withLock { count -> Bool in
            count += 1
            return count == 1
        }
        if first {
            logger.warning("refusing connections: out of file descriptors", metadata: [
                "rpc.error": "\(error)", "rpc.open-files-limit": "\(openFilesLimit())",
            ])
        }
    }

    /// Ends a burst of connections refused for lack of descriptors (a connection was accepted).
    private func acceptRecovered() {
        let refused = refusedForDescriptors.withLock { count -> Int in
            defer { count = 0 }
            return count
        }
        if refused > 0 {
            logger.warning("accepting connections again", metadata: [
                "rpc.refused": "\(refused)", "rpc.open-files-limit": "\(openFilesLimit())",
            ])
        }
    }

    /// Turns later connections away; returns the endpoints open now.
    func stopAdmitting() -> [RPCAsyncEndpoint] {
        state.withLock { state in
            state.admitting = false
            return Array(state.open.values)
        }
    }

    private func endpointDidClose(_ key: ObjectIdentifier) {
        finishIfDone { $0.open[key] = nil }
    }

    func listenerDidClose() {
        continuation.finish()
        finishIfDone { $0.listenerClosed = true }
    }

    func whenFinished(_ body: @escaping @Sendable () -> Void) {
        finishIfDone { $0.finishWaiters.append(body) }
    }

    /// Applies `change`, then runs the finish waiters if the server is over.
    private func finishIfDone(_ change: (inout State) -> Void) {
        let waiters = state.withLock { state -> [@Sendable () -> Void] in
            change(&state)
            guard state.listenerClosed, state.open.isEmpty else { return [] }
            defer { state.finishWaiters.removeAll() }
            return state.finishWaiters
        }
        for waiter in waiters { waiter() }
    }
}
