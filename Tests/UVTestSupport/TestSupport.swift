import Dispatch
import Foundation
import UVLoop
import XCTest

/// Thrown when something a test waits for does not happen in time.
public struct TestTimeout: Error, CustomStringConvertible {
    public let what: String
    public init(what: String) { self.what = what }
    public var description: String { "timed out waiting for \(what)" }
}

/// A one-shot value handed from the loop thread to the test thread.
public final class Promise<Value: Sendable>: Sendable {
    public init() {}
    private let value = LockedValue<Value?>(nil)
    private let semaphore = DispatchSemaphore(value: 0)

    public func fulfill(_ v: Value) {
        let first = value.withLock { old -> Bool in
            guard old == nil else { return false }
            old = v
            return true
        }
        if first { semaphore.signal() }
    }

    /// Waits at most `seconds` for the value.
    public func wait(_ what: String, seconds: Double = 20) throws -> Value {
        guard semaphore.wait(timeout: .now() + seconds) == .success else { throw TestTimeout(what: what) }
        semaphore.signal()
        return value.withLock { $0! }
    }

    public var isFulfilled: Bool { value.withLock { $0 != nil } }
}

/// A loop running on its own thread for one test.
public final class LoopHarness: Sendable {
    public let loop: EventLoop

    public init(_ name: String = "test-loop") throws {
        loop = try EventLoop(name: name)
        loop.start()
    }

    /// Runs `body` on the loop and returns its result to the calling thread.
    public func sync<T: Sendable>(_ what: String = "a job on the loop", seconds: Double = 20,
                           _ body: @escaping @Sendable () throws -> T) throws -> T {
        let promise = Promise<Result<T, any Error>>()
        guard loop.execute({ promise.fulfill(Result { try body() }) }) else {
            throw TestTimeout(what: "\(what): the loop refused the job (shut down)")
        }
        return try promise.wait(what, seconds: seconds).get()
    }

    /// Shuts the loop down and asserts that `uv_loop_close` returned 0.
    public func shutdownCleanly(file: StaticString = #filePath, line: UInt = #line) {
        let status = loop.syncShutdown(timeout: .seconds(20))
        XCTAssertEqual(status, 0, "uv_loop_close must return 0 (every handle closed)", file: file, line: line)
    }
}

/// Polls `condition` every 2 ms for at most `seconds`: only for figures no
/// callback reports (a count fed by a loop thread, /proc, another process).
public func waitUntil(_ what: String, seconds: Double = 10, _ condition: () -> Bool) throws {
    let deadline = DispatchTime.now() + seconds
    while !condition() {
        guard DispatchTime.now() < deadline else { throw TestTimeout(what: what) }
        usleep(2_000) // polled with a bound: there is no event to await
    }
}

/// Fast deterministic bytes (xorshift64*), so that 16 MiB payloads are cheap to make.
public func pseudoRandomBytes(count: Int, seed: UInt64) -> [UInt8] {
    var state = seed | 1
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var i = 0
        while i < count {
            state ^= state >> 12; state ^= state << 25; state ^= state >> 27
            var word = state &* 2685821657736338717
            let n = min(8, count - i)
            withUnsafeBytes(of: &word) { raw.baseAddress!.advanced(by: i).copyMemory(from: $0.baseAddress!, byteCount: n) }
            i += n
        }
    }
    return bytes
}

/// A free TCP port on 127.0.0.1 is not needed: listeners bind port 0. This
/// gives a port that refuses connections (bound, then closed).
public func refusedPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
            _ = bind(fd, sa, len)
            _ = getsockname(fd, sa, &len)
        }
    }
    close(fd)
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// Memory and descriptor figures of a process, read from /proc (Linux).
public enum ProcessFigures {
    /// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`, ...) in bytes, or nil.
    public static func statusField(_ field: String, pid: String = "self") -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            let number = line.dropFirst(field.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { Int($0) }
            return number.map { $0 * 1024 }
        }
        return nil
    }

    /// Resident memory now, in bytes.
    public static func residentBytes(pid: String = "self") -> Int? { statusField("VmRSS", pid: pid) }

    /// Peak resident memory since the last ``resetPeakResident(pid:)``, in bytes.
    public static func peakResidentBytes(pid: String = "self") -> Int? { statusField("VmHWM", pid: pid) }

    /// Resets the peak resident figure (writes 5 to /proc/PID/clear_refs). False if not allowed.
    @discardableResult
    public static func resetPeakResident(pid: String = "self") -> Bool {
        guard let handle = FileHandle(forWritingAtPath: "/proc/\(pid)/clear_refs") else { return false }
        defer { try? handle.close() }
        return (try? handle.write(contentsOf: Data("5".utf8))) != nil
    }

    /// Open file descriptors of the process.
    public static func openDescriptors(pid: String = "self") -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// Open socket descriptors of the process (pipes and files of child processes left out).
    public static func openSockets(pid: String = "self") -> Int {
        let directory = "/proc/\(pid)/fd"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return -1 }
        return entries.filter {
            ((try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + $0)) ?? "").hasPrefix("socket:")
        }.count
    }
}

/// The sanitizer the tests run under (`make test-tsan` / `make test-asan` set
/// `UVRPC_SANITIZER`), or nil. Tests that measure memory or push volume use it
/// to scale down: sanitizers add redzones, quarantine and shadow memory, and
/// run copies several times slower.
public var sanitizerInUse: String? { ProcessInfo.processInfo.environment["UVRPC_SANITIZER"] }
