import ExampleScores
import Foundation
import MallocCounter
import UVRPCMessages

/// The typed layer's own cost, in this process: each half of a typed Echo
/// of `size` bytes (the message encoded by the caller and decoded by the
/// server, the response encoded by the server and decoded by the caller),
/// in nanoseconds and mallocs per operation.
func measureTypedCodec(size: Int, iterations: Int = 200_000) throws -> [(key: String, label: String, nanoseconds: Double, mallocs: Double)] {
    let codec = scoresProtocol.codec
    let data = Data((0..<size).map { UInt8(truncatingIfNeeded: $0) })
    let message = Echo(data: data, note: nil), response = EchoResult(data: data, note: nil)
    let messagePayload = try codec.encode(message, typeID: 4), responsePayload = try codec.encode(response, typeID: 2)
    var sink = 0
    func measure(_ key: String, _ label: String, _ body: () throws -> Int) rethrows -> (String, String, Double, Double) {
        for _ in 0..<1000 { sink &+= try body() } // warm-up: metadata and caches
        let mallocs = uvrpc_total_allocations()
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<iterations { sink &+= try body() }
        let elapsed = DispatchTime.now().uptimeNanoseconds - start
        return (key, label, Double(elapsed) / Double(iterations), Double(uvrpc_total_allocations() - mallocs) / Double(iterations))
    }
    let results = [
        try measure("encode-message", "encode the Echo message (caller)") { try codec.encode(message, typeID: 4).count },
        try measure("decode-message", "decode the Echo message (server)") { try codec.reader(for: messagePayload).decode(Echo.self).data.count },
        try measure("encode-response", "encode the EchoResult (server)") { try codec.encode(response, typeID: 2).count },
        try measure("decode-response", "decode the EchoResult (caller)") { try codec.reader(for: responsePayload).decode(EchoResult.self).data.count },
    ]
    if sink == 42 { print("") } // keeps the work from being optimized away
    return results
}
