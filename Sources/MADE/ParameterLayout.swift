/// Where each weight matrix and bias vector lives in the flat parameter vector.
///
/// The vector holds, for each weight layer `l` (hidden layers first, the output layer last),
/// the weights `W_l` as a row-major `in_l x out_l` matrix followed by the bias `b_l` (`out_l`
/// values); then, with direct connections, the `nin x nout` matrix `A` (no bias of its own).
/// Layer `l` computes `a_l = h_{l-1} (W_l * M_l) + b_l` for a row vector `h_{l-1}`.
public struct ParameterLayout: Sendable, Equatable {
    /// One weight matrix in the flat vector.
    public struct Matrix: Sendable, Equatable {
        /// Index of the first weight.
        public let offset: Int
        public let rows: Int
        public let columns: Int
        /// Index of the first bias value, or `nil` for the direct connections.
        public let biasOffset: Int?
        public var count: Int { rows * columns }
    }

    /// The weight layers, inputs first; the last is the output layer.
    public let layers: [Matrix]
    /// The direct input-to-output matrix, when the model has one.
    public let direct: Matrix?
    /// Total number of parameters.
    public let count: Int

    public init(_ configuration: ModelConfiguration) {
        let widths = configuration.layerWidths
        var offset = 0
        var layers: [Matrix] = []
        for l in 0..<(widths.count - 1) {
            let m = Matrix(
                offset: offset,
                rows: widths[l],
                columns: widths[l + 1],
                biasOffset: offset + widths[l] * widths[l + 1]
            )
            layers.append(m)
            offset += m.count + m.columns
        }
        if configuration.directConnections {
            direct = Matrix(
                offset: offset,
                rows: configuration.inputCount,
                columns: configuration.outputCount,
                biasOffset: nil
            )
            offset += configuration.inputCount * configuration.outputCount
        } else {
            direct = nil
        }
        self.layers = layers
        self.count = offset
    }

    /// Every matrix: the layers, then the direct connections.
    public var matrices: [Matrix] { layers + (direct.map { [$0] } ?? []) }
}

extension ParameterLayout {
    /// Initial parameters, as PyTorch's `nn.Linear` draws them.
    ///
    /// Every weight and bias of a layer with fan-in `n` is uniform on `[-1/sqrt(n), 1/sqrt(n)]`
    /// (PyTorch's Kaiming-uniform with `a = sqrt(5)` reduces to this bound). The direct matrix has
    /// fan-in `nin`. Values come from `RandomStream(seed:, domain: .initialization)` in
    /// parameter-vector order, so they depend on the seed alone.
    public func initialParameters<T: BLASScalar>(seed: UInt64, as: T.Type = T.self) -> [T] {
        var rng = RandomStream(seed: seed, domain: .initialization)
        var p = [T](repeating: 0, count: count)
        for m in matrices {
            let bound = 1 / Double(m.rows).squareRoot()
            let end = m.offset + m.count + (m.biasOffset == nil ? 0 : m.columns)
            for i in m.offset..<end {
                p[i] = T((2 * rng.unitDouble() - 1) * bound)
            }
        }
        return p
    }
}
