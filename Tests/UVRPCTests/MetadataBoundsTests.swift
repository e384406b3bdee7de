@testable import UVRPC
import XCTest

import UVLoop
import UVTestSupport

/// Metadata bounds do not depend on the peer.
final class MetadataBoundsTests: XCTestCase {
    /// RPCMetadata and RPCAsyncEndpoint.send say a call whose metadata is over
    /// its bounds (or sets `deadline`) fails before it is sent with
    /// invalidArgument; towards a peer without `meta` it went out (the
    /// metadata silently dropped), so the same call failed or not depending
    /// on which connection of a pool it met.
    func testBadMetadataFailsAlsoTowardsAPeerWithoutTheExtension() async throws {
        let harness = try LoopHarness()
        defer { harness.shutdownCleanly() }
        let server = try await RPCServer(configuration: .init(address: .ipv4(host: "127.0.0.1", port: 0),
                                                              endpoint: testConfiguration { $0.extensions = [.errorAnswers, .cancellation] }),
                                         on: harness.loop, handler: .async { request, _ in request.payload }).start()
        let client = try await RPCClient.connect(to: server.address, on: harness.loop, configuration: testConfiguration())
        for metadata: RPCMetadata in [["k": String(repeating: "v", count: 5000)], ["deadline": "1"], ["": "x"]] {
            do {
                _ = try await client.send([1], metadata: metadata)
                XCTFail("sent \(metadata.map(\.key))")
            } catch let error as RPCError {
                XCTAssertEqual(error.code, .invalidArgument)
                XCTAssertFalse(error.requestWasSent)
            }
        }
        let echoed = try await client.send([2], metadata: ["tenant": "7"])
        XCTAssertEqual(echoed, [2], "good metadata is dropped towards this peer, as before")
        await client.close()
        await server.stop()
    }
}
