import Foundation

/// How an ensemble of masks is combined at test time.
public enum EnsembleMode: String, Sendable, Codable, CaseIterable {
    /// `log (1/K) sum_k p_k(x)`: the likelihood of the mixture of the K masked models. Normalized.
    case likelihood
    /// The reference's rule: average the K networks' outputs, then score once.
    /// Not a normalized likelihood; kept only to compare with the reference's numbers.
    case logits
}

/// Log-likelihoods of data under a trained model and an ensemble of its masks.
///
/// Mask `k` of a `K`-mask ensemble is mask seed `k mod maskCount`: the first seeds the model
/// trained with, the same whenever and wherever the evaluation runs. Evaluation draws nothing
/// from any stream training uses, so it never shifts the training masks.
public struct Evaluator<T: BLASScalar> {
    public let configuration: ModelConfiguration
    public let distribution: OutputDistribution
    public let runSeed: UInt64
    /// Rows per forward pass.
    public var chunkSize: Int
    /// The arithmetic of the forward passes; the values agree within float rounding either way.
    public var kernel: ComputeKernel = .sparse

    /// Most masks in an evaluation ensemble or a sampling mixture (`-s`): each is a full
    /// pass over the data, and the per-mask values of every row are held at once.
    public static var maxMasks: Int { 4096 }
    /// Called after every forward pass, so a long evaluation can let its caller keep up with
    /// other duties (a coordinator answering its workers).
    public var betweenPasses: () -> Void = {}

    public init(
        configuration: ModelConfiguration,
        distribution: OutputDistribution,
        runSeed: UInt64,
        chunkSize: Int = 1000
    ) {
        self.configuration = configuration
        self.distribution = distribution
        self.runSeed = runSeed
        self.chunkSize = chunkSize
    }

    /// The mask seeds of a `K`-mask ensemble.
    public func ensembleSeeds(_ k: Int) -> [UInt64] {
        (0..<max(1, k)).map { UInt64($0 % configuration.maskCount) }
    }

    /// `log p(x)` in nats for every row of `data`, in row order.
    ///
    /// - Complexity: `K` forward passes per row.
    @_specialize(exported:true,where T == Float)
    @_specialize(exported:true,where T == Double)
    public func logLikelihoods(
        parameters: [T],
        data: DataMatrix,
        masks k: Int,
        mode: EnsembleMode = .likelihood
    ) -> [Double] {
        switch mode {
        case .likelihood: return Evaluator.combine(maskLogLikelihoods(parameters: parameters, data: data, masks: k))
        case .logits: return logitAveragedLogLikelihoods(parameters: parameters, data: data, masks: k)
        }
    }

    /// `log p_k(x)` of every row under each mask `k` of the ensemble: `[mask][row]`.
    ///
    /// Rows are scored in chunks of ``chunkSize`` from the first row, so the values of a row
    /// depend only on its chunk's position: a worker scoring one chunk gets the same bits.
    @_specialize(exported:true,where T == Float)
    @_specialize(exported:true,where T == Double)
    public func maskLogLikelihoods(parameters: [T], data: DataMatrix, masks k: Int) -> [[Double]] {
        let n = data.count
        let maskSets = ensembleSeeds(k).map { MaskSet(configuration: configuration, runSeed: runSeed, maskSeed: $0) }
        var result = [[Double]](repeating: [Double](repeating: 0, count: n), count: maskSets.count)
        guard n > 0 else { return result }
        let chunk = min(chunkSize, n)
        let workspace = NetworkWorkspace<T>(configuration: configuration, capacity: chunk, kernel: kernel)
        // Mask by mask, so the parameters are masked (and, with the sparse kernel, gathered) once
        // per mask; a row's values depend only on its chunk and its mask, not on this order.
        for (m, maskSet) in maskSets.enumerated() {
            workspace.setMasks(maskSet)
            workspace.prepare(parameters: parameters)
            var start = 0
            while start < n {
                let end = min(n, start + chunk)
                let rows = (start..<end).map { Int32($0) }
                workspace.loadRows(from: data, indices: rows)
                workspace.forward()
                result[m].withUnsafeMutableBufferPointer {
                    workspace.logLikelihoods(distribution, into: UnsafeMutableBufferPointer(rebasing: $0[start..<end]))
                }
                betweenPasses()
                start = end
            }
        }
        return result
    }

    /// The ensemble likelihood of each row from its per-mask values (`[mask][row]`): log-mean-exp over masks.
    public static func combine(_ perMask: [[Double]]) -> [Double] {
        guard let rows = perMask.first?.count else { return [] }
        return (0..<rows).map { r in logMeanExp(perMask.map { $0[r] }) }
    }

    /// The reference's logit averaging (see ``EnsembleMode/logits``): not a normalized likelihood.
    @_specialize(exported:true,where T == Float)
    @_specialize(exported:true,where T == Double)
    public func logitAveragedLogLikelihoods(parameters: [T], data: DataMatrix, masks k: Int) -> [Double] {
        let n = data.count
        guard n > 0 else { return [] }
        let maskSets = ensembleSeeds(k).map { MaskSet(configuration: configuration, runSeed: runSeed, maskSeed: $0) }
        let chunk = min(chunkSize, n)
        let workspace = NetworkWorkspace<T>(configuration: configuration, capacity: chunk, kernel: kernel)
        var result = [Double](repeating: 0, count: n)
        var outputSum = [T](repeating: 0, count: chunk * configuration.outputCount)
        var start = 0
        while start < n {
            let end = min(n, start + chunk)
            let rows = (start..<end).map { Int32($0) }
            if kernel == .dense { workspace.loadRows(from: data, indices: rows) }
            for i in 0..<outputSum.count { outputSum[i] = 0 }
            for maskSet in maskSets {
                workspace.setMasks(maskSet)
                workspace.prepare(parameters: parameters)
                if kernel == .sparse { workspace.loadRows(from: data, indices: rows) }
                workspace.forward()
                workspace.addOutputs(into: &outputSum)
                betweenPasses()
            }
            let scale = 1 / T(maskSets.count)
            workspace.setOutputs(outputSum.map { $0 * scale })
            let ll = workspace.logLikelihoods(distribution)
            for r in 0..<(end - start) { result[start + r] = ll[r] }
            start = end
        }
        return result
    }

    /// The mean negative log-likelihood (nats per example) of `data`.
    public func meanNLL(parameters: [T], data: DataMatrix, masks k: Int, mode: EnsembleMode = .likelihood) -> Double {
        Self.meanNLL(logLikelihoods(parameters: parameters, data: data, masks: k, mode: mode))
    }

    /// The mean negative of `logLikelihoods`, summed in order: every caller gets the same bits.
    public static func meanNLL(_ logLikelihoods: [Double]) -> Double {
        -logLikelihoods.reduce(0, +) / Double(max(1, logLikelihoods.count))
    }

    /// `log((1/K) sum_k exp(v_k))`, computed stably around the largest term. Empty input gives -infinity.
    public static func logMeanExp(_ values: [Double]) -> Double {
        guard let top = values.max(), top.isFinite else { return values.max() ?? -.infinity }
        var sum = 0.0
        for v in values { sum += Foundation.exp(v - top) }
        return top + Foundation.log(sum / Double(values.count))
    }
}

extension NetworkWorkspace {
    /// Adds the current outputs of the loaded rows into `sum` (`rows x nout`).
    func addOutputs(into sum: inout [T]) {
        let nout = configuration.outputCount
        if kernel == .sparse {
            let order = blocks!.outputOrder
            for r in 0..<rows {
                for j in 0..<nout { sum[r * nout + Int(order[j])] += output[r * nout + j] }
            }
            return
        }
        for i in 0..<(rows * nout) { sum[i] += output[i] }
    }

    /// Replaces the outputs of the loaded rows (`rows x nout`).
    func setOutputs(_ values: [T]) {
        let nout = configuration.outputCount
        precondition(values.count >= rows * nout)
        if kernel == .sparse {
            let order = blocks!.outputOrder
            for r in 0..<rows {
                for j in 0..<nout { output[r * nout + j] = values[r * nout + Int(order[j])] }
            }
            return
        }
        for i in 0..<(rows * nout) { output[i] = values[i] }
    }
}
