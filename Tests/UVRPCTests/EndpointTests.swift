import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// The reference's own endpoint scenarios, over loopback.
final class EndpointTests: XCTestCase {
    func testSimpleMessagesBothWaysIncludingFiveMiB() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let pair = try harness.endpointPair()
        let sizes = [0, 1, 2, 100, 65535, 65536, 70000, 5 << 20]
        for (i, size) in sizes.enumerated() {
            let payload = pseudoRandomBytes(count: size, seed: UInt64(i + 1))
            XCTAssertEqual(try harness.call(pair.client, payload).get(), payload.reversed(), "client -> server, \(size) bytes")
            XCTAssertEqual(try harness.call(pair.server, payload).get(), payload.reversed(), "server -> client, \(size) bytes")
        }
        XCTAssertEqual(try harness.sync { pair.client.value.inFlightCount + pair.server.value.inFlightCount }, 0)
    }

    func testBigSendRightAfterConnectWaitsForThePeersHandshake() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let payload = pseudoRandomBytes(count: 1 << 20, seed: 5)
        let done = Promise<Result<[UInt8], RPCError>>()
        let server = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                   on: loop, handler: .callback { $0.onMessage = reversing }).startAndWait()
        try harness.sync {
            RPCClient.connect(to: server.address, on: loop, configuration: testConfiguration()) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                XCTAssertNil(client.peerInfo, "the peer's handshake cannot have arrived yet")
                client.send(payload) { done.fulfill($0) }
            }
        }
        XCTAssertEqual(try done.wait("big send").get(), payload.reversed())
    }

    /// Six slow messages each way are handled at once: every handler keeps
    /// its request unanswered until all twelve have arrived, which can only
    /// happen if an unanswered request holds up no other (else this waits forever).
    func testSixSlowMessagesEachWayAreAllInFlightAtOnce() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let kept = try harness.sync { LoopBoundBox([(RPCRequest, [UInt8])](), loop: loop) }
        let slow: @Sendable (RPCRequest) throws -> Void = { request in
            kept.value.append((request, Array(request.payload.reversed())))
            guard kept.value.count == 12 else { return }
            for (request, answer) in kept.value { try request.respond(answer) }
        }
        let pair = try harness.endpointPair(serverHandler: slow, clientHandler: slow)
        let done = Promise<Int>()
        try harness.sync {
            let ok = LoopBoundBox(0, loop: loop)
            let failed = LoopBoundBox(0, loop: loop)
            for i in 0..<12 {
                let endpoint = i % 2 == 0 ? pair.client.value : pair.server.value
                let payload: [UInt8] = [UInt8(i), 1, 2]
                endpoint.send(payload) { result in
                    if (try? result.get()) == payload.reversed() { ok.value += 1 } else { failed.value += 1 }
                    if ok.value + failed.value == 12 { done.fulfill(ok.value) }
                }
            }
        }
        XCTAssertEqual(try done.wait("twelve messages in flight at once"), 12)
    }

    func testKeepaliveTimeoutClosesWhenThePeerSendsNoKeepalives() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        var silent = testConfiguration()
        silent.sendsKeepalives = false
        let watchful = testConfiguration(keepaliveInterval: .milliseconds(100), keepaliveTimeout: .milliseconds(500))
        let start = monotonicMilliseconds()
        let pair = try harness.endpointPair(server: watchful, client: silent)
        let reason = try pair.serverClosed.wait("keepalive timeout", seconds: 30)
        let elapsed = monotonicMilliseconds() - start
        XCTAssertEqual(reason, .keepaliveTimeout(.milliseconds(500)))
        XCTAssertGreaterThanOrEqual(elapsed, 450, "not before the timeout")
        XCTAssertEqual(try pair.clientClosed.wait("client sees the close"), .peerClosed)
    }

    func testNoKeepaliveTimeoutWhileKeepalivesFlow() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let config = testConfiguration(keepaliveInterval: .milliseconds(50), keepaliveTimeout: .milliseconds(600))
        let pair = try harness.endpointPair(server: config, client: config)
        let loop = harness.loop
        let later = Promise<(Bool, Bool)>()
        try harness.sync {
            _ = loop.scheduleTimer(after: .milliseconds(2400)) {
                later.fulfill((pair.server.value.isClosing, pair.client.value.isClosing))
            }
        }
        let (serverClosing, clientClosing) = try later.wait("four keepalive timeouts later")
        XCTAssertFalse(serverClosing)
        XCTAssertFalse(clientClosing)
        XCTAssertFalse(pair.serverClosed.isFulfilled)
    }

    func testMessageTimeoutWithCloseOnErrorFalseThenTrue() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let held = LoopBoundBox.sendingValue([RPCRequest](), loop: loop)
        // Answers "echo" at once; holds every other message unanswered.
        let pair = try harness.endpointPair(serverHandler: { request in
            let payload = request.payload
            if Array(payload) == Array("echo".utf8) { try request.respond(Array(payload)) } else { held.value.append(request) }
        })
        let first = try harness.call(pair.client, [1], timeout: .milliseconds(200), closeOnError: false)
        guard case .failure(let error) = first, case .timedOut(_, let id, let timeout) = error.reason else {
            return XCTFail("expected a timeout, got \(first)")
        }
        XCTAssertEqual(id, 65530, "the first id is the reference's 65530")
        XCTAssertEqual(timeout, .milliseconds(200), "the error names the call's own timeout")
        XCTAssertFalse(try harness.sync { pair.client.value.isClosing }, "closeOnError false keeps the endpoint up")
        XCTAssertEqual(try harness.call(pair.client, Array("echo".utf8)).get(), Array("echo".utf8))

        let second = try harness.call(pair.client, [2], timeout: .milliseconds(200), closeOnError: true)
        guard case .failure(let error) = second, error.code == .deadlineExceeded else { return XCTFail("expected a timeout, got \(second)") }
        let reason = try pair.clientClosed.wait("close on error")
        guard case .callFailed(let failed) = reason.kind, failed.code == .deadlineExceeded else { return XCTFail("expected callFailed(timedOut), got \(reason)") }
        XCTAssertEqual(try pair.serverClosed.wait("peer closed"), .peerClosed)
    }

    func testLateResponseAfterTimeoutIsIgnored() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let pair = try harness.endpointPair(serverHandler: { request in
            let payload = request.payload
            let answer = Array(payload)
            if answer == [0] {
                _ = loop.scheduleTimer(after: .milliseconds(300)) { try? request.respond(answer) }
            } else {
                try request.respond(answer)
            }
        })
        let late = try harness.call(pair.client, [0], timeout: .milliseconds(100), closeOnError: false)
        guard case .failure(let error) = late, error.code == .deadlineExceeded else { return XCTFail("expected a timeout, got \(late)") }
        let waited = Promise<Int>()
        try harness.sync { _ = loop.scheduleTimer(after: .milliseconds(400)) { waited.fulfill(pair.client.value.inFlightCount) } }
        XCTAssertEqual(try waited.wait("the late response"), 0)
        XCTAssertEqual(try harness.call(pair.client, [7]).get(), [7], "the endpoint still works")
        XCTAssertFalse(pair.clientClosed.isFulfilled)
    }

    func testPeerClosingMidCallFailsEveryPendingCall() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let held = LoopBoundBox.sendingValue([RPCRequest](), loop: loop)
        let pair = try harness.endpointPair(serverHandler: { request in held.value.append(request) })
        let outcomes = Promise<[String]>()
        try harness.sync {
            let results = LoopBoundBox([String](), loop: loop)
            for i in 0..<10 {
                pair.client.value.send([UInt8(i)]) { result in
                    results.value.append("\(result)")
                    if results.value.count == 10 { outcomes.fulfill(results.value) }
                }
            }
            // Once the server has every message, it goes away.
            _ = loop.scheduleTimer(after: .milliseconds(100)) {
                XCTAssertEqual(held.value.count, 10)
                pair.server.value.close()
            }
        }
        let results = try outcomes.wait("pending calls to end", seconds: 10)
        XCTAssertEqual(results.count, 10)
        for r in results { XCTAssertTrue(r.contains("closed") && r.contains("closed by the peer"), r) }
        XCTAssertEqual(try pair.clientClosed.wait("client close"), .peerClosed)
        XCTAssertEqual(try pair.serverClosed.wait("server close"), .local)
        // The server's held requests now refuse to answer.
        let refused = try harness.sync { () -> String in
            do { try held.value[0].respond([1]); return "answered" } catch { return "\(error)" }
        }
        XCTAssertTrue(refused.contains("closed"), refused)
    }

    func testClosingLocallyFailsPendingCallsAndLaterSends() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let held = LoopBoundBox.sendingValue([RPCRequest](), loop: loop)
        let pair = try harness.endpointPair(serverHandler: { request in held.value.append(request) })
        let outcome = Promise<(pending: String, after: String, inFlight: Int)>()
        try harness.sync {
            let client = pair.client.value
            client.send([1]) { pending in
                client.send([2]) { after in
                    outcome.fulfill(("\(pending)", "\(after)", client.inFlightCount))
                }
            }
            client.close()
            client.close() // idempotent
        }
        let result = try outcome.wait("local close")
        XCTAssertTrue(result.pending.contains("(wire id 65530)") && result.pending.contains("closed locally"), result.pending)
        XCTAssertTrue(result.after.contains("closed"), result.after)
        XCTAssertEqual(result.inFlight, 0)
        XCTAssertEqual(try pair.clientClosed.wait("client close"), .local)
        XCTAssertEqual(try pair.serverClosed.wait("server close"), .peerClosed)
    }

    func testAThrowingOrSilentHandlerSendsNoResponseToAPeerWithoutErrorAnswers() throws {
        struct Refused: Error {}
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        // A client that announces no extension is answered as the reference answers.
        let pair = try harness.endpointPair(client: testConfiguration { $0.extensions = [] }, serverHandler: { request in
            let payload = request.payload
            switch payload.first {
            case 0: throw Refused()
            case 1: return // drops the request unanswered
            default: try request.respond(Array(payload))
            }
        })
        for first: UInt8 in [0, 1] {
            let r = try harness.call(pair.client, [first], timeout: .milliseconds(200), closeOnError: false)
            guard case .failure(let error) = r, error.code == .deadlineExceeded else { return XCTFail("expected a timeout for \(first), got \(r)") }
        }
        XCTAssertEqual(try harness.call(pair.client, [2]).get(), [2])
    }

    func testAnsweringTwiceIsRefused() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let second = Promise<String>()
        let pair = try harness.endpointPair(serverHandler: { request in
            let payload = request.payload
            try request.respond(Array(payload))
            do { try request.respond([9]); second.fulfill("answered twice") } catch { second.fulfill("\(error)") }
        })
        XCTAssertEqual(try harness.call(pair.client, [3]).get(), [3])
        XCTAssertTrue(try second.wait("second answer").contains("already answered"))
    }

    func testIdsWrapAndAMillionCallsOnOneConnection() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let seenIDs = LoopBoundBox.sendingValue([UInt16](), loop: loop)
        let pair = try harness.endpointPair(serverHandler: { request in
            let payload = request.payload
            if seenIDs.value.count < 8 { seenIDs.value.append(request.messageID) }
            try request.respond(payload)
        })
        let total = 1_000_000, window = 64
        let done = Promise<(ok: Int, bad: Int)>()
        try harness.sync {
            let client = pair.client.value
            let state = LoopBoundBox((sent: 0, ok: 0, bad: 0), loop: loop)
            func sendNext() {
                var n = UInt32(state.value.sent).bigEndian
                state.value.sent += 1
                withUnsafeBytes(of: &n) { raw in
                    let expected = Array(raw)
                    client.send(raw, borrowingResponse: { result in
                        if case .success(let response) = result, response.elementsEqual(expected) { state.value.ok += 1 }
                        else { state.value.bad += 1 }
                        let finished = state.value.ok + state.value.bad
                        if finished == total { done.fulfill((state.value.ok, state.value.bad)) }
                        else if state.value.sent < total { sendNext() }
                    })
                }
            }
            for _ in 0..<window { sendNext() }
        }
        let result = try done.wait("a million calls", seconds: 600)
        XCTAssertEqual(result.ok, total)
        XCTAssertEqual(result.bad, 0)
        XCTAssertEqual(try harness.sync { seenIDs.value }, [65530, 65531, 65532, 65533, 65534, 65535, 0, 1])
        XCTAssertEqual(try harness.sync { pair.client.value.inFlightCount }, 0)
    }

    func testEndpointsOverAUnixSocket() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let path = "/tmp/uvrpc-test-\(getpid()).sock"
        unlink(path)
        let pair = try harness.endpointPair(address: .unix(path: path))
        let payload = pseudoRandomBytes(count: 200_000, seed: 3)
        XCTAssertEqual(try harness.call(pair.client, payload).get(), payload.reversed())
        XCTAssertEqual(try harness.call(pair.server, [1, 2, 3]).get(), [3, 2, 1])
    }

    func testTaggedSendsDeliverEachOutcomeWithItsTag() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        // Answers every message except [0], which it holds.
        let held = LoopBoundBox.sendingValue([RPCRequest](), loop: loop)
        let pair = try harness.endpointPair(serverHandler: { request in
            let payload = request.payload
            if payload.first == 0 { held.value.append(request) } else { try request.respond(Array(payload.reversed())) }
        })
        let done = Promise<[UInt64: String]>()
        try harness.sync {
            let client = pair.client.value
            var outcomes: [UInt64: String] = [:]
            client.onTaggedResponse = { tag, result in
                switch result {
                case .success(let bytes): outcomes[tag] = "\(Array(bytes))"
                case .failure(let error):
                    if error.code == .deadlineExceeded { outcomes[tag] = "timed out" } else { outcomes[tag] = "\(error)" }
                }
                if outcomes.count == 101 { done.fulfill(outcomes) }
            }
            for i in 1...100 {
                [UInt8(i), 1].withUnsafeBytes { client.send($0, tag: UInt64(1000 + i)) }
            }
            [UInt8(0)].withUnsafeBytes { client.send($0, tag: 7, timeout: .milliseconds(100), closeOnError: false) }
        }
        let outcomes = try done.wait("101 tagged outcomes")
        for i in 1...100 { XCTAssertEqual(outcomes[UInt64(1000 + i)], "[1, \(i)]") }
        XCTAssertEqual(outcomes[7], "timed out")
        XCTAssertEqual(try harness.sync { pair.client.value.inFlightCount }, 0)
    }

    func testAHandlerThatReplacesItselfWhileRunningKeepsWorking() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let pair = try harness.endpointPair()
        // The first handler swaps itself out twice while it runs (its captured
        // state must stay alive until it returns), then answers.
        try harness.sync {
            let endpoint = pair.server.value
            let marker = [UInt8](repeating: 1, count: 1000) // captured state that must survive the swap
            endpoint.onMessage = { request in
                let payload = request.payload
                endpoint.onMessage = { r in try r.respond([9]) }
                endpoint.onMessage = { r in try r.respond(Array(r.payload) + [2]) }
                try request.respond(Array(payload) + [UInt8(marker.count & 0xff)])
            }
            _ = loop
        }
        XCTAssertEqual(try harness.call(pair.client, [5]).get(), [5, 232])
        XCTAssertEqual(try harness.call(pair.client, [6]).get(), [6, 2])
        try harness.sync { pair.server.value.onMessage = nil }
        try harness.sync { pair.server.value.onMessage = reversing }
        XCTAssertEqual(try harness.call(pair.client, [1, 2]).get(), [2, 1])
    }
}
