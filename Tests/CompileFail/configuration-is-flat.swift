// expect-error: has no dynamic member 'endpoint'
// A server's (and a pool's) endpoint settings are its own, by name
// (`configuration.tls`); the nested value behind them is not public.
import UVLoop
import UVRPC

func configure() {
    var configuration = RPCServer.Configuration(address: .ipv4(host: "127.0.0.1", port: 0))
    configuration.endpoint.keepaliveTimeout = .seconds(10)
}
