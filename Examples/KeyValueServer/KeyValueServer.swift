import UVLoop
import UVRPC
#if canImport(Glibc)
import Glibc
#endif

/// A small key-value server on the callback API: one loop, run on the main
/// thread; every handler and timer runs on that loop's thread, so the store
/// is a plain class with no lock. SIGINT / SIGTERM drain it and stop.
///
/// Commands (UTF-8 text): `SET key value`, `SET key value ttl=MS` (the key
/// expires after MS milliseconds), `GET key`, `DEL key`, `STATS` (what this
/// connection did). Answers: `OK`, the value, `NOT_FOUND`, or `ERROR ...`.
///
/// Usage: `example-kv-server [PORT]` (default 9100; 0 picks one); the first
/// line printed is `listening on HOST:PORT`.

/// The keys and their expiry timers; touched on the loop thread only.
final class Store {
    private var values: [String: String] = [:]
    private var expiries: [String: LoopTimer] = [:]
    private let loop: EventLoop

    init(loop: EventLoop) { self.loop = loop }

    func set(_ key: String, _ value: String, expiringAfter ttl: Duration?) {
        values[key] = value
        expiries.removeValue(forKey: key)?.cancel()
        if let ttl {
            // A one-shot timer keeps itself alive until it fires; keep it only to cancel it.
            expiries[key] = loop.scheduleTimer(after: ttl) { [unowned self] in
                values[key] = nil
                expiries[key] = nil
            }
        }
    }

    func get(_ key: String) -> String? { values[key] }

    func delete(_ key: String) -> Bool {
        expiries.removeValue(forKey: key)?.cancel()
        return values.removeValue(forKey: key) != nil
    }
}

/// What the server keeps per connection (its endpoint's `userValue`). A
/// class, so handlers on the connection's loop may change it; Sendable
/// because a user value also travels with async requests.
final class Session: @unchecked Sendable { // touched on its connection's loop only
    var commands = 0
}

/// Where each connection keeps its session.
enum SessionKey: RPCConnectionKey { typealias Value = Session }

/// Runs one command against `store`; returns the answer.
func run(_ command: String, store: Store, session: Session) -> String {
    session.commands += 1
    let words = command.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
    switch (words.first, words.count) {
    case ("SET", 3):
        store.set(words[1], words[2], expiringAfter: nil)
        return "OK"
    case ("SET", 4) where words[3].hasPrefix("ttl="):
        guard let ms = Int64(words[3].dropFirst(4)), ms > 0 else { return "ERROR ttl must be a positive number of milliseconds" }
        store.set(words[1], words[2], expiringAfter: .milliseconds(ms))
        return "OK"
    case ("GET", 2):
        return store.get(words[1]) ?? "NOT_FOUND"
    case ("DEL", 2):
        return store.delete(words[1]) ? "OK" : "NOT_FOUND"
    case ("STATS", 1):
        return "commands on this connection: \(session.commands)"
    default:
        return "ERROR unknown command; use SET key value [ttl=MS], GET key, DEL key or STATS"
    }
}

@main
struct KeyValueServer {
    static func main() throws {
        let port = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 9100
        let loop = try EventLoop(name: "kv")
        let store = LoopBound.sendingValue(Store(loop: loop), loop: loop) // touched on the loop only
        let server = RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: port)), on: loop,
                               admit: { _ in .accept([SessionKey.self: Session()]) }, handler: .callback { endpoint in
            endpoint.onMessage = { request in
                let command = String(decoding: request.payload, as: UTF8.self)
                let answer = run(command, store: store.value, session: request.connectionValues[SessionKey.self]!)
                try request.respond(Array(answer.utf8))
            }
        })
        Task.detached {                                  // detached: the main thread is busy running the loop
            do { try await server.run() } catch { print("kv server: cannot start: \(error)") }
            loop.beginShutdown()                         // loop.run() returns
        }
        Task.detached {
            guard let address = await server.listeningAddress else { return }
            print("listening on \(address)")
            fflush(nil)                                  // every stream, for scripts reading this line through a pipe
        }
        loop.execute {                                   // the first job once loop.run() starts
            do {
                try loop.onSignals([SIGINT, SIGTERM]) { _ in server.close(gracePeriod: .seconds(5)) }
            } catch {
                print("kv server: cannot watch signals: \(error)")
                server.close()
            }
        }
        try loop.run()
    }
}
