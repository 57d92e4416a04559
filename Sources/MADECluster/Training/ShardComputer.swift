import Foundation
import MADE

/// A worker's model side: builds the network from the run's configuration and turns a task
/// (the rows of a shard or an aligned block of shards, a mask seed, parameters packed inline or
/// masked in shared memory) into a result (the tree-order gradient, packed inline or dense in
/// the worker's slot; the loss; the mask digest).
///
/// The masks come from `(run seed, mask seed)` alone (``MaskSet``), so the digest it reports
/// matches the coordinator's exactly when both built the same masks.
public final class ShardComputer {
    public let dataset: Dataset
    /// The training split (empty when the data set has none: such a worker only scores and samples).
    public let train: DataMatrix
    public private(set) var configuration: TrainingConfiguration?
    private var engine: GradientEngine?
    /// The step whose parameters this worker holds, the masks that packed them, and where they are.
    private var parametersKey: (step: UInt64, packingSeeds: [UInt64], source: ParameterSource)?
    /// Dense parameters of a task with several packing masks, unpacked from it (outside the
    /// union of those masks +0); each shard masks them again for its own mask.
    private var stepParameters: [Float] = []

    /// Where the held parameters are.
    private enum ParameterSource {
        /// In the engine, prepared for the step's one mask.
        case engine
        /// Masked in shared slot 0, read there by the engine for the step's one mask.
        case inPlace
        /// Masked in shared slot 0 in the compute order of the step's one mask (sparse kernel),
        /// read there by the engine; the gradient goes back in the same order.
        case inPlaceCompute
        /// Several masks: dense in ``stepParameters``.
        case dense
        /// Several masks: dense in shared slot 0, masked by their union.
        case sharedDense

        var isShared: Bool { self == .inPlace || self == .inPlaceCompute || self == .sharedDense }
    }
    /// The mapping the engine reads parameters from, kept mapped while it does, and the slot.
    private var parameterMemory: SharedSlots?
    private var parameterSlot = 0
    /// Gradients of a block's shards after its first, summed into the first.
    private var blockBuffers: [UnsafeMutableBufferPointer<Float>] = []
    private var gradient: [Float] = []
    /// The mapping, slot and mask seed whose compute-order gradient the slot last received: the
    /// weights outside that mask's bands are +0 there (the backward pass never writes them).
    private var computeOrderSlot: (memory: ObjectIdentifier, slot: Int, maskSeed: UInt64)?

    public init(dataset: Dataset) {
        self.dataset = dataset
        self.train = dataset.train ?? DataMatrix(binary: [], count: 0, dimension: dataset.dimension ?? 0)
    }

    deinit {
        blockBuffers.forEach { $0.deallocate() }
    }

    /// Called now and then during long computations (scoring, sampling, and between a block's
    /// shards), so the worker can keep sending heartbeats.
    public var keepAlive: () -> Void = {}

    /// Most shards of one task: each beyond the first costs a dense gradient buffer. A worker's
    /// hello says so, and the coordinator hands it no larger block.
    public static let maxBlockShards = 8

    /// Largest ensemble and sampling batch a task may ask for.
    public static let maxMasks = UInt32(Evaluator<Float>.maxMasks)
    public static let maxSampleBatch: UInt32 = 4096

    /// Dense parameters of evaluation and sampling tasks, kept for the later tasks of the same job.
    private var denseParameters: [Float] = []
    private var denseKey: UInt64?

    /// In a simulation (a run whose configuration says so, see
    /// ``ClusterCoordinator/Options/simulatedMicrosecondsPerShard``), the time a gradient task
    /// sleeps per shard instead of computing; its result is a gradient of zeros of the right
    /// size and masks, so the system's own overhead can be measured with more workers than cores.
    public private(set) var simulatedMicrosecondsPerShard: UInt32?

    /// The key of the run configuration that asks for a simulation.
    public static let simulationKey = "simulatedComputeMicrosecondsPerShard"

    private struct Simulation: Decodable {
        var simulatedComputeMicrosecondsPerShard: UInt32?
    }

    /// The time per shard a run configuration (a `welcome`'s) asks its workers to sleep instead
    /// of computing, or nil when it is no simulation.
    public static func simulatedMicroseconds(in configuration: [UInt8]) throws -> UInt32? {
        do {
            let simulation = try JSONDecoder().decode(Simulation.self, from: Data(configuration))
            return simulation.simulatedComputeMicrosecondsPerShard
        } catch {
            throw ClusterError(.invalidTask, "unreadable simulation in the run configuration: \(error)")
        }
    }

    /// The 32-byte fingerprint of this worker's data.
    public var dataFingerprint: [UInt8] { DataFingerprint.bytes(of: dataset) }

    /// Builds the network for the run described by `bytes` (a JSON ``TrainingConfiguration``).
    public func configure(_ bytes: [UInt8]) throws {
        let c: TrainingConfiguration
        do {
            c = try JSONDecoder().decode(TrainingConfiguration.self, from: Data(bytes))
        } catch {
            throw ClusterError(.invalidTask, "unreadable run configuration: \(error)")
        }
        try c.validate()
        simulatedMicrosecondsPerShard = try Self.simulatedMicroseconds(in: bytes)
        try MemoryBudget.require(
            c.trainingBytes,
            for: "the run's model of \(ParameterLayout(c.model).count) parameters with batch \(c.batchSize)"
        )
        if let dimension = dataset.dimension, dimension != c.model.inputCount {
            throw ClusterError(
                .dataMismatch,
                "the run's model takes \(c.model.inputCount) inputs, this data has \(dimension)"
            )
        }
        if c != configuration {
            blockBuffers.forEach { $0.deallocate() }
            blockBuffers = []
            configuration = c
            engine = GradientEngine(
                configuration: c.model,
                distribution: c.distribution,
                runSeed: c.seed,
                capacity: c.batchSize,
                kernel: c.kernel
            )
            parametersKey = nil
            gradient = [Float](repeating: 0, count: ParameterLayout(c.model).count)
        }
    }

    /// The packing of `maskSeed`'s masks.
    public func packing(_ maskSeed: UInt64) -> MaskPacking {
        guard let engine else { preconditionFailure("ShardComputer: configure first") }
        return engine.masks.packing(maskSeed)
    }

    /// Computes `task`: the gradient of the summed NLL of its rows under its mask seed.
    ///
    /// Parameters come inline, packed by mask (from another host), or masked and dense in
    /// slot 0 of `shared` (from this host), where the engine reads them without a copy. The
    /// gradient goes back the way the parameters came: packed inline, or, with `shared` and
    /// `slot`, dense (masked-out weights +0) straight into that slot.
    ///
    /// - Throws: when the task does not fit the run (rows out of range, too many rows, block
    ///   counts that do not add up or exceed 8 or the run's shards, no training data here,
    ///   parameters of the wrong size or not finite, or none for this step), or when its loss
    ///   or gradient is not finite (training diverged).
    public func compute(
        _ task: WireMessage.Task,
        shared: SharedSlots? = nil,
        slot: Int? = nil
    ) throws -> WireMessage.Result {
        guard let configuration, let engine else {
            throw ClusterError(.invalidTask, "a task arrived before the run's configuration")
        }
        if task.work != .gradient { return try computeJob(task, configuration: configuration, shared: shared) }
        guard task.rows.count <= configuration.batchSize else {
            throw ClusterError(
                .invalidTask,
                "a task of \(task.rows.count) rows exceeds the batch size \(configuration.batchSize)"
            )
        }
        guard !task.rowsPerShard.isEmpty, task.rowsPerShard.count <= min(configuration.shards, Self.maxBlockShards),
            task.rowsPerShard.reduce(0, { $0 + Int($1) }) == task.rows.count
        else {
            throw ClusterError(
                .invalidTask,
                """
                a task of \(task.rowsPerShard.count) shards (\(task.rowsPerShard) rows) for \(task.rows.count) rows \
                in a run of \(configuration.shards) shards
                """
            )
        }
        guard train.count > 0 else {
            throw ClusterError(.dataMismatch, "a training task for a worker without training data")
        }
        guard task.rows.allSatisfy({ Int($0) < train.count }) else {
            throw ClusterError(.invalidTask, "a task names rows beyond the \(train.count) training examples")
        }
        guard task.maskSeeds.count == task.rowsPerShard.count,
            task.packingSeeds.isEmpty || task.maskSeeds.allSatisfy(task.packingSeeds.contains)
        else {
            throw ClusterError(
                .invalidTask,
                """
                a task's mask seeds \(task.maskSeeds) for \(task.rowsPerShard.count) shards are not all among its \
                packing masks \(task.packingSeeds)
                """
            )
        }
        let start = ContinuousClock.now
        let packing = engine.masks.packing(union: task.packingSeeds)
        let single = task.packingSeeds.count == 1
        switch task.parameters {
        case .inline(let packed):
            guard packed.count == packing.count else {
                throw ClusterError(.invalidTask, "\(packed.count) parameters arrived for \(packing.count) active ones")
            }
            parametersKey = nil
            let finite: Bool
            if single {
                finite = packed.withUnsafeBufferPointer {
                    engine.begin(packed: $0, packing: packing, maskSeed: task.packingSeeds[0])
                }
            } else {
                packing.unpack(packed, into: &stepParameters)
                finite = packed.allSatisfy(\.isFinite)
            }
            guard finite else { throw ClusterError(.diverged, "the parameters hold values that are not finite") }
            parametersKey = (task.step, task.packingSeeds, single ? .engine : .dense)
        case .shared(let slot, let count):
            guard let shared, slot == 0, Int(count) == packing.denseCount, Int(count) <= shared.slotFloats else {
                throw ClusterError(
                    .invalidTask,
                    "\(count) parameters in shared memory this worker has not mapped, for \(packing.denseCount)"
                )
            }
            // The coordinator writes slot 0 only between steps, so it holds still while this step reads it.
            if single {
                shared.withSlot(0, count: Int(count)) {
                    engine.begin(inPlace: UnsafeBufferPointer($0), maskSeed: task.packingSeeds[0])
                }
            }
            parameterMemory = shared
            parameterSlot = 0
            parametersKey = (task.step, task.packingSeeds, single ? .inPlace : .sharedDense)
        case .sharedCompute(let slot, let count):
            // Slot 0 or a further parameter region the welcome named, never this worker's own slot.
            guard let shared, shared.parameterSlots.contains(Int(slot)), single, configuration.kernel == .sparse,
                Int(count) == packing.denseCount, Int(count) <= shared.slotFloats
            else {
                throw ClusterError(
                    .invalidTask,
                    "\(count) parameters in compute order in shared-memory slot \(slot), which this worker "
                        + "has not mapped as a parameter slot, "
                        + "for \(packing.denseCount) of one mask under the sparse kernel"
                )
            }
            guard shared.holds(Int(slot)) else {
                parametersKey = nil
                throw ClusterError(
                    .sharedMemory,
                    "the shared-memory file \(shared.path) shrank: it no longer holds parameter slot \(slot)"
                )
            }
            shared.withSlot(Int(slot), count: Int(count)) {
                engine.begin(computeOrder: UnsafeBufferPointer($0), maskSeed: task.packingSeeds[0])
            }
            parameterMemory = shared
            parameterSlot = Int(slot)
            parametersKey = (task.step, task.packingSeeds, .inPlaceCompute)
        case .absent:
            guard let key = parametersKey, key.step == task.step, key.packingSeeds == task.packingSeeds else {
                throw ClusterError(
                    .invalidTask,
                    "a task for step \(task.step) came without parameters this worker does not hold"
                )
            }
        }
        let source = parametersKey!.source
        // The shared-memory file may shrink under the task (`truncate`): checked before the
        // parameters and the slot are touched, and again after, since an access that faulted
        // read or wrote zero pages (SharedSlots, the SIGBUS guard) and the result is void.
        let writesSlot = source.isShared && shared != nil && (slot ?? 0) > 0 && packing.denseCount <= shared!.slotFloats
        func requireSharedMemory() throws {
            guard source.isShared else { return }
            if let memory = parameterMemory, memory.holds(parameterSlot), !writesSlot || shared!.holds(slot!) { return }
            let memory = parameterMemory ?? shared
            let during = memory?.faulted == true ? " (this worker's access to it faulted)" : ""
            parametersKey = nil
            parameterMemory = nil
            computeOrderSlot = nil
            throw ClusterError(
                .sharedMemory,
                "the shared-memory file \(memory?.path ?? "") shrank\(during): it no "
                    + "longer holds the parameters or this worker's slot"
            )
        }
        try requireSharedMemory()
        let payload: FloatPayload
        let loss: Double
        // In a simulation the block sleeps instead and leaves zeros, in either order.
        let compute = {
            (out: UnsafeMutablePointer<Float>, masking: Bool, computeOrder: Bool, clearing: Bool) -> Double in
            guard let simulated = self.simulatedMicrosecondsPerShard else {
                return self.blockGradient(
                    task,
                    engine: engine,
                    source: source,
                    into: out,
                    masking: masking,
                    computeOrder: computeOrder,
                    clearingOutside: clearing
                )
            }
            return self.simulateBlock(task, microsecondsPerShard: simulated, into: out, count: packing.denseCount)
        }
        // With several masks each shard's gradient is masked by its own mask, so the block's sum is +0 outside their
        // union.
        if writesSlot, source == .inPlaceCompute, let shared, let slot {
            let seed = task.packingSeeds[0]
            let known =
                computeOrderSlot.map {
                    $0.memory == ObjectIdentifier(shared) && $0.slot == slot
                        && $0.maskSeed == seed
                }
                ?? false
            computeOrderSlot = nil  // until the slot holds this mask's gradient whole
            loss = shared.withSlot(slot, count: packing.denseCount) {
                compute($0.baseAddress!, true, true, !known)
            }
            computeOrderSlot = (ObjectIdentifier(shared), slot, seed)
            payload = .sharedCompute(slot: UInt32(slot), count: UInt32(packing.denseCount))
        } else if writesSlot, let shared, let slot {
            if computeOrderSlot?.slot == slot { computeOrderSlot = nil }
            loss = shared.withSlot(slot, count: packing.denseCount) { compute($0.baseAddress!, true, false, true) }
            payload = .shared(slot: UInt32(slot), count: UInt32(packing.denseCount))
        } else {
            // With one mask only the active entries are packed, so the masked-out ones need no zeroing.
            loss = gradient.withUnsafeMutableBufferPointer { compute($0.baseAddress!, !single, false, true) }
            payload = .inline(packing.pack(gradient))
        }
        try requireSharedMemory()
        // The wire carries finite values only: a diverged shard is reported as failed, not sent.
        guard loss.isFinite, payload.inlineValues?.allSatisfy(\.isFinite) ?? true else {
            throw ClusterError(
                .diverged,
                """
                the \(loss.isFinite ? "gradient" : "loss") of step \(task.step), shard \(task.shard) is not finite: \
                training diverged; a smaller --lr may help
                """
            )
        }
        let micros = (ContinuousClock.now - start).seconds * 1e6
        let digest = WireFormat.blockDigest(task.maskSeeds.map { engine.masks.packing($0).digest })
        return WireMessage.Result(
            step: task.step,
            shard: task.shard,
            maskDigest: digest,
            lossSum: loss,
            computeMicroseconds: UInt32(clamping: Int(micros)),
            values: payload,
            ticket: task.ticket
        )
    }

    /// A simulated block: sleeps `microsecondsPerShard` for each of the task's shards, between
    /// them as a real block would pause, and leaves zeros in `out`; the loss is 0.
    private func simulateBlock(
        _ task: WireMessage.Task,
        microsecondsPerShard: UInt32,
        into out: UnsafeMutablePointer<Float>,
        count: Int
    ) -> Double {
        out.update(repeating: 0, count: count)
        for n in 0..<task.rowsPerShard.count {
            usleep(microsecondsPerShard)
            if n + 1 < task.rowsPerShard.count { keepAlive() }
        }
        return 0
    }

    /// Dense gradients of the task's shards, each as one process computes it, summed into `out`
    /// in the order of the reduction tree; returns the shards' losses summed in the same order.
    ///
    /// With several masks in the step the engine is prepared for each shard's mask from the
    /// dense parameters (`source`), mask by mask; the order of computing does not change the bits.
    ///
    /// With `computeOrder` each gradient is in the compute order of the step's one mask, masked
    /// (``GradientEngine/gradientInComputeOrder(data:indices:into:clearingOutside:)``): `out`'s
    /// weights outside the bands are set to +0 when `clearingOutside`, the other buffers' always.
    private func blockGradient(
        _ task: WireMessage.Task,
        engine: GradientEngine,
        source: ParameterSource,
        into out: UnsafeMutablePointer<Float>,
        masking: Bool,
        computeOrder: Bool = false,
        clearingOutside: Bool = true
    ) -> Double {
        let dense = engine.workspace.layout.count
        let shards = task.rowsPerShard.count
        var terms = [out]
        while blockBuffers.count < shards - 1 {
            blockBuffers.append(UnsafeMutableBufferPointer<Float>.allocate(capacity: dense))
        }
        terms += blockBuffers.prefix(shards - 1).map { $0.baseAddress! }
        var starts = [0]
        for count in task.rowsPerShard { starts.append(starts.last! + Int(count)) }
        var losses = [Double](repeating: 0, count: shards)
        var order: [Int] = []
        for seed in task.maskSeeds where !order.contains(where: { task.maskSeeds[$0] == seed }) {
            order += (0..<shards).filter { task.maskSeeds[$0] == seed }
        }
        var prepared: UInt64?
        task.rows.withUnsafeBufferPointer { rows in
            for (n, k) in order.enumerated() {
                let seed = task.maskSeeds[k]
                if prepared != seed {
                    switch source {
                    case .engine, .inPlace, .inPlaceCompute: break  // prepared for the step's one mask beforehand
                    case .dense: engine.begin(parameters: stepParameters, maskSeed: seed)
                    case .sharedDense:
                        parameterMemory!.withSlot(0, count: dense) {
                            engine.begin(parameters: UnsafeBufferPointer($0), maskSeed: seed)
                        }
                    }
                    prepared = seed
                }
                let shardRows = UnsafeBufferPointer(rebasing: rows[starts[k]..<starts[k + 1]])
                let term = UnsafeMutableBufferPointer(start: terms[k], count: dense)
                if computeOrder {
                    losses[k] = engine.gradientInComputeOrder(
                        data: train,
                        indices: shardRows,
                        into: term,
                        clearingOutside: k > 0 || clearingOutside
                    )
                } else {
                    losses[k] = engine.gradient(data: train, indices: shardRows, into: term, maskingGradient: masking)
                }
                if n + 1 < shards { keepAlive() }  // a block takes several shards' time: let the worker be heard
            }
        }
        // Finiteness is checked by whoever reads the sum (the packed values here, the coordinator's sum in shared
        // memory).
        if terms.count > 1 { GradientReducer.reduce(terms, count: dense, into: out) }
        return GradientReducer.reduce(losses)
    }

    /// Scores rows or draws a sampling batch (see ``WireMessage/Work``); the values travel inline.
    ///
    /// - Log-likelihood: split 0, 1, 2 is train, valid, test; mode 0 returns `log p_k(x)` for
    ///   every mask `k` then every row (`[mask][row]`), mode 1 the logit-averaged value per row.
    /// - Sample: batch `task.shard` of `count` samples; method 0 is cached, 1 naive.
    func computeJob(
        _ task: WireMessage.Task,
        configuration c: TrainingConfiguration,
        shared: SharedSlots?
    ) throws -> WireMessage.Result {
        guard task.rowsPerShard.count == 1 else {
            throw ClusterError(.invalidTask, "scoring and sampling take one shard per task")
        }
        let start = ContinuousClock.now
        let dense = ParameterLayout(c.model).count
        switch task.parameters {
        case .inline(let values):
            guard values.count == dense else {
                throw ClusterError(.invalidTask, "\(values.count) parameters arrived for \(dense)")
            }
            denseParameters = values
        case .shared(let slot, let count):
            guard let shared, slot == 0, Int(count) == dense, dense <= shared.slotFloats else {
                throw ClusterError(.invalidTask, "dense parameters in shared memory this worker has not mapped")
            }
            guard shared.holds(0) else {
                throw ClusterError(
                    .sharedMemory,
                    "the shared-memory file \(shared.path) shrank: it no longer holds the parameters"
                )
            }
            // Read whole and finite, the file still whole after the copy (SharedSlots.read).
            guard let values = shared.read(0, count: dense) else {
                guard shared.holds(0) else {
                    throw ClusterError(
                        .sharedMemory,
                        "the shared-memory file \(shared.path) shrank while this "
                            + "worker read the parameters"
                    )
                }
                throw ClusterError(.diverged, "dense parameters in shared memory that are not finite")
            }
            denseParameters = values
        case .sharedCompute:
            throw ClusterError(
                .invalidTask,
                "scoring and sampling take parameters in layout order, not in a mask's compute order"
            )
        case .absent:
            guard denseKey == task.step, denseParameters.count == dense else {
                throw ClusterError(
                    .invalidTask,
                    "a task for job \(task.step) came without parameters this worker does not hold"
                )
            }
        }
        denseKey = task.step
        var values: [Float]
        switch task.work {
        case .gradient:
            preconditionFailure("gradients are computed by compute(_:shared:slot:)")
        case .logLikelihood(let split, let masks, let mode):
            guard let known = DataSplit(rawValue: split) else {
                throw ClusterError(.invalidTask, "unknown split \(split)")
            }
            guard let data = known.rows(of: dataset) else {
                throw ClusterError(.dataMismatch, "no split \(split) in this worker's data")
            }
            guard let first = task.rows.first, let last = task.rows.last, first <= last, Int(last) < data.count,
                task.rows == Array(first...last)
            else {
                throw ClusterError(
                    .invalidTask,
                    "a scoring task needs a contiguous, ascending range of the split's rows"
                )
            }
            guard masks <= Self.maxMasks else {
                throw ClusterError(.invalidTask, "an ensemble of \(masks) masks (at most \(Self.maxMasks))")
            }
            let rows = data.rows(task.rows.map(Int.init))
            var evaluator = Evaluator<Float>(configuration: c.model, distribution: c.distribution, runSeed: c.seed)
            evaluator.kernel = c.kernel
            evaluator.chunkSize = rows.count
            evaluator.betweenPasses = keepAlive
            switch EnsembleMode(wireCode: mode) {
            case .likelihood:
                values = evaluator.maskLogLikelihoods(parameters: denseParameters, data: rows, masks: Int(masks))
                    .flatMap { $0.map { Float($0) } }
            case .logits:
                values = evaluator.logitAveragedLogLikelihoods(
                    parameters: denseParameters,
                    data: rows,
                    masks: Int(masks)
                ).map { Float($0) }
            case nil:
                throw ClusterError(.invalidTask, "unknown ensemble mode \(mode)")
            }
        case .sample(let count, let masks, let seed, let method):
            guard masks <= Self.maxMasks, count <= Self.maxSampleBatch else {
                throw ClusterError(
                    .invalidTask,
                    """
                    a sampling batch of \(count) samples and \(masks) masks (at most \(Self.maxSampleBatch) and \
                    \(Self.maxMasks))
                    """
                )
            }
            guard let m = Sampler<Float>.Method(wireCode: method) else {
                throw ClusterError(.invalidTask, "unknown sampling method \(method)")
            }
            var sampler = Sampler<Float>(configuration: c.model, distribution: c.distribution, runSeed: c.seed)
            sampler.batchSize = Int(count)
            sampler.betweenPasses = keepAlive
            values = sampler.sampleBatch(
                Int(task.shard),
                parameters: denseParameters,
                count: Int(count),
                masks: Int(masks),
                seed: seed,
                method: m
            )
        }
        // Per-mask log-likelihoods are float sums, so Float carries them exactly; samples are floats.
        guard values.allSatisfy(\.isFinite) else {
            throw ClusterError(
                .diverged,
                "values of job \(task.step) that are not finite: the parameters are not finite (training diverged)"
            )
        }
        let micros = (ContinuousClock.now - start).seconds * 1e6
        return WireMessage.Result(
            step: task.step,
            shard: task.shard,
            maskDigest: [UInt8](repeating: 0, count: 16),
            lossSum: 0,
            computeMicroseconds: UInt32(clamping: Int(micros)),
            values: .inline(values),
            ticket: task.ticket
        )
    }
}
