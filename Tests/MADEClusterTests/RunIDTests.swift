import Foundation
import MADE
import Testing

@testable import MADECluster

@Suite("Run id")
struct RunIDTests {
    /// Workers compare run ids and checkpoints record them, so the canonical bytes of a
    /// configuration must not drift by accident: this pins the run id of the configuration with its
    /// masks per step recorded (a new field of the configuration changes every run id on purpose).
    @Test("the run id of a fixed configuration and fingerprint keeps its bits")
    func pinned() throws {
        let c = TrainingConfiguration(
            model: ModelConfiguration(inputCount: 784, hiddenSizes: [500], maskCount: 1),
            seed: 1234,
            batchSize: 100,
            epochs: 10,
            shards: 2
        )
        let id = ClusterCoordinator.runID(
            configuration: try c.canonicalJSON(),
            dataFingerprint: Array("fingerprint".utf8)
        )
        #expect(String(id, radix: 16) == "c9a01c24da88531f")
    }

    @Test("the canonical bytes are sorted-key JSON that decodes to the same configuration")
    func roundTrip() throws {
        let c = TrainingConfiguration(
            model: ModelConfiguration(inputCount: 6, hiddenSizes: [8, 8], maskCount: 3),
            seed: 7,
            batchSize: 10,
            shards: 2,
            patience: 3,
            kernel: .dense
        )
        let bytes = try c.canonicalJSON()
        #expect(try JSONDecoder().decode(TrainingConfiguration.self, from: Data(bytes)) == c)
        let text = String(decoding: bytes, as: UTF8.self)
        let keys = ["adam", "batchSize", "distribution", "ensembleMode", "epochs"].map { "\"\($0)\":" }
        let positions = try keys.map { try #require(text.range(of: $0)).lowerBound }
        #expect(positions == positions.sorted())
        #expect(try c.canonicalJSON() == bytes)
    }
}
