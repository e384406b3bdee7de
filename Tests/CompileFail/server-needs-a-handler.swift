// expect-error: missing argument for parameter 'handler'
// A server without a way to answer does not compile (it used to, and queued
// every message forever).
import UVLoop
import UVRPC

func serve(on loop: EventLoop) async throws {
    let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: loop)
    try await server.run()
}
