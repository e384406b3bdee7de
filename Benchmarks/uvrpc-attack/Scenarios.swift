import Foundation
import Synchronization
import UVLoop
import UVRPC
import ServerChild
#if canImport(Glibc)
import Glibc
#endif

/// One scenario's outcome: what was measured, the target, and whether it was met.
struct Outcome: Codable {
    var scenario: String
    var figures: [String]
    var target: String
    var met: Bool
}

/// What every scenario needs: the `uvrpc` tool, certificates for the TLS ones.
/// The scenarios of memory held and protocol abuse are here; those of
/// stopping, descriptors, TLS and latency in Scenarios+Lifecycle.swift.
struct Attacks {
    let tool: URL
    let files: () throws -> TLSFiles

    static let mebibyte = Double(1 << 20)
    static let progressTimeout = 10.0, progressCheck = 2.5 // the defaults: timeout, and liveness checks every timeout / 4
    static let connectionBudget = 256 << 20, serverBudget = 1 << 30
    static let extended = PeerInfo(keepaliveInterval: 10, extensions: .all).handshakeBytes
    static let plain = PeerInfo(keepaliveInterval: 10).handshakeBytes
    /// What `uvrpc serve` writes first (its defaults).
    static let serverHandshake = PeerInfo(keepaliveInterval: 10.73, extensions: .all).handshakeBytes

    static func packet(_ type: PacketType, id: UInt16 = 0, total: Int = 0, payload: [UInt8] = []) -> [UInt8] {
        PacketWriter.extensionPacket(type, id: id, total: total, payload: payload)
    }

    static func mib(_ bytes: Int) -> String { String(format: "%.1f MiB", Double(bytes) / mebibyte) }
    static func ms(_ value: Double) -> String { String(format: "%.2f ms", value) }

    /// The probe's latency over [from, to] as figures.
    static func probeFigures(_ probe: Probe, _ from: UInt64, _ to: UInt64) -> (String, Double) {
        let l = probe.latency(from: from, to: to)
        return ("probe p50 \(ms(l.p50)), p99 \(ms(l.p99)) over \(l.calls) calls, \(probe.failureCount) failed", l.p99)
    }

    /// A `uvrpc serve` child on its defaults, its RSS now, a sampler of its peak, and one attacker connected.
    private func serverAndAttacker() throws -> (ServerChild, baseline: Int, PeakSampler, RawSocket) {
        let server = try ServerChild(tool, [])
        return (server, server.residentBytes(), PeakSampler(server), try RawSocket(server.address))
    }

    // MARK: 1. CANCELs whose acknowledgements pile up

    /// A peer that sends messages and a CANCEL for each, as fast as it can,
    /// while it reads ~190 KB/s: its acknowledgements (and answers) count
    /// against backpressure, so the server reads only as fast as it reads.
    func cancelFlood() throws -> Outcome {
        let (server, baseline, sampler, attacker) = try serverAndAttacker()
        defer { attacker.close(); _ = server.stop() }
        attacker.write(Self.extended)
        let batch = (0..<1000).flatMap { PacketWriter.frame(isResponse: false, id: UInt16($0), payload: []) }
            + (0..<1000).flatMap { Self.packet(.cancel, id: UInt16($0)) }
        let start = now(), stopAt = start + 10_000_000_000
        let sent = Atomic<Int>(0), read = Atomic<Int>(0)
        let done = DispatchSemaphore(value: 0)
        onThread {
            while now() < stopAt, attacker.write(batch, until: stopAt) { sent.add(batch.count, ordering: .relaxed) }
            done.signal()
        }
        while now() < stopAt { // the slow reader
            read.add(attacker.drain(limit: 19_000), ordering: .relaxed)
            if attacker.isCutOff { break }
            usleep(100_000) // reading 19 KB every 100 ms: the attack, not a wait
        }
        done.wait()
        let growth = sampler.stop() - baseline
        let elapsed = seconds(start, now())
        let rate = Double(sent.load(ordering: .relaxed)) / elapsed / 1e3
        return Outcome(scenario: "cancel-flood", figures: [
            "RSS +\(Self.mib(growth))", String(format: "attacker sent %.0f KB/s, read %.0f KB/s", rate, Double(read.load(ordering: .relaxed)) / elapsed / 1e3),
            attacker.isCutOff ? "cut off" : "throttled (not cut off: it reads)",
        ], target: "RSS growth <= 2 x the connection budget (512 MiB); throttled to its reading", met: growth <= 2 * Self.connectionBudget)
    }

    // MARK: 2. Payloads held in parts

    /// Each attacker starts 4 chunked messages and 4 responses nobody asked
    /// for (64 MiB each), fills the messages to 63 MiB, sends a 64 MiB
    /// MESSAGE_BIG to 63 MiB, then trickles one byte a second. With `count`
    /// attackers, the server's shared budget is what bounds them.
    func partialPayloads(attackers count: Int) throws -> Outcome {
        let server = try ServerChild(tool, [])
        defer { _ = server.stop() }
        let baseline = server.residentBytes(), sampler = PeakSampler(server)
        let filler = [UInt8](repeating: 0x5A, count: 60_000)
        let chunks = 1101 // x 60 000 = 63 MiB of each 64 MiB payload
        let sockets = try (0..<count).map { _ in try RawSocket(server.address) }
        defer { for socket in sockets { socket.close() } }
        let filled = LockedValue([UInt64]())
        let group = DispatchGroup()
        for socket in sockets {
            group.enter()
            onThread {
                defer { group.leave() }
                var head = Self.extended
                for id in 1...4 { head += Self.packet(.messageStart, id: UInt16(id), total: 64 << 20) }
                for id in 1...4 { head += Self.packet(.responseStart, id: UInt16(id), total: 64 << 20) }
                guard socket.write(head) else { return }
                for id in 1...4 {
                    let chunk = Self.packet(.messageChunk, id: UInt16(id), payload: filler)
                    for _ in 0..<chunks { guard socket.write(chunk) else { return }; socket.drain() }
                }
                guard socket.write([4, 0, 9, 0x04, 0, 0, 0]) else { return } // MESSAGE_BIG id 9, 64 MiB
                for _ in 0..<chunks { guard socket.write(filler) else { return }; socket.drain() }
                filled.withLock { $0.append(now()) }
                let give = now() + 30_000_000_000
                while !socket.isCutOff && now() < give { // one byte a second
                    socket.write([0x5A], until: give)
                    for _ in 0..<10 where !socket.isCutOff { socket.drain(); usleep(100_000) } // the trickle's pace
                }
            }
        }
        group.wait()
        let growth = sampler.stop() - baseline
        let fillEnd = filled.withLock { $0.max() ?? now() }
        let cutOffs = sockets.filter(\.isCutOff)
        let latest = cutOffs.map { seconds(fillEnd, $0.cutOffAt) }.max() ?? .infinity
        let budget = count == 1 ? 2 * Self.connectionBudget : Self.serverBudget + (64 << 20)
        let inTime = cutOffs.count == count && latest <= Self.progressTimeout + Self.progressCheck
        return Outcome(scenario: "partial-payloads x\(count)", figures: [
            "RSS +\(Self.mib(growth))", "\(cutOffs.count) of \(count) cut off, the last \(String(format: "%.1f", latest)) s after its payloads stopped",
            "refused payloads logged: \(server.log.components(separatedBy: "refused a message payload").count - 1)",
        ], target: count == 1 ? "RSS growth <= 512 MiB; cut off within the progress timeout (10 s + a 2.5 s check)"
                              : "RSS growth <= the server budget (1 GiB) + 64 MiB; all cut off in time",
           met: growth <= budget && inTime)
    }

    // MARK: 3. Allocation before payload

    /// Under a 1 GiB address space, 16 peers announce 64 MiB MESSAGE_BIGs
    /// (7 bytes each) and 2 announce four 64 MiB chunked messages each: the
    /// allocations that fail refuse their payloads; the server serves on.
    func allocation() throws -> Outcome {
        let server = try ServerChild(tool, ["--verbose"], launcher: ["/usr/bin/prlimit", "--as=\(1 << 30)"])
        defer { _ = server.stop() }
        let probe = try Probe(server.address)
        let big = try (0..<16).map { _ in try RawSocket(server.address) }
        let starts = try (0..<2).map { _ in try RawSocket(server.address) }
        defer { for socket in big + starts { socket.close() } }
        for socket in big { socket.write(Self.plain + [4, 0, 1, 0x04, 0, 0, 0]) }
        for socket in starts { socket.write(Self.extended + (1...4).flatMap { Self.packet(.messageStart, id: UInt16($0), total: 64 << 20) }) }
        let from = now()
        usleep(3_000_000) // the attack runs for 3 s while the probe calls
        let (latency, _) = Self.probeFigures(probe, from, now())
        probe.stop()
        let alive = server.isRunning
        let refused = server.log.components(separatedBy: "could not be allocated").count - 1
        for socket in big + starts { socket.drain() }
        let cut = (big + starts).filter(\.isCutOff).count
        return Outcome(scenario: "allocation (ulimit -v 1 GiB)", figures: [
            alive ? "server alive" : "server DIED", "\(refused) payloads refused: allocation failed", "\(cut) of 18 attackers closed", latency,
        ], target: "no crash; only the attacking connections affected", met: alive && probe.failureCount == 0)
    }

    // MARK: 10. Slow acknowledgements

    /// A peer sends four 64 MiB chunked messages, then acknowledges the
    /// answers 8 KiB every 5 s: cut off by the progress timeout.
    func slowAcknowledgements() throws -> Outcome {
        let (server, baseline, sampler, attacker) = try serverAndAttacker()
        defer { attacker.close(); _ = server.stop() }
        let total = 64 << 20
        let filler = [UInt8](repeating: 0x3C, count: 60_000)
        var sentAt: UInt64 = 0
        let reader = DispatchSemaphore(value: 0)
        let give = now() + 60_000_000_000
        onThread { // reads everything, acknowledges 8 KiB every 5 s
            var lastAck = now()
            while !attacker.isCutOff && now() < give {
                attacker.drain()
                if now() - lastAck >= 5_000_000_000 {
                    attacker.write(Self.packet(.chunkAcknowledged, total: 8192), until: give)
                    lastAck = now()
                }
                usleep(10_000) // the slow peer's pace
            }
            reader.signal()
        }
        attacker.write(Self.extended)
        for id in 1...4 {
            attacker.write(Self.packet(.messageStart, id: UInt16(id), total: total), until: give)
            var left = total
            while left > 0 {
                let n = min(left, filler.count)
                attacker.write(Self.packet(.messageChunk, id: UInt16(id), payload: Array(filler[0..<n])), until: give)
                left -= n
            }
        }
        sentAt = now()
        reader.wait()
        let growth = sampler.stop() - baseline
        let cut = attacker.isCutOff ? seconds(sentAt, attacker.cutOffAt) : .infinity
        return Outcome(scenario: "slow CHUNK_ACKs (8 KiB / 5 s)", figures: [
            "RSS +\(Self.mib(growth))", attacker.isCutOff ? String(format: "cut off %.1f s after its messages", cut) : "NOT cut off",
        ], target: "RSS growth <= 512 MiB; cut off within the progress timeout (10 s + a 2.5 s check)",
           met: growth <= 2 * Self.connectionBudget && cut <= Self.progressTimeout + Self.progressCheck)
    }
}
