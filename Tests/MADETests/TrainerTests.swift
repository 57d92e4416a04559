import Foundation
import Testing

@testable import MADE

@Suite("Training, checkpoints and resume")
struct TrainerTests {
    /// A small binary data set with structure worth learning: each row repeats a random prefix.
    static func dataset(count: Int = 120, dimension: Int = 16, seed: UInt64 = 3) -> Dataset {
        var rng = RandomStream(seed: seed, domain: .sampling)
        func split(_ n: Int) -> DataMatrix {
            var bytes = [UInt8](repeating: 0, count: n * dimension)
            for r in 0..<n {
                for j in 0..<dimension {
                    bytes[r * dimension + j] =
                        j < dimension / 2 ? UInt8(rng.uniform(below: 2)) : bytes[r * dimension + j - dimension / 2]
                }
            }
            return DataMatrix(binary: bytes, count: n, dimension: dimension)
        }
        return Dataset(train: split(count), valid: split(40), test: split(40), source: "synthetic")
    }

    static func configuration(shards: Int = 1, patience: Int = 0, epochs: Int = 4) -> TrainingConfiguration {
        TrainingConfiguration(
            model: ModelConfiguration(
                inputCount: 16,
                hiddenSizes: [24, 20],
                naturalOrdering: false,
                directConnections: true,
                maskCount: 3
            ),
            seed: 42,
            batchSize: 12,
            epochs: epochs,
            resampleEvery: 4,
            shards: shards,
            adam: AdamConfiguration(learningRate: 0.01),
            schedule: StepSchedule(baseLearningRate: 0.01, stepEpochs: 2, gamma: 0.5),
            patience: patience,
            evaluationMasks: 2
        )
    }

    static func temporaryPath(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("made-tests-\(getpid())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent(name).path
    }

    @Test("training lowers the validation NLL")
    func learns() throws {
        var c = Self.configuration(epochs: 30)
        c.schedule.stepEpochs = 0
        let trainer = try Trainer(configuration: c, dataset: Self.dataset())
        let before = trainer.evaluate(Self.dataset().valid!)
        #expect(try trainer.run() == .finished)
        let after = trainer.state.history.last!.validNLL!
        #expect(after < before - 1, "valid NLL \(before) -> \(after)")
        #expect(trainer.state.step == 30 * 10)
    }

    @Test("stopped and resumed from a checkpoint, a run ends bit-identical", arguments: [7, 10, 23])
    func resumeIsBitIdentical(stopStep: Int) throws {
        let data = Self.dataset()
        let uninterrupted = try Trainer(configuration: Self.configuration(patience: 2), dataset: data)
        _ = try uninterrupted.run()

        let path = Self.temporaryPath("resume-\(stopStep).ckpt")
        let first = try Trainer(configuration: Self.configuration(patience: 2), dataset: data)
        first.checkpointPath = path
        #expect(try first.run(until: { first.state.step >= stopStep }) == .interrupted)
        let saved = try Checkpoint.read(from: path)
        #expect(saved.state == first.state)
        let second = try Trainer(configuration: saved.configuration, dataset: data, state: saved.state)
        _ = try second.run()
        #expect(second.state.parameters == uninterrupted.state.parameters)
        #expect(second.state.adam == uninterrupted.state.adam)
        #expect(second.checkpoint.parametersSHA256 == uninterrupted.checkpoint.parametersSHA256)
        #expect(second.state.history.map(\.validNLL) == uninterrupted.state.history.map(\.validNLL))
    }

    @Test("a checkpoint round-trips every field, and damage is detected")
    func checkpointRoundTrip() throws {
        let trainer = try Trainer(configuration: Self.configuration(patience: 1), dataset: Self.dataset())
        _ = try trainer.run(until: { trainer.state.step >= 25 })
        let checkpoint = trainer.checkpoint
        let bytes = try checkpoint.encoded()
        #expect(try Checkpoint.decode(bytes) == checkpoint)

        var flipped = bytes
        flipped[bytes.count / 2] ^= 0x10
        #expect(throws: MADEError.self) { try Checkpoint.decode(flipped) }
        #expect(throws: MADEError.self) { try Checkpoint.decode(Array(bytes.prefix(bytes.count - 100))) }
        #expect(throws: MADEError.self) {
            try Checkpoint.decode(Array("not a checkpoint at all, just text....................".utf8))
        }
        do {
            _ = try Checkpoint.decode(Array(bytes.prefix(20)))
            Issue.record("a truncated checkpoint was accepted")
        } catch let error as MADEError {
            #expect(error.code == .invalidCheckpoint)
            #expect(error.message.contains("truncated"))
        }
    }

    @Test("a diverged history still checkpoints; counters that no schedule reaches are refused")
    func checkpointEdgeCases() throws {
        let trainer = try Trainer(configuration: Self.configuration(), dataset: Self.dataset())
        _ = try trainer.run(until: { trainer.state.step >= 12 })
        var checkpoint = trainer.checkpoint
        checkpoint.state.history.append(
            EpochRecord(epoch: 0, trainNLL: .nan, validNLL: .infinity, learningRate: 0.01, seconds: 1)
        )
        let decoded = try Checkpoint.decode(try checkpoint.encoded())
        #expect(decoded.state.history.last!.trainNLL.isNaN && decoded.state.history.last!.validNLL == .infinity)
        for mutate in [
            { (s: inout TrainingState) in
                s.step = -5
                s.adam.step = -5
            },
            { (s: inout TrainingState) in s.adam.step = s.step + 1 },
            { (s: inout TrainingState) in s.completedEpochs = -1 },
        ] {
            var bad = trainer.checkpoint
            mutate(&bad.state)
            #expect(throws: MADEError.self) { try Checkpoint.decode(try bad.encoded()) }
        }
        // A step outside the saved epoch on this data is refused when training resumes.
        var far = trainer.state
        far.step = 500
        far.adam.step = 500
        #expect(throws: MADEError.self) {
            try Trainer(configuration: Self.configuration(), dataset: Self.dataset(), state: far)
        }
    }

    @Test("checkpoint writes are atomic: the old file survives until the new one is complete")
    func atomicWrite() throws {
        let path = Self.temporaryPath("atomic.bin")
        try AtomicFile.write([1, 2, 3], to: path)
        try AtomicFile.write([4, 5], to: path)
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: path))) == [4, 5])
        let leftovers = try FileManager.default.contentsOfDirectory(
            atPath: (path as NSString).deletingLastPathComponent
        )
        .filter { $0.hasPrefix(".atomic.bin.tmp-") }  // the folder is shared with tests running beside this one
        #expect(leftovers.isEmpty)
        #expect(throws: MADEError.self) { try AtomicFile.write([1], to: "/nonexistent-folder/x.bin") }
    }

    @Test("shards change only the summation order: S = 1 and S = 4 agree closely, and each is reproducible")
    func shardsAreDeterministic() throws {
        let data = Self.dataset()
        let a = try Trainer(configuration: Self.configuration(shards: 4, epochs: 2), dataset: data)
        let b = try Trainer(configuration: Self.configuration(shards: 4, epochs: 2), dataset: data)
        let c = try Trainer(configuration: Self.configuration(shards: 1, epochs: 2), dataset: data)
        _ = try a.run()
        _ = try b.run()
        _ = try c.run()
        #expect(a.state.parameters == b.state.parameters)
        let maxDifference = zip(a.state.parameters, c.state.parameters).map { abs($0 - $1) }.max()!
        #expect(maxDifference < 1e-3, "S=4 and S=1 drifted apart by \(maxDifference)")
    }

    @Test("evaluation does not move the training masks")
    func evaluationDoesNotShiftTraining() throws {
        let data = Self.dataset()
        let plain = try Trainer(configuration: Self.configuration(epochs: 1), dataset: data)
        _ = try plain.run()
        let evaluating = try Trainer(configuration: Self.configuration(epochs: 1), dataset: data)
        _ = try evaluating.run(until: {
            _ = evaluating.evaluate(data.test!)  // evaluate between every step
            return false
        })
        #expect(plain.state.parameters == evaluating.state.parameters)
    }

    @Test("early stopping keeps the best parameters and stops")
    func earlyStopping() throws {
        var c = Self.configuration(patience: 1, epochs: 40)
        c.adam.learningRate = 0.05
        c.schedule.baseLearningRate = 0.05
        c.schedule.stepEpochs = 0
        let trainer = try Trainer(configuration: c, dataset: Self.dataset(count: 36))
        let outcome = try trainer.run()
        #expect(outcome == .stoppedEarly)
        let best = trainer.state.history.compactMap(\.validNLL).min()!
        #expect(trainer.state.bestValidNLL == best)
        #expect(trainer.checkpoint.modelParameters == trainer.state.bestParameters)
        #expect(
            abs(trainer.evaluate(Self.dataset(count: 36).valid!, parameters: trainer.checkpoint.modelParameters) - best)
                < 1e-9
        )
    }

    @Test("bad configurations and mismatched data are refused with a reason")
    func refusals() throws {
        var c = Self.configuration()
        c.batchSize = 0
        #expect(throws: MADEError.self) { try Trainer(configuration: c, dataset: Self.dataset()) }
        c = Self.configuration()
        c.model.inputCount = 17
        #expect(throws: MADEError.self) { try Trainer(configuration: c, dataset: Self.dataset()) }
        c = Self.configuration()
        c.distribution = .gaussian
        #expect(throws: MADEError.self) { try Trainer(configuration: c, dataset: Self.dataset()) }
        let real = Dataset(
            train: DataMatrix(real: [Float](repeating: 0.5, count: 16 * 20), count: 20, dimension: 16),
            valid: nil,
            test: nil,
            source: "grey"
        )
        do {
            _ = try Trainer(configuration: Self.configuration(), dataset: real)
            Issue.record("Bernoulli training on grey levels was accepted")
        } catch let error as MADEError {
            #expect(error.message.contains("0/1"))
        }
    }
}
