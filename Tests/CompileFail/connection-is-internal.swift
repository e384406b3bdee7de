// expect-error: 'connection' is inaccessible
// The endpoint's connection is its own: resuming its reads or replacing its
// read callback from outside would break parsing or backpressure silently.
import UVLoop
import UVRPC

func meddle(with endpoint: RPCEndpoint) {
    endpoint.connection.resumeReading()
}
