import CLibUV
#if canImport(Glibc)
import Glibc
#endif

/// Where to listen or connect: an IPv4 or IPv6 address and port, a host
/// name and port, or a Unix domain socket path. `localhost` means
/// `127.0.0.1`. No lookup happens here: a name is resolved when connecting
/// (``EventLoop/connect(to:timeout:options:completion:)``), never when listening.
public enum SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// An IPv4 address in dotted form and a port.
    case ipv4(host: String, port: Int)
    /// An IPv6 address (without brackets) and a port.
    case ipv6(host: String, port: Int)
    /// A host name (`db.internal`) and a port, resolved when connecting.
    case name(host: String, port: Int)
    /// A Unix domain socket path.
    case unix(path: String)

    /// An IP address from a numeric host (IPv6 when it contains `:`), or a
    /// host name, and a port.
    public init(host: String, port: Int) {
        let h = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if h.contains(":") { self = .ipv6(host: h, port: port); return }
        if h == "localhost" { self = .ipv4(host: "127.0.0.1", port: port); return }
        var bytes = in_addr()
        self = uv_inet_pton(AF_INET, h, &bytes) == 0 ? .ipv4(host: h, port: port) : .name(host: h, port: port)
    }

    /// Parses `HOST:PORT`, `[IPV6]:PORT` or `unix:PATH`; nil when malformed.
    public init?(parsing text: String) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { return nil }
            self = .unix(path: path)
            return
        }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        let host = String(text[..<colon])
        guard !host.isEmpty else { return nil }
        self.init(host: host, port: port)
    }

    /// The host, for IP addresses and names (nil for a Unix socket).
    public var host: String? {
        switch self {
        case .ipv4(let h, _), .ipv6(let h, _), .name(let h, _): return h
        case .unix: return nil
        }
    }

    /// The port, for IP addresses and names.
    public var port: Int? {
        switch self {
        case .ipv4(_, let p), .ipv6(_, let p), .name(_, let p): return p
        case .unix: return nil
        }
    }

    /// `127.0.0.1:80`, `[::1]:80` or `unix:/tmp/sock`.
    public var description: String {
        switch self {
        case .ipv4(let h, let p), .name(let h, let p): return "\(h):\(p)"
        case .ipv6(let h, let p): return "[\(h)]:\(p)"
        case .unix(let path): return "unix:\(path)"
        }
    }

    var isUnix: Bool { if case .unix = self { return true } else { return false } }

    /// Calls `body` with this IP address as a `sockaddr`.
    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>) throws(UVError) -> R) throws(UVError) -> R {
        var storage = sockaddr_storage()
        switch self {
        case .ipv4(let host, let port):
            guard (0...65535).contains(port) else { throw UVError(code: UV_EINVAL.rawValue, operation: "parse port", target: description) }
            _ = try withUnsafeMutablePointer(to: &storage) { p throws(UVError) in
                // Safe: sockaddr_storage is large and aligned enough for any sockaddr.
                try UVError.check(uv_ip4_addr(host, Int32(port), UnsafeMutablePointer(OpaquePointer(p))),
                                  "parse IPv4 address", description)
            }
        case .ipv6(let host, let port):
            guard (0...65535).contains(port) else { throw UVError(code: UV_EINVAL.rawValue, operation: "parse port", target: description) }
            _ = try withUnsafeMutablePointer(to: &storage) { p throws(UVError) in
                // Safe: sockaddr_storage is large and aligned enough for any sockaddr.
                try UVError.check(uv_ip6_addr(host, Int32(port), UnsafeMutablePointer(OpaquePointer(p))),
                                  "parse IPv6 address", description)
            }
        case .name:
            throw UVError(code: UV_EINVAL.rawValue, operation: "use a host name without resolving it (listening takes a numeric address)",
                          target: description)
        case .unix:
            throw UVError(code: UV_EINVAL.rawValue, operation: "convert to sockaddr", target: description)
        }
        return try withUnsafePointer(to: &storage) { p throws(UVError) in
            // Safe: the storage now holds a sockaddr_in or sockaddr_in6, both prefixed by sockaddr.
            try body(UnsafePointer(OpaquePointer(p)))
        }
    }

    /// Reads an IPv4/IPv6 `sockaddr` (as filled by getsockname / getpeername).
    init?(_ storage: UnsafePointer<sockaddr_storage>) {
        var name = [CChar](repeating: 0, count: 64)
        switch Int32(storage.pointee.ss_family) {
        case AF_INET:
            // Safe: ss_family says the storage holds a sockaddr_in.
            let sin = UnsafeRawPointer(storage).assumingMemoryBound(to: sockaddr_in.self)
            guard uv_ip4_name(sin, &name, name.count) == 0 else { return nil }
            self = .ipv4(host: String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), port: Int(UInt16(bigEndian: sin.pointee.sin_port)))
        case AF_INET6:
            // Safe: ss_family says the storage holds a sockaddr_in6.
            let sin6 = UnsafeRawPointer(storage).assumingMemoryBound(to: sockaddr_in6.self)
            guard uv_ip6_name(sin6, &name, name.count) == 0 else { return nil }
            self = .ipv6(host: String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), port: Int(UInt16(bigEndian: sin6.pointee.sin6_port)))
        default:
            return nil
        }
    }

    /// The local or peer address of a TCP handle.
    static func of(tcp: UnsafeMutablePointer<uv_tcp_t>, peer: Bool) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { p in
            // Safe: getsockname/getpeername write at most `length` bytes of sockaddr into the storage.
            peer ? uv_tcp_getpeername(tcp, UnsafeMutablePointer(OpaquePointer(p)), &length)
                 : uv_tcp_getsockname(tcp, UnsafeMutablePointer(OpaquePointer(p)), &length)
        }
        guard rc == 0 else { return nil }
        return withUnsafePointer(to: &storage) { SocketAddress($0) }
    }
}
