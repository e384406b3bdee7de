/// The deadlines of the async handlers running now (extension `meta`): one
/// timer per endpoint fires at the earliest; the handlers past theirs are
/// cancelled like a peer's CANCEL would. A handler that ends first leaves.
///
/// Few handlers run at once per connection, so the earliest is found by a
/// scan when the timer fires or a nearer deadline arrives, not kept sorted.
struct HandlerDeadlines {
    /// A running handler with a deadline.
    struct Entry: Equatable {
        /// When it passes (loop milliseconds).
        var at: UInt64
        /// The worker task running it.
        var worker: UInt64
    }

    /// By the handler's sequence number (``OwedAnswers/beginAsyncHandler(id:worker:)``).
    private(set) var running: [UInt64: Entry] = [:]
    /// Handlers cancelled for their deadline and not yet ended.
    private(set) var expired: Set<UInt64> = []
    /// When the timer is armed for (loop milliseconds); nil when it is not.
    private(set) var armedAt: UInt64?

    var isEmpty: Bool { running.isEmpty && expired.isEmpty }

    /// Handler `sequence` starts with a deadline at `at`; returns whether
    /// the timer must be (re)armed for it (it is the earliest).
    mutating func add(sequence: UInt64, at: UInt64, worker: UInt64) -> Bool {
        running[sequence] = Entry(at: at, worker: worker)
        guard let armedAt else { return true }
        return at < armedAt
    }

    /// Handler `sequence` ended; whether it was cancelled for its deadline.
    mutating func end(sequence: UInt64) -> Bool {
        running[sequence] = nil
        return expired.remove(sequence) != nil
    }

    /// The timer fired at `now`: takes the handlers whose deadline passed
    /// (their workers are to be cancelled) and marks them expired.
    mutating func expire(now: UInt64) -> [UInt64] {
        armedAt = nil
        var workers: [UInt64] = []
        for (sequence, entry) in running where entry.at <= now {
            running[sequence] = nil
            expired.insert(sequence)
            workers.append(entry.worker)
        }
        return workers
    }

    /// The delay to arm the timer with (milliseconds from `now`) for the
    /// earliest deadline, recording it; nil when none is left.
    mutating func arm(now: UInt64) -> UInt64? {
        guard let earliest = running.values.lazy.map(\.at).min() else {
            armedAt = nil
            return nil
        }
        armedAt = earliest
        return earliest > now ? earliest - now : 0
    }

    /// Forgets everything (the endpoint is closing).
    mutating func removeAll() {
        running.removeAll()
        expired.removeAll()
        armedAt = nil
    }
}
