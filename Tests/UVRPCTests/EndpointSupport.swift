import Foundation
import UVLoop
import UVRPC
import ServerChild
import UVTestSupport
import XCTest

/// Reverses the payload, as the reference's test handlers (and the fixtures) do.
func reversing(_ request: RPCRequest) throws {
    try request.respond(Array(request.payload.reversed()))
}

/// A server endpoint and a client endpoint connected over loopback.
struct EndpointPair: Sendable {
    let server: LoopBound<RPCEndpoint>
    let client: LoopBound<RPCEndpoint>
    let rpcServer: RunningServer
    /// Fulfilled with each side's close reason.
    let serverClosed: Promise<RPCCloseReason>
    let clientClosed: Promise<RPCCloseReason>
}

/// Configuration with short timers, for tests.
func testConfiguration(keepaliveInterval: Duration = .milliseconds(100), keepaliveTimeout: Duration = .seconds(10),
                       messageTimeout: Duration = .seconds(20)) -> RPCEndpoint.Configuration {
    var c = RPCEndpoint.Configuration()
    c.keepaliveInterval = keepaliveInterval
    c.keepaliveTimeout = keepaliveTimeout
    c.messageTimeout = messageTimeout
    return c
}

/// ``testConfiguration(keepaliveInterval:keepaliveTimeout:messageTimeout:)`` changed by `modify`.
func testConfiguration(_ modify: (inout RPCEndpoint.Configuration) -> Void) -> RPCEndpoint.Configuration {
    var c = testConfiguration()
    modify(&c)
    return c
}

extension LoopHarness {
    /// Connects a client endpoint to a new server endpoint; both get
    /// `onMessage` handlers (reversing by default) before any byte arrives.
    func endpointPair(address: SocketAddress = .ipv4(host: "127.0.0.1", port: 0),
                      server serverConfiguration: RPCEndpoint.Configuration = testConfiguration(),
                      client clientConfiguration: RPCEndpoint.Configuration = testConfiguration(),
                      serverHandler: @escaping @Sendable (RPCRequest) throws -> Void = reversing,
                      clientHandler: @escaping @Sendable (RPCRequest) throws -> Void = reversing)
        throws -> EndpointPair {
        let loop = self.loop
        let serverPromise = Promise<LoopBound<RPCEndpoint>>()
        let clientPromise = Promise<Result<LoopBound<RPCEndpoint>, ConnectError>>()
        let serverClosed = Promise<RPCCloseReason>()
        let clientClosed = Promise<RPCCloseReason>()
        let rpcServer = try RPCServer(configuration: .init(address: address, endpoint: serverConfiguration), on: loop,
                                      handler: .callback { endpoint in
            endpoint.onMessage = serverHandler
            endpoint.onClose = { serverClosed.fulfill($0) }
            serverPromise.fulfill(LoopBound(endpoint, loop: loop))
        }).startAndWait()
        try sync {
            RPCClient.connect(to: rpcServer.address, on: loop, configuration: clientConfiguration) { result in
                clientPromise.fulfill(result.map { endpoint in
                    endpoint.onMessage = clientHandler
                    endpoint.onClose = { clientClosed.fulfill($0) }
                    return LoopBound(endpoint, loop: loop)
                })
            }
        }
        let client = try clientPromise.wait("client connect").get()
        let server = try serverPromise.wait("server accept")
        return EndpointPair(server: server, client: client, rpcServer: rpcServer,
                            serverClosed: serverClosed, clientClosed: clientClosed)
    }

    /// Sends `payload` from `endpoint` and waits for the outcome.
    func call(_ endpoint: LoopBound<RPCEndpoint>, _ payload: [UInt8], timeout: Duration? = nil,
              closeOnError: Bool = true, seconds: Double = 60) throws -> Result<[UInt8], RPCError> {
        let done = Promise<Result<[UInt8], RPCError>>()
        try sync { endpoint.value.send(payload, timeout: timeout, closeOnError: closeOnError) { done.fulfill($0) } }
        return try done.wait("a call", seconds: seconds)
    }
}

/// Milliseconds on a monotonic clock, for measuring elapsed time in tests.
func monotonicMilliseconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1e6
}

/// A blocking writer on a plain socket, for a peer that writes as fast as the kernel takes bytes.
final class FDWriter: @unchecked Sendable { // the descriptor is written by one thread at a time
    let fd: Int32
    init(connectingTo address: SocketAddress) throws { fd = try connectTCP(to: address) }
    func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n <= 0 { return }
            offset += n
        }
    }
    /// Reads what is there without blocking (nothing when the peer wrote nothing yet); the bytes read.
    func drain() -> Int {
        var total = 0
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n <= 0 { return total }
            total += n
        }
    }
    func close() { _ = Foundation.close(fd) }
}
