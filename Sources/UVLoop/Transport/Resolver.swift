import CLibUV
#if canImport(Glibc)
import Glibc
#endif

/// Why a host name could not be resolved: the name and the resolver's reason.
public struct ResolveError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The host name that did not resolve.
    public let host: String
    /// The resolver's reason (libuv's text for its `getaddrinfo` error,
    /// e.g. "unknown node or service").
    public let reason: String
    /// libuv's error code (`UV_EAI_NONAME`...; 0 when the name resolved to no address).
    public let code: Int32

    package init(host: String, reason: String, code: Int32) {
        (self.host, self.reason, self.code) = (host, reason, code)
    }

    public var description: String { "cannot resolve host \"\(host)\": \(reason)" }
}

extension SocketAddress {
    /// Whether this is a Unix socket or an IP address written as numbers
    /// (`127.0.0.1`, `::1`): nothing to resolve. `localhost` is numeric
    /// here (``init(host:port:)`` reads it as `127.0.0.1`).
    public var isNumeric: Bool {
        switch self {
        case .unix: return true
        case .name: return false
        case .ipv4(let host, _):
            var bytes = in_addr()
            return uv_inet_pton(AF_INET, host, &bytes) == 0
        case .ipv6(let host, _):
            var bytes = in6_addr()
            return uv_inet_pton(AF_INET6, host, &bytes) == 0
        }
    }
}

extension EventLoop {
    /// Resolves `host` through the system resolver (`getaddrinfo`, run on
    /// libuv's thread pool: the loop never blocks) and calls `completion` on
    /// the loop thread with every TCP address it names, IPv4 and IPv6, in
    /// the resolver's order without repeats, each with `port`; or with a
    /// ``ResolveError`` naming the host. A numeric host is returned as it
    /// is, without a lookup. Loop-bound: call it on the loop (from a task,
    /// use ``resolve(host:port:)``).
    public func resolve(host: String, port: Int,
                        completion: @escaping (Result<[SocketAddress], ResolveError>) -> Void) {
        preconditionInEventLoop("EventLoop.resolve(host:port:completion:)")
        let numeric = SocketAddress(host: host, port: port)
        if numeric.isNumeric { return completion(.success([numeric])) }
        let lookup = Lookup(host: host, port: port, completion: completion)
        let request = UnsafeMutablePointer<uv_getaddrinfo_t>.allocate(capacity: 1)
        // The request holds the lookup until its callback (always called, also when cancelled).
        uv_req_set_data(UnsafeMutableRawPointer(request).assumingMemoryBound(to: uv_req_t.self),
                        Unmanaged.passRetained(lookup).toOpaque())
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        let rc = uv_getaddrinfo(uvLoop, request, lookupCallback, host, nil, &hints)
        if rc < 0 {
            Unmanaged<Lookup>.fromOpaque(uv_req_get_data(
                UnsafeMutableRawPointer(request).assumingMemoryBound(to: uv_req_t.self))!).release()
            request.deallocate()
            completion(.failure(ResolveError(host: host, reason: UVError(code: rc, operation: "resolve", target: host).message, code: rc)))
        }
    }

    /// Resolves `host` as ``resolve(host:port:completion:)`` does, from any
    /// thread or task.
    /// - Throws: ``ResolveError`` naming the host (also when the loop no longer takes work).
    public func resolve(host: String, port: Int) async throws(ResolveError) -> [SocketAddress] {
        let result: Result<[SocketAddress], ResolveError> = await withHandOff { deliver in
            let queued = execute { self.resolve(host: host, port: port) { deliver($0) } }
            if !queued { deliver(.failure(ResolveError(host: host, reason: "the event loop is shut down", code: UV_ECANCELED.rawValue))) }
        }
        return try result.get()
    }
}

/// One `getaddrinfo` in progress: reports exactly once.
private final class Lookup {
    let host: String
    let port: Int
    let completion: (Result<[SocketAddress], ResolveError>) -> Void

    init(host: String, port: Int, completion: @escaping (Result<[SocketAddress], ResolveError>) -> Void) {
        (self.host, self.port, self.completion) = (host, port, completion)
    }
}

private let lookupCallback: uv_getaddrinfo_cb = { request, status, results in
    // Balanced: resolve(host:port:completion:) passed a retained lookup in the request's data.
    let lookup = Unmanaged<Lookup>.fromOpaque(uv_req_get_data(
        UnsafeMutableRawPointer(request!).assumingMemoryBound(to: uv_req_t.self))!).takeRetainedValue()
    request!.deallocate()
    defer { if let results { uv_freeaddrinfo(results) } }
    guard status == 0 else {
        let reason = status == UV_ECANCELED.rawValue ? "the lookup was cancelled (the loop is shutting down)" : UVError(code: status, operation: "resolve", target: lookup.host).message
        return lookup.completion(.failure(ResolveError(host: lookup.host, reason: reason, code: status)))
    }
    var addresses: [SocketAddress] = []
    var next = results
    while let info = next {
        if let address = info.pointee.ai_addr, info.pointee.ai_addrlen <= MemoryLayout<sockaddr_storage>.size {
            var storage = sockaddr_storage()
            // Safe: ai_addrlen bytes of sockaddr fit in the storage (checked above).
            withUnsafeMutableBytes(of: &storage) { $0.baseAddress!.copyMemory(from: address, byteCount: Int(info.pointee.ai_addrlen)) }
            if var found = withUnsafePointer(to: &storage, { SocketAddress($0) }) {
                found = found.withPort(lookup.port)
                if !addresses.contains(found) { addresses.append(found) }
            }
        }
        next = info.pointee.ai_next
    }
    if addresses.isEmpty {
        return lookup.completion(.failure(ResolveError(host: lookup.host, reason: "no IPv4 or IPv6 address", code: 0)))
    }
    lookup.completion(.success(addresses))
}

extension SocketAddress {
    /// The same IP address with `port` (a Unix socket as it is).
    func withPort(_ port: Int) -> SocketAddress {
        switch self {
        case .ipv4(let host, _): return .ipv4(host: host, port: port)
        case .ipv6(let host, _): return .ipv6(host: host, port: port)
        case .name(let host, _): return .name(host: host, port: port)
        case .unix: return self
        }
    }
}
