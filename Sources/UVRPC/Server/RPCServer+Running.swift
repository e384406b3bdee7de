import UVLoop

/// A server running in a task of its own, with its address: what tests,
/// benchmarks and the tool start servers with (an application runs
/// ``RPCServer/run()`` in a task it owns, or under a `ServiceGroup`).
package struct RunningServer: Sendable {
    package let server: RPCServer
    /// Where it listens.
    package let address: SocketAddress
    /// The task running ``RPCServer/run()``.
    package let task: Task<Void, any Error>

    /// The open endpoints (``RPCServer/openEndpoints``).
    package var openEndpoints: [RPCAsyncEndpoint] { server.openEndpoints }
    /// New endpoints (``RPCServer/endpoints``).
    package var endpoints: AsyncStream<RPCAsyncEndpoint> { server.endpoints }
    /// Bytes held against the server's payload budget.
    package var payloadMemoryInUse: Int { server.payloadMemoryInUse }

    /// Closes at once and waits until `run()` returned.
    package func stop() async {
        server.close()
        _ = await task.result
    }

    /// Drains for at most `gracePeriod` and waits until `run()` returned.
    package func stop(gracePeriod: Duration) async {
        server.close(gracePeriod: gracePeriod)
        _ = await task.result
    }

    /// ``stop()`` for code that is not async (not on an event loop).
    package func stopAndWait() {
        _ = try? runBlocking { await stop() }
    }
}

extension RPCServer {
    /// Runs the server in a new task and returns once it listens.
    /// - Throws: what `run()` threw when it could not listen.
    package func start() async throws -> RunningServer {
        let task = Task { try await run() }
        guard let address = await listeningAddress else {
            try await task.value
            throw CancellationError() // stopped before it listened, without an error
        }
        return RunningServer(server: self, address: address, task: task)
    }

    /// ``start()`` for code that is not async (not on an event loop).
    package func startAndWait() throws -> RunningServer {
        try runBlocking { try await self.start() }
    }
}
