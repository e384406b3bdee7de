import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Host names end to end, in a private network and mount namespace
/// (`unshare -mn`): the test's own /etc/hosts and /etc/resolv.conf, a
/// `uvrpc serve` on 127.0.0.2, and `uvrpc call --connect NAME:PORT`.
/// Nothing reaches a real network or DNS server.
final class NameResolutionTests: XCTestCase {
    func testTheToolConnectsByNameAndNamesAHostThatDoesNotResolve() throws {
        guard FileManager.default.isExecutableFile(atPath: uvrpcTool.path) else {
            throw XCTSkip("\(uvrpcTool.path) is not built (make test builds it)")
        }
        guard geteuid() == 0, runToCompletionQuietly("/usr/bin/unshare", ["-mn", "true"]) == 0 else {
            throw XCTSkip("private network and mount namespaces (unshare -mn, as root) are not available here")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("uvrpc-names-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try "127.0.0.1 localhost\n127.0.0.2 uvrpc-test-server\n".write(to: directory.appendingPathComponent("hosts"), atomically: true, encoding: .utf8)
        // A name server nobody answers at: in the new namespace only lo exists, so a query fails at once.
        try "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n".write(to: directory.appendingPathComponent("resolv.conf"),
                                                                        atomically: true, encoding: .utf8)
        let script = """
        set -u
        ip link set lo up
        mount --bind "$1/hosts" /etc/hosts
        mount --bind "$1/resolv.conf" /etc/resolv.conf
        mkfifo "$1/out"
        "$2" serve --host 127.0.0.2 --port 0 > "$1/out" 2>&1 &
        server=$!
        exec 3< "$1/out"
        read -t 20 line <&3 || { echo "no listening line"; kill $server; exit 1; }
        port=${line##*:}
        "$2" call --connect uvrpc-test-server:$port --count 3 --size 16
        echo "by name: $?"
        "$2" call --connect uvrpc-no-such-host:$port --count 1
        echo "missing: $?"
        kill $server
        wait $server
        """
        let (status, output) = try runToCompletion(URL(fileURLWithPath: "/usr/bin/unshare"),
                                                   ["-mn", "bash", "-c", script, "bash", directory.path, uvrpcTool.path],
                                                   seconds: 60)
        XCTAssertEqual(status, 0, output) // the server drained at SIGTERM
        XCTAssertTrue(output.contains("by name: 0"), output)
        XCTAssertTrue(output.contains("missing: 1") || output.contains("missing: 3"), output)
        XCTAssertTrue(output.contains("cannot resolve host \"uvrpc-no-such-host\""), output)
    }
}

extension NameResolutionTests {
    /// Tests/Peers/dns_pool_check.py in a private namespace: a real DNS
    /// server whose answers change, three servers on 127.0.0.2-4, and a pool
    /// (uvrpc-pool-probe) that spreads over every address of the name,
    /// follows one added and one removed, and keeps its last answer when the
    /// DNS server goes away.
    func testAPoolFollowsANameThroughARealDNSServer() throws {
        let probe = uvrpcTool.deletingLastPathComponent().appendingPathComponent("uvrpc-pool-probe")
        guard FileManager.default.isExecutableFile(atPath: uvrpcTool.path), FileManager.default.isExecutableFile(atPath: probe.path) else {
            throw XCTSkip("uvrpc or uvrpc-pool-probe is not built (make test builds them)")
        }
        guard geteuid() == 0, runToCompletionQuietly("/usr/bin/unshare", ["-mn", "true"]) == 0 else {
            throw XCTSkip("private network and mount namespaces (unshare -mn, as root) are not available here")
        }
        guard runToCompletionQuietly("/usr/bin/env", ["python3", "-c", "import dnslib"]) == 0 else {
            throw XCTSkip("the Python package dnslib is not installed (scripts/bootstrap.sh installs it with pip)")
        }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Peers/dns_pool_check.py")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("uvrpc-dns-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let (status, output) = try runToCompletion(URL(fileURLWithPath: "/usr/bin/unshare"),
                                                   ["-mn", "python3", script.path, uvrpcTool.path, probe.path, directory.path],
                                                   seconds: 120)
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("dns check: all ok"), output)
    }
}

/// The exit status of `executable` run with `arguments`, its output discarded (-1 when it cannot start).
private func runToCompletionQuietly(_ executable: String, _ arguments: [String]) -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    guard (try? startChild(process)) != nil else { return -1 }
    process.waitUntilExit()
    return process.terminationStatus
}
