@testable import UVRPC
import XCTest

/// ``EndpointPhase`` alone: it moves only forward, and keeps the first close reason.
final class EndpointPhaseTests: XCTestCase {
    func testServingDrainsThenClosesThenIsClosed() {
        var phase = EndpointPhase.serving
        XCTAssertFalse(phase.isDraining)
        XCTAssertFalse(phase.isClosing)
        XCTAssertNil(phase.closeReason)

        XCTAssertTrue(phase.beginDraining())
        XCTAssertTrue(phase.isDraining)
        XCTAssertFalse(phase.isClosing)
        XCTAssertNil(phase.closeReason)

        XCTAssertTrue(phase.beginClosing(.drained))
        XCTAssertFalse(phase.isDraining)
        XCTAssertTrue(phase.isClosing)
        XCTAssertFalse(phase.isClosed)
        XCTAssertEqual(phase.closeReason, .drained)

        phase.finishClosing()
        XCTAssertTrue(phase.isClosed)
        XCTAssertTrue(phase.isClosing, "closed counts as closing")
        XCTAssertEqual(phase.closeReason, .drained, "closed for the reason it was closing for")
    }

    func testItNeverMovesBack() {
        var phase = EndpointPhase.closing(.local)
        XCTAssertFalse(phase.beginDraining())
        XCTAssertFalse(phase.advance(to: .serving))
        XCTAssertEqual(phase.rank, EndpointPhase.closing(.local).rank)
        XCTAssertEqual(phase.closeReason, .local)

        phase.finishClosing()
        XCTAssertFalse(phase.advance(to: .closing(.peerClosed)), "a closed endpoint does not close again")
        XCTAssertFalse(phase.advance(to: .draining))
        XCTAssertTrue(phase.isClosed)
    }

    func testTheFirstCloseReasonStays() {
        var phase = EndpointPhase.serving
        XCTAssertTrue(phase.beginClosing(.peerClosed))
        XCTAssertFalse(phase.beginClosing(.local), "closing is idempotent: a second reason is refused")
        phase.finishClosing()
        phase.finishClosing()
        XCTAssertEqual(phase.closeReason, .peerClosed)
    }

    func testDrainingTwiceIsRefused() {
        var phase = EndpointPhase.serving
        XCTAssertTrue(phase.beginDraining())
        XCTAssertFalse(phase.beginDraining(), "a second drain keeps the first")
        XCTAssertTrue(phase.isDraining)
    }

    func testClosedWithoutClosingFirstIsALocalClose() {
        var phase = EndpointPhase.serving
        phase.finishClosing()
        XCTAssertTrue(phase.isClosed)
        XCTAssertEqual(phase.closeReason, .local)
    }

    func testServingMayCloseWithoutDraining() {
        var phase = EndpointPhase.serving
        XCTAssertTrue(phase.advance(to: .closing(.keepaliveTimeout(.seconds(1)))))
        XCTAssertEqual(phase.closeReason, .keepaliveTimeout(.seconds(1)))
    }
}
