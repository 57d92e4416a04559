/// The output distribution of every dimension, given its parameters from the network.
public enum OutputDistribution: String, Sendable, Codable, CaseIterable {
    /// One logit per dimension: `p(x_d = 1) = sigmoid(logit)`. Needs `nout == nin`.
    case bernoulli
    /// A mean and a log standard deviation per dimension, in chunks `[means | log-stds]`. Needs `nout == 2 * nin`.
    case gaussian

    /// Network outputs per input dimension.
    public var parametersPerDimension: Int {
        switch self {
        case .bernoulli: return 1
        case .gaussian: return 2
        }
    }
}

/// The shape of a MADE network and how its masks are drawn.
///
/// The output has `nout = outputMultiplier * nin` units laid out in chunks: output `j * nin + d`
/// is parameter `j` of dimension `d`, as in the reference implementation.
public struct ModelConfiguration: Sendable, Equatable, Codable {
    /// Number of input dimensions `D`.
    public var inputCount: Int
    /// Sizes of the hidden layers, input side first; may be empty.
    public var hiddenSizes: [Int]
    /// `k` in `nout = k * nin`.
    public var outputMultiplier: Int
    /// Whether the inputs keep their natural order `0, 1, ..., D-1` (otherwise each mask seed draws one).
    public var naturalOrdering: Bool
    /// Whether inputs also connect straight to outputs, masked strictly.
    public var directConnections: Bool
    /// Number of distinct mask seeds `0..<maskCount` that training cycles through.
    public var maskCount: Int

    public init(
        inputCount: Int,
        hiddenSizes: [Int],
        outputMultiplier: Int = 1,
        naturalOrdering: Bool = true,
        directConnections: Bool = false,
        maskCount: Int = 1
    ) {
        self.inputCount = inputCount
        self.hiddenSizes = hiddenSizes
        self.outputMultiplier = outputMultiplier
        self.naturalOrdering = naturalOrdering
        self.directConnections = directConnections
        self.maskCount = maskCount
    }

    /// Most hidden layers a model may have.
    public static let maxHiddenLayers = 1000

    /// Number of output units.
    public var outputCount: Int { inputCount * outputMultiplier }

    /// The widths of every layer, inputs first and outputs last.
    public var layerWidths: [Int] { [inputCount] + hiddenSizes + [outputCount] }

    /// Throws when the configuration describes no valid network.
    public func validate() throws {
        guard inputCount >= 1 else {
            throw MADEError(.invalidConfiguration, "the input dimension must be at least 1, not \(inputCount)")
        }
        guard outputMultiplier >= 1 else {
            throw MADEError(
                .invalidConfiguration,
                "nout must be a positive multiple of nin (multiplier \(outputMultiplier))"
            )
        }
        guard hiddenSizes.count <= Self.maxHiddenLayers else {
            throw MADEError(
                .invalidConfiguration,
                "at most \(Self.maxHiddenLayers) hidden layers, not \(hiddenSizes.count)"
            )
        }
        if let bad = hiddenSizes.first(where: { $0 < 1 }) {
            throw MADEError(.invalidConfiguration, "hidden layer sizes must be positive, got \(bad)")
        }
        guard maskCount >= 1, maskCount <= Int(UInt32.max) else {
            throw MADEError(
                .invalidConfiguration,
                "the number of masks must be between 1 and \(UInt32.max), not \(maskCount)"
            )
        }
        let widths = layerWidths
        var total = 0
        for l in 0..<(widths.count - 1) {
            let (w, o1) = widths[l].multipliedReportingOverflow(by: widths[l + 1])
            guard !o1, w < Int(Int32.max) else {
                throw MADEError(.invalidConfiguration, "layer \(l) is too large (\(widths[l]) x \(widths[l + 1]))")
            }
            total += w + widths[l + 1]
        }
        if directConnections { total += inputCount * outputCount }
        guard total < Int(Int32.max) else {
            throw MADEError(.invalidConfiguration, "the network has too many parameters (\(total))")
        }
    }
}
