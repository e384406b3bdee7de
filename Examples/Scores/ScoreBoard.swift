import Synchronization
import UVRPC
import UVRPCMessages

/// The scores server's state and semantics (MESSAGES.md): each player's best
/// score, ranked best first, ties by player name. Safe from every loop (a
/// `Mutex`; ThreadSanitizer cannot see its locking on Linux and reports
/// its accesses from two loops as races, which is why UVRPC's own code
/// uses a pthread mutex where TSan runs).
public final class ScoreBoard: Sendable {
    private let best = Mutex<[String: Int]>([:])

    public init() {}

    /// Records `score` for `player`; returns the player's rank and best.
    public func submit(player: String, score: Int) -> SubmitResult {
        best.withLock { best in
            let mine = max(best[player] ?? score, score)
            best[player] = mine
            var ahead = 0
            for (other, score) in best where score > mine || (score == mine && other < player) { ahead += 1 }
            return SubmitResult(rank: ahead + 1, best: mine)
        }
    }

    /// The `count` best players by their best score.
    public func top(_ count: Int) -> [ScoreEntry] {
        best.withLock { best in
            best.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
                .prefix(max(count, 0))
                .map { ScoreEntry(player: $0.key, score: $0.value) }
        }
    }

    /// The handlers of the scores protocol over this board.
    public func handlers() -> RPCMessageHandlers {
        var handlers = RPCMessageHandlers(protocol: scoresProtocol)
        handlers.on(SubmitScore.self) { message, _ in self.submit(player: message.player, score: message.score) }
        handlers.on(TopScores.self) { message, _ in TopScoresResult(entries: self.top(message.count)) }
        handlers.on(Ping.self) { _, _ in RPCNoResponse() }
        handlers.on(Fail.self) { message, _ in
            if message.clean { throw CleanFailure(reason: message.reason) }
            throw InternalFailure(reason: message.reason)
        }
        handlers.on(Echo.self) { message, _ in EchoResult(data: message.data, note: message.note) }
        return handlers
    }
}

/// A failure meant for the caller: its reason travels (efro's clean error).
public struct CleanFailure: RPCPublicError {
    public var reason: String
    public var publicDescription: String { reason }
}

/// A failure that stays on the server: the caller learns only that the handler failed.
struct InternalFailure: Error {
    var reason: String
}
