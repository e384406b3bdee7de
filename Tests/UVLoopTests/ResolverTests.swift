import Foundation
@testable import UVLoop
import UVTestSupport
import XCTest

/// Host names: parsing, resolving on the loop (getaddrinfo on libuv's
/// thread pool), and connecting by name.
final class ResolverTests: XCTestCase {
    func testNamesAndNumbersAreToldApartWhenParsed() {
        XCTAssertEqual(SocketAddress(parsing: "127.0.0.1:80"), .ipv4(host: "127.0.0.1", port: 80))
        XCTAssertEqual(SocketAddress(parsing: "[::1]:80"), .ipv6(host: "::1", port: 80))
        XCTAssertEqual(SocketAddress(parsing: "localhost:80"), .ipv4(host: "127.0.0.1", port: 80))
        XCTAssertEqual(SocketAddress(parsing: "db.internal:9000"), .name(host: "db.internal", port: 9000))
        XCTAssertEqual(SocketAddress(parsing: "db.internal:9000")?.description, "db.internal:9000")
        XCTAssertEqual(SocketAddress(parsing: "999.1.1.1:80"), .name(host: "999.1.1.1", port: 80), "not an IPv4 address: a name")
        XCTAssertTrue(SocketAddress.ipv6(host: "::1", port: 1).isNumeric)
        XCTAssertFalse(SocketAddress.ipv4(host: "db", port: 1).isNumeric, "a name, however it was made")
        XCTAssertTrue(SocketAddress.unix(path: "/tmp/s").isNumeric)
    }

    func testANumericHostIsReturnedWithoutALookup() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let v4 = try await harness.loop.resolve(host: "127.0.0.1", port: 7)
        XCTAssertEqual(v4, [.ipv4(host: "127.0.0.1", port: 7)])
        let v6 = try await harness.loop.resolve(host: "::1", port: 7)
        XCTAssertEqual(v6, [.ipv6(host: "::1", port: 7)])
    }

    /// A name this machine's /etc/hosts maps (the resolver reads it before any DNS).
    private func nameFromHostsFile() throws -> (name: String, address: String) {
        let text = (try? String(contentsOfFile: "/etc/hosts", encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard words.count >= 2, !words[0].hasPrefix("#"), words[0].hasPrefix("127.") else { continue }
            if let name = words.dropFirst().first(where: { $0 != "localhost" && !$0.hasPrefix("#") }) { return (name, words[0]) }
        }
        throw XCTSkip("/etc/hosts maps no name but localhost to a loopback address (the namespace test in ToolTests still runs)")
    }

    func testANameIsResolvedAndConnectedToByName() async throws {
        let (name, address) = try nameFromHostsFile()
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let found = try await harness.loop.resolve(host: name, port: 9)
        XCTAssertTrue(found.contains(.ipv4(host: address, port: 9)), "\(name) -> \(found)")
        // Connect by name to a listener on that address.
        let loop = harness.loop
        let listening = try harness.sync {
            try loop.listen(on: .ipv4(host: address, port: 0)) { $0.close() }.address
        }
        let connected = Promise<Result<String, ConnectError>>()
        try harness.sync {
            loop.connect(to: .name(host: name, port: listening.port!)) { result in
                connected.fulfill(result.map { "\($0.remoteAddress.map { "\($0)" } ?? "?")" })
            }
        }
        XCTAssertEqual(try connected.wait("connect by name").get(), "\(address):\(listening.port!)")
    }
}
