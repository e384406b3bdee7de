import Foundation

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
    func residentBytes() throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) else {
            throw BenchError("cannot read VmRSS of \(description)")
        }
        return kib * 1024
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

    static func start(_ impl: Impl, cpu: Int?) throws -> Server {
        let child: Child
        switch impl {
        case .swift: child = try Child(try sibling("uvrpc"), ["serve", "--port", "0", "--backlog", "4096"], cpu: cpu)
        case .c: child = try Child(try sibling("uvrpc-c"), ["serve", "--port", "0"], cpu: cpu)
        case .external: throw BenchError("an external server is not started by the bench")
        }
        let line = try child.readLine(seconds: 20)
        guard line.hasPrefix("listening on ") else { throw BenchError("\(child.description) said '\(line)'") }
        return Server(child: child, address: String(line.dropFirst("listening on ".count)))
    }
}

/// What the C load generator prints.
struct LoadResult: Decodable {
    init(calls: Int, seconds: Double, calls_per_s: Double, mb_per_s: Double, p50_us: Double?, p99_us: Double?, p999_us: Double?) {
        (self.calls, self.seconds, self.calls_per_s, self.mb_per_s) = (calls, seconds, calls_per_s, mb_per_s)
        (self.p50_us, self.p99_us, self.p999_us) = (p50_us, p99_us, p999_us)
    }

    let calls: Int
    let seconds: Double
    let calls_per_s: Double
    let mb_per_s: Double
    let p50_us: Double?
    let p99_us: Double?
    let p999_us: Double?
}

/// Runs the C load generator against `address` and returns what it measured.
func runLoad(address: String, connections: Int = 1, concurrency: Int, size: Int, duration: Double,
             latency: Bool, cpu: Int?) throws -> LoadResult {
    var arguments = ["load", "--connect", address, "--connections", "\(connections)", "--concurrency", "\(concurrency)",
                     "--size", "\(size)", "--duration", "\(duration)"]
    if latency { arguments.append("--latency") }
    let child = try Child(try sibling("uvrpc-c"), arguments, cpu: cpu)
    defer { child.stop() }
    let line = try child.readLine(seconds: duration + 60)
    do {
        return try JSONDecoder().decode(LoadResult.self, from: Data(line.utf8))
    } catch {
        throw BenchError("load generator said '\(line)'")
    }
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
