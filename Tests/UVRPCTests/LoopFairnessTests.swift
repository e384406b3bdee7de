import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// One busy peer cannot hold its loop: each connection gets a bounded share
/// of a loop turn (bytes read, packets handled), and a connection resumed
/// from inside another's read waits for the next turn instead of reading
/// under it.
final class LoopFairnessTests: XCTestCase {
    /// Bytes delivered per loop turn to a connection whose peer writes 8 MiB
    /// as fast as it can: never more than the turn's share plus one read.
    func testAConnectionReadsAtMostItsShareOfATurn() throws {
        let harness = try LoopHarness("fairness-bytes")
        defer { harness.shutdownCleanly() }
        let total = 8 << 20
        let options = { var o = ConnectionOptions(); o.maximumReadBytesPerTurn = 128 << 10; return o }()
        let perTurn = LoopBoundBox.sendingValue([UInt64: Int](), loop: harness.loop)
        let done = Promise<Void>()
        let listener = try harness.sync {
            try harness.loop.listen(on: .ipv4(host: "127.0.0.1", port: 0), options: options) { connection in
                var received = 0
                connection.onRead = { bytes in
                    perTurn.value[harness.loop.turn, default: 0] += bytes.count
                    received += bytes.count
                    if received == total { done.fulfill(()) }
                    return bytes.count
                }
            }.address
        }
        let writer = try FDWriter(connectingTo: listener)
        writer.write(pseudoRandomBytes(count: total, seed: 3))
        try done.wait("8 MiB read")
        let shares = try harness.sync { perTurn.value }
        XCTAssertGreaterThan(shares.count, total / (128 << 10) / 2, "the bytes took many turns")
        // A read is at most the loop's 64 KiB shared buffer; the share is checked after each read.
        XCTAssertLessThan(shares.values.max()!, (128 << 10) + (64 << 10), "most bytes in one turn: \(shares.values.max()!)")
        writer.close()
    }

    /// A peer flooding small messages: its endpoint handles at most its
    /// share of packets per turn, and every message is still answered.
    func testAnEndpointHandlesAtMostItsShareOfPacketsPerTurn() async throws {
        let serverHarness = try LoopHarness("fairness-server")
        let clientHarness = try LoopHarness("fairness-client")
        defer {
            clientHarness.shutdownCleanly()
            serverHarness.shutdownCleanly()
        }
        var configuration = testConfiguration()
        configuration.maximumPacketsPerTurn = 64
        let perTurn = LoopBoundBox.sendingValue([UInt64: Int](), loop: serverHarness.loop)
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: configuration), on: serverHarness.loop, handler: .callback { endpoint in
            endpoint.onMessage = { request in
                perTurn.value[serverHarness.loop.turn, default: 0] += 1
                try request.respond(request.payload)
            }
        }).start()
        let client = try await RPCClient.connect(to: server.address, on: clientHarness.loop, configuration: testConfiguration())
        let count = 20_000
        let answered = Promise<Int>()
        try clientHarness.sync {
            let endpoint = client.endpoint
            var ok = 0
            endpoint.onTaggedResponse = { tag, result in
                if case .success(let bytes) = result, bytes.count == 1, bytes[0] == UInt8(truncatingIfNeeded: tag) { ok += 1 }
                if tag == UInt64(count - 1) { answered.fulfill(ok) }
            }
            for i in 0..<count {
                withUnsafeBytes(of: UInt8(truncatingIfNeeded: i)) { endpoint.send($0, tag: UInt64(i)) }
            }
        }
        XCTAssertEqual(try answered.wait("20 000 answers"), count)
        let shares = try serverHarness.sync { perTurn.value }
        XCTAssertEqual(shares.values.reduce(0, +), count)
        XCTAssertLessThanOrEqual(shares.values.max()!, 64, "messages handled in one turn")
        await client.close()
        await server.stop()
    }

    /// Connection A's handler resumes connection B, whose TLS records are
    /// already decrypted-ready: B's bytes must not be decrypted into the
    /// loop's shared read buffer while A's bytes are still in it (they were,
    /// before resuming waited for the next turn).
    func testResumingAnotherConnectionInsideAReadLeavesTheReadAlone() throws {
        let certificates = try TestCertificates.get()
        let serverHarness = try LoopHarness("resume-server")
        let clientHarness = try LoopHarness("resume-client")
        defer {
            clientHarness.shutdownCleanly()
            serverHarness.shutdownCleanly()
        }
        let serverContext = try certificates.serverContext()
        let serverOptions = { var o = ConnectionOptions(); o.tls = serverContext; return o }()
        let accepted = LoopBoundBox.sendingValue([Connection](), loop: serverHarness.loop)
        let bIntact = Promise<Bool>(), aIntact = Promise<Bool>()
        let aPayload = [UInt8](repeating: 0xAA, count: 40_000)
        // A full TLS record (16 KiB of plaintext), then a second one.
        let bFirst = [UInt8](repeating: 0xB1, count: 16 << 10), bSecond = [UInt8](repeating: 0xB2, count: 1000)
        let address = try serverHarness.sync {
            try serverHarness.loop.listen(on: .ipv4(host: "127.0.0.1", port: 0), options: serverOptions) { connection in
                let index = accepted.value.count
                accepted.value.append(connection)
                if index == 0 { // B: pauses after its first record, leaving the second decryptable in OpenSSL
                    var received: [UInt8] = []
                    connection.onRead = { [unowned connection] bytes in
                        received += bytes
                        if received.count == bFirst.count { connection.pauseReading() }
                        if received.count == bFirst.count + bSecond.count { bIntact.fulfill(received == bFirst + bSecond) }
                        return bytes.count
                    }
                } else { // A: resumes B in the middle of its own read, then looks at its bytes again
                    var received = 0
                    connection.onRead = { bytes in
                        let before = Array(bytes)
                        accepted.value[0].resumeReading()
                        let after = Array(bytes)
                        if before != after || after.contains(where: { $0 != 0xAA }) { aIntact.fulfill(false) }
                        received += bytes.count
                        if received == aPayload.count { aIntact.fulfill(true) }
                        return bytes.count
                    }
                }
            }.address
        }
        let clientContext = try certificates.clientContext()
        let clientOptions = { var o = ConnectionOptions(); o.tls = clientContext; return o }()
        func connect() throws -> LoopBound<Connection> {
            let made = Promise<Result<LoopBound<Connection>, ConnectError>>()
            try clientHarness.sync {
                clientHarness.loop.connect(to: address, options: clientOptions) { made.fulfill($0.map { LoopBound($0, loop: clientHarness.loop) }) }
            }
            return try made.wait("connect").get()
        }
        let b = try connect()
        try clientHarness.sync { try b.value.write(bFirst + bSecond) } // one write: both records arrive in one read
        try waitUntil("B paused with its second record unread") {
            (try? serverHarness.sync { accepted.value.count == 1 && !accepted.value[0].isReadingForTests }) ?? false
        }
        let a = try connect()
        try clientHarness.sync { try a.value.write(aPayload) }
        XCTAssertTrue(try aIntact.wait("A's bytes"), "A's bytes were overwritten while its handler ran")
        XCTAssertTrue(try bIntact.wait("B's bytes"), "B got both records, in order")
        try clientHarness.sync { a.value.close(); b.value.close() }
    }
}
