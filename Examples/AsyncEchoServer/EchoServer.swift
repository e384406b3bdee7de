// The async echo server of the README: answers every message with its own bytes.
// Usage: example-async-echo-server [PORT]   (default 9000; 0 picks a free port)
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import UVLoop
import UVRPC

@main
struct EchoServer {
    static func main() async throws {
        let port = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 9000
        let loop = try EventLoop(name: "echo-server")
        loop.start()                                          // the loop runs on its own thread
        let server = try await RPCServer.bind(on: loop, address: .ipv4(host: "127.0.0.1", port: port)) { request in
            request.payload                                   // the answer; handlers run in tasks on the loop
        }
        print("listening on \(server.address)")
        fflush(nil)                                           // for scripts reading this line through a pipe
        await server.run()                                    // until server.shutdown() is called
        await loop.shutdownAndWait()
    }
}
