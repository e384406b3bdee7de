import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A budget of memory shared by many connections, on any loops: every
/// endpoint of one ``RPCServer`` counts against its server's budget (see
/// ``RPCEndpoint/Configuration/maximumServerPayloadMemory``) the payloads
/// it receives in parts and the big payloads waiting to be sent. Past the
/// limit, new payloads received in parts are refused (see
/// ``RPCEndpoint/Configuration/maximumPayloadMemory``), so that all peers
/// together cannot make the process grow without bound.
///
/// One atomic add per big payload (over the read buffer's size), never per message.
package final class MemoryBudget: Sendable {
    /// The most bytes reserved at once.
    package let limit: Int
    private let used = Atomic<Int>(0)

    package init(limit: Int) { self.limit = limit }

    /// Bytes reserved now.
    package var usedBytes: Int { used.load(ordering: .relaxed) }

    /// Reserves `count` bytes if that stays within the limit.
    package func reserve(_ count: Int) -> Bool {
        var current = used.load(ordering: .relaxed)
        while true {
            guard current <= limit - count else { return false }
            let (exchanged, original) = used.compareExchange(expected: current, desired: current + count,
                                                             ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    /// Counts `count` bytes that are held already (an answer produced, waiting
    /// to be sent), over the limit if need be: later reservations then fail
    /// until it is released.
    package func charge(_ count: Int) { used.wrappingAdd(count, ordering: .relaxed) }

    /// Gives back bytes reserved or charged before.
    package func release(_ count: Int) { used.wrappingSubtract(count, ordering: .relaxed) }
}

/// Why a payload received in parts was refused (its bytes are then skipped as they arrive).
package enum PayloadRefusal: Error, Equatable, Sendable, CustomStringConvertible {
    /// The connection holds `held` bytes of such payloads and `limit` is its budget.
    case connectionBudget(held: Int, limit: Int)
    /// All connections sharing the budget hold `used` bytes and `limit` is its size.
    case sharedBudget(used: Int, limit: Int)
    /// The memory could not be allocated (the process's address space or the system is exhausted).
    case allocationFailed

    package var description: String {
        switch self {
        case .connectionBudget(let held, let limit):
            return "the connection holds \(held) bytes of payloads in progress and its limit is \(limit)"
        case .sharedBudget(let used, let limit):
            return "the server holds \(used) bytes of payloads in progress or unsent and its limit is \(limit)"
        case .allocationFailed:
            return "the memory could not be allocated"
        }
    }

    /// The `reason` dimension of `uvrpc_payloads_refused_total`.
    var metricName: String {
        switch self {
        case .connectionBudget: return "connection_budget"
        case .sharedBudget: return "server_budget"
        case .allocationFailed: return "allocation_failed"
        }
    }
}

/// The payload buffers of one connection's parser: allocated only within
/// the connection's budget and the shared one, with `malloc` (a failed
/// allocation refuses the payload instead of stopping the process, as
/// Swift's allocator would), and given back to both when freed.
package struct PayloadMemory {
    /// Bytes of buffers held now (reassembly, big payload, the kept spare).
    package private(set) var held = 0
    /// The connection's budget.
    package var limit: Int
    /// The budget shared with other connections, if any.
    package let shared: MemoryBudget?

    package init(limit: Int = .max, shared: MemoryBudget? = nil) {
        self.limit = limit
        self.shared = shared
    }

    /// A buffer of `count` bytes, or why not.
    mutating func allocate(_ count: Int) -> Result<UnsafeMutableRawBufferPointer, PayloadRefusal> {
        guard held <= limit - count else { return .failure(.connectionBudget(held: held, limit: limit)) }
        if let shared, !shared.reserve(count) {
            return .failure(.sharedBudget(used: shared.usedBytes, limit: shared.limit))
        }
        guard let base = malloc(max(count, 1)) else {
            shared?.release(count)
            return .failure(.allocationFailed)
        }
        held += count
        return .success(UnsafeMutableRawBufferPointer(start: base, count: count))
    }

    /// Frees a buffer from ``allocate(_:)`` (big ones off the loop) and gives its bytes back.
    mutating func free(_ buffer: UnsafeMutableRawBufferPointer) {
        held -= buffer.count
        shared?.release(buffer.count)
        BufferReleaser.free(buffer)
    }
}
