import ArgumentParser
import Foundation
import MADE

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score data under a checkpoint: mean NLL in nats per example, optionally one log-likelihood per example.")

    @Option(help: "Checkpoint to evaluate.")
    var checkpoint: String
    @OptionGroup var data: DataArguments
    @OptionGroup var runtime: RuntimeArguments
    @Option(help: "Split of an .npz or a train file with siblings: train, valid or test. A single-split file (one .amat or IDX file) is scored whole.")
    var split: String = "test"
    @Option(name: [.customShort("s"), .long], help: "Masks in the ensemble. [default: the checkpoint's]")
    var samples: Int?
    @Option(help: "likelihood (log-mean-exp of per-mask likelihoods) or logits (the reference's logit averaging; not a normalized likelihood). [default: the checkpoint's]")
    var ensemble: EnsembleMode?
    @Option(help: "Write log p(x) in nats, one per line, in input order, to this file.")
    var perExample: String?

    func validate() throws {
        guard ["train", "valid", "test"].contains(split) else { throw ValidationError("--split must be train, valid or test, not '\(split)'") }
        if let samples, samples < 1 { throw ValidationError("--samples must be at least 1") }
    }

    func run() throws {
        BLAS.setThreads(runtime.threads)
        let saved = try Checkpoint.read(from: checkpoint)
        let matrix = try DatasetLoader.loadSplit(path: data.dataPath, split: split, options: data.options)
        let c = saved.configuration
        guard matrix.dimension == c.model.inputCount else {
            throw ValidationError("\(data.dataPath): data of dimension \(matrix.dimension), but the model was trained on dimension \(c.model.inputCount)")
        }
        if c.distribution == .bernoulli && !matrix.isBinary {
            throw ValidationError("\(data.dataPath): Bernoulli model, but the data is not 0/1 (choose --binarize)")
        }
        let k = samples ?? c.evaluationMasks
        let mode = ensemble ?? c.ensembleMode
        let ll = Evaluator<Float>(configuration: c.model, distribution: c.distribution, runSeed: c.seed)
            .logLikelihoods(parameters: saved.modelParameters, data: matrix, masks: k, mode: mode)
        if let perExample {
            var text = ""
            text.reserveCapacity(ll.count * 12)
            for v in ll { text += String(format: "%.6f\n", v) }
            try AtomicFile.write(Array(text.utf8), to: perExample)
        }
        let nll = -ll.reduce(0, +) / Double(max(1, ll.count))
        let label = mode == .logits ? " (logit averaging: not a normalized likelihood)" : ""
        print(String(format: "nll=%.4f", nll) + " examples=\(ll.count) masks=\(k) ensemble=\(mode.rawValue)\(label)")
    }
}

struct Checksum: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the SHA-256 of a checkpoint's model parameters, as training prints it.")

    @Argument(help: "Checkpoint file.")
    var path: String

    func run() throws {
        print("params_sha256=\(try Checkpoint.read(from: path).parametersSHA256)")
    }
}
