// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "UVRPC",
    products: [
        .library(name: "UVLoop", targets: ["UVLoop"]),
        .library(name: "UVRPC", targets: ["UVRPC"]),
        .library(name: "UVRPCMessages", targets: ["UVRPCMessages"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // Graceful shutdown under a ServiceGroup (RPCServer and RPCClientPool are Services).
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        // Counters, gauges and a timer of what the endpoints do (see LoopMetrics).
        .package(url: "https://github.com/apple/swift-metrics", from: "2.4.0"),
        // Spans per call and per handler when a tracer is bootstrapped, carried in the call's metadata.
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.1.0"),
        // `uvrpc serve --metrics`: renders the metrics in the Prometheus text format (the tool only).
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        // `make docs`: the DocC catalogs of UVLoop and UVRPC (a command plugin; nothing is linked).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.3.0"),
        // Command-line tools only (uvrpc, uvrpc-bench); the libraries do not use it.
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // libuv itself, through pkg-config; Debian/Ubuntu ship it as libuv1-dev.
        // Linux only: the shim uses Linux calls (prctl, sched_setaffinity, accept4).
        .systemLibrary(
            name: "CLibUV",
            path: "Sources/CLibUV",
            pkgConfig: "libuv",
            providers: [.apt(["libuv1-dev"])]
        ),
        // OpenSSL from the system, through pkg-config; Debian/Ubuntu ship it as libssl-dev.
        .systemLibrary(
            name: "COpenSSL",
            path: "Sources/COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // The event-loop networking layer: loop, timers, TCP / Unix sockets (plaintext or TLS), ring-buffer reads.
        .target(
            name: "UVLoop",
            dependencies: ["CLibUV", "COpenSSL"]
        ),
        // The efro.rpc protocol (version 2) on top of UVLoop.
        .target(
            name: "UVRPC",
            dependencies: ["UVLoop", .product(name: "Logging", package: "swift-log"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "CoreMetrics", package: "swift-metrics"),
                           .product(name: "Tracing", package: "swift-distributed-tracing")]
        ),
        // Typed calls on top of UVRPC: Codable messages in efro.message's JSON
        // (wire-compatible with Python efro.message peers). Uses Date and Data
        // from FoundationEssentials; UVRPC itself stays free of Foundation.
        .target(
            name: "UVRPCMessages",
            dependencies: ["UVLoop", "UVRPC"]
        ),
        // The uvrpc command-line tool: `serve` (echo server) and `call` (load and check).
        // Its folder is not `Sources/uvrpc`: that differs from `Sources/UVRPC` only
        // by case, and the tree must check out on case-insensitive file systems.
        .executableTarget(
            name: "uvrpc",
            dependencies: ["UVLoop", "UVRPC", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "CoreMetrics", package: "swift-metrics"),
                           .product(name: "Prometheus", package: "swift-prometheus")],
            path: "Sources/uvrpc-tool"
        ),
        // A traced UVRPC process (a W3C test tracer bootstrapped), for TracingTests: spans across two processes.
        .executableTarget(
            name: "uvrpc-trace-peer",
            dependencies: ["UVLoop", "UVRPC", .product(name: "Tracing", package: "swift-distributed-tracing")],
            path: "Tests/TracePeer"
        ),
        // A pool following a host name, driven on stdin, for NameResolutionTests' DNS check.
        .executableTarget(
            name: "uvrpc-pool-probe",
            dependencies: ["UVLoop", "UVRPC"],
            path: "Tests/PoolProbe"
        ),
        // Blocking calls made on a loop thread, for LoopMisuseTests (each must stop the process with a message).
        .executableTarget(
            name: "uvloop-misuse",
            dependencies: ["UVLoop"],
            path: "Tests/Misuse"
        ),
        // The README's async echo server and client, built with everything so they keep compiling.
        .executableTarget(
            name: "example-async-echo-server",
            dependencies: ["UVLoop", "UVRPC"],
            path: "Examples/AsyncEchoServer"
        ),
        .executableTarget(
            name: "example-async-echo-client",
            dependencies: ["UVLoop", "UVRPC"],
            path: "Examples/AsyncEchoClient"
        ),
        // A key-value server on the callback API (timers, per-connection state, signals) and its async client.
        .executableTarget(
            name: "example-kv-server",
            dependencies: ["UVLoop", "UVRPC"],
            path: "Examples/KeyValueServer"
        ),
        .executableTarget(
            name: "example-kv-client",
            dependencies: ["UVLoop", "UVRPC"],
            path: "Examples/KeyValueClient"
        ),
        // The `scores` demo protocol of MESSAGES.md (types, declaration, the server's board and
        // handlers), shared by the typed examples, the tests and the benchmark.
        .target(
            name: "ExampleScores",
            dependencies: ["UVRPC", "UVRPCMessages"],
            path: "Examples/Scores"
        ),
        // Typed calls both ways: the scores server and a client making each of its calls.
        .executableTarget(
            name: "example-typed-server",
            dependencies: ["UVLoop", "UVRPC", "UVRPCMessages", "ExampleScores", .product(name: "Logging", package: "swift-log")],
            path: "Examples/TypedServer"
        ),
        .executableTarget(
            name: "example-typed-client",
            dependencies: ["UVLoop", "UVRPC", "UVRPCMessages", "ExampleScores"],
            path: "Examples/TypedClient"
        ),
        // A server run as a Service under a ServiceGroup: SIGTERM drains it.
        .executableTarget(
            name: "example-service-server",
            dependencies: ["UVLoop", "UVRPC", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "Logging", package: "swift-log")],
            path: "Examples/ServiceServer"
        ),
        // The plain C libuv baseline (server and load generator) of the benchmark.
        .executableTarget(
            name: "uvrpc-c",
            dependencies: ["CLibUV", "COpenSSL"],
            path: "Benchmarks/CBaseline",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // Counts allocations per thread (malloc interposer); linked into uvrpc-bench only.
        .target(
            name: "MallocCounter",
            dependencies: ["COpenSSL"],
            path: "Benchmarks/MallocCounter",
            linkerSettings: [.linkedLibrary("crypto")]
        ),
        // The benchmark: Swift and C servers under the same load, figures as ratios.
        .executableTarget(
            name: "uvrpc-bench",
            dependencies: ["UVLoop", "UVRPC", "UVRPCMessages", "ExampleScores", "MallocCounter", "ServerChild",
                           .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "CoreMetrics", package: "swift-metrics"),
                           .product(name: "Prometheus", package: "swift-prometheus")],
            path: "Benchmarks/uvrpc-bench"
        ),
        // A uvrpc serve child process and its /proc figures, for the soak and attack tools.
        .target(
            name: "ServerChild",
            dependencies: ["UVLoop"],
            path: "Benchmarks/ServerChild"
        ),
        // The soak test: checked traffic and faults against a uvrpc serve child (make soak).
        .executableTarget(
            name: "uvrpc-soak",
            dependencies: ["UVLoop", "UVRPC", "ServerChild", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Benchmarks/uvrpc-soak"
        ),
        // Hostile peers against a uvrpc serve child while a probe client calls: memory, cut-off times,
        // the probe's latency, descriptors (make attack; Docs/RELIABILITY.md).
        .executableTarget(
            name: "uvrpc-attack",
            dependencies: ["UVLoop", "UVRPC", "ServerChild", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Benchmarks/uvrpc-attack"
        ),
        // The endpoint's whole receive path under arbitrary bytes, through an in-memory
        // transport: used by the libFuzzer target (scripts/fuzz.sh) and the corpus replay test.
        .target(
            name: "EndpointFuzzHarness",
            dependencies: ["UVLoop", "UVRPC"],
            path: "Fuzz/EndpointHarness"
        ),
        // Helpers shared by the test targets (a loop on its own thread, promises, payloads).
        .target(
            name: "UVTestSupport",
            dependencies: ["UVLoop"],
            path: "Tests/UVTestSupport"
        ),
        .testTarget(
            name: "UVLoopTests",
            dependencies: ["UVLoop", "CLibUV", "UVTestSupport"]
        ),
        .testTarget(
            name: "UVRPCTests",
            dependencies: ["UVRPC", "UVLoop", "UVTestSupport", "EndpointFuzzHarness", "ServerChild",
                           "UVRPCMessages", "ExampleScores",
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "CoreMetrics", package: "swift-metrics"),
                           .product(name: "MetricsTestKit", package: "swift-metrics")],
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
