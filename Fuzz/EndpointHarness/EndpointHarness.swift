// The whole receive path of an endpoint under arbitrary bytes: the connection's
// read buffers, the parser, dispatch, the call table (responses to live and
// unknown ids), callback handlers (answered now, later, twice, or failing),
// and the answers written back. Driven through an in-memory transport: the
// bytes are injected where libuv's reads would land (Connection.deliverRead),
// and what the endpoint writes goes to the other end of a Unix socket pair,
// where it is read back and checked.
//
// Used by the libFuzzer target (Fuzz/EndpointFuzzer.swift, scripts/fuzz.sh)
// and by FuzzCorpusTests, which replays the committed corpus.
import Foundation
import UVLoop
import UVRPC

/// Runs one input through a fresh endpoint; traps (precondition) on any
/// broken invariant, so that the fuzzer reports it. Returns how many
/// responses the endpoint wrote.
@discardableResult
public func fuzzEndpoint(_ data: [UInt8]) -> Int {
    let loop = FuzzLoop.shared
    let peer = LockedValue<Int32>(-1)
    let ready = DispatchSemaphore(value: 0)
    let closed = DispatchSemaphore(value: 0)
    let agreed = LockedValue<RPCExtensions>([])
    loop.execute {
        do {
            let (connection, peerDescriptor) = try Connection.overSocketPair(on: loop)
            peer.withLock { $0 = peerDescriptor }
            ready.signal()
            drive(connection, with: data, agreed: agreed) { closed.signal() }
        } catch {
            preconditionFailure("fuzz harness: cannot make a socket pair: \(error)")
        }
    }
    ready.wait()
    // Read everything the endpoint writes until it closes: valid efro.rpc only.
    let fd = peer.withLock { $0 }
    let written = readToEnd(fd)
    close(fd)
    precondition(closed.wait(timeout: .now() + 30) == .success, "fuzz harness: the endpoint did not close")
    return checkWellFormed(written, agreed: agreed.withLock { $0 })
}

/// What the handler does with a message, chosen by its first byte.
private func handle(_ request: RPCRequest, kept: LoopBoundBox<[RPCRequest]>) throws {
    struct Refused: Error {}
    switch request.payload.first.map({ $0 % 5 }) {
    case 0?:
        kept.value.append(request) // answered after the input ends
    case 1?:
        throw Refused()
    case 2?:
        try request.respond(request.payload)
        do {
            try request.respond([0])
            preconditionFailure("a second answer was accepted")
        } catch {
            guard case .alreadyAnswered = error.kind else { preconditionFailure("a second answer failed with \(error)") }
        }
    case 3?:
        return // never answered
    default:
        try request.respond(Array(request.payload.reversed()))
    }
}

private func drive(_ connection: Connection, with data: [UInt8], agreed: LockedValue<RPCExtensions>,
                   whenClosed: @escaping @Sendable () -> Void) {
    var configuration = RPCEndpoint.Configuration()
    configuration.maximumPayloadSize = 1 << 20
    configuration.sendsKeepalives = false
    let endpoint = RPCEndpoint(connection: connection, configuration: configuration, label: "fuzz")
    let kept = LoopBoundBox.sendingValue([RPCRequest](), loop: connection.loop)
    endpoint.onMessage = { try handle($0, kept: kept) }
    endpoint.onClose = { _ in whenClosed() }
    endpoint.onTaggedResponse = { _, _ in }
    // Calls in flight, so that responses in the input can meet live ids (65530...).
    for i in 0..<6 {
        let payload: [UInt8] = [UInt8(i)]
        payload.withUnsafeBytes { endpoint.send($0, tag: UInt64(i), timeout: .seconds(60), closeOnError: false) }
    }
    // Chunk sizes from the input itself: the stream cut at arbitrary points.
    var offset = 0
    var state = UInt64(data.count) &* 0x9E3779B97F4A7C15 | 1
    while offset < data.count, !endpoint.isClosing {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        let n = min(data.count - offset, Int(state % 4096) + 1)
        let taken = data[offset..<offset + n].withUnsafeBytes { connection.deliverRead($0) }
        if taken < n { break } // reading paused (backpressure) or closed
        offset += n
    }
    agreed.withLock { $0 = endpoint.activeExtensions }
    for (i, request) in kept.value.enumerated() {
        // Kept requests are answered, failed (an ERROR where agreed) or found cancelled.
        if i % 2 == 0 { _ = try? request.respond([7]) } else { _ = try? request.fail(RPCError(code: .handlerFailed, message: "kept request \(i) failed")) }
    }
    kept.value.removeAll()
    endpoint.close()
}

private func readToEnd(_ fd: Int32) -> [UInt8] {
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return bytes
}

/// The endpoint's output must be its handshake, then whole packets; returns
/// how many of them were responses.
private func checkWellFormed(_ bytes: [UInt8], agreed: RPCExtensions) -> Int {
    final class Counter: PacketSink {
        var handshakes = 0
        var responses = 0
        func receivedHandshake(_ info: PeerInfo) -> Bool { handshakes += 1; return true }
        func receivedKeepalives(_ count: Int) -> Bool { true }
        func receivedMessage(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool { true }
        func receivedResponse(id: UInt16, payload: UnsafeRawBufferPointer) -> Bool { responses += 1; return true }
        func receivedError(id: UInt16, code: UInt8, reason: UnsafeRawBufferPointer) -> Bool {
            precondition(reason.count <= Wire.maximumErrorReason, "the endpoint wrote an error reason of \(reason.count) bytes")
            responses += 1
            return true
        }
        func receivedCancel(id: UInt16, droppedPartialMessage: Bool) -> Bool { true }
        func receivedCancelAcknowledgement(id: UInt16) -> Bool { true }
        func receivedGoAway() -> Bool { true }
        func receivedChunkAcknowledgement(bytes: Int) -> Bool { true }
    }
    // Only the extensions the input's handshake announced may appear (the
    // checker's parser takes no other packet type).
    var parser = PacketParser(maximumPayloadSize: 1 << 21, inlinePayloadLimit: 1 << 22, extensions: agreed)
    let counter = Counter()
    let consumed = bytes.withUnsafeBytes { raw in
        Result { () throws(ProtocolViolation) in try parser.parse(raw, into: counter) }
    }
    switch consumed {
    case .success(let n):
        precondition(n == bytes.count, "the endpoint wrote a partial packet (\(bytes.count - n) bytes left)")
    case .failure(let violation):
        preconditionFailure("the endpoint wrote invalid efro.rpc: \(violation)")
    }
    precondition(counter.handshakes == 1, "the endpoint wrote \(counter.handshakes) handshakes")
    return counter.responses
}

/// One loop for the whole fuzzing process, on its own thread.
private enum FuzzLoop {
    static let shared: EventLoop = {
        let loop = try! EventLoop(name: "fuzz")
        loop.start()
        return loop
    }()
}
