import Foundation

/// Everything that determines a training run, bit for bit, given the data.
public struct TrainingConfiguration: Sendable, Equatable, Codable {
    public var model: ModelConfiguration
    public var distribution: OutputDistribution
    /// The run seed: masks, initialization and data order derive from it.
    public var seed: UInt64
    /// Examples per step (the global minibatch).
    public var batchSize: Int
    /// Epochs to train (an epoch is `floor(N / batchSize)` steps).
    public var epochs: Int
    /// Steps between mask changes (the reference's `resample_every`).
    public var resampleEvery: Int
    /// Pieces each minibatch is cut into; their gradients are summed in a fixed tree order.
    public var shards: Int
    /// Masks trained in every step (`M`): shard `s` trains the step's mask number `s mod M` (see
    /// ``MaskSchedule``). 1 is the reference's schedule, one mask at a time. `M` divides ``shards``
    /// and is at most the model's mask count.
    public var masksPerStep: Int
    public var adam: AdamConfiguration
    public var schedule: StepSchedule
    /// Epochs without a better validation NLL before stopping; 0 never stops early.
    public var patience: Int
    /// Masks in the evaluation ensemble (the reference's `--samples`).
    public var evaluationMasks: Int
    public var ensembleMode: EnsembleMode
    /// Whether each epoch visits the training examples in a fresh seeded order (otherwise file order).
    public var shuffle: Bool
    /// The arithmetic of the steps and of validation. Both kernels agree within float rounding,
    /// not bit for bit, so a run keeps its kernel (checkpoints written before there was a choice
    /// read as ``ComputeKernel/dense``, the only kernel then).
    public var kernel: ComputeKernel

    public init(
        model: ModelConfiguration,
        distribution: OutputDistribution = .bernoulli,
        seed: UInt64 = 0,
        batchSize: Int = 100,
        epochs: Int = 100,
        resampleEvery: Int = 20,
        shards: Int = 1,
        masksPerStep: Int = 1,
        adam: AdamConfiguration = AdamConfiguration(),
        schedule: StepSchedule = StepSchedule(),
        patience: Int = 0,
        evaluationMasks: Int = 1,
        ensembleMode: EnsembleMode = .likelihood,
        shuffle: Bool = true,
        kernel: ComputeKernel = .sparse
    ) {
        self.model = model
        self.distribution = distribution
        self.seed = seed
        self.batchSize = batchSize
        self.epochs = epochs
        self.resampleEvery = resampleEvery
        self.shards = shards
        self.masksPerStep = masksPerStep
        self.adam = adam
        self.schedule = schedule
        self.patience = patience
        self.evaluationMasks = evaluationMasks
        self.ensembleMode = ensembleMode
        self.shuffle = shuffle
        self.kernel = kernel
    }

    private enum CodingKeys: String, CodingKey {
        case model, distribution, seed, batchSize, epochs, resampleEvery, shards, masksPerStep, adam, schedule,
            patience, evaluationMasks,
            ensembleMode, shuffle, kernel
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        model = try c.decode(ModelConfiguration.self, forKey: .model)
        distribution = try c.decode(OutputDistribution.self, forKey: .distribution)
        seed = try c.decode(UInt64.self, forKey: .seed)
        batchSize = try c.decode(Int.self, forKey: .batchSize)
        epochs = try c.decode(Int.self, forKey: .epochs)
        resampleEvery = try c.decode(Int.self, forKey: .resampleEvery)
        shards = try c.decode(Int.self, forKey: .shards)
        // A configuration saved before masks per step were recorded trained one mask a step.
        masksPerStep = try c.decodeIfPresent(Int.self, forKey: .masksPerStep) ?? 1
        adam = try c.decode(AdamConfiguration.self, forKey: .adam)
        schedule = try c.decode(StepSchedule.self, forKey: .schedule)
        patience = try c.decode(Int.self, forKey: .patience)
        evaluationMasks = try c.decode(Int.self, forKey: .evaluationMasks)
        ensembleMode = try c.decode(EnsembleMode.self, forKey: .ensembleMode)
        shuffle = try c.decode(Bool.self, forKey: .shuffle)
        kernel = try c.decodeIfPresent(ComputeKernel.self, forKey: .kernel) ?? .dense
    }

    /// The configuration's canonical bytes: JSON with sorted keys. The coordinator hands these bytes
    /// to its workers and the run id hashes them, so every encoding of a run's configuration goes
    /// through here; a change to them changes every run id.
    public func canonicalJSON() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(self))
    }

    /// Throws when the run cannot be carried out.
    public func validate() throws {
        try model.validate()
        guard model.outputMultiplier == distribution.parametersPerDimension else {
            throw MADEError(
                .invalidConfiguration,
                """
                \(distribution) outputs need nout = \(distribution.parametersPerDimension) x nin, not \
                \(model.outputMultiplier) x nin
                """
            )
        }
        guard batchSize >= 1 else {
            throw MADEError(.invalidConfiguration, "the batch size must be at least 1, not \(batchSize)")
        }
        guard epochs >= 0, epochs <= Self.maxEpochs else {
            throw MADEError(.invalidConfiguration, "epochs must be between 0 and \(Self.maxEpochs), not \(epochs)")
        }
        guard resampleEvery >= 1 else {
            throw MADEError(.invalidConfiguration, "--resample-every must be at least 1, not \(resampleEvery)")
        }
        guard shards >= 1, shards <= batchSize else {
            throw MADEError(
                .invalidConfiguration,
                "shards must be between 1 and the batch size (\(batchSize)), not \(shards)"
            )
        }
        guard masksPerStep >= 1, masksPerStep <= model.maskCount else {
            throw MADEError(
                .invalidConfiguration,
                """
                --masks-per-step must be between 1 and the number of masks (--num-masks \(model.maskCount)), not \
                \(masksPerStep)
                """
            )
        }
        guard shards % masksPerStep == 0 else {
            throw MADEError(
                .invalidConfiguration,
                """
                --masks-per-step \(masksPerStep) must divide the shards per step (\(shards)): every mask of a step \
                trains on whole shards; give --shards a multiple of \(masksPerStep)
                """
            )
        }
        guard evaluationMasks >= 1, evaluationMasks <= Evaluator<Float>.maxMasks else {
            throw MADEError(
                .invalidConfiguration,
                "--samples must be between 1 and \(Evaluator<Float>.maxMasks), not \(evaluationMasks)"
            )
        }
        guard patience >= 0 else { throw MADEError(.invalidConfiguration, "patience must not be negative") }
        guard adam.learningRate > 0, adam.learningRate.isFinite else {
            throw MADEError(.invalidConfiguration, "the learning rate must be positive, not \(adam.learningRate)")
        }
        guard adam.weightDecay >= 0, adam.weightDecay.isFinite else {
            throw MADEError(
                .invalidConfiguration,
                "the weight decay must be finite and not negative, not \(adam.weightDecay)"
            )
        }
        guard schedule.stepEpochs >= 0 else {
            throw MADEError(
                .invalidConfiguration,
                "the epochs between learning-rate decays must not be negative, not \(schedule.stepEpochs)"
            )
        }
        guard schedule.gamma > 0, schedule.gamma <= 1 else {
            throw MADEError(
                .invalidConfiguration,
                "the learning-rate decay factor must be in (0, 1], not \(schedule.gamma)"
            )
        }
        guard schedule.baseLearningRate == adam.learningRate else {
            throw MADEError(
                .invalidConfiguration,
                """
                the schedule's base learning rate \(schedule.baseLearningRate) differs from Adam's \
                \(adam.learningRate)
                """
            )
        }
    }

    /// Most epochs a run may ask for: far beyond any real run, small enough that every count
    /// of steps and examples derived from it fits in an `Int`.
    public static let maxEpochs = 1_000_000

    /// Bytes a process needs to train this configuration (parameters, Adam's moments, the
    /// gradient and the best parameters, and the activations of one batch), or nil when the
    /// count overflows. For refusing a configuration from a flag, a file or the wire before
    /// allocating it; call it on a configuration that passed ``validate()``.
    public var trainingBytes: Int? {
        let widths = model.layerWidths
        guard let parameters = MemoryBudget.product(ParameterLayout(model).count, 4, 6),
            let activations = MemoryBudget.product(batchSize, widths.reduce(0) { $0 &+ $1 }, 4, 4)
        else { return nil }
        let (total, overflow) = parameters.addingReportingOverflow(activations)
        return overflow ? nil : total
    }

    /// The mask schedule of this run.
    public var maskSchedule: MaskSchedule {
        MaskSchedule(maskCount: model.maskCount, resampleEvery: resampleEvery, masksPerStep: masksPerStep)
    }

    /// The shards per step when none are asked for: `M` in one process; through `workers` workers,
    /// the smallest multiple of `M` that gives every worker a shard.
    public static func defaultShards(workers: Int, masksPerStep: Int) -> Int {
        let m = max(1, masksPerStep)
        let w = max(1, workers)
        return (w + m - 1) / m * m
    }
}

/// Which mask seed each shard of each step trains with.
///
/// Shard `s` of step `t` (0-based, `t` counted over the whole run) uses mask seed
/// `((t / r) * M + s mod M) mod K`, with `r` = `resampleEvery`, `M` = `masksPerStep`, `K` = `maskCount`.
/// With `M = 1` every shard of a step uses seed `(t / r) mod K`: the reference's cycle through
/// seeds `0..<num_masks`, changing every `resample_every` steps. With `M > 1` the step trains `M`
/// consecutive seeds of the same cycle at once (shards `s` and `s + M` share one), and the window
/// moves on by `M` seeds every `r` steps. Evaluation has a schedule of its own
/// (``Evaluator/ensembleSeeds(_:)``), so evaluating never moves this one.
public struct MaskSchedule: Sendable, Equatable {
    public let maskCount: Int
    public let resampleEvery: Int
    public let masksPerStep: Int

    public init(maskCount: Int, resampleEvery: Int, masksPerStep: Int = 1) {
        precondition(maskCount >= 1 && resampleEvery >= 1 && masksPerStep >= 1)
        self.maskCount = maskCount
        self.resampleEvery = resampleEvery
        self.masksPerStep = masksPerStep
    }

    /// The mask seed of shard `shard` of step `step`.
    public func maskSeed(step: Int, shard: Int) -> UInt64 {
        let window = (step / resampleEvery) % maskCount
        return UInt64((window * (masksPerStep % maskCount) + shard % masksPerStep) % maskCount)
    }

    /// The mask seeds of every shard of step `step`, by shard index.
    public func maskSeeds(step: Int, shards: Int) -> [UInt64] {
        (0..<shards).map { maskSeed(step: step, shard: $0) }
    }
}

/// Which examples each step and shard trains on.
///
/// Epoch `e` visits the training rows in the order of a permutation drawn from
/// `RandomStream(seed:, domain: .dataOrder, index: e)` (or in file order without shuffling), in
/// `floor(N / B)` consecutive minibatches; the remainder is skipped that epoch. Shard `s` of `S`
/// takes a contiguous piece of the minibatch: the first `B mod S` shards get one extra row.
public struct DataOrder: Sendable {
    public let exampleCount: Int
    public let batchSize: Int
    public let shards: Int
    public let seed: UInt64
    public let shuffle: Bool

    public init(exampleCount: Int, batchSize: Int, shards: Int, seed: UInt64, shuffle: Bool) {
        self.exampleCount = exampleCount
        self.batchSize = batchSize
        self.shards = shards
        self.seed = seed
        self.shuffle = shuffle
    }

    public var stepsPerEpoch: Int { exampleCount / batchSize }

    /// The row order of epoch `epoch`.
    public func permutation(epoch: Int) -> [Int32] {
        var order = (0..<exampleCount).map { Int32($0) }
        if shuffle {
            var rng = RandomStream(seed: seed, domain: .dataOrder, index: UInt64(epoch))
            rng.shuffle(&order)
        }
        return order
    }

    /// The positions within a minibatch of shard `shard`.
    public func shardRange(_ shard: Int) -> Range<Int> {
        let base = batchSize / shards
        let extra = batchSize % shards
        let start = shard * base + min(shard, extra)
        return start..<(start + base + (shard < extra ? 1 : 0))
    }

    /// The rows of shard `shard` of step `stepInEpoch`, given the epoch's permutation.
    public func rows(_ permutation: [Int32], stepInEpoch: Int, shard: Int) -> ArraySlice<Int32> {
        let r = shardRange(shard)
        let base = stepInEpoch * batchSize
        return permutation[(base + r.lowerBound)..<(base + r.upperBound)]
    }
}
