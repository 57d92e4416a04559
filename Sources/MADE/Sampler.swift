import Foundation

/// Draws samples from a trained MADE, one dimension at a time in each mask's order.
///
/// **Random stream.** Batch `b` of a call uses `RandomStream(seed:, domain: .sampling, index: b)`:
/// first one draw per sample picks its mask (`uniform(below: K)` of the ensemble's K seeds, the
/// mixture of the K masked models), then, position by position in the order and sample by sample
/// within the batch, one `unitDouble()` per Bernoulli dimension (`x = u < sigmoid(z)`) or two per
/// Gaussian dimension (Box-Muller). Both methods below consume the stream identically.
///
/// **Cached** (the default) keeps every layer's pre-activations and adds each new value's effect
/// once: sampling the input at position `t` adds its row of the first weight matrix, and a
/// hidden unit of degree `t` is final from then on (it sees only inputs at positions `<= t`),
/// so its activation is computed once and its row added to the layer above (or to the output
/// logits). A sample costs about one forward pass instead of `D`.
///
/// **Naive** runs a whole forward pass per dimension, as the reference does; it exists to check
/// the cached method and to measure the speed-up.
public struct Sampler<T: BLASScalar> {
    public enum Method: String, Sendable, CaseIterable {
        case cached, naive
    }

    public let configuration: ModelConfiguration
    public let distribution: OutputDistribution
    public let runSeed: UInt64
    /// Samples drawn together (they share the work of their mask).
    public var batchSize = 64

    public init(configuration: ModelConfiguration, distribution: OutputDistribution, runSeed: UInt64) {
        self.configuration = configuration
        self.distribution = distribution
        self.runSeed = runSeed
    }

    /// `count` samples, row-major `count x D`, from the mixture of the masks `0..<masks`
    /// (each mask seed taken modulo the model's mask count).
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public func sample(parameters: [T], count: Int, masks: Int = 1, seed: UInt64, method: Method = .cached) -> [T] {
        precondition(parameters.count == ParameterLayout(configuration).count, "sample: parameters do not fit the model")
        let d = configuration.inputCount
        var out = [T](repeating: 0, count: count * d)
        let maskSeeds = (0..<max(1, masks)).map { UInt64($0 % configuration.maskCount) }
        var maskSets: [UInt64: MaskSet] = [:]
        var start = 0
        var batch: UInt64 = 0
        while start < count {
            let n = min(batchSize, count - start)
            var rng = RandomStream(seed: seed, domain: .sampling, index: batch)
            let choice = (0..<n).map { _ in maskSeeds[Int(rng.uniform(below: UInt64(maskSeeds.count)))] }
            // Within a batch, samples are grouped by mask; the draws stay in (position, sample) order.
            var samples = [T](repeating: 0, count: n * d)
            var groups: [(UInt64, [Int])] = []
            for seed in Set(choice).sorted() { groups.append((seed, (0..<n).filter { choice[$0] == seed })) }
            let masksOfGroups = groups.map { g -> MaskSet in
                if let m = maskSets[g.0] { return m }
                let m = MaskSet(configuration: configuration, runSeed: runSeed, maskSeed: g.0)
                maskSets[g.0] = m
                return m
            }
            // The uniforms are read in (position, sample) order whatever the grouping:
            // `draws[i]` holds sample i's, position by position.
            let perDimension = distribution == .bernoulli ? 1 : 2
            var draws = [[Double]](repeating: [], count: n)
            for _ in 0..<d {
                for i in 0..<n {
                    for _ in 0..<perDimension { draws[i].append(rng.unitDouble()) }
                }
            }
            for (g, (_, group)) in groups.enumerated() {
                let groupDraws = group.map { draws[$0] }
                let values: [T]
                switch method {
                case .cached: values = cached(parameters: parameters, masks: masksOfGroups[g], draws: groupDraws)
                case .naive: values = naive(parameters: parameters, masks: masksOfGroups[g], draws: groupDraws)
                }
                for (row, i) in group.enumerated() {
                    for j in 0..<d { samples[i * d + j] = values[row * d + j] }
                }
            }
            for k in 0..<(n * d) { out[start * d + k] = samples[k] }
            start += n
            batch += 1
        }
        return out
    }

    /// The value of one dimension from its network outputs and its uniforms.
    @inline(__always)
    func draw(_ outputs: (T, T), _ u: ArraySlice<Double>) -> T {
        switch distribution {
        case .bernoulli:
            let z = Double(outputs.0)
            let p = z >= 0 ? 1 / (1 + Foundation.exp(-z)) : Foundation.exp(z) / (1 + Foundation.exp(z))
            return u[u.startIndex] < p ? 1 : 0
        case .gaussian:
            let u1 = max(u[u.startIndex], Double.leastNormalMagnitude), u2 = u[u.startIndex + 1]
            let normal = (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
            return T(Double(outputs.0) + Foundation.exp(Double(outputs.1)) * normal)
        }
    }

    // MARK: Cached

    func cached(parameters: [T], masks: MaskSet, draws: [[Double]]) -> [T] {
        let c = configuration
        let d = c.inputCount
        let nout = c.outputCount
        let b = draws.count
        let layout = ParameterLayout(c)
        let perDimension = distribution == .bernoulli ? 1 : 2
        // Masked weights per matrix.
        let masked: [[T]] = zip(layout.matrices, masks.matrices).map { m, bits in
            (0..<m.count).map { bits[$0] == 0 ? 0 : parameters[m.offset + $0] }
        }
        let hidden = c.hiddenSizes
        let layers = layout.layers
        // Pre-activations of each hidden layer and of the outputs, starting at the biases.
        var pre: [[T]] = hidden.indices.map { l in
            let bias = Array(parameters[layers[l].biasOffset!..<(layers[l].biasOffset! + hidden[l])])
            return (0..<b).flatMap { _ in bias }
        }
        var act: [[T]] = hidden.map { [T](repeating: 0, count: b * $0) }
        let outBias = Array(parameters[layers.last!.biasOffset!..<(layers.last!.biasOffset! + nout)])
        var z = (0..<b).flatMap { _ in outBias }
        var x = [T](repeating: 0, count: b * d)
        // Inputs by position, and hidden units by degree.
        var dimensionAt = [Int](repeating: 0, count: d)
        for (dim, position) in masks.order.enumerated() { dimensionAt[position] = dim }
        let unitsOfDegree: [[[Int]]] = hidden.indices.map { l in
            var byDegree = [[Int]](repeating: [], count: d)
            for (unit, degree) in masks.degrees[l + 1].enumerated() { byDegree[degree].append(unit) }
            return byDegree
        }

        /// `target[i, :] += scale_i * W[row, :]` for each sample `i` (skipping zero scales).
        func addRow(_ target: inout [T], width: Int, weights: [T], row: Int, scales: (Int) -> T) {
            weights.withUnsafeBufferPointer { w in
                target.withUnsafeMutableBufferPointer { t in
                    let r = w.baseAddress! + row * width
                    for i in 0..<b {
                        let s = scales(i)
                        if s == 0 { continue }
                        let out = t.baseAddress! + i * width
                        for j in 0..<width { out[j] += s * r[j] }
                    }
                }
            }
        }

        for t in 0..<d {
            let dim = dimensionAt[t]
            for i in 0..<b {
                let first = z[i * nout + dim]
                let second = perDimension == 2 ? z[i * nout + d + dim] : 0
                let u = draws[i][(t * perDimension)..<(t * perDimension + perDimension)]
                x[i * d + dim] = draw((first, second), u)
            }
            // The new input reaches the first layer (or the outputs) and the direct connections.
            let firstWidth = hidden.first ?? nout
            if hidden.isEmpty {
                addRow(&z, width: nout, weights: masked[0], row: dim, scales: { x[$0 * d + dim] })
            } else {
                addRow(&pre[0], width: firstWidth, weights: masked[0], row: dim, scales: { x[$0 * d + dim] })
            }
            if layout.direct != nil {
                addRow(&z, width: nout, weights: masked[layers.count], row: dim, scales: { x[$0 * d + dim] })
            }
            // Units of degree t are final now: activate them and pass them on.
            for l in hidden.indices {
                let width = hidden[l]
                for unit in unitsOfDegree[l][t] {
                    for i in 0..<b { act[l][i * width + unit] = Swift.max(pre[l][i * width + unit], 0) }
                    let h = act[l]
                    if l + 1 < hidden.count {
                        addRow(&pre[l + 1], width: hidden[l + 1], weights: masked[l + 1], row: unit, scales: { h[$0 * width + unit] })
                    } else {
                        addRow(&z, width: nout, weights: masked[l + 1], row: unit, scales: { h[$0 * width + unit] })
                    }
                }
            }
        }
        return x
    }

    // MARK: Naive

    func naive(parameters: [T], masks: MaskSet, draws: [[Double]]) -> [T] {
        let d = configuration.inputCount
        let b = draws.count
        let perDimension = distribution == .bernoulli ? 1 : 2
        let workspace = NetworkWorkspace<T>(configuration: configuration, capacity: b)
        workspace.setMasks(masks)
        workspace.prepare(parameters: parameters)
        var x = [T](repeating: 0, count: b * d)
        var dimensionAt = [Int](repeating: 0, count: d)
        for (dim, position) in masks.order.enumerated() { dimensionAt[position] = dim }
        for t in 0..<d {
            workspace.loadRows(x)
            workspace.forward()
            let dim = dimensionAt[t]
            for i in 0..<b {
                let first = workspace.output(row: i, unit: dim)
                let second = perDimension == 2 ? workspace.output(row: i, unit: d + dim) : 0
                let u = draws[i][(t * perDimension)..<(t * perDimension + perDimension)]
                x[i * d + dim] = draw((first, second), u)
            }
        }
        return x
    }
}
