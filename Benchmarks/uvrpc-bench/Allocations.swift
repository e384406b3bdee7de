import Dispatch
import MallocCounter
import UVLoop
import UVRPC

/// Runs `body` on `loop` and returns its result to the calling thread.
func onLoop<T: Sendable>(_ loop: EventLoop, _ body: @escaping @Sendable () -> T) -> T {
    let result = LockedValue<T?>(nil)
    let done = DispatchSemaphore(value: 0)
    loop.execute {
        result.withLock { $0 = body() }
        done.signal()
    }
    done.wait()
    return result.withLock { $0! }
}

/// Allocations per round trip in steady state, counted per thread by the
/// malloc interposer: the server loop's thread and the client loop's thread,
/// each in its own loop, in this process.
struct AllocationFigures {
    var server: Double
    var client: Double
}

enum AllocationAPI: String { case callback, async }

func measureAllocations(api: AllocationAPI, calls: Int) throws -> AllocationFigures {
    let serverLoop = try EventLoop(name: "alloc-server")
    let clientLoop = try EventLoop(name: "alloc-client")
    serverLoop.start()
    clientLoop.start()
    defer {
        serverLoop.shutdownAndWait()
        clientLoop.shutdownAndWait()
    }
    let address = LockedValue<SocketAddress?>(nil)
    let ready = DispatchSemaphore(value: 0)
    serverLoop.execute {
        let server = try! RPCServer(loop: serverLoop, address: .ipv4(host: "127.0.0.1", port: 0)) { endpoint in
            switch api {
            case .callback: endpoint.onMessage = { payload, responder in try responder.respond(payload) }
            case .async: endpoint.onMessage { $0 }
            }
        }
        address.withLock { $0 = server.address }
        ready.signal()
    }
    ready.wait()
    let connected = DispatchSemaphore(value: 0)
    let endpointBox = LockedValue<RPCEndpoint?>(nil)
    clientLoop.execute {
        RPCClient.connect(to: address.withLock { $0! }, on: clientLoop) { result in
            endpointBox.withLock { $0 = try! result.get() }
            connected.signal()
        }
    }
    connected.wait()
    let endpoint = endpointBox.withLock { $0! }
    let payload = [UInt8](repeating: 0x42, count: 64)
    let window = 16

    func run(_ count: Int) {
        let done = DispatchSemaphore(value: 0)
        switch api {
        case .callback:
            clientLoop.execute {
                // The allocation-free client path: one response handler, a tag per call.
                var sent = 0, finished = 0
                func sendNext() {
                    sent += 1
                    payload.withUnsafeBytes { endpoint.send($0, tag: UInt64(sent)) }
                }
                endpoint.onTaggedResponse = { _, _ in
                    finished += 1
                    if sent < count { sendNext() } else if finished == count { done.signal() }
                }
                for _ in 0..<window { sendNext() }
            }
        case .async:
            let remaining = LockedValue(window)
            for _ in 0..<window {
                Task(executorPreference: clientLoop) {
                    for _ in 0..<(count / window) { _ = try? await endpoint.send(payload) }
                    if remaining.withLock({ $0 -= 1; return $0 }) == 0 { done.signal() }
                }
            }
        }
        done.wait()
    }

    run(20_000) // warm up: buffers, tables and caches reach their steady size
    let serverBefore = onLoop(serverLoop) { uvrpc_thread_allocations() }
    let clientBefore = onLoop(clientLoop) { uvrpc_thread_allocations() }
    run(calls)
    let serverAfter = onLoop(serverLoop) { uvrpc_thread_allocations() }
    let clientAfter = onLoop(clientLoop) { uvrpc_thread_allocations() }
    let measured = Double(api == .async ? calls / window * window : calls)
    return AllocationFigures(server: Double(serverAfter - serverBefore) / measured,
                             client: Double(clientAfter - clientBefore) / measured)
}
