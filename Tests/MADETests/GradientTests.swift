import Foundation
import Testing

@testable import MADE

/// Gradients against central finite differences, in `Double`.
@Suite("Gradients")
struct GradientTests {
    /// Loss (sum of row NLLs) and its analytic gradient for fixed data, masks and parameters.
    struct Problem {
        let configuration: ModelConfiguration
        let distribution: OutputDistribution
        let data: [Double]
        let masks: MaskSet
        let workspace: NetworkWorkspace<Double>

        init(
            _ c: ModelConfiguration,
            _ distribution: OutputDistribution,
            rows: Int,
            path: SparseKernelTests.Path = .dense
        ) {
            configuration = c
            self.distribution = distribution
            var rng = RandomStream(seed: 77, domain: .sampling)
            data = (0..<(rows * c.inputCount)).map { _ in
                distribution == .bernoulli ? Double(rng.uniform(below: 2)) : rng.unitDouble() * 4 - 2
            }
            masks = MaskSet(configuration: c, runSeed: 1, maskSeed: 0)
            workspace = path.workspace(c, capacity: rows)
            workspace.setMasks(masks)
        }

        func loss(_ p: [Double]) -> Double {
            workspace.prepare(parameters: p)
            workspace.loadRows(data)
            workspace.forward()
            return workspace.lossAndGradient(distribution)
        }

        func gradient(_ p: [Double]) -> [Double] {
            _ = loss(p)
            var g = [Double](repeating: .nan, count: p.count)
            var ig = [Double]()
            workspace.backward(into: &g, inputGradient: &ig)
            return g
        }
    }

    static let cases: [(OutputDistribution, [Int], Bool)] = [
        (.bernoulli, [], false), (.bernoulli, [7], false), (.bernoulli, [7, 6], true),
        (.gaussian, [8], false), (.gaussian, [6, 5, 4], true),
    ]

    @Test("analytic gradient matches central differences", arguments: 0..<cases.count, SparseKernelTests.Path.allCases)
    func finiteDifferences(index: Int, path: SparseKernelTests.Path) {
        let (distribution, hidden, direct) = Self.cases[index]
        let c = ModelConfiguration(
            inputCount: 6,
            hiddenSizes: hidden,
            outputMultiplier: distribution.parametersPerDimension,
            naturalOrdering: false,
            directConnections: direct
        )
        let problem = Problem(c, distribution, rows: 3, path: path)
        let p = ParameterLayout(c).initialParameters(seed: 4, as: Double.self)
        let g = problem.gradient(p)
        let h = 1e-6
        var worst = 0.0
        for i in 0..<p.count {
            var plus = p
            var minus = p
            plus[i] += h
            minus[i] -= h
            let numeric = (problem.loss(plus) - problem.loss(minus)) / (2 * h)
            let error = abs(numeric - g[i]) / max(1, abs(numeric))
            worst = max(worst, error)
            #expect(error < 1e-6, "parameter \(i): analytic \(g[i]), numeric \(numeric)")
        }
        #expect(worst < 1e-6)
    }

    @Test("masked-out weights get exactly zero gradient", arguments: SparseKernelTests.Path.allCases)
    func maskedGradientIsZero(path: SparseKernelTests.Path) {
        let c = ModelConfiguration(inputCount: 8, hiddenSizes: [10, 9], directConnections: true)
        let problem = Problem(c, .bernoulli, rows: 4, path: path)
        let g = problem.gradient(ParameterLayout(c).initialParameters(seed: 2, as: Double.self))
        let layout = ParameterLayout(c)
        for (m, bits) in zip(layout.matrices, problem.masks.matrices) {
            for i in 0..<m.count where bits[i] == 0 {
                #expect(g[m.offset + i] == 0)
            }
        }
    }

    /// Bernoulli losses at extreme logits against exact values: `softplus(+-z)`.
    @Test("Bernoulli loss is exact for huge, tiny and infinite logits")
    func bernoulliSpecialValues() {
        let c = ModelConfiguration(inputCount: 1, hiddenSizes: [])
        let ws = NetworkWorkspace<Double>(configuration: c, capacity: 1)
        func nll(_ z: Double, _ x: Double) -> (Double, Double) {
            ws.loadRows([x])
            ws.setOutputs([z])
            let loss = ws.lossAndGradient(.bernoulli)
            return (loss, ws.outputGradient[0])
        }
        #expect(nll(0, 1) == (log(2.0), -0.5))
        #expect(nll(0, 0) == (log(2.0), 0.5))
        #expect(nll(1000, 1) == (0, 0))
        #expect(nll(1000, 0) == (1000, 1))
        #expect(nll(-1000, 0) == (0, 0))
        #expect(nll(-1000, 1) == (1000, -1))
        #expect(nll(.infinity, 1) == (0, 0))
        #expect(nll(-.infinity, 0) == (0, 0))
        #expect(nll(.infinity, 0).0 == .infinity)
        #expect(nll(-40, 1).0 == 40 + log1p(exp(-40.0)))
        #expect(nll(-40, 0).0 == log1p(exp(-40.0)))
        #expect(nll(30, 0).1 == 1 / (1 + exp(-30.0)))
        let (tinyLoss, tinyGrad) = nll(1e-300, 0)
        #expect(tinyLoss == log(2.0))
        #expect(tinyGrad == 0.5)
    }

    /// Gaussian NLL against the closed form at a few points.
    @Test("Gaussian loss matches the closed form")
    func gaussianClosedForm() {
        let c = ModelConfiguration(inputCount: 1, hiddenSizes: [], outputMultiplier: 2)
        let ws = NetworkWorkspace<Double>(configuration: c, capacity: 1)
        for (x, mu, s) in [(0.0, 0.0, 0.0), (1.5, -0.5, 0.3), (-2.0, 1.0, -1.2)] {
            ws.loadRows([x])
            ws.setOutputs([mu, s])
            let loss = ws.lossAndGradient(.gaussian)
            let sigma = exp(s)
            let exact = 0.5 * log(2 * Double.pi) + log(sigma) + (x - mu) * (x - mu) / (2 * sigma * sigma)
            #expect(abs(loss - exact) < 1e-14)
        }
    }
}
