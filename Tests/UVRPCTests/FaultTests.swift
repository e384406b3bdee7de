import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Peers that stall, trickle, vanish or churn (issue 6's first steps).
final class FaultTests: XCTestCase {
    func testAHandshakeThatNeverCompletesIsClosedByTheHandshakeTimeout() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let configuration = testConfiguration { $0.handshakeTimeout = .milliseconds(300) }
        let reason = Promise<RPCCloseReason>()
        let start = monotonicMilliseconds()
        let server = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: configuration), on: loop, handler: .callback {
            $0.onClose = { reason.fulfill($0) }
        }).startAndWait()
        try harness.sync {
            // Half a handshake, then silence (keepalive timeout is 10 s, so only the handshake timeout can fire).
            loop.connect(to: server.address) { result in
                guard case .success(let peer) = result else { return XCTFail("\(result)") }
                peer.onRead = { $0.count }
                try? peer.write([0, 0, 0, 17, 0x7b])
            }
        }
        XCTAssertEqual(try reason.wait("handshake timeout", seconds: 30), .handshakeTimeout(.milliseconds(300)))
        XCTAssertGreaterThanOrEqual(monotonicMilliseconds() - start, 290, "not before the timeout")
    }

    func testAWholeSessionDeliveredOneByteAtATimeIsAnsweredCorrectly() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        var stream = PeerInfo(keepaliveInterval: 10).handshakeBytes
        var expected: [UInt8] = []
        for i in 0..<5 {
            let payload = [UInt8](repeating: UInt8(i), count: i * 7)
            stream += PacketWriter.frame(isResponse: false, id: UInt16(i), payload: payload)
            expected += PacketWriter.frame(isResponse: true, id: UInt16(i), payload: payload.reversed())
        }
        let answers = Promise<[UInt8]>()
        let (session, answerBytes) = (stream, expected)
        // Keepalives every 10 s: none lands between the answers of this short session.
        let quiet = testConfiguration(keepaliveInterval: .seconds(10))
        let server = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: quiet), on: loop, handler: .callback {
            $0.onMessage = reversing
        }).startAndWait()
        try harness.sync {
            let stream = session, expected = answerBytes
            loop.connect(to: server.address) { result in
                guard case .success(let peer) = result else { return XCTFail("\(result)") }
                var received: [UInt8] = []
                let handshakeSize = PeerInfo(keepaliveInterval: 10, extensions: .all, maximumPayloadSize: 64 << 20).handshakeBytes.count
                peer.onRead = { bytes in
                    received += Array(bytes)
                    // Skip the server's handshake and any keepalives in front of the answers.
                    let body = Array(received.dropFirst(handshakeSize)).drop { $0 == 1 }
                    if body.count >= expected.count { answers.fulfill(Array(body.prefix(expected.count))) }
                    return bytes.count
                }
                // One byte per loop turn (a 1 ms timer per byte), so each arrives in its own read.
                var index = 0
                let timerBox = LoopBoundBox<LoopTimer?>(nil, loop: loop)
                timerBox.value = loop.scheduleTimer(after: .milliseconds(1), repeating: .milliseconds(1)) {
                    guard index < stream.count else { timerBox.value?.cancel(); return }
                    try? peer.write([stream[index]])
                    index += 1
                }
            }
        }
        XCTAssertEqual(try answers.wait("answers to a trickled session", seconds: 60), expected)
    }

    func testAPeerResetWithAThousandCallsInFlightFailsEveryOneQuickly() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let held = LoopBoundBox.sendingValue([RPCRequest](), loop: loop)
        let allHeld = Promise<Void>()
        let pair = try harness.endpointPair(serverHandler: { request in
            held.value.append(request)
            if held.value.count == 1000 { allHeld.fulfill(()) }
        })
        let outcomes = Promise<[String]>()
        try harness.sync {
            let results = LoopBoundBox([String](), loop: loop)
            for i in 0..<1000 {
                pair.client.value.send([UInt8(i & 0xff)]) { result in
                    results.value.append("\(result)")
                    if results.value.count == 1000 { outcomes.fulfill(results.value) }
                }
            }
        }
        _ = try allHeld.wait("1000 calls in flight")
        try harness.sync { pair.server.value.connection.abort() } // RST, as a killed process's socket
        // Ended by the reset itself: the keepalive timeout (10 s) and the calls' timeouts (20 s) are far off.
        let results = try outcomes.wait("every pending call to end", seconds: 9)
        XCTAssertEqual(results.filter { $0.contains("reset by the peer") }.count, 1000, results.first ?? "")
        XCTAssertEqual(try pair.clientClosed.wait("client close"), .reset)
    }

    private func openDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
    }

    func testConnectionChurnReleasesEveryDescriptor() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let cycles = 10_000
        let serverSideClosed = Promise<Void>()
        let closes = LoopBoundBox.sendingValue(0, loop: loop)
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                    on: loop, handler: .callback {
            $0.onMessage = reversing
            $0.onClose = { _ in
                closes.value += 1
                if closes.value == cycles { serverSideClosed.fulfill(()) }
            }
        }).startAndWait().address
        let before = openDescriptors()
        let rssBefore = ProcessFigures.residentBytes() ?? 0
        let done = Promise<Int>()
        try harness.sync {
            let completed = LoopBoundBox(0, loop: loop)
            let started = LoopBoundBox(0, loop: loop)
            func cycle() {
                guard started.value < cycles else { return }
                started.value += 1
                RPCClient.connect(to: address, on: loop, configuration: testConfiguration()) { result in
                    guard case .success(let client) = result else { return XCTFail("\(result)") }
                    // Connect, handshake (one call proves it), close.
                    client.send([1, 2]) { _ in
                        client.onClose = { _ in
                            completed.value += 1
                            if completed.value == cycles { done.fulfill(completed.value) } else { cycle() }
                            // (cycle() starts nothing once `cycles` were started.)
                        }
                        client.close()
                    }
                }
            }
            for _ in 0..<4 { cycle() } // four at a time
        }
        XCTAssertGreaterThanOrEqual(try done.wait("\(cycles) connect/handshake/close cycles", seconds: 120), cycles)
        // The server side closes on each client's EOF.
        _ = try serverSideClosed.wait("the server side of every connection to close")
        XCTAssertLessThanOrEqual(openDescriptors(), before + 4, "descriptors return to the baseline")
        let rssAfter = ProcessFigures.residentBytes() ?? 0
        if sanitizerInUse == nil {
            XCTAssertLessThan(rssAfter - rssBefore, 8 << 20, "resident memory returns near the baseline")
        }
        print("churn: \(cycles) cycles; descriptors \(before) -> \(openDescriptors()); RSS \(rssBefore >> 10) -> \(rssAfter >> 10) KiB")
    }
}
