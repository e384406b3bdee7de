// Makes one blocking call on an event loop's thread, as its argument says,
// for LoopMisuseTests: each must stop the process with a message naming the
// call and the loop, instead of deadlocking.
import Dispatch
import UVLoop

@main
struct Misuse {
    static func main() throws {
        let caller = try EventLoop(name: "caller")
        let other = try EventLoop(name: "other")
        caller.start()
        other.start()
        let group = try EventLoopGroup(name: "group", loopCount: 1)
        let what = CommandLine.arguments.dropFirst().first ?? ""
        caller.execute {
            switch what {
            case "syncShutdown-of-another-loop": _ = other.syncShutdown(timeout: .seconds(5))
            case "syncShutdown-of-a-group": _ = group.syncShutdown(timeout: .seconds(5))
            case "submitAndWait-on-another-loop": _ = try? other.submitAndWait { 1 }
            default: print("unknown misuse \(what)")
            }
            print("the blocking call returned") // never reached
        }
        dispatchMain()
    }
}
