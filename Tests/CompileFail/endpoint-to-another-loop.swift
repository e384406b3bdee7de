// expect-error: non-Sendable type 'RPCEndpoint'
// A loop-bound endpoint captured by a job for another loop.
import UVLoop
import UVRPC

func sendToAnotherLoop(_ endpoint: RPCEndpoint, other: EventLoop) {
    other.execute { endpoint.close() }
}
