import Foundation
import Testing

@testable import MADE

@Suite("Sampling")
struct SamplerTests {
    static let configurations: [(ModelConfiguration, OutputDistribution)] = [
        (ModelConfiguration(inputCount: 12, hiddenSizes: []), .bernoulli),
        (ModelConfiguration(inputCount: 12, hiddenSizes: [20], naturalOrdering: false), .bernoulli),
        (
            ModelConfiguration(
                inputCount: 12,
                hiddenSizes: [20, 15],
                naturalOrdering: false,
                directConnections: true,
                maskCount: 3
            ), .bernoulli
        ),
        (
            ModelConfiguration(inputCount: 10, hiddenSizes: [16, 16, 16], naturalOrdering: false, maskCount: 2),
            .bernoulli
        ),
        (
            ModelConfiguration(
                inputCount: 8,
                hiddenSizes: [12],
                outputMultiplier: 2,
                naturalOrdering: false,
                directConnections: true,
                maskCount: 2
            ), .gaussian
        ),
    ]

    @Test(
        "cached and naive sampling give identical samples for the same random stream",
        arguments: 0..<configurations.count
    )
    func cachedEqualsNaive(index: Int) {
        let (c, distribution) = Self.configurations[index]
        let scale = distribution == .bernoulli ? 4.0 : 0.3
        let parameters = ParameterLayout(c).initialParameters(seed: 3, as: Double.self).map { $0 * scale }
        var sampler = Sampler<Double>(configuration: c, distribution: distribution, runSeed: 11)
        sampler.batchSize = 7
        let cached = sampler.sample(parameters: parameters, count: 40, masks: c.maskCount, seed: 5, method: .cached)
        let naive = sampler.sample(parameters: parameters, count: 40, masks: c.maskCount, seed: 5, method: .naive)
        #expect(cached.allSatisfy { $0.isFinite })
        if distribution == .bernoulli {
            // Discrete draws: the same bits.
            #expect(cached == naive)
        } else {
            // Real draws: the same up to the summation order of the two methods.
            let worst = zip(cached, naive).map { abs($0 - $1) / max(1, abs($1)) }.max()!
            #expect(worst < 1e-9, "cached and naive differ by \(worst)")
        }
        #expect(cached.contains { $0 != 0 })
        // Seeded: the same call repeats; another seed differs.
        let again = sampler.sample(parameters: parameters, count: 40, masks: c.maskCount, seed: 5)
        let other = sampler.sample(parameters: parameters, count: 40, masks: c.maskCount, seed: 6)
        #expect(again == cached, "the same seed gave other samples")
        #expect(other != cached, "another seed gave the same samples")
    }

    /// Frequencies of many samples against the exact probabilities of all 2^D vectors.
    @Test("samples follow the model's distribution (exact enumeration, D = 4)")
    func distribution() {
        let c = ModelConfiguration(inputCount: 4, hiddenSizes: [8], naturalOrdering: false, maskCount: 2)
        let parameters = ParameterLayout(c).initialParameters(seed: 9, as: Double.self).map { $0 * 5 }
        let n = 40_000
        let samples = Sampler<Double>(configuration: c, distribution: .bernoulli, runSeed: 2)
            .sample(parameters: parameters, count: n, masks: 2, seed: 1)
        var counts = [Int](repeating: 0, count: 16)
        for i in 0..<n {
            var v = 0
            for j in 0..<4 where samples[i * 4 + j] == 1 { v |= 1 << j }
            counts[v] += 1
        }
        let all = NormalizationTests.allBinaryVectors(4)
        let ll = Evaluator<Double>(configuration: c, distribution: .bernoulli, runSeed: 2)
            .logLikelihoods(parameters: parameters, data: all, masks: 2)
        for v in 0..<16 {
            let p = exp(ll[v])
            let expected = p * Double(n)
            let sigma = (Double(n) * p * (1 - p)).squareRoot()
            #expect(abs(Double(counts[v]) - expected) <= 5 * sigma + 1, "vector \(v): \(counts[v]) vs \(expected)")
        }
    }
}
