import ArgumentParser
import Foundation
import ServerChild

/// Hostile peers against a `uvrpc serve` child, one scenario at a time,
/// each measured against its target (Docs/RELIABILITY.md has the table).
@main
struct Attack: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uvrpc-attack",
        abstract: "Run hostile peers against uvrpc serve and check every bound the server promises.",
        discussion: """
            Each scenario starts a uvrpc serve child (under prlimit where it needs a limit), attacks it \
            while a probe client calls it back to back, and reports the server's peak RSS growth, when the \
            attacker was cut off, the probe's p50/p99, and whether the scenario's target was met. Every \
            scenario stops by itself (the longest take about 30 s). Exits non-zero when a target was missed. \
            Scenarios: \(Self.names.joined(separator: ", ")).
            """
    )

    static let names = ["cancel-flood", "partial-payloads", "partial-payloads-x6", "allocation", "drain-transfers",
                        "grace", "second-signal", "sigterm-fd-limit", "tls-half-open", "metrics-idle",
                        "keepalive-flood", "big-calls", "clienthello-replay", "slow-acks"]

    @Option(help: "Scenarios to run (repeatable or comma-separated); default: all.")
    var scenario: [String] = []

    @Option(help: "The uvrpc executable (default: next to this one).")
    var serve: String?

    @Option(help: "Also write the outcomes as JSON to this file.")
    var json: String?

    func validate() throws {
        for name in scenario.flatMap({ $0.split(separator: ",").map(String.init) }) where !Self.names.contains(name) {
            throw ValidationError("unknown scenario '\(name)'; known: \(Self.names.joined(separator: ", "))")
        }
    }

    func run() throws {
        let tool = serve.map { URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("uvrpc")
        let files = LockedFiles()
        let attacks = Attacks(tool: tool, files: { try files.get() })
        let chosen = scenario.isEmpty ? Self.names : scenario.flatMap { $0.split(separator: ",").map(String.init) }
        var outcomes: [Outcome] = []
        for name in chosen {
            print("[\(name)] ...")
            fflush(nil)
            let outcome: Outcome
            do {
                switch name {
                case "cancel-flood": outcome = try attacks.cancelFlood()
                case "partial-payloads": outcome = try attacks.partialPayloads(attackers: 1)
                case "partial-payloads-x6": outcome = try attacks.partialPayloads(attackers: 6)
                case "allocation": outcome = try attacks.allocation()
                case "drain-transfers": outcome = try attacks.drainWithTransfers()
                case "grace": outcome = try attacks.graceWithANonReader()
                case "second-signal": outcome = try attacks.secondSignal()
                case "sigterm-fd-limit": outcome = try attacks.sigtermAtTheDescriptorLimit()
                case "tls-half-open": outcome = try attacks.tlsHalfOpen()
                case "metrics-idle": outcome = try attacks.metricsIdle()
                case "keepalive-flood": outcome = try attacks.keepaliveFlood()
                case "big-calls": outcome = try attacks.bigCalls()
                case "clienthello-replay":
                    outcomes.append(try attacks.clientHelloReplay(limited: false))
                    print(Self.line(outcomes.last!))
                    outcome = try attacks.clientHelloReplay(limited: true)
                case "slow-acks": outcome = try attacks.slowAcknowledgements()
                default: continue
                }
            } catch {
                outcome = Outcome(scenario: name, figures: ["could not run: \(error)"], target: "-", met: false)
            }
            outcomes.append(outcome)
            print(Self.line(outcome))
            fflush(nil)
        }
        print("\nscenario | figures | target | met")
        for outcome in outcomes { print(Self.line(outcome)) }
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(outcomes).write(to: URL(fileURLWithPath: json))
        }
        let missed = outcomes.filter { !$0.met }.count
        print(missed == 0 ? "uvrpc-attack: every target met" : "uvrpc-attack: \(missed) target(s) missed")
        if missed > 0 { throw ExitCode(1) }
    }

    static func line(_ outcome: Outcome) -> String {
        "\(outcome.scenario) | \(outcome.figures.joined(separator: "; ")) | \(outcome.target) | \(outcome.met ? "yes" : "NO")"
    }
}

/// The TLS files, made once on first use.
final class LockedFiles: @unchecked Sendable { // `files` is only touched under `lock`
    private let lock = NSLock()
    private var files: TLSFiles?
    func get() throws -> TLSFiles {
        lock.lock()
        defer { lock.unlock() }
        if let files { return files }
        let made = try TLSFiles.make(prefix: "uvrpc-attack-tls")
        files = made
        return made
    }
}
