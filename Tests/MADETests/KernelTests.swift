import CKernels
import Foundation
import Testing

@testable import MADE

/// The float32 kernels against `Double` references.
@Suite("Float kernels")
struct KernelTests {
    /// Distance in units in the last place of `Float` between `value` and the exact `reference`.
    static func ulps(_ value: Float, _ reference: Double) -> Double {
        let r = Float(reference)
        if r == value { return 0 }
        return abs(Double(value) - reference) / Double(r.ulp == 0 ? Float.leastNonzeroMagnitude : r.ulp)
    }

    @Test("exp on x <= 0 is within 2 ulp, and 0 below the underflow threshold")
    func exponential() {
        var worst = 0.0
        var x: Float = 0
        while x > -87 {
            let e = made_exp_nonpositive_f32(x)
            worst = max(worst, Self.ulps(e, Foundation.exp(Double(x))))
            x -= 0.0137
        }
        #expect(worst <= 2, "worst error \(worst) ulp")
        #expect(made_exp_nonpositive_f32(0) == 1)
        #expect(made_exp_nonpositive_f32(-100) == 0)
        #expect(made_exp_nonpositive_f32(-.infinity) == 0)
    }

    @Test("log1p on [0, 1] is within 2 ulp, and exact near 0")
    func logOnePlus() {
        var worst = 0.0
        for i in 0...20000 {
            let e = Float(i) / 20000
            worst = max(worst, Self.ulps(made_log1p_unit_f32(e), Foundation.log1p(Double(e))))
        }
        for e: Float in [1e-30, 1e-10, 3e-8, 6e-8, 1e-7, 1e-5, 1e-3] {
            worst = max(worst, Self.ulps(made_log1p_unit_f32(e), Foundation.log1p(Double(e))))
        }
        #expect(worst <= 2, "worst error \(worst) ulp")
        #expect(made_log1p_unit_f32(0) == 0)
    }

    @Test("Bernoulli loss and gradient match the Double reference, special logits included")
    func bernoulli() {
        var logits: [Float] = [0, -0.0, 1, -1, 20, -20, 88, -88, 1e4, -1e4, .infinity, -.infinity, 1e-30, -1e-30]
        var rng = RandomStream(seed: 1, domain: .sampling)
        for _ in 0..<2000 { logits.append(Float(rng.unitDouble() * 60 - 30)) }
        for target: Float in [0, 1] {
            let x = [Float](repeating: target, count: logits.count)
            var grad = [Float](repeating: .nan, count: logits.count)
            var exactTotal = 0.0
            for (j, z) in logits.enumerated() {
                let zd = Double(z)
                let s = target > 0.5 ? -zd : zd
                let loss = max(s, 0) + Foundation.log1p(Foundation.exp(-abs(zd)))
                exactTotal += loss
                let single = made_bernoulli_f32(1, [target], [z], &grad[j])
                #expect(
                    Self.ulps(single, loss) <= 3 || abs(Double(single) - loss) < 1e-37,
                    "loss at z=\(z), x=\(target): \(single) vs \(loss)"
                )
                let sigmoid = zd >= 0 ? 1 / (1 + Foundation.exp(-zd)) : Foundation.exp(zd) / (1 + Foundation.exp(zd))
                #expect(abs(Double(grad[j]) - (sigmoid - Double(target))) <= 2e-7, "gradient at z=\(z)")
            }
            let total = made_bernoulli_f32(logits.count, x, logits, nil)
            if exactTotal.isFinite {
                #expect(abs(Double(total) - exactTotal) <= 1e-5 * exactTotal)
            } else {
                #expect(total == .infinity)
            }
        }
    }

    @Test("a Float step agrees with the Double one")
    func floatMatchesDouble() {
        let c = ModelConfiguration(inputCount: 20, hiddenSizes: [30], naturalOrdering: false, directConnections: true)
        let layout = ParameterLayout(c)
        let masks = MaskSet(configuration: c, runSeed: 2, maskSeed: 0)
        var rng = RandomStream(seed: 8, domain: .sampling)
        let bits = (0..<(20 * 17)).map { _ in UInt8(rng.uniform(below: 2)) }
        let data = DataMatrix(binary: bits, count: 17, dimension: 20)
        let rows = (0..<17).map { Int32($0) }
        let pd = layout.initialParameters(seed: 3, as: Double.self)
        let wd = NetworkWorkspace<Double>(configuration: c, capacity: 17)
        wd.setMasks(masks)
        wd.prepare(parameters: pd)
        wd.loadRows(from: data, indices: rows)
        wd.forward()
        let lossD = wd.lossAndGradient(.bernoulli)
        var gd = [Double](repeating: 0, count: layout.count)
        gd.withUnsafeMutableBufferPointer { wd.backward(into: $0) }
        let wf = NetworkWorkspace<Float>(configuration: c, capacity: 17)
        wf.setMasks(masks)
        wf.prepare(parameters: pd.map { Float($0) })
        wf.loadRows(from: data, indices: rows)
        wf.forward()
        let lossF = wf.lossAndGradient(.bernoulli)
        var gf = [Float](repeating: 0, count: layout.count)
        gf.withUnsafeMutableBufferPointer { wf.backward(into: $0) }
        #expect(abs(lossF - lossD) < 1e-4 * lossD)
        let scale = gd.map(abs).max()!
        for i in 0..<layout.count { #expect(abs(Double(gf[i]) - gd[i]) < 1e-5 * scale) }
    }
}
