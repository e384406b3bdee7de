/// The protocol extensions UVRPC adds to efro.rpc (see Docs/PROTOCOL.md,
/// "Extensions"). Each side announces the ones it speaks in its handshake
/// (`"x":["error","cancel","chunk","goaway","meta"]`); one is used on a connection
/// only when both handshakes announced it, so an efro.rpc peer, which
/// announces none, never receives a packet it does not know.
///
/// - ``errorAnswers``: a handler that fails answers with an ERROR packet
///   (its reason); the caller's call fails at once with
///   an ``RPCError`` with the peer's code instead of
///   waiting for its timeout.
/// - ``cancellation``: a call that is cancelled (its task) or times out
///   without closing the endpoint tells the peer, which cancels the handler
///   and sends no answer; the id is reused only once the peer confirmed.
/// - ``chunking``: payloads over 65535 bytes travel as chunks interleaved
///   with other packets, so small calls do not wait behind a big one.
/// - ``goAway``: an endpoint that starts draining tells the peer, which
///   starts no new call on that connection.
/// - ``metadata``: a call carries a small set of key/value metadata
///   (``RPCMetadata``): its deadline, a W3C `traceparent`, the caller's keys.
public struct RPCExtensions: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// ERROR answers for failed handlers (wire name `error`).
    public static let errorAnswers = RPCExtensions(rawValue: 1 << 0)
    /// CANCEL and its acknowledgement (wire name `cancel`).
    public static let cancellation = RPCExtensions(rawValue: 1 << 1)
    /// Chunked big payloads (wire name `chunk`).
    public static let chunking = RPCExtensions(rawValue: 1 << 2)
    /// GOAWAY before a drain (wire name `goaway`).
    public static let goAway = RPCExtensions(rawValue: 1 << 3)
    /// Call metadata and deadlines (wire name `meta`).
    public static let metadata = RPCExtensions(rawValue: 1 << 4)
    /// Every extension this library speaks (the default of ``RPCEndpoint/Configuration/extensions``).
    public static let all: RPCExtensions = [.errorAnswers, .cancellation, .chunking, .goAway, .metadata]

    /// Each extension with its name on the wire, in the order they are announced.
    static let wireNames: [(RPCExtensions, String)] = [
        (.errorAnswers, "error"), (.cancellation, "cancel"), (.chunking, "chunk"), (.goAway, "goaway"), (.metadata, "meta"),
    ]

    /// The extension a wire name stands for; nil for names this library does not know.
    init?(wireName: String) {
        guard let known = Self.wireNames.first(where: { $0.1 == wireName }) else { return nil }
        self = known.0
    }

    /// The wire names of these extensions, e.g. `["error","cancel"]`.
    public var description: String {
        "[" + Self.wireNames.filter { contains($0.0) }.map { "\"\($0.1)\"" }.joined(separator: ",") + "]"
    }
}
