// expect-error: non-Sendable type 'RPCEndpoint'
// The endpoint stored in a Sendable server-wide place reachable from any thread.
import UVLoop
import UVRPC

final class Registry: Sendable {
    let endpoints: [RPCEndpoint]
    init(_ endpoints: [RPCEndpoint]) { self.endpoints = endpoints }
}
