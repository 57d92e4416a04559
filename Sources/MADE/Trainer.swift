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

/// One step's work: which rows each shard holds, and which mask seed it trains.
public struct StepPlan: Sendable {
    /// Index of the step over the whole run.
    public let step: Int
    public let epoch: Int
    /// The mask seed of each shard, by shard index (see ``MaskSchedule``).
    public let maskSeeds: [UInt64]
    /// Rows of each shard, by shard index.
    public let shards: [ArraySlice<Int32>]

    public init(step: Int, epoch: Int, maskSeeds: [UInt64], shards: [ArraySlice<Int32>]) {
        precondition(maskSeeds.count == shards.count, "StepPlan: one mask seed per shard")
        self.step = step
        self.epoch = epoch
        self.maskSeeds = maskSeeds
        self.shards = shards
    }

    /// The step's mask seed when every shard trains the same one (one mask per step), else nil.
    public var maskSeed: UInt64? {
        guard let first = maskSeeds.first, maskSeeds.allSatisfy({ $0 == first }) else { return nil }
        return first
    }
}

/// Trains MADE in one process: the reference trainer's loop, made reproducible.
///
/// Each step takes the next minibatch of the epoch's order (``DataOrder``) and each shard's mask
/// seed (``MaskSchedule``), computes the gradient of each of the `S` shards separately with a
/// ``GradientEngine``, sums them with ``GradientReducer`` (a fixed tree over shard indices),
/// and applies Adam with the gradient scaled by `1/B`. A cluster that computes the same shards
/// anywhere and reduces them in the same tree gets the same bits.
///
/// With `M` masks per step the step's objective is the mean NLL over its `B` rows, each row under
/// its shard's mask: `L = (1/B) sum_m sum_{i in rows(m)} -log p_m(x_i)`. So mask `m`'s gradient
/// counts by its share of the rows, `n_m / B` times its own mean gradient, and when `B` does not
/// split evenly the masks whose shards hold an extra row weigh that much more. The reported
/// loss is the same mean.
///
/// At the end of each epoch the validation split is scored with the evaluation ensemble, the
/// best parameters are kept for early stopping, and a checkpoint is written.
public final class Trainer {
    public let configuration: TrainingConfiguration
    public let dataset: Dataset
    /// Where the run is. With the sparse kernel, ``run(until:)`` keeps the parameters and Adam's
    /// moments in the compute order of the masks between mask changes (see
    /// ``GradientEngine/hold(_:maskSeed:)``); reading `state` turns them back into layout order
    /// first (and the next step takes them into compute order again).
    public var state: TrainingState {
        syncHeld()
        return current
    }
    /// The steps taken so far (``TrainingState/step``), without bringing back held parameters.
    public var step: Int { current.step }
    /// The state; its parameters and moments are in the compute order of the engine's held mask
    /// seed while it holds them (``GradientEngine/heldMaskSeed``), else in layout order.
    private var current: TrainingState
    public let dataFingerprint: String
    /// Where checkpoints go; nil writes none.
    public var checkpointPath: String?
    /// Steps between checkpoints within an epoch; 0 writes them only at epoch ends.
    public var checkpointEvery: Int = 0
    /// Threads for the optimizer's pass over the parameters (a coordinator whose workers wait
    /// meanwhile uses every core); the results do not depend on it.
    public var optimizerThreads: Int = 1
    public var onEvent: (TrainingEvent) -> Void = { _ in }
    /// Called now and then during long work between steps (validation), so a coordinator can
    /// answer its workers' heartbeats meanwhile.
    public var keepAlive: () -> Void = {}
    /// Scores the validation split elsewhere (a cluster's workers) and returns its mean NLL;
    /// nil scores it here. It must give what ``evaluate(_:parameters:)`` gives, bit for bit.
    public var validationScorer: (([Float]) throws -> Double)?
    /// Recorded in every checkpoint: where the data came from, and the run's identity.
    public var dataSource: DataSource?
    public var runID: String?
    public var logger: Logger

    private let train: DataMatrix
    private let order: DataOrder
    private let engine: GradientEngine
    private var shardGradients: [[Float]]
    private var shardLosses: [Double]
    /// Whether the gradient ``localGradient(_:)`` returned last is in the compute order of held parameters.
    private var gradientIsHeld = false
    /// Where the held Adam step of the step being driven copies the parameters (see ``HeldOffer``).
    private var heldCopy: UnsafeMutableBufferPointer<Float>?
    private var permutationEpoch = -1
    private var permutation: [Int32] = []

    /// Prepares a run on `dataset`, from `state` or from scratch.
    ///
    /// - Throws: when the configuration is invalid, the data does not fit it, or the state does not fit the model.
    public init(
        configuration: TrainingConfiguration,
        dataset: Dataset,
        state: TrainingState? = nil,
        logger: Logger = Logger(label: "made.trainer")
    ) throws {
        try configuration.validate()
        try MemoryBudget.require(
            configuration.trainingBytes,
            for:
                """
                training a model of \(ParameterLayout(configuration.model).count) parameters with batch \
                \(configuration.batchSize)
                """
        )
        guard let train = dataset.train else {
            throw MADEError(.invalidData, "the data has no training split", path: dataset.source)
        }
        guard train.dimension == configuration.model.inputCount else {
            throw MADEError(
                .invalidData,
                "the data has dimension \(train.dimension) but the model expects \(configuration.model.inputCount)",
                path: dataset.source
            )
        }
        if configuration.distribution == .bernoulli {
            for (name, split) in [("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test)] {
                if let split, !split.isBinary {
                    throw MADEError(
                        .invalidData,
                        """
                        Bernoulli outputs need 0/1 data, but the \(name) split holds other values (use --distribution \
                        gaussian or binarize)
                        """,
                        path: dataset.source
                    )
                }
            }
        }
        guard train.count >= configuration.batchSize else {
            throw MADEError(
                .invalidData,
                "\(train.count) training examples are fewer than one batch of \(configuration.batchSize)",
                path: dataset.source
            )
        }
        let layout = ParameterLayout(configuration.model)
        let state = state ?? TrainingState(configuration: configuration)
        guard state.parameters.count == layout.count else {
            throw MADEError(
                .invalidCheckpoint,
                "the saved state holds \(state.parameters.count) parameters, the model \(layout.count)"
            )
        }
        // The saved step must fall within the saved epoch on this data.
        let steps = train.count / configuration.batchSize
        let (low, overflow) = state.completedEpochs.multipliedReportingOverflow(by: steps)
        guard !overflow, state.step >= low, state.step <= low + steps else {
            throw MADEError(
                .invalidCheckpoint,
                """
                the saved step \(state.step) does not fall in epoch \(state.completedEpochs + 1) of \(steps) steps on \
                this data
                """
            )
        }
        self.configuration = configuration
        self.dataset = dataset
        self.current = state
        self.train = train
        self.logger = logger
        self.dataFingerprint = DataFingerprint.of(dataset)
        self.order = DataOrder(
            exampleCount: train.count,
            batchSize: configuration.batchSize,
            shards: configuration.shards,
            seed: configuration.seed,
            shuffle: configuration.shuffle
        )
        let largestShard = order.shardRange(0).count
        self.engine = GradientEngine(
            configuration: configuration.model,
            distribution: configuration.distribution,
            runSeed: configuration.seed,
            capacity: largestShard,
            kernel: configuration.kernel
        )
        self.shardGradients = [[Float]](
            repeating: [Float](repeating: 0, count: layout.count),
            count: configuration.shards
        )
        self.shardLosses = [Double](repeating: 0, count: configuration.shards)
    }

    /// The binary first-layer path's density limit (see ``NetworkWorkspace/sparseInputLimit``),
    /// for measuring its crossover.
    public var sparseInputLimit: Double {
        get { engine.workspace.sparseInputLimit }
        set { engine.workspace.sparseInputLimit = newValue }
    }

    /// Steps per epoch.
    public var stepsPerEpoch: Int { order.stepsPerEpoch }

    /// Whether the run has nothing left to do.
    public var isDone: Bool { current.stoppedEarly || current.completedEpochs >= configuration.epochs }

    /// Runs steps and epochs until the run is done or `shouldStop` returns true (checked between steps),
    /// computing every shard in this process.
    public func run(until shouldStop: () -> Bool = { false }) throws -> TrainingOutcome {
        try drive(until: shouldStop, offeringHeld: { nil }) { plan, _ in
            let (gradient, loss) = self.localGradient(plan)
            return (gradient, loss, self.gradientIsHeld)
        }
    }

    /// Runs the schedule, asking `compute` for the reduced gradient of each step.
    ///
    /// `compute` receives the step's plan and returns the sum over its shards of the gradients
    /// (summed by ``GradientReducer``'s tree) and of the losses. Epoch ends, validation, early
    /// stopping and checkpoints happen here, so a cluster that computes the shards elsewhere
    /// follows exactly the single-process schedule.
    public func drive(
        until shouldStop: () -> Bool,
        compute: (StepPlan) throws -> (gradient: [Float], lossSum: Double)
    ) throws -> TrainingOutcome {
        try drive(until: shouldStop, offeringHeld: { nil }) { plan, _ in
            let (gradient, loss) = try compute(plan)
            return (gradient, loss, false)
        }
    }

    /// The parameters of a step held in the compute order of its one mask (sparse kernel), for
    /// a computation elsewhere: see ``drive(until:offeringHeld:compute:)``.
    public struct HeldParameters {
        public let maskSeed: UInt64
        public let blocks: BlockPartition
        /// Masked, in compute order (``BlockPartition/gatherMasked(_:into:layout:threads:)``'s
        /// form; the entries outside the bands hold anything), valid during the call: in the
        /// trainer, or where ``HeldOffer/copyInto`` asked the last step to copy them.
        public let values: UnsafeBufferPointer<Float>
        /// The same parameters in layout order (a copy), without giving up the hold: masked by
        /// `maskSeed`'s masks in a step of one mask, every weight in a step of several.
        public let layoutParameters: () -> [Float]
        /// In a step of several masks, its masks besides `maskSeed` (in order of first appearance),
        /// each with its masked parameters in its own compute order, where ``HeldOffer/otherCopies``
        /// asked for them (valid during the call). Empty in a step of one mask.
        public let others: [(maskSeed: UInt64, values: UnsafeBufferPointer<Float>)]
    }

    /// What a computation elsewhere asks of held parameters: where each Adam step should copy
    /// the masked parameters for the next step (``HeldParameters/values``), nil for the trainer's
    /// own buffer. The buffer holds the layout's count of values, and nothing else writes it
    /// between steps.
    public struct HeldOffer {
        public var copyInto: UnsafeMutableBufferPointer<Float>?
        /// Places for a step of several masks: the masked parameters of its n-th mask besides
        /// the held one go into `otherCopies[n]`, in that mask's compute order (each of the
        /// layout's count, written by nothing else between steps). A step of more masks than
        /// these places and one is not held.
        public var otherCopies: [UnsafeMutableBufferPointer<Float>]
        public init(
            copyInto: UnsafeMutableBufferPointer<Float>? = nil,
            otherCopies: [UnsafeMutableBufferPointer<Float>] = []
        ) {
            self.copyInto = copyInto
            self.otherCopies = otherCopies
        }
    }

    /// ``drive(until:compute:)`` that, while `offeringHeld()` answers, keeps the parameters and
    /// Adam's moments in the compute order of the step's one mask as ``run(until:)`` does
    /// (sparse kernel, masks that stay) and hands `compute` the step's masked parameters in that
    /// order; `compute` then answers with the gradient in that order (`computeOrder` true, the
    /// compute order of the layout-order gradient) or in layout order. Reading ``state`` in
    /// `compute` gives layout order, at the cost of turning everything back.
    public func drive(
        until shouldStop: () -> Bool,
        offeringHeld: () -> HeldOffer?,
        compute: (StepPlan, HeldParameters?) throws -> (gradient: [Float], lossSum: Double, computeOrder: Bool)
    )
        throws -> TrainingOutcome
    {
        var epochStart = ContinuousClock.now
        var epochSeconds = 0.0
        while !isDone {
            let stepInEpoch = current.step - current.completedEpochs * stepsPerEpoch
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
            let plan = plan(stepInEpoch: stepInEpoch)
            var held: HeldParameters?
            let offer = offeringHeld()
            if let offer {
                var seeds: [UInt64] = []
                for seed in plan.maskSeeds where !seeds.contains(seed) { seeds.append(seed) }
                if configuration.kernel == .sparse, let seed = seeds.first, seeds.count - 1 <= offer.otherCopies.count,
                    masksStay(from: plan.step)
                {
                    if engine.heldMaskSeed != seed { syncHeld() }
                    if engine.heldMaskSeed == nil { engine.hold(&current, maskSeed: seed) }
                    engine.holdOthers(
                        Array(seeds.dropFirst()),
                        in: offer.otherCopies,
                        state: current,
                        threads: optimizerThreads
                    )
                    let blocks = engine.maskSet(seed).blocks
                    let layout = ParameterLayout(configuration.model)
                    let others = engine.heldOthers.map {
                        (maskSeed: $0.maskSeed, values: UnsafeBufferPointer(start: $0.values, count: layout.count))
                    }
                    held = HeldParameters(
                        maskSeed: seed,
                        blocks: blocks,
                        values: engine.heldParameters,
                        layoutParameters: {
                            // Masked by the held mask alone when it is the step's only one; else every
                            // weight, for the other masks to mask.
                            var values = self.current.parameters
                            values.withUnsafeMutableBufferPointer {
                                if others.isEmpty {
                                    blocks.toLayoutMasked($0.baseAddress!, layout: layout)
                                } else {
                                    blocks.permute($0.baseAddress!, layout: layout, toCompute: false)
                                }
                            }
                            return values
                        },
                        others: others
                    )
                } else {
                    syncHeld()
                }
            }
            heldCopy = offer?.copyInto
            gradientIsHeld = false
            let (gradient, loss, computeOrder) = try compute(plan, held)
            precondition(
                !computeOrder || (engine.heldMaskSeed != nil && (held == nil || engine.heldMaskSeed == held!.maskSeed)),
                "drive: a gradient in compute order for a step whose parameters are no longer held"
            )
            gradientIsHeld = computeOrder
            guard loss.isFinite else {
                throw MADEError(
                    .diverged,
                    """
                    training diverged at step \(current.step) (epoch \(plan.epoch + 1)): the loss is not finite; a \
                    smaller --lr may help
                    """
                )
            }
            apply(plan, gradient: gradient, lossSum: loss)
            if checkpointEvery > 0, current.step % checkpointEvery == 0 {
                try saveCheckpoint()
            }
        }
        return current.stoppedEarly ? .stoppedEarly : .finished
    }

    /// The work of the next step: the rows and mask seed of each shard.
    func plan(stepInEpoch: Int) -> StepPlan {
        let epoch = current.completedEpochs
        if permutationEpoch != epoch {
            permutation = order.permutation(epoch: epoch)
            permutationEpoch = epoch
        }
        let shards = (0..<configuration.shards).map { order.rows(permutation, stepInEpoch: stepInEpoch, shard: $0) }
        return StepPlan(
            step: current.step,
            epoch: epoch,
            maskSeeds: configuration.maskSchedule.maskSeeds(step: current.step, shards: configuration.shards),
            shards: shards
        )
    }

    /// Computes every shard here and sums them in tree order.
    ///
    /// With the sparse kernel, while the masks stay for a few steps, the parameters and moments
    /// stay in their compute order (``GradientEngine/hold(_:maskSeed:)``), the gradients too, and
    /// ``apply(_:gradient:lossSum:)`` updates them there: no pass per step changes their order.
    /// A step of several masks is computed mask by mask (each mask's parameters prepared once);
    /// the order of computing does not change the bits, since each shard's gradient is kept apart
    /// until the tree.
    func localGradient(_ plan: StepPlan) -> (gradient: [Float], lossSum: Double) {
        let single = plan.maskSeed
        let holding = single != nil && configuration.kernel == .sparse && masksStay(from: plan.step)
        if engine.heldMaskSeed != nil && (!holding || engine.heldMaskSeed != single) { syncHeld() }
        if holding, let seed = single {
            if engine.heldMaskSeed == nil { engine.hold(&current, maskSeed: seed) } else { engine.beginHeld() }
            engine.holdOthers([], in: [], state: current)  // this gradient is masked by Adam: one mask
            for (s, rows) in plan.shards.enumerated() {
                shardLosses[s] = engine.gradient(
                    data: train,
                    indices: rows,
                    into: &shardGradients[s],
                    computeOrder: true
                )
            }
        } else {
            var seen: [UInt64] = []
            for seed in plan.maskSeeds where !seen.contains(seed) {
                seen.append(seed)
                engine.begin(parameters: current.parameters, maskSeed: seed)
                for (s, rows) in plan.shards.enumerated() where plan.maskSeeds[s] == seed {
                    shardLosses[s] = engine.gradient(data: train, indices: rows, into: &shardGradients[s])
                }
            }
        }
        gradientIsHeld = holding
        GradientReducer.reduce(&shardGradients)
        return (shardGradients[0], GradientReducer.reduce(shardLosses))
    }

    /// Applies Adam with the step's summed gradient (scaled by `1/B`) and moves to the next step.
    func apply(_ plan: StepPlan, gradient: [Float], lossSum: Double) {
        precondition(plan.step == current.step, "apply: plan for step \(plan.step) at step \(current.step)")
        let lr = configuration.schedule.learningRate(epoch: plan.epoch)
        if gradientIsHeld {
            engine.adamStepHeld(
                &current,
                gradient: gradient,
                scale: 1 / Float(configuration.batchSize),
                learningRate: lr,
                configuration: configuration.adam,
                copyInto: heldCopy,
                threads: optimizerThreads
            )
        } else {
            syncHeld()
            current.applyAdam(
                gradient: gradient,
                scale: 1 / Float(configuration.batchSize),
                learningRate: lr,
                configuration: configuration.adam,
                threads: optimizerThreads
            )
        }
        gradientIsHeld = false
        current.epochLossSum += lossSum
        current.epochExamples += configuration.batchSize
        current.step += 1
        onEvent(
            .step(
                step: current.step,
                epoch: plan.epoch,
                loss: lossSum / Double(configuration.batchSize),
                learningRate: lr
            )
        )
    }

    /// Whether the masks of step `step` stay long enough (four steps or more, this one included)
    /// to be worth taking the parameters into their compute order and back. With `M = K` (one
    /// mask, or every mask in every step) the window of seeds moves by `K`: they never change.
    private func masksStay(from step: Int) -> Bool {
        let schedule = configuration.maskSchedule
        return schedule.masksPerStep % schedule.maskCount == 0
            || schedule.resampleEvery - step % schedule.resampleEvery >= 4
    }

    /// Turns the parameters and moments the engine holds back into layout order, ending the hold.
    private func syncHeld() {
        engine.release(&current)
    }

    /// Validates, updates early stopping, records the epoch and checkpoints.
    func finishEpoch(seconds: Double) throws {
        syncHeld()
        let epoch = current.completedEpochs
        var validNLL: Double?
        if let valid = dataset.valid, valid.count > 0 {
            validNLL = try validationScorer?(current.parameters) ?? evaluate(valid, parameters: current.parameters)
            if let v = validNLL, !v.isFinite {
                throw MADEError(
                    .diverged,
                    """
                    training diverged by the end of epoch \(epoch + 1): the validation NLL is not finite; a smaller \
                    --lr may help
                    """
                )
            }
        }
        var improved = false
        if let v = validNLL, current.bestValidNLL.map({ v < $0 }) ?? true {
            improved = true
            current.bestValidNLL = v
            current.bestEpoch = epoch
            if configuration.patience > 0 { current.bestParameters = current.parameters }
            current.epochsWithoutImprovement = 0
        } else if validNLL != nil {
            current.epochsWithoutImprovement += 1
        }
        let record = EpochRecord(
            epoch: epoch,
            trainNLL: current.epochLossSum / Double(max(1, current.epochExamples)),
            validNLL: validNLL,
            learningRate: configuration.schedule.learningRate(epoch: epoch),
            seconds: seconds
        )
        current.history.append(record)
        current.completedEpochs += 1
        current.epochLossSum = 0
        current.epochExamples = 0
        if configuration.patience > 0, current.epochsWithoutImprovement >= configuration.patience {
            current.stoppedEarly = true
        }
        onEvent(.epoch(record, improved: improved))
        try saveCheckpoint()
    }

    /// Mean NLL of `data` under the evaluation ensemble.
    public func evaluate(_ data: DataMatrix, parameters: [Float]? = nil) -> Double {
        var evaluator = Evaluator<Float>(
            configuration: configuration.model,
            distribution: configuration.distribution,
            runSeed: configuration.seed
        )
        evaluator.kernel = configuration.kernel
        evaluator.betweenPasses = keepAlive
        return evaluator.meanNLL(
            parameters: parameters ?? state.parameters,
            data: data,
            masks: configuration.evaluationMasks,
            mode: configuration.ensembleMode
        )
    }

    /// The checkpoint of the current current.
    public var checkpoint: Checkpoint {
        Checkpoint(
            configuration: configuration,
            state: state,
            dataFingerprint: dataFingerprint,
            dataSource: dataSource,
            runID: runID
        )
    }

    /// Writes the current state to ``checkpointPath`` when one is set.
    public func saveCheckpoint() throws {
        guard let path = checkpointPath else { return }
        try checkpoint.write(to: path)
        onEvent(.checkpoint(path: path, step: current.step))
    }
}

extension Duration {
    /// This duration in seconds.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}
