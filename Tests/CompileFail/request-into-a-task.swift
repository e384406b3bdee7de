// expect-error: passing closure as a 'sending' parameter risks causing data races
// A callback request (its payload is a view into the read buffer) kept past the call by a task.
import UVLoop
import UVRPC

func answerLater(_ endpoint: RPCEndpoint) {
    endpoint.onMessage = { request in
        Task.detached { try request.respond([1]) }
    }
}
