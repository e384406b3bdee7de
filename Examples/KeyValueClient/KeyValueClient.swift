import UVLoop
import UVRPC

/// The key-value server's client, on the async API: connects, runs a few
/// commands, waits for a key with a time to live to expire, and prints each
/// answer.
///
/// Usage: `example-kv-client [PORT]` (default 9100).
@main
struct KeyValueClient {
    static func main() async throws {
        let port = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 9100
        let loop = try EventLoop(name: "kv-client")
        loop.start()                                      // the loop runs on its own thread
        let kv = try await RPCClient.connect(to: .ipv4(host: "127.0.0.1", port: port), on: loop)

        func send(_ command: String) async throws -> String {
            String(decoding: try await kv.send(Array(command.utf8), timeout: .seconds(5)), as: UTF8.self)
        }
        for command in ["SET greeting hello", "GET greeting", "DEL greeting", "GET greeting", "SET session abc ttl=50"] {
            print("\(command) -> \(try await send(command))")
        }
        // The key expires on the server's timer; ask until it is gone (5 s at most).
        var polls = 0
        while try await send("GET session") != "NOT_FOUND" && polls < 250 {
            polls += 1
            try await Task.sleep(for: .milliseconds(20))
        }
        print(polls < 250 ? "session expired" : "session did not expire")
        print("STATS -> \(try await send("STATS"))")
        await kv.close()
        await loop.shutdown()
    }
}
