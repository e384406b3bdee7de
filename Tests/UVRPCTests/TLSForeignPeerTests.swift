import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// TLS against a foreign stack: Python's `ssl` module (OpenSSL underneath,
/// but its own record and handshake handling) as an efro.rpc peer written
/// from Docs/PROTOCOL.md (`Tests/Peers/efro_tls_peer.py`), in both roles.
final class TLSForeignPeerTests: XCTestCase {
    private var peerScript: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Peers/efro_tls_peer.py").path
    }

    private func python() throws -> URL { try python3() }

    /// Runs the peer script to completion (at most 60 s); returns its status and output.
    private func runPeer(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try runToCompletion(try python(), [peerScript] + arguments)
    }

    /// A reversing TLS server whose endpoints report how they closed.
    private func reversingServer(_ harness: LoopHarness, _ certificates: TestCertificates,
                                 closed: LockedValue<[String]>) async throws -> RunningServer {
        var c = testConfiguration()
        c.tls = try certificates.serverContext()
        return try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: c), on: harness.loop, handler: .callback { endpoint in
            endpoint.onClose = { reason in closed.withLock { $0.append("\(reason)") } }
            endpoint.asyncEndpoint.onMessage { request, _ in Array(request.payload.reversed()) }
        }).start()
    }

    /// Runs the Python client (with `extra` arguments) against a reversing
    /// TLS server; returns its run and how the server's endpoint closed.
    private func pythonClientRun(_ extra: [String]) async throws -> (run: (status: Int32, output: String), closed: String) {
        let certificates = try TestCertificates.get()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let closed = LockedValue([String]())
        let server = try await reversingServer(harness, certificates, closed: closed)
        guard case .ipv4(_, let port) = server.address else { throw TestTimeout(what: "an IPv4 address, not \(server.address)") }
        let run = try runPeer(["client", "127.0.0.1", "\(port)", certificates.caFile, "localhost"] + extra)
        try waitUntil("the server to see the end") { !closed.withLock { $0.isEmpty } }
        await server.stop()
        return (run, closed.withLock { $0 }.joined(separator: "; "))
    }

    func testAPythonSSLClientIsServedAndItsCloseNotifyIsACleanEnd() async throws {
        let (run, closed) = try await pythonClientRun([])
        XCTAssertEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("ok 3"), run.output)
        XCTAssertEqual(closed, "closed by the peer")
    }

    func testAStreamCutWithoutCloseNotifyIsNotACleanEnd() async throws {
        let (run, closed) = try await pythonClientRun(["truncate"])
        XCTAssertEqual(run.status, 0, run.output)
        XCTAssertTrue(closed.contains("without close_notify"), closed)
    }

    func testUVRPCClientAgainstAPythonSSLServer() async throws {
        let certificates = try TestCertificates.get()
        let peer = try ServeProcess(executable: try python(),
                                    arguments: [peerScript, "server", certificates.serverChain, certificates.serverKey])
        defer { _ = try? peer.stop() }
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        var c = testConfiguration()
        c.tls = try naming(certificates.clientContext(), "localhost")
        let client = try await RPCClient.connect(to: peer.address, on: harness.loop, configuration: c)
        for (i, size) in [3, 70_000, 5 << 20].enumerated() {
            let payload = pseudoRandomBytes(count: size, seed: UInt64(i + 40))
            let answer = try await withTimeout("a call of \(size) bytes") { try await client.send(payload) }
            XCTAssertEqual(answer, Array(payload.reversed()), "\(size) bytes")
        }
        let reason = await client.close()
        XCTAssertEqual(reason, .local)
        try peer.waitForOutput("served 3")
        // It ends by itself once it served the connection (stop()'s SIGTERM would race that exit).
        XCTAssertEqual(try peer.waitForExit(), 0, peer.stderr)
    }

    /// `uvrpc serve --tls-cert/--tls-key [--tls-client-ca]` and `uvrpc call --tls-ca ...`, as processes.
    func testTheToolServesAndCallsOverTLS() throws {
        let certificates = try TestCertificates.get()
        guard FileManager.default.isExecutableFile(atPath: uvrpcTool.path) else { throw XCTSkip("uvrpc is not built") }
        let server = try ServeProcess(tool: uvrpcTool, ["--tls-cert", certificates.serverChain, "--tls-key", certificates.serverKey,
                                                        "--tls-client-ca", certificates.caFile])
        defer { _ = try? server.stop() }
        let good = try runTool(["call", "--connect", "\(server.address)", "--count", "300", "--size", "70000",
                                "--concurrency", "8", "--tls-ca", certificates.caFile, "--tls-server-name", "localhost",
                                "--tls-cert", certificates.clientChain, "--tls-key", certificates.clientKey])
        XCTAssertEqual(good.status, 0, good.output)
        XCTAssertTrue(good.output.contains("ok: 300, mismatched: 0, failed: 0"), good.output)
        let untrusted = try runTool(["call", "--connect", "\(server.address)", "--count", "1", "--tls-ca", certificates.otherCAFile])
        // The TCP connect succeeds and the TLS handshake fails just after: as a connection that
        // could not be made (3) or as the call it failed (1), whichever the tool sees first.
        XCTAssertTrue([1, 3].contains(untrusted.status), untrusted.output)
        XCTAssertTrue(untrusted.output.contains("TLS failed: handshake failed: certificate verification failed"), untrusted.output)
        let noCertificate = try runTool(["call", "--connect", "\(server.address)", "--count", "1", "--tls-ca", certificates.caFile])
        // The server refuses it after the TLS handshake: seen as either, as above (a fresh-clone run saw 3).
        XCTAssertTrue([1, 3].contains(noCertificate.status), noCertificate.output)
        XCTAssertTrue(noCertificate.output.contains("TLS failed"), noCertificate.output)
        let badFlags = try runTool(["call", "--connect", "\(server.address)", "--tls-cert", certificates.clientChain])
        XCTAssertEqual(badFlags.status, 64, badFlags.output)
        XCTAssertEqual(try server.stop(), 0)
    }
}

/// The python3 that runs the test peers of `Tests/Peers`; skips the test when there is none.
func python3() throws -> URL {
    for path in ["/usr/bin/python3", "/usr/local/bin/python3"] where FileManager.default.isExecutableFile(atPath: path) {
        return URL(fileURLWithPath: path)
    }
    throw XCTSkip("python3 is not installed")
}
