import Foundation
import Logging
import MADE
import Testing

@testable import MADECluster

@Suite("Shard computer")
struct ShardComputerTests {
    static func computer(shards: Int = 2) throws -> (ShardComputer, TrainingConfiguration) {
        let bits = (0..<(40 * 6)).map { UInt8($0 % 3 == 0 ? 1 : 0) }
        let split = DataMatrix(binary: bits, count: 40, dimension: 6)
        let computer = ShardComputer(dataset: Dataset(train: split, valid: split, test: split, source: "test"))
        let c = TrainingConfiguration(
            model: ModelConfiguration(inputCount: 6, hiddenSizes: [8], maskCount: 2),
            batchSize: 10,
            shards: shards
        )
        try computer.configure(try c.canonicalJSON())
        return (computer, c)
    }

    /// Slot 0 and one worker slot of `floats` values, in a file removed with the returned object.
    static func slots(floats: Int) throws -> SharedSlots {
        let slots = try SharedSlots.create(
            folder: FileManager.default.temporaryDirectory.path,
            slotFloats: floats,
            workerSlots: 1
        )
        #expect(slots.reserve(1))
        return slots
    }

    @Test("malformed tasks are refused with an error, never a crash")
    func malformedTasks() throws {
        let (computer, c) = try Self.computer()
        let dense = FloatPayload.inline(ParameterLayout(c.model).initialParameters(seed: 0, as: Float.self))
        let bad: [WireMessage.Task] = [
            .init(
                step: 1,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: [5, 3],
                work: .logLikelihood(split: 2, masks: 1, mode: 0),
                parameters: dense
            ),
            .init(
                step: 1,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: [0, 1, 3],
                work: .logLikelihood(split: 2, masks: 1, mode: 0),
                parameters: dense
            ),
            .init(
                step: 1,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: [0, 99],
                work: .logLikelihood(split: 2, masks: 1, mode: 0),
                parameters: dense
            ),
            .init(
                step: 1,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: [0],
                work: .logLikelihood(split: 7, masks: 1, mode: 0),
                parameters: dense
            ),
            .init(
                step: 1,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: [0],
                work: .logLikelihood(split: 2, masks: 1 << 30, mode: 0),
                parameters: dense
            ),
            .init(
                step: 1,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: [],
                work: .sample(count: 1 << 20, masks: 1, seed: 0, method: 0),
                parameters: dense
            ),
            .init(
                step: 1,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: [],
                work: .sample(count: 2, masks: 1, seed: 0, method: 9),
                parameters: dense
            ),
            .init(
                step: 1,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: [1],
                work: .logLikelihood(split: 2, masks: 1, mode: 0),
                parameters: .inline([1, 2])
            ),
            .init(step: 2, shard: 0, shardCount: 1, maskSeed: 0, rows: [0, 41], parameters: .absent),
            .init(
                step: 2,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: Array(repeating: 0, count: 11),
                parameters: .absent
            ),
            .init(step: 3, shard: 0, shardCount: 1, maskSeed: 0, rows: [0], parameters: .absent),
        ]
        for task in bad {
            let error = #expect(throws: ClusterError.self, "\(task)") { _ = try computer.compute(task) }
            #expect(error?.code == .invalidTask, "\(task): \(String(describing: error))")
        }
        // Block counts that do not add up, or more shards than the run has.
        let packed = FloatPayload.inline(
            computer.packing(0).pack(ParameterLayout(c.model).initialParameters(seed: 0, as: Float.self))
        )
        for rowsPerShard: [UInt32] in [[], [1, 1], [2, 2], [1, 1, 1]] {
            let task = WireMessage.Task(
                step: 9,
                shard: 0,
                shardCount: 2,
                maskSeed: 0,
                rows: [0, 1, 2],
                parameters: packed,
                rowsPerShard: rowsPerShard
            )
            let error = #expect(throws: ClusterError.self, "\(rowsPerShard)") { _ = try computer.compute(task) }
            #expect(error?.code == .invalidTask)
        }
        // A worker without training data refuses training work, even of no rows.
        let bits = (0..<(4 * 6)).map { UInt8($0 % 2) }
        let scoring = ShardComputer(
            dataset: Dataset(
                train: nil,
                valid: DataMatrix(binary: bits, count: 4, dimension: 6),
                test: nil,
                source: "test"
            )
        )
        try scoring.configure(try c.canonicalJSON())
        let noTraining = #expect(throws: ClusterError.self) {
            _ = try scoring.compute(.init(step: 1, shard: 0, shardCount: 2, maskSeed: 0, rows: [], parameters: packed))
        }
        #expect(noTraining?.code == .dataMismatch)
        // ... and scoring a split it does not hold.
        let noSplit = #expect(throws: ClusterError.self) {
            _ = try scoring.compute(
                .init(
                    step: 1,
                    shard: 0,
                    shardCount: 1,
                    maskSeed: 0,
                    rows: [0],
                    work: .logLikelihood(split: 2, masks: 1, mode: 0),
                    parameters: dense
                )
            )
        }
        #expect(noSplit?.code == .dataMismatch)
        // A run description that is not one, or of a model for other data.
        let garbled = #expect(throws: ClusterError.self) { try scoring.configure(Array("{".utf8)) }
        #expect(garbled?.code == .invalidTask)
        var wide = c
        wide.model.inputCount = 7
        let other = #expect(throws: ClusterError.self) { try scoring.configure(try wide.canonicalJSON()) }
        #expect(other?.code == .dataMismatch)
        // A good task still works afterwards.
        let good = WireMessage.Task(
            step: 4,
            shard: 0,
            shardCount: 1,
            maskSeed: 0,
            rows: [0, 1, 2],
            work: .logLikelihood(split: 2, masks: 2, mode: 0),
            parameters: dense
        )
        let result = try computer.compute(good)
        #expect(result.values.count == 6)
    }

    @Test("parameters read in place from shared memory give the gradient of packed parameters, dense, bit for bit")
    func inPlaceGradients() throws {
        let (computer, c) = try Self.computer()
        let layout = ParameterLayout(c.model)
        let parameters = layout.initialParameters(seed: 3, as: Float.self)
        let maskSeed: UInt64 = 1
        let packing = computer.packing(maskSeed)
        let rows: [Int32] = [4, 0, 9, 9, 31]
        // What one process computes: the dense, masked gradient.
        let engine = GradientEngine(configuration: c.model, distribution: c.distribution, runSeed: c.seed, capacity: 10)
        engine.begin(parameters: parameters, maskSeed: maskSeed)
        var expected = [Float](repeating: .nan, count: layout.count)
        let expectedLoss = engine.gradient(data: computer.train, indices: rows[...], into: &expected)

        let packed = try computer.compute(
            .init(
                step: 1,
                shard: 0,
                shardCount: 2,
                maskSeed: maskSeed,
                rows: rows,
                parameters: .inline(packing.pack(parameters))
            )
        )
        #expect(packed.values.inlineValues == packing.pack(expected))
        #expect(packed.lossSum == expectedLoss)

        let slots = try Self.slots(floats: layout.count)
        slots.withSlot(0, count: layout.count) { packing.mask(parameters, into: $0, threads: 2) }
        slots.withSlot(1, count: layout.count) { $0.update(repeating: .nan) }
        for (shard, parameters) in [(0, FloatPayload.shared(slot: 0, count: UInt32(layout.count))), (1, .absent)] {
            let result = try computer.compute(
                .init(
                    step: 2,
                    shard: UInt32(shard),
                    shardCount: 2,
                    maskSeed: maskSeed,
                    rows: rows,
                    parameters: parameters
                ),
                shared: slots,
                slot: 1
            )
            #expect(result.values == .shared(slot: 1, count: UInt32(layout.count)))
            #expect(result.lossSum == expectedLoss)
            let written = try #require(slots.read(1, count: layout.count))
            #expect(
                written.map(\.bitPattern) == expected.map(\.bitPattern),
                "masked-out entries are +0, the rest as one process"
            )
        }
        // Packed-size parameters in shared memory, or a slot other than 0, are refused.
        for bad in [
            FloatPayload.shared(slot: 0, count: UInt32(packing.count)), .shared(slot: 1, count: UInt32(layout.count)),
        ] {
            #expect(throws: ClusterError.self) {
                _ = try computer.compute(
                    .init(step: 3, shard: 0, shardCount: 2, maskSeed: maskSeed, rows: rows, parameters: bad),
                    shared: slots,
                    slot: 1
                )
            }
        }
    }

    @Test(
        "parameters in a mask's compute order in shared memory give the layout gradient in that order, bit for bit",
        arguments: [[[4, 0, 9, 9, 31]], [[0, 1], [2, 3, 4], [5], [6, 7]]] as [[[Int32]]]
    )
    func computeOrderGradients(_ shards: [[Int32]]) throws {
        let (computer, c) = try Self.computer(shards: 4)
        #expect(c.kernel == .sparse)
        let layout = ParameterLayout(c.model)
        let parameters = layout.initialParameters(seed: 3, as: Float.self)
        let maskSeed: UInt64 = 1
        let blocks = MaskSet(configuration: c.model, runSeed: c.seed, maskSeed: maskSeed).blocks
        // One process in layout order: each shard's dense, masked gradient, then the tree, turned into compute order.
        let engine = GradientEngine(configuration: c.model, distribution: c.distribution, runSeed: c.seed, capacity: 10)
        engine.begin(parameters: parameters, maskSeed: maskSeed)
        var gradients = shards.map { _ in [Float](repeating: .nan, count: layout.count) }
        var losses: [Double] = []
        for (k, rows) in shards.enumerated() {
            losses.append(engine.gradient(data: computer.train, indices: rows[...], into: &gradients[k]))
        }
        GradientReducer.reduce(&gradients)
        var expected = gradients[0]
        expected.withUnsafeMutableBufferPointer { blocks.permute($0.baseAddress!, layout: layout, toCompute: true) }

        let slots = try Self.slots(floats: layout.count)
        slots.withSlot(0, count: layout.count) { $0.update(repeating: .nan) }  // nothing outside the bands is read
        parameters.withUnsafeBufferPointer { p in
            slots.withSlot(0, count: layout.count) {
                blocks.gatherMasked(
                    p.baseAddress!,
                    into: $0.baseAddress!,
                    layout: layout
                )
            }
        }
        slots.withSlot(1, count: layout.count) { $0.update(repeating: .nan) }
        // Twice: the first clears the slot outside the bands, the second finds it cleared.
        for step: UInt64 in [2, 3] {
            let task = WireMessage.Task(
                step: step,
                shard: 0,
                shardCount: 4,
                maskSeed: maskSeed,
                rows: Array(shards.joined()),
                parameters: .sharedCompute(slot: 0, count: UInt32(layout.count)),
                rowsPerShard: shards.map { UInt32($0.count) }
            )
            let result = try computer.compute(task, shared: slots, slot: 1)
            #expect(result.values == .sharedCompute(slot: 1, count: UInt32(layout.count)))
            #expect(result.lossSum == GradientReducer.reduce(losses))
            let written = try #require(slots.read(1, count: layout.count))
            #expect(written.map(\.bitPattern) == expected.map(\.bitPattern))
            // Back in layout order: the one process's gradient.
            var back = written
            back.withUnsafeMutableBufferPointer { blocks.toLayoutMasked($0.baseAddress!, layout: layout) }
            #expect(back.map(\.bitPattern) == gradients[0].map(\.bitPattern))
        }
        // Without a slot the gradient comes back packed, in layout order.
        let inline = try computer.compute(
            .init(
                step: 4,
                shard: 0,
                shardCount: 4,
                maskSeed: maskSeed,
                rows: Array(shards.joined()),
                parameters: .sharedCompute(slot: 0, count: UInt32(layout.count)),
                rowsPerShard: shards.map { UInt32($0.count) }
            ),
            shared: slots
        )
        let packedExpected = computer.packing(maskSeed).pack(gradients[0])
        #expect(inline.values.inlineValues?.map(\.bitPattern) == packedExpected.map(\.bitPattern))
        // Compute order needs the sparse kernel, one packing mask, slot 0 and the dense count.
        for bad in [
            FloatPayload.sharedCompute(slot: 1, count: UInt32(layout.count)),
            .sharedCompute(slot: 0, count: 5),
        ] {
            #expect(throws: ClusterError.self) {
                _ = try computer.compute(
                    .init(
                        step: 5,
                        shard: 0,
                        shardCount: 4,
                        maskSeed: maskSeed,
                        rows: [0],
                        parameters: bad
                    ),
                    shared: slots,
                    slot: 1
                )
            }
        }
        var denseRun = c
        denseRun.kernel = .dense
        let dense = ShardComputer(dataset: computer.dataset)
        try dense.configure(try denseRun.canonicalJSON())
        #expect(throws: ClusterError.self) {
            _ = try dense.compute(
                .init(
                    step: 6,
                    shard: 0,
                    shardCount: 4,
                    maskSeed: maskSeed,
                    rows: [0],
                    parameters: .sharedCompute(slot: 0, count: UInt32(layout.count))
                ),
                shared: slots,
                slot: 1
            )
        }
    }

    @Test(
        """
        a further mask's parameters in its own region and order give its gradient in that order; a worker reads \
        parameters only in slot 0 and the regions the welcome named
        """
    )
    func parameterRegions() throws {
        let (computer, c) = try Self.computer(shards: 2)
        let layout = ParameterLayout(c.model)
        let parameters = layout.initialParameters(seed: 4, as: Float.self)
        let maskSeed: UInt64 = 1
        let rows: [Int32] = [3, 1, 4, 1, 5]
        let blocks = MaskSet(configuration: c.model, runSeed: c.seed, maskSeed: maskSeed).blocks
        let engine = GradientEngine(configuration: c.model, distribution: c.distribution, runSeed: c.seed, capacity: 10)
        engine.begin(parameters: parameters, maskSeed: maskSeed)
        var expected = [Float](repeating: .nan, count: layout.count)
        _ = engine.gradient(data: computer.train, indices: rows[...], into: &expected)
        expected.withUnsafeMutableBufferPointer { blocks.permute($0.baseAddress!, layout: layout, toCompute: true) }

        // Slot 0, the worker slots 1 and 2, then the region of a further mask: slot 3.
        let slots = try SharedSlots.create(
            folder: FileManager.default.temporaryDirectory.path,
            slotFloats: layout.count,
            workerSlots: 2,
            parameterRegions: 1
        )
        #expect(slots.parameterSlots == [0, 3])
        #expect((0..<4).allSatisfy { slots.reserve($0) })
        parameters.withUnsafeBufferPointer { p in
            slots.withSlot(3, count: layout.count) {
                blocks.gatherMasked(p.baseAddress!, into: $0.baseAddress!, layout: layout)
            }
        }
        func task(_ slot: UInt32) -> WireMessage.Task {
            .init(
                step: 2,
                shard: 1,
                shardCount: 2,
                maskSeed: maskSeed,
                rows: rows,
                parameters: .sharedCompute(slot: slot, count: UInt32(layout.count))
            )
        }
        let result = try computer.compute(task(3), shared: slots, slot: 1)
        #expect(result.values == .sharedCompute(slot: 1, count: UInt32(layout.count)))
        let written = try #require(slots.read(1, count: layout.count))
        #expect(written.map(\.bitPattern) == expected.map(\.bitPattern))
        // Another worker's slot, this worker's own, or one past the file: refused.
        for bad: UInt32 in [1, 2, 4] {
            #expect(throws: ClusterError.self) { _ = try computer.compute(task(bad), shared: slots, slot: 1) }
        }
    }

    @Test("a block of shards comes back as their gradients summed in tree order, packed or in shared memory")
    func blocks() throws {
        let (computer, c) = try Self.computer(shards: 4)
        let layout = ParameterLayout(c.model)
        let parameters = layout.initialParameters(seed: 5, as: Float.self)
        let maskSeed: UInt64 = 0
        let packing = computer.packing(maskSeed)
        let shards: [[Int32]] = [[0, 1], [2, 3, 4], [5], [6, 7]]
        // One process: each shard's dense gradient, then the tree.
        let engine = GradientEngine(configuration: c.model, distribution: c.distribution, runSeed: c.seed, capacity: 10)
        engine.begin(parameters: parameters, maskSeed: maskSeed)
        var gradients = shards.map { _ in [Float](repeating: 0, count: layout.count) }
        var losses: [Double] = []
        for (k, rows) in shards.enumerated() {
            losses.append(engine.gradient(data: computer.train, indices: rows[...], into: &gradients[k]))
        }
        GradientReducer.reduce(&gradients)
        let task = WireMessage.Task(
            step: 1,
            shard: 0,
            shardCount: 4,
            maskSeed: maskSeed,
            rows: Array(shards.joined()),
            parameters: .inline(packing.pack(parameters)),
            rowsPerShard: shards.map { UInt32($0.count) }
        )
        let packed = try computer.compute(task)
        #expect(packed.values.inlineValues == packing.pack(gradients[0]))
        #expect(packed.lossSum == GradientReducer.reduce(losses))

        let slots = try Self.slots(floats: layout.count)
        slots.withSlot(0, count: layout.count) { packing.mask(parameters, into: $0) }
        var inPlace = task
        inPlace.step = 2
        inPlace.parameters = .shared(slot: 0, count: UInt32(layout.count))
        let result = try computer.compute(inPlace, shared: slots, slot: 1)
        #expect(result.lossSum == GradientReducer.reduce(losses))
        #expect(slots.read(1, count: layout.count)?.map(\.bitPattern) == gradients[0].map(\.bitPattern))
        // Scoring takes one shard per task.
        var scoring = WireMessage.Task(
            step: 3,
            shard: 0,
            shardCount: 2,
            maskSeed: 0,
            rows: [0, 1],
            work: .logLikelihood(split: 2, masks: 1, mode: 0),
            parameters: .inline(parameters),
            rowsPerShard: [1, 1]
        )
        #expect(throws: ClusterError.self) { _ = try computer.compute(scoring) }
        scoring.rowsPerShard = [2]
        #expect(try computer.compute(scoring).values.count == 2)
    }

    @Test("a slot file cut in the middle of a task in shared memory: the task fails as lost shared memory, no SIGBUS")
    func slotFileCutMidTask() throws {
        let (computer, c) = try Self.computer(shards: 2)
        let layout = ParameterLayout(c.model)
        let parameters = layout.initialParameters(seed: 5, as: Float.self)
        let packing = computer.packing(0)
        let slots = try Self.slots(floats: layout.count)
        slots.withSlot(0, count: layout.count) { packing.mask(parameters, into: $0) }
        let task = WireMessage.Task(
            step: 1,
            shard: 0,
            shardCount: 2,
            maskSeed: 0,
            rows: [0, 1, 2, 3, 4],
            parameters: .shared(slot: 0, count: UInt32(layout.count)),
            rowsPerShard: [2, 3]
        )
        // Between the block's two shards the file is cut: the second reads its parameters in place, past its end.
        computer.keepAlive = { #expect(truncate(slots.path, 0) == 0) }
        let error = #expect(throws: ClusterError.self) { _ = try computer.compute(task, shared: slots, slot: 1) }
        computer.keepAlive = {}
        #expect(error?.code == .sharedMemory)
        #expect(error?.message.contains("access to it faulted") == true, "\(String(describing: error))")
        #expect(slots.faulted)
        // The step's parameters are not held any more; sent inline, the task is computed as usual.
        var again = task
        again.parameters = .absent
        #expect(throws: ClusterError.self) { _ = try computer.compute(again, shared: slots, slot: 1) }
        again.parameters = .inline(packing.pack(parameters))
        let result = try computer.compute(again, shared: slots, slot: 1)
        #expect(result.values.inlineValues?.count == packing.count && result.lossSum.isFinite)
    }

    @Test("shards packed by their own masks, spread into the union and summed, give the union-packed block's bits")
    func tasksPackedByOwnMask() throws {
        let (computer, c) = try Self.computer(shards: 4)
        let layout = ParameterLayout(c.model)
        let parameters = layout.initialParameters(seed: 7, as: Float.self)
        let seeds: [UInt64] = [0, 1, 0, 1]
        let shards: [[Int32]] = [[0, 1], [2, 3, 4], [5], [6, 7]]
        let union = MaskPacking(
            union: [0, 1].map { MaskSet(configuration: c.model, runSeed: c.seed, maskSeed: $0) },
            layout: layout
        )
        let block = WireMessage.Task(
            step: 1,
            shard: 0,
            shardCount: 4,
            maskSeeds: seeds,
            packingSeeds: [0, 1],
            rows: Array(shards.joined()),
            parameters: .inline(union.pack(parameters)),
            rowsPerShard: shards.map { UInt32($0.count) }
        )
        let expected = try #require(try computer.compute(block).values.inlineValues)
        var spread: [[Float]] = []
        for (k, rows) in shards.enumerated() {
            let own = computer.packing(seeds[k])
            let task = WireMessage.Task(
                step: 2 + UInt64(k),
                shard: UInt32(k),
                shardCount: 4,
                maskSeed: seeds[k],
                rows: rows,
                parameters: .inline(own.pack(parameters))
            )
            let values = try #require(try computer.compute(task).values.inlineValues)
            #expect(values.count == own.count && own.count < union.count)
            let positions = try #require(own.positions(in: union))
            spread.append(MaskPacking.spread(values, positions: positions, count: union.count))
        }
        GradientReducer.reduce(&spread)
        #expect(spread[0].map(\.bitPattern) == expected.map(\.bitPattern))
        // A packing that keeps what the other drops has no positions in it.
        #expect(union.positions(in: computer.packing(0)) == nil)
        #expect(computer.packing(1).positions(in: computer.packing(0)) == nil)
    }

    @Test(
        """
        a block of shards of different masks: each shard under its own mask, summed in tree order, packed by the \
        union or dense in shared memory
        """
    )
    func mixedMaskBlocks() throws {
        let (computer, c) = try Self.computer(shards: 4)
        let layout = ParameterLayout(c.model)
        let parameters = layout.initialParameters(seed: 7, as: Float.self)
        let seeds: [UInt64] = [0, 1, 0, 1]
        let shards: [[Int32]] = [[0, 1], [2, 3, 4], [5], [6, 7]]
        // One process: each shard's dense gradient under its own mask, then the tree.
        let engine = GradientEngine(configuration: c.model, distribution: c.distribution, runSeed: c.seed, capacity: 10)
        var gradients = shards.map { _ in [Float](repeating: 0, count: layout.count) }
        var losses: [Double] = []
        for (k, rows) in shards.enumerated() {
            engine.begin(parameters: parameters, maskSeed: seeds[k])
            losses.append(engine.gradient(data: computer.train, indices: rows[...], into: &gradients[k]))
        }
        GradientReducer.reduce(&gradients)
        let union = MaskPacking(
            union: [0, 1].map { MaskSet(configuration: c.model, runSeed: c.seed, maskSeed: $0) },
            layout: layout
        )
        #expect(
            union.count > computer.packing(0).count && union.count > computer.packing(1).count
                && union.count <= layout.count
        )
        #expect(Set(computer.packing(0).activeIndices).isSubset(of: Set(union.activeIndices)))
        #expect(Set(computer.packing(1).activeIndices).isSubset(of: Set(union.activeIndices)))
        // The sum is +0 outside the union: nothing is lost by packing it.
        #expect(zip(gradients[0], union.activeMask).allSatisfy { $1 == 1 || $0.bitPattern == 0 })
        let digest = WireFormat.blockDigest(seeds.map { computer.packing($0).digest })

        let task = WireMessage.Task(
            step: 1,
            shard: 0,
            shardCount: 4,
            maskSeeds: seeds,
            packingSeeds: [0, 1],
            rows: Array(shards.joined()),
            parameters: .inline(union.pack(parameters)),
            rowsPerShard: shards.map { UInt32($0.count) }
        )
        let packed = try computer.compute(task)
        #expect(packed.values.inlineValues?.map(\.bitPattern) == union.pack(gradients[0]).map(\.bitPattern))
        #expect(packed.lossSum == GradientReducer.reduce(losses))
        #expect(packed.maskDigest == digest)

        // Shared memory: slot 0 dense, masked by the union; the gradient dense in the worker's slot.
        let slots = try Self.slots(floats: layout.count)
        slots.withSlot(0, count: layout.count) { union.mask(parameters, into: $0) }
        slots.withSlot(1, count: layout.count) { $0.update(repeating: .nan) }
        var inPlace = task
        inPlace.step = 2
        inPlace.parameters = .shared(slot: 0, count: UInt32(layout.count))
        let result = try computer.compute(inPlace, shared: slots, slot: 1)
        #expect(result.lossSum == GradientReducer.reduce(losses))
        #expect(result.maskDigest == digest)
        #expect(slots.read(1, count: layout.count)?.map(\.bitPattern) == gradients[0].map(\.bitPattern))
        // A later task of the same step, with parameters held: the second half alone, its own digest.
        var later = inPlace
        later.shard = 2
        later.maskSeeds = [0, 1]
        later.rows = Array(shards[2...].joined())
        later.rowsPerShard = [1, 2]
        later.parameters = .absent
        let half = try computer.compute(later, shared: slots, slot: 1)
        #expect(half.maskDigest == WireFormat.blockDigest([0, 1].map { computer.packing($0).digest }))

        // No packing masks: dense parameters in, the dense sum out.
        var dense = task
        dense.step = 3
        dense.packingSeeds = []
        dense.parameters = .inline(parameters)
        let denseResult = try computer.compute(dense)
        #expect(denseResult.values.inlineValues?.map(\.bitPattern) == gradients[0].map(\.bitPattern))
        #expect(denseResult.maskDigest == digest)

        // Mask seeds outside the packing masks, or parameters packed for one mask only, are refused.
        var outside = task
        outside.maskSeeds = [0, 1, 0, 2]
        #expect(throws: ClusterError.self) { _ = try computer.compute(outside) }
        var narrow = task
        narrow.parameters = .inline(computer.packing(0).pack(parameters))
        #expect(throws: ClusterError.self) { _ = try computer.compute(narrow) }
        var absent = task
        absent.step = 9
        absent.parameters = .absent
        #expect(throws: ClusterError.self) { _ = try computer.compute(absent) }
    }
}

@Suite("Simulated compute")
struct SimulatedComputeTests {
    @Test(
        "a run configured as a simulation has a run id of its own; its workers answer zeros of the real size and masks"
    )
    func simulation() throws {
        let (real, c) = try ShardComputerTests.computer()
        let bytes = try ClusterCoordinator.runConfiguration(c, simulatedMicrosecondsPerShard: 3000)
        #expect(try ClusterCoordinator.runConfiguration(c, simulatedMicrosecondsPerShard: nil) == c.canonicalJSON())
        #expect(
            ClusterCoordinator.runID(configuration: bytes, dataFingerprint: [])
                != ClusterCoordinator.runID(configuration: try c.canonicalJSON(), dataFingerprint: [])
        )
        let simulated = ShardComputer(dataset: real.dataset)
        try simulated.configure(bytes)
        #expect(
            simulated.configuration == c && simulated.simulatedMicrosecondsPerShard == 3000
                && real.simulatedMicrosecondsPerShard == nil
        )
        let packed = FloatPayload.inline(
            real.packing(0).pack(ParameterLayout(c.model).initialParameters(seed: 0, as: Float.self))
        )
        let task = WireMessage.Task(
            step: 1,
            shard: 0,
            shardCount: 2,
            maskSeeds: [0, 0],
            packingSeeds: [0],
            rows: [0, 1, 2, 3],
            work: .gradient,
            parameters: packed,
            ticket: 1,
            rowsPerShard: [2, 2]
        )
        let truth = try real.compute(task)
        let sleep = try simulated.compute(task)
        #expect(sleep.maskDigest == truth.maskDigest && sleep.values.count == truth.values.count)
        #expect(sleep.values.inlineValues?.allSatisfy { $0 == 0 } == true && sleep.lossSum == 0)
        #expect(truth.values.inlineValues?.contains { $0 != 0 } == true)
    }

    @Test("a relay passes a simulation on to its workers; an unreadable one is refused as an invalid task")
    func simulationThroughRelay() throws {
        let (real, c) = try ShardComputerTests.computer()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("made-sim-relay-\(getpid())").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let relay = RelayComputer(
            dataFingerprint: real.dataFingerprint,
            options: .init(coordinator: .init(bind: "ipc://\(folder)/relay.ipc")),
            logger: Logger(label: "test")
        )
        try relay.configure(try ClusterCoordinator.runConfiguration(c, simulatedMicrosecondsPerShard: 3000))
        #expect(relay.session?.coordinator.options.simulatedMicrosecondsPerShard == 3000)
        try relay.configure(try c.canonicalJSON())
        #expect(relay.session?.coordinator.options.simulatedMicrosecondsPerShard == nil)
        relay.finish(code: 0, reason: "done")
        // A time per shard beyond what the field holds.
        var object = try #require(try JSONSerialization.jsonObject(with: Data(c.canonicalJSON())) as? [String: Any])
        object[ShardComputer.simulationKey] = -1
        let bad = Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
        #expect(throws: ClusterError.self) { try ShardComputer.simulatedMicroseconds(in: bad) }
        #expect(throws: ClusterError.self) { try ShardComputer(dataset: real.dataset).configure(bad) }
    }
}
