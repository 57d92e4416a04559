import ArgumentParser
import Foundation
import MADE
import MADECluster

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Score data under a checkpoint: mean NLL in nats per example, optionally one log-likelihood per example.",
        usage: "made eval --checkpoint <path> [-d <path>] [<options>]"
    )

    @Option(help: "Checkpoint to evaluate.")
    var checkpoint: String
    @OptionGroup var data: DataArguments<ScoredData>
    @OptionGroup var cluster: ClusterArguments
    @OptionGroup var runtime: RuntimeArguments
    @Option(
        help:
            """
            Split to score: train, valid or test. (default: test for an .npz or a folder; a single-split file (one \
            .amat or IDX file) is scored whole)
            """
    )
    var split: String?
    @Option(
        name: [.customShort("s"), .long],
        parsing: .unconditional,
        help: "Masks in the ensemble. (default: the checkpoint's)"
    )
    var samples: Int?
    @Option(
        help:
            """
            likelihood (log-mean-exp of per-mask likelihoods) or logits (the reference's logit averaging; not a \
            normalized likelihood). (default: the checkpoint's)
            """
    )
    var ensemble: EnsembleMode?
    @Option(help: "Write log p(x) in nats, one per line, in input order, to this file.")
    var perExample: String?
    @Option(
        help:
            """
            Arithmetic: sparse (only the blocks the masks keep) or dense (whole products); they agree within float \
            rounding. (default: the checkpoint's)
            """
    )
    var kernel: ComputeKernel?

    func validate() throws {
        if let split, !["train", "valid", "test"].contains(split) {
            throw ValidationError("--split must be train, valid or test, not '\(split)'")
        }
        try checkRange("--samples", samples, 1...Evaluator<Float>.maxMasks)
    }

    func run() throws {
        BLAS.setThreads(runtime.threads)
        var saved = try Checkpoint.read(from: checkpoint)
        if let kernel { saved.configuration.kernel = kernel }
        // The data the checkpoint was trained on, read the same way, unless told otherwise.
        var data = self.data
        if data.dataPath == nil, let source = saved.dataSource {
            data.dataPath = source.path
            data.adopt(source.options)
        }
        guard data.dataPath != nil else {
            throw ValidationError(
                "give the data with -d/--data-path (\(checkpoint) was written before checkpoints recorded their data)"
            )
        }
        try saved.requireFinite(path: checkpoint)
        let path = try data.path()
        var isDirectory: ObjCBool = false
        let severalSplits =
            path.hasSuffix(".npz")
            || (FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue)
        let effectiveSplit = split ?? (severalSplits ? "test" : nil)
        let c = saved.configuration
        let k = samples ?? c.evaluationMasks
        let mode = ensemble ?? c.ensembleMode
        if let warning = Self.ensembleWarning(masks: k, trained: c.model.maskCount) {
            Console.error("warning: " + warning + "\n")
        }

        let ll: [Double]
        if cluster.isDistributed {
            // Workers load the data as this process does, and score chunks of the split's rows.
            let dataset: Dataset
            let split: DataSplit
            var workerArguments = data.forwarded
            if let effectiveSplit {
                dataset = try DatasetLoader.load(path: path, options: data.options)
                split = DataSplit.allCases.first { $0.name == effectiveSplit }!
            } else {
                dataset = Dataset(
                    train: nil,
                    valid: nil,
                    test: try DatasetLoader.loadSplit(path: path, split: nil, options: data.options),
                    source: path
                )
                split = .test
                workerArguments.append("--single-split")
            }
            guard let matrix = split.rows(of: dataset) else {
                throw CommandFailure("\(path): no \(effectiveSplit ?? "test") split")
            }
            try check(matrix, path: path, configuration: c)
            let session = try cluster.session(
                configuration: saved.configuration,
                dataFingerprint: DataFingerprint.bytes(of: dataset),
                workerArguments: workerArguments,
                runtime: runtime,
                largestResult: min(1000, matrix.count) * (mode == .likelihood ? k : 1),
                logger: CommandLineSupport.bootstrap(label: "made", verbose: runtime.verbose)
            )
            do {
                ll = try session.run { coordinator in
                    try coordinator.logLikelihoods(
                        split: split,
                        rowCount: matrix.count,
                        masks: k,
                        mode: mode,
                        parameters: saved.modelParameters
                    )
                }
            } catch is ClusterCoordinator.Interrupted {
                throw ExitCode(130)
            }
        } else {
            let matrix = try DatasetLoader.loadSplit(path: path, split: effectiveSplit, options: data.options)
            try check(matrix, path: path, configuration: c)
            var evaluator = Evaluator<Float>(configuration: c.model, distribution: c.distribution, runSeed: c.seed)
            evaluator.kernel = c.kernel
            ll = evaluator.logLikelihoods(parameters: saved.modelParameters, data: matrix, masks: k, mode: mode)
        }
        if let perExample {
            var text = ""
            text.reserveCapacity(ll.count * 12)
            for v in ll { text += String(format: "%.6f\n", v) }
            try AtomicFile.write(Array(text.utf8), to: perExample)
        }
        let nll = Evaluator<Float>.meanNLL(ll)
        let label = mode == .logits ? " (logit averaging: not a normalized likelihood)" : ""
        print(String(format: "nll=%.4f", nll) + " examples=\(ll.count) masks=\(k) ensemble=\(mode.rawValue)\(label)")
    }

    /// What to say when the ensemble asks for more masks than were trained: mask seeds are taken
    /// modulo the trained count, so the extra members repeat masks already in it.
    static func ensembleWarning(masks k: Int, trained n: Int) -> String? {
        guard k > n else { return nil }
        return "-s \(k) asks for \(k) masks, but the model was trained with -n \(n): the ensemble repeats "
            + (n == 1
                ? "its one mask \(k) times and scores as that mask alone" : "its \(n) masks (seeds taken modulo \(n))")
    }

    func check(_ matrix: DataMatrix, path: String, configuration c: TrainingConfiguration) throws {
        // Per row, one value per mask (and the chunk's activations, which are small beside them).
        let masks = samples ?? c.evaluationMasks
        try MemoryBudget.require(
            MemoryBudget.product(matrix.count, masks, 8 + 4),
            for: "scoring \(matrix.count) examples under \(masks) masks (-s)",
            path: path
        )
        guard matrix.dimension == c.model.inputCount else {
            throw CommandFailure(
                """
                \(path): data of dimension \(matrix.dimension), but the model was trained on dimension \
                \(c.model.inputCount)
                """
            )
        }
        if c.distribution == .bernoulli && !matrix.isBinary {
            throw CommandFailure("\(path): Bernoulli model, but the data is not 0/1 (choose --binarize)")
        }
    }
}

struct Checksum: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the SHA-256 of a checkpoint's model parameters, as training prints it."
    )

    @Argument(help: "Checkpoint file.")
    var path: String

    func run() throws {
        print("params_sha256=\(try Checkpoint.read(from: path).parametersSHA256)")
    }
}
