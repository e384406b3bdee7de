// expect-error: switch must be exhaustive
// Error codes are values, not enum cases: new ones may come in a later
// version, so a switch over them needs a default (and no release breaks it).
import UVRPC

func decide(_ error: RPCError) -> Bool {
    switch error.code {
    case .unavailable: return true
    case .deadlineExceeded: return false
    }
}
