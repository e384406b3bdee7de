import CLibUV
import Glibc

/// A libuv call that failed: which operation, on what, and libuv's own error.
///
/// `code` is libuv's negative error number (`UV_ECONNREFUSED`, ...); the
/// description adds `uv_err_name` and `uv_strerror`, e.g.
/// `connect to 127.0.0.1:9 failed: ECONNREFUSED (connection refused)`.
public struct UVError: Error, Equatable, Sendable, CustomStringConvertible {
    /// libuv's (negative) error code.
    public let code: Int32
    /// What was being done, e.g. `"connect"`, `"bind"`, `"write"`.
    public let operation: String
    /// What it was done to: an address, a path or a connection label.
    public let target: String

    /// Creates an error for libuv error `code` raised by `operation` on `target`.
    public init(code: Int32, operation: String, target: String) {
        self.code = code
        self.operation = operation
        self.target = target
    }

    /// `ECANCELED` for `operation` on `target`: the event loop is shut down.
    public static func loopShutDown(operation: String, target: String) -> UVError {
        UVError(code: UV_ECANCELED.rawValue, operation: operation, target: "\(target) (the event loop is shut down)")
    }

    /// libuv's short name of the error, e.g. `ECONNREFUSED`.
    public var name: String { String(cString: uv_err_name(code)) }

    /// True for `EMFILE` / `ENFILE`: the process (or the system) has no
    /// file descriptor left, as when connections arrive past `ulimit -n`.
    public var isOutOfDescriptors: Bool { code == UV_EMFILE.rawValue || code == UV_ENFILE.rawValue }

    /// libuv's human-readable message, e.g. `connection refused`.
    public var message: String { String(cString: uv_strerror(code)) }

    public var description: String {
        "\(operation) on \(target) failed: \(name) (\(message))"
    }

    /// Throws a `UVError` when `result` is a negative libuv status; returns it otherwise.
    @discardableResult @inline(__always)
    static func check(_ result: Int32, _ operation: @autoclosure () -> String,
                      _ target: @autoclosure () -> String) throws(UVError) -> Int32 {
        if result < 0 { throw UVError(code: result, operation: operation(), target: target()) }
        return result
    }
}

/// Why a connection ended or an operation on it failed.
///
/// Every case names the connection by its label (by default its peer
/// address), so a log line says to whom it happened.
public struct ConnectionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What happened. Package-internal, so that a new kind never breaks a
    /// user's exhaustive `switch`; ``description`` says it.
    package enum Kind: Equatable, Sendable {
        /// The connection was closed locally (by `close`, `abort` or loop
        /// shutdown) before the operation could complete.
        case closed(connection: String)
        /// The peer closed its side (end of stream).
        case endOfStream(connection: String)
        /// The peer reset the connection (`ECONNRESET`) or the pipe broke (`EPIPE`).
        case reset(connection: String)
        /// Reading failed with another libuv error.
        case readFailed(UVError)
        /// Writing failed with a libuv error.
        case writeFailed(UVError)
        /// The read handler left `limit` bytes unconsumed, filling the read
        /// buffer at its maximum capacity.
        case readBufferLimitExceeded(connection: String, limit: Int)
        /// A graceful close could not flush pending writes within its timeout,
        /// so the connection was aborted with `pendingBytes` unsent.
        case closeTimedOut(connection: String, pendingBytes: Int)
        /// The socket took no byte for `timeout` while `pendingBytes` waited to
        /// be written: the peer stopped reading. The connection was aborted.
        case writeTimedOut(connection: String, pendingBytes: Int, timeout: Duration)
        /// TLS failed: the handshake (an untrusted or expired certificate, a
        /// name mismatch, no common protocol, plaintext sent to a TLS port...) or
        /// a record; `reason` is OpenSSL's.
        case tlsFailed(connection: String, reason: String)
        /// The peer ended the stream without TLS's close_notify: the data may
        /// have been cut short, so this is not a clean end.
        case tlsTruncated(connection: String)
    }

    /// What happened.
    package let kind: Kind

    package init(_ kind: Kind) { self.kind = kind }

    public var description: String {
        switch kind {
        case .closed(let c): return "connection \(c) is closed"
        case .endOfStream(let c): return "connection \(c) was closed by the peer (end of stream)"
        case .reset(let c): return "connection \(c) was reset by the peer"
        case .readFailed(let e): return "read failed: \(e)"
        case .writeFailed(let e): return "write failed: \(e)"
        case .readBufferLimitExceeded(let c, let limit):
            return "connection \(c): read handler left \(limit) bytes unconsumed, the read buffer's maximum capacity"
        case .closeTimedOut(let c, let pending):
            return "connection \(c): graceful close timed out with \(pending) bytes unsent; aborted"
        case .writeTimedOut(let c, let pending, let timeout):
            return "connection \(c): the peer read nothing for \(timeout) with \(pending) bytes waiting to be written; aborted"
        case .tlsFailed(let c, let reason): return "connection \(c): TLS failed: \(reason)"
        case .tlsTruncated(let c):
            return "connection \(c): the peer ended the TLS stream without close_notify (the data may be cut short)"
        }
    }
}

extension ConnectionError {
    /// True when TLS failed (the handshake, a certificate, or a stream cut
    /// without close_notify).
    public var isTLS: Bool {
        switch kind {
        case .tlsFailed, .tlsTruncated: return true
        default: return false
        }
    }
}

// Each kind, to make one or compare with (`error == .reset(connection: label)`).
extension ConnectionError {
    /// The connection was closed locally (by `close`, `abort` or loop shutdown) before the operation could complete.
    public static func closed(connection: String) -> ConnectionError { ConnectionError(.closed(connection: connection)) }
    /// The peer closed its side (end of stream).
    public static func endOfStream(connection: String) -> ConnectionError { ConnectionError(.endOfStream(connection: connection)) }
    /// The peer reset the connection (`ECONNRESET`) or the pipe broke (`EPIPE`).
    public static func reset(connection: String) -> ConnectionError { ConnectionError(.reset(connection: connection)) }
    /// Reading failed with another libuv error.
    public static func readFailed(_ v0: UVError) -> ConnectionError { ConnectionError(.readFailed(v0)) }
    /// Writing failed with a libuv error.
    public static func writeFailed(_ v0: UVError) -> ConnectionError { ConnectionError(.writeFailed(v0)) }
    /// The read handler left `limit` bytes unconsumed, filling the read buffer at its maximum capacity.
    public static func readBufferLimitExceeded(connection: String, limit: Int) -> ConnectionError { ConnectionError(.readBufferLimitExceeded(connection: connection, limit: limit)) }
    /// A graceful close could not flush pending writes within its timeout, so the connection was aborted with `pendingBytes` unsent.
    public static func closeTimedOut(connection: String, pendingBytes: Int) -> ConnectionError { ConnectionError(.closeTimedOut(connection: connection, pendingBytes: pendingBytes)) }
    /// The socket took no byte for `timeout` while `pendingBytes` waited to be written: the peer stopped reading. The connection was aborted.
    public static func writeTimedOut(connection: String, pendingBytes: Int, timeout: Duration) -> ConnectionError { ConnectionError(.writeTimedOut(connection: connection, pendingBytes: pendingBytes, timeout: timeout)) }
    /// TLS failed: the handshake (an untrusted or expired certificate, a name mismatch, no common protocol, plaintext sent to a TLS port...) or a record; `reason` is OpenSSL's.
    public static func tlsFailed(connection: String, reason: String) -> ConnectionError { ConnectionError(.tlsFailed(connection: connection, reason: reason)) }
    /// The peer ended the stream without TLS's close_notify: the data may have been cut short, so this is not a clean end.
    public static func tlsTruncated(connection: String) -> ConnectionError { ConnectionError(.tlsTruncated(connection: connection)) }
}

/// Why a connect attempt failed.
public struct ConnectError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What happened. Package-internal, so that a new kind never breaks a
    /// user's exhaustive `switch`; ``description`` says it.
    package enum Kind: Equatable, Sendable {
        /// The address could not be parsed or resolved.
        case invalidAddress(String)
        /// libuv reported an error (refused, unreachable, ...).
        case failed(UVError)
        /// No connection was established within `timeout`.
        case timedOut(address: String, timeout: Duration)
        /// The event loop shut down before the connect completed.
        case loopShutDown(address: String)
        /// The host name did not resolve.
        case resolveFailed(ResolveError)
    }

    /// What happened.
    package let kind: Kind

    package init(_ kind: Kind) { self.kind = kind }

    public var description: String {
        switch kind {
        case .invalidAddress(let a): return "invalid address \(a)"
        case .failed(let e): return e.description
        case .timedOut(let a, let t): return "connect to \(a) timed out after \(t)"
        case .loopShutDown(let a): return "connect to \(a) abandoned: the event loop shut down"
        case .resolveFailed(let e): return e.description
        }
    }
}

// Each kind, to make one or compare with.
extension ConnectError {
    /// The address could not be parsed or resolved.
    public static func invalidAddress(_ v0: String) -> ConnectError { ConnectError(.invalidAddress(v0)) }
    /// libuv reported an error (refused, unreachable, ...).
    public static func failed(_ v0: UVError) -> ConnectError { ConnectError(.failed(v0)) }
    /// No connection was established within `timeout`.
    public static func timedOut(address: String, timeout: Duration) -> ConnectError { ConnectError(.timedOut(address: address, timeout: timeout)) }
    /// The event loop shut down before the connect completed.
    public static func loopShutDown(address: String) -> ConnectError { ConnectError(.loopShutDown(address: address)) }
    /// The host name did not resolve.
    public static func resolveFailed(_ v0: ResolveError) -> ConnectError { ConnectError(.resolveFailed(v0)) }
}

/// This process's limit of open files (`RLIMIT_NOFILE`'s soft limit), for
/// messages about running out of descriptors; "unlimited" or "unknown" otherwise.
package func openFilesLimit() -> String {
    var limit = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return "unknown" }
    return limit.rlim_cur == rlim_t.max ? "unlimited" : "\(limit.rlim_cur) open files"
}
