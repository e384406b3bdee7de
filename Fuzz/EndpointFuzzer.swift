// libFuzzer entry point: every input goes through a whole endpoint (see
// Fuzz/EndpointHarness). Built by scripts/fuzz.sh with -sanitize=fuzzer,address.
import EndpointFuzzHarness

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    fuzzEndpoint(count > 0 ? Array(UnsafeRawBufferPointer(start: start, count: count)) : [])
    return 0
}
