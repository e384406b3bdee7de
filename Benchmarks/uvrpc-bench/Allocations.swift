import CoreMetrics
import Dispatch
import MallocCounter
import ServerChild
import Prometheus
import UVLoop
import UVRPC

/// Allocations per round trip in steady state, counted per thread by the
/// malloc interposer, summed over the server's loop threads and over the
/// clients' loop threads (each side its own group of loops, in this process).
struct AllocationFigures {
    var server: Double
    var client: Double
    /// Of these, OpenSSL's own (its memory hooks), per round trip: TLS only.
    var serverOpenSSL: Double = 0
    var clientOpenSSL: Double = 0
}

/// OpenSSL's allocations are counted apart from the first use of this on
/// (before any OpenSSL call of the process: the bench touches it first thing).
let openSSLAllocationsCounted: Bool = uvrpc_count_openssl_allocations() == 1

enum AllocationAPI: String { case callback, async }

/// Calls between a server spread over `loops` loops and one client
/// connection on each loop of a client group of the same size (16 in flight
/// on each), so every loop of both sides carries calls.
func measureAllocations(api: AllocationAPI, calls: Int, loops: Int, tls: Bool = false) throws -> AllocationFigures {
    var serverConfiguration = RPCEndpoint.Configuration(), clientConfiguration = RPCEndpoint.Configuration()
    if tls {
        let files = try benchTLSFiles.get()
        serverConfiguration.tls = try TLSContext(.server(certificateChain: .file(files.certificate),
                                                                           privateKey: .file(files.key)))
        clientConfiguration.tls = try TLSContext(.client(trustRoots: .certificates(.file(files.ca))))
    }
    let (serverSettings, clientSettings) = (serverConfiguration, clientConfiguration)
    let serverGroup = try EventLoopGroup(name: "alloc-server", loopCount: loops)
    let clientGroup = try EventLoopGroup(name: "alloc-client", loopCount: loops)
    defer {
        clientGroup.syncShutdown()
        serverGroup.syncShutdown()
    }
    let handler: RPCHandler = switch api {
    case .callback: .callback { endpoint in endpoint.onMessage = { request in try request.respond(request.payload) } }
    case .async: .async { request, _ in request.payload }
    }
    let server = try RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: serverSettings),
                               on: serverGroup, handler: handler).startAndWait()
    let endpoints = try runBlocking {
        var endpoints: [RPCAsyncEndpoint] = []
        for loop in clientGroup.loops {
            endpoints.append(try await RPCClient.connect(to: server.address, on: loop, configuration: clientSettings))
        }
        return endpoints
    }
    let payload = [UInt8](repeating: 0x42, count: 64)
    let window = 16
    let perConnection = calls / loops / window * window

    func run(_ count: Int) {
        let done = DispatchSemaphore(value: 0)
        for endpoint in endpoints {
            switch api {
            case .callback:
                _ = try? runBlocking { try await endpoint.withEndpoint { endpoint in
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
                } }
            case .async:
                let remaining = LockedValue(window)
                for _ in 0..<window {
                    Task(executorPreference: endpoint.loop.taskExecutor) {
                        for _ in 0..<(count / window) { _ = try? await endpoint.send(payload) }
                        if remaining.withLock({ $0 -= 1; return $0 }) == 0 { done.signal() }
                    }
                }
            }
        }
        for _ in endpoints { done.wait() }
    }

    func allocations(_ group: EventLoopGroup) -> UInt64 {
        group.loops.reduce(0) { total, loop in total + ((try? loop.submitAndWait { uvrpc_thread_allocations() }) ?? 0) }
    }

    func openSSLAllocations(_ group: EventLoopGroup) -> UInt64 {
        group.loops.reduce(0) { total, loop in
            total + ((try? loop.submitAndWait { uvrpc_thread_openssl_allocations() }) ?? 0)
        }
    }

    run(20_000 / loops) // warm up: buffers, tables and caches reach their steady size
    let serverBefore = allocations(serverGroup), clientBefore = allocations(clientGroup)
    let serverSSLBefore = openSSLAllocations(serverGroup), clientSSLBefore = openSSLAllocations(clientGroup)
    run(perConnection)
    let serverAfter = allocations(serverGroup), clientAfter = allocations(clientGroup)
    let serverSSLAfter = openSSLAllocations(serverGroup), clientSSLAfter = openSSLAllocations(clientGroup)
    let measured = Double(perConnection * loops)
    server.stopAndWait()
    return AllocationFigures(server: Double(serverAfter - serverBefore) / measured,
                             client: Double(clientAfter - clientBefore) / measured,
                             serverOpenSSL: Double(serverSSLAfter - serverSSLBefore) / measured,
                             clientOpenSSL: Double(clientSSLAfter - clientSSLBefore) / measured)
}

/// A Prometheus backend for swift-metrics, bootstrapped on first use (once
/// per process): the allocation rows "with metrics" run after it.
let benchMetricsRegistry: PrometheusCollectorRegistry = {
    let registry = PrometheusCollectorRegistry()
    MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    return registry
}()
