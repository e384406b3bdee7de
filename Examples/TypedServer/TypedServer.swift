// example-typed-server [PORT]: serves the `scores` demo protocol of
// MESSAGES.md (typed calls in efro.message JSON) on 127.0.0.1:PORT (default
// 9000; 0 picks a free port); its first line is `listening on 127.0.0.1:PORT`.
// example-typed-client and Python efro.message peers talk to it alike.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ExampleScores
import Logging
import UVLoop
import UVRPC
import UVRPCMessages

@main
struct TypedServer {
    static func main() async throws {
        let port = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 9000
        let loop = try EventLoop(name: "typed-server")
        loop.start()
        let board = ScoreBoard()                              // the state; its handlers() answer each message type
        let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: port)), on: loop,
                               logger: Logger(label: "example-typed-server"),   // handler failures are logged here
                               handler: try .messages(board.handlers()))
        try await withThrowingDiscardingTaskGroup { tasks in
            tasks.addTask { try await server.run() }
            if let address = await server.listeningAddress {
                print("listening on \(address)")
                fflush(nil)
            }
        }
        await loop.shutdown()
    }
}
