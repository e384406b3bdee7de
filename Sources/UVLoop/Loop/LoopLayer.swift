/// The one seam between UVLoop and the protocol layer above it (UVRPC's
/// per-loop metrics): a loop keeps one object of the layer's, tells it when
/// each turn's work is done, and counts the bytes its connections moved.
/// Package-only: applications never see it.
package protocol LoopLayer: AnyObject {
    /// Called on the loop thread after each turn's work (twice a loop turn:
    /// before and after the poll) and once more as the loop closes, when
    /// the layer was attached with `observesTurns`.
    func turnEnded(on loop: EventLoop)
}

extension EventLoop {
    /// The protocol layer's object for this loop, if attached. Loop thread only.
    package var layer: (any LoopLayer)? { attachedLayer }

    /// Attaches the protocol layer's object (replacing any); with
    /// `observesTurns` it is told at the end of every turn. Loop thread only.
    package func attach(_ layer: any LoopLayer, observesTurns: Bool) {
        preconditionInEventLoop("EventLoop.attach(_:observesTurns:)")
        attachedLayer = layer
        turnObserver = observesTurns ? layer : nil
    }

    /// Bytes read from and written to the sockets of this loop's connections
    /// since it started (plain counters, read on the loop thread).
    package var trafficTotals: (bytesRead: UInt64, bytesWritten: UInt64) { (bytesReadTotal, bytesWrittenTotal) }
}
