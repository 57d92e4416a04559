import ArgumentParser
import Foundation
import Logging
import MADE
import MADECluster

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            """
            Train MADE, in this process or with --workers N local worker processes, then report validation and test \
            NLL and the parameter checksum.
            """,
        usage: "made train -d <path> [<options>]"
    )

    @OptionGroup var data: DataArguments<TrainingData>
    @OptionGroup var training: TrainingArguments
    @OptionGroup var cluster: ClusterArguments
    @OptionGroup var runtime: RuntimeArguments

    func validate() throws {
        _ = try data.path()
    }

    func run() throws {
        try TrainingJob(data: data, training: training, cluster: cluster, runtime: runtime, role: .local).run()
    }
}

/// The model and optimization flags of a training run.
struct TrainingArguments: ParsableArguments {
    @Option(
        name: [.customShort("q"), .long],
        help: "Hidden layer sizes, comma-separated (\"500\", \"500,500\"; \"\" for none). (default: 500)"
    )
    var hiddens: String?
    @Option(
        name: [.customShort("n"), .long],
        parsing: .unconditional,
        help: "Number of masks (orders and connectivities) to cycle through in training. (default: 1)"
    )
    var numMasks: Int?
    @Option(
        name: [.customShort("r"), .long],
        parsing: .unconditional,
        help: "Steps between mask changes. (default: 20)"
    )
    var resampleEvery: Int?
    @Option(
        name: [.customShort("s"), .long],
        parsing: .unconditional,
        help: "Masks in the evaluation ensemble. (default: 1)"
    )
    var samples: Int?
    @Flag(help: "Keep the inputs in their natural order (otherwise each mask draws an order).")
    var naturalOrdering = false
    @Flag(help: "Add direct input-to-output connections, masked strictly.")
    var direct = false
    @Option(help: "Output distribution: bernoulli for 0/1 data, gaussian for real values. (default: bernoulli)")
    var distribution: OutputDistribution?
    @Option(parsing: .unconditional, help: "Epochs to train. (default: 100)")
    var epochs: Int?
    @Option(parsing: .unconditional, help: "Examples per step. (default: 100)")
    var batchSize: Int?
    @Option(parsing: .unconditional, help: "Adam learning rate. (default: 0.001)")
    var lr: Double?
    @Option(parsing: .unconditional, help: "L2 weight decay added to the gradient. (default: 0.0001)")
    var weightDecay: Double?
    @Option(parsing: .unconditional, help: "Epochs between learning-rate decays (0: never). (default: 45)")
    var lrStepEpochs: Int?
    @Option(parsing: .unconditional, help: "Learning-rate decay factor. (default: 0.1)")
    var lrGamma: Double?
    @Option(help: "Run seed: masks, initialization and data order. (default: 0)")
    var seed: UInt64?
    @Option(
        parsing: .unconditional,
        help:
            """
            Stop after this many epochs without a better validation NLL, and keep the best parameters (0: off). \
            (default: 0)
            """
    )
    var patience: Int?
    @Option(
        help:
            """
            How the evaluation ensemble combines masks: likelihood (log-mean-exp, normalized) or logits (the \
            reference's logit averaging; not a normalized likelihood). (default: likelihood)
            """
    )
    var ensemble: EnsembleMode?
    @Option(
        parsing: .unconditional,
        help:
            """
            Shards per minibatch; their gradients are summed in a fixed tree order, so the result is the same for any \
            number of workers. (default: the number of workers, 1 in one process)
            """
    )
    var shards: Int?
    @Option(
        help:
            """
            Arithmetic: sparse (only the blocks the masks keep; binary inputs as sums of selected rows) or dense \
            (whole products). They agree within float rounding, not bit for bit. (default: sparse)
            """
    )
    var kernel: ComputeKernel?
    @Option(
        help:
            """
            Masks trained in every step: shard s trains the step's mask number s mod M, so M masks of the ensemble \
            train at once. At most --num-masks, and a divisor of --shards. (default: 1, the reference's one mask at a \
            time)
            """
    )
    var masksPerStep: Int?
    @Flag(help: "Visit training examples in file order every epoch, as the reference does.")
    var noShuffle = false

    @Option(help: "Checkpoint file, written atomically at every epoch end and on interruption.")
    var checkpoint: String?
    @Option(parsing: .unconditional, help: "Also checkpoint every N steps (0: only at epoch ends).")
    var checkpointEvery: Int = 0
    @Flag(help: "Carry on from --checkpoint when it exists.")
    var resume = false
    @Flag(help: "Start a new run even when --checkpoint already holds one, and replace it.")
    var overwrite = false
    @Option(
        help:
            """
            Write training metrics to this file as JSON Lines: one object per step (loss, lr, examples/s, per-worker \
            times) and per epoch (validation NLL).
            """
    )
    var metrics: String?
    @Option(parsing: .unconditional, help: "Stop (and checkpoint) once this many steps have run in total.")
    var stopAfterSteps: Int?

    func validate() throws {
        if resume && checkpoint == nil { throw ValidationError("--resume needs --checkpoint PATH") }
        if overwrite && checkpoint == nil { throw ValidationError("--overwrite needs --checkpoint PATH") }
        if overwrite && resume {
            throw ValidationError(
                """
                --overwrite and --resume exclude each other: --resume carries on from the checkpoint, --overwrite \
                replaces it
                """
            )
        }
        if let hiddens { _ = try parseHiddens(hiddens) }
        if checkpointEvery < 0 { throw ValidationError("--checkpoint-every must not be negative") }
        try checkRange("--num-masks", numMasks, 1...Int(UInt32.max))
        try checkRange("--resample-every", resampleEvery, 1...Int(Int32.max))
        try checkRange("--samples", samples, 1...Evaluator<Float>.maxMasks)
        try checkRange("--epochs", epochs, 0...TrainingConfiguration.maxEpochs)
        if let batchSize, !(1...WireFormat.Limits().maxRows).contains(batchSize) {
            throw ValidationError(
                "the batch size (--batch-size) must be between 1 and \(WireFormat.Limits().maxRows), not \(batchSize)"
            )
        }
        try checkRange("--lr-step-epochs", lrStepEpochs, 0...TrainingConfiguration.maxEpochs)
        try checkRange("--patience", patience, 0...TrainingConfiguration.maxEpochs)
        try checkRange("--shards", shards, 1...WireFormat.Limits().maxRows)
        try checkRange("--stop-after-steps", stopAfterSteps, 0...Checkpoint.maxStep)
        if let lr, !(lr > 0 && lr.isFinite) {
            throw ValidationError("--lr must be a positive finite number, not \(lr)")
        }
        if let weightDecay, !(weightDecay >= 0 && weightDecay.isFinite) {
            throw ValidationError("--weight-decay must be a finite number, 0 or more, not \(weightDecay)")
        }
        if let lrGamma, !(lrGamma > 0 && lrGamma <= 1) {
            throw ValidationError(
                "--lr-gamma (the factor applied every --lr-step-epochs) must be in (0, 1], not \(lrGamma)"
            )
        }
        if let m = masksPerStep {
            if m < 1 { throw ValidationError("--masks-per-step must be at least 1, not \(m)") }
            if let k = numMasks, m > k {
                throw ValidationError("--masks-per-step \(m) is more than the \(k) masks trained (-n/--num-masks)")
            }
            if let s = shards, s % m != 0 {
                throw ValidationError(
                    "--masks-per-step \(m) must divide --shards \(s): each mask trains on whole shards"
                )
            }
        }
    }

    /// The configuration the flags describe, defaults filled in; without `--shards`, the smallest
    /// multiple of `--masks-per-step` that gives each of `workers` workers a shard.
    func configuration(inputCount: Int, workers: Int = 1) throws -> TrainingConfiguration {
        let m = masksPerStep ?? 1
        let model = ModelConfiguration(
            inputCount: inputCount,
            hiddenSizes: try parseHiddens(hiddens ?? "500"),
            outputMultiplier: (distribution ?? .bernoulli).parametersPerDimension,
            naturalOrdering: naturalOrdering,
            directConnections: direct,
            maskCount: numMasks ?? 1
        )
        return TrainingConfiguration(
            model: model,
            distribution: distribution ?? .bernoulli,
            seed: seed ?? 0,
            batchSize: batchSize ?? 100,
            epochs: epochs ?? 100,
            resampleEvery: resampleEvery ?? 20,
            shards: shards ?? TrainingConfiguration.defaultShards(workers: workers, masksPerStep: m),
            masksPerStep: m,
            adam: AdamConfiguration(learningRate: lr ?? 1e-3, weightDecay: weightDecay ?? 1e-4),
            schedule: StepSchedule(baseLearningRate: lr ?? 1e-3, stepEpochs: lrStepEpochs ?? 45, gamma: lrGamma ?? 0.1),
            patience: patience ?? 0,
            evaluationMasks: samples ?? 1,
            ensembleMode: ensemble ?? .likelihood,
            shuffle: !noShuffle,
            kernel: kernel ?? .sparse
        )
    }

    /// Flags given explicitly that disagree with a saved configuration.
    func conflicts(with saved: TrainingConfiguration) -> [String] {
        var out: [String] = []
        func check<V: Equatable>(_ name: String, _ given: V?, _ saved: V) {
            if let given, given != saved { out.append("\(name) \(given) (checkpoint: \(saved))") }
        }
        check("--hiddens", try? hiddens.map(parseHiddens), saved.model.hiddenSizes)
        check("--num-masks", numMasks, saved.model.maskCount)
        check("--resample-every", resampleEvery, saved.resampleEvery)
        check("--samples", samples, saved.evaluationMasks)
        check("--distribution", distribution, saved.distribution)
        check("--batch-size", batchSize, saved.batchSize)
        check("--lr", lr, saved.adam.learningRate)
        check("--weight-decay", weightDecay, saved.adam.weightDecay)
        check("--lr-step-epochs", lrStepEpochs, saved.schedule.stepEpochs)
        check("--lr-gamma", lrGamma, saved.schedule.gamma)
        check("--seed", seed, saved.seed)
        check("--patience", patience, saved.patience)
        check("--ensemble", ensemble, saved.ensembleMode)
        check("--shards", shards, saved.shards)
        check("--kernel", kernel, saved.kernel)
        check("--masks-per-step", masksPerStep, saved.masksPerStep)
        if naturalOrdering && !saved.model.naturalOrdering {
            out.append("--natural-ordering (checkpoint: random order)")
        }
        if direct && !saved.model.directConnections { out.append("--direct (checkpoint: no direct connections)") }
        if noShuffle && saved.shuffle { out.append("--no-shuffle (checkpoint: shuffled)") }
        return out
    }

}
