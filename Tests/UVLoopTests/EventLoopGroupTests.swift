import CLibUV
import Dispatch
import Foundation
import Synchronization
import UVLoop
import UVTestSupport
import XCTest

/// The name of the calling thread, as the kernel keeps it.
private func currentThreadName() -> String {
    var name = [CChar](repeating: 0, count: 32)
    uvrpc_get_thread_name(&name)
    return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Records, for each accepted connection, the name of the loop it was accepted on.
private final class AcceptLog: Sendable {
    private let names = LockedValue<[String]>([])
    private let arrived = DispatchSemaphore(value: 0)

    func record(_ connection: Connection) {
        let loop = EventLoop.current
        XCTAssertTrue(loop === connection.loop, "onAccept runs on the connection's own loop")
        names.withLock { $0.append(loop?.name ?? "no loop") }
        arrived.signal()
    }

    /// Waits for `count` more connections (20 s at most).
    func wait(for count: Int) throws {
        for _ in 0..<count {
            guard arrived.wait(timeout: .now() + 20) == .success else { throw TestTimeout(what: "\(count) accepted connections") }
        }
    }

    var perLoop: [String: Int] { names.withLock { Dictionary($0.map { ($0, 1) }, uniquingKeysWith: +) } }
}

/// Client connections made on a loop of their own, closed together at the end.
private final class Clients: Sendable {
    let harness: LoopHarness
    private let connections = LockedValue<[LoopBound<Connection>]>([])
    let ended = LockedValue<[ConnectionError?]>([])

    init() throws { harness = try LoopHarness("clients") }

    /// Connects `count` clients to `address` and waits until each connected.
    func connect(_ count: Int, to address: SocketAddress) throws {
        let loop = harness.loop
        let done = DispatchSemaphore(value: 0)
        try harness.sync {
            for _ in 0..<count {
                loop.connect(to: address) { result in
                    switch result {
                    case .success(let connection):
                        connection.onRead = { $0.count }
                        connection.onClose = { [self] error in ended.withLock { $0.append(error) } }
                        self.connections.withLock { $0.append(LoopBound(connection, loop: loop)) }
                    case .failure(let error):
                        XCTFail("connect failed: \(error)")
                    }
                    done.signal()
                }
            }
        }
        for _ in 0..<count {
            guard done.wait(timeout: .now() + 20) == .success else { throw TestTimeout(what: "\(count) client connects") }
        }
    }

    func closeAll() throws {
        let all = connections.withLock { $0 }
        try harness.sync { for connection in all { connection.value.close() } }
    }
}

/// A group listening on loopback with `spread`, clients on a loop of their
/// own, and a log of where connections landed.
private struct GroupFixture {
    let group: EventLoopGroup
    let listener: GroupListener
    let clients: Clients
    let log = AcceptLog()

    init(_ name: String, loops: Int = 2, spread: ConnectionSpread,
         address: SocketAddress = .ipv4(host: "127.0.0.1", port: 0)) async throws {
        group = try EventLoopGroup(name: name, loopCount: loops)
        clients = try Clients()
        let log = self.log
        listener = try await group.listen(on: address, spread: spread) { log.record($0) }
    }

    /// Closes the listener (waiting until no connection can arrive), the
    /// clients, and every loop (asserting `uv_loop_close` returned 0).
    func finish(file: StaticString = #filePath, line: UInt = #line) async throws {
        listener.close()
        try await listener.closed()
        try clients.closeAll()
        clients.harness.shutdownCleanly(file: file, line: line)
        let status = await group.shutdown()
        XCTAssertEqual(status, 0, file: file, line: line)
    }
}

final class EventLoopGroupTests: XCTestCase {
    func testLoopsRunOnNamedThreadsKnowWhereTheyAreAndShutDownCleanly() throws {
        let group = try EventLoopGroup(name: "grp", loopCount: 3)
        XCTAssertEqual(group.loops.map(\.name), ["grp-0", "grp-1", "grp-2"])
        XCTAssertNil(EventLoop.current, "the test thread runs no loop")
        XCTAssertNil(group.current)
        for loop in group.loops {
            let seen = Promise<(String, Bool, Bool)>()
            loop.execute {
                seen.fulfill((currentThreadName(), EventLoop.current === loop, group.current === loop))
            }
            let (thread, current, groupCurrent) = try seen.wait("a job on \(loop.name)")
            XCTAssertEqual(thread, loop.name, "each loop runs on a thread named after it")
            XCTAssertTrue(current, "EventLoop.current is the running loop")
            XCTAssertTrue(groupCurrent, "the group knows which of its loops runs the caller")
        }
        // next() goes round robin, from any thread.
        let picked = (0..<6).map { _ in group.next().name }
        XCTAssertEqual(Set(picked.prefix(3)), Set(["grp-0", "grp-1", "grp-2"]))
        XCTAssertEqual(Array(picked.prefix(3)), Array(picked.suffix(3)))
        XCTAssertEqual(group.syncShutdown(timeout: .seconds(20)), 0, "every loop's uv_loop_close returned 0")
        for loop in group.loops { XCTAssertEqual(loop.loopCloseStatus, 0) }
    }

    func testDefaultLoopCountIsTheCPUsThisProcessMayUseAndPinningLeavesEachLoopOneCPU() throws {
        let cpus = EventLoopGroup.availableCPUCount
        XCTAssertGreaterThanOrEqual(cpus, 1)
        XCTAssertLessThanOrEqual(cpus, ProcessInfo.processInfo.processorCount)
        let group = try EventLoopGroup(name: "pinned", pinsThreads: true)
        defer { XCTAssertEqual(group.syncShutdown(timeout: .seconds(20)), 0) }
        XCTAssertEqual(group.loops.count, cpus)
        for loop in group.loops {
            let allowed = Promise<Int32>()
            loop.execute { allowed.fulfill(uvrpc_available_cpus()) }
            XCTAssertEqual(try allowed.wait("affinity of \(loop.name)"), 1, "\(loop.name) is pinned to one CPU")
        }
    }

    func testRoundRobinSpreadsConnectionsEvenlyOverTheLoops() async throws {
        let fixture = try await GroupFixture("rr", spread: .roundRobin)
        XCTAssertEqual(fixture.listener.spread, .roundRobin)
        XCTAssertNotEqual(fixture.listener.address.port, 0)
        try fixture.clients.connect(64, to: fixture.listener.address)
        try fixture.log.wait(for: 64)
        XCTAssertEqual(fixture.log.perLoop, ["rr-0": 32, "rr-1": 32], "round robin hands out connections in turn")
        try await fixture.finish()
    }

    func testReusePortGivesEachLoopItsOwnSocketOnOnePort() async throws {
        let fixture = try await GroupFixture("rp", spread: .reusePort)
        XCTAssertEqual(fixture.listener.spread, .reusePort)
        try fixture.clients.connect(64, to: fixture.listener.address)
        try fixture.log.wait(for: 64)
        let perLoop = fixture.log.perLoop
        XCTAssertEqual(perLoop.values.reduce(0, +), 64)
        // The kernel hashes source ports over the two sockets: all 64 on one would be a 1 in 2^63 chance.
        XCTAssertEqual(Set(perLoop.keys), ["rp-0", "rp-1"], "connections landed on every loop: \(perLoop)")
        try await fixture.finish()
    }

    func testAUnixSocketServerSpreadsRoundRobinAndRefusesReusePortClearly() async throws {
        let path = "/tmp/uvloop-group-\(getpid()).sock"
        let fixture = try await GroupFixture("ux", spread: .roundRobin, address: .unix(path: path))
        do {
            _ = try await fixture.group.listen(on: .unix(path: path + "-2"), spread: .reusePort) { _ in }
            XCTFail("reuse-port on a Unix socket must fail")
        } catch {
            XCTAssertTrue("\(error)".contains("round robin"), "\(error)")
        }
        try fixture.clients.connect(8, to: fixture.listener.address)
        try fixture.log.wait(for: 8)
        XCTAssertEqual(fixture.log.perLoop, ["ux-0": 4, "ux-1": 4])
        try await fixture.finish()
        XCTAssertFalse(FileManager.default.fileExists(atPath: path), "closing removes the socket path")
    }

    func testADescriptorHandedToAClosedLoopIsClosedNotLeaked() async throws {
        let fixture = try await GroupFixture("gone", spread: .roundRobin)
        let (group, clients, log, listener) = (fixture.group, fixture.clients, fixture.log, fixture.listener)
        XCTAssertEqual(group.loops[1].syncShutdown(timeout: .seconds(20)), 0)
        let before = ProcessFigures.openSockets()
        try clients.connect(10, to: listener.address)
        try log.wait(for: 5) // the five handed to the live loop
        // The five handed to the closed loop were closed: their clients see the end.
        try waitUntil("five clients to see their connection closed") { clients.ended.withLock { $0.count } == 5 }
        XCTAssertEqual(log.perLoop, ["gone-0": 5])
        try clients.closeAll()
        try waitUntil("every socket to be released") { ProcessFigures.openSockets() == before }
        try await fixture.finish() // the closed loop's part of the listener counts as closed
    }

    func testADescriptorHandedToALoopInTheMiddleOfItsShutdownIsClosed() async throws {
        let fixture = try await GroupFixture("mid", spread: .roundRobin)
        let (group, clients, log, listener) = (fixture.group, fixture.clients, fixture.log, fixture.listener)
        let before = ProcessFigures.openSockets()
        try clients.connect(1, to: listener.address) // A: loop 0
        try log.wait(for: 1)
        // Hold loop 1 inside a job, and ask it to shut down meanwhile.
        let holding = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        group.loops[1].execute {
            holding.signal()
            release.wait()
        }
        holding.wait()
        group.loops[1].beginShutdown()
        try clients.connect(1, to: listener.address) // B: handed to loop 1, queued behind the held job
        try clients.connect(1, to: listener.address) // C: loop 0, accepted after B was handed off
        try log.wait(for: 1)
        release.signal() // loop 1 begins its shutdown, then meets B's descriptor
        XCTAssertEqual(group.loops[1].syncShutdown(timeout: .seconds(20)), 0)
        try waitUntil("B to see its connection closed") { clients.ended.withLock { $0.count } == 1 }
        XCTAssertEqual(log.perLoop, ["mid-0": 2], "B never became a connection of loop 1")
        try clients.closeAll()
        try waitUntil("every socket to be released") { ProcessFigures.openSockets() == before }
        try await fixture.finish()
    }
}
