// expect: compiles
// The one way for each job: a server with its configuration and handler,
// run in a task; a client; a call; errors decided on by code and flags.
import UVLoop
import UVRPC

struct NotFound: RPCPublicError {
    var code: RPCError.Code { .notFound }
    var publicDescription: String { "no such key" }
}

struct CallerKey: RPCConnectionKey { typealias Value = String }

func service(on group: EventLoopGroup) async throws {
    var configuration = RPCServer.Configuration(address: .ipv4(host: "127.0.0.1", port: 0))
    configuration.keepaliveTimeout = .seconds(10) // endpoint settings, flat
    configuration.shutdownGracePeriod = .seconds(5)
    let server = RPCServer(configuration: configuration, on: group,
                           admit: { peer in peer == nil ? .refuse : .accept([CallerKey.self: "\(peer!)"]) },
                           handler: .async { request, context in
        if request.payload.isEmpty { throw NotFound() }
        _ = context.connectionValues[CallerKey.self]
        return request.payload
    })
    try await withThrowingDiscardingTaskGroup { tasks in
        tasks.addTask { try await server.run() }
        guard let address = await server.listeningAddress else { return }
        let client = try await RPCClient.connect(to: address, on: group)
        do {
            _ = try await client.send([1], timeout: .seconds(5), closeOnError: false)
        } catch let error as RPCError where error.isRetryable || error.code == .unavailable {
            _ = error.requestWasSent
        }
        await client.close()
        server.close(gracePeriod: .seconds(5))
    }
    _ = await group.shutdown()
}
