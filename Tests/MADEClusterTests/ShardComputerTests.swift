import Foundation
import MADE
import Testing
@testable import MADECluster

@Suite("Shard computer")
struct ShardComputerTests {
    static func computer() throws -> (ShardComputer, TrainingConfiguration) {
        let bits = (0..<(40 * 6)).map { UInt8($0 % 3 == 0 ? 1 : 0) }
        let split = DataMatrix(binary: bits, count: 40, dimension: 6)
        let computer = ShardComputer(dataset: Dataset(train: split, valid: split, test: split, source: "test"))
        let c = TrainingConfiguration(model: ModelConfiguration(inputCount: 6, hiddenSizes: [8], maskCount: 2), batchSize: 10, shards: 2)
        try computer.configure(Array(try JSONEncoder().encode(c)))
        return (computer, c)
    }

    @Test("malformed tasks are refused with an error, never a crash")
    func malformedTasks() throws {
        let (computer, c) = try Self.computer()
        let dense = FloatPayload.inline(ParameterLayout(c.model).initialParameters(seed: 0, as: Float.self))
        let bad: [WireMessage.Task] = [
            .init(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [5, 3], work: .logLikelihood(split: 2, masks: 1, mode: 0), parameters: dense),
            .init(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [0, 1, 3], work: .logLikelihood(split: 2, masks: 1, mode: 0), parameters: dense),
            .init(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [0, 99], work: .logLikelihood(split: 2, masks: 1, mode: 0), parameters: dense),
            .init(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [0], work: .logLikelihood(split: 7, masks: 1, mode: 0), parameters: dense),
            .init(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [0], work: .logLikelihood(split: 2, masks: 1 << 30, mode: 0), parameters: dense),
            .init(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [], work: .sample(count: 1 << 20, masks: 1, seed: 0, method: 0), parameters: dense),
            .init(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [], work: .sample(count: 2, masks: 1, seed: 0, method: 9), parameters: dense),
            .init(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [1], work: .logLikelihood(split: 2, masks: 1, mode: 0), parameters: .inline([1, 2])),
            .init(step: 2, shard: 0, shardCount: 1, maskSeed: 0, rows: [0, 41], parameters: .absent),
            .init(step: 2, shard: 0, shardCount: 1, maskSeed: 0, rows: Array(repeating: 0, count: 11), parameters: .absent),
            .init(step: 3, shard: 0, shardCount: 1, maskSeed: 0, rows: [0], parameters: .absent),
        ]
        for task in bad {
            #expect(throws: ClusterError.self, "\(task)") { _ = try computer.compute(task) }
        }
        // A good task still works afterwards.
        let good = WireMessage.Task(step: 4, shard: 0, shardCount: 1, maskSeed: 0, rows: [0, 1, 2], work: .logLikelihood(split: 2, masks: 2, mode: 0),
                                    parameters: dense)
        let result = try computer.compute(good)
        #expect(result.values.count == 6)
    }
}
