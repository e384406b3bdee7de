/// Settings of a ``Connection``; the defaults suit request/response traffic.
public struct ConnectionOptions: Sendable {
    /// Disable Nagle's algorithm (`TCP_NODELAY`) on TCP connections. Default true.
    public var noDelay = true
    /// Read buffer (`RingBuffer`) capacity at start and after shrinking. Default 8 KiB.
    public var initialReadBufferCapacity = 8192
    /// Largest the read buffer may grow to hold bytes the read handler has
    /// not consumed. Reaching it closes the connection with
    /// ``ConnectionError/readBufferLimitExceeded(connection:limit:)``. Default 4 MiB.
    public var maximumReadBufferCapacity = 4 << 20
    /// Pending outgoing bytes above which ``Connection/isWritable`` turns false. Default 1 MiB.
    public var writeHighWaterMark = 1 << 20
    /// Pending outgoing bytes below which ``Connection/isWritable`` turns true again. Default 256 KiB.
    public var writeLowWaterMark = 256 << 10
    /// How long a graceful ``Connection/close()`` may take to flush pending
    /// writes before the connection is aborted. Default 10 s.
    public var gracefulCloseTimeout: Duration = .seconds(10)
    /// How long a graceful ``Connection/close()``, once everything is sent
    /// and the write side shut down, waits for the peer to close its side,
    /// dropping whatever it still sends. Closing a socket that has unread
    /// bytes coming makes the kernel reset the connection, and the reset
    /// destroys what the peer had not read yet (the last answers).
    /// Zero closes at once. Default 2 s.
    public var lingerTimeout: Duration = .seconds(2)
    /// How long a write may wait without the socket taking a single byte
    /// (the peer is not reading) before the connection fails with
    /// ``ConnectionError/writeTimedOut(connection:pendingBytes:timeout:)``.
    /// `nil` waits forever. Checked only while the socket is full. Default 30 s.
    public var writeTimeout: Duration? = .seconds(30)
    /// Most bytes read from this connection in one turn of its loop (and in
    /// one read of a big payload straight into place): past it, reading
    /// stops until the loop's next turn, so that a peer sending as fast as
    /// it can delays the loop's other connections by at most this much work
    /// per turn. Default 256 KiB.
    public var maximumReadBytesPerTurn = 256 << 10
    /// Start reading as soon as the accept or connect callback returned. Default true.
    public var autoRead = true
    /// Speak TLS over the stream with this context (a server's for accepted
    /// connections, a client's for connects). Nil (the default): plaintext.
    public var tls: TLSContext?

    /// The defaults.
    public init() {}
}
