// expect-error: passing closure as a 'sending' parameter risks causing data races
// A loop-bound endpoint captured by a detached task (any thread of the pool).
import UVLoop
import UVRPC

func useInATask(_ endpoint: RPCEndpoint) {
    Task.detached { endpoint.close() }
}
