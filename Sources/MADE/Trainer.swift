import Foundation
import Logging

/// What the trainer reports as it goes.
public enum TrainingEvent: Sendable {
    /// A step finished: its index, the mean training NLL of its minibatch, the learning rate.
    case step(step: Int, epoch: Int, loss: Double, learningRate: Double)
    /// An epoch finished and was validated.
    case epoch(EpochRecord, improved: Bool)
    /// A checkpoint was written.
    case checkpoint(path: String, step: Int)
}

/// How a call to ``Trainer/run(until:)`` ended.
public enum TrainingOutcome: Sendable, Equatable {
    /// Every epoch ran.
    case finished
    /// Validation stopped improving for `patience` epochs.
    case stoppedEarly
    /// The caller asked to stop (a signal, a step limit); the state is checkpointed when a path is set.
    case interrupted
}

/// Trains MADE in one process: the reference trainer's loop, made reproducible.
///
/// Each step takes the next minibatch of the epoch's order (``DataOrder``) and the step's mask
/// seed (``MaskSchedule``), computes the gradient of each of the `S` shards separately with a
/// ``GradientEngine``, sums them with ``GradientReducer`` (a fixed tree over shard indices),
/// and applies Adam with the gradient scaled by `1/B`. A cluster that computes the same shards
/// anywhere and reduces them in the same tree gets the same bits.
///
/// At the end of each epoch the validation split is scored with the evaluation ensemble, the
/// best parameters are kept for early stopping, and a checkpoint is written.
public final class Trainer {
    public let configuration: TrainingConfiguration
    public let dataset: Dataset
    public private(set) var state: TrainingState
    public let dataFingerprint: String
    /// Where checkpoints go; nil writes none.
    public var checkpointPath: String?
    /// Steps between checkpoints within an epoch; 0 writes them only at epoch ends.
    public var checkpointEvery: Int = 0
    public var onEvent: (TrainingEvent) -> Void = { _ in }
    public var logger: Logger

    private let train: DataMatrix
    private let order: DataOrder
    private let engine: GradientEngine
    private var shardGradients: [[Float]]
    private var shardLosses: [Double]
    private var permutationEpoch = -1
    private var permutation: [Int32] = []

    /// Prepares a run on `dataset`, from `state` or from scratch.
    ///
    /// - Throws: when the configuration is invalid, the data does not fit it, or the state does not fit the model.
    public init(configuration: TrainingConfiguration, dataset: Dataset, state: TrainingState? = nil,
                logger: Logger = Logger(label: "made.trainer")) throws {
        try configuration.validate()
        guard let train = dataset.train else {
            throw MADEError(.invalidData, "the data has no training split", path: dataset.source)
        }
        guard train.dimension == configuration.model.inputCount else {
            throw MADEError(.invalidData, "the data has dimension \(train.dimension) but the model expects \(configuration.model.inputCount)", path: dataset.source)
        }
        if configuration.distribution == .bernoulli {
            for (name, split) in [("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test)] {
                if let split, !split.isBinary {
                    throw MADEError(.invalidData, "Bernoulli outputs need 0/1 data, but the \(name) split holds other values (use --distribution gaussian or binarize)", path: dataset.source)
                }
            }
        }
        guard train.count >= configuration.batchSize else {
            throw MADEError(.invalidData, "\(train.count) training examples are fewer than one batch of \(configuration.batchSize)", path: dataset.source)
        }
        let layout = ParameterLayout(configuration.model)
        let state = state ?? TrainingState(configuration: configuration)
        guard state.parameters.count == layout.count else {
            throw MADEError(.invalidCheckpoint, "the saved state holds \(state.parameters.count) parameters, the model \(layout.count)")
        }
        self.configuration = configuration
        self.dataset = dataset
        self.state = state
        self.train = train
        self.logger = logger
        self.dataFingerprint = DataFingerprint.of(dataset)
        self.order = DataOrder(exampleCount: train.count, batchSize: configuration.batchSize, shards: configuration.shards,
                               seed: configuration.seed, shuffle: configuration.shuffle)
        let largestShard = order.shardRange(0).count
        self.engine = GradientEngine(configuration: configuration.model, distribution: configuration.distribution,
                                     runSeed: configuration.seed, capacity: largestShard)
        self.shardGradients = [[Float]](repeating: [Float](repeating: 0, count: layout.count), count: configuration.shards)
        self.shardLosses = [Double](repeating: 0, count: configuration.shards)
    }

    /// Steps per epoch.
    public var stepsPerEpoch: Int { order.stepsPerEpoch }

    /// Whether the run has nothing left to do.
    public var isDone: Bool { state.stoppedEarly || state.completedEpochs >= configuration.epochs }

    /// Runs steps and epochs until the run is done or `shouldStop` returns true (checked between steps).
    public func run(until shouldStop: () -> Bool = { false }) throws -> TrainingOutcome {
        var epochStart = ContinuousClock.now
        var epochSeconds = 0.0
        while !isDone {
            let stepInEpoch = state.step - state.completedEpochs * stepsPerEpoch
            if stepInEpoch >= stepsPerEpoch {
                epochSeconds += (ContinuousClock.now - epochStart).seconds
                try finishEpoch(seconds: epochSeconds)
                epochSeconds = 0
                epochStart = ContinuousClock.now
                continue
            }
            if shouldStop() {
                try saveCheckpoint()
                return .interrupted
            }
            step(stepInEpoch: stepInEpoch)
            if checkpointEvery > 0, state.step % checkpointEvery == 0 {
                try saveCheckpoint()
            }
        }
        return state.stoppedEarly ? .stoppedEarly : .finished
    }

    /// One training step at position `stepInEpoch` of the current epoch.
    func step(stepInEpoch: Int) {
        let epoch = state.completedEpochs
        if permutationEpoch != epoch {
            permutation = order.permutation(epoch: epoch)
            permutationEpoch = epoch
        }
        let maskSeed = configuration.maskSchedule.maskSeed(step: state.step)
        engine.begin(parameters: state.parameters, maskSeed: maskSeed)
        for s in 0..<configuration.shards {
            let rows = order.rows(permutation, stepInEpoch: stepInEpoch, shard: s)
            shardLosses[s] = engine.gradient(data: train, indices: rows, into: &shardGradients[s])
        }
        GradientReducer.reduce(&shardGradients)
        let loss = GradientReducer.reduce(shardLosses)
        let lr = configuration.schedule.learningRate(epoch: epoch)
        state.applyAdam(gradient: shardGradients[0], scale: 1 / Float(configuration.batchSize),
                        learningRate: lr, configuration: configuration.adam)
        state.epochLossSum += loss
        state.epochExamples += configuration.batchSize
        state.step += 1
        onEvent(.step(step: state.step, epoch: epoch, loss: loss / Double(configuration.batchSize), learningRate: lr))
    }

    /// Validates, updates early stopping, records the epoch and checkpoints.
    func finishEpoch(seconds: Double) throws {
        let epoch = state.completedEpochs
        var validNLL: Double?
        if let valid = dataset.valid, valid.count > 0 {
            validNLL = evaluate(valid, parameters: state.parameters)
        }
        var improved = false
        if let v = validNLL, state.bestValidNLL.map({ v < $0 }) ?? true {
            improved = true
            state.bestValidNLL = v
            state.bestEpoch = epoch
            if configuration.patience > 0 { state.bestParameters = state.parameters }
            state.epochsWithoutImprovement = 0
        } else if validNLL != nil {
            state.epochsWithoutImprovement += 1
        }
        let record = EpochRecord(epoch: epoch, trainNLL: state.epochLossSum / Double(max(1, state.epochExamples)),
                                 validNLL: validNLL, learningRate: configuration.schedule.learningRate(epoch: epoch), seconds: seconds)
        state.history.append(record)
        state.completedEpochs += 1
        state.epochLossSum = 0
        state.epochExamples = 0
        if configuration.patience > 0, state.epochsWithoutImprovement >= configuration.patience {
            state.stoppedEarly = true
        }
        onEvent(.epoch(record, improved: improved))
        try saveCheckpoint()
    }

    /// Mean NLL of `data` under the evaluation ensemble.
    public func evaluate(_ data: DataMatrix, parameters: [Float]? = nil) -> Double {
        Evaluator<Float>(configuration: configuration.model, distribution: configuration.distribution, runSeed: configuration.seed)
            .meanNLL(parameters: parameters ?? state.parameters, data: data, masks: configuration.evaluationMasks, mode: configuration.ensembleMode)
    }

    /// The checkpoint of the current state.
    public var checkpoint: Checkpoint {
        Checkpoint(configuration: configuration, state: state, dataFingerprint: dataFingerprint)
    }

    /// Writes the current state to ``checkpointPath`` when one is set.
    public func saveCheckpoint() throws {
        guard let path = checkpointPath else { return }
        try checkpoint.write(to: path)
        onEvent(.checkpoint(path: path, step: state.step))
    }
}

extension Duration {
    /// This duration in seconds.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}

/// A short digest that identifies a data set's contents: the SHA-256 of each split's shape and values.
public enum DataFingerprint {
    public static func of(_ dataset: Dataset) -> String {
        var h = SHA256()
        for (name, split) in [("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test)] {
            guard let split else { h.update(Array("\(name):none;".utf8)); continue }
            h.update(Array("\(name):\(split.count)x\(split.dimension):".utf8))
            switch split.storage {
            case .binary(let bytes): h.update(Array("u8;".utf8)); h.update(bytes)
            case .real(let values): h.update(Array("f32;".utf8)); h.update(floats: values)
            }
        }
        return h.finalize().hexString
    }
}
