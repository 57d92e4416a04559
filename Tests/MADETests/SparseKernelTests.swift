import Foundation
import Testing

@testable import MADE

/// The sparse kernel against the masks it follows and against the dense kernel.
@Suite("Sparse kernel")
struct SparseKernelTests {
    /// The ways through the network: whole products, bands, and bands after a first layer of selected rows.
    enum Path: CaseIterable, Sendable {
        case dense, bands, rows

        var kernel: ComputeKernel { self == .dense ? .dense : .sparse }

        func workspace<T: BLASScalar>(
            _ c: ModelConfiguration,
            capacity: Int,
            as: T.Type = T.self
        ) -> NetworkWorkspace<T> {
            let ws = NetworkWorkspace<T>(configuration: c, capacity: capacity, kernel: kernel)
            ws.sparseInputLimit = self == .rows ? 1 : 0
            return ws
        }
    }

    @Test("blocks hold exactly the mask's non-zeros, and the bands cover every one")
    func blocksMatchMasks() {
        let configurations = [
            ModelConfiguration(
                inputCount: 11,
                hiddenSizes: [7, 13],
                outputMultiplier: 3,
                naturalOrdering: false,
                directConnections: true
            ),
            ModelConfiguration(
                inputCount: 40,
                hiddenSizes: [3],
                outputMultiplier: 2,
                naturalOrdering: true,
                directConnections: true
            ),
            ModelConfiguration(inputCount: 2, hiddenSizes: [], naturalOrdering: false, directConnections: true),
            ModelConfiguration(inputCount: 300, hiddenSizes: [200, 100], naturalOrdering: false),
        ]
        for c in configurations {
            for seed: UInt64 in 0..<3 {
                let masks = MaskSet(configuration: c, runSeed: 5, maskSeed: seed)
                #expect(masks.blocks == BlockPartition(configuration: c, degrees: masks.degrees))
                for (b, bits) in zip(masks.blocks.matrices, masks.matrices) {
                    #expect(b.rows * b.columns == bits.count)
                    #expect(Set(b.rowOrder.map(Int.init)) == Set(0..<b.rows))
                    #expect(Set(b.columnOrder.map(Int.init)) == Set(0..<b.columns))
                    var kept = 0
                    for i in 0..<b.rows {
                        for j in 0..<b.columns {
                            let bit = bits[Int(b.rowOrder[i]) * b.columns + Int(b.columnOrder[j])]
                            #expect(
                                (bit == 1) == (i < Int(b.activeRows[j])),
                                "entry (\(i), \(j)) of a \(b.rows)x\(b.columns) matrix"
                            )
                            kept += Int(bit)
                        }
                    }
                    #expect(kept == b.activeCount)
                    // Bands tile the columns in order, and each covers its columns' prefixes.
                    var next = 0
                    for band in b.bands {
                        #expect(band.start == next && band.end > band.start)
                        for j in band.start..<band.end { #expect(Int(b.activeRows[j]) <= band.rows) }
                        // Sorted inside a band: a row's dropped columns there are a prefix of the band.
                        #expect((band.start + 1..<band.end).allSatisfy { b.activeRows[$0 - 1] <= b.activeRows[$0] })
                        next = band.end
                    }
                    #expect(next == b.columns)
                    #expect(b.computedCount >= b.activeCount && b.computedCount <= b.rows * b.columns)
                }
            }
        }
    }

    @Test("parameters permuted in place into compute order hold each weight at its place, and come back bit for bit")
    func inPlacePermutation() {
        let configurations = [
            ModelConfiguration(
                inputCount: 11,
                hiddenSizes: [7, 13],
                outputMultiplier: 3,
                naturalOrdering: false,
                directConnections: true
            ),
            ModelConfiguration(inputCount: 2, hiddenSizes: [], naturalOrdering: false, directConnections: true),
            ModelConfiguration(inputCount: 30, hiddenSizes: [50, 20], naturalOrdering: true),
        ]
        for c in configurations {
            let layout = ParameterLayout(c)
            let original = (0..<layout.count).map { Float($0) }
            for seed: UInt64 in 0..<3 {
                let blocks = MaskSet(configuration: c, runSeed: 9, maskSeed: seed).blocks
                var values = original
                values.withUnsafeMutableBufferPointer {
                    blocks.permute(
                        $0.baseAddress!,
                        layout: layout,
                        toCompute: true,
                        threads: 2
                    )
                }
                var misplaced = 0
                for (k, m) in layout.matrices.enumerated() {
                    let b = blocks.matrices[k]
                    for i in 0..<b.rows {
                        for j in 0..<b.columns {
                            let from = m.offset + Int(b.rowOrder[i]) * b.columns + Int(b.columnOrder[j])
                            if values[m.offset + i * b.columns + j] != original[from] { misplaced += 1 }
                        }
                    }
                    if let bias = m.biasOffset {
                        for j in 0..<m.columns where values[bias + j] != original[bias + Int(b.columnOrder[j])] {
                            misplaced += 1
                        }
                    }
                }
                #expect(misplaced == 0, "\(misplaced) of \(layout.count) parameters misplaced, mask seed \(seed)")
                values.withUnsafeMutableBufferPointer {
                    blocks.permute(
                        $0.baseAddress!,
                        layout: layout,
                        toCompute: false
                    )
                }
                #expect(values == original)
            }
        }
    }

    /// Outputs, parameter gradients and input gradients of one path, in layout order.
    static func run(
        _ path: Path,
        _ c: ModelConfiguration,
        masks: MaskSet,
        parameters: [Float],
        input: [Float],
        outputGradient: [Float]
    )
        -> (output: [Float], gradient: [Float], inputGradient: [Float])
    {
        let rows = input.count / c.inputCount
        let ws: NetworkWorkspace<Float> = path.workspace(c, capacity: rows)
        ws.setMasks(masks)
        ws.prepare(parameters: parameters)
        ws.loadRows(input)
        ws.forward()
        let output = (0..<rows).flatMap { r in (0..<c.outputCount).map { ws.output(row: r, unit: $0) } }
        ws.setOutputGradient(outputGradient)
        var gradient = [Float](repeating: .nan, count: parameters.count)
        var inputGradient = [Float](repeating: .nan, count: input.count)
        ws.backward(into: &gradient, inputGradient: &inputGradient)
        return (output, gradient, inputGradient)
    }

    static let agreementCases: [(d: Int, hidden: [Int], k: Int, natural: Bool, direct: Bool)] = [
        (30, [40, 35, 20], 1, false, false),
        (25, [60], 2, false, true),
        (20, [30, 30], 3, true, true),
        (17, [2, 3], 1, false, true),
        (12, [1], 2, true, false),
        (9, [], 3, false, true),
        (50, [64, 64, 64, 64], 1, false, true),
    ]

    @Test("sparse paths agree with the dense one", arguments: 0..<agreementCases.count, [0.0, 0.13, 0.5, 1.0, -1.0])
    func agreesWithDense(index: Int, density: Double) {
        let (d, hidden, k, natural, direct) = Self.agreementCases[index]
        let c = ModelConfiguration(
            inputCount: d,
            hiddenSizes: hidden,
            outputMultiplier: k,
            naturalOrdering: natural,
            directConnections: direct,
            maskCount: 3
        )
        let rows = 7
        var rng = RandomStream(seed: UInt64(index) + 40, domain: .sampling)
        // density < 0: real-valued inputs.
        let input = (0..<(rows * d)).map { _ in
            density < 0 ? Float(rng.unitDouble() * 2 - 1) : (rng.unitDouble() < density ? 1 : 0)
        }
        let outputGradient = (0..<(rows * c.outputCount)).map { _ in Float(rng.unitDouble() * 2 - 1) }
        let parameters = ParameterLayout(c).initialParameters(seed: 6, as: Float.self)
        for seed: UInt64 in 0..<3 {
            let masks = MaskSet(configuration: c, runSeed: 2, maskSeed: seed)
            let dense = Self.run(
                .dense,
                c,
                masks: masks,
                parameters: parameters,
                input: input,
                outputGradient: outputGradient
            )
            for path in [Path.bands, .rows] {
                let sparse = Self.run(
                    path,
                    c,
                    masks: masks,
                    parameters: parameters,
                    input: input,
                    outputGradient: outputGradient
                )
                for (name, a, b) in [
                    ("output", dense.output, sparse.output), ("gradient", dense.gradient, sparse.gradient),
                    ("input gradient", dense.inputGradient, sparse.inputGradient),
                ] {
                    let scale = max(1, a.map { abs($0) }.max() ?? 0)
                    let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
                    #expect(
                        worst <= 1e-5 * scale,
                        "\(path) \(name) differs by \(worst) (scale \(scale)), config \(index), mask \(seed)"
                    )
                    #expect(!b.contains { $0.isNaN }, "\(path) \(name) left entries unwritten")
                }
                // Masked-out weights are exactly +0 on every path.
                for (m, bits) in zip(ParameterLayout(c).matrices, masks.matrices) {
                    for i in 0..<m.count where bits[i] == 0 {
                        #expect(sparse.gradient[m.offset + i] == 0 && sparse.gradient[m.offset + i].sign == .plus)
                    }
                }
            }
        }
    }

    @Test("a sparse step gives the same bits every time, whatever ran before")
    func deterministic() {
        let c = ModelConfiguration(
            inputCount: 20,
            hiddenSizes: [25, 25],
            naturalOrdering: false,
            directConnections: true,
            maskCount: 2
        )
        var rng = RandomStream(seed: 9, domain: .sampling)
        let bits = (0..<(20 * 30)).map { _ in UInt8(rng.uniform(below: 4) == 0 ? 1 : 0) }
        let data = DataMatrix(binary: bits, count: 30, dimension: 20)
        let parameters = ParameterLayout(c).initialParameters(seed: 1, as: Float.self)
        func gradient(_ engine: GradientEngine, _ seed: UInt64, _ rows: [Int32]) -> [Float] {
            var g = [Float](repeating: 0, count: parameters.count)
            engine.begin(parameters: parameters, maskSeed: seed)
            _ = engine.gradient(data: data, indices: rows[...], into: &g)
            return g
        }
        let a = GradientEngine(configuration: c, distribution: .bernoulli, runSeed: 3, capacity: 30, kernel: .sparse)
        let b = GradientEngine(configuration: c, distribution: .bernoulli, runSeed: 3, capacity: 10, kernel: .sparse)
        let rows = (10..<20).map { Int32($0) }
        let first = gradient(a, 1, rows)
        _ = gradient(a, 0, (0..<30).map { Int32($0) })
        #expect(gradient(a, 1, rows) == first)
        #expect(gradient(b, 1, rows) == first)
    }

    @Test("the forward products give the same bits whether their scratch takes the batch whole or in pieces")
    func scratchPieces() {
        // Dense enough inputs take the bands in the first layer too. With capacity 40 the output
        // gradient's buffer holds the first layer's product 24 rows at a time and the second's 10 at
        // a time, with 56 the first's whole and the second's 21 at a time, with 200 both whole.
        let c = ModelConfiguration(inputCount: 20, hiddenSizes: [30], naturalOrdering: false, directConnections: true)
        var rng = RandomStream(seed: 4, domain: .sampling)
        let bits = (0..<(20 * 40)).map { _ in UInt8(rng.uniform(below: 5) < 3 ? 1 : 0) }
        let data = DataMatrix(binary: bits, count: 40, dimension: 20)
        let parameters = ParameterLayout(c).initialParameters(seed: 2, as: Float.self)
        func gradient(capacity: Int) -> [Float] {
            let engine = GradientEngine(
                configuration: c,
                distribution: .bernoulli,
                runSeed: 3,
                capacity: capacity,
                kernel: .sparse
            )
            var g = [Float](repeating: 0, count: parameters.count)
            engine.begin(parameters: parameters, maskSeed: 1)
            _ = engine.gradient(data: data, indices: (0..<40).map { Int32($0) }[...], into: &g)
            return g
        }
        let whole = gradient(capacity: 200)
        #expect(whole.contains { $0 != 0 })
        #expect(gradient(capacity: 40).map(\.bitPattern) == whole.map(\.bitPattern))
        #expect(gradient(capacity: 56).map(\.bitPattern) == whole.map(\.bitPattern))
    }

    @Test("a run configuration keeps its kernel; one saved before the choice existed reads as dense")
    func configurationKernel() throws {
        let c = TrainingConfiguration(model: ModelConfiguration(inputCount: 5, hiddenSizes: [4]))
        #expect(c.kernel == .sparse)
        var dense = c
        dense.kernel = .dense
        let encoded = try JSONEncoder().encode(dense)
        #expect(try JSONDecoder().decode(TrainingConfiguration.self, from: encoded) == dense)
        var object = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(c)) as? [String: Any])
        #expect(object.removeValue(forKey: "kernel") != nil)
        let old = try JSONDecoder().decode(
            TrainingConfiguration.self,
            from: JSONSerialization.data(withJSONObject: object)
        )
        #expect(old.kernel == .dense)
        #expect(old.model == c.model && old.seed == c.seed && old.batchSize == c.batchSize)
    }

    @Test("sparse evaluation and training agree with dense ones")
    func trainerAgrees() throws {
        let dataset = Self.binaryDataset(seed: 4)
        var results: [ComputeKernel: (Double, [Float])] = [:]
        for kernel in ComputeKernel.allCases {
            let c = TrainingConfiguration(
                model: ModelConfiguration(
                    inputCount: 12,
                    hiddenSizes: [20, 20],
                    naturalOrdering: false,
                    directConnections: true,
                    maskCount: 2
                ),
                batchSize: 20,
                epochs: 1,
                resampleEvery: 3,
                shards: 2,
                kernel: kernel
            )
            let trainer = try Trainer(configuration: c, dataset: dataset)
            _ = try trainer.run()
            results[kernel] = (trainer.state.history[0].validNLL!, trainer.state.parameters)
        }
        let (denseNLL, denseParameters) = results[.dense]!
        let (sparseNLL, sparseParameters) = results[.sparse]!
        #expect(abs(denseNLL - sparseNLL) < 1e-4 * abs(denseNLL))
        let worst = zip(denseParameters, sparseParameters).map { abs($0 - $1) }.max()!
        #expect(worst < 1e-4, "parameters differ by \(worst) after an epoch")
    }

    /// Masks that change every 6 steps (the first 3 steps of each held, the last 3 not), and one
    /// mask held through epochs of 100 steps.
    static let heldCases: [(maskCount: Int, batchSize: Int, resampleEvery: Int)] = [(2, 20, 6), (1, 2, 20)]

    @Test(
        "parameters held in compute order between mask changes give the bits of layout order, read at any step",
        arguments: 0..<heldCases.count
    )
    func heldParametersAgreeWithLayoutOrder(_ index: Int) throws {
        let dataset = Self.binaryDataset(seed: 6)
        let held = Self.heldCases[index]
        let c = TrainingConfiguration(
            model: ModelConfiguration(
                inputCount: 12,
                hiddenSizes: [20, 20],
                naturalOrdering: false,
                directConnections: true,
                maskCount: held.maskCount
            ),
            batchSize: held.batchSize,
            epochs: 2,
            resampleEvery: held.resampleEvery,
            shards: 2,
            kernel: .sparse
        )
        let steps = 2 * (200 / held.batchSize)
        // The reference: every step in layout order, as a cluster computes it.
        let reference = try Trainer(configuration: c, dataset: dataset)
        let engine = GradientEngine(
            configuration: c.model,
            distribution: c.distribution,
            runSeed: c.seed,
            capacity: 10,
            kernel: .sparse
        )
        let n = ParameterLayout(c.model).count
        var gradients = [[Float]](repeating: [Float](repeating: 0, count: n), count: 2)
        _ = try reference.drive(until: { false }) { plan in
            engine.begin(parameters: reference.state.parameters, maskSeed: plan.maskSeeds[0])
            var losses: [Double] = []
            for (s, rows) in plan.shards.enumerated() {
                losses.append(engine.gradient(data: dataset.train!, indices: rows, into: &gradients[s]))
            }
            GradientReducer.reduce(&gradients)
            return (gradients[0], GradientReducer.reduce(losses))
        }
        let holding = try Trainer(configuration: c, dataset: dataset)
        _ = try holding.run()
        func same(_ a: Trainer, _ b: Trainer) -> Bool {
            a.state.parameters == b.state.parameters && a.state.adam == b.state.adam
                && a.state.history.map(\.validNLL) == b.state.history.map(\.validNLL)
                && a.state.history.map(\.trainNLL) == b.state.history.map(\.trainNLL)
        }
        #expect(holding.state.step == steps && same(holding, reference))

        // Reading the state between steps brings the held parameters back, and changes nothing.
        let reading = try Trainer(configuration: c, dataset: dataset)
        var seen: [[Float]] = []
        _ = try reading.run(until: {
            seen.append(reading.state.parameters)
            return false
        })
        #expect(same(reading, reference))
        #expect(seen.count == steps && seen[0] != seen[1] && seen[1] != seen[2])
    }

    /// 200 random binary rows of 12 bits (about a third ones), the first 50 also the validation split.
    static func binaryDataset(seed: UInt64) -> Dataset {
        var rng = RandomStream(seed: seed, domain: .sampling)
        let bits = (0..<(200 * 12)).map { _ in UInt8(rng.uniform(below: 3) == 0 ? 1 : 0) }
        let data = DataMatrix(binary: bits, count: 200, dimension: 12)
        return Dataset(train: data, valid: data.rows(0..<50), test: nil, source: "bits")
    }
}
