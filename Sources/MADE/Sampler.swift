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
///
/// **Means.** With `means`, the chain is drawn exactly as without, but each value returned is
/// the mean of its dimension's distribution given the values drawn before it in the order
/// (`sigmoid(z)` for a Bernoulli dimension, the mean `mu` for a Gaussian one) instead of the
/// draw: a smoother picture of the same samples.
public struct Sampler<T: BLASScalar> {
    public enum Method: String, Sendable, CaseIterable {
        case cached, naive
    }

    public let configuration: ModelConfiguration
    public let distribution: OutputDistribution
    public let runSeed: UInt64
    /// Samples drawn together (they share the work of their mask).
    public var batchSize = 64
    /// Called after each position of the order, so long draws can let their caller keep up
    /// with other duties (a worker's heartbeats).
    public var betweenPasses: () -> Void = {}

    public init(configuration: ModelConfiguration, distribution: OutputDistribution, runSeed: UInt64) {
        self.configuration = configuration
        self.distribution = distribution
        self.runSeed = runSeed
    }

    /// `count` samples, row-major `count x D`, from the mixture of the masks `0..<masks`
    /// (each mask seed taken modulo the model's mask count).
    @_specialize(exported:true,where T == Float)
    @_specialize(exported:true,where T == Double)
    public func sample(
        parameters: [T],
        count: Int,
        masks: Int = 1,
        seed: UInt64,
        method: Method = .cached,
        means: Bool = false
    ) -> [T] {
        precondition(
            parameters.count == ParameterLayout(configuration).count,
            "sample: parameters do not fit the model"
        )
        var out: [T] = []
        out.reserveCapacity(count * configuration.inputCount)
        let cache = MaskCache()
        var batch = 0
        while batch * batchSize < count {
            out += sampleBatch(
                batch,
                parameters: parameters,
                count: min(batchSize, count - batch * batchSize),
                masks: masks,
                seed: seed,
                method: method,
                means: means,
                cache: cache
            )
            batch += 1
        }
        return out
    }

    /// The masks of each seed and the weights masked by them, built once per call.
    final class MaskCache {
        var entries: [UInt64: (masks: MaskSet, masked: [T])] = [:]
    }

    /// Batch `batch` of a sampling run: `count` samples drawn from its own random stream, so
    /// batches can be drawn anywhere, in any order, and give the same values.
    @_specialize(exported:true,where T == Float)
    @_specialize(exported:true,where T == Double)
    public func sampleBatch(
        _ batch: Int,
        parameters: [T],
        count n: Int,
        masks: Int = 1,
        seed: UInt64,
        method: Method = .cached
    ) -> [T] {
        sampleBatch(
            batch,
            parameters: parameters,
            count: n,
            masks: masks,
            seed: seed,
            method: method,
            means: false,
            cache: MaskCache()
        )
    }

    func sampleBatch(
        _ batch: Int,
        parameters: [T],
        count n: Int,
        masks: Int,
        seed: UInt64,
        method: Method,
        means: Bool,
        cache: MaskCache
    ) -> [T] {
        let d = configuration.inputCount
        let maskSeeds = (0..<max(1, masks)).map { UInt64($0 % configuration.maskCount) }
        var rng = RandomStream(seed: seed, domain: .sampling, index: UInt64(batch))
        let choice = (0..<n).map { _ in maskSeeds[Int(rng.uniform(below: UInt64(maskSeeds.count)))] }
        // The uniforms are read in (position, sample) order whatever the grouping by mask:
        // `draws[i]` holds sample i's, position by position.
        let perDimension = distribution == .bernoulli ? 1 : 2
        var draws = [[Double]](repeating: [], count: n)
        for _ in 0..<d {
            for i in 0..<n {
                for _ in 0..<perDimension { draws[i].append(rng.unitDouble()) }
            }
        }
        var samples = [T](repeating: 0, count: n * d)
        for maskSeed in Set(choice).sorted() {
            let group = (0..<n).filter { choice[$0] == maskSeed }
            if cache.entries[maskSeed] == nil {
                let maskSet = MaskSet(configuration: configuration, runSeed: runSeed, maskSeed: maskSeed)
                cache.entries[maskSeed] = (maskSet, maskedParameters(parameters, maskSet))
            }
            let (maskSet, masked) = cache.entries[maskSeed]!
            let groupDraws = group.map { draws[$0] }
            let values: [T]
            switch method {
            case .cached: values = cached(masked: masked, masks: maskSet, draws: groupDraws, means: means)
            case .naive: values = naive(parameters: parameters, masks: maskSet, draws: groupDraws, means: means)
            }
            for (row, i) in group.enumerated() {
                for j in 0..<d { samples[i * d + j] = values[row * d + j] }
            }
        }
        return samples
    }

    /// The mean of one dimension's distribution given its network outputs.
    @inline(__always)
    func mean(_ outputs: (T, T)) -> T {
        switch distribution {
        case .bernoulli:
            let z = Double(outputs.0)
            return T(z >= 0 ? 1 / (1 + Foundation.exp(-z)) : Foundation.exp(z) / (1 + Foundation.exp(z)))
        case .gaussian:
            return outputs.0
        }
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
            let u1 = max(u[u.startIndex], Double.leastNormalMagnitude)
            let u2 = u[u.startIndex + 1]
            let normal = (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
            return T(Double(outputs.0) + Foundation.exp(Double(outputs.1)) * normal)
        }
    }

    // MARK: Cached

    /// The parameters with masked-out weights set to 0 (biases as they are).
    func maskedParameters(_ parameters: [T], _ masks: MaskSet) -> [T] {
        var masked = parameters
        for (m, bits) in zip(ParameterLayout(configuration).matrices, masks.matrices) {
            for i in 0..<m.count where bits[i] == 0 { masked[m.offset + i] = 0 }
        }
        return masked
    }

    func cached(masked: [T], masks: MaskSet, draws: [[Double]], means: Bool) -> [T] {
        let c = configuration
        let d = c.inputCount
        let nout = c.outputCount
        let b = draws.count
        let layout = ParameterLayout(c)
        let perDimension = distribution == .bernoulli ? 1 : 2
        let hidden = c.hiddenSizes
        let layers = layout.layers
        // One buffer: per hidden layer its pre-activations then activations (b x width each),
        // then the output pre-activations (b x nout), then the samples (b x d).
        var offsets: [(pre: Int, act: Int)] = []
        var size = 0
        for width in hidden {
            offsets.append((size, size + b * width))
            size += 2 * b * width
        }
        let zOffset = size
        let xOffset = size + b * nout
        var state = [T](repeating: 0, count: xOffset + b * d)
        var meanValues = [T](repeating: 0, count: means ? b * d : 0)
        var dimensionAt = [Int](repeating: 0, count: d)
        for (dim, position) in masks.order.enumerated() { dimensionAt[position] = dim }
        let unitsOfDegree: [[[Int]]] = hidden.indices.map { l in
            var byDegree = [[Int]](repeating: [], count: d)
            for (unit, degree) in masks.degrees[l + 1].enumerated() { byDegree[degree].append(unit) }
            return byDegree
        }

        masked.withUnsafeBufferPointer { w in
            state.withUnsafeMutableBufferPointer { s in
                let base = s.baseAddress!
                let wp = w.baseAddress!
                // Pre-activations start at the biases.
                for (l, width) in hidden.enumerated() {
                    let bias = wp + layers[l].biasOffset!
                    for i in 0..<b { (base + offsets[l].pre + i * width).update(from: bias, count: width) }
                }
                let outBias = wp + layers.last!.biasOffset!
                for i in 0..<b { (base + zOffset + i * nout).update(from: outBias, count: nout) }

                /// `target[i, :] += scale_i * W[row, :]` for every sample `i` with a non-zero scale.
                @inline(__always)
                func addRow(
                    _ target: UnsafeMutablePointer<T>,
                    width: Int,
                    matrix: Int,
                    row: Int,
                    scales: UnsafePointer<T>,
                    scaleStride: Int
                ) {
                    let r = wp + matrix + row * width
                    for i in 0..<b {
                        let scale = scales[i * scaleStride]
                        if scale == 0 { continue }
                        let out = target + i * width
                        for j in 0..<width { out[j] += scale * r[j] }
                    }
                }

                let x = base + xOffset
                for t in 0..<d {
                    let dim = dimensionAt[t]
                    for i in 0..<b {
                        let z = base + zOffset + i * nout
                        let u = draws[i][(t * perDimension)..<(t * perDimension + perDimension)]
                        let outputs = (z[dim], perDimension == 2 ? z[d + dim] : 0)
                        x[i * d + dim] = draw(outputs, u)
                        if means { meanValues[i * d + dim] = mean(outputs) }
                    }
                    if t % 64 == 63 { betweenPasses() }
                    // The new input reaches the first layer (or the outputs) and the direct connections.
                    if hidden.isEmpty {
                        addRow(
                            base + zOffset,
                            width: nout,
                            matrix: layers[0].offset,
                            row: dim,
                            scales: x + dim,
                            scaleStride: d
                        )
                    } else {
                        addRow(
                            base + offsets[0].pre,
                            width: hidden[0],
                            matrix: layers[0].offset,
                            row: dim,
                            scales: x + dim,
                            scaleStride: d
                        )
                    }
                    if let direct = layout.direct {
                        addRow(
                            base + zOffset,
                            width: nout,
                            matrix: direct.offset,
                            row: dim,
                            scales: x + dim,
                            scaleStride: d
                        )
                    }
                    // Units of degree t are final now: activate them once and pass them on.
                    for l in hidden.indices {
                        let width = hidden[l]
                        let pre = base + offsets[l].pre
                        let act = base + offsets[l].act
                        for unit in unitsOfDegree[l][t] {
                            for i in 0..<b { act[i * width + unit] = Swift.max(pre[i * width + unit], 0) }
                            let above =
                                l + 1 < hidden.count
                                ? (base + offsets[l + 1].pre, hidden[l + 1]) : (base + zOffset, nout)
                            addRow(
                                above.0,
                                width: above.1,
                                matrix: layers[l + 1].offset,
                                row: unit,
                                scales: act + unit,
                                scaleStride: width
                            )
                        }
                    }
                }
            }
        }
        return means ? meanValues : Array(state[xOffset...])
    }

    // MARK: Naive

    func naive(parameters: [T], masks: MaskSet, draws: [[Double]], means: Bool) -> [T] {
        let d = configuration.inputCount
        let b = draws.count
        let perDimension = distribution == .bernoulli ? 1 : 2
        let workspace = NetworkWorkspace<T>(configuration: configuration, capacity: b)
        workspace.setMasks(masks)
        workspace.prepare(parameters: parameters)
        var x = [T](repeating: 0, count: b * d)
        var meanValues = [T](repeating: 0, count: means ? b * d : 0)
        var dimensionAt = [Int](repeating: 0, count: d)
        for (dim, position) in masks.order.enumerated() { dimensionAt[position] = dim }
        for t in 0..<d {
            betweenPasses()
            workspace.loadRows(x)
            workspace.forward()
            let dim = dimensionAt[t]
            for i in 0..<b {
                let first = workspace.output(row: i, unit: dim)
                let second = perDimension == 2 ? workspace.output(row: i, unit: d + dim) : 0
                let u = draws[i][(t * perDimension)..<(t * perDimension + perDimension)]
                x[i * d + dim] = draw((first, second), u)
                if means { meanValues[i * d + dim] = mean((first, second)) }
            }
        }
        return means ? meanValues : x
    }
}
