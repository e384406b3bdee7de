// A loopback echo demo of UVLoop: one loop, one echo server, one client
// keeping `depth` 64-byte messages in flight for a few seconds over TCP and
// then over a Unix socket, and the round trips per second it saw.
// `make bench` runs it until the real benchmark (uvrpc-bench) exists.
import Dispatch
import UVLoop
#if canImport(Glibc)
import Glibc
#endif

let messageSize = 64
let depth = 16
let seconds = 2

struct Outcome: Sendable { var roundTrips = 0; var error: String? }

func runEcho(on address: SocketAddress) -> Outcome {
    let loop = try! EventLoop(name: "echo-demo")
    loop.start()
    let done = DispatchSemaphore(value: 0)
    let result = LockedValue(Outcome())
    loop.execute {
        let listener: Listener
        do {
            listener = try loop.listen(on: address) { server in
                server.onRead = { [unowned server] bytes in
                    try? server.write(bytes)
                    return bytes.count
                }
            }
        } catch {
            result.withLock { $0.error = "\(error)" }
            done.signal()
            return
        }
        loop.connect(to: listener.address) { outcome in
            guard case .success(let client) = outcome else {
                if case .failure(let e) = outcome { result.withLock { $0.error = "\(e)" } }
                done.signal()
                return
            }
            let message = [UInt8](repeating: 0x2a, count: messageSize)
            var received = 0
            for _ in 0..<depth { try? client.write(message) }
            client.onRead = { [unowned client] bytes in
                received += bytes.count
                while received >= messageSize {
                    received -= messageSize
                    result.withLock { $0.roundTrips += 1 }
                    try? client.write(message)
                }
                return bytes.count
            }
            _ = loop.scheduleTimer(after: .seconds(seconds)) {
                client.abort()
                done.signal()
            }
        }
    }
    done.wait()
    var copy = result.withLock { $0 }
    let status = loop.shutdownAndWait()
    if status != 0 { copy.error = "uv_loop_close returned \(String(describing: status))" }
    return copy
}

print("uvloop-echo: \(messageSize)-byte messages, \(depth) in flight, \(seconds) s per transport, one loop")
var failed = false
for (name, address) in [("tcp", SocketAddress.ipv4(host: "127.0.0.1", port: 0)),
                        ("unix", SocketAddress.unix(path: "/tmp/uvloop-echo-\(getpid()).sock"))] {
    let outcome = runEcho(on: address)
    if let error = outcome.error {
        print("\(name): failed: \(error)")
        failed = true
    } else {
        print("\(name): \(outcome.roundTrips / seconds) round trips/s")
    }
}
if failed { exit(1) }
