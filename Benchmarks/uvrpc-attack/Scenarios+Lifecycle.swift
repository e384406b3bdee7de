import Foundation
import Synchronization
import UVLoop
import UVRPC
import ServerChild
#if canImport(Glibc)
import Glibc
#endif

/// The scenarios of stopping (drains, grace periods, signals), descriptors,
/// TLS handshakes and one peer holding its loop.
extension Attacks {
    // MARK: 4. A drain with transfers in progress

    /// SIGTERM (`--grace 30`) while one 60 MiB MESSAGE_BIG (an efro.rpc
    /// peer, writing 30 MB/s) is still arriving and two 60 MiB chunked
    /// calls wait for their answers (each answered after 1 s, then sent in
    /// chunks during the drain): all three complete.
    func drainWithTransfers() throws -> Outcome {
        let server = try ServerChild(tool, ["--grace", "30", "--answer-after", "1"])
        defer { _ = server.stop() }
        let size = 60 << 20
        let payloads = (0..<3).map { seed -> [UInt8] in
            var state = UInt64(seed + 1) &* 0x9E3779B97F4A7C15 | 1
            return [UInt8](unsafeUninitializedCapacity: size) { buffer, n in
                for i in 0..<size { state ^= state << 13; state ^= state >> 7; state ^= state << 17; buffer[i] = UInt8(truncatingIfNeeded: state) }
                n = size
            }
        }
        let group = try EventLoopGroup(name: "drain-client", loopCount: 1)
        defer { group.syncShutdown() }
        let results = LockedValue([String](repeating: "pending", count: 3))
        let finished = DispatchGroup()
        let configuration = { var c = RPCEndpoint.Configuration(); c.maximumPayloadSize = 64 << 20; return c }()
        let loop = group.loops[0], address = server.address
        for i in 0..<2 {
            finished.enter()
            Task {
                defer { finished.leave() }
                do {
                    let endpoint = try await RPCClient.connect(to: address, on: loop, configuration: configuration)
                    let answer = try await endpoint.send(payloads[i], timeout: .seconds(60), closeOnError: false)
                    results.withLock { $0[i] = answer == payloads[i] ? "ok" : "wrong bytes" }
                } catch {
                    results.withLock { $0[i] = "\(error)" }
                }
            }
        }
        let efro = try RawSocket(server.address)
        defer { efro.close() }
        finished.enter()
        onThread {
            defer { finished.leave() }
            let frame = Self.plain + PacketWriter.frame(isResponse: false, id: 1, payload: payloads[2])
            var received = 0
            for start in stride(from: 0, to: frame.count, by: 1 << 20) { // 30 MB/s: 2 s for the whole message
                guard efro.write(Array(frame[start..<min(start + (1 << 20), frame.count)])) else { return }
                received += efro.drain()
                usleep(33_000) // the peer's pace
            }
            let expected = Self.serverHandshake.count + 7 + size
            while received < expected && !efro.isCutOff { let n = efro.drain(); received += n; if n == 0 { usleep(1000) } }
            received += efro.drain()
            results.withLock { $0[2] = received >= expected ? "ok" : "cut at \(received)" } // (its bytes are checked by the tests)
        }
        usleep(500_000) // the calls are on their way: uploads done or under way, no answer yet
        let signalled = now()
        server.signal(SIGTERM)
        finished.wait()
        let status = server.waitForExit(seconds: 40)
        let exit = seconds(signalled, now())
        let all = results.withLock { $0 }
        return Outcome(scenario: "drain with transfers", figures: [
            "2 chunked echoes: \(all[0]), \(all[1]); MESSAGE_BIG echo: \(all[2])", "exit \(status.map(String.init) ?? "by a signal") \(String(format: "%.2f", exit)) s after SIGTERM",
        ], target: "all complete within the grace period (30 s)", met: all.allSatisfy { $0 == "ok" } && status == 0 && exit < 31)
    }

    // MARK: 5. Shutdown and its grace period

    /// Sends SIGTERM and times the exit: its status (nil for a signal), the seconds, and a figure saying both.
    private static func signalAndTimeExit(_ server: ServerChild, _ what: String = "SIGTERM")
        -> (status: Int32?, seconds: Double, figure: String) {
        let signalled = now()
        server.signal(SIGTERM)
        let status = server.waitForExit(seconds: 40)
        let exit = seconds(signalled, now())
        return (status, exit, "exit \(status.map(String.init) ?? "by a signal") \(String(format: "%.2f", exit)) s after \(what)")
    }

    /// `--grace 2`, and a peer that reads none of a 16 MiB answer: the exit
    /// comes within the grace period plus a second.
    func graceWithANonReader() throws -> Outcome {
        let server = try ServerChild(tool, ["--grace", "2"])
        defer { _ = server.stop() }
        let peer = try RawSocket(server.address)
        defer { peer.close() }
        peer.write(Self.plain + PacketWriter.frame(isResponse: false, id: 1, payload: [UInt8](repeating: 1, count: 16 << 20)))
        usleep(500_000) // the server answers into its buffers meanwhile
        let (status, exit, figure) = Self.signalAndTimeExit(server)
        return Outcome(scenario: "grace 2 s, a peer not reading", figures: [figure],
                       target: "exit <= G + 1 s = 3 s", met: status == 0 && exit <= 3)
    }

    /// `--grace 30` with a call held for a minute: a second SIGTERM stops at once.
    func secondSignal() throws -> Outcome {
        let server = try ServerChild(tool, ["--grace", "30", "--answer-after", "60"])
        defer { _ = server.stop() }
        let peer = try RawSocket(server.address)
        defer { peer.close() }
        peer.write(Self.plain + PacketWriter.frame(isResponse: false, id: 1, payload: [1]))
        usleep(300_000) // the call reaches the server
        server.signal(SIGTERM)
        usleep(300_000) // the drain begins (a second signal must not merge with the first)
        let (status, exit, figure) = Self.signalAndTimeExit(server, "the second SIGTERM")
        return Outcome(scenario: "second signal during a drain", figures: [figure], target: "at once (< 1 s)",
                       met: status == 0 && exit < 1)
    }

    /// Under `ulimit -n 32` with 40 connections (more than it can hold):
    /// SIGTERM still stops it (it was ignored: the signal's watcher needed a descriptor).
    func sigtermAtTheDescriptorLimit() throws -> Outcome {
        let server = try ServerChild(tool, [], launcher: ["/usr/bin/prlimit", "--nofile=32:32"])
        defer { _ = server.stop() }
        let peers = try (0..<40).map { _ in try RawSocket(server.address) }
        defer { for peer in peers { peer.close() } }
        usleep(300_000) // the server accepts (and refuses) them
        let (status, exit, figure) = Self.signalAndTimeExit(server)
        return Outcome(scenario: "SIGTERM at ulimit -n 32", figures: [
            figure, "refused connections logged: \(server.log.contains("refusing connections") ? "yes" : "no")",
        ], target: "a clean exit within the grace period", met: status == 0 && exit < 11)
    }

    // MARK: 6. TLS connections that never handshake

    /// Under `ulimit -n 256`, 50 connections a second that close without a
    /// TLS byte and 5 a second that send half a ClientHello, for 10 s; a real
    /// client connects every 100 ms meanwhile.
    func tlsHalfOpen() throws -> Outcome {
        let files = try files()
        let server = try ServerChild(tool, ["--tls-cert", files.certificate, "--tls-key", files.key,
                                            "--tls-handshakes-per-peer", "0"], // descriptors are the point here
                                     launcher: ["/usr/bin/prlimit", "--nofile=256:256"])
        defer { _ = server.stop() }
        let stopAt = now() + 10_000_000_000
        let held = LockedValue([RawSocket]())
        let peakFDs = Atomic<Int>(0)
        let done = DispatchSemaphore(value: 0)
        onThread {
            var tick = 0
            while now() < stopAt {
                if let socket = try? RawSocket(server.address) {
                    if tick % 10 == 0 { socket.write([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]); held.withLock { $0.append(socket) } }
                    else { socket.close() }
                }
                tick += 1
                peakFDs.max(server.openDescriptors(), ordering: .relaxed)
                usleep(18_000) // ~50 connections a second: the attack's pace
            }
            done.signal()
        }
        let client = try TLSContext(.client(trustRoots: .certificates(.file(files.ca))))
        let group = try EventLoopGroup(name: "tls-clients", loopCount: 1)
        defer { group.syncShutdown() }
        var ok = 0, failed = 0
        var configuration = RPCEndpoint.Configuration()
        configuration.tls = client
        while now() < stopAt {
            let outcome = LockedValue<Bool?>(nil)
            let ended = DispatchSemaphore(value: 0)
            let loop = group.loops[0], address = server.address, config = configuration
            loop.execute {
                RPCClient.connect(to: address, on: loop, configuration: config) { result in
                    guard case .success(let endpoint) = result else { outcome.withLock { $0 = false }; ended.signal(); return }
                    endpoint.send([1, 2], timeout: .seconds(5), closeOnError: false) { answer in
                        outcome.withLock { $0 = (try? answer.get()) == [1, 2] }
                        endpoint.close()
                        ended.signal()
                    }
                }
            }
            _ = ended.wait(timeout: .now() + 10)
            if outcome.withLock({ $0 }) == true { ok += 1 } else { failed += 1 }
            usleep(100_000) // a real client every 100 ms
        }
        done.wait()
        for socket in held.withLock({ $0 }) { socket.close() }
        return Outcome(scenario: "TLS half-open (ulimit -n 256)", figures: [
            "real clients: \(ok) served, \(failed) failed", "server descriptors peak \(peakFDs.load(ordering: .relaxed))",
        ], target: "every real client served", met: failed == 0 && ok > 0)
    }

    // MARK: 8. The metrics port

    /// Under `ulimit -n 256`, 1000 idle connections to `--metrics`, then 150
    /// RPC clients: all served (the page holds at most 16 connections).
    func metricsIdle() throws -> Outcome {
        let server = try ServerChild(tool, ["--metrics", "127.0.0.1:0"], launcher: ["/usr/bin/prlimit", "--nofile=256:256"], extraLines: 1)
        defer { _ = server.stop() }
        let line = server.moreLines.first ?? ""
        guard let range = line.range(of: "http://"), let metrics = SocketAddress(parsing: String(line[range.upperBound...].prefix { $0 != "/" })) else {
            throw ServerChildError(description: "no metrics line: \(line)")
        }
        var idle: [RawSocket] = []
        defer { for socket in idle { socket.close() } }
        for _ in 0..<1000 { if let socket = try? RawSocket(metrics) { idle.append(socket) } }
        usleep(300_000) // the server accepts them (and closes all but 16)
        let metricsFDs = server.openDescriptors()
        let clients = try (0..<150).map { _ in try RawSocket(server.address) }
        defer { for client in clients { client.close() } }
        var served = 0
        let handshake = Self.serverHandshake.count
        for client in clients {
            client.write(Self.plain + PacketWriter.frame(isResponse: false, id: 1, payload: [9]))
            var got = 0
            let give = now() + 5_000_000_000
            while got < handshake + 6 && now() < give && !client.isCutOff { let n = client.drain(); got += n; if n == 0 { usleep(1000) } }
            if got >= handshake + 6 { served += 1 }
        }
        return Outcome(scenario: "1000 idle metrics connections (ulimit -n 256)", figures: [
            "server descriptors with them open: \(metricsFDs)", "RPC clients served: \(served) of 150",
        ], target: "every RPC client served", met: served == 150)
    }

    // MARK: 9. One peer holding its loop

    /// The probe's latency before and during an attack on the same (single) loop.
    private func latencyUnder(_ name: String, extra: [String] = [], seconds duration: Double,
                              attack: @escaping @Sendable (SocketAddress, UInt64) throws -> Void) throws -> Outcome {
        let server = try ServerChild(tool, extra)
        defer { _ = server.stop() }
        let probe = try Probe(server.address)
        let quietFrom = now()
        usleep(1_000_000) // a second of the probe alone, for comparison
        let quietTo = now()
        let from = now(), stopAt = from + UInt64(duration * 1e9)
        try attack(server.address, stopAt)
        let to = now()
        let (quiet, _) = Self.probeFigures(probe, quietFrom, quietTo)
        let (during, p99) = Self.probeFigures(probe, from, to)
        probe.stop()
        return Outcome(scenario: name, figures: ["alone: " + quiet, "during: " + during],
                       target: "probe p99 <= 5 ms", met: p99 <= 5 && probe.failureCount == 0)
    }

    /// 1-byte KEEPALIVEs as fast as a socket takes them, for 5 s.
    func keepaliveFlood() throws -> Outcome {
        try latencyUnder("KEEPALIVE flood", seconds: 5) { address, stopAt in
            let attacker = try RawSocket(address)
            defer { attacker.close() }
            attacker.write(Self.plain)
            let flood = [UInt8](repeating: 1, count: 64 << 10)
            while now() < stopAt, attacker.write(flood, until: stopAt) {}
        }
    }

    /// Four 200 MiB echo calls at once from another client (chunked both ways).
    func bigCalls() throws -> Outcome {
        try latencyUnder("four 200 MiB calls", extra: ["--max-payload", "\(256 << 20)"], seconds: 0) { address, _ in
            let group = try EventLoopGroup(name: "big-calls", loopCount: 1)
            defer { group.syncShutdown() }
            var configuration = RPCEndpoint.Configuration()
            configuration.maximumPayloadSize = 256 << 20
            let payload = [UInt8](repeating: 0xA5, count: 200 << 20)
            let done = DispatchGroup()
            for _ in 0..<4 { done.enter() }
            let loop = group.loops[0], config = configuration
            loop.execute {
                RPCClient.connect(to: address, on: loop, configuration: config) { result in
                    guard case .success(let endpoint) = result else { for _ in 0..<4 { done.leave() }; return }
                    for _ in 0..<4 { endpoint.send(payload, timeout: .seconds(120), closeOnError: false) { _ in done.leave() } }
                }
            }
            done.wait()
        }
    }

    /// A captured ClientHello replayed by 4 peers as fast as the server
    /// answers, for 5 s: how many handshakes it pays for, and the probe's
    /// latency (with the default per-peer limit, or none).
    func clientHelloReplay(limited: Bool) throws -> Outcome {
        let files = try files()
        let hello = try Self.captureClientHello(ca: files.ca)
        let server = try ServerChild(tool, ["--tls-cert", files.certificate, "--tls-key", files.key]
                                     + (limited ? [] : ["--tls-handshakes-per-peer", "0"]))
        defer { _ = server.stop() }
        let probe = try Probe(server.address, tls: try TLSContext(.client(trustRoots: .certificates(.file(files.ca)))))
        let from = now(), stopAt = from + 5_000_000_000
        let answered = Atomic<Int>(0), refused = Atomic<Int>(0)
        let done = DispatchGroup()
        for _ in 0..<4 {
            done.enter()
            onThread {
                defer { done.leave() }
                while now() < stopAt {
                    guard let socket = try? RawSocket(server.address) else { continue }
                    defer { socket.close() }
                    socket.write(hello)
                    var got = 0
                    while got < 100 && !socket.isCutOff && now() < stopAt { let n = socket.drain(); got += n; if n == 0 { usleep(200) } }
                    if got >= 100 { answered.add(1, ordering: .relaxed) } else { refused.add(1, ordering: .relaxed) }
                }
            }
        }
        done.wait()
        let (latency, p99) = Self.probeFigures(probe, from, now())
        probe.stop()
        let rate = Double(answered.load(ordering: .relaxed)) / 5
        return Outcome(scenario: "ClientHello replay, \(limited ? "default limit (64, then 32/s)" : "no limit")", figures: [
            String(format: "server answered %.0f handshakes/s", rate), "\(refused.load(ordering: .relaxed)) refused", latency,
        ], target: limited ? "handshakes held to the limit (<= 64/5 + 32 a second); probe p99 <= 5 ms" : "(for comparison)",
           met: limited ? rate <= 64.0 / 5 + 32 + 1 && p99 <= 5 : true)
    }

    /// The first flight of a TLS client (its ClientHello), as our client sends it.
    private static func captureClientHello(ca: String) throws -> [UInt8] {
        let loop = try EventLoop(name: "capture")
        loop.start()
        defer { loop.syncShutdown() }
        let captured = LockedValue([UInt8]()), got = DispatchSemaphore(value: 0)
        let context = try TLSContext(.client(trustRoots: .certificates(.file(ca))))
        try loop.submitAndWait {
            let listener = try loop.listen(on: .ipv4(host: "127.0.0.1", port: 0)) { connection in
                connection.onRead = { bytes in
                    captured.withLock { $0 += bytes }
                    if captured.withLock({ $0.count }) >= 5 { got.signal() }
                    return bytes.count
                }
            }
            var options = ConnectionOptions()
            options.tls = context
            loop.connect(to: listener.address, options: options) { _ in }
        }
        _ = got.wait(timeout: .now() + 10)
        usleep(50_000) // the rest of the record, if it came in two reads
        return captured.withLock { $0 }
    }
}
