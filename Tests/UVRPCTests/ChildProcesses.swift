import Foundation
import UVTestSupport

/// One child start at a time in this test process: taken by ``startChild(_:wiring:)``.
private let childStarts = NSLock()

/// Starts `process`, with the pipes `wiring` makes and attaches, while no
/// other thread of this test process starts one.
///
/// swift-corelibs-foundation's `Process.run()` makes a socket pair (how it
/// learns that the child ended) and the caller's pipes without
/// close-on-exec, and closes in its child only the descriptors open when it
/// looked. A child started by another thread at that moment inherits them:
/// the first child's exit is then not reported, nor its pipes' end seen,
/// until the other child ends too. (ToolTests' late-server test started its
/// `uvrpc call` on one thread and the server it waits for on another, and
/// waited out its 60 s in CI.) Every test child starts through here.
///
/// The child also gets SIGTERM and SIGINT unblocked: it inherits the signal
/// mask of the thread that starts it, and Dispatch's threads (where async
/// tests run) block every signal, so `terminate()` did nothing to a Python
/// peer started from an async test (its `stop()` waited out 20 s).
func startChild<Pipes>(_ process: Process, wiring: (Process) -> Pipes) throws -> Pipes {
    try childStarts.withLock {
        var stops = sigset_t(), previous = sigset_t()
        sigemptyset(&stops)
        sigaddset(&stops, SIGTERM)
        sigaddset(&stops, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &stops, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        let pipes = wiring(process)
        try process.run()
        return pipes
    }
}

/// Starts `process` with the standard streams it was given (see ``startChild(_:wiring:)``).
func startChild(_ process: Process) throws {
    try startChild(process) { _ in () }
}

/// Runs the `uvrpc` tool to completion (at most `seconds`); returns status and output.
func runTool(_ arguments: [String], seconds: Double = 60) throws -> (status: Int32, output: String) {
    try runToCompletion(uvrpcTool, arguments, seconds: seconds)
}

/// Runs `executable` to completion (at most `seconds`, else it is terminated
/// and this throws); returns its status and its output (stdout and stderr).
func runToCompletion(_ executable: URL, _ arguments: [String], seconds: Double = 60,
                     environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    if !environment.isEmpty {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    let finished = Promise<Void>()
    process.terminationHandler = { _ in finished.fulfill(()) }
    defer { process.terminationHandler = nil } // Process keeps its handler, and so our promise, alive
    let pipe = try startChild(process) { process in
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        return pipe
    }
    do { try finished.wait("\(executable.lastPathComponent) \(arguments.joined(separator: " "))", seconds: seconds) } catch {
        process.terminate()
        throw error
    }
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return (process.terminationStatus, output)
}
