import Foundation
import Testing

@testable import MADE

/// Exact normalization: the probabilities of all `2^D` binary vectors sum to 1.
@Suite("Exact normalization")
struct NormalizationTests {
    static func allBinaryVectors(_ d: Int) -> DataMatrix {
        var bytes = [UInt8](repeating: 0, count: (1 << d) * d)
        for v in 0..<(1 << d) { for j in 0..<d { bytes[v * d + j] = UInt8((v >> j) & 1) } }
        return DataMatrix(binary: bytes, count: 1 << d, dimension: d)
    }

    static func totalProbability(
        _ c: ModelConfiguration,
        masks k: Int,
        mode: EnsembleMode = .likelihood,
        kernel: ComputeKernel = .dense
    ) -> Double {
        let params = ParameterLayout(c).initialParameters(seed: 21, as: Double.self).map { $0 * 3 }
        var evaluator = Evaluator<Double>(configuration: c, distribution: .bernoulli, runSeed: 9, chunkSize: 512)
        evaluator.kernel = kernel
        let ll = evaluator.logLikelihoods(
            parameters: params,
            data: allBinaryVectors(c.inputCount),
            masks: k,
            mode: mode
        )
        return ll.reduce(0) { $0 + exp($1) }
    }

    @Test("one mask", arguments: [(4, [Int]()), (8, [16]), (10, [40, 30]), (12, [24])], ComputeKernel.allCases)
    func oneMask(shape: (d: Int, hidden: [Int]), kernel: ComputeKernel) {
        let (d, hidden) = shape
        for natural in [true, false] {
            for direct in [false, true] {
                let c = ModelConfiguration(
                    inputCount: d,
                    hiddenSizes: hidden,
                    naturalOrdering: natural,
                    directConnections: direct
                )
                let total = Self.totalProbability(c, masks: 1, kernel: kernel)
                #expect(abs(total - 1) < 1e-10, "sum p(x) = \(total) for D=\(d) hidden=\(hidden)")
            }
        }
    }

    @Test("log-mean-exp ensemble of 5 masks", arguments: ComputeKernel.allCases)
    func ensemble(kernel: ComputeKernel) {
        let c = ModelConfiguration(inputCount: 10, hiddenSizes: [32], naturalOrdering: false, maskCount: 5)
        let total = Self.totalProbability(c, masks: 5, kernel: kernel)
        #expect(abs(total - 1) < 1e-10, "sum p(x) = \(total)")
    }

    /// The reference's logit averaging is not a normalized likelihood; the check shows it.
    @Test("logit averaging is not normalized", arguments: ComputeKernel.allCases)
    func logitAveraging(kernel: ComputeKernel) {
        let c = ModelConfiguration(inputCount: 10, hiddenSizes: [32], naturalOrdering: false, maskCount: 5)
        let total = Self.totalProbability(c, masks: 5, mode: .logits, kernel: kernel)
        #expect(abs(total - 1) > 1e-6, "logit averaging summed to \(total)")
    }

    @Test("logit averaging gives the same values with either kernel")
    func logitAveragingAgrees() {
        let c = ModelConfiguration(inputCount: 10, hiddenSizes: [32], naturalOrdering: false, maskCount: 5)
        let dense = Self.totalProbability(c, masks: 5, mode: .logits, kernel: .dense)
        let sparse = Self.totalProbability(c, masks: 5, mode: .logits, kernel: .sparse)
        #expect(abs(dense - sparse) < 1e-10 * dense)
    }

    @Test("log-mean-exp is stable and exact on simple values")
    func logMeanExp() {
        #expect(Evaluator<Double>.logMeanExp([0, 0]) == 0)
        #expect(abs(Evaluator<Double>.logMeanExp([-1000, -1000 + log(3.0)]) - (-1000 + log(2.0))) < 1e-12)
        #expect(Evaluator<Double>.logMeanExp([-.infinity, 0]) == -log(2.0))
        #expect(Evaluator<Double>.logMeanExp([-.infinity, -.infinity]) == -.infinity)
    }
}
