import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// What works the same over TLS as over plaintext: keepalive timeouts,
/// backpressure, and hostile input (the fuzz corpus) inside a TLS stream.
final class TLSBehaviourTests: XCTestCase {
    private func tlsConfiguration(_ tls: TLSContext, _ modify: (inout RPCEndpoint.Configuration) -> Void = { _ in })
        -> RPCEndpoint.Configuration {
        var c = testConfiguration()
        c.tls = tls
        modify(&c)
        return c
    }

    func testASilentPeerIsClosedByTheKeepaliveTimeoutOverTLS() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let closed = Promise<RPCCloseReason>()
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: tlsConfiguration(try certificates.serverContext()) { $0.keepaliveTimeout = .milliseconds(300) }), on: harness.loop, handler: .callback { endpoint in endpoint.onClose = { closed.fulfill($0) } }).start()
        let client = try await RPCClient.connect(
            to: server.address, on: harness.loop,
            configuration: tlsConfiguration(try certificates.clientContext()) { $0.sendsKeepalives = false })
        guard case .keepaliveTimeout = try closed.wait("the server's keepalive timeout").kind else {
            return XCTFail("expected a keepalive timeout")
        }
        let reason = try await client.closed()
        XCTAssertEqual(reason, .peerClosed, "the server closed cleanly (close_notify)")
        await server.stop()
    }

    func testAFastSenderIsHeldBackByBackpressureOverTLS() async throws {
        let certificates = try TestCertificates.get()
        let serverHarness = try LoopHarness("tls-server-loop")
        let clientHarness = try LoopHarness("tls-client-loop")
        defer {
            clientHarness.shutdownCleanly()
            serverHarness.shutdownCleanly()
        }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: tlsConfiguration(try certificates.serverContext())), on: serverHarness.loop, handler: .async { request, _ in
            [UInt8(truncatingIfNeeded: request.payload.count >> 20)]
        }).start()
        // Whole MESSAGE_BIG packets (no chunking), which wait in the outgoing buffer.
        var clientConfiguration = tlsConfiguration(try certificates.clientContext())
        clientConfiguration.extensions = []
        let client = try await RPCClient.connect(to: server.address, on: clientHarness.loop, configuration: clientConfiguration)
        let messageSize = 1 << 20, senders = 32, perSender = sanitizerInUse == nil ? 4 : 2
        let payload = pseudoRandomBytes(count: messageSize, seed: 9)
        let answered = try await withTimeout("the senders", seconds: 120) {
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<senders {
                    group.addTask {
                        for _ in 0..<perSender { _ = try await client.send(payload, timeout: .seconds(60), closeOnError: false) }
                        return perSender
                    }
                }
                return try await group.reduce(0, +)
            }
        }
        XCTAssertEqual(answered, senders * perSender)
        let observed = try clientHarness.sync { client.endpoint.connection.peakPendingWriteBytes }
        let highWater = ConnectionOptions().writeHighWaterMark
        let frame = PacketWriter.frameSize(payloadCount: messageSize)
        XCTAssertGreaterThanOrEqual(observed, frame, "messages waited in the outgoing buffers")
        // Plaintext plus its ciphertext (records add a few dozen bytes per 16 KiB).
        XCTAssertLessThanOrEqual(observed, highWater + frame + frame / 100,
                                 "unsent bytes stay under the high-water mark plus one message")
        await client.close()
        await server.stop()
    }

    /// Every fuzz-corpus input, written as the plaintext of a TLS stream to a
    /// TLS server: each connection ends, the server survives, and a good
    /// client is answered at the end.
    func testTheFuzzCorpusInsideTLSStreams() async throws {
        let certificates = try TestCertificates.get()
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus")
        let files = try FileManager.default.contentsOfDirectory(atPath: corpus.path).sorted()
        let inputs = try files.map { try [UInt8](Data(contentsOf: corpus.appendingPathComponent($0))) }
        XCTAssertFalse(inputs.isEmpty)
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let closes = LockedValue(0)
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: tlsConfiguration(try certificates.serverContext()) {
            $0.maximumPayloadSize = 1 << 20
            $0.handshakeTimeout = .seconds(2)
            $0.tlsHandshakesPerPeer = nil // 1 200 connections from one address, on purpose
        }), on: harness.loop, handler: .callback { endpoint in
            endpoint.onClose = { _ in closes.withLock { $0 += 1 } }
            endpoint.asyncEndpoint.onMessage { request, _ in request.payload }
        }).start()
        let options = try { () throws -> ConnectionOptions in
            var options = ConnectionOptions()
            options.tls = try certificates.clientContext()
            return options
        }()
        let loop = harness.loop
        let address = server.address
        let ended = Countdown(inputs.count)
        // One at a time through the loop's queue, 8 connections open at most.
        let window = LockedValue((next: 0, open: 0))
        @Sendable func startMore() {
            while true {
                let index: Int? = window.withLock { state in
                    guard state.open < 8, state.next < inputs.count else { return nil }
                    defer { state.next += 1; state.open += 1 }
                    return state.next
                }
                guard let index else { return }
                loop.connect(to: address, options: options) { result in
                    guard case .success(let connection) = result else {
                        window.withLock { $0.open -= 1 }
                        ended.countDown()
                        return startMore()
                    }
                    connection.onRead = { $0.count } // whatever the server answers
                    connection.onClose = { _ in
                        window.withLock { $0.open -= 1 }
                        ended.countDown()
                        startMore()
                    }
                    try? connection.write(inputs[index])
                    connection.close() // after the flush: the plaintext, then close_notify
                }
            }
        }
        loop.execute { startMore() }
        let allEnded = Promise<Void>()
        ended.whenDone { allEnded.fulfill(()) }
        try allEnded.wait("every corpus connection to end", seconds: 300)
        try waitUntil("the server to close every connection") { closes.withLock { $0 } == inputs.count }
        var c = testConfiguration()
        c.tls = try certificates.clientContext()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: c)
        let answer = try await withTimeout("a good call afterwards") { try await client.send([4, 2]) }
        XCTAssertEqual(answer, [4, 2])
        await client.close()
        await server.stop()
    }
}
