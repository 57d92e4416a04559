import Foundation
import ArgumentParser
import MADE

extension OutputDistribution: ExpressibleByArgument {}
extension EnsembleMode: ExpressibleByArgument {}

/// How grey-level data becomes 0/1.
enum BinarizeRule: String, ExpressibleByArgument, CaseIterable {
    case stochastic, threshold, none
}

/// Where the data comes from and how it is read.
struct DataArguments: ParsableArguments {
    @Option(name: [.customShort("d"), .customLong("data-path")],
            help: "Data: binarized_mnist.npz, a *_train.amat, a train-images-idx3-ubyte[.gz], or a folder holding one.")
    var dataPath: String?

    /// The data path; an error when it was not given.
    func path() throws -> String {
        guard let dataPath else { throw ValidationError("give the data with -d/--data-path") }
        return dataPath
    }

    @Option(help: ArgumentHelp("How IDX grey levels become 0/1.", valueName: "rule"))
    var binarize: BinarizeRule = .stochastic

    @Option(help: "Seed of the stochastic binarization.")
    var binarizeSeed: UInt64 = 0

    @Option(help: "Grey level above which a pixel is 1, for --binarize threshold.")
    var threshold: UInt8 = Binarization.defaultThreshold

    @Option(help: "Fraction of the training file carved out for validation when the data has no validation split.")
    var validFraction: Double = 1.0 / 6.0

    var options: DataOptions {
        let rule: Binarization
        switch binarize {
        case .stochastic: rule = .stochastic(seed: binarizeSeed)
        case .threshold: rule = .threshold(threshold)
        case .none: rule = .none
        }
        return DataOptions(binarization: rule, validationFraction: validFraction)
    }

    /// These flags as a worker process must receive them, to load the very same data.
    var forwarded: [String] {
        (dataPath.map { ["--data-path", $0] } ?? []) + ["--binarize", binarize.rawValue, "--binarize-seed", "\(binarizeSeed)",
         "--threshold", "\(threshold)", "--valid-fraction", "\(validFraction)"]
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
            throw ValidationError("--hiddens takes comma-separated positive sizes such as 500 or 500,500; '\(part)' is not one")
        }
        return n
    }
}

/// Runtime settings that do not change results.
struct RuntimeArguments: ParsableArguments {
    @Option(help: "BLAS threads for this process (1: one process per core).")
    var threads: Int = 1

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }
}
