// The async echo client of the README: one call, then a clean close.
import UVLoop
import UVRPC

@main
struct EchoClient {
    static func main() async throws {
        let loop = try EventLoop(name: "echo-client")
        loop.start()
        let endpoint = try await RPCClient.connect(to: .ipv4(host: "127.0.0.1", port: 9000), on: loop)
        do {
            let answer = try await endpoint.send(Array("hello".utf8), timeout: .seconds(5))
            print("answer: \(String(decoding: answer, as: UTF8.self))")
        } catch {
            print("call failed: \(error)")                    // an RPCError says what happened, and to whom
        }
        await endpoint.close()
        await loop.shutdown()
    }
}
