import Testing

@testable import MADE

/// The autoregressive property, checked through gradients: output `j * D + d` must not depend on
/// any input `i` with `order[i] >= order[d]`.
@Suite("Autoregressive property")
struct AutoregressiveTests {
    static let hiddenConfigurations: [[Int]] = [[], [200], [200, 220], [200, 220, 230]]

    @Test("natural order, through input gradients", arguments: hiddenConfigurations, [2, 3])
    func naturalOrder(hidden: [Int], multiplier: Int) throws {
        for path in SparseKernelTests.Path.allCases {
            for direct in [false, true] {
                try check(
                    ModelConfiguration(
                        inputCount: 10,
                        hiddenSizes: hidden,
                        outputMultiplier: multiplier,
                        naturalOrdering: true,
                        directConnections: direct
                    ),
                    maskSeed: 0,
                    path: path
                )
            }
        }
    }

    @Test("random orders, several mask seeds", arguments: [[Int](), [30], [30, 40]], SparseKernelTests.Path.allCases)
    func randomOrder(hidden: [Int], path: SparseKernelTests.Path) throws {
        for seed: UInt64 in 0..<4 {
            try check(
                ModelConfiguration(
                    inputCount: 9,
                    hiddenSizes: hidden,
                    outputMultiplier: 2,
                    naturalOrdering: false,
                    directConnections: seed % 2 == 1,
                    maskCount: 4
                ),
                maskSeed: seed,
                path: path
            )
        }
    }

    /// Every output except the first in the order is connected to some input, even with tiny layers.
    @Test("no output is cut off from every input")
    func noDegenerateOutputs() {
        for seed: UInt64 in 0..<50 {
            let c = ModelConfiguration(inputCount: 12, hiddenSizes: [2, 2, 2], naturalOrdering: false, maskCount: 50)
            let masks = MaskSet(configuration: c, runSeed: 7, maskSeed: seed)
            let reach = reachability(c, masks)
            for d in 0..<c.inputCount where masks.order[d] > 0 {
                #expect(
                    (0..<c.inputCount).contains { reach[$0][d] },
                    "output \(d) reaches no input (mask seed \(seed))"
                )
            }
        }
    }

    /// Which inputs can reach which outputs (of chunk 0) through the masks alone.
    func reachability(_ c: ModelConfiguration, _ masks: MaskSet) -> [[Bool]] {
        let widths = c.layerWidths
        // reach[i][u]: input i reaches unit u of the current layer.
        var reach = (0..<c.inputCount).map { i in (0..<c.inputCount).map { $0 == i } }
        for (l, m) in masks.layers.enumerated() {
            let cols = widths[l + 1]
            reach = reach.map { row in
                (0..<cols).map { j in (0..<widths[l]).contains { u in row[u] && m[u * cols + j] == 1 } }
            }
        }
        if let dm = masks.direct {
            let cols = c.outputCount
            for i in 0..<c.inputCount { for j in 0..<cols where dm[i * cols + j] == 1 { reach[i][j] = true } }
        }
        return reach
    }

    /// With the `.rows` path the inputs are 0/1, so the first layer sums selected rows.
    func check(_ c: ModelConfiguration, maskSeed: UInt64, path: SparseKernelTests.Path = .dense) throws {
        try c.validate()
        let masks = MaskSet(configuration: c, runSeed: 3, maskSeed: maskSeed)
        let order = masks.order
        let reach = reachability(c, masks)
        let d = c.inputCount
        // The masks alone allow only earlier inputs.
        for i in 0..<d {
            for o in 0..<c.outputCount where reach[i][o] {
                #expect(order[i] < order[o % d], "mask path from input \(i) to output \(o)")
            }
        }
        let rows = 4
        let ws: NetworkWorkspace<Double> = path.workspace(c, capacity: rows)
        ws.setMasks(masks)
        ws.prepare(parameters: ws.layout.initialParameters(seed: 11, as: Double.self))
        var rng = RandomStream(seed: 5, domain: .sampling)
        ws.loadRows(
            (0..<(rows * d)).map { _ in path == .rows ? Double(rng.uniform(below: 2)) : rng.unitDouble() * 2 - 1 }
        )
        #expect(ws.binaryInput == (path == .rows))
        ws.forward()
        var gradient = [Double](repeating: 0, count: ws.layout.count)
        var inputGradient = [Double](repeating: 0, count: rows * d)
        var dependsOnSomething = false
        for o in 0..<c.outputCount {
            var seed = [Double](repeating: 0, count: rows * c.outputCount)
            for r in 0..<rows { seed[r * c.outputCount + o] = 1 }
            ws.setOutputGradient(seed)
            ws.backward(into: &gradient, inputGradient: &inputGradient)
            for r in 0..<rows {
                for i in 0..<d where inputGradient[r * d + i] != 0 {
                    dependsOnSomething = true
                    #expect(
                        order[i] < order[o % d],
                        "output \(o) depends on input \(i) (orders \(order[o % d]), \(order[i]))"
                    )
                    #expect(reach[i][o], "output \(o) depends on input \(i) with no mask path")
                }
            }
        }
        #expect(dependsOnSomething, "no output depends on any input: the check saw nothing")
    }
}
