// A pool following a host name, driven line by line on stdin, for the DNS
// test (Tests/Peers/dns_pool_check.py, run by NameResolutionTests):
//
//   uvrpc-pool-probe HOST:PORT
//   stdin:  "states"  -> "open ADDR,ADDR"   (the open connections' addresses, sorted)
//           "update"  -> "updated"          (resolves the name again now)
//           "calls N" -> "calls ok N" or "calls failed: ERROR"
//           "quit"    -> closes the pool and exits 0
import Foundation
import UVLoop
import UVRPC

func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

guard CommandLine.arguments.count == 2, let target = SocketAddress(parsing: CommandLine.arguments[1]) else {
    FileHandle.standardError.write(Data("usage: uvrpc-pool-probe HOST:PORT\n".utf8))
    exit(2)
}
let group = try EventLoopGroup(loopCount: 1)
var configuration = RPCClientPool.Configuration()
configuration.reconnectDelay = .milliseconds(20)
configuration.maximumReconnectDelay = .milliseconds(200)
configuration.resolveInterval = .seconds(3600) // the driver says when to resolve again
let pool = await RPCClientPool.connect(to: [target], on: group, configuration: configuration)
say("ready")
while let line = readLine() {
    let words = line.split(separator: " ")
    switch words.first {
    case "states":
        let open = pool.connectionStates.filter(\.isOpen).map { "\($0.address)" }.sorted()
        say("open " + open.joined(separator: ","))
    case "update":
        await pool.update(addresses: [target])
        say("updated")
    case "calls":
        let count = words.count > 1 ? Int(words[1]) ?? 1 : 1
        do {
            for call in 0..<count { _ = try await pool.send([UInt8(call & 0xff)], timeout: .seconds(10)) }
            say("calls ok \(count)")
        } catch {
            say("calls failed: \(error)")
        }
    case "quit":
        await pool.close()
        _ = await group.shutdown()
        exit(0)
    default:
        say("unknown command: \(line)")
    }
}
await pool.close()
_ = await group.shutdown()
