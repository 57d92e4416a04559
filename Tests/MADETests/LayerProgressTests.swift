import Foundation
import Testing

@testable import MADE

/// Per-layer progress of the backward pass and Adam applied matrix by matrix: what lets a caller
/// hand on a layer's gradient, and update that layer, while the pass goes on with the layers below.
@Suite("Layer progress")
struct LayerProgressTests {
    static let configurations = [
        ModelConfiguration(inputCount: 20, hiddenSizes: [25, 25], naturalOrdering: false, maskCount: 2),
        ModelConfiguration(
            inputCount: 20,
            hiddenSizes: [30],
            naturalOrdering: false,
            directConnections: true,
            maskCount: 2
        ),
    ]

    static func data() -> DataMatrix {
        var rng = RandomStream(seed: 9, domain: .sampling)
        let bits = (0..<(20 * 30)).map { _ in UInt8(rng.uniform(below: 4) == 0 ? 1 : 0) }
        return DataMatrix(binary: bits, count: 30, dimension: 20)
    }

    /// The entries of matrix `k` (weights and bias).
    static func range(_ layout: ParameterLayout, _ k: Int) -> Range<Int> {
        let m = layout.matrices[k]
        return m.offset..<(m.offset + m.count + (m.biasOffset == nil ? 0 : m.columns))
    }

    /// The order the pass must report: the output layer down to the first, then the direct matrix.
    static func expectedOrder(_ layout: ParameterLayout) -> [Int] {
        Array(layout.layers.indices.reversed()) + (layout.direct == nil ? [] : [layout.layers.count])
    }

    @Test(
        "each matrix is reported once, output layer first, and its entries are final when reported",
        arguments: 0..<2,
        [ComputeKernel.dense, .sparse]
    )
    func reportsFinalEntries(index: Int, kernel: ComputeKernel) {
        let c = Self.configurations[index]
        let layout = ParameterLayout(c)
        let data = Self.data()
        let parameters = layout.initialParameters(seed: 1, as: Float.self)
        let engine = GradientEngine(
            configuration: c,
            distribution: .bernoulli,
            runSeed: 3,
            capacity: 30,
            kernel: kernel
        )
        let rows = (5..<25).map { Int32($0) }
        for computeOrder in kernel == .sparse ? [false, true] : [false] {
            engine.begin(parameters: parameters, maskSeed: 1)
            var reference = [Float](repeating: .nan, count: layout.count)
            _ = engine.gradient(data: data, indices: rows[...], into: &reference, computeOrder: computeOrder)
            var gradient = [Float](repeating: .nan, count: layout.count)
            var order: [Int] = []
            var snapshots: [Int: [Float]] = [:]
            let loss = gradient.withUnsafeMutableBufferPointer { buffer in
                let g = buffer
                return rows.withUnsafeBufferPointer { r in
                    engine.gradient(data: data, indices: r, into: g, computeOrder: computeOrder) { k in
                        order.append(k)
                        snapshots[k] = Array(g[Self.range(layout, k)])
                    }
                }
            }
            #expect(loss.isFinite)
            #expect(order == Self.expectedOrder(layout))
            #expect(gradient.map(\.bitPattern) == reference.map(\.bitPattern))
            for (k, values) in snapshots {
                #expect(values.map(\.bitPattern) == Array(reference[Self.range(layout, k)]).map(\.bitPattern))
            }
        }
        // No rows: every matrix is still reported, in the same order.
        var order: [Int] = []
        var empty = [Float](repeating: .nan, count: layout.count)
        empty.withUnsafeMutableBufferPointer { g in
            _ = engine.gradient(data: data, indices: UnsafeBufferPointer(start: nil, count: 0), into: g) {
                order.append($0)
            }
        }
        #expect(order == Self.expectedOrder(layout))
        #expect(empty.allSatisfy { $0 == 0 })
    }

    @Test(
        "a matrix's parameters overwritten once it is reported leave the step's gradient as it was",
        arguments: 0..<2
    )
    func parametersFreeOnceReported(index: Int) {
        // The sparse kernel reads masked parameters in compute order where they lie (shared memory
        // in a cluster): a layer reported done may take the next step's values at once.
        let c = Self.configurations[index]
        let layout = ParameterLayout(c)
        let data = Self.data()
        let parameters = layout.initialParameters(seed: 4, as: Float.self)
        let engine = GradientEngine(configuration: c, distribution: .bernoulli, runSeed: 3, capacity: 30)
        let blocks = engine.maskSet(0).blocks
        var masked = [Float](repeating: 0, count: layout.count)
        parameters.withUnsafeBufferPointer { p in
            masked.withUnsafeMutableBufferPointer {
                blocks.gatherMasked(p.baseAddress!, into: $0.baseAddress!, layout: layout)
            }
        }
        let rows = (0..<30).map { Int32($0) }
        func run(scribbling: Bool) -> (gradient: [Float], loss: Double) {
            var values = masked
            var gradient = [Float](repeating: .nan, count: layout.count)
            let loss = values.withUnsafeMutableBufferPointer { buffer in
                let p = buffer
                engine.begin(computeOrder: UnsafeBufferPointer(p), maskSeed: 0)
                return gradient.withUnsafeMutableBufferPointer { g in
                    rows.withUnsafeBufferPointer { r in
                        engine.gradientInComputeOrder(data: data, indices: r, into: g, clearingOutside: true) { k in
                            guard scribbling else { return }
                            for i in Self.range(layout, k) { p[i] = .nan }
                        }
                    }
                }
            }
            return (gradient, loss)
        }
        let reference = run(scribbling: false)
        let scribbled = run(scribbling: true)
        #expect(scribbled.loss.bitPattern == reference.loss.bitPattern)
        #expect(scribbled.gradient.map(\.bitPattern) == reference.gradient.map(\.bitPattern))
        let finite = reference.gradient.allSatisfy { $0.isFinite }
        #expect(finite)
    }

    @Test(
        "Adam applied matrix by matrix, in any order, or in row ranges on several threads, gives the whole step's bits",
        arguments: 0..<2
    )
    func adamByMatrix(index: Int) {
        let c = Self.configurations[index]
        let layout = ParameterLayout(c)
        let data = Self.data()
        let configuration = TrainingConfiguration(model: c, batchSize: 30)
        let whole = GradientEngine(configuration: c, distribution: .bernoulli, runSeed: 3, capacity: 30)
        let split = GradientEngine(configuration: c, distribution: .bernoulli, runSeed: 3, capacity: 30)
        let threaded = GradientEngine(configuration: c, distribution: .bernoulli, runSeed: 3, capacity: 30)
        var a = TrainingState(configuration: configuration)
        var b = a
        var t = a
        whole.hold(&a, maskSeed: 1)
        split.hold(&b, maskSeed: 1)
        threaded.hold(&t, maskSeed: 1)
        var copyA = [Float](repeating: 0, count: layout.count)
        var copyB = copyA
        var copyT = copyA
        let rows = (0..<30).map { Int32($0) }
        var orders = [Array(layout.matrices.indices), Array(layout.matrices.indices.reversed())]
        orders.append(orders[1].shuffled())
        for (step, order) in orders.enumerated() {
            var g = [Float](repeating: 0, count: layout.count)
            whole.beginHeld()
            _ = whole.gradient(data: data, indices: rows[...], into: &g, computeOrder: true)
            copyA.withUnsafeMutableBufferPointer { out in
                whole.adamStepHeld(
                    &a,
                    gradient: g,
                    scale: 1 / 30,
                    learningRate: 1e-2,
                    configuration: configuration.adam,
                    copyInto: out
                )
            }
            copyB.withUnsafeMutableBufferPointer { out in
                let adam = split.beginAdamStepHeld(
                    &b,
                    scale: 1 / 30,
                    learningRate: 1e-2,
                    configuration: configuration.adam,
                    copyInto: out
                )
                g.withUnsafeBufferPointer { gp in
                    for k in order { split.adamStepHeld(&b, gradient: gp.baseAddress!, matrix: k, step: adam) }
                }
            }
            copyT.withUnsafeMutableBufferPointer { out in
                threaded.adamStepHeld(
                    &t,
                    gradient: g,
                    scale: 1 / 30,
                    learningRate: 1e-2,
                    configuration: configuration.adam,
                    copyInto: out,
                    threads: 2 + step
                )
            }
            #expect(t.parameters.map(\.bitPattern) == a.parameters.map(\.bitPattern))
            #expect(t.adam.secondMoment.map(\.bitPattern) == a.adam.secondMoment.map(\.bitPattern))
            #expect(copyT.map(\.bitPattern) == copyA.map(\.bitPattern))
            #expect(a.adam.step == step + 1 && b.adam.step == step + 1)
            #expect(a.parameters.map(\.bitPattern) == b.parameters.map(\.bitPattern))
            #expect(a.adam.firstMoment.map(\.bitPattern) == b.adam.firstMoment.map(\.bitPattern))
            #expect(a.adam.secondMoment.map(\.bitPattern) == b.adam.secondMoment.map(\.bitPattern))
            #expect(copyA.map(\.bitPattern) == copyB.map(\.bitPattern))
            #expect(split.heldParameters.baseAddress == copyB.withUnsafeBufferPointer { $0.baseAddress })
        }
        whole.release(&a)
        split.release(&b)
        threaded.release(&t)
        #expect(a == b)
        #expect(a == t)
    }
}
