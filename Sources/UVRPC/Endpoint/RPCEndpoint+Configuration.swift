import UVLoop

extension RPCEndpoint {
    /// Settings of an endpoint; the defaults are the reference's.
    public struct Configuration: Sendable {
        /// How often a KEEPALIVE is sent, and the `k` announced. Default 10.73 s.
        public var keepaliveInterval: Duration = .milliseconds(10_730)
        /// Close when nothing arrived from the peer for this long. Default 30 s.
        public var keepaliveTimeout: Duration = .seconds(30)
        /// Close when the peer's handshake has not arrived within this. Default 30 s.
        public var handshakeTimeout: Duration = .seconds(30)
        /// Default timeout of an outgoing call, including the peer's handling. Default 60 s.
        public var messageTimeout: Duration = .seconds(60)
        /// Largest incoming payload; a larger declared length closes the
        /// connection before anything is allocated. Default 64 MiB.
        public var maximumPayloadSize = 64 << 20
        /// Most bytes one connection may hold in payloads that arrive in parts
        /// (a MESSAGE_BIG or RESPONSE_BIG over the read buffer, chunked
        /// transfers), counted when each starts (its announced size) before
        /// anything is allocated. One that would go past it is refused: its
        /// bytes are skipped as they arrive, a message is answered with an
        /// error (to a peer that takes error answers; an efro.rpc peer's call
        /// times out), a response fails its call with
        /// an ``RPCError`` of code ``RPCError/Code/resourceExhausted``,
        /// and it is logged and counted (`uvrpc_payloads_refused_total`).
        /// Default 256 MiB (four payloads of the default maximum size).
        public var maximumPayloadMemory = 256 << 20
        /// Most bytes all endpoints of one ``RPCServer`` together may hold in
        /// payloads that arrive in parts and in big payloads (over 64 KiB)
        /// waiting to be sent; past it, payloads that arrive in parts are
        /// refused as ``maximumPayloadMemory`` says (answers already made are
        /// still sent). Endpoints not made by a server have no such shared
        /// limit. Default 1 GiB.
        public var maximumServerPayloadMemory = 1 << 30
        /// How long a payload that arrives or leaves in parts may go without
        /// moving 64 KiB (or to its end): a MESSAGE_BIG or RESPONSE_BIG still
        /// arriving, a chunked transfer either way (the peer's
        /// acknowledgements of this side's chunks). One that moves slower is
        /// a peer holding memory open by trickling bytes, and the endpoint
        /// closes with ``RPCCloseReason/payloadStalled(_:)``. Time while this
        /// side does not read (backpressure) does not count. Default 10 s.
        public var payloadProgressTimeout: Duration = .seconds(10)
        /// For a TLS ``RPCServer``: how many new connections (each a TLS
        /// handshake, which costs the server a signature) one peer address may
        /// open, as a rate with a burst; past it, its connections are closed
        /// as they arrive, logged and counted
        /// (`uvrpc_connections_refused_total{reason="tls_handshake_rate"}`).
        /// Nil: no limit. Default 64 at once, then 32 a second.
        public var tlsHandshakesPerPeer: RPCRateLimit? = RPCRateLimit(perSecond: 32, burst: 64)
        /// Most packets handled from this connection in one turn of its loop
        /// (a run of KEEPALIVEs counts once): past it, reading stops until
        /// the loop's next turn, so that a peer flooding small packets delays
        /// the loop's other connections by at most this many handler calls
        /// per turn (``maximumReadBytesPerTurn`` bounds the
        /// bytes). Default 4096.
        public var maximumPacketsPerTurn = 4096
        /// Send keepalives (turn off only to test the peer's keepalive timeout).
        public var sendsKeepalives = true
        /// The connection's own settings, made from the ones below (and, for
        /// tests, `autoRead`).
        package var connectionOptions = ConnectionOptions()

        // The connection settings an endpoint's user sets, flat (each one is
        // the same-named `ConnectionOptions` setting of its connection).

        /// Speak TLS with this context (a server's for accepted connections,
        /// a client's, with the server's name, for connects). Nil (the
        /// default): plaintext.
        public var tls: TLSContext? {
            get { connectionOptions.tls }
            set { connectionOptions.tls = newValue }
        }
        /// How long a write may wait without the socket taking a byte (the
        /// peer reads nothing) before the connection fails; nil waits
        /// forever. Default 30 s.
        public var writeTimeout: Duration? {
            get { connectionOptions.writeTimeout }
            set { connectionOptions.writeTimeout = newValue }
        }
        /// How long a graceful close may take to flush what is owed before
        /// the connection is aborted. Default 10 s.
        public var gracefulCloseTimeout: Duration {
            get { connectionOptions.gracefulCloseTimeout }
            set { connectionOptions.gracefulCloseTimeout = newValue }
        }
        /// How long a graceful close waits for the peer to end its side once
        /// everything is sent (closing earlier can make the kernel reset the
        /// connection and destroy the last answers). Default 2 s.
        public var lingerTimeout: Duration {
            get { connectionOptions.lingerTimeout }
            set { connectionOptions.lingerTimeout = newValue }
        }
        /// Unsent bytes above which the endpoint is not writable (async sends
        /// wait, ``RPCEndpoint/isWritable`` turns false). Default 1 MiB.
        public var writeHighWaterMark: Int {
            get { connectionOptions.writeHighWaterMark }
            set { connectionOptions.writeHighWaterMark = newValue }
        }
        /// Unsent bytes below which it is writable again. Default 256 KiB.
        public var writeLowWaterMark: Int {
            get { connectionOptions.writeLowWaterMark }
            set { connectionOptions.writeLowWaterMark = newValue }
        }
        /// Most unconsumed bytes the connection's read buffer may hold
        /// (a partial frame it waits for): past it the connection closes.
        /// Default 4 MiB.
        public var maximumReadBufferCapacity: Int {
            get { connectionOptions.maximumReadBufferCapacity }
            set { connectionOptions.maximumReadBufferCapacity = newValue }
        }
        /// Most bytes read from one connection in a turn of its loop: a
        /// peer sending as fast as it can delays the loop's other
        /// connections by at most this much work per turn. Default 256 KiB.
        public var maximumReadBytesPerTurn: Int {
            get { connectionOptions.maximumReadBytesPerTurn }
            set { connectionOptions.maximumReadBytesPerTurn = newValue }
        }
        /// Most unsent bytes the callback `send` variants may pile up: a
        /// call that would take the connection's pending bytes over this
        /// fails at once with an ``RPCError`` of code ``RPCError/Code/resourceExhausted`` (retryable)
        /// (a single call on an empty buffer always goes). Async sends wait
        /// for ``RPCEndpoint/isWritable`` instead. Default 64 MiB.
        public var maximumPendingWriteBytes = 64 << 20
        /// How long a graceful shutdown started by a `ServiceGroup` (SIGTERM,
        /// for example) lets calls in flight finish, for ``RPCServer`` and
        /// ``RPCClientPool`` run as services. Default 10 s.
        public var shutdownGracePeriod: Duration = .seconds(10)
        /// The protocol extensions this side announces (see ``RPCExtensions``);
        /// each is used only with a peer that announces it too. Default: all.
        /// With none, the handshake is byte for byte the reference's.
        public var extensions: RPCExtensions = .all
        /// Run around every async call the endpoint makes, the first
        /// outermost (see ``RPCClientInterceptor``). Default: none.
        public var interceptors: [any RPCClientInterceptor] = []

        /// The reference's defaults.
        public init() {}

        /// This side's handshake as written on the wire.
        package var handshakeBytes: [UInt8] {
            PeerInfo(keepaliveInterval: keepaliveInterval.seconds, extensions: extensions,
                     maximumPayloadSize: maximumPayloadSize).handshakeBytes
        }
    }
}
