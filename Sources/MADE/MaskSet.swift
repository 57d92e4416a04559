/// The input order, hidden-unit degrees and connectivity masks of one mask seed.
///
/// Degrees follow the reference implementation, 0-based:
/// - input `d` has degree `m_0(d)`: `d` under natural ordering, otherwise a uniformly random
///   permutation of `0..<D`;
/// - each unit of hidden layer `l` draws its degree uniformly from `min(m_{l-1}) ... D-2`
///   (the reference's `randint(min, D-1)`), and then one unit of the layer, chosen uniformly,
///   is set to `min(m_{l-1})`. That last rule is ours: it keeps every layer's minimum degree at
///   0, so no output is cut off from every input however small the layers are (the reference
///   can leave outputs connected to nothing);
/// - hidden layer `l` keeps the connection from unit `i` below to unit `j` when
///   `m_{l-1}(i) <= m_l(j)`; the output layer and the direct connections keep it when
///   `m_L(i) < m_0(d)` for output `j * D + d`: strictly, so output `d` sees only inputs earlier
///   in the order.
///
/// All draws come from `RandomStream(seed: runSeed, domain: .masks, index: maskSeed)`, in this
/// order: the permutation (when the order is random), then layer by layer the degrees followed
/// by the index of the unit set to the minimum. A mask set is therefore a pure function of
/// `(configuration, runSeed, maskSeed)`.
public struct MaskSet: Sendable, Equatable {
    public let runSeed: UInt64
    public let maskSeed: UInt64
    /// `degrees[0]` are the input degrees (the order); `degrees[l]` for `l >= 1` those of hidden layer `l`.
    public let degrees: [[Int]]
    /// The staircase of every mask in compute order, built with the masks: what the sparse
    /// kernel computes.
    public let blocks: BlockPartition
    /// Outputs per input and whether the model has direct connections: what shapes the masks
    /// beyond the degrees.
    private let outputMultiplier: Int
    private let directConnections: Bool

    public init(configuration: ModelConfiguration, runSeed: UInt64, maskSeed: UInt64) {
        self.runSeed = runSeed
        self.maskSeed = maskSeed
        let d = configuration.inputCount
        var rng = RandomStream(seed: runSeed, domain: .masks, index: maskSeed)
        var degrees: [[Int]] = [configuration.naturalOrdering ? Array(0..<d) : rng.permutation(d)]
        for size in configuration.hiddenSizes {
            let low = degrees.last!.min()!
            let high = max(low, d - 2)
            var layer = (0..<size).map { _ in rng.uniform(in: low...high) }
            layer[Int(rng.uniform(below: UInt64(size)))] = low
            degrees.append(layer)
        }
        self.degrees = degrees
        self.outputMultiplier = configuration.outputMultiplier
        self.directConnections = configuration.directConnections
        self.blocks = BlockPartition(configuration: configuration, degrees: degrees)
    }

    /// The input degrees: `order[d]` is the position of input `d` in the autoregressive order.
    public var order: [Int] { degrees[0] }

    /// One row-major 0/1 mask per weight layer, the same shape as the layer's weights, built
    /// from the degrees at each call (the sparse kernel never needs them; the rest ask once).
    ///
    /// - Complexity: O(number of weights).
    public var layers: [[UInt8]] {
        var layers: [[UInt8]] = []
        for l in 1..<degrees.count {
            layers.append(Self.mask(degrees[l - 1], degrees[l], strict: false))
        }
        layers.append(Self.mask(degrees.last!, outputDegrees, strict: true))
        return layers
    }

    /// The mask of the direct connections, when the model has them (built at each call).
    public var direct: [UInt8]? {
        directConnections ? Self.mask(degrees[0], outputDegrees, strict: true) : nil
    }

    /// The masks in parameter-layout order: the layers, then the direct connections (built at
    /// each call).
    public var matrices: [[UInt8]] { layers + (direct.map { [$0] } ?? []) }

    /// The degree of each output: that of its input, chunk after chunk.
    private var outputDegrees: [Int] { Array(repeating: degrees[0], count: outputMultiplier).flatMap { $0 } }

    /// Unit `i` below connects to unit `j` above when `from[i] <= to[j]` (`<` when `strict`).
    private static func mask(_ from: [Int], _ to: [Int], strict: Bool) -> [UInt8] {
        var m = [UInt8](repeating: 0, count: from.count * to.count)
        m.withUnsafeMutableBufferPointer { m in
            for (i, a) in from.enumerated() {
                let row = m.baseAddress! + i * to.count
                if strict {
                    for (j, b) in to.enumerated() { row[j] = a < b ? 1 : 0 }
                } else {
                    for (j, b) in to.enumerated() { row[j] = a <= b ? 1 : 0 }
                }
            }
        }
        return m
    }
}
