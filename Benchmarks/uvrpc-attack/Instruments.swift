import Foundation
import Synchronization
import UVLoop
import UVRPC
import ServerChild
#if canImport(Glibc)
import Glibc
#endif

/// Nanoseconds on the monotonic clock.
func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// Seconds between two `now()` readings.
func seconds(_ from: UInt64, _ to: UInt64) -> Double { Double(to &- from) / 1e9 }

/// A plain TCP socket to the server, driven by the attacker's own threads:
/// blocking writes (a peer sending as fast as the kernel takes bytes) and
/// non-blocking reads. Records when the server cut it off.
final class RawSocket: @unchecked Sendable { // the descriptor is thread-safe; `cutOffAt` is atomic
    let fd: Int32
    private let cutOff = Atomic<UInt64>(0)

    init(_ address: SocketAddress) throws {
        fd = try connectTCP(to: address)
        // Writes give up every 100 ms, so that a writer the server stopped reading can see its deadline.
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// When the server closed this connection (0 while it has not).
    var cutOffAt: UInt64 { cutOff.load(ordering: .acquiring) }
    var isCutOff: Bool { cutOffAt != 0 }

    private func noteCutOff() { _ = cutOff.compareExchange(expected: 0, desired: now(), ordering: .acquiringAndReleasing) }

    /// Writes all of `bytes` (blocking, as the kernel takes them) until
    /// `deadline` (monotonic nanoseconds); false once the server closed the
    /// connection or the deadline passed first.
    @discardableResult
    func write(_ bytes: [UInt8], until deadline: UInt64 = .max) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n > 0 { offset += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { // the send timeout: the server reads nothing now
                if now() >= deadline { return false }
                continue
            }
            noteCutOff()
            return false
        }
        return true
    }

    /// Reads up to `limit` bytes that are there, without blocking; how many
    /// (the end of the stream, when it comes, sets ``isCutOff``).
    @discardableResult
    func drain(limit: Int = .max) -> Int {
        var total = 0
        var buffer = [UInt8](repeating: 0, count: 65536)
        while total < limit {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, limit - total), Int32(MSG_DONTWAIT)) }
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { noteCutOff(); break }
            if n < 0 { break }
            total += n
        }
        return total
    }

    func close() { Glibc.close(fd) }
}

/// Runs `body` on a thread of its own (an attacker's loop of blocking writes).
func onThread(_ body: @escaping @Sendable () -> Void) {
    let thread = Thread(block: body)
    thread.stackSize = 1 << 20
    thread.start()
}

/// A good client calling the server back to back (64 B, one call in flight)
/// on a loop of its own, timing each call: what an honest peer sees while
/// an attack runs.
final class Probe: @unchecked Sendable { // `samples` and `failures` are locked; the rest is set once
    private let group: EventLoopGroup
    /// When each call ended and how long it took (nanoseconds).
    private let samples = LockedValue([(end: UInt64, took: UInt64)]())
    private let failures = LockedValue(0)
    private let running = Atomic<Bool>(true)
    private let finished = DispatchSemaphore(value: 0)

    init(_ address: SocketAddress, tls: TLSContext? = nil) throws {
        group = try EventLoopGroup(name: "probe", loopCount: 1)
        let loop = group.loops[0]
        let connected = DispatchSemaphore(value: 0)
        let configuration = { var c = RPCEndpoint.Configuration(); c.tls = tls; return c }()
        loop.execute { [self] in
            RPCClient.connect(to: address, on: loop, configuration: configuration) { [self] result in
                defer { connected.signal() }
                guard case .success(let endpoint) = result else { failures.withLock { $0 += 1 }; finished.signal(); return }
                let payload = [UInt8](repeating: 7, count: 64)
                func next() {
                    guard running.load(ordering: .relaxed), !endpoint.isClosing else {
                        endpoint.close()
                        finished.signal()
                        return
                    }
                    let started = now()
                    endpoint.send(payload, timeout: .seconds(30), closeOnError: false) { [self] result in
                        let ended = now()
                        if case .success = result {
                            samples.withLock { $0.append((ended, ended &- started)) }
                        } else {
                            failures.withLock { $0 += 1 }
                        }
                        next()
                    }
                }
                next()
            }
        }
        connected.wait()
    }

    var failureCount: Int { failures.withLock { $0 } }

    /// Calls that ended in [from, to], and their 50th and 99th percentile durations in milliseconds.
    func latency(from: UInt64, to: UInt64) -> (calls: Int, p50: Double, p99: Double) {
        let durations = samples.withLock { $0.filter { $0.end >= from && $0.end <= to }.map(\.took) }.sorted()
        guard !durations.isEmpty else { return (0, .nan, .nan) }
        func at(_ q: Double) -> Double { Double(durations[min(durations.count - 1, Int(Double(durations.count) * q))]) / 1e6 }
        return (durations.count, at(0.5), at(0.99))
    }

    /// Stops calling and closes the probe's loop.
    func stop() {
        running.store(false, ordering: .relaxed)
        _ = finished.wait(timeout: .now() + 35)
        group.syncShutdown()
    }
}

/// Samples a process's resident memory every 10 ms and keeps the peak.
final class PeakSampler: @unchecked Sendable { // `peak` is atomic; `server` is only read
    private let peakBytes = Atomic<Int>(0)
    private let running = Atomic<Bool>(true)
    private let done = DispatchSemaphore(value: 0)

    init(_ server: ServerChild) {
        let pid = server.pid
        onThread { [self] in
            while running.load(ordering: .relaxed) {
                peakBytes.max(ServerChild.residentBytes(pid: pid), ordering: .relaxed)
                usleep(10_000) // sampling another process's memory: there is no event to await
            }
            done.signal()
        }
    }

    var peak: Int { peakBytes.load(ordering: .relaxed) }

    func stop() -> Int {
        running.store(false, ordering: .relaxed)
        done.wait()
        return peak
    }
}
