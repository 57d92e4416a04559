import Foundation
import MADE

/// A worker's model side: builds the network from the run's configuration and turns a task
/// (rows, mask seed, packed parameters) into a result (packed gradient, loss, mask digest).
///
/// The masks come from `(run seed, mask seed)` alone (``MaskSet``), so the digest it reports
/// matches the coordinator's exactly when both built the same masks.
public final class ShardComputer {
    public let dataset: Dataset
    public let train: DataMatrix
    public private(set) var configuration: TrainingConfiguration?
    private var engine: GradientEngine?
    private var packings: [UInt64: MaskPacking] = [:]
    private var parametersKey: (step: UInt64, maskSeed: UInt64)?
    private var gradient: [Float] = []

    /// - Throws: when the data set has no training split.
    public init(dataset: Dataset) throws {
        guard let train = dataset.train else {
            throw MADEError(.invalidData, "the data has no training split", path: dataset.source)
        }
        self.dataset = dataset
        self.train = train
    }

    /// The 32-byte fingerprint of this worker's data.
    public var dataFingerprint: [UInt8] { DataFingerprint.bytes(of: dataset) }

    /// Builds the network for the run described by `bytes` (a JSON ``TrainingConfiguration``).
    public func configure(_ bytes: [UInt8]) throws {
        let c: TrainingConfiguration
        do {
            c = try JSONDecoder().decode(TrainingConfiguration.self, from: Data(bytes))
        } catch {
            throw ClusterError(.protocolFailure, "unreadable run configuration: \(error)")
        }
        try c.validate()
        guard c.model.inputCount == train.dimension else {
            throw ClusterError(.protocolFailure, "the run's model takes \(c.model.inputCount) inputs, this data has \(train.dimension)")
        }
        if c != configuration {
            configuration = c
            engine = GradientEngine(configuration: c.model, distribution: c.distribution, runSeed: c.seed, capacity: c.batchSize)
            packings = [:]
            parametersKey = nil
            gradient = [Float](repeating: 0, count: ParameterLayout(c.model).count)
        }
    }

    /// The packing of `maskSeed`'s masks.
    public func packing(_ maskSeed: UInt64) -> MaskPacking {
        if let p = packings[maskSeed] { return p }
        guard let configuration, let engine else { preconditionFailure("ShardComputer: configure first") }
        if packings.count >= 64 { packings.removeAll() }
        let p = MaskPacking(maskSet: engine.maskSet(maskSeed), layout: ParameterLayout(configuration.model))
        packings[maskSeed] = p
        return p
    }

    /// Computes `task`: the packed gradient of the summed NLL of its rows under its mask seed.
    ///
    /// Parameters come inline or from slot 0 of `shared`; with `shared` and `slot` the gradient
    /// is written to that slot and the result says so, otherwise it travels inline.
    ///
    /// - Throws: when the task does not fit the run (rows out of range, too many rows,
    ///   parameters of the wrong size or not finite, or none for this step).
    public func compute(_ task: WireMessage.Task, shared: SharedSlots? = nil, slot: Int? = nil) throws -> WireMessage.Result {
        guard let configuration, let engine else { throw ClusterError(.protocolFailure, "a task arrived before the run's configuration") }
        guard task.rows.count <= configuration.batchSize else {
            throw ClusterError(.protocolFailure, "a task of \(task.rows.count) rows exceeds the batch size \(configuration.batchSize)")
        }
        guard task.rows.allSatisfy({ Int($0) < train.count }) else {
            throw ClusterError(.protocolFailure, "a task names rows beyond the \(train.count) training examples")
        }
        let start = ContinuousClock.now
        let packing = packing(task.maskSeed)
        guard task.parameters.count == packing.count || task.parameters == .absent else {
            throw ClusterError(.protocolFailure, "\(task.parameters.count) parameters arrived for \(packing.count) active ones")
        }
        switch task.parameters {
        case .inline(let packed):
            packed.withUnsafeBufferPointer { engine.begin(packed: $0, packing: packing, maskSeed: task.maskSeed) }
        case .shared(let count):
            guard let shared, Int(count) <= shared.slotFloats else {
                throw ClusterError(.protocolFailure, "parameters in shared memory this worker has not mapped")
            }
            let finite = shared.withSlot(0, count: Int(count)) { slot in
                engine.begin(packed: UnsafeBufferPointer(slot), packing: packing, maskSeed: task.maskSeed)
            }
            guard finite else {
                parametersKey = nil
                throw ClusterError(.protocolFailure, "the shared parameters hold values that are not finite")
            }
        case .absent:
            guard let key = parametersKey, key.step == task.step, key.maskSeed == task.maskSeed else {
                throw ClusterError(.protocolFailure, "a task for step \(task.step) came without parameters this worker does not hold")
            }
        }
        if task.parameters != .absent { parametersKey = (task.step, task.maskSeed) }
        let loss = engine.gradient(data: train, indices: task.rows[...], into: &gradient)
        let payload: FloatPayload
        if let shared, let slot, packing.count <= shared.slotFloats {
            shared.withSlot(slot, count: packing.count) { packing.pack(gradient, into: $0) }
            payload = .shared(count: UInt32(packing.count))
        } else {
            payload = .inline(packing.pack(gradient))
        }
        let micros = (ContinuousClock.now - start).seconds * 1e6
        return WireMessage.Result(step: task.step, shard: task.shard, maskDigest: packing.digest, lossSum: loss,
                                  computeMicroseconds: UInt32(clamping: Int(micros)), gradient: payload)
    }
}
