import Foundation
import ServerChild

/// A child process of the benchmark (a server or a load generator).
final class Child {
    let process = Process()
    let stdout = Pipe()
    let stdin = Pipe()
    let description: String

    /// Starts `executable` with `arguments`, pinned to `cpu` through taskset when given.
    init(_ executable: URL, _ arguments: [String], cpu: Int?) throws {
        if let cpu {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/taskset")
            process.arguments = ["-c", "\(cpu)", executable.path] + arguments
        } else {
            process.executableURL = executable
            process.arguments = arguments
        }
        description = ([executable.lastPathComponent] + arguments).joined(separator: " ")
        process.standardOutput = stdout
        process.standardInput = stdin
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    /// Reads one line of the child's stdout, waiting at most `seconds`.
    func readLine(seconds: Double) throws -> String {
        let handle = stdout.fileHandleForReading
        var bytes: [UInt8] = []
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            var pollFD = pollfd(fd: handle.fileDescriptor, events: Int16(POLLIN), revents: 0)
            let remaining = Int32(max(0, deadline.timeIntervalSinceNow * 1000))
            guard poll(&pollFD, 1, remaining) > 0 else {
                throw BenchError("\(description): no output within \(Int(seconds)) s")
            }
            var byte: UInt8 = 0
            guard read(handle.fileDescriptor, &byte, 1) == 1 else {
                throw BenchError("\(description): exited without output (status \(process.isRunning ? 0 : process.terminationStatus))")
            }
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
    }

    /// Resident memory of the child, from /proc.
    func residentBytes() throws -> Int { try statusBytes("VmRSS") }

    /// Peak resident memory of the child since ``resetPeakResident()`` (VmHWM), from /proc.
    func peakResidentBytes() throws -> Int { try statusBytes("VmHWM") }

    /// A kB field of /proc/PID/status, in bytes.
    private func statusBytes(_ field: String) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }),
              let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) else {
            throw BenchError("cannot read \(field) of \(description)")
        }
        return kib * 1024
    }

    /// Starts a new peak-resident window (writes 5 to /proc/PID/clear_refs); false if not allowed.
    @discardableResult
    func resetPeakResident() -> Bool {
        guard let handle = FileHandle(forWritingAtPath: "/proc/\(pid)/clear_refs") else { return false }
        defer { try? handle.close() }
        return (try? handle.write(contentsOf: Data("5".utf8))) != nil
    }

    /// CPU seconds (user + system) the child used so far, from /proc/PID/stat.
    func cpuSeconds() throws -> Double {
        try cpuSeconds(ofStat: "/proc/\(pid)/stat")
    }

    /// CPU seconds of each of the child's threads whose name starts with
    /// `prefix`, by thread name (its loops: `uvrpc-serve-0`, `uvrpc-c-1`, ...).
    func threadCPUSeconds(namePrefix prefix: String) throws -> [String: Double] {
        var result: [String: Double] = [:]
        let tasks = "/proc/\(pid)/task"
        for tid in try FileManager.default.contentsOfDirectory(atPath: tasks) {
            guard let name = try? String(contentsOfFile: "\(tasks)/\(tid)/comm", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines), name.hasPrefix(prefix) else { continue }
            result[name] = try cpuSeconds(ofStat: "\(tasks)/\(tid)/stat")
        }
        return result
    }

    private func cpuSeconds(ofStat path: String) throws -> Double {
        let stat = try String(contentsOfFile: path, encoding: .utf8)
        // The fields after the command name (which may hold spaces) in parentheses.
        guard let close = stat.lastIndex(of: ")") else { throw BenchError("cannot parse \(path)") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else {
            throw BenchError("cannot parse \(path)")
        }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Sends SIGUSR1 and returns the `connections per loop: ...` line the server prints.
    func connectionsPerLoop() throws -> [Int] {
        kill(pid, SIGUSR1)
        let line = try readLine(seconds: 10)
        guard line.hasPrefix("connections per loop:") else { throw BenchError("\(description) said '\(line)' on SIGUSR1") }
        // `uvrpc serve` adds " (unanswered requests: N)".
        let counts = line.dropFirst("connections per loop:".count).prefix { $0 != "(" }
        return counts.split(separator: " ").compactMap { Int($0) }
    }

    /// Asks the child to stop (SIGTERM, and stdin closed) and waits at most 10 s.
    func stop() {
        try? stdin.fileHandleForWriting.close()
        if process.isRunning { process.terminate() }
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(10_000) } // bounded wait for exit
        if process.isRunning { kill(pid, SIGKILL); process.waitUntilExit() }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Where the sibling executables are (the same folder as this one).
func sibling(_ name: String) throws -> URL {
    let me = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
                 ?? CommandLine.arguments[0])
    let url = me.deletingLastPathComponent().appendingPathComponent(name)
    guard FileManager.default.isExecutableFile(atPath: url.path) else {
        throw BenchError("\(url.path) is missing: build every product first (swift build -c release)")
    }
    return url
}

/// A running echo server of one implementation.
struct Server {
    let child: Child
    let address: String // HOST:PORT

    /// Starts a server of `impl` with `loops` event loops (Swift: spread as
    /// `spread` says; C: always a SO_REUSEPORT listener per loop).
    static func start(_ impl: Impl, cpu: Int?, loops: Int = 1, spread: String = "round-robin", port: String = "0") throws -> Server {
        let child: Child
        switch impl {
        case .swift:
            child = try Child(try sibling("uvrpc"), ["serve", "--port", port, "--backlog", "4096", "--loops", "\(loops)",
                                                     "--spread", spread], cpu: cpu)
        case .swiftAsync: child = try Child(try sibling("example-async-echo-server"), ["0"], cpu: cpu)
        case .swiftTyped: child = try Child(try sibling("example-typed-server"), ["0"], cpu: cpu)
        case .swiftMetrics:
            child = try Child(try sibling("uvrpc"), ["serve", "--port", "0", "--backlog", "4096", "--loops", "\(loops)",
                                                     "--spread", spread, "--metrics", "127.0.0.1:0"], cpu: cpu)
        case .c: child = try Child(try sibling("uvrpc-c"), ["serve", "--port", "0", "--loops", "\(loops)"], cpu: cpu)
        case .swiftTLS:
            let files = try benchTLSFiles.get()
            child = try Child(try sibling("uvrpc"), ["serve", "--port", "0", "--backlog", "4096", "--loops", "\(loops)",
                                                     "--tls-cert", files.certificate, "--tls-key", files.key,
                                                     "--tls-handshakes-per-peer", "0"], cpu: cpu) // the bench measures handshakes per second
        case .cTLS:
            let files = try benchTLSFiles.get()
            child = try Child(try sibling("uvrpc-c"), ["serve", "--port", "0", "--loops", "\(loops)",
                                                       "--tls-cert", files.certificate, "--tls-key", files.key], cpu: cpu)
        case .external: throw BenchError("an external server is not started by the bench")
        }
        let line: String
        do {
            line = try child.readLine(seconds: 20)
        } catch {
            child.stop() // no server left behind
            throw error
        }
        guard line.hasPrefix("listening on ") else {
            child.stop()
            throw BenchError("\(child.description) said '\(line)'")
        }
        return Server(child: child, address: String(line.dropFirst("listening on ".count)))
    }
}

/// What the C load generator prints.
struct LoadResult: Decodable {
    init(calls: Int, seconds: Double, calls_per_s: Double, mb_per_s: Double, total_calls: Int?,
         p50_us: Double?, p99_us: Double?, p999_us: Double?, cpu_s: Double? = nil, mallocs_per_call: Double? = nil) {
        (self.calls, self.seconds, self.calls_per_s, self.mb_per_s) = (calls, seconds, calls_per_s, mb_per_s)
        (self.total_calls, self.p50_us, self.p99_us, self.p999_us) = (total_calls, p50_us, p99_us, p999_us)
        (self.cpu_s, self.mallocs_per_call) = (cpu_s, mallocs_per_call)
    }

    let calls: Int
    let seconds: Double
    let calls_per_s: Double
    let mb_per_s: Double
    /// Calls over the load's whole life (warm-up included).
    let total_calls: Int?
    let p50_us: Double?
    let p99_us: Double?
    let p999_us: Double?
    /// CPU seconds (user + system) the load's process used while measuring.
    let cpu_s: Double?
    /// The Swift caller's mallocs per call while measuring (all its threads).
    let mallocs_per_call: Double?

    /// The caller's CPU seconds per million calls.
    var cpuPerMillionCalls: Double? { cpu_s.map { $0 / Double(max(calls, 1)) * 1e6 } }
}

/// Runs the C load generator against `address` and returns what it measured.
/// With `whileConnected`, the load keeps its connections open after
/// measuring until that returns (to read the server in that state).
func runLoad(address: String, connections: Int = 1, concurrency: Int, size: Int, duration: Double,
             latency: Bool, cpu: Int?, tlsCA: String? = nil,
             whileConnected: ((LoadResult) throws -> Void)? = nil) throws -> LoadResult {
    var arguments = ["load", "--connect", address, "--connections", "\(connections)", "--concurrency", "\(concurrency)",
                     "--size", "\(size)", "--duration", "\(duration)"]
    if let tlsCA { arguments += ["--tls-ca", tlsCA] }
    if latency { arguments.append("--latency") }
    if whileConnected != nil { arguments.append("--hold") }
    let child = try Child(try sibling("uvrpc-c"), arguments, cpu: cpu)
    defer { child.stop() }
    let line = try child.readLine(seconds: duration + 120)
    let result: LoadResult
    do {
        result = try JSONDecoder().decode(LoadResult.self, from: Data(line.utf8))
    } catch {
        throw BenchError("load generator said '\(line)'")
    }
    try whileConnected?(result)
    return result
}

/// Opens `connections` idle connections to the server and returns the
/// server's resident memory growth per connection.
func idleBytesPerConnection(server: Server, connections: Int, cpu: Int?) throws -> Double {
    let before = try server.child.residentBytes()
    let holder = try Child(try sibling("uvrpc-c"), ["idle", "--connect", server.address, "--connections", "\(connections)"],
                           cpu: cpu)
    defer { holder.stop() }
    let line = try holder.readLine(seconds: 120)
    guard line == "ready" else { throw BenchError("idle holder said '\(line)'") }
    usleep(300_000) // let the server finish its handshake writes before reading its memory
    let after = try server.child.residentBytes()
    return Double(after - before) / Double(connections)
}
