/// splitmix64's finalizer: inputs that differ in one bit (neighbouring
/// counters, seed plus index) give unrelated outputs. For choices and test
/// bytes that must look random without asking the kernel (`Int.random` is
/// a `getrandom` system call per use on Linux).
@inline(__always)
package func splitMix64(_ value: UInt64) -> UInt64 {
    var z = value &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}
