// example-typed-client HOST:PORT: makes the `scores` demo protocol's calls
// (MESSAGES.md) against a server of it, a line each, then closes and exits
// 0; any surprise prints `error: ...` and exits 1. Against a fresh server:
//   submit rank=1 best=10 / submit rank=1 best=30 / submit rank=2 best=20 /
//   top bob:30 alice:20 (twice) / ping ok / fail clean: nope / fail remote / echo ok 100000
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import ExampleScores
import UVLoop
import UVRPC
import UVRPCMessages

struct Surprise: Error, CustomStringConvertible { var description: String }

@main
struct TypedClient {
    static func main() async {
        let arguments = CommandLine.arguments.dropFirst()
        guard arguments.count == 1, let address = SocketAddress(parsing: arguments.first!) else {
            print("usage: example-typed-client HOST:PORT")
            exit(2)
        }
        do {
            let loop = try EventLoop(name: "typed-client")
            loop.start()
            let endpoint = try await RPCClient.connect(to: address, on: loop)
            let client = RPCMessageClient(endpoint, protocol: scoresProtocol)   // typed calls of one protocol
            do {
                try await calls(client)
            } catch {
                await endpoint.close()
                await loop.shutdown()
                throw error
            }
            await endpoint.close()
            await loop.shutdown()
        } catch {
            let line = Array("error: \(error)\n".utf8)
            _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            exit(1)
        }
    }

    static func calls(_ client: RPCMessageClient) async throws {
        for (player, score, mode, replay) in [("alice", 10, Mode.classic, nil), ("bob", 30, .blitz, Data([1, 2, 3])),
                                              ("alice", 20, .classic, nil)] {
            let result = try await client.send(SubmitScore(player: player, score: score, mode: mode, at: Date(), replay: replay))
            say("submit rank=\(result.rank) best=\(result.best)")
        }
        for request in [TopScores(count: 2), TopScores()] {
            let top = try await client.send(request)
            say((["top"] + top.entries.map { "\($0.player):\($0.score)" }).joined(separator: " "))
        }
        try await client.send(Ping())
        say("ping ok")
        do {
            try await client.send(Fail(reason: "nope", clean: true))
            throw Surprise(description: "Fail(clean) succeeded")
        } catch let error as RPCMessageError where error.kind == .remoteClean {
            say("fail clean: \(error.message)")                    // the handler's own text
        }
        do {
            try await client.send(Fail(reason: "boom", clean: false))
            throw Surprise(description: "Fail succeeded")
        } catch let error as RPCMessageError where error.kind == .remote {
            say("fail remote")                                      // its text stays on the server
        }
        var generator = SystemRandomNumberGenerator()
        let data = Data((0..<100_000).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let echo = try await client.send(Echo(data: data, note: nil))
        guard echo.data == data, echo.note == nil else { throw Surprise(description: "the echo came back different") }
        say("echo ok \(echo.data.count)")
    }

    static func say(_ line: String) {
        print(line)
        fflush(nil)
    }
}
