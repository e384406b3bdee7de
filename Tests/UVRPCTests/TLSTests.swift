import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// efro.rpc over TLS: UVRPC on both sides.
final class TLSTests: XCTestCase {
    private func configuration(_ tls: TLSContext, serverName: String? = nil) throws -> RPCEndpoint.Configuration {
        var c = testConfiguration()
        c.tls = try naming(tls, serverName)
        return c
    }

    private func echoServer(_ harness: LoopHarness, tls: TLSContext) async throws -> RunningServer {
        try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: configuration(tls)), on: harness.loop, handler: .async { request, _ in
            Array(request.payload.reversed())
        }).start()
    }

    func testMessagesBothWaysOverTLSIncluding5MiB() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await echoServer(harness, tls: try certificates.serverContext())
        let client = try await RPCClient.connect(to: server.address, on: harness.loop,
                                                 configuration: configuration(try certificates.clientContext()),
                                                 handler: .async { request, _ in Array(request.payload.reversed()) })
        let serverEndpoint = try await withTimeout("the accepted endpoint") { () -> RPCAsyncEndpoint? in
            var iterator = server.endpoints.makeAsyncIterator()
            return await iterator.next()
        }
        for (i, size) in [0, 1, 100, 65535, 65536, 5 << 20].enumerated() {
            let payload = pseudoRandomBytes(count: size, seed: UInt64(i + 1))
            let a = try await withTimeout("client -> server, \(size) bytes") { try await client.send(payload) }
            XCTAssertEqual(a, payload.reversed(), "client -> server, \(size) bytes")
            let b = try await withTimeout("server -> client, \(size) bytes") { try await serverEndpoint!.send(payload) }
            XCTAssertEqual(b, payload.reversed(), "server -> client, \(size) bytes")
        }
        let isTLS = try await client.withEndpoint { $0.connection.isTLS }
        XCTAssertTrue(isTLS)
        await client.close()
        await server.stop()
    }
}

/// TLS failures on real sockets: each closes that connection with a reason
/// that names the peer and OpenSSL's verdict; the server keeps serving a
/// good client meanwhile.
final class TLSFailureTests: XCTestCase {
    /// A TLS echo server whose endpoints report how they closed.
    private struct Server {
        let server: RunningServer
        let closeReasons: LockedValue<[String]>
    }

    private func server(_ harness: LoopHarness, tls: TLSContext) async throws -> Server {
        var c = testConfiguration()
        c.tls = tls
        let reasons = LockedValue([String]())
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: c), on: harness.loop, handler: .callback { endpoint in
            endpoint.onClose = { reason in reasons.withLock { $0.append("\(reason)") } }
            endpoint.asyncEndpoint.onMessage { request, _ in request.payload }
        }).start()
        return Server(server: server, closeReasons: reasons)
    }

    /// Connects with `tls` (or plaintext), makes one call and returns how it ended.
    private func call(_ address: SocketAddress, _ harness: LoopHarness, tls: TLSContext?,
                      serverName: String? = nil) async throws -> Result<[UInt8], any Error> {
        var c = testConfiguration()
        c.tls = try naming(tls, serverName)
        let client = try await RPCClient.connect(to: address, on: harness.loop, configuration: c)
        let result: Result<[UInt8], any Error>
        do {
            result = .success(try await withTimeout("a call") { try await client.send([1, 2, 3], timeout: .seconds(20)) })
        } catch {
            result = .failure(error)
        }
        await client.close()
        return result
    }

    /// Fails unless `result` failed with a reason containing `text`.
    private func assertFailed(_ result: Result<[UInt8], any Error>, containing text: String,
                              file: StaticString = #filePath, line: UInt = #line) {
        guard case .failure(let error) = result else { return XCTFail("the call succeeded", file: file, line: line) }
        XCTAssertTrue("\(error)".contains(text), "\(error)", file: file, line: line)
    }

    private func assertGoodClientServed(_ server: Server, _ harness: LoopHarness, _ certificates: TestCertificates,
                                        file: StaticString = #filePath, line: UInt = #line) async throws {
        let good = try await call(server.server.address, harness, tls: try certificates.clientContext())
        XCTAssertEqual(try good.get(), [1, 2, 3], "a good client is still served", file: file, line: line)
    }

    /// Waits (bounded) until the server logged a close containing `text`.
    private func waitForServerClose(_ server: Server, containing text: String) throws {
        do {
            try waitUntil("a server endpoint closed with '\(text)'") {
                server.closeReasons.withLock { $0.contains { $0.contains(text) } }
            }
        } catch { throw TestTimeout(what: "'\(text)' among \(server.closeReasons.withLock { $0 })") }
    }

    func testAnUntrustedServerIsRefusedByTheClientAndTheServerHearsWhy() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await server(harness, tls: try certificates.serverContext())
        let result = try await call(server.server.address, harness, tls: try certificates.clientContext(ca: certificates.otherCAFile))
        assertFailed(result, containing: "certificate verification failed: unable to get local issuer certificate")
        assertFailed(result, containing: "127.0.0.1:") // names the peer
        try waitForServerClose(server, containing: "unknown ca")
        try await assertGoodClientServed(server, harness, certificates)
        await server.server.stop()
    }

    func testANameMismatchAndAnExpiredCertificateAreRefused() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await server(harness, tls: try certificates.serverContext())
        let mismatch = try await call(server.server.address, harness, tls: try certificates.clientContext(),
                                      serverName: "example.org")
        assertFailed(mismatch, containing: "hostname mismatch")
        // By DNS name (with SNI), the certificate's name matches.
        let byName = try await call(server.server.address, harness, tls: try certificates.clientContext(), serverName: "localhost")
        XCTAssertEqual(try byName.get(), [1, 2, 3])
        try await assertGoodClientServed(server, harness, certificates)
        await server.server.stop()

        let expired = try await self.server(harness, tls: try certificates.serverContext(chain: certificates.expiredChain))
        let result = try await call(expired.server.address, harness, tls: try certificates.clientContext())
        assertFailed(result, containing: "certificate has expired")
        await expired.server.stop()
    }

    func testPlaintextToATLSPortAndTLSToAPlaintextPortFailWithAReason() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await server(harness, tls: try certificates.serverContext())
        // A plaintext efro.rpc client against the TLS port: the server names the wrong protocol.
        _ = try await call(server.server.address, harness, tls: nil)
        try waitForServerClose(server, containing: "TLS failed: handshake failed")
        try await assertGoodClientServed(server, harness, certificates)
        await server.server.stop()
        // A TLS client against a plaintext server: the client names it.
        let plain = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: harness.loop, handler: .async { request, _ in request.payload }).start()
        let result = try await call(plain.address, harness, tls: try certificates.clientContext())
        assertFailed(result, containing: "TLS failed: handshake failed")
        await plain.stop()
    }

    func testMutualTLSRequiresAClientCertificateAndHandlersSeeItsSubject() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        var c = testConfiguration()
        c.tls = try certificates.serverContext(requireClientCertificates: true)
        let reasons = LockedValue([String]())
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: c), on: harness.loop, handler: .callback { endpoint in
            endpoint.onClose = { reason in reasons.withLock { $0.append("\(reason)") } }
            endpoint.onMessage = { request in
                try request.respond(Array((request.peerCertificateSubject ?? "none").utf8))
            }
        }).start()
        let without = try await call(server.address, harness, tls: try certificates.clientContext())
        guard case .failure = without else { return XCTFail("a client without a certificate was served") }
        try waitUntil("the server refused the client without a certificate") {
            reasons.withLock { $0.contains { $0.contains("peer did not return a certificate") } }
        }
        let with = try await call(server.address, harness, tls: try certificates.clientContext(withCertificate: true))
        XCTAssertEqual(String(decoding: try with.get(), as: UTF8.self), "CN=client-1,O=UVRPC Tests")
        await server.stop()
    }

    func testTurningVerificationOffAcceptsAnyServerAndSaysSo() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await server(harness, tls: try certificates.serverContext(chain: certificates.expiredChain))
        var configuration = TLSConfiguration.client(trustRoots: .certificates(.file(certificates.otherCAFile)))
        configuration.verifiesPeer = false
        var c = testConfiguration()
        c.tls = try TLSContext(configuration)
        let log = LogRecorder()
        let client = try await RPCClient.connect(to: server.server.address, on: harness.loop, configuration: c, logger: log.logger)
        let answer = try await withTimeout("a call to an unchecked server") { try await client.send([7]) }
        XCTAssertEqual(answer, [7], "an expired certificate from an untrusted CA is accepted")
        XCTAssertTrue(log.contains("the server's certificate is not checked"), "\(log.messages.withLock { $0 })")
        await client.close()
        await server.server.stop()
    }

    func testACleanCloseSendsCloseNotifyAndTheServerSeesThePeerClose() async throws {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await server(harness, tls: try certificates.serverContext())
        try await assertGoodClientServed(server, harness, certificates) // closes with close()
        try waitForServerClose(server, containing: "closed by the peer")
        await server.server.stop()
    }

    func testAContextThatCannotLoadSaysWhat() throws {
        let certificates = try TestCertificates.get()
        XCTAssertThrowsError(try TLSContext(.server(certificateChain: .file("/nonexistent.pem"), privateKey: .file(certificates.serverKey)))) {
            XCTAssertTrue("\($0)".contains("loading the certificate chain from PEM file /nonexistent.pem"), "\($0)")
        }
        XCTAssertThrowsError(try TLSContext(.server(certificateChain: .file(certificates.serverChain), privateKey: .file(certificates.clientKey)))) {
            XCTAssertTrue("\($0)".contains("private key"), "\($0)")
        }
        XCTAssertThrowsError(try TLSContext(.client(trustRoots: .certificates(.text("not a certificate"))))) {
            XCTAssertTrue("\($0)".contains("no certificate found"), "\($0)")
        }
        // In-memory PEM works like files.
        let chain = try String(contentsOfFile: certificates.serverChain, encoding: .utf8)
        let key = try String(contentsOfFile: certificates.serverKey, encoding: .utf8)
        XCTAssertNoThrow(try TLSContext(.server(certificateChain: .text(chain), privateKey: .text(key))))
    }
}
