// An echo server run as a Service under a ServiceGroup (swift-service-lifecycle):
// SIGTERM or SIGINT drains it (calls in flight are answered, for at most the
// configuration's shutdownGracePeriod) and the program exits 0.
// Usage: example-service-server [PORT] [ANSWER-DELAY-MS]   (port 0 picks a free one)
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import ServiceLifecycle
import UVLoop
import UVRPC

@main
struct ServiceServer {
    static func main() async throws {
        let arguments = CommandLine.arguments.dropFirst().compactMap { Int($0) }
        let port = arguments.first ?? 9000
        let delay = Duration.milliseconds(arguments.dropFirst().first ?? 0)
        let logger = Logger(label: "service-server")
        let loops = try EventLoopGroup(name: "rpc", loopCount: 1)
        var configuration = RPCEndpoint.Configuration()
        configuration.shutdownGracePeriod = .seconds(10)
        let server = try await RPCServer.bind(on: loops, address: .ipv4(host: "127.0.0.1", port: port),
                                              configuration: configuration, handler: { request in
            if delay > .zero { try? await Task.sleep(for: delay) } // a slow handler, to see the drain wait for it
            return request.payload
        })
        let group = ServiceGroup(configuration: .init(services: [Announced(server: server)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()                                 // returns once the drain is over
        await loops.shutdownAndWait()
    }
}

/// The server, announced once the group runs (it traps its signals before it
/// starts its services, so a SIGTERM sent after this line always drains).
struct Announced: Service {
    let server: RPCServer
    func run() async {
        print("listening on \(server.address)")
        fflush(nil)
        await server.run()
    }
}
