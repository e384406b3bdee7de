import UVLoop

/// The `Sendable` handle of an ``RPCEndpoint``: its async API, usable from
/// any thread or task.
///
/// ``RPCEndpoint`` is loop-bound and not `Sendable`, so the compiler refuses
/// to hand it to another thread; this handle is what crosses. Every member
/// hops onto the endpoint's loop before it touches the endpoint (without a
/// hop when the caller is on that loop already). Get one from
/// ``RPCEndpoint/asyncEndpoint``, ``RPCClient/connect(to:on:timeout:configuration:logger:handler:)``,
/// ``RPCServer/endpoints`` or ``RPCHandlerContext/endpoint``. Two handles of
/// the same endpoint are equal.
///
/// ```swift
/// let endpoint = try await RPCClient.connect(to: address, on: loop)
/// let answer = try await endpoint.send(Array("hello".utf8))
/// let peer = try await endpoint.withEndpoint { $0.peerInfo }   // loop-bound state, read on the loop
/// await endpoint.close()
/// ```
public struct RPCAsyncEndpoint: @unchecked Sendable, Hashable { // `endpoint` is touched on its loop only
    // Sendable invariant: every member reads only `endpoint`'s immutable
    // `let`s off the loop (label, connection, loop) and reaches everything
    // else through `loop.execute` or after checking `loop.inEventLoop`.
    package let endpoint: RPCEndpoint

    init(_ endpoint: RPCEndpoint) { self.endpoint = endpoint }

    /// The endpoint's name in logs and errors (``RPCEndpoint/label``).
    public var label: String { endpoint.label }
    /// The loop the endpoint runs on.
    public var loop: EventLoop { endpoint.connection.loop }

    /// Runs `body` with `endpoint` on its loop when the caller is there,
    /// else queues it there; false when the loop takes no more work.
    @discardableResult
    private func onLoop(_ body: @escaping @Sendable (RPCEndpoint) -> Void) -> Bool {
        let endpoint = self
        if loop.inEventLoop { body(endpoint.endpoint); return true }
        return loop.execute { body(endpoint.endpoint) }
    }

    /// Runs `body` on the endpoint's loop with the loop-bound ``RPCEndpoint``
    /// and returns its result: the way to read or change its loop-bound state
    /// (``RPCEndpoint/peerInfo``, ``RPCEndpoint/connectionValues``, its callback
    /// handlers...) from another thread or task.
    /// - Throws: what `body` throws, or `EventLoopError/shutDown(loop:)`
    ///   when the loop takes no more work.
    public func withEndpoint<T: Sendable>(_ body: @escaping @Sendable (RPCEndpoint) throws -> T) async throws -> T {
        let endpoint = self
        return try await loop.submit { try body(endpoint.endpoint) }
    }

    /// Sends `payload` and returns the response.
    ///
    /// Metadata and deadlines (extension `meta`, which every UVRPC peer
    /// speaks): `metadata` travels with the message (``RPCMetadata``), and
    /// so does the call's deadline when it has one: `timeout` when given, or
    /// what is left of the deadline of the handler this task runs in
    /// (``RPCHandlerContext/deadline``; the call's timeout is then at most
    /// that, and at most its own timeout or the endpoint's messageTimeout).
    /// A call cut short by an inherited deadline does not close the endpoint
    /// when that runs out, whatever `closeOnError` says: the handler's caller
    /// gave up, the peer did not fail. To an efro.rpc peer neither is sent.
    ///
    /// Backpressure: while the connection is not writable (more unsent bytes
    /// than its high-water mark), the call waits before it is written, in
    /// order with other waiting async sends; the payload is not copied while
    /// it waits. Its timeout starts when it is written. A peer that stops
    /// reading altogether is cut off by ``RPCEndpoint/Configuration/writeTimeout``,
    /// which fails the waiting calls.
    ///
    /// Before the peer's handshake came: a call that carries metadata (any
    /// call with a timeout does) or more than 65535 bytes waits for it (what
    /// it may send depends on it), and that wait counts against its
    /// timeout: at its deadline it fails unsent, code
    /// ``RPCError/Code/deadlineExceeded``.
    ///
    /// - Throws: an ``RPCError`` (timed out, closed, peer too old, every id
    ///   in flight), as the callback API reports; or `CancellationError` when
    ///   the task is cancelled first. Cancelling ends the call and, unlike the
    ///   reference (which closes the whole endpoint when a send is
    ///   cancelled), leaves the endpoint open. A UVRPC peer is told (extension
    ///   `cancel`): its handler is cancelled, and the id stays reserved until
    ///   it confirms, so a late answer can reach no later call. With an
    ///   efro.rpc peer the id is freed at once and a late answer is ignored.
    ///   A UVRPC peer's failed handler makes this throw
    ///   an ``RPCError`` of code ``RPCError/Code/handlerFailed`` at once.
    ///   Metadata over its bounds fails with ``RPCError/Code/invalidArgument``
    ///   before anything is sent; an inherited deadline that passed already
    ///   with ``RPCError/Code/deadlineExceeded``, not sent.
    ///
    /// It runs on the caller's executor (`nonisolated(nonsending)`): a task
    /// on the endpoint's loop calls straight into the endpoint, with no
    /// executor switch (each switch looked up the task's executor preference
    /// under a lock: a third of an async caller's CPU).
    nonisolated(nonsending)
    public func send(_ payload: [UInt8], metadata: RPCMetadata = RPCMetadata(), timeout: Duration? = nil,
                     closeOnError: Bool = true) async throws -> [UInt8] {
        if endpoint.sendsPlainly { // no tracer, no interceptors: the common case, with no extra async frame
            return try await sendNow(payload, metadata: metadata, timeout: timeout, closeOnError: closeOnError)
        }
        if let tracer = endpoint.tracer {
            return try await sendTraced(tracer, metadata: metadata) { metadata in
                try await self.sendIntercepted(payload, metadata: metadata, timeout: timeout, closeOnError: closeOnError)
            }
        }
        return try await sendIntercepted(payload, metadata: metadata, timeout: timeout, closeOnError: closeOnError)
    }

    /// ``send(_:metadata:timeout:closeOnError:)`` through the endpoint's interceptors, if any.
    nonisolated(nonsending)
    private func sendIntercepted(_ payload: [UInt8], metadata: RPCMetadata, timeout: Duration?,
                                 closeOnError: Bool) async throws -> [UInt8] {
        let interceptors = endpoint.configuration.interceptors
        if interceptors.isEmpty {
            return try await sendNow(payload, metadata: metadata, timeout: timeout, closeOnError: closeOnError)
        }
        let endpoint = self
        var chain: nonisolated(nonsending) @Sendable (RPCOutgoingCall) async throws -> [UInt8] = { call in
            try await endpoint.sendNow(call.payload, metadata: call.metadata, timeout: call.timeout, closeOnError: closeOnError)
        }
        for interceptor in interceptors.reversed() {
            let next = chain
            chain = { call in try await interceptor.intercept(call, next: next) }
        }
        return try await chain(RPCOutgoingCall(payload: payload, metadata: metadata, timeout: timeout, endpoint: label))
    }

    /// ``send(_:metadata:timeout:closeOnError:)`` past the interceptors.
    @inline(__always) nonisolated(nonsending)
    private func sendNow(_ payload: [UInt8], metadata: RPCMetadata, timeout: Duration?,
                         closeOnError: Bool) async throws -> [UInt8] {
        // Constants, not variables: a variable the continuation's closure captures
        // costs a task allocation per call.
        let (timeout, outgoing, deadlineBound) = try callOptions(metadata: metadata, timeout: timeout)
        // A call cut short by the deadline it inherited times out because the handler's
        // caller gave up, not because the peer failed: that never closes the endpoint.
        let closeOnError = closeOnError && !deadlineBound
        // A caller on the loop reuses a call its endpoint kept from an earlier
        // one (the response's Array is then the only allocation); a caller off
        // the loop allocates one and hands it to the loop's job queue (no closure).
        let onLoop = loop.inEventLoop
        let call = onLoop ? endpoint.takeSpareCall() : AsyncCall()
        let endpoint = self
        let outcome: Result<[UInt8], any Error>
        do {
            outcome = .success(try await withTaskCancellationHandler {
                try await withUnsafeThrowingContinuation { continuation in
                    call.install(continuation)
                    if Task.isCancelled {
                        call.finish(.failure(CancellationError()))
                    } else if onLoop { // no closure: the common case of a task on the loop
                        endpoint.endpoint.startAsyncCall(payload, timeout: timeout, closeOnError: closeOnError, call: call,
                                                         metadata: outgoing)
                    } else if !call.submit(to: endpoint.endpoint, payload, timeout: timeout, closeOnError: closeOnError,
                                           metadata: outgoing) {
                        call.finish(.failure(RPCError.closed(endpoint: endpoint.label, messageID: nil, reason: .local)))
                    }
                }
            } onCancel: {
                guard !call.isFinished else { return }
                // Always through the queue: the canceller may be inside a loop callback.
                if !endpoint.loop.execute({ endpoint.endpoint.cancelCall(call) }) { call.finish(.failure(CancellationError())) }
            })
        } catch {
            outcome = .failure(error)
        }
        call.settle()
        if onLoop && loop.inEventLoop { self.endpoint.keepSpareCall(consume call) }
        return try outcome.get()
    }

    /// The call's timeout (capped by a deadline inherited from the handler
    /// this task runs, if any), what it carries besides its payload, and
    /// whether the inherited deadline is what bounds it.
    @inline(__always)
    private func callOptions(metadata: RPCMetadata, timeout: Duration?) throws(RPCError)
        -> (Duration?, RPCEndpoint.OutgoingMetadata?, Bool) {
        if InheritedDeadline.everBound.load(ordering: .relaxed) { return try inheritedCallOptions(metadata: metadata, timeout: timeout) }
        if metadata.isEmpty && timeout == nil { return (nil, nil, false) }
        return (timeout, .init(entries: metadata, sendsDeadline: timeout != nil), false)
    }

    /// ``callOptions(metadata:timeout:)`` once some handler ran with a deadline
    /// (out of line: a `ContinuousClock.Instant` is handled through its value
    /// witnesses, which the common path does without).
    @inline(never)
    private func inheritedCallOptions(metadata: RPCMetadata, timeout: Duration?) throws(RPCError)
        -> (Duration?, RPCEndpoint.OutgoingMetadata?, Bool) {
        guard let inherited = InheritedDeadline.current else { // only inside a handler whose call has a deadline
            if metadata.isEmpty && timeout == nil { return (nil, nil, false) }
            return (timeout, .init(entries: metadata, sendsDeadline: timeout != nil), false)
        }
        let left = ContinuousClock.now.duration(to: inherited)
        guard left > .zero else { throw .deadlinePassed(endpoint: label) }
        // At most what is left, and never longer than the call's own timeout
        // (the endpoint's messageTimeout when it has none).
        let own = timeout ?? endpoint.configuration.messageTimeout
        if own <= left { return (own, .init(entries: metadata, sendsDeadline: true), false) }
        return (left, .init(entries: metadata, sendsDeadline: true), true)
    }

    /// Handles every incoming message with `handler`, as
    /// ``RPCHandler/async(interceptors:_:)`` does; messages that arrived before it
    /// was set are handed to it. Replaces a callback ``RPCEndpoint/onMessage``
    /// handler. (Public code gives its handler when it makes the server or
    /// connects; tests switch handlers with this.)
    package func onMessage(_ handler: nonisolated(nonsending) @escaping @Sendable (RPCAsyncRequest, RPCHandlerContext) async throws -> [UInt8]) {
        onLoop { $0.installAsyncHandler(handler) }
    }

    /// Closes the endpoint at once (``RPCEndpoint/close()``) and returns,
    /// with the reason, once the connection is fully closed.
    @discardableResult
    public func close() async -> RPCCloseReason {
        await closing { $0.close() }
    }

    /// Closes the endpoint once nothing is in flight, or after `gracePeriod`
    /// at the latest (``RPCEndpoint/close(gracePeriod:)``), and returns, with
    /// the reason, once the connection is fully closed.
    @discardableResult
    public func close(gracePeriod: Duration) async -> RPCCloseReason {
        await closing { $0.beginDrain(gracePeriod: gracePeriod) }
    }

    /// Waits until the endpoint is fully closed (by either side) and returns the reason.
    /// - Throws: `CancellationError` when the task is cancelled first (the
    ///   endpoint stays as it is).
    public func closed() async throws -> RPCCloseReason {
        let reason = await OneShot<RPCCloseReason?>().wait(orWhenCancelled: nil) { waiter in
            let queued = onLoop { endpoint in endpoint.addCloseWaiter { waiter.resume($0) } }
            if !queued { waiter.resume(.local) }
        }
        guard let reason else { throw CancellationError() }
        return reason
    }

    /// Runs `start` on the loop and waits for the close, returning its reason.
    private func closing(_ start: @escaping @Sendable (RPCEndpoint) -> Void) async -> RPCCloseReason {
        await withHandOff { deliver in
            let queued = onLoop { endpoint in
                endpoint.addCloseWaiter { deliver($0) }
                start(endpoint)
            }
            if !queued { deliver(.local) }
        }
    }

    public static func == (lhs: RPCAsyncEndpoint, rhs: RPCAsyncEndpoint) -> Bool { lhs.endpoint === rhs.endpoint }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(endpoint)) }
}

extension RPCEndpoint {
    /// This endpoint's `Sendable` handle: its async API, for other threads and tasks.
    public var asyncEndpoint: RPCAsyncEndpoint { RPCAsyncEndpoint(self) }
}
