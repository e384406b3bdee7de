import Tracing

/// Spans through swift-distributed-tracing: when a tracer is bootstrapped
/// (`InstrumentationSystem.bootstrap`) before an endpoint is made, its async
/// calls each get a client span and its async handler calls a server span,
/// and the trace travels in the call's metadata (extension `meta`): the
/// tracer injects its keys (W3C tracers write `traceparent`) into the
/// caller's metadata and extracts them from the handler's, so the handler's
/// span is the caller's span's child. Calls a handler makes are children of
/// its span. With no tracer bootstrapped, an endpoint keeps no tracer and no
/// call pays anything; the callback layer is never traced.
extension RPCEndpoint {
    /// The tracer bootstrapped now, or nil when there is none (the no-op one).
    static func bootstrappedTracer() -> (any Tracer)? {
        let tracer = InstrumentationSystem.tracer
        return tracer is NoOpTracer ? nil : tracer
    }

    /// Runs an async handler call (`run`) in a server span whose parent is
    /// the caller's span, as the message's metadata carries it.
    func runTraced(_ tracer: any Tracer, id: UInt16, call: IncomingCall?,
                   _ run: () async -> Result<[UInt8], any Error>) async -> Result<[UInt8], any Error> {
        var parent = InstrumentationContext.topLevel
        if let call { tracer.extract(call.metadata, into: &parent, using: MetadataExtractor()) }
        let span = tracer.startAnySpan(Self.handlerSpanName, context: parent, ofKind: .server)
        span.attributes[Self.systemAttribute] = Self.system
        span.attributes[Self.messageIDAttribute] = Int(id)
        span.attributes[Self.peerAttribute] = peerDescription
        let outcome = await InstrumentationContext.$current.withValue(span.context) { await run() }
        if case .failure(let error) = outcome {
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
        }
        span.end()
        return outcome
    }

    static let callSpanName = "uvrpc.call"
    static let handlerSpanName = "uvrpc.handle"
    static let systemAttribute = "rpc.system"
    static let system = "efro.rpc"
    static let messageIDAttribute = "rpc.message_id"
    static let peerAttribute = "network.peer.address"
}

extension RPCAsyncEndpoint {
    /// Makes a call (`send`, with the metadata it is given) in a client span
    /// whose context the metadata carries to the peer.
    nonisolated(nonsending)
    func sendTraced(_ tracer: any Tracer, metadata: RPCMetadata,
                    _ send: nonisolated(nonsending) (RPCMetadata) async throws -> [UInt8]) async throws -> [UInt8] {
        let span = tracer.startAnySpan(RPCEndpoint.callSpanName, context: InstrumentationContext.current ?? .topLevel,
                                       ofKind: .client)
        defer { span.end() }
        span.attributes[RPCEndpoint.systemAttribute] = RPCEndpoint.system
        span.attributes[RPCEndpoint.peerAttribute] = label // a `let`: this runs off the loop
        var metadata = metadata
        tracer.inject(span.context, into: &metadata, using: MetadataInjector())
        do {
            return try await send(metadata)
        } catch {
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
            throw error
        }
    }
}

/// Writes a tracer's keys into a call's metadata (replacing any there).
struct MetadataInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout RPCMetadata) { carrier[key] = value }
}

/// Reads a tracer's keys from a call's metadata.
struct MetadataExtractor: Extractor {
    func extract(key: String, from carrier: RPCMetadata) -> String? { carrier[key] }
}
