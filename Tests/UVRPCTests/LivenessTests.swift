@testable import UVRPC
import XCTest

/// ``Liveness`` alone: the verdicts of the periodic check at chosen times,
/// and the share of a loop turn. No endpoint, no loop, no timer.
final class LivenessTests: XCTestCase {
    /// Opened at 1000; checks every 100 ms; handshake within 500, keepalive 800.
    private func liveness(packetsPerTurn: Int = 3) -> Liveness {
        Liveness(now: 1000, period: 100, handshakeTimeout: 500, keepaliveTimeout: 800, packetsPerTurn: packetsPerTurn)
    }

    func testThePeriodIsAQuarterOfTheShortestTimeoutAndAtLeastFiveMilliseconds() {
        XCTAssertEqual(Liveness.checkPeriod(keepaliveTimeout: .seconds(30), handshakeTimeout: .seconds(8),
                                            payloadProgressTimeout: .seconds(20)), .seconds(2))
        XCTAssertEqual(Liveness.checkPeriod(keepaliveTimeout: .seconds(30), handshakeTimeout: .seconds(30),
                                            payloadProgressTimeout: .milliseconds(400)), .milliseconds(100))
        XCTAssertEqual(Liveness.checkPeriod(keepaliveTimeout: .milliseconds(8), handshakeTimeout: .seconds(1),
                                            payloadProgressTimeout: .seconds(1)), .milliseconds(5))
    }

    func testAPeerThatSpeaksIsFine() {
        var clock = liveness()
        clock.received(at: 1090)
        XCTAssertEqual(clock.check(now: 1100, handshakeReceived: true, readingPaused: false), Liveness.Verdict())
        clock.received(at: 1150)
        XCTAssertEqual(clock.check(now: 1200, handshakeReceived: true, readingPaused: false), Liveness.Verdict())
    }

    func testNoHandshakeInTimeIsAHandshakeTimeout() {
        var clock = liveness()
        for now in stride(from: UInt64(1100), through: 1500, by: 100) {
            clock.received(at: now)
            XCTAssertNil(clock.check(now: now, handshakeReceived: false, readingPaused: false).timeout, "at \(now)")
        }
        clock.received(at: 1600)
        XCTAssertEqual(clock.check(now: 1600, handshakeReceived: false, readingPaused: false).timeout, .handshake,
                       "more than 500 ms after opening, however busy the peer")
        XCTAssertNil(clock.check(now: 1600, handshakeReceived: true, readingPaused: false).timeout)
    }

    func testSilenceLongerThanTheKeepaliveTimeoutEndsIt() {
        var clock = liveness()
        var verdict = Liveness.Verdict()
        for now in stride(from: UInt64(1100), through: 1800, by: 100) {
            verdict = clock.check(now: now, handshakeReceived: true, readingPaused: false)
            XCTAssertNil(verdict.timeout, "at \(now): silent for \(now - 1000), not more than 800")
        }
        XCTAssertTrue(verdict.peerIdle)
        verdict = clock.check(now: 1900, handshakeReceived: true, readingPaused: false)
        XCTAssertEqual(verdict.timeout, .keepalive(silentFor: 900))
    }

    func testTheKeepaliveTimeoutDoesNotCountWhileReadingIsPaused() {
        var clock = liveness()
        for now in stride(from: UInt64(1100), through: 1900, by: 100) {
            XCTAssertNil(clock.check(now: now, handshakeReceived: true, readingPaused: true).timeout)
        }
        // Reading resumes: the silence starts counting from then.
        clock.received(at: 1900)
        for now in stride(from: UInt64(2000), through: 2700, by: 100) {
            XCTAssertNil(clock.check(now: now, handshakeReceived: true, readingPaused: false).timeout, "at \(now)")
        }
        XCTAssertEqual(clock.check(now: 2800, handshakeReceived: true, readingPaused: false).timeout,
                       .keepalive(silentFor: 900))
    }

    func testAPeerSilentForAPeriodIsIdle() {
        var clock = liveness()
        clock.received(at: 1050)
        XCTAssertFalse(clock.check(now: 1100, handshakeReceived: true, readingPaused: false).peerIdle)
        XCTAssertTrue(clock.check(now: 1150, handshakeReceived: true, readingPaused: false).peerIdle, "100 ms since the last bytes")
    }

    func testACheckLongOverdueRestartsTheClocks() {
        var clock = liveness()
        XCTAssertFalse(clock.check(now: 1200, handshakeReceived: true, readingPaused: false).loopWasHeldUp, "two periods: on time")
        let verdict = clock.check(now: 2500, handshakeReceived: true, readingPaused: false)
        XCTAssertTrue(verdict.loopWasHeldUp, "1300 ms between checks of a 100 ms period: the loop was held up")
        XCTAssertNil(verdict.timeout, "the peer's bytes could not be read meanwhile: no keepalive timeout")
        XCTAssertFalse(verdict.peerIdle)
        XCTAssertEqual(clock.lastReceived, 2500)
        XCTAssertEqual(clock.lastCheck, 2500)
        XCTAssertEqual(clock.check(now: 3400, handshakeReceived: true, readingPaused: false).timeout,
                       nil, "held up again (900 ms)")
    }

    func testTheHandshakeTimeoutHoldsEvenAfterAHeldUpLoop() {
        var clock = liveness()
        let verdict = clock.check(now: 5000, handshakeReceived: false, readingPaused: false)
        XCTAssertTrue(verdict.loopWasHeldUp)
        XCTAssertEqual(verdict.timeout, .handshake)
    }

    // MARK: The share of a turn

    func testEachTurnGivesItsShareOfPackets() {
        var clock = liveness(packetsPerTurn: 3)
        clock.enterTurn(1)
        XCTAssertTrue(clock.countPacket())
        XCTAssertTrue(clock.countPacket())
        XCTAssertFalse(clock.usedTurnShare)
        XCTAssertFalse(clock.countPacket(), "the third packet uses the share up")
        XCTAssertTrue(clock.usedTurnShare)
        clock.enterTurn(1)
        XCTAssertTrue(clock.usedTurnShare, "a second read in the same turn gets no new share")
        XCTAssertFalse(clock.countPacket())
        clock.enterTurn(2)
        XCTAssertFalse(clock.usedTurnShare)
        XCTAssertEqual(clock.packetsLeftThisTurn, 3)
    }

    func testBeforeItsFirstTurnAConnectionHasNoShare() {
        var clock = liveness()
        XCTAssertTrue(clock.usedTurnShare)
        clock.enterTurn(0)
        XCTAssertTrue(clock.usedTurnShare, "turn 0 is the one it starts in")
    }
}
