import UVLoop

/// Resolves the host names a pool connects to (``RPCClientPool``): the
/// system resolver by default (``RPCSystemResolver``); another one for a
/// discovery system, or for tests.
///
/// ```swift
/// struct Fixed: RPCResolver {
///     func resolve(host: String, port: Int, on loop: EventLoop) async throws -> [SocketAddress] {
///         [.ipv4(host: "10.0.0.7", port: port), .ipv4(host: "10.0.0.8", port: port)]
///     }
/// }
/// ```
public protocol RPCResolver: Sendable {
    /// Every address `host` names now, each with `port` (a resolver may
    /// return other ports). `loop` is one of the pool's loops, for a
    /// resolver that does its work there. Throwing, or returning no
    /// address, leaves the pool with the last answer it had. It should
    /// return in bounded time: the pool's `connect` and `update(addresses:)`
    /// wait for it.
    func resolve(host: String, port: Int, on loop: EventLoop) async throws -> [SocketAddress]
}

/// The system resolver (`getaddrinfo`: /etc/hosts, then DNS), run on
/// libuv's thread pool (`EventLoop.resolve(host:port:)`): the loop never blocks.
public struct RPCSystemResolver: RPCResolver {
    public init() {}

    public func resolve(host: String, port: Int, on loop: EventLoop) async throws -> [SocketAddress] {
        try await loop.resolve(host: host, port: port)
    }
}
