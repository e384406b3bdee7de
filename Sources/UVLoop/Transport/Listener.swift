import CLibUV

/// A listening TCP or Unix domain socket on an ``EventLoop``.
///
/// Made by ``EventLoop/listen(on:backlog:options:onAccept:)``. Each accepted
/// connection is handed to `onAccept` (on the loop thread); reading starts
/// when that callback returns (unless ``ConnectionOptions/autoRead`` is
/// false). Loop-bound.
public final class Listener: HandleOwner {
    /// The address actually bound (for TCP port 0, with the chosen port).
    public private(set) var address: SocketAddress
    /// Options given to every accepted connection.
    public let connectionOptions: ConnectionOptions
    private var onAccept: ((Connection) -> Void)?
    /// Called when accepting a connection failed (e.g. out of file descriptors);
    /// the listener keeps listening.
    public var onAcceptError: ((UVError) -> Void)?
    /// Called once the listening socket is closed (by ``close()`` or loop shutdown).
    public var onClose: (() -> Void)?

    init(loop: EventLoop, address: SocketAddress, backlog: Int32, options: ConnectionOptions,
         onAccept: @escaping (Connection) -> Void) throws(UVError) {
        self.address = address
        self.connectionOptions = options
        self.onAccept = onAccept
        super.init(loop: loop, type: address.isUnix ? UV_NAMED_PIPE : UV_TCP)
        let target = "listener \(address)"
        switch address {
        case .unix(let path):
            let pipe = UnsafeMutablePointer<uv_pipe_t>(OpaquePointer(handle))
            try UVError.check(uv_pipe_init(loop.uvLoop, pipe, 0), "uv_pipe_init", target)
            adoptHandle()
            do throws(UVError) {
                try UVError.check(uv_pipe_bind(pipe, path), "bind", target)
            } catch { closeHandle(); throw error }
        case .ipv4, .ipv6, .name:
            let tcp = UnsafeMutablePointer<uv_tcp_t>(OpaquePointer(handle))
            try UVError.check(uv_tcp_init(loop.uvLoop, tcp), "uv_tcp_init", target)
            adoptHandle()
            do throws(UVError) {
                _ = try address.withSockAddr { addr throws(UVError) in
                    try UVError.check(uv_tcp_bind(tcp, addr, 0), "bind", target)
                }
                if let bound = SocketAddress.of(tcp: tcp, peer: false) { self.address = bound }
            } catch { closeHandle(); throw error }
        }
        let rc = uv_listen(uvStream, backlog) { server, status in
            // Safe: the handle's data is its Listener until its close callback.
            let owner = HandleOwner.owner(of: UnsafeMutablePointer(OpaquePointer(server))).takeUnretainedValue()
            unsafeDowncast(owner, to: Listener.self).accept(status: status)
        }
        if rc < 0 {
            closeHandle()
            throw UVError(code: rc, operation: "listen", target: "listener \(self.address)")
        }
    }

    private func accept(status: Int32) {
        guard !isHandleClosing else { return }
        if status < 0 {
            onAcceptError?(UVError(code: status, operation: "accept", target: "listener \(address)"))
            return
        }
        let connection: Connection
        do {
            connection = try Connection(loop: loop, unixDomain: address.isUnix, options: connectionOptions,
                                        label: "\(address)")
        } catch {
            onAcceptError?(error)
            return
        }
        let rc = uv_accept(uvStream, connection.uvStream)
        if rc < 0 {
            connection.closeHandle()
            onAcceptError?(UVError(code: rc, operation: "accept", target: "listener \(address)"))
            return
        }
        connection.didConnect()
        guard let onAccept else { return connection.closeHandle() }
        Self.deliver(connection, acceptedOn: address, to: onAccept)
    }

    /// Names an accepted connection after its peer, hands it to `onAccept`,
    /// then starts reading (unless the options say not to).
    static func deliver(_ connection: Connection, acceptedOn address: SocketAddress,
                        to onAccept: (Connection) -> Void) {
        if let remote = connection.remoteAddress { connection.label = "\(remote)" }
        else { connection.label = "\(address) (accepted)" }
        onAccept(connection)
        connection.startIfWanted()
    }

    /// Stops listening and closes the socket (a Unix socket's path is
    /// removed). Accepted connections stay open. Idempotent.
    public func close() {
        loop.preconditionInEventLoop("Listener.close()")
        closeHandle()
    }

    /// True until ``close()`` (or loop shutdown).
    public var isListening: Bool { !isHandleClosing }

    override func handleDidClose() {
        // onClose first: the accept closure may be what keeps its owner alive.
        let onClose = self.onClose
        self.onClose = nil
        onClose?()
        onAccept = nil
        onAcceptError = nil
    }
}

extension EventLoop {
    /// Listens on `address` (TCP, IPv4 or IPv6, port 0 picks a free port; or
    /// a Unix socket path, which must not exist yet).
    /// - Parameters:
    ///   - address: where to listen.
    ///   - backlog: the kernel's queue of not-yet-accepted connections.
    ///   - options: given to every accepted connection.
    ///   - onAccept: called on the loop thread with each new connection; set
    ///     its callbacks here.
    /// - Throws: ``UVError`` naming the address when binding or listening fails.
    public func listen(on address: SocketAddress, backlog: Int32 = 511,
                       options: ConnectionOptions = ConnectionOptions(),
                       onAccept: @escaping (Connection) -> Void) throws(UVError) -> Listener {
        preconditionInEventLoop("EventLoop.listen(on:backlog:options:onAccept:)")
        return try Listener(loop: self, address: address, backlog: backlog, options: options, onAccept: onAccept)
    }

    /// Connects to `address` (TCP or Unix socket) and calls `completion` on
    /// the loop thread with the connection or a ``ConnectError`` that names
    /// the address and libuv's error. Reading starts when `completion`
    /// returns (unless ``ConnectionOptions/autoRead`` is false).
    ///
    /// A host name (`SocketAddress(parsing: "db.internal:9000")`) is resolved
    /// first (``resolve(host:port:completion:)``, without blocking the loop),
    /// and its addresses are tried in the resolver's order, each with
    /// `timeout`, until one connects; the error is then the last address's.
    /// Resolving is not counted in `timeout`: it takes what the resolver
    /// takes (resolv.conf's `timeout` times `attempts` for a DNS server that
    /// does not answer), and a loop shutting down waits for a lookup under way.
    /// Over TLS, the name is the server name checked and sent (SNI) unless
    /// the configuration gives one.
    public func connect(to address: SocketAddress, timeout: Duration = .seconds(10),
                        options: ConnectionOptions = ConnectionOptions(),
                        completion: @escaping (Result<Connection, ConnectError>) -> Void) {
        preconditionInEventLoop("EventLoop.connect(to:timeout:options:completion:)")
        guard !address.isNumeric, let host = address.host, let port = address.port else {
            return connectNumeric(to: address, hostName: nil, timeout: timeout, options: options, completion: completion)
        }
        resolve(host: host, port: port) { result in
            switch result {
            case .failure(let error):
                completion(.failure(.resolveFailed(error)))
            case .success(let addresses):
                self.connectFirst(of: addresses[...], hostName: host, timeout: timeout, options: options, completion: completion)
            }
        }
    }

    /// Connects to `address` (numeric, or a name resolved as
    /// ``connect(to:timeout:options:completion:)`` does) with `hostName` as the
    /// name it stands for: over TLS, the server name checked and sent (SNI)
    /// unless the configuration gives one. For owners that resolved the name
    /// themselves (a pool connects to each address a name resolves to).
    package func connect(to address: SocketAddress, hostName: String?, timeout: Duration = .seconds(10),
                         options: ConnectionOptions = ConnectionOptions(),
                         completion: @escaping (Result<Connection, ConnectError>) -> Void) {
        preconditionInEventLoop("EventLoop.connect(to:hostName:timeout:options:completion:)")
        guard let hostName, address.isNumeric else { return connect(to: address, timeout: timeout, options: options, completion: completion) }
        connectNumeric(to: address, hostName: hostName, timeout: timeout, options: options, completion: completion)
    }

    /// Tries `addresses` in order until one connects.
    private func connectFirst(of addresses: ArraySlice<SocketAddress>, hostName: String, timeout: Duration,
                              options: ConnectionOptions,
                              completion: @escaping (Result<Connection, ConnectError>) -> Void) {
        connectNumeric(to: addresses.first!, hostName: hostName, timeout: timeout, options: options) { result in
            if case .failure(let error) = result, addresses.count > 1, error.kind != .loopShutDown(address: "\(addresses.first!)") {
                return self.connectFirst(of: addresses.dropFirst(), hostName: hostName, timeout: timeout, options: options,
                                         completion: completion)
            }
            completion(result)
        }
    }

    /// Connects to a numeric address; `hostName` is the name it was resolved from, if any.
    private func connectNumeric(to address: SocketAddress, hostName: String?, timeout: Duration, options: ConnectionOptions,
                                completion: @escaping (Result<Connection, ConnectError>) -> Void) {
        let connection: Connection
        do {
            connection = try Connection(loop: self, unixDomain: address.isUnix, options: options, label: "\(address)")
            connection.hostName = hostName
        } catch {
            completion(.failure(.failed(error)))
            return
        }
        let attempt = ConnectAttempt(connection: connection, address: address, completion: completion)
        let request = UnsafeMutablePointer<uv_connect_t>.allocate(capacity: 1)
        // The request holds the attempt until the connect callback (always called, also on close).
        uv_req_set_data(UnsafeMutableRawPointer(request).assumingMemoryBound(to: uv_req_t.self),
                        Unmanaged.passRetained(attempt).toOpaque())
        switch address {
        case .unix(let path):
            uv_pipe_connect(request, UnsafeMutablePointer(OpaquePointer(connection.handle)), path, connectCallback)
        case .ipv4, .ipv6, .name:
            let rc: Int32
            do {
                rc = try address.withSockAddr { addr in
                    uv_tcp_connect(request, connection.tcpHandle, addr, connectCallback)
                }
            } catch {
                rc = error.code
            }
            if rc < 0 {
                Unmanaged<ConnectAttempt>.fromOpaque(uv_req_get_data(
                    UnsafeMutableRawPointer(request).assumingMemoryBound(to: uv_req_t.self))!).release()
                request.deallocate()
                connection.closeHandle()
                completion(.failure(.failed(UVError(code: rc, operation: "connect", target: "\(address)"))))
                return
            }
        }
        attempt.timer = scheduleTimer(after: timeout) { [weak attempt] in
            guard let attempt, !attempt.finished else { return }
            // Closing the handle makes libuv call the connect callback with UV_ECANCELED.
            attempt.finish(.failure(.timedOut(address: "\(address)", timeout: timeout)))
            attempt.connection.closeHandle()
        }
    }
}

/// State of one connect: reports exactly once.
private final class ConnectAttempt {
    let connection: Connection
    let address: SocketAddress
    var completion: ((Result<Connection, ConnectError>) -> Void)?
    var timer: LoopTimer?
    var finished: Bool { completion == nil }

    init(connection: Connection, address: SocketAddress,
         completion: @escaping (Result<Connection, ConnectError>) -> Void) {
        self.connection = connection
        self.address = address
        self.completion = completion
    }

    func finish(_ result: Result<Connection, ConnectError>) {
        guard let completion else { return }
        self.completion = nil
        timer?.cancel()
        timer = nil
        completion(result)
    }
}

private let connectCallback: uv_connect_cb = { request, status in
    // Balanced: connect(to:) passed a retained attempt in the request's data.
    let attempt = Unmanaged<ConnectAttempt>.fromOpaque(uv_req_get_data(
        UnsafeMutableRawPointer(request!).assumingMemoryBound(to: uv_req_t.self))!).takeRetainedValue()
    request!.deallocate()
    guard !attempt.finished else { return }
    let connection = attempt.connection
    if status < 0 {
        connection.closeHandle()
        if status == UV_ECANCELED.rawValue {
            attempt.finish(.failure(.loopShutDown(address: "\(attempt.address)")))
        } else {
            attempt.finish(.failure(.failed(UVError(code: status, operation: "connect", target: "\(attempt.address)"))))
        }
        return
    }
    connection.didConnect()
    attempt.finish(.success(connection))
    connection.startIfWanted()
}
