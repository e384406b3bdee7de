import Foundation
import UVLoop
#if canImport(Glibc)
import Glibc
#endif

/// A `uvrpc serve` child process for the soak and attack tools: its
/// address, pid, memory and descriptors (from /proc), its stderr in a log
/// file, and its end.
public final class ServerChild: @unchecked Sendable { // immutable after init; Process's status reads are thread-safe
    public let process = Process()
    /// The address of its listening line.
    public let address: SocketAddress
    /// Stdout lines after the listening one that were asked for at start (e.g. the metrics line).
    public let moreLines: [String]
    /// Where its stderr goes.
    public let logPath: String

    /// Starts `executable serve --port 0 arguments` (through `launcher`,
    /// such as `prlimit --nofile=256:256`, when given) and reads its
    /// listening line and then `extraLines` more stdout lines.
    public init(_ executable: URL, _ arguments: [String], launcher: [String] = [], extraLines: Int = 0,
                logName: String = "uvrpc-serve") throws {
        let command = [executable.path, "serve", "--port", "0"] + arguments
        if let tool = launcher.first {
            process.executableURL = URL(fileURLWithPath: tool)
            process.arguments = Array(launcher.dropFirst()) + command
        } else {
            process.executableURL = executable
            process.arguments = Array(command.dropFirst())
        }
        let out = Pipe()
        process.standardOutput = out
        logPath = FileManager.default.temporaryDirectory.appendingPathComponent("\(logName)-\(getpid()).log").path
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        try process.run()
        let handle = out.fileHandleForReading
        func line() -> String {
            var bytes: [UInt8] = []
            while let chunk = try? handle.read(upToCount: 1), let byte = chunk.first, byte != 10 { bytes.append(byte) }
            return String(decoding: bytes, as: UTF8.self)
        }
        let first = line()
        guard first.hasPrefix("listening on "), let address = SocketAddress(parsing: String(first.dropFirst(13))) else {
            process.terminate()
            throw ServerChildError(description: "uvrpc serve did not start: '\(first)' \(Self.tail(logPath))")
        }
        self.address = address
        moreLines = (0..<extraLines).map { _ in line() }
        // Nothing else on stdout is read: keep the pipe from filling (SIGUSR1 reports go there).
        DispatchQueue.global().async { while case let chunk = handle.availableData, !chunk.isEmpty {} }
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    /// Resident memory now, in bytes (0 once it is gone).
    public func residentBytes() -> Int { Self.residentBytes(pid: pid) }

    /// Resident memory of process `pid` now, in bytes (0 when it is gone).
    public static func residentBytes(pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap({ Int($0) })
        else { return 0 }
        return kib * 1024
    }

    /// Its open descriptors, or -1 once it is gone.
    public func openDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// Its stderr so far.
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    public func logLines() -> Int { log.split(separator: "\n").count }

    public func signal(_ signal: Int32) { kill(pid, signal) }

    /// Waits (at most `seconds`) for it to end; its exit status, or nil if
    /// it is still running (then killed) or was killed by a signal.
    public func waitForExit(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(5_000) } // polling a child's end: bounded
        if process.isRunning { kill9(); return nil }
        return process.terminationReason == .exit ? process.terminationStatus : nil
    }

    /// SIGTERM, and the exit status (bounded wait; SIGKILL after 10 s).
    public func stop() -> Int32 {
        guard process.isRunning else { return process.terminationStatus }
        process.terminate()
        return waitForExit(seconds: 10) ?? -9
    }

    public func kill9() {
        if process.isRunning { kill(pid, SIGKILL) }
    }

    private static func tail(_ path: String) -> String {
        String(((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").suffix(400))
    }
}

/// The child could not be started or did not say where it listens.
public struct ServerChildError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// A blocking TCP connection to `address` (IPv4), as an outside client
/// makes one: its descriptor. With `receiveTimeout`, reads give up after that many seconds.
public func connectTCP(to address: SocketAddress, receiveTimeout: Double? = nil) throws -> Int32 {
    guard case .ipv4(let host, let port) = address else { throw ServerChildError(description: "an IPv4 address, not \(address)") }
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ServerChildError(description: "a socket: errno \(errno)") }
    if let receiveTimeout {
        var timeout = timeval(tv_sec: Int(receiveTimeout), tv_usec: Int((receiveTimeout - receiveTimeout.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    addr.sin_addr.s_addr = inet_addr(host)
    let rc = withUnsafePointer(to: &addr) { p in
        // Safe: a sockaddr_in begins with the sockaddr fields; connect reads `size` bytes.
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let error = errno
        close(fd)
        throw ServerChildError(description: "connect to \(address): errno \(error)")
    }
    return fd
}
