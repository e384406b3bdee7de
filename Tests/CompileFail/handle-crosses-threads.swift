// expect: compiles
// The Sendable handle crosses threads and tasks; the loop-bound endpoint is
// reached on its loop through the handle or inside loop callbacks.
import UVLoop
import UVRPC

func onTheLoop(_ endpoint: RPCEndpoint) {
    endpoint.onMessage = { request in try request.respond(request.payload) }
    let handle = endpoint.asyncEndpoint
    Task { _ = try await handle.send([1]) }
}

func fromAnywhere(_ handle: RPCAsyncEndpoint, other: EventLoop) async throws {
    other.execute { Task { _ = try await handle.send([2]) } }
    let peer = try await handle.withEndpoint { $0.peerInfo }
    _ = peer
}
