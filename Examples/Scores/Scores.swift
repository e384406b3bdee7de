#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import UVRPCMessages

// The `scores` demo protocol of MESSAGES.md, declared once and shared by
// example-typed-server, example-typed-client, the tests and the benchmark.
// Storage names are the CodingKeys; fields "not stored when default" write
// their own `encode(to:)`.

/// The game mode of a score.
public enum Mode: String, Codable, Sendable { case classic, blitz }

/// Records a score; answered with the player's rank and best.
public struct SubmitScore: RPCMessage, Equatable {
    public typealias Response = SubmitResult
    public var player: String
    public var score: Int
    public var mode: Mode
    public var at: Date
    /// Not stored when nil.
    public var replay: Data?

    public init(player: String, score: Int, mode: Mode, at: Date, replay: Data? = nil) {
        (self.player, self.score, self.mode, self.at, self.replay) = (player, score, mode, at, replay)
    }

    enum CodingKeys: String, CodingKey { case player = "p", score = "s", mode = "m", at = "t", replay = "r" }
    // The synthesized Codable already omits a nil optional (encodeIfPresent) and reads a missing one as nil.
}

/// Asks for the best players; answered with their best scores.
public struct TopScores: RPCMessage, Equatable {
    public typealias Response = TopScoresResult
    /// Default 10, not stored when 10.
    public var count: Int

    public init(count: Int = 10) { self.count = count }

    enum CodingKeys: String, CodingKey { case count = "n" }

    public init(from decoder: any Decoder) throws {
        count = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(Int.self, forKey: .count) ?? 10
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        if count != 10 { try container.encode(count, forKey: .count) }
    }
}

/// Answered with nothing.
public struct Ping: RPCMessage, Equatable {
    public typealias Response = RPCNoResponse
    public init() {}
}

/// Always fails: with a clean error (its reason travels to the caller) or not.
public struct Fail: RPCMessage, Equatable {
    public typealias Response = RPCNoResponse
    public var reason: String
    /// Default false, always stored.
    public var clean: Bool

    public init(reason: String, clean: Bool = false) { (self.reason, self.clean) = (reason, clean) }

    enum CodingKeys: String, CodingKey { case reason = "r", clean = "c" }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        reason = try container.decode(String.self, forKey: .reason)
        clean = try container.decodeIfPresent(Bool.self, forKey: .clean) ?? false
    }
}

/// Answered with the same data and note.
public struct Echo: RPCMessage, Equatable {
    public typealias Response = EchoResult
    public var data: Data
    /// Default nil, stored as null.
    public var note: String?

    public init(data: Data, note: String? = nil) { (self.data, self.note) = (data, note) }

    enum CodingKeys: String, CodingKey { case data = "d", note = "n" }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(data, forKey: .data)
        try container.encode(note, forKey: .note) // stored even when nil: `"n":null`
    }
}

/// A player's rank (1 = the best score of all players, by each one's best) and best score.
public struct SubmitResult: RPCResponseMessage, Equatable {
    public var rank: Int
    public var best: Int
    public init(rank: Int, best: Int) { (self.rank, self.best) = (rank, best) }
    enum CodingKeys: String, CodingKey { case rank = "r", best = "b" }
}

/// One player's best score.
public struct ScoreEntry: Codable, Sendable, Equatable {
    public var player: String
    public var score: Int
    public init(player: String, score: Int) { (self.player, self.score) = (player, score) }
    enum CodingKeys: String, CodingKey { case player = "p", score = "s" }
}

/// The best players, best first (ties by name).
public struct TopScoresResult: RPCResponseMessage, Equatable {
    public var entries: [ScoreEntry]
    public init(entries: [ScoreEntry]) { self.entries = entries }
    enum CodingKeys: String, CodingKey { case entries = "e" }
}

/// What an Echo sent.
public struct EchoResult: RPCResponseMessage, Equatable {
    public var data: Data
    public var note: String?
    public init(data: Data, note: String?) { (self.data, self.note) = (data, note) }
    enum CodingKeys: String, CodingKey { case data = "d", note = "n" }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(data, forKey: .data)
        try container.encode(note, forKey: .note)
    }
}

/// The protocol: ids as MESSAGES.md gives them.
public let scoresProtocol: RPCMessageProtocol = {
    do {
        return try RPCMessageProtocol(
            messages: [0: SubmitScore.self, 1: TopScores.self, 2: Ping.self, 3: Fail.self, 4: Echo.self],
            responses: [0: SubmitResult.self, 1: TopScoresResult.self, 2: EchoResult.self])
    } catch {
        fatalError("the scores protocol is declared wrong: \(error)") // a constant declaration: fixed by editing it
    }
}()
