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
        var configuration = RPCServer.Configuration(address: .ipv4(host: "127.0.0.1", port: port))
        configuration.shutdownGracePeriod = .seconds(10)
        let server = RPCServer(configuration: configuration, on: loops, logger: logger, handler: .async { request, _ in
            if delay > .zero { try? await Task.sleep(for: delay) } // a slow handler, to see the drain wait for it
            return request.payload
        })
        // Nothing listens before the group runs the server, and the group traps
        // its signals before it starts its services: a SIGTERM at any time drains.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: server), .init(service: Announcer(server: server), successTerminationBehavior: .ignore)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()                                 // returns once the drain is over
        await loops.shutdown()
    }
}

/// Prints the address once the server listens, for scripts reading it through a pipe.
struct Announcer: Service {
    let server: RPCServer
    func run() async {
        guard let address = await server.listeningAddress else { return }
        print("listening on \(address)")
        fflush(nil)
    }
}
