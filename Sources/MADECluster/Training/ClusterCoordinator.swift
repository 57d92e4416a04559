import Foundation
import Logging
import MADE
import OrderedCollections

/// The coordinator's socket loop: binds a ROUTER, welcomes workers, hands out each step's
/// shards, and sums their gradients in the fixed tree order (unpacked from the socket, or where
/// they lie in shared memory).
///
/// It drives a ``CoordinatorStateMachine`` with what arrives and carries out what it decides.
/// The optimizer, schedule and checkpoints stay with the MADE ``Trainer``, which calls
/// ``computeStep(_:parameters:)`` once per step through ``Trainer/drive(until:compute:)``.
public final class ClusterCoordinator {
    public struct Options: Sendable {
        /// Where to listen, such as `tcp://127.0.0.1:0` (port 0: any free port).
        public var bind: String
        /// Write the endpoint workers should dial to this file once bound.
        public var endpointFile: String?
        /// The host to write in the endpoint file when binding every interface.
        public var advertisedHost: String?
        public var security: ClusterSecurity.Server?
        /// Listen beyond loopback without CURVE; refused otherwise.
        public var allowInsecure = false
        /// Offer workers on this host a shared-memory file for parameters and gradients.
        public var sharedMemory = true
        /// Most workers that get a shared-memory slot over the run (slots are never reused).
        public var sharedMemorySlots = 256
        public var heartbeatInterval: UInt64 = 1000
        public var heartbeatTimeout: UInt64 = 10_000
        public var taskTimeout: UInt64 = 60_000
        /// Give up when no worker has been registered for this long (ms) while work is waiting.
        public var idleTimeout: UInt64 = 120_000
        /// Most values one result of an evaluation or sampling job may carry, when more than the
        /// run's own need (see ``largestResult``): an ensemble or a batch bigger than the
        /// configuration's.
        public var largestJobResult = 0
        /// How a task whose shards train several masks travels over the socket.
        public var mixedMaskPacking = MixedMaskPacking.union
        /// A simulation, to measure the system's own overhead: the run tells its workers to
        /// sleep this long per shard instead of computing, and to answer zero gradients (see
        /// ``ShardComputer/simulatedMicrosecondsPerShard``). The parameters it trains mean nothing.
        public var simulatedMicrosecondsPerShard: UInt32?

        public init(bind: String) { self.bind = bind }
    }

    /// How the inline parameters and gradients of a task of several masks are packed.
    public enum MixedMaskPacking: String, Sendable, CaseIterable {
        /// By the union of the task's masks.
        case union
        /// Not at all: every parameter.
        case dense
    }

    /// Raised out of ``computeStep(_:parameters:)`` when `shouldStop` becomes true mid-step.
    public struct Interrupted: Error {}

    public let options: Options
    public let configuration: TrainingConfiguration
    private let layout: ParameterLayout
    public private(set) var endpoint = ""
    public var logger: Logger
    /// Checked while waiting for results.
    public var shouldStop: () -> Bool = { false }
    /// Called about every 100 ms while work waits on the workers; what it throws ends the work.
    /// A ``ClusterSession`` reports its worker processes that ended here
    /// (``workerProcessEnded(name:processID:reason:)``), and stops the work once none is left.
    public var watch: () throws -> Void = {}
    /// Bytes sent and received on the ROUTER socket.
    public private(set) var bytesSent = 0
    public private(set) var bytesReceived = 0

    /// Bytes exchanged with one host.
    public struct Traffic: Sendable, Equatable {
        public var sent = 0
        public var received = 0
        public var total: Int { sent + received }
    }

    /// Bytes exchanged with the registered workers, by their host: the peer's IP address for
    /// TCP, `local` for other transports.
    public private(set) var trafficByHost: [String: Traffic] = [:]
    private var hostOfPeer: [[UInt8]: String] = [:]

    /// Compute and the rest (queues, transfer, scheduling) summed over every result of a
    /// training step since the coordinator started: ``lastStepTimings`` for the whole run.
    public struct TimingTotals: Sendable, Equatable {
        public var results = 0
        public var computeMilliseconds = 0.0
        public var waitMilliseconds = 0.0
        /// Gradient steps, the time from handing out a step's tasks to holding every result,
        /// and the time this process then spent summing the results (the serial part of an
        /// exchange; Adam comes after it, in the trainer).
        public var gradientSteps = 0
        public var resultsMilliseconds = 0.0
        public var sumMilliseconds = 0.0
    }

    public private(set) var timingTotals = TimingTotals()

    /// What one worker did in the last step: compute time it reported, and the rest of the time
    /// from sending it a task to holding its result (queues, transfer, scheduling).
    public struct StepTiming: Sendable {
        public var worker: String
        public var shards = 0
        public var computeMilliseconds = 0.0
        public var waitMilliseconds = 0.0
    }

    /// The values of the last gradient step's tasks packed as they were handed out, on average
    /// per task: what a gradient over the socket holds (in shared memory it is dense).
    public private(set) var lastStepPackedValues = 0.0

    /// Per worker, in order of first result, the timings of the last completed step.
    public private(set) var lastStepTimings: [StepTiming] = []
    private var stepTimings: OrderedDictionary<String, StepTiming> = [:]
    private var taskSentAt: [[UInt8]: ContinuousClock.Instant] = [:]

    private var machine: CoordinatorStateMachine
    private let context: ZMQContext
    private let router: ZMQSocket
    private var zap: ZAPHandler?
    private let clock = MillisecondClock()
    private let packings: MaskPacking.Cache
    private var shared: SharedSlots?
    /// Threads for the coordinator's passes over the parameters, which run while workers wait.
    public var threads = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// The dense gradient handed to Adam; its masked-out entries stay 0 while the mask seed stays.
    private var denseGradient: [Float] = []
    private var denseGradientMasks: [UInt64]?
    private var names: [[UInt8]: String] = [:]
    /// Large frames arrive in pieces; only registered workers may send them.
    private var fragments = FragmentAssembler<[UInt8]>(maxBytes: 0)
    private var fragmentSequence: UInt32 = 0
    private var lastKeepAlive: UInt64 = 0

    /// Binds and prepares; workers may connect as soon as this returns.
    /// - Parameter dataFingerprint: what workers' data must hash to; nil accepts any (sampling).
    public init(
        configuration: TrainingConfiguration,
        dataFingerprint: [UInt8]?,
        options: Options,
        logger: Logger
    ) throws {
        self.options = options
        self.configuration = configuration
        self.layout = ParameterLayout(configuration.model)
        self.packings = MaskPacking.Cache(configuration: configuration.model, runSeed: configuration.seed)
        self.logger = logger
        let configurationBytes = try Self.runConfiguration(
            configuration,
            simulatedMicrosecondsPerShard: options.simulatedMicrosecondsPerShard
        )
        let runID = ClusterCoordinator.runID(configuration: configurationBytes, dataFingerprint: dataFingerprint ?? [])
        var settings = CoordinatorStateMachine.Settings(
            runID: runID,
            dataFingerprint: dataFingerprint,
            configuration: configurationBytes
        )
        settings.heartbeatInterval = CoordinatorStateMachine.Settings.heartbeatInterval(
            wanted: options.heartbeatInterval,
            timeout: options.heartbeatTimeout
        )
        settings.heartbeatTimeout = options.heartbeatTimeout
        settings.taskTimeout = options.taskTimeout
        settings.idleTimeout = options.idleTimeout
        if options.sharedMemory, case let host = SharedSlots.hostID(for: options.bind), !host.isEmpty {
            do {
                // A parameter region per further mask of a step of several masks (sparse kernel, up to 8 masks).
                let masks = configuration.masksPerStep
                let regions =
                    configuration.kernel == .sparse && masks > 1 && masks - 1 <= WireFormat.Limits().maxParameterSlots
                    ? masks - 1 : 0
                let slots = try SharedSlots.create(
                    slotFloats: layout.count,
                    workerSlots: options.sharedMemorySlots,
                    parameterRegions: regions
                )
                shared = slots
                settings.hostID = host
                settings.sharedMemory = .init(
                    path: slots.path,
                    slotFloats: UInt32(slots.slotFloats),
                    slots: UInt32(options.sharedMemorySlots),
                    parameterSlots: slots.parameterSlots.dropFirst().map { UInt32($0) }
                )
            } catch {
                logger.warning(
                    "no shared memory; parameters and gradients go over the socket",
                    metadata: ["reason": "\(error)"]
                )
            }
        }
        machine = CoordinatorStateMachine(settings: settings)

        let parameterCount = layout.count
        guard parameterCount <= WireFormat.Limits().maxFloats else {
            throw ClusterError(
                .tooLarge,
                """
                the model has \(parameterCount) parameters; a cluster carries at most \
                \(WireFormat.Limits().maxFloats) per message
                """
            )
        }
        context = try ZMQContext()
        if let security = options.security {
            zap = try ZAPHandler(context: context, authorizedKeys: security.authorized)
        } else if !Endpoint.isLocal(options.bind) && !options.allowInsecure {
            throw ClusterError(
                .security,
                """
                refusing to listen on \(options.bind) without CURVE keys: pass --keys DIR (made keygen DIR), or \
                --insecure on a trusted network
                """
            )
        }
        router = try ZMQSocket(context: context, kind: .router)
        // No peer, authenticated or not, makes this process hold a frame larger than the run's own largest.
        largestResult = max(
            parameterCount,
            options.largestJobResult,
            Self.validationChunk * configuration.evaluationMasks,
            Self.sampleBatch * configuration.model.inputCount
        )
        guard largestResult <= WireFormat.Limits().maxFloats else {
            throw ClusterError(
                .tooLarge,
                "results of \(largestResult) values exceed the \(WireFormat.Limits().maxFloats) a message may carry"
            )
        }
        // Mandatory routing: a heartbeat to a worker whose connection libzmq tore down finds no
        // route, which is how the machine learns the worker is gone (`connectionLost`).
        try router.set(
            .routerMandatory(true),
            .linger(milliseconds: 0),
            .sendHighWaterMark(0),
            .receiveHighWaterMark(0),
            .maxMessageSize(Int64(MessageFragments.largestMessage))
        )
        try router.set(
            ConnectionHeartbeat.options(interval: settings.heartbeatInterval, timeout: settings.heartbeatTimeout)
        )
        fragments = FragmentAssembler(maxBytes: Self.frameBytes(values: largestResult))
        if let security = options.security, let zap {
            try router.configureCurveServer(keyPair: security.keyPair, authenticator: zap)
        }
        try router.bind(Endpoint.zeroMQSpelling(options.bind))
        endpoint = router.lastEndpoint
        if let host = Endpoint.tcpHost(endpoint), host == "0.0.0.0" || host == "::" {
            let advertised = options.advertisedHost ?? ProcessInfo.processInfo.hostName
            endpoint = endpoint.replacingOccurrences(
                of: "//\(host.contains(":") ? "[\(host)]" : host):",
                with: "//\(Endpoint.bracketed(advertised)):"
            )
        }
        if !settings.hostID.isEmpty {
            // The proof in the host id is bound to the port now chosen (see SharedSlots.hostID(for:)).
            settings.hostID = SharedSlots.hostID(for: endpoint)
            machine = CoordinatorStateMachine(settings: settings)
        }
        if let file = options.endpointFile {
            try AtomicFile.write(endpoint + "\n", to: file)
        }
        logger.info(
            "coordinator listening",
            metadata: [
                "endpoint": "\(endpoint)", "curve": "\(options.security != nil)",
                "run": "\(String(runID, radix: 16))",
            ]
        )
    }

    deinit {
        scratchBuffers.values.forEach { $0.deallocate() }
        turnedBuffers.values.forEach { $0.deallocate() }
        zap = nil
        router.close()
        context.shutdown()
    }

    /// What a worker is told of the run (the `welcome`'s configuration): the training
    /// configuration's canonical JSON, and in a simulation the time to sleep per shard
    /// (`simulatedComputeMicrosecondsPerShard`), so a simulated run has a run id of its own.
    static func runConfiguration(
        _ configuration: TrainingConfiguration,
        simulatedMicrosecondsPerShard: UInt32?
    ) throws -> [UInt8] {
        let bytes = try configuration.canonicalJSON()
        guard let simulated = simulatedMicrosecondsPerShard else { return bytes }
        guard var object = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw ClusterError(.invalidTask, "the run's configuration is not a JSON object")
        }
        object[ShardComputer.simulationKey] = Int(simulated)
        return Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }

    /// The run id: the first 8 bytes of SHA-256 over the configuration and the data fingerprint.
    public static func runID(configuration: [UInt8], dataFingerprint: [UInt8]) -> UInt64 {
        let digest = SHA256.hash(configuration + dataFingerprint)
        return digest.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Most values one result may carry in this run: the packed gradient, a validation chunk's
    /// per-mask values, a sampling batch, or a job's larger result (``Options/largestJobResult``).
    /// A frame beyond ``frameBytes(values:)`` of it is refused. ZeroMQ messages are at most one
    /// fragment (`ZMQ_MAXMSGSIZE`), and only a registered worker may send a frame in fragments,
    /// so an unauthenticated peer costs at most one fragment per message.
    public private(set) var largestResult = 0

    /// Rows per validation chunk and samples per sampling batch, as the MADE library cuts them.
    static let validationChunk = 1000
    static let sampleBatch = 64

    /// The largest frame that carries `values` floats: the values, and the message's header,
    /// rows and names (each string at most ``WireFormat/Limits/maxStringBytes``).
    public static func frameBytes(values: Int) -> Int {
        4 * values + 4 * WireFormat.Limits().maxStringBytes + (1 << 16)
    }

    public var counters: CoordinatorStateMachine.Counters { machine.counters }
    public var workerCount: Int { machine.workerCount }
    /// Workers computing for this coordinator: a relay counts its workers.
    public var capacity: Int { machine.capacity }
    /// Clients the ZAP handler refused (CURVE keys not authorized).
    public var refusedClients: Int { zap?.rejected ?? 0 }

    private var now: UInt64 { clock.now }

    // MARK: Steps

    /// Has the workers compute every shard of `plan` with `parameters`, and returns the sum of
    /// their gradients (tree order, dense) and of their losses.
    ///
    /// Workers on other hosts get packed parameters and send packed gradients. Workers on this
    /// host read the masked parameters in slot 0 and write dense gradients into their own
    /// slots, which are summed where they lie unless the worker was given another task first.
    ///
    /// When the step's shards train several masks, each task names the mask of each of its
    /// shards. Over the socket a task is packed by the union of its own shards' masks (a block
    /// of one mask as in a step of one mask; a block of shards of different masks sums to +0
    /// outside their union), unless the worker already holds this step's parameters packed by
    /// masks that cover the task's. Slot 0 holds the parameters masked by the union of the
    /// step's masks, dense; each worker masks them again for each shard's own mask.
    /// The masks whose union packs a step's (or a task's) values: its distinct mask seeds in order of first
    /// appearance, or none (every parameter, dense) for a step of several masks sent dense by
    /// choice or past the wire's limit on packing masks (64: their union is all but dense by then).
    public static func packingSeeds(for maskSeeds: [UInt64], mixed: MixedMaskPacking) -> [UInt64] {
        var seeds: [UInt64] = []
        for seed in maskSeeds where !seeds.contains(seed) { seeds.append(seed) }
        let sendDense = seeds.count > 1 && (mixed == .dense || seeds.count > WireFormat.Limits().maxPackingMasks)
        return sendDense ? [] : seeds
    }

    public func computeStep(_ plan: StepPlan, parameters: [Float]) throws -> (gradient: [Float], lossSum: Double) {
        try step(plan, parameters: .layout(parameters))
    }

    /// What ``computeStep(_:held:)`` asks of a trainer that holds its parameters, or nil when it
    /// does not pay (it needs the sparse kernel and shared memory for the workers on this host):
    /// the held Adam step copies the masked parameters straight into slot 0, where the next step's
    /// workers read them.
    ///
    /// In a step of several masks (up to 8) each further mask has a region of its own, which the
    /// held Adam step fills in that mask's compute order: the workers of every mask then read
    /// their parameters in place and answer in their own mask's order, which the sum turns into
    /// the held one.
    public var heldOffer: Trainer.HeldOffer? {
        guard configuration.kernel == .sparse, let shared, !sharedMemoryLost, layout.count <= shared.slotFloats,
            shared.holds(0)
        else { return nil }
        if regionsReserved == nil {
            // Reserved once, all or none: a full /dev/shm leaves steps of several masks in layout order.
            let regions = Array(shared.parameterSlots.dropFirst())
            regionsReserved = regions.allSatisfy { shared.reserve($0) } ? regions : []
        }
        let regions = regionsReserved!.filter { shared.holds($0) }
        // Only while every task is one shard: consecutive shards train different masks, so a block of
        // several would go inline (its masks' regions are not one), where today's path keeps it in slot 0.
        var probe = CoordinatorStateMachine.WorkPlan(
            step: 0,
            maskSeed: 0,
            maskDigest: nil,
            shards: Array(repeating: [], count: configuration.shards),
            resultCounts: Array(repeating: 0, count: configuration.shards)
        )
        probe.maxShardsPerTask = Self.maxShardsPerTask
        let oneShardTasks = machine.blockSize(for: probe) == 1
        return Trainer.HeldOffer(
            copyInto: UnsafeMutableBufferPointer(start: shared.pointer(0), count: layout.count),
            otherCopies: regions.count == regionsReserved!.count && oneShardTasks
                ? regions.map { UnsafeMutableBufferPointer(start: shared.pointer($0), count: layout.count) } : []
        )
    }

    /// The further parameter slots whose memory is reserved (nil: not tried yet).
    private var regionsReserved: [Int]?

    /// ``computeStep(_:parameters:)`` for a step of one mask whose parameters the trainer holds
    /// in that mask's compute order (``Trainer/drive(until:offeringHeld:compute:)``): slot 0
    /// takes them as they are, and the gradient comes back in that order, so that nothing here
    /// moves a weight either (workers on other hosts still get and send theirs in layout order).
    public func computeStep(
        _ plan: StepPlan,
        held: Trainer.HeldParameters
    ) throws -> (gradient: [Float], lossSum: Double) {
        precondition(
            plan.maskSeeds.allSatisfy { seed in
                seed == held.maskSeed || held.others.contains { $0.maskSeed == seed }
            },
            "computeStep: held parameters of other masks"
        )
        return try step(plan, parameters: .held(held))
    }

    /// A step's parameters: in layout order, or held in the compute order of its one mask.
    private enum Parameters {
        case layout([Float])
        case held(Trainer.HeldParameters)
    }

    private func step(_ plan: StepPlan, parameters: Parameters) throws -> (gradient: [Float], lossSum: Double) {
        let packingSeeds = Self.packingSeeds(for: plan.maskSeeds, mixed: options.mixedMaskPacking)
        let packing = packings.packing(union: packingSeeds)
        let threads = self.threads
        let layout = self.layout
        // A step of one mask under the sparse kernel goes through shared memory in that mask's
        // compute order: the workers on this host then move no weight, and this process moves
        // each once, on every core (none when the trainer holds them so).
        let blocks: BlockPartition?
        let heldOrder: Bool
        switch parameters {
        case .layout:
            blocks =
                configuration.kernel == .sparse && packingSeeds.count == 1 && shared != nil && !sharedMemoryLost
                ? packings.maskSet(packingSeeds[0]).blocks : nil
            heldOrder = false
        case .held(let held):
            blocks = held.blocks
            heldOrder = true
        }
        // A step of several masks held in one's compute order: each mask's parameters in a region of
        // its own, in its own order (none when shared memory is gone: then every task goes inline).
        var regions: [UInt64: StepParameters.Region] = [:]
        var heldSeed: UInt64?
        if case .held(let held) = parameters, !held.others.isEmpty {
            heldSeed = held.maskSeed
            if shared != nil, !sharedMemoryLost, let reserved = regionsReserved, reserved.count >= held.others.count {
                let count = layout.count
                func region(_ slot: Int, _ values: UnsafeBufferPointer<Float>) -> StepParameters.Region {
                    StepParameters.Region(slot: slot) { out in
                        // Where the last held Adam step left them, unless the trainer put them elsewhere.
                        if values.baseAddress != UnsafePointer(out.baseAddress!) {
                            out.baseAddress!.update(from: values.baseAddress!, count: count)
                        }
                    }
                }
                regions[held.maskSeed] = region(0, held.values)
                for (n, other) in held.others.enumerated() {
                    regions[other.maskSeed] = region(reserved[n], other.values)
                }
            }
        }
        func fillShared(_ out: UnsafeMutableBufferPointer<Float>) {
            switch parameters {
            case .layout(let values):
                guard let blocks else { return packing.mask(values, into: out, threads: threads) }
                values.withUnsafeBufferPointer {
                    blocks.gatherMasked($0.baseAddress!, into: out.baseAddress!, layout: layout, threads: threads)
                }
            case .held(let held):
                // Where the last held Adam step left them, unless the trainer took them up since.
                if held.values.baseAddress != UnsafePointer(out.baseAddress!) {
                    out.baseAddress!.update(from: held.values.baseAddress!, count: held.values.count)
                }
            }
        }
        func fill(_ taskPacking: MaskPacking, _ out: UnsafeMutableBufferPointer<Float>) {
            switch parameters {
            case .layout(let values):
                taskPacking.pack(values, into: out, threads: threads)
            case .held(let held):
                taskPacking.pack(held.layoutParameters(), into: out, threads: threads)
            }
        }
        let lossSum = try computeGradients(
            step: UInt64(plan.step),
            maskSeeds: plan.maskSeeds,
            packingSeeds: packingSeeds,
            packing: packing,
            shards: plan.shards.map { Array($0) },
            packed: false,
            computeOrder: blocks,
            inComputeOrder: heldOrder,
            regions: regions,
            heldSeed: heldSeed,
            fillShared: fillShared,
            fill: fill
        ).lossSum
        return (denseGradient, lossSum)
    }

    /// The packed sizes of the packings a task of a step of `maskSeeds` may have besides the
    /// step's (`packingSeeds`): the union of the masks of each block of `blockSize` shards (the
    /// state machine's cut of the step now; the last block may be shorter), where it keeps fewer
    /// parameters than the step's. Empty for a step of one mask. A step cut otherwise later (a
    /// worker left) packs the blocks missing here as the step.
    private func taskPackings(maskSeeds: [UInt64], packingSeeds: [UInt64], blockSize: Int) -> [[UInt64]: Int] {
        guard packingSeeds.count != 1, Set(maskSeeds).count > 1 else { return [:] }
        var counts: [[UInt64]: Int] = [:]
        for first in stride(from: 0, to: maskSeeds.count, by: blockSize) {
            let own = Self.packingSeeds(
                for: Array(maskSeeds[first..<min(first + blockSize, maskSeeds.count)]),
                mixed: options.mixedMaskPacking
            )
            if !own.isEmpty, Set(own) != Set(packingSeeds), counts[own] == nil {
                counts[own] = packings.packing(union: own).count
            }
        }
        return counts
    }

    /// Runs a gradient step of `shards` through the workers and sums their gradients in the
    /// fixed tree order: into ``denseGradient``, or, with `packed`, as values packed by
    /// `packingSeeds` when every result came packed so (nil otherwise: the sum is then in
    /// ``denseGradient``). The parameters go out as `fill` packs them for a task's packing, or
    /// as `fillShared` writes them dense into shared slot 0: in the compute order of
    /// `computeOrder` (the blocks of the step's one mask) when given, in which the workers on
    /// this host then answer too; the dense sum is in that order with `inComputeOrder`, else in
    /// layout order.
    private func computeGradients(
        step: UInt64,
        maskSeeds: [UInt64],
        packingSeeds: [UInt64],
        packing: MaskPacking,
        shards: [[Int32]],
        packed: Bool,
        computeOrder blocks: BlockPartition? = nil,
        inComputeOrder heldOrder: Bool = false,
        regions: [UInt64: StepParameters.Region] = [:],
        heldSeed: UInt64? = nil,
        fillShared: @escaping (UnsafeMutableBufferPointer<Float>) -> Void,
        fill: @escaping (MaskPacking, UnsafeMutableBufferPointer<Float>) -> Void
    ) throws
        -> (packedSum: [Float]?, lossSum: Double)
    {
        let threads = self.threads
        let packings = self.packings
        let inline = { (seeds: [UInt64]) -> (count: Int, fill: (UnsafeMutableBufferPointer<Float>) -> Void) in
            let taskPacking = packings.packing(union: seeds)
            return (taskPacking.count, { fill(taskPacking, $0) })
        }
        // A step held with several masks and no regions (shared memory gone) goes inline.
        let stepParameters = StepParameters(
            sharedCount: packing.denseCount,
            shared: heldSeed != nil && regions.isEmpty ? nil : shared,
            computeOrder: blocks != nil,
            regions: regions,
            fillShared: fillShared,
            inline: inline
        )
        var machinePlan = CoordinatorStateMachine.WorkPlan(
            step: step,
            maskSeeds: maskSeeds,
            packingSeeds: packingSeeds,
            maskDigests: maskSeeds.map { packings.packing($0).digest },
            gradientCount: packing.count,
            denseCount: shared == nil || sharedMemoryLost ? nil : packing.denseCount,
            shards: shards
        )
        machinePlan.sharedResultsInComputeOrder = blocks != nil
        // A worker with several shards of the step sums them itself (a whole subtree) and answers once.
        machinePlan.maxShardsPerTask = Self.maxShardsPerTask
        machinePlan.taskPackings = taskPackings(
            maskSeeds: maskSeeds,
            packingSeeds: packingSeeds,
            blockSize: machine.blockSize(for: machinePlan)
        )
        if !regions.isEmpty {
            machinePlan.sharedRegions = maskSeeds.reduce(into: []) { if !$0.contains($1) { $0.append($1) } }
            for seed in machinePlan.sharedRegions where machinePlan.taskPackings[[seed]] == nil {
                machinePlan.taskPackings[[seed]] = packings.packing(seed).count
            }
        }
        let turning = heldSeed.map { held in { (seed: UInt64) in seed == held ? nil : self.relativeOrder(held, seed) } }
        let handedOut = ContinuousClock.now
        var (results, inPlace) = try execute(machinePlan, parameters: stepParameters)
        let summing = ContinuousClock.now
        defer {
            timingTotals.gradientSteps += 1
            timingTotals.resultsMilliseconds += (summing - handedOut).seconds * 1000
            timingTotals.sumMilliseconds += (ContinuousClock.now - summing).seconds * 1000
        }
        let packedCounts = resultPackings.values.map { packings.packing(union: $0).count }
        lastStepPackedValues = Double(packedCounts.reduce(0, +)) / Double(max(1, packedCounts.count))
        /// Whether an accepted gradient lay in a shared-memory file that shrank (before it was
        /// copied out, or before or while it was summed where it lies).
        func lost() -> Bool {
            stepValuesLost
                || results.contains { result in
                    guard let slot = result.values.sharedSlot, inPlace[slot] == result.shard else { return false }
                    return !sharedIntact(Int(slot))
                }
        }
        /// The step computed again over the socket: the same bits, as every shard is recomputed.
        func recompute() throws {
            logger.warning(
                "recomputing a step whose gradients were lost with the shared-memory file",
                metadata: ["step": "\(step)"]
            )
            stepValuesLost = false
            machinePlan.sharedResultCount = nil
            machinePlan.sharedResultsInComputeOrder = false
            machinePlan.sharedRegions = []
            (results, inPlace) = try execute(
                machinePlan,
                parameters: StepParameters(
                    sharedCount: packing.denseCount,
                    shared: nil,
                    computeOrder: false,
                    fillShared: { _ in },
                    inline: inline
                )
            )
        }
        if lost() { try recompute() }
        let lossSum = { GradientReducer.reduce(results.map(\.lossSum)) }
        if packed, var gradients = inlineGradients(results, packedBy: packingSeeds) {
            GradientReducer.reduce(&gradients, threads: threads)
            denseGradientMasks = nil  // the dense buffer no longer holds what it held
            return (gradients[0], lossSum())
        }
        var finite = sum(
            results,
            inPlace: inPlace,
            packing: packing,
            packingSeeds: packingSeeds,
            blocks: blocks,
            inComputeOrder: heldOrder,
            maskSeeds: maskSeeds,
            turning: turning
        )
        // The file may shrink while the sum reads the slots: the zero pages read then (see
        // SharedSlots) are found here, and the step is computed again over the socket.
        if lost() {
            try recompute()
            finite = sum(
                results,
                inPlace: inPlace,
                packing: packing,
                packingSeeds: packingSeeds,
                blocks: blocks,
                inComputeOrder: heldOrder,
                maskSeeds: maskSeeds,
                turning: turning
            )
        }
        guard finite else {
            denseGradientMasks = nil
            throw ClusterError(
                .diverged,
                "the gradient of step \(step) is not finite: a worker on this "
                    + "host wrote values that are not finite, or training diverged"
            )
        }
        // Its +0 entries are those of the masks' layout order only when it is in that order.
        denseGradientMasks = heldOrder ? nil : packingSeeds
        return (nil, lossSum())
    }

    /// The inline gradients of `results`, each packed by the union of `seeds`' masks: as it came
    /// when packed so, else spread from its task's packing, which keeps no parameter that one
    /// drops, with +0 at the rest: the values a worker would have sent packed so, since a
    /// gradient is +0 outside its shards' masks. Nil when a result is not inline or cannot be
    /// spread so.
    private func inlineGradients(_ results: [WireMessage.Result], packedBy seeds: [UInt64]) -> [[Float]]? {
        var gradients: [[Float]] = []
        gradients.reserveCapacity(results.count)
        for result in results {
            guard let values = result.values.inlineValues else { return nil }
            let own = resultPackings[result.ticket] ?? seeds
            if own == seeds {
                gradients.append(values)
                continue
            }
            let key = [own, seeds]
            if spreadPositions[key] == nil {
                if spreadPositions.count >= 16 { spreadPositions = [:] }
                spreadPositions[key] = packings.packing(union: own).positions(in: packings.packing(union: seeds))
            }
            guard let positions = spreadPositions[key]!, positions.count == values.count else { return nil }
            let count = packings.packing(union: seeds).count
            gradients.append(MaskPacking.spread(values, positions: positions, count: count))
        }
        return gradients
    }

    /// Where the values of one packing lie among those of a wider one, by the seeds of both
    /// (``MaskPacking/positions(in:)``); nil when it is not wider.
    private var spreadPositions: [[[UInt64]]: [Int32]?] = [:]

    /// Sums the gradients of `results` into ``denseGradient`` in the fixed tree order: packed
    /// ones unpacked (each by its task's packing), the others read in their slots (`inPlace`) or
    /// in the scratch buffers they were copied to. Returns whether the sum is finite (checked for
    /// dense sums only; packed values were checked as they arrived). With `blocks` (those of the
    /// step's one mask) the results in shared memory are in that mask's compute order and the
    /// inline ones are turned into it; the sum comes out in compute order with `inComputeOrder`,
    /// else in layout order.
    ///
    /// Results all inline are summed packed (by their one packing, or each spread into the
    /// step's when their tasks were packed apart) and unpacked once. The bits are the same
    /// either way: an entry a packing leaves out is +0 in that gradient (its shards' masks drop
    /// it), which is what spreading and unpacking write there.
    private func sum(
        _ results: [WireMessage.Result],
        inPlace: [UInt32: UInt32],
        packing: MaskPacking,
        packingSeeds: [UInt64],
        blocks: BlockPartition?,
        inComputeOrder: Bool,
        maskSeeds: [UInt64] = [],
        turning: ((UInt64) -> RelativeOrder?)? = nil
    ) -> Bool {
        let threads = self.threads
        let layout = self.layout
        let dense = packing.denseCount
        if denseGradient.count != dense { denseGradient = [Float](repeating: 0, count: dense) }
        let resultSeeds = results.map { resultPackings[$0.ticket] ?? packingSeeds }
        // Packed alike, or each spread into the step's packing (tasks packed by their own masks).
        let alike = resultSeeds.allSatisfy({ $0 == resultSeeds.first })
        let seeds = alike ? resultSeeds.first ?? packingSeeds : packingSeeds
        if var gradients = inlineGradients(results, packedBy: seeds) {
            GradientReducer.reduce(&gradients, threads: threads)
            packings.packing(union: seeds).unpack(
                gradients[0],
                into: &denseGradient,
                zeroing: denseGradientMasks != seeds,
                threads: threads
            )
            if inComputeOrder, let blocks {
                denseGradient.withUnsafeMutableBufferPointer {
                    blocks.permute($0.baseAddress!, layout: layout, toCompute: true, threads: threads)
                }
            }
            return true
        } else {
            // Dense sums: masked-out entries are +0 in every term, so they stay +0. With the step in
            // compute order every term is in it (inline ones are turned), and so is the sum until
            // it is turned back into layout order, once.
            var terms: [UnsafeMutablePointer<Float>] = []
            // In a step of several masks a result in a slot is in its own mask's compute order: how
            // that order lies in the held one, per term (nil: in the held order).
            var orders: [RelativeOrder?] = []
            for (result, seeds) in zip(results, resultSeeds) {
                let s = Int(result.shard)  // the task's first shard: the key of its slot's copy and of its scratch
                var order: RelativeOrder?
                switch result.values {
                case .shared, .sharedCompute:
                    let slot = result.values.sharedSlot!
                    // In place unless copied out since.
                    terms.append(inPlace[slot] == result.shard ? shared!.pointer(Int(slot)) : scratch(s))
                    if case .sharedCompute = result.values { order = turning?(maskSeeds[s]) ?? nil }
                case .inline(let packed):
                    let out = UnsafeMutableBufferPointer(start: scratch(s), count: dense)
                    let taskPacking = packings.packing(union: seeds)
                    packed.withUnsafeBufferPointer { taskPacking.unpack($0, into: out, threads: threads) }
                    blocks?.permute(out.baseAddress!, layout: layout, toCompute: true, threads: threads)
                    terms.append(out.baseAddress!)
                case .absent:
                    preconditionFailure("the state machine accepts no result without values")
                }
                orders.append(order)
            }
            return denseGradient.withUnsafeMutableBufferPointer {
                let out = $0.baseAddress!
                var finite: Bool
                if turning == nil {
                    finite = GradientReducer.reduce(terms, count: dense, into: out, threads: threads)
                } else {
                    finite = sumTurning(
                        terms,
                        orders: orders,
                        keys: results.map { Int($0.shard) },
                        count: dense,
                        into: out
                    )
                }
                if !inComputeOrder { blocks?.toLayoutMasked(out, layout: layout, threads: threads) }
                return finite
            }
        }
    }

    /// The tree sum of `terms` in the held compute order when some are in another mask's
    /// (`orders`): the first level adds each pair with the term of another order read through
    /// its permutation (``RelativeOrder/add(_:turned:into:layout:threads:)``; addition is
    /// commutative, so either side may be the turned one), into buffers of ours (`keys` name
    /// them); the later levels as ``GradientReducer/reduce(_:count:into:threads:partials:)``,
    /// which is the same tree over the pairs. No term is written: a worker's slot keeps
    /// exactly its gradient. Returns whether the sum is finite.
    private func sumTurning(
        _ terms: [UnsafeMutablePointer<Float>],
        orders: [RelativeOrder?],
        keys: [Int],
        count: Int,
        into out: UnsafeMutablePointer<Float>
    ) -> Bool {
        let threads = self.threads
        let layout = self.layout
        let n = terms.count
        var pairs: [UnsafeMutablePointer<Float>] = []
        var finite = true
        for i in stride(from: 0, to: n, by: 2) {
            let target = n == 2 ? out : turned(keys[i])
            guard i + 1 < n else {
                if let order = orders[i] {
                    order.turn(terms[i], into: target, layout: layout, threads: threads)
                    pairs.append(target)
                } else {
                    pairs.append(terms[i])
                }
                continue
            }
            var (a, b) = (terms[i], terms[i + 1])
            var order = orders[i + 1]
            if order == nil, let first = orders[i] {
                (a, b) = (b, a)
                order = first
            } else if let first = orders[i], order != nil {
                first.turn(a, into: target, layout: layout, threads: threads)
                a = target
            }
            if let order {
                finite = order.add(a, turned: b, into: target, layout: layout, threads: threads)
            } else {
                finite = GradientReducer.reduce([a, b], count: count, into: target, threads: threads)
            }
            pairs.append(target)
        }
        if n <= 2 {
            if n == 1 { finite = GradientReducer.reduce(pairs, count: count, into: out, threads: threads) }
            return finite
        }
        // Every pair's sum is in a buffer of ours (a lone last term is only read): the tree goes on in them.
        return GradientReducer.reduce(pairs, count: count, into: out, threads: threads)
    }

    /// Has this coordinator's workers compute `task`, a task of the coordinator upstream, and
    /// returns its result as one worker would: how a relay (``RelayComputer``) serves its host.
    ///
    /// A gradient task's block of shards becomes a step of its own with the same rows and masks,
    /// numbered from 0: the block is a whole aligned subtree of the upstream tree, so the tree
    /// over its shards is that subtree and the sum is the one the upstream coordinator's tree
    /// would have made. Its parameters come packed (or not at all, for a further block of a step
    /// whose parameters came with an earlier one): workers on this host get them once, dense in
    /// slot 0, the others packed. The answer goes up packed, with the losses summed in the same
    /// order and the digest of the block's masks. A scoring or sampling task goes to one worker
    /// as it is, its dense parameters kept for the job's further tasks.
    ///
    /// - Throws: when the task does not fit the run (parameters of the wrong size, in shared
    ///   memory, or absent without being held; a job of several shards), when the workers
    ///   fail it, or ``ClusterError/Code/noWorkers`` when none is left for the idle timeout.
    public func computeTask(_ task: WireMessage.Task) throws -> WireMessage.Result {
        let start = ContinuousClock.now
        var shards: [[Int32]] = []
        var at = 0
        for n in task.rowsPerShard {
            guard at + Int(n) <= task.rows.count else {
                throw ClusterError(.invalidTask, "a task whose rows per shard exceed its rows")
            }
            shards.append(Array(task.rows[at..<(at + Int(n))]))
            at += Int(n)
        }
        let values: [Float]
        let lossSum: Double
        let digest: [UInt8]
        switch task.work {
        case .gradient:
            guard task.maskSeeds.count == shards.count,
                task.packingSeeds.isEmpty || task.maskSeeds.allSatisfy(task.packingSeeds.contains)
            else {
                throw ClusterError(
                    .invalidTask,
                    "a task's mask seeds \(task.maskSeeds) for \(shards.count) shards "
                        + "are not all among its packing masks \(task.packingSeeds)"
                )
            }
            let packing = packings.packing(union: task.packingSeeds)
            let parameters = try heldParameters(task, count: packing.count)
            let threads = self.threads
            // A task of this relay's packed by fewer masks than the upstream task: from the dense
            // parameters, unpacked once.
            var dense: [Float] = []
            let sum = try computeGradients(
                step: task.step,
                maskSeeds: task.maskSeeds,
                packingSeeds: task.packingSeeds,
                packing: packing,
                shards: shards,
                packed: true,
                fillShared: { out in
                    parameters.withUnsafeBufferPointer {
                        packing.unpack($0, into: out, zeroing: true, threads: threads)
                    }
                },
                fill: { taskPacking, out in
                    if taskPacking.count == packing.count {
                        parameters.withUnsafeBufferPointer { _ = out.update(fromContentsOf: $0) }
                        return
                    }
                    if dense.isEmpty { packing.unpack(parameters, into: &dense, threads: threads) }
                    taskPacking.pack(dense, into: out, threads: threads)
                }
            )
            lossSum = sum.lossSum
            values = sum.packedSum ?? packing.pack(denseGradient)
            denseGradientMasks = nil  // the dense buffer now holds another step's masks
            digest = WireFormat.blockDigest(task.maskSeeds.map { packings.packing($0).digest })
        case .logLikelihood(_, let masks, let mode):
            values = try computeJob(
                task,
                shards: shards,
                resultCount: shards.first.map { $0.count * (mode == 0 ? Int(masks) : 1) } ?? 0
            )
            (lossSum, digest) = (0, [UInt8](repeating: 0, count: 16))
        case .sample(let count, _, _, _):
            values = try computeJob(task, shards: shards, resultCount: Int(count) * configuration.model.inputCount)
            (lossSum, digest) = (0, [UInt8](repeating: 0, count: 16))
        }
        let micros = (ContinuousClock.now - start).seconds * 1e6
        return WireMessage.Result(
            step: task.step,
            shard: task.shard,
            maskDigest: digest,
            lossSum: lossSum,
            computeMicroseconds: UInt32(clamping: Int(micros)),
            values: .inline(values),
            ticket: task.ticket
        )
    }

    /// The parameters of an upstream task: its own, or those an earlier task of the same step
    /// (or job) brought, which are kept until another step's come.
    private var upstreamParameters: (step: UInt64, packingSeeds: [UInt64], values: [Float])?

    private func heldParameters(_ task: WireMessage.Task, count: Int) throws -> [Float] {
        switch task.parameters {
        case .inline(let values):
            guard values.count == count else {
                throw ClusterError(.invalidTask, "\(values.count) parameters arrived for \(count)")
            }
            upstreamParameters = (task.step, task.packingSeeds, values)
            return values
        case .absent:
            guard let held = upstreamParameters, held.step == task.step, held.packingSeeds == task.packingSeeds else {
                throw ClusterError(
                    .invalidTask,
                    "a task for step \(task.step) came without parameters this relay does not hold"
                )
            }
            return held.values
        case .shared, .sharedCompute:
            throw ClusterError(.invalidTask, "a relay takes its parameters inline, not in shared memory")
        }
    }

    /// Has one worker score rows or draw a sampling batch for an upstream task, as shard
    /// `task.shard` of its job (a sampling batch's random stream is its shard's), and returns
    /// its `resultCount` values.
    private func computeJob(_ task: WireMessage.Task, shards: [[Int32]], resultCount: Int) throws -> [Float] {
        guard shards.count == 1 else {
            throw ClusterError(.invalidTask, "scoring and sampling take one shard per task")
        }
        guard resultCount <= largestResult else {
            throw ClusterError(
                .invalidTask,
                "a job's result of \(resultCount) values exceeds the \(largestResult) this relay's workers may send"
            )
        }
        guard Int(task.shardCount) <= WireFormat.Limits().maxRows else {
            throw ClusterError(
                .invalidTask,
                "a job of \(task.shardCount) tasks, more than the \(WireFormat.Limits().maxRows) a relay takes"
            )
        }
        let parameters = try heldParameters(task, count: layout.count)
        var rows = [[Int32]](repeating: [], count: Int(task.shardCount))
        rows[Int(task.shard)] = shards[0]
        var counts = [Int](repeating: 0, count: Int(task.shardCount))
        counts[Int(task.shard)] = resultCount
        let plan = CoordinatorStateMachine.WorkPlan(
            step: task.step,
            maskSeed: 0,
            work: task.work,
            maskDigest: nil,
            shards: rows,
            resultCounts: counts
        )
        let only = Int(task.shard)..<(Int(task.shard) + 1)
        return try execute(plan, parameters: dense(parameters), only: only).results[0].values.inlineValues!
    }

    /// Most shards of a step one worker sums before answering (the wire's limit).
    public static let maxShardsPerTask = WireFormat.Limits().maxBlockShards

    /// Dense buffers of the shards whose gradients had to leave shared memory (or arrived
    /// packed) before the step's sum: one per shard index, made on first use and reused.
    private var scratchBuffers: [Int: UnsafeMutablePointer<Float>] = [:]

    /// Set once the shared-memory file was found shrunk (`truncate -s 0`): from then on every
    /// worker gets and sends its values over the socket, and no slot is read or written again.
    private var sharedMemoryLost = false
    /// The parameters of the work ``execute(_:parameters:only:)`` runs, for shards handed out
    /// from outside its loop.
    private var runningParameters: StepParameters?
    /// The packing of each task handed out in the running work, by ticket: its inline result is
    /// packed so.
    private var resultPackings: [UInt64: [UInt64]] = [:]
    /// Set when an accepted gradient of the current step was in a slot that is gone.
    private var stepValuesLost = false

    /// Whether the shared-memory file still holds `slot` whole. The first time it does not,
    /// shared memory is given up for the rest of the run (every worker's slot revoked), so a
    /// shrunk file costs the results that lay in it, counted as bad, and never a SIGBUS.
    private func sharedIntact(_ slot: Int) -> Bool {
        guard let shared, !sharedMemoryLost else { return false }
        if shared.holds(slot) { return true }
        sharedMemoryLost = true
        logger.error(
            "the shared-memory file shrank; parameters and gradients go over the socket from now on",
            metadata: ["file": "\(shared.path)", "access_faulted": "\(shared.faulted)"]
        )
        machine.giveUpSharedMemory()
        return false
    }

    /// Dense buffers, one per shard index, for gradients turned from the compute order of one
    /// mask of a step into that of the held one, and for partial sums of the tree.
    private var turnedBuffers: [Int: UnsafeMutablePointer<Float>] = [:]

    private func turned(_ shard: Int) -> UnsafeMutablePointer<Float> {
        Self.buffer(shard, count: layout.count, in: &turnedBuffers)
    }

    private var relativeOrders: [[UInt64]: RelativeOrder] = [:]

    /// How `other`'s compute order lies in `held`'s, made once per pair and kept.
    private func relativeOrder(_ held: UInt64, _ other: UInt64) -> RelativeOrder {
        if let known = relativeOrders[[held, other]] { return known }
        if relativeOrders.count >= 64 { relativeOrders = [:] }
        let order = RelativeOrder(held: packings.maskSet(held).blocks, other: packings.maskSet(other).blocks)
        relativeOrders[[held, other]] = order
        return order
    }

    private func scratch(_ shard: Int) -> UnsafeMutablePointer<Float> {
        Self.buffer(shard, count: layout.count, in: &scratchBuffers)
    }

    /// The buffer of `count` values kept under `key` in `buffers`, made (zeroed) on first use.
    private static func buffer(
        _ key: Int,
        count: Int,
        in buffers: inout [Int: UnsafeMutablePointer<Float>]
    ) -> UnsafeMutablePointer<Float> {
        if let p = buffers[key] { return p }
        let p = UnsafeMutablePointer<Float>.allocate(capacity: count)
        p.initialize(repeating: 0, count: count)
        buffers[key] = p
        return p
    }

    /// Has the workers score rows `0..<rowCount` of `split` in chunks of `chunkSize`, and
    /// returns each chunk's values in order (see ``ShardComputer/computeJob(_:configuration:shared:)``:
    /// per mask then per row for `.likelihood`, per row for `.logits`).
    public func scoreRows(
        split: DataSplit,
        rowCount: Int,
        chunkSize: Int,
        masks: Int,
        mode: EnsembleMode,
        parameters: [Float]
    ) throws -> [[Float]] {
        let chunks = stride(from: 0, to: rowCount, by: chunkSize).map {
            Array(Int32($0)..<Int32(min(rowCount, $0 + chunkSize)))
        }
        let perRow = mode == .likelihood ? masks : 1
        guard MemoryBudget.product(min(chunkSize, rowCount), perRow).map({ $0 <= largestResult }) == true else {
            throw ClusterError(
                .tooLarge,
                """
                chunks of \(chunkSize) rows under \(masks) masks exceed the \(largestResult) values a result may \
                carry in this run (Options.largestJobResult)
                """
            )
        }
        let plan = CoordinatorStateMachine.WorkPlan(
            step: nextJobID(),
            maskSeed: 0,
            work: .logLikelihood(split: split.rawValue, masks: UInt32(masks), mode: mode.wireCode),
            maskDigest: nil,
            shards: chunks,
            resultCounts: chunks.map { $0.count * perRow }
        )
        return try execute(plan, parameters: dense(parameters)).results.map { $0.values.inlineValues! }
    }

    /// `log p(x)` of every row of `split`, scored by the workers exactly as
    /// ``Evaluator/logLikelihoods(parameters:data:masks:mode:)`` scores it in one process:
    /// chunks of the evaluator's size, per-mask values combined here in the same order.
    public func logLikelihoods(
        split: DataSplit,
        rowCount: Int,
        masks: Int,
        mode: EnsembleMode,
        parameters: [Float]
    ) throws -> [Double] {
        let evaluator = Evaluator<Float>(
            configuration: configuration.model,
            distribution: configuration.distribution,
            runSeed: configuration.seed
        )
        let chunks = try scoreRows(
            split: split,
            rowCount: rowCount,
            chunkSize: evaluator.chunkSize,
            masks: masks,
            mode: mode,
            parameters: parameters
        )
        return chunks.flatMap { values -> [Double] in
            guard mode == .likelihood else { return values.map(Double.init) }
            let rows = values.count / masks
            return Evaluator<Float>.combine(
                (0..<masks).map { m in values[(m * rows)..<((m + 1) * rows)].map(Double.init) }
            )
        }
    }

    /// Has the workers draw `count` samples of `dimension` values in batches of `batchSize`
    /// (batch `b` is shard `b`, drawn from its own random stream), and returns them in order.
    public func drawSamples(
        count: Int,
        dimension: Int,
        batchSize: Int,
        masks: Int,
        seed: UInt64,
        method: Sampler<Float>.Method,
        parameters: [Float]
    ) throws -> [Float] {
        guard MemoryBudget.product(min(batchSize, count), dimension).map({ $0 <= largestResult }) == true else {
            throw ClusterError(
                .tooLarge,
                """
                batches of \(batchSize) samples of \(dimension) values exceed the \(largestResult) values a result \
                may carry in this run (Options.largestJobResult)
                """
            )
        }
        let full = count / batchSize
        let rest = count % batchSize
        let parameters = dense(parameters)
        var out: [Float] = []
        // The full batches, then the shorter last one (its count changes how its stream is read).
        for (first, batches, size) in [(0, full, batchSize), (full, rest > 0 ? 1 : 0, rest)] where batches > 0 {
            let plan = CoordinatorStateMachine.WorkPlan(
                step: nextJobID(),
                maskSeed: 0,
                work: .sample(count: UInt32(size), masks: UInt32(masks), seed: seed, method: method.wireCode),
                maskDigest: nil,
                shards: Array(repeating: [], count: first + batches),
                resultCounts: Array(repeating: size * dimension, count: first + batches)
            )
            let results = try execute(plan, parameters: parameters, only: first..<(first + batches)).results
            for result in results { out += result.values.inlineValues! }
        }
        return out
    }

    private var jobs: UInt64 = 0
    /// Ids of evaluation and sampling jobs, apart from training steps.
    private func nextJobID() -> UInt64 {
        jobs += 1
        return (1 << 62) | jobs
    }

    private func dense(_ parameters: [Float]) -> StepParameters {
        let fill = { (out: UnsafeMutableBufferPointer<Float>) in
            parameters.withUnsafeBufferPointer {
                out.baseAddress!.update(from: $0.baseAddress!, count: parameters.count)
            }
        }
        return StepParameters(
            sharedCount: parameters.count,
            shared: shared,
            fillShared: fill,
            inline: { _ in (parameters.count, fill) }
        )
    }

    /// Runs one plan to completion: hands out its shards, follows the workers, and returns the
    /// results by shard index, with the slots whose gradients still lie where they were written.
    private func execute(
        _ plan: CoordinatorStateMachine.WorkPlan,
        parameters: StepParameters,
        only: Range<Int>? = nil
    ) throws
        -> (results: [WireMessage.Result], inPlace: [UInt32: UInt32])
    {
        stepTimings = [:]
        resultPackings = [:]
        runningParameters = parameters
        defer { runningParameters = nil }
        try perform(machine.begin(plan, now: now, only: only.map { $0.map(UInt32.init) }), parameters: parameters)
        var lastTick: UInt64 = 0
        var lastWatch: UInt64 = 0
        while !machine.isStepComplete {
            if shouldStop() { throw Interrupted() }
            if now >= lastWatch + 100 {
                lastWatch = now
                try watch()
            }
            if let failure = machine.failure {
                switch failure.code {
                case .noWorkers: throw ClusterError(.noWorkers, failure.message)
                case .taskFailed: throw ClusterError(.taskFailed, "the workers cannot do this work: \(failure.message)")
                }
            }
            try pump(timeout: 20, parameters: parameters)
            let t = now
            if t >= lastTick + 20 {
                lastTick = t
                try perform(machine.tick(now: t), parameters: parameters)
            }
        }
        lastStepTimings = Array(stepTimings.values)
        let inPlace = machine.resultsInSharedSlots
        return (machine.takeResults(), inPlace)
    }

    /// Handles whatever has arrived and sends due heartbeats, without waiting: for long work
    /// between steps, so workers are not left without news and lost connections are noticed.
    public func keepAlive() {
        let t = now
        guard t >= lastKeepAlive + 100 else { return }
        lastKeepAlive = t
        try? pump(timeout: 0, parameters: nil)
        try? perform(machine.tick(now: now), parameters: nil)
    }

    /// Waits up to `timeout` ms for at least `count` workers (a relay counts its workers),
    /// handling whatever arrives.
    public func waitForWorkers(_ count: Int, timeout: UInt64) throws -> Bool {
        let deadline = now + timeout
        while machine.capacity < count {
            if shouldStop() { throw Interrupted() }
            if now > deadline { return false }
            try pump(timeout: 50, parameters: nil)
            try perform(machine.tick(now: now), parameters: nil)
        }
        return true
    }

    /// A worker process started on this host has ended: the worker registered under `name` and
    /// `processID` leaves the run at once, and its shards go to the others.
    public func workerProcessEnded(name: String, processID: Int32, reason: String) {
        let pid = UInt32(bitPattern: processID)
        try? perform(
            machine.processEnded(name: name, processID: pid, reason: reason, now: now),
            parameters: runningParameters
        )
    }

    /// Tells every worker to exit with `exitCode`, and gives the messages a moment to leave.
    public func shutdownWorkers(exitCode: UInt8 = 0, reason: String) {
        try? perform(machine.shutdownAll(exitCode: exitCode, reason: reason), parameters: nil)
        // Keep answering briefly so late hellos also hear the shutdown.
        let until = now + 200
        while now < until { try? pump(timeout: 20, parameters: nil) }
    }

    /// The parameters a step's workers need, made once per step and only in the forms asked
    /// for: `sharedCount` values in shared-memory slot 0 for workers on this host, an array for
    /// the others for each packing their tasks name (`inline` says how many values and writes
    /// them).
    final class StepParameters {
        typealias Inline = ([UInt64]) -> (count: Int, fill: (UnsafeMutableBufferPointer<Float>) -> Void)
        let sharedCount: Int
        let shared: SharedSlots?
        /// Whether slot 0 gets them in the compute order of the step's one mask (see
        /// ``FloatPayload/sharedCompute(slot:count:)``), else in layout order.
        let computeOrder: Bool
        let fillShared: (UnsafeMutableBufferPointer<Float>) -> Void
        let inline: Inline
        /// A mask's parameter region: its slot, and what writes the mask's masked parameters
        /// there in its compute order.
        struct Region {
            let slot: Int
            let fill: (UnsafeMutableBufferPointer<Float>) -> Void
        }
        /// In a step of several masks held in one's compute order, each mask's region (slot 0
        /// the held mask's); a task of one of them reads it there, any other task goes inline.
        let regions: [UInt64: Region]
        private var arrays: [[UInt64]: [Float]] = [:]
        private var inSharedMemory = false
        private var regionsFilled: Set<Int> = []

        init(
            sharedCount: Int,
            shared: SharedSlots?,
            computeOrder: Bool = false,
            regions: [UInt64: Region] = [:],
            fillShared: @escaping (UnsafeMutableBufferPointer<Float>) -> Void,
            inline: @escaping Inline
        ) {
            self.sharedCount = sharedCount
            self.shared = shared
            self.computeOrder = computeOrder
            self.regions = regions
            self.fillShared = fillShared
            self.inline = inline
        }

        /// The parameters of a task packed by `packingSeeds`: in shared memory when `useShared`
        /// and the file holds slot 0 (or the region of the task's one mask), inline otherwise.
        func payload(shared useShared: Bool, packingSeeds: [UInt64]) -> FloatPayload {
            if useShared, let shared, !regions.isEmpty, sharedCount <= shared.slotFloats {
                if packingSeeds.count == 1, let region = regions[packingSeeds[0]], shared.holds(region.slot) {
                    if !regionsFilled.contains(region.slot) {
                        shared.withSlot(region.slot, count: sharedCount) { region.fill($0) }
                        regionsFilled.insert(region.slot)
                    }
                    // Written whole into the file, not into the zero pages of a file cut meanwhile.
                    if shared.holds(region.slot) {
                        return .sharedCompute(slot: UInt32(region.slot), count: UInt32(sharedCount))
                    }
                }
            } else if useShared, let shared, sharedCount <= shared.slotFloats, inSharedMemory || shared.holds(0) {
                if !inSharedMemory {
                    shared.withSlot(0, count: sharedCount) { fillShared($0) }
                    inSharedMemory = true
                }
                // Written whole into the file, not into the zero pages of a file cut meanwhile.
                if shared.holds(0) {
                    let count = UInt32(sharedCount)
                    return computeOrder ? .sharedCompute(slot: 0, count: count) : .shared(slot: 0, count: count)
                }
            }
            if let array = arrays[packingSeeds] { return .inline(array) }
            let (count, fill) = inline(packingSeeds)
            let array = [Float](unsafeUninitializedCapacity: count) { buffer, n in
                fill(buffer)
                n = count
            }
            arrays[packingSeeds] = array
            return .inline(array)
        }
    }

    // MARK: I/O

    /// Polls once, then handles every frame waiting on the ROUTER and every ZAP request.
    private func pump(timeout: Int, parameters: StepParameters?) throws {
        var items = [ZMQPollItem.socket(router)]
        if let zap { items.append(.socket(zap.socket)) }
        _ = try ZMQSocket.poll(items, timeoutMilliseconds: timeout)
        zap?.handlePending()
        while true {
            var peer: [UInt8] = []
            var delivery: FragmentAssembler<[UInt8]>.Delivery?
            var size = 0
            guard
                let received = try router.receiveMessage(
                    maxParts: 2,
                    dontWait: true,
                    property: "Peer-Address",
                    { index, bytes in
                        if index == 0 {
                            peer = Array(bytes)
                            return
                        }
                        size = bytes.count
                        if MessageFragments.isFragment(bytes) && !machine.isRegistered(peer) {
                            delivery = .init(
                                frame: nil,
                                error: .invalidField("a fragment from a peer that is not a registered worker")
                            )
                        } else {
                            delivery = fragments.receive(bytes, from: peer)
                        }
                    }
                )
            else { break }
            zap?.handlePending()
            bytesReceived += size
            // Traffic is kept by host for registered workers and those saying hello.
            if hostOfPeer[peer] == nil, let frame = delivery?.frame, machine.isRegistered(peer) || Self.isHello(frame) {
                // Over ipc the property names the peer process, not a host.
                hostOfPeer[peer] =
                    endpoint.hasPrefix("tcp://")
                    ? received.property.flatMap { $0.isEmpty ? nil : $0 } ?? "local" : "local"
            }
            if let host = hostOfPeer[peer] { trafficByHost[host, default: Traffic()].received += size }
            guard received.frames == 2, let delivery else {
                fragments.forget(peer)
                let error = WireError.invalidField("\(received.frames) frames, expected 1")
                try perform(machine.malformed(from: peer, error: error, now: now), parameters: parameters)
                continue
            }
            if let error = delivery.error {
                try perform(machine.malformed(from: peer, error: error, now: now), parameters: parameters)
            }
            guard let frame = delivery.frame else { continue }
            let actions: [CoordinatorStateMachine.Action]
            do {
                let (runID, decoded) = try WireFormat.decode(frame)
                // A result in a slot of a file that shrank is refused (its slot is taken back first).
                if case .result(let r) = decoded {
                    if let slot = r.values.sharedSlot { _ = sharedIntact(Int(slot)) }
                    if let name = names[peer], let sent = taskSentAt.removeValue(forKey: peer) {
                        var timing = stepTimings[name] ?? StepTiming(worker: name)
                        let compute = Double(r.computeMicroseconds) / 1000
                        timing.shards += machine.shardsInTask(startingAt: r.shard)
                        timing.computeMilliseconds += compute
                        let wait = max(0, (ContinuousClock.now - sent).seconds * 1000 - compute)
                        timing.waitMilliseconds += wait
                        stepTimings[name] = timing
                        timingTotals.results += 1
                        timingTotals.computeMilliseconds += compute
                        timingTotals.waitMilliseconds += wait
                    }
                }
                actions = machine.receive(from: peer, runID: runID, message: decoded, now: now)
            } catch {
                actions = machine.malformed(from: peer, error: error, now: now)
            }
            try perform(actions, parameters: parameters)
        }
    }

    private func perform(_ actions: [CoordinatorStateMachine.Action], parameters: StepParameters?) throws {
        for action in actions {
            switch action {
            case .send(let peer, let message):
                try send(to: peer, message, parameters: parameters)
            case .sendInVersion(let peer, let message, let version):
                try send(to: peer, message, version: version, parameters: parameters)
            case .reserveSharedSlot(let peer, let slot):
                let reserved = !sharedMemoryLost && shared?.reserve(Int(slot)) == true
                if !reserved {
                    logger.warning(
                        "no room for a worker's shared-memory slot; it uses the socket",
                        metadata: ["slot": "\(slot)"]
                    )
                }
                try perform(machine.sharedSlotReserved(by: peer, reserved, now: now), parameters: parameters)
            case .saveSharedResult(let slot, let shard):
                if let shared {
                    // Checked after the copy too: a file cut during it leaves zero pages (SharedSlots).
                    if sharedIntact(Int(slot)) {
                        scratch(Int(shard)).update(from: shared.pointer(Int(slot)), count: layout.count)
                    }
                    if !sharedIntact(Int(slot)) { stepValuesLost = true }
                }
            case .assign(let peer, var task, let route):
                if let route, let parameters {
                    task.parameters = parameters.payload(
                        shared: route == .sharedMemory && sharedIntact(0),
                        packingSeeds: task.packingSeeds
                    )
                }
                resultPackings[task.ticket] = task.packingSeeds
                taskSentAt[peer] = ContinuousClock.now
                try send(to: peer, .task(task), parameters: parameters)
            case .workerJoined(let peer, let name):
                names[peer] = name
                logger.info("worker joined", metadata: ["worker": "\(name)", "workers": "\(machine.workerCount)"])
            case .workerLost(let peer, let name, let reason):
                names[peer] = nil
                hostOfPeer[peer] = nil
                fragments.forget(peer)
                logger.warning(
                    "worker lost; its shards go to the others",
                    metadata: ["worker": "\(name)", "reason": "\(reason)"]
                )
            case .refused(let peer, let reason):
                logger.warning(
                    "refused",
                    metadata: ["peer": "\(names[peer] ?? Array(peer.prefix(16)).hexString)", "reason": "\(reason)"]
                )
            }
        }
    }

    /// Whether `frame` is headed as a hello.
    private static func isHello(_ frame: [UInt8]) -> Bool {
        frame.count > 6 && frame[6] == WireMessage.Kind.hello.rawValue
    }

    /// Sends `message` to `peer`, in fragments when it is large. When the peer's connection is
    /// gone (no route), the machine hears of it and what it decides is carried out.
    private func send(
        to peer: [UInt8],
        _ message: WireMessage,
        version: UInt16 = WireFormat.version,
        parameters: StepParameters?
    ) throws {
        fragmentSequence &+= 1
        let pieces = MessageFragments.frames(
            encoding: message,
            runID: machine.settings.runID,
            version: version,
            sequence: fragmentSequence
        )
        do {
            for piece in pieces {
                let size = piece.count
                switch try router.send([.bytes(peer), piece], dontWait: true) {
                case .sent:
                    bytesSent += size
                    if let host = hostOfPeer[peer] { trafficByHost[host, default: Traffic()].sent += size }
                case .unroutable:
                    return try perform(machine.connectionLost(peer, now: now), parameters: parameters)
                case .wouldBlock:
                    logger.warning(
                        "send would block; message dropped",
                        metadata: ["peer": "\(names[peer] ?? Array(peer.prefix(16)).hexString)"]
                    )
                    return
                }
            }
        } catch let error as ZMQError {
            logger.warning("send failed", metadata: ["error": "\(error)"])
        }
    }
}
