import MADE

/// A split of a data set, as evaluation jobs name it on the wire (0 train, 1 valid, 2 test).
public enum DataSplit: UInt8, Sendable, CaseIterable {
    case train = 0
    case valid = 1
    case test = 2

    /// The split's rows in `dataset`, if it has them.
    public func rows(of dataset: Dataset) -> DataMatrix? {
        switch self {
        case .train: dataset.train
        case .valid: dataset.valid
        case .test: dataset.test
        }
    }
}

extension EnsembleMode {
    /// The byte a scoring task carries: 0 per-mask log-likelihoods (combined by the
    /// coordinator), 1 logit-averaged log-likelihoods.
    public var wireCode: UInt8 { self == .likelihood ? 0 : 1 }

    public init?(wireCode: UInt8) {
        switch wireCode {
        case 0: self = .likelihood
        case 1: self = .logits
        default: return nil
        }
    }
}

extension Sampler.Method {
    /// The byte a sampling task carries: the method's index among all methods.
    public var wireCode: UInt8 { UInt8(Self.allCases.firstIndex(of: self)!) }

    public init?(wireCode: UInt8) {
        guard let method = Self.allCases.dropFirst(Int(wireCode)).first else { return nil }
        self = method
    }
}

extension DataSplit {
    /// `train`, `valid` or `test`.
    public var name: String {
        switch self {
        case .train: "train"
        case .valid: "valid"
        case .test: "test"
        }
    }
}
