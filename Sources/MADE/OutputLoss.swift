import CKernels

/// The negative log-likelihood of the loaded rows under the network's outputs, and its gradient.
///
/// Targets are the inputs themselves. Per dimension `d` of a row with outputs `out`:
/// - Bernoulli, logit `z = out[d]`, `x` in {0, 1}: `nll = softplus(s)` with `s = z` when `x = 0`
///   and `s = -z` when `x = 1`, computed as `max(s, 0) + log1p(exp(-|s|))`, which never
///   overflows and gives the exact limits for logits of any size, including +-infinity. The
///   gradient is `sigmoid(z) - x`, with `sigmoid` formed from the same `exp(-|z|)`. In `Double`
///   the elementary functions are the C library's; in `Float` they are the vectorized kernels of
///   `made_bernoulli_f32` (within a few ulp, summed in a fixed order).
/// - Gaussian, mean `mu = out[d]`, log standard deviation `s = out[D + d]`:
///   `nll = log(2 pi)/2 + s + u^2/2` with `u = (x - mu) exp(-s)`; gradients `-u exp(-s)`
///   for the mean and `1 - u^2` for `s`.
extension NetworkWorkspace {
    /// Fills the output gradient with `d (sum of row NLLs) / d out` and returns that sum, in nats.
    ///
    /// - Precondition: ``forward()`` has run on the loaded rows.
    @discardableResult
    public func lossAndGradient(_ distribution: OutputDistribution) -> Double {
        computeLoss(distribution, gradient: true)
    }

    /// Writes `log p(x)` (nats) of each loaded row into `out[0..<rows]`, without touching gradients.
    public func logLikelihoods(_ distribution: OutputDistribution, into out: UnsafeMutableBufferPointer<Double>) {
        precondition(out.count >= rows, "logLikelihoods: output buffer too small")
        computeLoss(distribution, gradient: false)
        for r in 0..<rows { out[r] = -rowLosses[r] }
    }

    /// ``logLikelihoods(_:into:)`` returning an array.
    public func logLikelihoods(_ distribution: OutputDistribution) -> [Double] {
        var out = [Double](repeating: 0, count: rows)
        out.withUnsafeMutableBufferPointer { logLikelihoods(distribution, into: $0) }
        return out
    }

    @discardableResult
    private func computeLoss(_ distribution: OutputDistribution, gradient: Bool) -> Double {
        let d = configuration.inputCount
        precondition(
            configuration.outputMultiplier == distribution.parametersPerDimension,
            "\(distribution) outputs need nout = \(distribution.parametersPerDimension) * nin"
        )
        let nout = configuration.outputCount
        var total = 0.0
        for r in 0..<rows {
            let x = UnsafePointer(input.baseAddress! + r * d)
            let z = UnsafePointer(output.baseAddress! + r * nout)
            let g = outputGradient.baseAddress! + r * nout
            let loss: T
            switch distribution {
            case .bernoulli where T.self == Float.self:
                loss = T(
                    made_bernoulli_f32(
                        d,
                        UnsafeRawPointer(x).assumingMemoryBound(to: Float.self),
                        UnsafeRawPointer(z).assumingMemoryBound(to: Float.self),
                        gradient ? UnsafeMutableRawPointer(g).assumingMemoryBound(to: Float.self) : nil
                    )
                )
            case .bernoulli:
                loss =
                    gradient
                    ? Self.bernoulli(x: x, logits: z, gradient: g, count: d)
                    : Self.bernoulliLoss(x: x, logits: z, count: d)
            case .gaussian:
                loss = Self.gaussian(x: x, outputs: z, gradient: gradient ? g : nil, count: d)
            }
            rowLosses[r] = Double(loss)
            total += Double(loss)
        }
        return total
    }

    @inline(__always)
    private static func bernoulli(
        x: UnsafePointer<T>,
        logits z: UnsafePointer<T>,
        gradient g: UnsafeMutablePointer<T>,
        count: Int
    ) -> T {
        var sum: T = 0
        for j in 0..<count {
            let zj = z[j]
            let positive = x[j] > 0.5
            let s = positive ? -zj : zj
            let e = T.exp(-Swift.abs(zj))
            sum += Swift.max(s, 0) + T.log(onePlus: e)
            let sigmoid = zj >= 0 ? 1 / (1 + e) : e / (1 + e)
            g[j] = sigmoid - x[j]
        }
        return sum
    }

    @inline(__always)
    private static func bernoulliLoss(x: UnsafePointer<T>, logits z: UnsafePointer<T>, count: Int) -> T {
        var sum: T = 0
        for j in 0..<count {
            let zj = z[j]
            let s = x[j] > 0.5 ? -zj : zj
            sum += Swift.max(s, 0) + T.log(onePlus: T.exp(-Swift.abs(zj)))
        }
        return sum
    }

    @inline(__always)
    private static func gaussian(
        x: UnsafePointer<T>,
        outputs o: UnsafePointer<T>,
        gradient g: UnsafeMutablePointer<T>?,
        count d: Int
    ) -> T {
        let halfLogTwoPi = T(0.918_938_533_204_672_741_780_329_736_4)
        var sum: T = 0
        for j in 0..<d {
            let mu = o[j]
            let s = o[d + j]
            let inverseSigma = T.exp(-s)
            let u = (x[j] - mu) * inverseSigma
            sum += halfLogTwoPi + s + u * u / 2
            if let g {
                g[j] = -u * inverseSigma
                g[d + j] = 1 - u * u
            }
        }
        return sum
    }
}
