import CoreMetrics
import UVLoop

/// What UVRPC reports through swift-metrics, counted per loop and published
/// in batches.
///
/// Recording is a plain integer add on the loop thread: no allocation, no
/// lock, no call into the metrics backend per message or call. At the end of
/// each half of a loop turn (`EventLoop`'s turn-end observer) the loop
/// publishes what changed since the last time: one backend call per metric
/// that moved. With no backend bootstrapped (swift-metrics' no-op default)
/// nothing is published and call durations are not timed at all.
///
/// Bootstrap the backend (`MetricsSystem.bootstrap`) before the first
/// endpoint is made on a loop: each loop makes its metric objects then.
///
/// Names and dimensions (stable: dashboards rely on them):
/// - `uvrpc_connections_accepted_total`, `uvrpc_connections_open`,
///   `uvrpc_connections_closed_total{reason}`;
/// - `uvrpc_messages_received_total`, `uvrpc_responses_sent_total`;
/// - `uvrpc_calls_sent_total`, `uvrpc_calls_failed_total{error}`,
///   `uvrpc_calls_in_flight`, `uvrpc_call_duration_seconds` (outgoing calls);
/// - `uvrpc_handler_duration_seconds` (async handlers, from start to return),
///   `uvrpc_message_handler_duration_seconds{type}` (typed handlers, by message type);
/// - `uvrpc_bytes_received_total`, `uvrpc_bytes_sent_total`;
/// - `uvrpc_protocol_violations_total{violation}`, `uvrpc_accept_errors_total{error}`;
/// - `uvrpc_payloads_refused_total{reason}` (payloads in parts over a memory budget),
///   `uvrpc_connections_refused_total{reason}` (connections a server closed as they arrived).
final class LoopMetrics {
    // @exclusivity(unchecked): touched on the loop thread only, never by overlapping accesses.
    @exclusivity(unchecked) var connectionsAccepted = 0
    @exclusivity(unchecked) var connectionsOpened = 0
    @exclusivity(unchecked) var connectionsClosed = [Int](repeating: 0, count: CloseKind.allCases.count)
    @exclusivity(unchecked) var messagesReceived = 0
    @exclusivity(unchecked) var responsesSent = 0
    @exclusivity(unchecked) var callsSent = 0
    /// Calls and responses among ``callsSent`` and ``responsesSent`` that went
    /// as chunked transfers (not published: the chunk window tells small
    /// packets from big ones by it).
    @exclusivity(unchecked) var chunkedTransfersSent = 0
    /// Calls that left the in-flight table (answered, failed or cancelled).
    @exclusivity(unchecked) var callsEnded = 0
    @exclusivity(unchecked) var callsFailed = [Int](repeating: 0, count: CallFailureKind.allCases.count)
    @exclusivity(unchecked) var violations = [Int](repeating: 0, count: ViolationKind.allCases.count)
    @exclusivity(unchecked) var acceptErrors: [String: Int] = [:]
    /// Payloads in parts refused, by ``PayloadRefusal/metricName``.
    @exclusivity(unchecked) var payloadsRefused: [String: Int] = [:]
    /// Connections a server closed as they arrived, by ``RefusalKind``.
    @exclusivity(unchecked) var connectionsRefused: [String: Int] = [:]
    /// Durations of ended calls, in nanoseconds, waiting to be published.
    @exclusivity(unchecked) private var durations: [Int64] = []
    /// Durations of async handler calls, and of typed ones with their message type, waiting to be published.
    @exclusivity(unchecked) private var handlerDurations: [Int64] = []
    @exclusivity(unchecked) private var typedHandlerDurations: [(type: String, nanoseconds: Int64)] = []
    /// True when a backend is bootstrapped: calls are timed and counts published.
    let isPublishing: Bool
    /// Not a metric: the loop's spare payload arrays for async requests
    /// (``PayloadSpares``), kept here because this is UVRPC's one object per loop.
    let payloadSpares = PayloadSpares()

    private var published: Published
    private struct Published {
        var connectionsAccepted = 0, connectionsOpened = 0, messagesReceived = 0, responsesSent = 0
        var callsSent = 0, callsEnded = 0, bytesRead: UInt64 = 0, bytesWritten: UInt64 = 0
        var connectionsClosed = [Int](repeating: 0, count: CloseKind.allCases.count)
        var callsFailed = [Int](repeating: 0, count: CallFailureKind.allCases.count)
        var violations = [Int](repeating: 0, count: ViolationKind.allCases.count)
        var acceptErrors: [String: Int] = [:]
        var payloadsRefused: [String: Int] = [:]
        var connectionsRefused: [String: Int] = [:]
    }

    private let accepted: Counter
    private let open: Meter
    private let closed: [Counter]
    private let messages: Counter
    private let responses: Counter
    private let calls: Counter
    private let failed: [Counter]
    private let inFlight: Meter
    private let bytesIn: Counter
    private let bytesOut: Counter
    private let violationCounters: [Counter]
    private let duration: CoreMetrics.Timer
    private let handlerDuration: CoreMetrics.Timer
    private var typedHandlerTimers: [String: CoreMetrics.Timer] = [:]
    private var acceptErrorCounters: [String: Counter] = [:]
    private var refusalCounters: [String: Counter] = [:]
    private var connectionRefusalCounters: [String: Counter] = [:]

    private static let durationBatch = 4096

    private init(loop: EventLoop) {
        isPublishing = !(MetricsSystem.factory is NOOPMetricsHandler)
        published = Published(bytesRead: loop.trafficTotals.bytesRead, bytesWritten: loop.trafficTotals.bytesWritten)
        accepted = Counter(label: "uvrpc_connections_accepted_total")
        open = Meter(label: "uvrpc_connections_open")
        closed = CloseKind.allCases.map {
            Counter(label: "uvrpc_connections_closed_total", dimensions: [("reason", $0.rawValue)])
        }
        messages = Counter(label: "uvrpc_messages_received_total")
        responses = Counter(label: "uvrpc_responses_sent_total")
        calls = Counter(label: "uvrpc_calls_sent_total")
        failed = CallFailureKind.allCases.map {
            Counter(label: "uvrpc_calls_failed_total", dimensions: [("error", $0.rawValue)])
        }
        inFlight = Meter(label: "uvrpc_calls_in_flight")
        bytesIn = Counter(label: "uvrpc_bytes_received_total")
        bytesOut = Counter(label: "uvrpc_bytes_sent_total")
        violationCounters = ViolationKind.allCases.map {
            Counter(label: "uvrpc_protocol_violations_total", dimensions: [("violation", $0.rawValue)])
        }
        duration = CoreMetrics.Timer(label: "uvrpc_call_duration_seconds", preferredDisplayUnit: .seconds)
        handlerDuration = CoreMetrics.Timer(label: "uvrpc_handler_duration_seconds", preferredDisplayUnit: .seconds)
        if isPublishing { durations.reserveCapacity(Self.durationBatch) }
    }

    /// The metrics of `loop`, made (and hooked to its turns) on first use. Loop thread only.
    static func of(_ loop: EventLoop) -> LoopMetrics {
        if let existing = loop.layer as? LoopMetrics { return existing }
        let metrics = LoopMetrics(loop: loop)
        loop.attach(metrics, observesTurns: metrics.isPublishing)
        return metrics
    }

    /// The clock reading a call starts with: 0 (not timed) without a backend.
    @inline(__always)
    var callStartTime: UInt64 { isPublishing ? EventLoop.monotonicNanoseconds : 0 }

    /// Counts a call that left the in-flight table, timed from `startedAt`.
    @inline(__always)
    func callEnded(startedAt: UInt64) {
        callsEnded &+= 1
        guard startedAt != 0 else { return }
        durations.append(Int64(truncatingIfNeeded: EventLoop.monotonicNanoseconds &- startedAt))
        if durations.count >= Self.durationBatch { publishDurations() }
    }

    /// Counts an async handler call that returned (or threw), timed from `startedAt` (``callStartTime``).
    @inline(__always)
    func handlerEnded(startedAt: UInt64) {
        guard startedAt != 0 else { return }
        handlerDurations.append(Int64(truncatingIfNeeded: EventLoop.monotonicNanoseconds &- startedAt))
        if handlerDurations.count >= Self.durationBatch { publishHandlerDurations() }
    }

    /// Counts a typed handler call of message type `type`, timed from `startedAt` (``callStartTime``).
    func typedHandlerEnded(type: String, startedAt: UInt64) {
        guard startedAt != 0 else { return }
        typedHandlerDurations.append((type, Int64(truncatingIfNeeded: EventLoop.monotonicNanoseconds &- startedAt)))
        if typedHandlerDurations.count >= Self.durationBatch { publishHandlerDurations() }
    }

    func callFailed(_ error: RPCError) { callsFailed[CallFailureKind(error).index] &+= 1 }
    func callCancelled() { callsFailed[CallFailureKind.cancelled.index] &+= 1 }
    func connectionClosed(_ reason: RPCCloseReason) {
        connectionsClosed[CloseKind(reason).index] &+= 1
        if case .protocolViolation(let violation) = reason.kind { violations[ViolationKind(violation).index] &+= 1 }
    }

    /// Publishes what changed since the last time (the loop's turn-end observer).
    func publish(_ loop: EventLoop) {
        func delta(_ now: Int, _ then: inout Int, _ counter: Counter) {
            if now != then { counter.increment(by: now &- then); then = now }
        }
        delta(connectionsAccepted, &published.connectionsAccepted, accepted)
        delta(messagesReceived, &published.messagesReceived, messages)
        delta(responsesSent, &published.responsesSent, responses)
        let sentBefore = published.callsSent, endedBefore = published.callsEnded
        delta(callsSent, &published.callsSent, calls)
        published.callsEnded = callsEnded
        let inFlightChange = (callsSent &- sentBefore) &- (callsEnded &- endedBefore)
        if inFlightChange > 0 { inFlight.increment(by: Double(inFlightChange)) }
        if inFlightChange < 0 { inFlight.decrement(by: Double(-inFlightChange)) }
        let closedNow = connectionsClosed.reduce(0, &+), closedBefore = published.connectionsClosed.reduce(0, &+)
        if connectionsOpened != published.connectionsOpened || closedNow != closedBefore {
            let openChange = (connectionsOpened &- published.connectionsOpened) &- (closedNow &- closedBefore)
            if openChange > 0 { open.increment(by: Double(openChange)) }
            if openChange < 0 { open.decrement(by: Double(-openChange)) }
            published.connectionsOpened = connectionsOpened
            for i in closed.indices { delta(connectionsClosed[i], &published.connectionsClosed[i], closed[i]) }
            for i in violationCounters.indices { delta(violations[i], &published.violations[i], violationCounters[i]) }
        }
        for i in failed.indices where callsFailed[i] != published.callsFailed[i] {
            delta(callsFailed[i], &published.callsFailed[i], failed[i])
        }
        let traffic = loop.trafficTotals
        if traffic.bytesRead != published.bytesRead {
            bytesIn.increment(by: traffic.bytesRead &- published.bytesRead)
            published.bytesRead = traffic.bytesRead
        }
        if traffic.bytesWritten != published.bytesWritten {
            bytesOut.increment(by: traffic.bytesWritten &- published.bytesWritten)
            published.bytesWritten = traffic.bytesWritten
        }
        if !durations.isEmpty { publishDurations() }
        if !handlerDurations.isEmpty || !typedHandlerDurations.isEmpty { publishHandlerDurations() }
        if !acceptErrors.isEmpty && acceptErrors != published.acceptErrors { publishAcceptErrors() }
        if !payloadsRefused.isEmpty && payloadsRefused != published.payloadsRefused {
            publishCounts(payloadsRefused, &published.payloadsRefused, &refusalCounters,
                          label: "uvrpc_payloads_refused_total", dimension: "reason")
        }
        if !connectionsRefused.isEmpty && connectionsRefused != published.connectionsRefused {
            publishCounts(connectionsRefused, &published.connectionsRefused, &connectionRefusalCounters,
                          label: "uvrpc_connections_refused_total", dimension: "reason")
        }
    }

    private func publishDurations() {
        for nanoseconds in durations { duration.recordNanoseconds(nanoseconds) }
        durations.removeAll(keepingCapacity: true)
    }

    private func publishHandlerDurations() {
        for nanoseconds in handlerDurations { handlerDuration.recordNanoseconds(nanoseconds) }
        handlerDurations.removeAll(keepingCapacity: true)
        for (type, nanoseconds) in typedHandlerDurations {
            let timer = typedHandlerTimers[type] ?? {
                let made = CoreMetrics.Timer(label: "uvrpc_message_handler_duration_seconds", dimensions: [("type", type)],
                                             preferredDisplayUnit: .seconds)
                typedHandlerTimers[type] = made
                return made
            }()
            timer.recordNanoseconds(nanoseconds)
        }
        typedHandlerDurations.removeAll(keepingCapacity: true)
    }

    private func publishAcceptErrors() {
        publishCounts(acceptErrors, &published.acceptErrors, &acceptErrorCounters,
                      label: "uvrpc_accept_errors_total", dimension: "error")
    }

    /// Publishes counts kept by name (a dimension whose values appear as they happen).
    private func publishCounts(_ counts: [String: Int], _ published: inout [String: Int],
                               _ counters: inout [String: Counter], label: String, dimension: String) {
        for (name, count) in counts {
            let before = published[name] ?? 0
            guard count != before else { continue }
            let counter = counters[name] ?? {
                let made = Counter(label: label, dimensions: [(dimension, name)])
                counters[name] = made
                return made
            }()
            counter.increment(by: count &- before)
            published[name] = count
        }
    }
}

/// The `reason` dimension of `uvrpc_connections_closed_total`.
enum CloseKind: String, CaseIterable {
    case local, peerClosed = "peer_closed", reset, connectionFailed = "connection_failed"
    case keepaliveTimeout = "keepalive_timeout", handshakeTimeout = "handshake_timeout"
    case protocolViolation = "protocol_violation", callFailed = "call_failed"
    case drained, drainTimedOut = "drain_timed_out", payloadStalled = "payload_stalled"

    init(_ reason: RPCCloseReason) {
        switch reason.kind {
        case .local: self = .local
        case .peerClosed: self = .peerClosed
        case .reset: self = .reset
        case .connectionFailed: self = .connectionFailed
        case .keepaliveTimeout: self = .keepaliveTimeout
        case .handshakeTimeout: self = .handshakeTimeout
        case .protocolViolation: self = .protocolViolation
        case .callFailed: self = .callFailed
        case .drained: self = .drained
        case .drainTimedOut: self = .drainTimedOut
        case .payloadStalled: self = .payloadStalled
        }
    }

    var index: Int { Self.allCases.firstIndex(of: self)! }
}

/// The `reason` dimension of `uvrpc_connections_refused_total`.
enum RefusalKind: String {
    case tlsHandshakeRate = "tls_handshake_rate"
}

/// The `error` dimension of `uvrpc_calls_failed_total`.
enum CallFailureKind: String, CaseIterable {
    case timedOut = "timed_out", closed, peerTooOld = "peer_too_old", tooManyInFlight = "too_many_in_flight"
    case payloadTooLarge = "payload_too_large", sendBufferFull = "send_buffer_full"
    case noConnection = "no_connection", cancelled
    case peerHandlerFailed = "peer_handler_failed", peerGoingAway = "peer_going_away"
    case responseRefused = "response_refused", overPeerLimit = "over_peer_limit"
    case invalidMetadata = "invalid_metadata", deadlinePassed = "deadline_passed", other

    init(_ error: RPCError) {
        switch error.reason {
        case .timedOut: self = .timedOut
        case .closed: self = .closed
        case .peerTooOld: self = .peerTooOld
        case .tooManyInFlight: self = .tooManyInFlight
        case .payloadTooLarge: self = .payloadTooLarge
        case .sendBufferFull: self = .sendBufferFull
        case .noConnection: self = .noConnection
        case .peerFailed: self = .peerHandlerFailed
        case .overPeerLimit: self = .overPeerLimit
        case .custom: self = .other
        case .peerGoingAway: self = .peerGoingAway
        case .responseRefused: self = .responseRefused
        case .invalidMetadata: self = .invalidMetadata
        case .deadlinePassed: self = .deadlinePassed
        case .noHandshakeInTime: self = .timedOut
        case .noConnectionInTime: self = .noConnection
        }
    }

    var index: Int { Self.allCases.firstIndex(of: self)! }
}

/// The `violation` dimension of `uvrpc_protocol_violations_total`.
enum ViolationKind: String, CaseIterable {
    case unknownPacketType = "unknown_packet_type", secondHandshake = "second_handshake"
    case malformedHandshake = "malformed_handshake", handshakeTooLarge = "handshake_too_large"
    case payloadTooLarge = "payload_too_large", errorReasonTooLong = "error_reason_too_long"
    case badChunk = "bad_chunk", unexpectedCancelAcknowledgement = "unexpected_acknowledgement"
    case unexpectedCancel = "unexpected_cancel", badMetadata = "bad_metadata"

    init(_ violation: ProtocolViolation) {
        switch violation.kind {
        case .unknownPacketType: self = .unknownPacketType
        case .secondHandshake: self = .secondHandshake
        case .malformedHandshake: self = .malformedHandshake
        case .handshakeTooLarge: self = .handshakeTooLarge
        case .payloadTooLarge: self = .payloadTooLarge
        case .errorReasonTooLong: self = .errorReasonTooLong
        case .chunkNotStarted, .chunkPastEnd, .transferAlreadyStarted, .tooManyTransfers: self = .badChunk
        case .unexpectedCancelAcknowledgement, .excessChunkAcknowledgement: self = .unexpectedCancelAcknowledgement
        case .unexpectedCancel: self = .unexpectedCancel
        case .metadataTooLong, .malformedMetadata, .unexpectedMetadata: self = .badMetadata
        }
    }

    var index: Int { Self.allCases.firstIndex(of: self)! }
}

/// A loop's metrics are UVRPC's object on the loop (UVLoop's one seam for
/// the layer above it): told at each turn's end, they publish what moved.
extension LoopMetrics: LoopLayer {
    func turnEnded(on loop: EventLoop) { publish(loop) }
}
