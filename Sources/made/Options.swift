import ArgumentParser
import Foundation
import MADE

extension OutputDistribution: ExpressibleByArgument {}
extension EnsembleMode: ExpressibleByArgument {}
extension ComputeKernel: ExpressibleByArgument {}

/// How grey-level data becomes 0/1.
enum BinarizeRule: String, ExpressibleByArgument, CaseIterable {
    case stochastic, threshold, none
}

/// What `-d/--data-path` means to a command, for its help text.
protocol DataPathRole {
    static var help: ArgumentHelp { get }
}

/// Training: the data is required.
enum TrainingData: DataPathRole {
    static let help = ArgumentHelp(
        """
        Training data (required): binarized_mnist.npz, a *_train.amat, a train-images-idx3-ubyte[.gz], or a folder \
        holding one.
        """,
        valueName: "path"
    )
}

/// A worker holds the run's data.
enum WorkerData: DataPathRole {
    static let help = ArgumentHelp(
        "The run's data (required unless --no-data), as the coordinator was given it.",
        valueName: "path"
    )
}

/// Evaluation: the data to score, by default the data the checkpoint was trained on.
enum ScoredData: DataPathRole {
    static let help = ArgumentHelp(
        """
        Data to score: binarized_mnist.npz, a *_train.amat, an IDX file, a single-split .npy or .amat, or a folder. \
        (default: the data the checkpoint was trained on)
        """,
        valueName: "path"
    )
}

/// A benchmark: real data instead of random bits.
enum BenchmarkData: DataPathRole {
    static let help = ArgumentHelp(
        """
        Train on this data's training split (0/1 after --binarize) instead of random bits: binarized_mnist.npz, a \
        *_train.amat, a train-images-idx3-ubyte[.gz], or a folder holding one.
        """,
        valueName: "path"
    )
}

/// Where the data comes from and how it is read.
struct DataArguments<Role: DataPathRole>: ParsableArguments {
    @Option(name: [.customShort("d"), .customLong("data-path")], help: Role.help)
    var dataPath: String?

    /// The data path; an error when it was not given.
    func path() throws -> String {
        guard let dataPath else { throw ValidationError("give the data with -d/--data-path") }
        return dataPath
    }

    // Optional, so that `made eval` can tell a flag given from one to take from the checkpoint.
    @Option(
        name: .customLong("binarize"),
        help: ArgumentHelp(
            "How IDX grey levels become 0/1: stochastic, threshold or none. (default: stochastic)",
            valueName: "rule"
        )
    )
    var binarizeGiven: BinarizeRule?
    @Option(
        name: .customLong("binarize-seed"),
        help: ArgumentHelp("Seed of the stochastic binarization. (default: 0)", valueName: "seed")
    )
    var binarizeSeedGiven: UInt64?
    @Option(
        name: .customLong("threshold"),
        help: ArgumentHelp(
            "Grey level above which a pixel is 1, for --binarize threshold. (default: 127)",
            valueName: "level"
        )
    )
    var thresholdGiven: UInt8?

    var binarize: BinarizeRule { binarizeGiven ?? .stochastic }
    var binarizeSeed: UInt64 { binarizeSeedGiven ?? 0 }
    var threshold: UInt8 { thresholdGiven ?? Binarization.defaultThreshold }

    @Option(
        name: .customLong("valid-fraction"),
        parsing: .unconditional,
        help: ArgumentHelp(
            """
            Fraction of the training file carved out for validation when the data has no validation split. (default: \
            1/6)
            """,
            valueName: "fraction"
        )
    )
    var validFractionGiven: Double?

    /// The validation fraction, 1/6 unless given.
    var validFraction: Double { validFractionGiven ?? 1.0 / 6.0 }

    var options: DataOptions {
        let rule: Binarization
        switch binarize {
        case .stochastic: rule = .stochastic(seed: binarizeSeed)
        case .threshold: rule = .threshold(threshold)
        case .none: rule = .none
        }
        return DataOptions(binarization: rule, validationFraction: validFraction)
    }

    /// Takes the reading rules of a recorded data source, for those flags not given.
    mutating func adopt(_ options: DataOptions) {
        if binarizeGiven == nil, binarizeSeedGiven == nil, thresholdGiven == nil {
            switch options.binarization {
            case .stochastic(let seed):
                binarizeGiven = .stochastic
                binarizeSeedGiven = seed
            case .threshold(let t):
                binarizeGiven = .threshold
                thresholdGiven = t
            case .none: binarizeGiven = BinarizeRule.none
            }
        }
        if validFractionGiven == nil { validFractionGiven = options.validationFraction }
    }

    /// These flags as a worker process must receive them, to load the very same data.
    var forwarded: [String] {
        (dataPath.map { ["--data-path", $0] } ?? []) + [
            "--binarize", binarize.rawValue, "--binarize-seed", "\(binarizeSeed)",
            "--threshold", "\(threshold)", "--valid-fraction", "\(validFraction)",
        ]
    }

    func validate() throws {
        guard validFraction > 0, validFraction < 1 else {
            throw ValidationError("--valid-fraction must be between 0 and 1, not \(validFraction)")
        }
    }
}

/// Parses `-q/--hiddens`: comma-separated sizes as the reference takes them; "" or "none" for no hidden layer.
func parseHiddens(_ text: String) throws -> [Int] {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    if trimmed.isEmpty || trimmed.lowercased() == "none" { return [] }
    return try trimmed.split(separator: ",").map { part in
        guard let n = Int(part.trimmingCharacters(in: .whitespaces)), n > 0 else {
            throw ValidationError(
                "--hiddens takes comma-separated positive sizes such as 500 or 500,500; '\(part)' is not one"
            )
        }
        return n
    }
}

/// Runtime settings that do not change results.
struct RuntimeArguments: ParsableArguments {
    @Option(parsing: .unconditional, help: "BLAS threads for this process (1: one process per core).")
    var threads: Int = 1
    @Flag(
        name: [.customShort("v"), .long],
        help: "Log the cluster's comings and goings (workers connecting, joining, done)."
    )
    var verbose = false
    /// Most BLAS threads a process may ask for.
    static let maxThreads = 256

    func validate() throws {
        try checkRange("--threads", threads, 1...RuntimeArguments.maxThreads)
    }
}

/// Throws a `ValidationError` unless `value` (when given) lies in `range`.
func checkRange(_ flag: String, _ value: Int?, _ range: ClosedRange<Int>) throws {
    if let value, !range.contains(value) {
        throw ValidationError("\(flag) must be between \(range.lowerBound) and \(range.upperBound), not \(value)")
    }
}
