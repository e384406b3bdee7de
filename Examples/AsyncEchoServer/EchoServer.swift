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
        let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: port)), on: loop,
                               handler: .async { request, context in
            request.payload                                   // the answer; handlers run in tasks on the loop
        })
        try await withThrowingDiscardingTaskGroup { tasks in
            tasks.addTask { try await server.run() }          // listens, serves until closed or cancelled
            if let address = await server.listeningAddress {
                print("listening on \(address)")
                fflush(nil)                                   // for scripts reading this line through a pipe
            }
        }
        await loop.shutdown()
    }
}
