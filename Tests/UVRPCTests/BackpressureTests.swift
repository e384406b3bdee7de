import Foundation
import UVLoop
import UVRPC
import UVTestSupport
import XCTest

/// Slow and stalled peers: send-side backpressure, the write timeout, and a
/// peer that sends requests but never reads the answers.
final class BackpressureTests: XCTestCase {
    /// The answer the acknowledging server gives: the payload's first 8 bytes and its size.
    private static func ack(_ payload: UnsafeRawBufferPointer) -> [UInt8] {
        let n = UInt32(payload.count)
        return Array(payload.prefix(8)) + [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)]
    }

    func testAnAsyncSenderFasterThanItsPeerIsHeldBackWhileAGibibyteFlows() async throws {
        let serverHarness = try LoopHarness("server-loop")
        let clientHarness = try LoopHarness("client-loop")
        defer {
            clientHarness.shutdownCleanly()
            serverHarness.shutdownCleanly()
        }
        let serverLoop = serverHarness.loop, clientLoop = clientHarness.loop
        let address = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()), on: serverLoop, handler: .callback {
                $0.onMessage = { request in try request.respond(Self.ack(request.payload)) }
            }).startAndWait().address
        // Whole MESSAGE_BIG packets (no chunking): each waits in the outgoing
        // buffer. Chunked transfers are held to a window instead (ChunkingTests).
        let client = try await RPCClient.connect(to: address, on: clientLoop,
                                                 configuration: testConfiguration { $0.extensions = [] })
        let messageSize = 1 << 20
        let total = sanitizerInUse == nil ? 1 << 30 : 256 << 20 // sanitizers copy several times slower
        let senders = 64
        let perSender = total / messageSize / senders
        let payload = pseudoRandomBytes(count: messageSize, seed: 6)
        let expected = payload.withUnsafeBytes { Self.ack($0) }
        let baseline = ProcessFigures.residentBytes() ?? 0
        let peakReset = ProcessFigures.resetPeakResident()
        // 64 senders at once: without backpressure 64 MiB would wait in the outgoing buffer.
        let answered = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<senders {
                group.addTask {
                    for _ in 0..<perSender {
                        let answer = try await client.send(payload, timeout: .seconds(60), closeOnError: false)
                        XCTAssertEqual(answer, expected)
                    }
                    return perSender
                }
            }
            return try await group.reduce(0, +)
        }
        XCTAssertEqual(answered * messageSize, total)
        let peak = ProcessFigures.peakResidentBytes() ?? 0
        let highWater = ConnectionOptions().writeHighWaterMark
        // The connection's own record of its most unsent bytes (no sampler can miss it).
        let observed = try clientHarness.sync { client.endpoint.connection.peakPendingWriteBytes }
        XCTAssertGreaterThanOrEqual(observed, PacketWriter.frameSize(payloadCount: messageSize),
                                    "every message waited in the outgoing buffer at least once")
        XCTAssertLessThanOrEqual(observed, highWater + PacketWriter.frameSize(payloadCount: messageSize),
                                 "unsent bytes stay under the high-water mark plus one message")
        if sanitizerInUse == nil && peakReset {
            XCTAssertLessThan(peak - baseline, 48 << 20, "peak resident memory grew by \(peak - baseline) bytes")
        }
        print("backpressure: \(total >> 20) MiB sent by \(senders) async senders; most unsent bytes seen \(observed); "
              + "peak RSS growth \((peak - baseline) >> 10) KiB")
        await client.close()
    }

    func testACallbackSenderSeesNotWritableThenFailsClearlyAtTheLimitThenTheWriteTimeoutCloses() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        // A peer that never reads: its connections do not start reading.
        let silent = testConfiguration { $0.connectionOptions.autoRead = false }
        let configuration = testConfiguration {
            $0.maximumPendingWriteBytes = 8 << 20
            $0.writeTimeout = .milliseconds(300)
        }
        let closed = Promise<RPCCloseReason>()
        let handshake = Promise<Void>()
        let server = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: silent), on: loop,
                                   handler: .callback { _ in }).startAndWait()
        let client = try harness.sync { () -> Promise<Result<LoopBound<RPCEndpoint>, ConnectError>> in
            let connected = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
            RPCClient.connect(to: server.address, on: loop, configuration: configuration) { result in
                connected.fulfill(result.map { endpoint in
                    endpoint.onClose = { closed.fulfill($0) }
                    // The server's handshake arrives once the loop turns.
                    let poll = LoopBoundBox<LoopTimer?>(nil, loop: loop)
                    poll.value = loop.scheduleTimer(after: .milliseconds(1), repeating: .milliseconds(1)) {
                        if endpoint.peerInfo != nil { poll.value?.cancel(); handshake.fulfill(()) }
                    }
                    return LoopBound(endpoint, loop: loop)
                })
            }
            return connected
        }.wait("connect").get()
        try handshake.wait("the silent server's handshake")

        struct Outcome: Sendable {
            var sentWhileWritable = 0, sentAfter = 0, pendingAtFailure = 0
            var reported: [Bool] = []
            var failure: RPCError?
        }
        let failures = LockedValue([String]())
        let outcome = try harness.sync { () -> Outcome in
            let endpoint = client.value
            var outcome = Outcome()
            let reported = LoopBoundBox([Bool](), loop: loop)
            endpoint.onWritabilityChanged = { reported.value.append($0) }
            let payload = [UInt8](repeating: 7, count: 60_000)
            let record: (Result<[UInt8], RPCError>) -> Void = { result in
                if case .failure(let error) = result { failures.withLock { $0.append("\(error)") } }
            }
            // Everything below happens in one loop turn, so nothing is flushed meanwhile.
            while endpoint.isWritable {
                endpoint.send(payload, closeOnError: false, completion: record)
                outcome.sentWhileWritable += 1
            }
            outcome.reported = reported.value
            // Ignore isWritable until a send fails.
            var immediate: RPCError?
            while immediate == nil && outcome.sentAfter < 1000 {
                endpoint.send(payload, closeOnError: false) { result in
                    if case .failure(let error) = result, immediate == nil { immediate = error } else { record(result) }
                }
                outcome.sentAfter += 1
            }
            outcome.failure = immediate
            outcome.pendingAtFailure = endpoint.connection.pendingWriteBytes
            return outcome
        }
        let highWater = ConnectionOptions().writeHighWaterMark
        XCTAssertEqual(outcome.sentWhileWritable, highWater / 60_005 + 1, "isWritable turned false just past the high-water mark")
        XCTAssertEqual(outcome.reported, [false])
        XCTAssertEqual(outcome.failure?.code, .resourceExhausted)
        XCTAssertEqual(outcome.failure?.isRetryable, true, "nothing was sent; it may be sent again once writable")
        guard case .sendBufferFull(_, let pending, 8 << 20)? = outcome.failure?.reason else {
            return XCTFail("expected sendBufferFull, got \(String(describing: outcome.failure))")
        }
        XCTAssertEqual(pending, outcome.pendingAtFailure)
        XCTAssertLessThanOrEqual(pending, 8 << 20)
        XCTAssertGreaterThan(pending + 60_005, 8 << 20)
        XCTAssertTrue("\(outcome.failure!)".contains("limit is 8388608"), "\(outcome.failure!)")
        XCTAssertTrue(failures.withLock { $0 }.isEmpty, "no call before the limit failed: \(failures.withLock { $0 }.prefix(2))")

        // The peer reads nothing, so the write timeout ends the connection and every call with it.
        let reason = try closed.wait("the write timeout to close the client", seconds: 30)
        guard case .connectionFailed(let failure) = reason.kind, case .writeTimedOut(_, _, .milliseconds(300)) = failure.kind else {
            return XCTFail("expected a write timeout, got \(reason)")
        }
        let calls = outcome.sentWhileWritable + outcome.sentAfter - 1
        let failed = failures.withLock { $0 }
        XCTAssertEqual(failed.count, calls, "every call waiting on the stalled connection failed")
        XCTAssertTrue(failed.allSatisfy { $0.contains("read nothing for") }, failed.first ?? "")
    }

    func testAPeerThatSendsButNeverReadsIsBoundedThenCutOffWhileOthersAreServed() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let configuration = testConfiguration { $0.writeTimeout = .milliseconds(500) }
        let hostileClosed = Promise<RPCCloseReason>()
        let hostileConnection = Promise<LoopBound<Connection>>()
        let first = LoopBoundBox.sendingValue(true, loop: loop)
        let server = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: configuration),
                                   on: loop, handler: .callback { endpoint in
            endpoint.onMessage = { request in try request.respond(request.payload) }
            guard first.value else { return }
            first.value = false // the first connection is the hostile one
            endpoint.onClose = { hostileClosed.fulfill($0) }
            hostileConnection.fulfill(LoopBound(endpoint.connection, loop: loop))
        }).startAndWait()
        let address = server.address

        // The hostile peer: handshake, then 64 KiB messages as fast as its socket takes them; never reads.
        let sentMessages = LockedValue(0)
        try harness.sync {
            loop.connect(to: address) { result in
                guard case .success(let peer) = result else { return XCTFail("\(result)") }
                peer.pauseReading()
                try? peer.write(PeerInfo(keepaliveInterval: 10).handshakeBytes)
                let frame = PacketWriter.frame(isResponse: false, id: 1, payload: [UInt8](repeating: 3, count: 65_000))
                func pump() {
                    while peer.isOpen && peer.isWritable {
                        try? peer.write(frame)
                        sentMessages.withLock { $0 += 1 }
                    }
                }
                peer.onWritabilityChanged = { if $0 { pump() } }
                peer.onClose = { _ in }
                pump()
            }
        }
        // A good client is answered correctly throughout.
        let goodCalls = LockedValue(0)
        let goodDone = Promise<Result<Int, RPCError>>()
        try harness.sync {
            RPCClient.connect(to: address, on: loop, configuration: testConfiguration()) { result in
                guard case .success(let client) = result else { return XCTFail("\(result)") }
                func next() {
                    let payload = pseudoRandomBytes(count: 1000, seed: UInt64(goodCalls.withLock { $0 }))
                    client.send(payload) { result in
                        switch result {
                        case .success(let answer) where answer == payload:
                            goodCalls.withLock { $0 += 1 }
                            if hostileClosed.isFulfilled { goodDone.fulfill(.success(goodCalls.withLock { $0 })) } else { next() }
                        case .success: XCTFail("wrong answer"); goodDone.fulfill(.success(-1))
                        case .failure(let error): goodDone.fulfill(.failure(error))
                        }
                    }
                }
                next()
            }
        }
        let reason = try hostileClosed.wait("the write timeout to cut off the peer that never reads", seconds: 30)
        guard case .connectionFailed(let failure) = reason.kind, case .writeTimedOut(_, _, .milliseconds(500)) = failure.kind else {
            return XCTFail("expected a write timeout, got \(reason)")
        }
        let good = try goodDone.wait("the good client's calls").get()
        XCTAssertGreaterThan(good, 10, "the good client kept being answered")
        let highWater = ConnectionOptions().writeHighWaterMark
        let connection = try hostileConnection.wait("the hostile connection")
        let observed = try harness.sync { connection.value.peakPendingWriteBytes }
        XCTAssertGreaterThan(observed, highWater, "the server's answers piled up past the high-water mark")
        XCTAssertLessThanOrEqual(observed, highWater + PacketWriter.frameSize(payloadCount: 65_000),
                                 "the server stopped taking messages once its answers piled up")
        print("never-reading peer: sent \(sentMessages.withLock { $0 }) messages before it was cut off; "
              + "server's unsent bytes peaked at \(observed); good client answered \(good) times meanwhile")
    }

    func testAServerPausedByBackpressureResumesWhenThePeerReadsAgainAndAnswersEverything() throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let loop = harness.loop
        let pair = try harness.endpointPair(serverHandler: { request in try request.respond(request.payload) })
        let count = 200, size = 65_000
        let answers = Promise<[String]>()
        let serverStalled = Promise<Void>()
        try harness.sync {
            let client = pair.client.value, server = pair.server.value
            server.onWritabilityChanged = { writable in if !writable { serverStalled.fulfill(()) } }
            client.connection.pauseReading() // the answers back up until the client reads again
            let results = LoopBoundBox([String](), loop: loop)
            for i in 0..<count {
                let payload = pseudoRandomBytes(count: size, seed: UInt64(i))
                client.send(payload, closeOnError: false) { result in
                    switch result {
                    case .success(let answer): results.value.append(answer == payload ? "ok" : "wrong answer to \(i)")
                    case .failure(let error): results.value.append("\(i): \(error)")
                    }
                    if results.value.count == count { answers.fulfill(results.value) }
                }
            }
        }
        try serverStalled.wait("the server to stop being writable (its answers piled up)")
        try harness.sync { pair.client.value.connection.resumeReading() }
        let results = try answers.wait("every answer after the client reads again", seconds: 30)
        XCTAssertEqual(results.filter { $0 == "ok" }.count, count, results.first { $0 != "ok" } ?? "")
        XCTAssertTrue(try harness.sync { pair.server.value.isWritable })
        XCTAssertFalse(pair.serverClosed.isFulfilled, "backpressure closed nothing")
    }
}
