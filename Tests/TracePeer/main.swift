// A traced UVRPC process for TracingTests: bootstraps a W3C test tracer,
// which prints each span as it ends, then serves or calls.
//
//   uvrpc-trace-peer serve        prints "listening on HOST:PORT"; an echo handler that
//                                  also calls its caller back (a child span of its own);
//                                  ends when its stdin closes or at SIGTERM
//   uvrpc-trace-peer call ADDR    one call to ADDR inside a root span "test.root"; exits 0
//
// Span lines: `span NAME KIND trace=T span=S parent=P status=ok|error`.
import Foundation
import Tracing
import UVLoop
import UVRPC

/// The span ids a W3C `traceparent` carries.
struct TraceIDs: Sendable {
    var trace: String
    var span: String
}

enum TraceKey: InstrumentationContextKey {
    typealias Value = TraceIDs
}

/// Random lowercase hex of `count` bytes.
func hex(_ count: Int) -> String {
    (0..<count).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
}

/// Writes a line to stdout at once (the test reads it while the process runs).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

final class TestSpan: Span, @unchecked Sendable { // every mutable field is under `lock`
    let context: InstrumentationContext
    let kind: SpanKind
    let parent: String
    private let lock = NSLock()
    private var name: String
    private var failed = false
    private var attributeStore = SpanAttributes()

    init(name: String, context: InstrumentationContext, kind: SpanKind, parent: String) {
        (self.name, self.context, self.kind, self.parent) = (name, context, kind, parent)
    }

    var operationName: String {
        get { lock.withLock { name } }
        set { lock.withLock { name = newValue } }
    }
    var attributes: SpanAttributes {
        get { lock.withLock { attributeStore } }
        set { lock.withLock { attributeStore = newValue } }
    }
    var isRecording: Bool { true }
    func setStatus(_ status: SpanStatus) { if status.code == .error { lock.withLock { failed = true } } }
    func addEvent(_ event: SpanEvent) {}
    func addLink(_ link: SpanLink) {}
    func recordError<Instant: TracerInstant>(_ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant) {}
    func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        let ids = context[TraceKey.self]!
        say("span \(operationName) \(kind) trace=\(ids.trace) span=\(ids.span) parent=\(parent) status=\(lock.withLock { failed } ? "error" : "ok")")
    }
}

/// Propagates W3C `traceparent` (version 00, sampled).
struct W3CTestTracer: Tracer {
    func startSpan<Instant: TracerInstant>(_ operationName: String, context: @autoclosure () -> InstrumentationContext,
                                           ofKind kind: SpanKind, at instant: @autoclosure () -> Instant,
                                           function: String, file fileID: String, line: UInt) -> TestSpan {
        var context = context()
        let parent = context[TraceKey.self]
        let ids = TraceIDs(trace: parent?.trace ?? hex(16), span: hex(8))
        context[TraceKey.self] = ids
        return TestSpan(name: operationName, context: context, kind: kind, parent: parent?.span ?? "none")
    }

    func forceFlush() {}

    func inject<Carrier, Inject: Injector>(_ context: InstrumentationContext, into carrier: inout Carrier, using injector: Inject)
    where Inject.Carrier == Carrier {
        guard let ids = context[TraceKey.self] else { return }
        injector.inject("00-\(ids.trace)-\(ids.span)-01", forKey: "traceparent", into: &carrier)
    }

    func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout InstrumentationContext, using extractor: Extract)
    where Extract.Carrier == Carrier {
        guard let value = extractor.extract(key: "traceparent", from: carrier) else { return }
        let parts = value.split(separator: "-")
        guard parts.count == 4, parts[1].count == 32, parts[2].count == 16 else { return }
        context[TraceKey.self] = TraceIDs(trace: String(parts[1]), span: String(parts[2]))
    }
}

InstrumentationSystem.bootstrap(W3CTestTracer())
let arguments = CommandLine.arguments.dropFirst()
let loop = try EventLoopGroup(loopCount: 1)
switch arguments.first {
case "serve":
    let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loop,
                           handler: .async { request, context in
        // A call back to the caller, from inside the handler: a client span under this handler's span.
        if request.payload == Array("call back".utf8) {
            _ = try await context.endpoint.send(Array("inner".utf8), timeout: .seconds(30))
        }
        return request.payload
    })
    let running = try await server.start()
    say("listening on \(running.address)")
    _ = FileHandle.standardInput.readDataToEndOfFile() // until the test closes our stdin
    await running.stop()
case "call":
    guard arguments.count == 2, let address = SocketAddress(parsing: arguments.last!) else {
        FileHandle.standardError.write(Data("usage: uvrpc-trace-peer call HOST:PORT\n".utf8))
        exit(2)
    }
    let endpoint = try await RPCClient.connect(to: address, on: loop, handler: .async { request, _ in request.payload })
    let tracer = InstrumentationSystem.tracer
    try await tracer.withAnySpan("test.root") { _ in
        _ = try await endpoint.send(Array("call back".utf8), timeout: .seconds(30))
    }
    await endpoint.close()
default:
    FileHandle.standardError.write(Data("usage: uvrpc-trace-peer serve | call HOST:PORT\n".utf8))
    exit(2)
}
_ = await loop.shutdown()
