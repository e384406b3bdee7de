// The async echo server of the README: answers every message with its own bytes.
import UVLoop
import UVRPC

@main
struct EchoServer {
    static func main() async throws {
        let loop = try EventLoop(name: "echo-server")
        loop.start()                                          // the loop runs on its own thread
        let server = try await RPCServer.bind(on: loop, address: .ipv4(host: "127.0.0.1", port: 9000)) { request in
            request                                           // each message runs in its own task on the loop
        }
        print("listening on \(server.address)")
        await server.run()                                    // until server.shutdown() is called
        await loop.shutdownAndWait()
    }
}
