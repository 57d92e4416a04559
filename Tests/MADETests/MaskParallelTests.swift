import Foundation
import Testing

@testable import MADE

/// Mask-parallel training (`--masks-per-step M`): shard `s` of step `t` trains mask
/// `((t / r) * M + s mod M) mod K`.
@Suite("Masks per step")
struct MaskParallelTests {
    static func configuration(
        shards: Int,
        masksPerStep: Int,
        masks: Int = 4,
        batchSize: Int = 12,
        epochs: Int = 3,
        dimension: Int = 16,
        hidden: [Int] = [24, 20]
    ) -> TrainingConfiguration {
        TrainingConfiguration(
            model: ModelConfiguration(
                inputCount: dimension,
                hiddenSizes: hidden,
                naturalOrdering: false,
                directConnections: true,
                maskCount: masks
            ),
            seed: 42,
            batchSize: batchSize,
            epochs: epochs,
            resampleEvery: 3,
            shards: shards,
            masksPerStep: masksPerStep,
            adam: AdamConfiguration(learningRate: 0.01),
            schedule: StepSchedule(baseLearningRate: 0.01, stepEpochs: 2, gamma: 0.5),
            evaluationMasks: masks
        )
    }

    @Test("one mask per step is the reference's schedule: every shard of step t trains (t / r) mod K")
    func oneMaskPerStep() {
        for (k, r) in [(1, 20), (4, 20), (8, 3), (5, 1)] {
            let schedule = MaskSchedule(maskCount: k, resampleEvery: r)
            for t in 0..<500 {
                let expected = UInt64((t / r) % k)
                #expect(schedule.maskSeeds(step: t, shards: 3) == [expected, expected, expected])
            }
        }
    }

    @Test("M masks per step: shard s trains ((t / r) * M + s mod M) mod K, and every mask trains equally often")
    func severalMasksPerStep() {
        let four = MaskSchedule(maskCount: 4, resampleEvery: 2, masksPerStep: 4)
        #expect(four.maskSeeds(step: 0, shards: 4) == [0, 1, 2, 3])
        #expect(four.maskSeeds(step: 5, shards: 8) == [0, 1, 2, 3, 0, 1, 2, 3])
        let two = MaskSchedule(maskCount: 4, resampleEvery: 2, masksPerStep: 2)
        #expect(two.maskSeeds(step: 0, shards: 4) == [0, 1, 0, 1])
        #expect(two.maskSeeds(step: 1, shards: 2) == [0, 1])
        #expect(two.maskSeeds(step: 2, shards: 2) == [2, 3])
        #expect(two.maskSeeds(step: 4, shards: 2) == [0, 1])
        // K not a multiple of M: the window of M seeds wraps around the cycle.
        let odd = MaskSchedule(maskCount: 5, resampleEvery: 1, masksPerStep: 2)
        #expect((0..<5).map { odd.maskSeeds(step: $0, shards: 2) } == [[0, 1], [2, 3], [4, 0], [1, 2], [3, 4]])
        // Huge step counts do not overflow, and agree with the formula.
        let big = Int.max - 7
        #expect(two.maskSeed(step: big, shard: 1) == UInt64(((big / 2) % 4 * 2 + 1) % 4))
        for (k, m, r) in [(4, 2, 3), (8, 8, 1), (6, 3, 5)] {
            let schedule = MaskSchedule(maskCount: k, resampleEvery: r, masksPerStep: m)
            var counts = [Int](repeating: 0, count: k)
            for t in 0..<(k * r * 10) { for seed in schedule.maskSeeds(step: t, shards: m) { counts[Int(seed)] += 1 } }
            #expect(Set(counts).count == 1, "K=\(k) M=\(m): uneven use \(counts)")
        }
    }

    @Test("M larger than K, or not dividing the shards, is refused with the reason")
    func constraints() throws {
        func message(_ c: TrainingConfiguration) -> String? {
            do {
                try c.validate()
                return nil
            } catch let e as MADEError { return e.message } catch { return "\(error)" }
        }
        #expect(message(Self.configuration(shards: 4, masksPerStep: 4)) == nil)
        #expect(message(Self.configuration(shards: 4, masksPerStep: 2)) == nil)
        #expect(message(Self.configuration(shards: 3, masksPerStep: 1)) == nil)
        #expect(message(Self.configuration(shards: 8, masksPerStep: 8))?.contains("--num-masks 4") == true)
        #expect(message(Self.configuration(shards: 6, masksPerStep: 4))?.contains("must divide the shards") == true)
        #expect(message(Self.configuration(shards: 3, masksPerStep: 2))?.contains("must divide the shards") == true)
        #expect(message(Self.configuration(shards: 2, masksPerStep: 0)) != nil)
        #expect(TrainingConfiguration.defaultShards(workers: 1, masksPerStep: 4) == 4)
        #expect(TrainingConfiguration.defaultShards(workers: 2, masksPerStep: 1) == 2)
        #expect(TrainingConfiguration.defaultShards(workers: 3, masksPerStep: 2) == 4)
        #expect(TrainingConfiguration.defaultShards(workers: 4, masksPerStep: 2) == 4)
        #expect(TrainingConfiguration.defaultShards(workers: 2, masksPerStep: 8) == 8)
    }

    @Test("checkpoints record M; one written before M was recorded reads as one mask per step")
    func checkpointField() throws {
        let trainer = try Trainer(
            configuration: Self.configuration(shards: 4, masksPerStep: 2),
            dataset: TrainerTests.dataset()
        )
        _ = try trainer.run(until: { trainer.state.step >= 5 })
        let decoded = try Checkpoint.decode(try trainer.checkpoint.encoded())
        #expect(decoded.configuration.masksPerStep == 2)
        #expect(decoded == trainer.checkpoint)
        // A configuration without the field (as older checkpoints and coordinators wrote it).
        var json =
            try JSONSerialization.jsonObject(with: JSONEncoder().encode(Self.configuration(shards: 2, masksPerStep: 1)))
            as! [String: Any]
        #expect(json["masksPerStep"] as? Int == 1)
        json["masksPerStep"] = nil
        let old = try JSONDecoder().decode(
            TrainingConfiguration.self,
            from: JSONSerialization.data(withJSONObject: json)
        )
        #expect(old == Self.configuration(shards: 2, masksPerStep: 1))
    }

    /// The step's gradient against central differences of the mean NLL over the batch, each row
    /// under its shard's mask: mask m's gradient counts by its share n_m / B of the rows.
    @Test("the step's gradient is that of the mean NLL over the batch, each row under its shard's mask")
    func weighting() throws {
        // B = 11 in 4 shards of 3, 3, 3, 2 rows: mask 0 trains 6 rows, mask 1 trains 5.
        let c = Self.configuration(shards: 4, masksPerStep: 2, masks: 2, batchSize: 11, dimension: 6, hidden: [7])
        let data = TrainerTests.dataset(count: 33, dimension: 6)
        let trainer = try Trainer(configuration: c, dataset: data)
        let plan = trainer.plan(stepInEpoch: 0)
        #expect(plan.maskSeeds == [0, 1, 0, 1])
        #expect(plan.shards.map(\.count) == [3, 3, 3, 2])
        let (gradient, lossSum) = trainer.localGradient(plan)
        let parameters = trainer.state.parameters.map(Double.init)

        let evaluator = Evaluator<Double>(configuration: c.model, distribution: .bernoulli, runSeed: c.seed)
        func rows(of seed: UInt64) -> DataMatrix {
            let indices = zip(plan.maskSeeds, plan.shards).filter { $0.0 == seed }.flatMap { Array($0.1) }
            return data.train!.rows(indices.map { Int($0) })
        }
        let byMask = [rows(of: 0), rows(of: 1)]
        #expect(byMask.map(\.count) == [6, 5])
        /// Summed NLL of each mask's rows under that mask.
        func sums(_ p: [Double]) -> [Double] {
            (0..<2).map { m in -evaluator.maskLogLikelihoods(parameters: p, data: byMask[m], masks: 2)[m].reduce(0, +) }
        }
        func meanLoss(_ p: [Double]) -> Double { sums(p).reduce(0, +) / 11 }
        #expect(abs(lossSum - sums(parameters).reduce(0, +)) < 1e-4 * abs(lossSum))

        let h = 1e-6
        var worst = 0.0
        var worstEqualWeights = 0.0
        let scale = 1 / Double(c.batchSize)
        for i in stride(from: 0, to: parameters.count, by: 3) {
            var plus = parameters
            var minus = parameters
            plus[i] += h
            minus[i] -= h
            let numeric = (meanLoss(plus) - meanLoss(minus)) / (2 * h)
            worst = max(worst, abs(Double(gradient[i]) * scale - numeric) / max(1e-3, abs(numeric)))
            // Equal weights per mask (the mean of each mask's mean) is another objective: it differs.
            let (sp, sm) = (sums(plus), sums(minus))
            let equal = ((sp[0] / 6 + sp[1] / 5) - (sm[0] / 6 + sm[1] / 5)) / 2 / (2 * h)
            worstEqualWeights = max(worstEqualWeights, abs(Double(gradient[i]) * scale - equal) / max(1e-3, abs(equal)))
        }
        #expect(worst < 1e-3, "relative error \(worst)")
        #expect(worstEqualWeights > 1e-2, "the check cannot tell row weighting from mask weighting")
    }

    /// Every shard computed apart, in reverse order, by fresh engines, and summed in aligned blocks
    /// first (as workers holding several shards do): the bits of the one-process trainer.
    @Test(
        "the shards of a step with several masks give the same bits however they are grouped and ordered",
        arguments: [(4, 2), (4, 4), (8, 2), (2, 1)]
    )
    func groupingsAgree(shards: Int, masksPerStep: Int) throws {
        let c = Self.configuration(shards: shards, masksPerStep: masksPerStep, epochs: 2)
        let data = TrainerTests.dataset()
        let reference = try Trainer(configuration: c, dataset: data)
        _ = try reference.run()

        let other = try Trainer(configuration: c, dataset: data)
        let n = ParameterLayout(c.model).count
        _ = try other.drive(until: { false }) { plan in
            var gradients = [[Float]](repeating: [Float](repeating: .nan, count: n), count: shards)
            var losses = [Double](repeating: 0, count: shards)
            for s in (0..<shards).reversed() {
                let engine = GradientEngine(
                    configuration: c.model,
                    distribution: c.distribution,
                    runSeed: c.seed,
                    capacity: plan.shards[s].count
                )
                engine.begin(parameters: other.state.parameters, maskSeed: plan.maskSeeds[s])
                losses[s] = engine.gradient(data: data.train!, indices: plan.shards[s], into: &gradients[s])
            }
            // Blocks of two shards (of two masks when M > 1) summed first, then the blocks.
            var blocks: [[Float]] = stride(from: 0, to: shards, by: 2).map { b in
                var pair = [gradients[b], gradients[b + 1]]
                GradientReducer.reduce(&pair)
                return pair[0]
            }
            GradientReducer.reduce(&blocks)
            return (blocks[0], GradientReducer.reduce(losses))
        }
        #expect(other.state.parameters == reference.state.parameters)
        #expect(other.checkpoint.parametersSHA256 == reference.checkpoint.parametersSHA256)
    }

    /// What workers on the coordinator's host do with a step of several masks held in one's
    /// compute order: each shard reads its mask's parameters in that mask's own compute order
    /// (where the held Adam step wrote them) and answers in that order; each answer is turned
    /// into the held order and the tree sums them. The bits of the one-process trainer.
    @Test(
        "a step of several masks held in one mask's compute order, each mask's parameters in its own, gives the same bits",
        arguments: [(2, 2), (4, 2), (4, 4), (8, 4), (3, 3)]
    )
    func heldSeveralMasks(shards: Int, masksPerStep: Int) throws {
        var c = Self.configuration(shards: shards, masksPerStep: masksPerStep, epochs: 2)
        c.resampleEvery = 6  // held for the first 3 steps of every 6, in layout order for the rest
        let data = TrainerTests.dataset()
        let reference = try Trainer(configuration: c, dataset: data)
        _ = try reference.run()

        let n = ParameterLayout(c.model).count
        let layout = ParameterLayout(c.model)
        let places = (0..<7).map { _ in UnsafeMutableBufferPointer<Float>.allocate(capacity: n) }
        let slot0 = UnsafeMutableBufferPointer<Float>.allocate(capacity: n)
        defer { (places + [slot0]).forEach { $0.deallocate() } }
        let trainer = try Trainer(configuration: c, dataset: data)
        var heldSteps = 0
        _ = try trainer.drive(
            until: { false },
            offeringHeld: { Trainer.HeldOffer(copyInto: slot0, otherCopies: places) }
        ) { plan, held in
            var gradients = [[Float]](repeating: [Float](repeating: .nan, count: n), count: shards)
            var losses = [Double](repeating: 0, count: shards)
            guard let held else {
                for s in 0..<shards {
                    let engine = GradientEngine(
                        configuration: c.model,
                        distribution: c.distribution,
                        runSeed: c.seed,
                        capacity: plan.shards[s].count
                    )
                    engine.begin(parameters: trainer.state.parameters, maskSeed: plan.maskSeeds[s])
                    losses[s] = engine.gradient(data: data.train!, indices: plan.shards[s], into: &gradients[s])
                }
                GradientReducer.reduce(&gradients)
                return (gradients[0], GradientReducer.reduce(losses), false)
            }
            heldSteps += held.others.isEmpty ? 0 : 1
            for s in 0..<shards {
                let seed = plan.maskSeeds[s]
                let engine = GradientEngine(
                    configuration: c.model,
                    distribution: c.distribution,
                    runSeed: c.seed,
                    capacity: plan.shards[s].count
                )
                let values = seed == held.maskSeed ? held.values : held.others.first { $0.maskSeed == seed }!.values
                engine.begin(computeOrder: values, maskSeed: seed)
                var own = [Float](repeating: .nan, count: n)
                own.withUnsafeMutableBufferPointer { out in
                    plan.shards[s].withUnsafeBufferPointer { rows in
                        losses[s] = engine.gradientInComputeOrder(
                            data: data.train!,
                            indices: rows,
                            into: out,
                            clearingOutside: true
                        )
                    }
                }
                // The parameters in layout order (what workers elsewhere get, packed) serve every mask of the step.
                var inLayout = [Float](repeating: .nan, count: n)
                engine.begin(parameters: held.layoutParameters(), maskSeed: seed)
                _ = engine.gradient(data: data.train!, indices: plan.shards[s], into: &inLayout)
                var ownInLayout = own
                ownInLayout.withUnsafeMutableBufferPointer {
                    engine.maskSet(seed).blocks.toLayoutMasked($0.baseAddress!, layout: layout)
                }
                #expect(ownInLayout.map(\.bitPattern) == inLayout.map(\.bitPattern))
                if seed == held.maskSeed {
                    gradients[s] = own
                } else {
                    let order = RelativeOrder(held: held.blocks, other: engine.maskSet(seed).blocks)
                    own.withUnsafeBufferPointer { source in
                        gradients[s].withUnsafeMutableBufferPointer {
                            order.turn(source.baseAddress!, into: $0.baseAddress!, layout: layout)
                        }
                    }
                    // Adding through the permutation is the same as turning, then adding.
                    var added = [Float](repeating: .nan, count: n)
                    let sum = zip(gradients[0], gradients[s]).map { $0 + $1 }
                    let finite = added.withUnsafeMutableBufferPointer { out in
                        order.add(gradients[0], turned: own, into: out.baseAddress!, layout: layout)
                    }
                    #expect(finite && added.map(\.bitPattern) == sum.map(\.bitPattern))
                }
            }
            GradientReducer.reduce(&gradients)
            return (gradients[0], GradientReducer.reduce(losses), true)
        }
        #expect(heldSteps > 0 || masksPerStep == 1)
        #expect(trainer.state.parameters == reference.state.parameters)
        #expect(trainer.checkpoint.parametersSHA256 == reference.checkpoint.parametersSHA256)
    }

    @Test("stopped and resumed, a run with several masks per step ends bit-identical")
    func resume() throws {
        let c = Self.configuration(shards: 4, masksPerStep: 4, epochs: 3)
        let data = TrainerTests.dataset()
        let uninterrupted = try Trainer(configuration: c, dataset: data)
        _ = try uninterrupted.run()
        let path = TrainerTests.temporaryPath("masks-resume.ckpt")
        let first = try Trainer(configuration: c, dataset: data)
        first.checkpointPath = path
        #expect(try first.run(until: { first.state.step >= 13 }) == .interrupted)
        let saved = try Checkpoint.read(from: path)
        let second = try Trainer(configuration: saved.configuration, dataset: data, state: saved.state)
        _ = try second.run()
        #expect(second.state.parameters == uninterrupted.state.parameters)
        // And M changes what is trained.
        let oneMask = try Trainer(
            configuration: Self.configuration(shards: 4, masksPerStep: 1, epochs: 3),
            dataset: data
        )
        _ = try oneMask.run()
        #expect(oneMask.state.parameters != uninterrupted.state.parameters)
    }

    @Test(
        "the ensemble trained with several masks per step is normalized exactly over all 2^D vectors",
        arguments: [(4, 4), (4, 2)]
    )
    func normalization(masks: Int, masksPerStep: Int) throws {
        let d = 10
        var c = Self.configuration(
            shards: 4,
            masksPerStep: masksPerStep,
            masks: masks,
            batchSize: 16,
            epochs: 3,
            dimension: d,
            hidden: [32]
        )
        c.adam.learningRate = 0.05
        c.schedule.baseLearningRate = 0.05
        let data = TrainerTests.dataset(count: 160, dimension: d)
        let trainer = try Trainer(configuration: c, dataset: data)
        _ = try trainer.run()
        let parameters = trainer.state.parameters.map(Double.init)
        #expect(
            parameters != ParameterLayout(c.model).initialParameters(seed: c.seed, as: Double.self),
            "training changed nothing"
        )
        let evaluator = Evaluator<Double>(
            configuration: c.model,
            distribution: .bernoulli,
            runSeed: c.seed,
            chunkSize: 512
        )
        let all = NormalizationTests.allBinaryVectors(d)
        let perMask = evaluator.maskLogLikelihoods(parameters: parameters, data: all, masks: masks)
        for (k, ll) in perMask.enumerated() {
            let total = ll.reduce(0) { $0 + exp($1) }
            #expect(abs(total - 1) < 1e-10, "mask \(k): sum p(x) = \(total)")
        }
        let ensemble = evaluator.logLikelihoods(parameters: parameters, data: all, masks: masks).reduce(0) {
            $0 + exp($1)
        }
        #expect(abs(ensemble - 1) < 1e-10, "ensemble: sum p(x) = \(ensemble)")
    }

    @Test("the trained network is autoregressive under the mask of every shard of a step")
    func autoregressiveUnderEachShardsMask() throws {
        let c = Self.configuration(shards: 4, masksPerStep: 4, epochs: 1, dimension: 16, hidden: [24, 20])
        let trainer = try Trainer(configuration: c, dataset: TrainerTests.dataset())
        _ = try trainer.run(until: { trainer.state.step >= 6 })
        let plan = trainer.plan(stepInEpoch: trainer.state.step)
        #expect(Set(plan.maskSeeds).count == 4)
        let parameters = trainer.state.parameters.map(Double.init)
        for (s, seed) in plan.maskSeeds.enumerated() {
            let masks = MaskSet(configuration: c.model, runSeed: c.seed, maskSeed: seed)
            let order = masks.order
            let rows = plan.shards[s].count
            let ws = NetworkWorkspace<Double>(configuration: c.model, capacity: rows)
            ws.setMasks(masks)
            ws.prepare(parameters: parameters)
            ws.loadRows(from: trainer.dataset.train!, indices: Array(plan.shards[s]))
            ws.forward()
            var gradient = [Double](repeating: 0, count: ws.layout.count)
            var inputGradient = [Double](repeating: 0, count: rows * c.model.inputCount)
            var dependencies = 0
            for o in 0..<c.model.outputCount {
                var seedGradient = [Double](repeating: 0, count: rows * c.model.outputCount)
                for r in 0..<rows { seedGradient[r * c.model.outputCount + o] = 1 }
                ws.setOutputGradient(seedGradient)
                ws.backward(into: &gradient, inputGradient: &inputGradient)
                for r in 0..<rows {
                    for i in 0..<c.model.inputCount where inputGradient[r * c.model.inputCount + i] != 0 {
                        dependencies += 1
                        #expect(
                            order[i] < order[o % c.model.inputCount],
                            "shard \(s) (mask \(seed)): output \(o) depends on input \(i)"
                        )
                    }
                }
            }
            #expect(dependencies > 0, "shard \(s): no output depends on any input; the check saw nothing")
        }
    }
}
