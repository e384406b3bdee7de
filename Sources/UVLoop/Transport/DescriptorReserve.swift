import CLibUV
#if canImport(Glibc)
import Glibc
#endif

/// The process's reserve descriptor (on /dev/null), spent to refuse
/// connections when the process has run out of descriptors: closing it
/// frees one to accept and close each waiting connection, so that their
/// clients learn at once instead of waiting in the kernel's queue (libuv's
/// own listener does the same, silently); then it is taken back.
///
/// One reserve for the whole process, and every acceptor of this library
/// accepts under its lock: with one reserve per loop, another loop's accept
/// took the descriptor a refusal had just freed, and that loop's waiting
/// connections were then left waiting.
final class DescriptorReserve: Sendable {
    static let shared = DescriptorReserve()

    /// The reserve descriptor, or -1 while it could not be opened.
    private let reserve = LockedValue<Int32>(-1)

    private static func openReserve() -> Int32 { open("/dev/null", O_RDONLY | O_CLOEXEC) }

    /// Accepts one connection from `listening` (non-blocking): the new
    /// descriptor, or -errno. Out of descriptors, spends the reserve to
    /// accept and close up to `limit` waiting connections first, and returns
    /// how many it refused that way (the descriptor is then -EAGAIN: the queue
    /// was emptied, or -EMFILE: not all of it). -EMFILE with none refused
    /// means no reserve could be had: the connections wait.
    func accept(on listening: Int32, refusingAtMost limit: Int) -> (descriptor: Int32, refused: Int) {
        reserve.withLock { reserve in
            if reserve < 0 { reserve = Self.openReserve() } // taken back once a descriptor is free
            let fd = uvrpc_accept(listening)
            guard fd == -EMFILE || fd == -ENFILE, reserve >= 0 else { return (fd, 0) }
            systemClose(reserve)
            var refused = 0, last = fd
            while refused < limit {
                last = uvrpc_accept(listening)
                guard last >= 0 else { break } // EAGAIN: none left
                systemClose(last)
                refused += 1
            }
            reserve = Self.openReserve()
            return (last >= 0 ? -EMFILE : last, refused)
        }
    }
}
