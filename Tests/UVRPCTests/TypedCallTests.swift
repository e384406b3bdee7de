import ExampleScores
import Foundation
import UVLoop
import UVRPC
@testable import UVRPCMessages
import UVTestSupport
import XCTest

/// A message answered with one of two response types (an ``RPCAnswer`` of the user's own).
private struct Either: RPCMessage {
    var echo: Bool
    enum Answer: RPCAnswer, Equatable {
        case submitted(SubmitResult)
        case echoed(EchoResult)
        static let responseTypes: [any RPCResponseMessage.Type] = [SubmitResult.self, EchoResult.self]
        init?(response: (any RPCResponseMessage)?) {
            switch response {
            case let value as SubmitResult: self = .submitted(value)
            case let value as EchoResult: self = .echoed(value)
            default: return nil
            }
        }
        var response: (any RPCResponseMessage)? {
            switch self {
            case .submitted(let value): value
            case .echoed(let value): value
            }
        }
    }
    typealias Response = Answer
}

private struct Unregistered: RPCMessage { typealias Response = RPCNoResponse }

/// An answer that claims one response type but may hold another (a bug the server refuses to send).
private struct Sneaky: RPCMessage {
    var honest: Bool
    enum Answer: RPCAnswer {
        case declared(SubmitResult)
        case undeclared(TopScoresResult)
        static let responseTypes: [any RPCResponseMessage.Type] = [SubmitResult.self, EchoResult.self]
        init?(response: (any RPCResponseMessage)?) {
            guard let value = response as? SubmitResult else { return nil }
            self = .declared(value)
        }
        var response: (any RPCResponseMessage)? {
            switch self {
            case .declared(let value): value
            case .undeclared(let value): value
            }
        }
    }
    typealias Response = Answer
}
private struct NotAResponseOfTheProtocol: RPCResponseMessage {}
private struct AnsweredWithTheUnknown: RPCMessage { typealias Response = NotAResponseOfTheProtocol }

final class TypedCallTests: XCTestCase {
    /// A scores server on `loop` and a typed client of it.
    private func scoresPair(_ loop: EventLoop, handler: RPCHandler? = nil) async throws -> (RunningServer, RPCAsyncEndpoint, RPCMessageClient) {
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0), endpoint: testConfiguration()),
                                         on: loop, handler: try handler ?? .messages(ScoreBoard().handlers())).start()
        let endpoint = try await RPCClient.connect(to: server.address, on: loop, configuration: testConfiguration())
        return (server, endpoint, RPCMessageClient(endpoint, protocol: scoresProtocol))
    }

    func testTheScoresCallsGetTheirDeclaredAnswers() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let (_, endpoint, client) = try await scoresPair(harness.loop)
        try await withTimeout("the scores calls") {
            let now = Date()
            let value1 = try await client.send(SubmitScore(player: "alice", score: 10, mode: .classic, at: now))
            XCTAssertEqual(value1, SubmitResult(rank: 1, best: 10))
            let value2 = try await client.send(SubmitScore(player: "bob", score: 30, mode: .blitz, at: now, replay: Data([1, 2, 3])))
            XCTAssertEqual(value2,
                           SubmitResult(rank: 1, best: 30))
            let value3 = try await client.send(SubmitScore(player: "alice", score: 20, mode: .classic, at: now))
            XCTAssertEqual(value3, SubmitResult(rank: 2, best: 20))
            let value4 = try await client.send(SubmitScore(player: "carl", score: 20, mode: .classic, at: now))
            XCTAssertEqual(value4, SubmitResult(rank: 3, best: 20),
                           "a tie ranks by name: alice before carl")
            let value5 = try await client.send(TopScores(count: 2)).entries
            XCTAssertEqual(value5,
                           [ScoreEntry(player: "bob", score: 30), ScoreEntry(player: "alice", score: 20)])
            let value6 = try await client.send(TopScores()).entries.map(\.player)
            XCTAssertEqual(value6, ["bob", "alice", "carl"])
            let value7 = try await client.send(Ping())
            XCTAssertEqual(value7, RPCNoResponse())
            let data = Data(pseudoRandomBytes(count: 100_000, seed: 7))
            let value8 = try await client.send(Echo(data: data, note: nil))
            XCTAssertEqual(value8, EchoResult(data: data, note: nil))
            let value9 = try await client.send(Echo(data: Data(), note: "n"))
            XCTAssertEqual(value9, EchoResult(data: Data(), note: "n"))
        }
        await endpoint.close()
    }

    func testAPublicErrorTravelsWithItsTextAndAnyOtherAsAnInternalError() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let (_, endpoint, client) = try await scoresPair(harness.loop)
        try await withTimeout("the failing calls") {
            do {
                try await client.send(Fail(reason: "nope", clean: true))
                XCTFail("Fail(clean) succeeded")
            } catch let error as RPCMessageError {
                XCTAssertEqual(error, RPCMessageError(.remoteClean, "nope"))
                XCTAssertTrue(error.isFromPeer)
            }
            do {
                try await client.send(Fail(reason: "secret detail", clean: false))
                XCTFail("Fail succeeded")
            } catch let error as RPCMessageError {
                XCTAssertEqual(error, RPCMessageError(.remote, "An internal error has occurred."), "the reason is not sent")
            }
            let value10 = try await client.send(Ping())
            XCTAssertEqual(value10, RPCNoResponse(), "the connection serves on")
        }
        await endpoint.close()
    }

    func testMessagesThatDoNotDecodeAreAnsweredWithAnErrorAndTheConnectionServesOn() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let (_, endpoint, client) = try await scoresPair(harness.loop)
        try await withTimeout("the bad messages") {
            for bad in ["not json", #"{"t":99,"m":{}}"#, #"{"t":0,"m":{"p":"x"}}"#, #"{"t":4,"m":{"d":5,"n":null}}"#, "", "[]"] {
                let answer = try await endpoint.send(Array(bad.utf8))
                XCTAssertEqual(String(decoding: answer, as: UTF8.self), #"{"t":-1,"m":{"m":"An internal error has occurred.","e":0}}"#, bad)
            }
            let ignored = try await endpoint.send(Array(#"{"t":0,"m":{"p":"carol","s":7,"m":"classic","t":[2026,1,2,3,4,5,6],"zz":1}}"#.utf8))
            XCTAssertEqual(String(decoding: ignored, as: UTF8.self), #"{"t":0,"m":{"r":1,"b":7}}"#, "an unknown key is ignored")
            let value11 = try await client.send(TopScores(count: 1)).entries
            XCTAssertEqual(value11, [ScoreEntry(player: "carol", score: 7)])
        }
        await endpoint.close()
    }

    func testTheCallerRefusesAnswersTheMessageDoesNotDeclare() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        // A raw server that answers whatever the test last set.
        let reply = LockedValue(#"{"t":0,"m":{"r":1,"b":2}}"#)
        let (_, endpoint, client) = try await scoresPair(harness.loop, handler: .async { _, _ in Array(reply.withLock { $0 }.utf8) })
        let cases: [(String, RPCMessageError.Kind, String)] = [
            (#"{"t":0,"m":{"r":1,"b":2}}"#, .unexpectedResponse, "TopScores sent to \(endpoint.label) was answered with SubmitResult; it declares TopScoresResult"),
            (#"{"t":-2,"m":{}}"#, .unexpectedResponse, "was answered with the empty response; it declares TopScoresResult"),
            (#"{"t":7,"m":{}}"#, .unexpectedResponse, "was answered with response id 7, which this protocol does not have"),
            (#"{"t":1,"m":{"e":[{"p":"x"}]}}"#, .undecodable, #"does not decode: missing field "s" at m.e.[0]"#),
            ("{", .undecodable, "not valid JSON at byte 1"),
            (#"{"t":-1,"m":{"m":"from python","e":4}}"#, .remoteCommunication, "from python"),
        ]
        try await withTimeout("the refused answers") {
            for (answer, kind, text) in cases {
                reply.withLock { $0 = answer }
                do {
                    _ = try await client.send(TopScores())
                    XCTFail("\(answer) was taken")
                } catch let error as RPCMessageError {
                    XCTAssertEqual(error.kind, kind, answer)
                    XCTAssertTrue(error.message.contains(text), "\(answer): \(error.message)")
                }
            }
            do {
                try await client.send(Unregistered())
                XCTFail("a message outside the protocol was sent")
            } catch let error as RPCMessageError {
                XCTAssertEqual(error.kind, .notInProtocol)
                XCTAssertTrue(error.message.contains("Unregistered"), error.message)
            }
        }
        await endpoint.close()
    }

    func testAMessageWithSeveralResponseTypesIsAnsweredWithEither() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let protocolWithEither = try RPCMessageProtocol(messages: [0: Either.self], responses: [0: SubmitResult.self, 1: EchoResult.self])
        var handlers = RPCMessageHandlers(protocol: protocolWithEither)
        handlers.on(Either.self) { message, _ in
            message.echo ? .echoed(EchoResult(data: Data([9]), note: nil)) : .submitted(SubmitResult(rank: 1, best: 2))
        }
        let (_, endpoint, _) = try await scoresPair(harness.loop, handler: try .messages(handlers))
        let client = RPCMessageClient(endpoint, protocol: protocolWithEither)
        try await withTimeout("the two answers") {
            let value12 = try await client.send(Either(echo: true))
            XCTAssertEqual(value12, .echoed(EchoResult(data: Data([9]), note: nil)))
            let value13 = try await client.send(Either(echo: false))
            XCTAssertEqual(value13, .submitted(SubmitResult(rank: 1, best: 2)))
        }
        await endpoint.close()
    }

    func testATypedHandlerSeesTheCallsMetadataAndDeadline() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        var handlers = RPCMessageHandlers(protocol: scoresProtocol)
        handlers.on(SubmitScore.self) { _, _ in SubmitResult(rank: 1, best: 1) }
        handlers.on(TopScores.self) { _, _ in TopScoresResult(entries: []) }
        handlers.on(Ping.self) { _, _ in RPCNoResponse() }
        handlers.on(Fail.self) { _, _ in RPCNoResponse() }
        handlers.on(Echo.self) { message, context in
            let left = context.deadline.map { ContinuousClock.now.duration(to: $0) }
            return EchoResult(data: message.data, note: "\(context.metadata)|\(left.map { $0 > .zero && $0 <= .seconds(30) } ?? false)")
        }
        let (_, endpoint, client) = try await scoresPair(harness.loop, handler: try .messages(handlers))
        try await withTimeout("the echoes") {
            let tagged = try await client.send(Echo(data: Data([1])), metadata: ["tenant": "7"], timeout: .seconds(30))
            XCTAssertEqual(tagged.note, "[tenant: 7]|true")
            let plain = try await client.send(Echo(data: Data([1])))
            XCTAssertEqual(plain.note, "[]|false")
        }
        await endpoint.close()
    }

    func testTypedCallsGoOverAPool() async throws {
        // The server on one loop (its board's Mutex is one ThreadSanitizer cannot see), the pool over two.
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let group = try EventLoopGroup(loopCount: 2)
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0)), on: harness.loop,
                                         handler: try .messages(ScoreBoard().handlers())).start()
        var configuration = RPCClientPool.Configuration()
        configuration.connectionsPerAddress = 2
        let pool = await RPCClientPool.connect(to: [server.address], on: group, configuration: configuration)
        let client = RPCMessageClient(pool, protocol: scoresProtocol)
        try await withTimeout("calls over the pool") {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for index in 0..<40 {
                    tasks.addTask {
                        _ = try await client.send(SubmitScore(player: "p\(index % 4)", score: index, mode: .classic, at: Date()))
                    }
                }
                try await tasks.waitForAll()
            }
            let value14 = try await client.send(TopScores(count: 2)).entries
            XCTAssertEqual(value14,
                           [ScoreEntry(player: "p3", score: 39), ScoreEntry(player: "p2", score: 38)])
        }
        await pool.close()
        await group.shutdown()
    }

    func testMistakesInADeclarationAreFoundWhenItIsMadeAndNameTheType() throws {
        func mistake(_ make: () throws -> Any) -> String {
            switch Result(catching: make) {
            case .success: return "no error"
            case .failure(let error): return "\(error)"
            }
        }
        XCTAssertEqual(mistake { try RPCMessageProtocol(messages: [0: Ping.self, 0: Fail.self], responses: [:]) },
                       "typed protocol: message types Ping and Fail both have id 0")
        XCTAssertEqual(mistake { try RPCMessageProtocol(messages: [0: Ping.self, 1: Ping.self], responses: [:]) },
                       "typed protocol: message type Ping is registered twice (ids 0 and 1)")
        XCTAssertEqual(mistake { try RPCMessageProtocol(messages: [-1: Ping.self], responses: [:]) },
                       "typed protocol: message type Ping has id -1: ids are 0 or more (negative ids are efro's system responses)")
        XCTAssertEqual(mistake { try RPCMessageProtocol(messages: [0: Echo.self], responses: [0: SubmitResult.self]) },
                       "typed protocol: message type Echo is answered with EchoResult, which is not among the protocol's responses")
        XCTAssertEqual(mistake { try RPCMessageProtocol(messages: [0: Ping.self], responses: [0: EchoResult.self, 0: SubmitResult.self]) },
                       "typed protocol: response types EchoResult and SubmitResult both have id 0")
        XCTAssertEqual(mistake { try RPCMessageProtocol(messages: [0: AnsweredWithTheUnknown.self], responses: [:]) },
                       "typed protocol: message type AnsweredWithTheUnknown is answered with NotAResponseOfTheProtocol, which is not among the protocol's responses")

        var handlers = ScoreBoard().handlers()
        XCTAssertEqual(mistake { try RPCHandler.messages(handlers) }, "no error", "every message type has its handler")
        handlers.on(Ping.self) { _, _ in RPCNoResponse() }
        XCTAssertEqual(mistake { try RPCHandler.messages(handlers) }, "typed protocol: Ping is given two handlers")
        var missing = RPCMessageHandlers(protocol: scoresProtocol)
        missing.on(Ping.self) { _, _ in RPCNoResponse() }
        XCTAssertEqual(mistake { try RPCHandler.messages(missing) },
                       "typed protocol: message type SubmitScore (id 0) has no handler; message type TopScores (id 1) has no handler; "
                       + "message type Fail (id 3) has no handler; message type Echo (id 4) has no handler", "every mistake at once")
        var stranger = ScoreBoard().handlers()
        stranger.on(Unregistered.self) { _, _ in RPCNoResponse() }
        XCTAssertEqual(mistake { try RPCHandler.messages(stranger) },
                       "typed protocol: a handler is given for Unregistered, which is not a message type of the protocol")
    }

    func testAHandlerAnsweringNothingMayReturnNothingAndAnUndeclaredAnswerIsNotSent() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let sneakyProtocol = try RPCMessageProtocol(messages: [0: Sneaky.self, 1: Ping.self],
                                                    responses: [0: SubmitResult.self, 1: EchoResult.self, 2: TopScoresResult.self])
        let pinged = LockedValue(0)
        var handlers = RPCMessageHandlers(protocol: sneakyProtocol)
        handlers.on(Ping.self) { _, _ in pinged.withLock { $0 += 1 } }          // a Void handler: the empty response
        handlers.on(Sneaky.self) { message, _ in
            message.honest ? .declared(SubmitResult(rank: 1, best: 1)) : .undeclared(TopScoresResult(entries: []))
        }
        let (_, endpoint, _) = try await scoresPair(harness.loop, handler: try .messages(handlers))
        let client = RPCMessageClient(endpoint, protocol: sneakyProtocol)
        try await withTimeout("the calls") {
            let pong = try await client.send(Ping())
            XCTAssertEqual(pong, RPCNoResponse())
            XCTAssertEqual(pinged.withLock { $0 }, 1)
            guard case .declared = try await client.send(Sneaky(honest: true)) else { return XCTFail("not the declared answer") }
            do {
                _ = try await client.send(Sneaky(honest: false))
                XCTFail("an undeclared answer was sent and taken")
            } catch let error as RPCMessageError {
                XCTAssertEqual(error, RPCMessageError(.remote, "An internal error has occurred."), "refused by the server, not sent")
            }
        }
        await endpoint.close()
    }

    func testATimedOutCallClosesTheEndpointUnlessToldNotTo() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        var handlers = RPCMessageHandlers(protocol: try RPCMessageProtocol(messages: [0: Ping.self]))
        handlers.on(Ping.self) { _, _ in try await Task.sleep(for: .seconds(30)) }   // never answers in time
        let (_, endpoint, _) = try await scoresPair(harness.loop, handler: try .messages(handlers))
        let client = RPCMessageClient(endpoint, protocol: try RPCMessageProtocol(messages: [0: Ping.self]))
        try await withTimeout("the timed-out calls") {
            for closeOnError in [false, true] {
                do {
                    try await client.send(Ping(), timeout: .milliseconds(50), closeOnError: closeOnError)
                    XCTFail("answered")
                } catch let error as RPCError {
                    XCTAssertEqual(error.code, .deadlineExceeded)
                }
                let closed = try await endpoint.withEndpoint { $0.isClosing }
                XCTAssertEqual(closed, closeOnError, "closeOnError: \(closeOnError)")
            }
        }
        await endpoint.close()
    }
}
