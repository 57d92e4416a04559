import DequeModule
import MADE
import OrderedCollections

/// The coordinator's decisions, with no sockets: who is alive, which shard goes to whom, which
/// result counts, which shared-memory slot is whose, how to answer an old peer.
///
/// A thin loop (``ClusterCoordinator``) feeds it decoded frames
/// (``receive(from:runID:message:now:)``), decoding failures (``malformed(from:error:now:)``),
/// the outcome of slot reservations (``sharedSlotReserved(by:_:now:)``), lost connections
/// (``connectionLost(_:now:)``) and clock ticks (``tick(now:)``), and carries out the
/// ``Action``s it returns. Time is milliseconds on any monotonic clock.
///
/// The machine is `idle` between pieces of work and `running` one ``WorkPlan`` (a training step,
/// or a piece of an evaluation or sampling job); the running ``Step`` owns everything that lives
/// as long as the step: its queue, results, tickets, retakes and failures. Once every worker is
/// told to exit it is `shutDown`, and a late hello gets the same answer.
///
/// Work is pulled: a registered worker holds at most one task (a shard, or an aligned block of
/// shards) at a time and gets the next pending one as soon as it is idle. A peer's hello says
/// how many workers compute behind it (1 for a worker, those of its host for a relay, 0 for
/// none: it gets no task) and how many shards one task to it may hold; the step's block size
/// follows from both (``blockSize(shards:capacities:limit:)``). A worker is dead when its
/// connection is gone (its ZMTP heartbeats went unanswered for the heartbeat timeout, or the
/// peer closed it), not when it is merely quiet: a worker sending or receiving a large message
/// on a slow link is alive. Its task then goes back to the queue; a task in flight
/// longer than its deadline (`taskTimeout`, doubled each time that shard was taken back) is
/// taken back and queued for the first idle worker. A result counts when it carries the ticket
/// of the task its sender holds, or, inline, the ticket of an earlier hand-out of that shard to
/// it in this step while the shard has no result (the ticket rule); anything else is dropped and
/// counted. A result in shared memory counts only from the sender's own slot, at the dense size,
/// for the task it holds. A result whose mask digest differs from the step's is refused and its
/// worker dismissed, since the two disagree on the masks. Every way a worker loses its task
/// (answer, timeout, new hello, failure, death, dismissal) goes through one `release`.
public struct CoordinatorStateMachine: Sendable {
    public typealias Peer = [UInt8]

    public struct Settings: Sendable {
        public var runID: UInt64
        /// The data fingerprint workers must present (32 bytes); nil accepts any (sampling needs no data).
        public var dataFingerprint: [UInt8]?
        /// Sent to workers in `welcome`: the run's configuration, opaque here.
        public var configuration: [UInt8]
        /// How often every worker is sent a heartbeat; a send that finds the worker's
        /// connection gone is how the loop learns of it (``connectionLost(_:now:)``).
        public var heartbeatInterval: UInt64 = 1000
        /// How long a connection may carry nothing before libzmq tears it down (ZMTP
        /// heartbeats); the loop sets the sockets up with it, the rules here do not use it.
        public var heartbeatTimeout: UInt64 = 10_000
        public var taskTimeout: UInt64 = 60_000
        /// Work in progress fails when no worker has been registered for this long.
        public var idleTimeout: UInt64 = 120_000
        /// The first ticket handed out. Random by default, so a restarted coordinator does not
        /// take an answer to a task of its predecessor for one of its own.
        public var firstTicket = UInt64.random(in: 1...(UInt64.max / 2))
        /// This host's id; a worker presenting the same one may share memory.
        public var hostID = ""
        /// The shared-memory file offered to same-host workers, if any.
        public var sharedMemory: SharedMemory?

        /// A file of `slots + 1` slots of `slotFloats` values: slot 0 for parameters, then one per
        /// worker, then `parameterSlots` (further parameter regions, one per further mask of a
        /// step of several masks).
        public struct SharedMemory: Sendable {
            public var path: String
            public var slotFloats: UInt32
            public var slots: UInt32
            public var parameterSlots: [UInt32]
            public init(path: String, slotFloats: UInt32, slots: UInt32, parameterSlots: [UInt32] = []) {
                self.path = path
                self.slotFloats = slotFloats
                self.slots = slots
                self.parameterSlots = parameterSlots
            }
        }

        public init(runID: UInt64, dataFingerprint: [UInt8]?, configuration: [UInt8]) {
            self.runID = runID
            self.dataFingerprint = dataFingerprint
            self.configuration = configuration
        }

        /// The interval workers are told to speak at for a `timeout`: at least four times per
        /// timeout, so a busy moment is not mistaken for death, and never below 50 ms.
        public static func heartbeatInterval(wanted: UInt64, timeout: UInt64) -> UInt64 {
            max(50, min(wanted, timeout / 4))
        }
    }

    /// One piece of work for the workers: a gradient step of training, or a piece of an
    /// evaluation or sampling job, as the wire carries it.
    public struct WorkPlan: Sendable, Equatable {
        public var step: UInt64
        /// The mask seed of each shard, by shard index: a task names those of its shards.
        public var maskSeeds: [UInt64]
        /// The masks whose union packs the step's parameters and gradients: in shared memory, and
        /// over the socket for a task whose own packing is not in ``taskPackings``.
        public var packingSeeds: [UInt64]
        /// Packed sizes of the packings a task over the socket may have besides the step's, by
        /// their seeds: such a task is packed by the union of its own shards' masks (their
        /// distinct seeds, in order of first appearance) when that union is here, so a block of
        /// one mask travels as in a step of one mask. Empty: every task is packed as the step.
        public var taskPackings: [[UInt64]: Int] = [:]
        public var work: WireMessage.Work
        /// Digest of each shard's masks (16 bytes), by shard index; a task's result must carry
        /// ``WireFormat/blockDigest(_:)`` of its shards' digests. Nil to check none.
        public var maskDigests: [[UInt8]]?
        /// Rows of each shard, by shard index.
        public var shards: [[Int32]]
        /// Values each shard's result must hold, by shard index, when it comes inline.
        public var resultCounts: [Int]
        /// Values a result holds when it comes in the sender's own shared-memory slot (dense
        /// gradients of workers on this host); nil when results must come inline.
        public var sharedResultCount: Int?
        /// Whether those shared results are in the compute order of the step's one mask
        /// (``FloatPayload/sharedCompute(slot:count:)``), as the step's parameters are; else in
        /// layout order (``FloatPayload/shared(slot:count:)``).
        public var sharedResultsInComputeOrder = false
        /// Most shards one task may hold: a worker then sums a whole aligned block of the
        /// reduction tree itself and answers once. 1 keeps one shard per task.
        public var maxShardsPerTask = 1
        /// The masks of a step of several masks that each have a parameter region of their own
        /// in shared memory, their parameters in their own compute order (empty: none). A task
        /// through shared memory whose shards all train one of them is packed by that mask alone
        /// (``taskPackings`` holds its size), and its result in the worker's slot is in that
        /// mask's compute order; any other task through shared memory is packed as the step.
        public var sharedRegions: [UInt64] = []

        /// The mask with a parameter region that all shards `first ..< first + count` train, if any.
        public func sharedRegion(first: Int, count: Int) -> UInt64? {
            let own = distinctSeeds(first: first, count: count)
            guard own.count == 1, sharedRegions.contains(own[0]), taskPackings[own] != nil else { return nil }
            return own[0]
        }

        public init(
            step: UInt64,
            maskSeeds: [UInt64],
            packingSeeds: [UInt64],
            work: WireMessage.Work = .gradient,
            maskDigests: [[UInt8]]?,
            shards: [[Int32]],
            resultCounts: [Int]
        ) {
            precondition(shards.count == resultCounts.count, "WorkPlan: one result count per shard")
            precondition(shards.count == maskSeeds.count, "WorkPlan: one mask seed per shard")
            precondition(maskDigests.map { $0.count == shards.count } ?? true, "WorkPlan: one mask digest per shard")
            self.step = step
            self.maskSeeds = maskSeeds
            self.packingSeeds = packingSeeds
            self.work = work
            self.maskDigests = maskDigests
            self.shards = shards
            self.resultCounts = resultCounts
        }

        /// Work whose shards all use `maskSeed`, with one digest for all (nil to check none).
        public init(
            step: UInt64,
            maskSeed: UInt64,
            work: WireMessage.Work = .gradient,
            maskDigest: [UInt8]?,
            shards: [[Int32]],
            resultCounts: [Int]
        ) {
            self.init(
                step: step,
                maskSeeds: Array(repeating: maskSeed, count: shards.count),
                packingSeeds: [maskSeed],
                work: work,
                maskDigests: maskDigest.map { Array(repeating: $0, count: shards.count) },
                shards: shards,
                resultCounts: resultCounts
            )
        }

        /// A gradient step: every shard answers with `gradientCount` packed values inline, or
        /// with `denseCount` values in the worker's shared-memory slot.
        public init(
            step: UInt64,
            maskSeed: UInt64,
            maskDigest: [UInt8],
            gradientCount: Int,
            denseCount: Int? = nil,
            shards: [[Int32]]
        ) {
            self.init(
                step: step,
                maskSeeds: Array(repeating: maskSeed, count: shards.count),
                packingSeeds: [maskSeed],
                maskDigests: Array(repeating: maskDigest, count: shards.count),
                gradientCount: gradientCount,
                denseCount: denseCount,
                shards: shards
            )
        }

        /// A gradient step whose shards train `maskSeeds` (one each), packed by the union of
        /// `packingSeeds`' masks: `gradientCount` values inline, or `denseCount` in shared memory.
        public init(
            step: UInt64,
            maskSeeds: [UInt64],
            packingSeeds: [UInt64],
            maskDigests: [[UInt8]],
            gradientCount: Int,
            denseCount: Int? = nil,
            shards: [[Int32]]
        ) {
            self.init(
                step: step,
                maskSeeds: maskSeeds,
                packingSeeds: packingSeeds,
                work: .gradient,
                maskDigests: maskDigests,
                shards: shards,
                resultCounts: Array(repeating: gradientCount, count: shards.count)
            )
            sharedResultCount = denseCount
        }

        /// The distinct mask seeds of shards `first ..< first + count`, in order of first appearance.
        public func distinctSeeds(first: Int, count: Int) -> [UInt64] {
            var seeds: [UInt64] = []
            for seed in maskSeeds[first..<(first + count)] where !seeds.contains(seed) { seeds.append(seed) }
            return seeds
        }

        /// The packing of the task of shards `first ..< first + count` over the socket: the union
        /// of its own masks when ``taskPackings`` holds it, the step's otherwise; and how many
        /// values its result then holds inline.
        public func packing(first: Int, count: Int) -> (seeds: [UInt64], values: Int) {
            if !taskPackings.isEmpty {
                let own = distinctSeeds(first: first, count: count)
                if Set(own) != Set(packingSeeds), let values = taskPackings[own] { return (own, values) }
            }
            return (packingSeeds, resultCounts[first])
        }

        /// The digest a result for the task of shards `first ..< first + count` must carry.
        public func digest(first: Int, count: Int) -> [UInt8]? {
            maskDigests.map { WireFormat.blockDigest($0[first..<(first + count)]) }
        }
    }

    /// How a task's parameters reach its worker.
    public enum ParameterRoute: Sendable, Equatable {
        /// In the task, packed by mask (or dense for jobs).
        case inline
        /// In shared-memory slot 0, for a worker with its own slot on this host.
        case sharedMemory
    }

    public enum Action: Sendable, Equatable {
        /// Send a small control message.
        case send(Peer, WireMessage)
        /// Send a message in an older protocol version the peer reads (the reject that tells a
        /// worker of another version why it is not accepted).
        case sendInVersion(Peer, WireMessage, version: UInt16)
        /// Reserve the memory of this shared-memory slot for a joining worker, and report the
        /// outcome with ``sharedSlotReserved(by:_:now:)``; its welcome waits for it.
        case reserveSharedSlot(Peer, slot: UInt32)
        /// The gradient of shard `shard` lies unread in `slot`, whose worker is about to be given
        /// another task: copy it out first (its sum is taken later).
        case saveSharedResult(slot: UInt32, shard: UInt32)
        /// Send a task; with `parameters` set, the loop attaches the step's parameters that way.
        case assign(Peer, WireMessage.Task, parameters: ParameterRoute?)
        case workerJoined(Peer, name: String)
        case workerLost(Peer, name: String, reason: String)
        /// A frame or result was refused; for the log.
        case refused(Peer, reason: String)
    }

    /// What has been refused or recovered from, for logs and tests.
    public struct Counters: Sendable, Equatable {
        public var malformed = 0
        public var wrongRun = 0
        public var unknownPeer = 0
        /// Workers refused, each once however many of its hellos crossed its refusal.
        public var refusedWorkers = 0
        /// Results and failures that do not count (an earlier step, a shard already answered,
        /// an answer in shared memory or a failure for a task taken back): dropped.
        public var lateResults = 0
        public var maskMismatches = 0
        public var badResults = 0
        public var workersJoined = 0
        public var workersLost = 0
        public var reassignedShards = 0
        public var failedTasks = 0
        public init() {}

        /// Frames and results dropped for being malformed, foreign or wrong.
        public var rejected: Int { malformed + wrongRun + unknownPeer + refusedWorkers + maskMismatches + badResults }
    }

    /// Why the running work cannot complete.
    public struct Failure: Sendable, Equatable, CustomStringConvertible {
        public enum Code: Sendable, Equatable {
            /// A shard failed on every try.
            case taskFailed
            /// No worker has been registered for the idle timeout.
            case noWorkers
        }
        public var code: Code
        public var message: String
        public var description: String { message }
    }

    /// Tasks a shard may fail before the step is given up.
    public static let maxTaskFailures = 3

    /// A shard of a step handed to a worker, and the ticket of that hand-out.
    struct Assignment: Sendable, Equatable {
        var step: UInt64
        var shard: UInt32
        var ticket: UInt64
    }

    /// The parameters a worker holds: those of `step`, packed by the union of `packingSeeds`'
    /// masks (none: every parameter).
    struct HeldParameters: Sendable, Equatable {
        var step: UInt64
        var packingSeeds: [UInt64]

        /// Whether they serve a task of `step` whose shards train `maskSeeds`.
        func serve(step: UInt64, maskSeeds: [UInt64]) -> Bool {
            self.step == step && (packingSeeds.isEmpty || maskSeeds.allSatisfy(packingSeeds.contains))
        }
    }

    struct Worker: Sendable {
        var name: String
        /// The process id its hello gave.
        var processID: UInt32 = 0
        var lastHeard: UInt64
        /// The task this worker holds; only its result counts.
        var assignment: Assignment?
        /// A task was taken back from this worker for taking too long: others go first.
        var stalled = false
        /// When the task it holds is taken back.
        var deadline: UInt64 = 0
        /// The step whose parameters it holds, and the masks that packed them.
        var parameters: HeldParameters?
        var slot: UInt32?
        /// Its slot's memory is being reserved: no welcome, no task yet.
        var awaitingSlot = false
        var lastTicket: UInt64?
        /// Workers computing behind this peer (its hello's capacity).
        var capacity = 1
        /// Most shards one task to it may hold.
        var blockLimit = 8

        /// Whether it may be handed a task of `shards` shards now.
        func canTake(_ shards: Int) -> Bool {
            assignment == nil && !awaitingSlot && capacity > 0 && blockLimit >= shards
        }
    }

    /// One running piece of work.
    struct Step: Sendable {
        var plan: WorkPlan
        /// Shards per task.
        var block: UInt32
        /// Shards not handed out yet, each the first of a task of up to `block` shards; a shard
        /// taken back goes to the front.
        var pending: Deque<UInt32>
        /// The shards (first of each task) the step waits for.
        var expected: Set<UInt32>
        var results: [UInt32: WireMessage.Result] = [:]
        /// The tickets handed out in this step: to whom, for which shard, and how many values
        /// its result holds inline (by the task's packing).
        var issued: [UInt64: (peer: Peer, shard: UInt32, values: Int)] = [:]
        /// Times each shard was taken back for taking too long.
        var retakes: [UInt32: Int] = [:]
        /// Times each shard's task failed.
        var failures: [UInt32: Int] = [:]
        var failure: Failure?
        /// Per worker slot, the shard whose accepted gradient lies there unread.
        var inSharedSlot: [UInt32: UInt32] = [:]

        var isComplete: Bool { results.count == expected.count }
    }

    enum State: Sendable {
        case idle
        case running(Step)
        /// Every worker was told to exit; a worker that says hello now joins only to hear the
        /// same (`joined`: those counted so).
        case shutDown(exitCode: UInt8, reason: String, joined: Set<Peer>)
    }

    /// Why a worker's task is released.
    enum Release {
        /// It answered; its result is judged next.
        case answered
        /// Its task took longer than its deadline.
        case timedOut
        /// It said hello again: it holds no parameters and no task.
        case rejoined
        /// It reported the task failed (or its answer did not decode).
        case failed
        /// It is dead or dismissed: it leaves the run.
        case lost(String)

        /// Whether the task goes back to the queue here; an answer or a failure is judged by its caller.
        var requeues: Bool {
            switch self {
            case .timedOut, .rejoined, .lost: true
            case .answered, .failed: false
            }
        }
    }

    public let settings: Settings
    public private(set) var counters = Counters()
    private var state: State = .idle
    /// Registered workers, in registration order, so assignment is deterministic for a given
    /// sequence of events.
    private var workers: OrderedDictionary<Peer, Worker> = [:]
    private var lastHeartbeatSent: UInt64 = 0
    /// Peers refused so far (at most ``refusedPeersKept``, then forgotten): a worker's hellos sent
    /// before its refusal arrived are answered again but counted once.
    private var refusedPeers: Set<Peer> = []
    static let refusedPeersKept = 4096
    private var heartbeatSequence: UInt64 = 0
    /// When a worker was last registered.
    private var lastWorkerSeen: UInt64 = 0
    /// Slots are never reused: a worker declared dead might still write to its old one.
    private var nextSlot: UInt32 = 1
    /// The next task's ticket; tickets are never reused within a run of this machine.
    private var nextTicket: UInt64

    public init(settings: Settings) {
        self.settings = settings
        nextTicket = settings.firstTicket
    }

    // MARK: Queries

    /// Workers currently registered (a relay counts once).
    public var workerCount: Int { workers.count }

    /// Workers computing for this machine: the capacities of the registered peers (a relay
    /// counts its workers).
    public var capacity: Int { workers.values.reduce(0) { $0 + $1.capacity } }

    /// Whether some registered peer computes (a relay without workers does not).
    private var hasCapacity: Bool { workers.values.contains { $0.capacity > 0 } }

    /// Whether `peer` holds that very hand-out of the task.
    public func holds(_ peer: Peer, step: UInt64, shard: UInt32, ticket: UInt64) -> Bool {
        workers[peer]?.assignment == Assignment(step: step, shard: shard, ticket: ticket)
    }

    /// Whether `peer` is a registered worker.
    public func isRegistered(_ peer: Peer) -> Bool { workers[peer] != nil }

    /// The ticket of the last task handed to `peer`, whether it still holds it or not.
    public func lastTicket(of peer: Peer) -> UInt64? { workers[peer]?.lastTicket }

    /// The shared-memory slot of `peer`, when it has one.
    public func sharedSlot(of peer: Peer) -> UInt32? { workers[peer]?.slot }

    /// Whether every shard of the running work has a result.
    public var isStepComplete: Bool {
        if case .running(let step) = state { return step.isComplete }
        return false
    }

    /// Why the running work cannot complete, if it cannot.
    public var failure: Failure? {
        if case .running(let step) = state { return step.failure }
        return nil
    }

    /// Shards in the task that starts at shard `first` of the running work.
    public func shardsInTask(startingAt first: UInt32) -> Int {
        guard case .running(let step) = state else { return 1 }
        return min(Int(step.block), step.plan.shards.count - Int(first))
    }

    /// Per worker slot, the shard of the running step whose accepted gradient still lies there
    /// (not copied out by a ``Action/saveSharedResult(slot:shard:)``).
    public var resultsInSharedSlots: [UInt32: UInt32] {
        if case .running(let step) = state { return step.inSharedSlot }
        return [:]
    }

    // MARK: Work

    /// Starts a piece of work: queues its shards (or only those listed in `only`; the step is
    /// then complete when they are) and hands them to idle workers.
    public mutating func begin(_ plan: WorkPlan, now: UInt64, only: [UInt32]? = nil) -> [Action] {
        precondition(!plan.shards.isEmpty, "a step needs at least one shard")
        if case .shutDown = state { preconditionFailure("begin: the workers were shut down") }
        let block = UInt32(only == nil ? chooseBlockSize(for: plan) : 1)
        let pending = only ?? Array(stride(from: 0, to: UInt32(plan.shards.count), by: Int(block)))
        precondition(
            !pending.isEmpty && pending.allSatisfy { Int($0) < plan.shards.count },
            "begin: shards out of range"
        )
        state = .running(Step(plan: plan, block: block, pending: Deque(pending), expected: Set(pending)))
        for peer in workers.keys { workers[peer]?.assignment = nil }
        return assignIdle(now: now)
    }

    /// Shards per task for `shards` shards among `workers` workers (one each).
    /// With 4 shards: 4 for one worker, 2 for two or three (the third would wait either way), 1 for four.
    static func blockSize(shards: Int, workers: Int, limit: Int) -> Int {
        blockSize(shards: shards, capacities: Array(repeating: 1, count: workers), limit: limit)
    }

    /// Shards per task for `shards` shards among peers of `capacities` workers (in registration
    /// order; a relay of `c` workers computes a block of `n` shards in `ceil(n / c)` shard times):
    /// the power of two up to `limit` whose blocks, pulled by whichever peer is idle first, are
    /// all done soonest, the largest of those that tie (fewer, larger messages). So a relay for
    /// `W` workers takes a block of `W` shards when there are enough to go round, and answers
    /// once for them; a worker alone takes a larger block only when no other worker would have
    /// had a shard of it to compute.
    ///
    /// - Complexity: O(log(limit) x shards x peers).
    static func blockSize(shards: Int, capacities: [Int], limit: Int) -> Int {
        let peers = capacities.filter { $0 > 0 }
        guard !peers.isEmpty, shards > 1 else { return 1 }
        func makespan(_ size: Int) -> Int {
            var busyUntil = [Int](repeating: 0, count: peers.count)
            for first in stride(from: 0, to: shards, by: size) {
                let p = busyUntil.indices.min { busyUntil[$0] < busyUntil[$1] }!  // the first of those idle soonest
                busyUntil[p] += (min(size, shards - first) + peers[p] - 1) / peers[p]
            }
            return busyUntil.max()!
        }
        var best = 1
        var bestSpan = makespan(1)
        var size = 2
        while size <= limit {
            let span = makespan(size)
            if span <= bestSpan { (best, bestSpan) = (size, span) }
            if size >= shards { break }  // one block already holds every shard
            size *= 2
        }
        return best
    }

    /// The last block size chosen, and what it was chosen for (steps repeat the same).
    private var lastBlockChoice: (shards: Int, capacities: [Int], limit: Int, block: Int)?

    /// The block size of `plan` among the peers registered now: limited by the plan and by
    /// every computing peer's hello, so any of them can take any task of the step.
    private mutating func chooseBlockSize(for plan: WorkPlan) -> Int {
        let (block, choice) = blockChoice(for: plan)
        lastBlockChoice = choice
        return block
    }

    /// Shards per task that ``begin(_:now:only:)`` would cut `plan` into now, with the
    /// workers registered.
    public func blockSize(for plan: WorkPlan) -> Int { blockChoice(for: plan).block }

    private func blockChoice(
        for plan: WorkPlan
    )
        -> (block: Int, choice: (shards: Int, capacities: [Int], limit: Int, block: Int))
    {
        let computing = workers.values.filter { $0.capacity > 0 }
        let capacities = computing.map(\.capacity)
        var limit = computing.map(\.blockLimit).min() ?? 1
        limit = max(1, min(limit, plan.maxShardsPerTask))
        if let last = lastBlockChoice, last.shards == plan.shards.count, last.capacities == capacities,
            last.limit == limit
        {
            return (last.block, last)
        }
        let block = Self.blockSize(shards: plan.shards.count, capacities: capacities, limit: limit)
        return (block, (plan.shards.count, capacities, limit, block))
    }

    /// The results of the completed work, by shard index; the machine is idle again.
    public mutating func takeResults() -> [WireMessage.Result] {
        guard case .running(let step) = state, step.isComplete else {
            preconditionFailure("takeResults: the step is not complete")
        }
        state = .idle
        return step.expected.sorted().map { step.results[$0]! }
    }

    /// Tells every worker to exit, and every worker that says hello from now on.
    public mutating func shutdownAll(exitCode: UInt8, reason: String) -> [Action] {
        let actions = workers.keys.map { Action.send($0, .shutdown(exitCode: exitCode, reason: reason)) }
        workers = [:]
        state = .shutDown(exitCode: exitCode, reason: reason, joined: [])
        return actions
    }

    // MARK: Events

    /// A frame from `peer` that decoded to `message` with header run id `runID`.
    public mutating func receive(from peer: Peer, runID: UInt64, message: WireMessage, now: UInt64) -> [Action] {
        if case .shutDown(let code, let reason, var joined) = state {
            guard case .hello(let hello) = message else { return [] }
            if let required = settings.dataFingerprint, hello.dataFingerprint != required {
                return register(peer, hello, now: now)
            }
            // A worker that came late still joined the run, once, and leaves with the others.
            if joined.insert(peer).inserted {
                counters.workersJoined += 1
                state = .shutDown(exitCode: code, reason: reason, joined: joined)
            }
            return [.send(peer, .shutdown(exitCode: code, reason: reason))]
        }
        if case .hello(let hello) = message { return register(peer, hello, now: now) }
        guard runID == settings.runID else {
            counters.wrongRun += 1
            return [
                .refused(peer, reason: "run id \(String(runID, radix: 16)) is not this run's"),
                .send(
                    peer,
                    .reject(reason: "this coordinator runs another job (run id \(String(settings.runID, radix: 16)))")
                ),
            ]
        }
        guard workers[peer] != nil else {
            counters.unknownPeer += 1
            return [.send(peer, .who)]
        }
        workers[peer]?.lastHeard = now
        switch message {
        case .heartbeat:
            return []
        case .result(let result):
            return accept(result, from: peer, now: now)
        case .failed(let step, let shard, let ticket, let reason):
            return taskFailed(step: step, shard: shard, ticket: ticket, reason: reason, from: peer, now: now)
        case .hello, .welcome, .reject, .task, .shutdown, .who:
            counters.malformed += 1
            return [.refused(peer, reason: "unexpected \(message.kind) from a worker")]
        }
    }

    /// A frame from `peer` that failed to decode.
    ///
    /// A peer of another protocol version hears why it is refused, in its own version when that
    /// is an older one this side can still write. When `peer` is a worker holding a task of the
    /// running work, the frame was likely its result: the task counts as failed and goes out
    /// again at once, rather than after the task timeout.
    public mutating func malformed(from peer: Peer, error: WireError, now: UInt64) -> [Action] {
        counters.malformed += 1
        var actions: [Action] = [.refused(peer, reason: "malformed frame: \(error)")]
        if case .unsupportedVersion(let version) = error {
            let reject = WireMessage.reject(
                reason: "unsupported protocol version; this coordinator speaks version \(WireFormat.version)"
            )
            actions.append(
                version >= 1 && version < WireFormat.version
                    ? .sendInVersion(peer, reject, version: version) : .send(peer, reject)
            )
        }
        if let assignment = workers[peer]?.assignment, assignment.step == runningStep?.plan.step {
            actions += taskFailed(
                step: assignment.step,
                shard: assignment.shard,
                ticket: assignment.ticket,
                reason: "malformed frame: \(error)",
                from: peer,
                now: now
            )
        }
        return actions
    }

    /// The shared-memory file is gone (it shrank under the run): every worker loses its slot
    /// and gets its next parameters inline; a result still claiming a slot is refused as bad.
    public mutating func giveUpSharedMemory() {
        for peer in Array(workers.keys) {
            workers[peer]?.slot = nil
            workers[peer]?.parameters = nil
        }
    }

    /// The process of a worker started on this host, named `name` with process id `processID`,
    /// has ended (the launcher saw it exit): every worker registered under that name and process
    /// id leaves the run now rather than after the heartbeat timeout, and its shards go to the others.
    public mutating func processEnded(name: String, processID: UInt32, reason: String, now: UInt64) -> [Action] {
        var actions: [Action] = []
        for (peer, worker) in workers where worker.name == name && worker.processID == processID {
            actions += release(peer, .lost(reason))
        }
        return actions + assignIdle(now: now)
    }

    /// The memory of `peer`'s slot was reserved (`reserved`), or could not be: then the worker
    /// goes without shared memory and exchanges everything over the socket. Its welcome goes out.
    public mutating func sharedSlotReserved(by peer: Peer, _ reserved: Bool, now: UInt64) -> [Action] {
        guard var worker = workers[peer], worker.awaitingSlot else { return [] }
        worker.awaitingSlot = false
        if !reserved { worker.slot = nil }
        workers[peer] = worker
        return [.send(peer, welcome(slot: worker.slot))] + assignIdle(now: now)
    }

    /// The connection to `peer` is gone: libzmq tore it down (its heartbeats went unanswered, or
    /// the peer closed it), so a message to it found no route. The worker is dead; its task goes
    /// back to the queue. A worker that comes back says hello and joins anew.
    public mutating func connectionLost(_ peer: Peer, now: UInt64) -> [Action] {
        guard let worker = workers[peer] else { return [] }
        if worker.capacity > 0 { lastWorkerSeen = max(lastWorkerSeen, now) }  // it was there until now
        let reason = "its connection is gone (last message \(now &- worker.lastHeard) ms ago)"
        let actions = release(peer, .lost(reason))
        replanIfStuck()  // the peers left may take only smaller blocks
        return actions + assignIdle(now: now)
    }

    /// Time passes: heartbeats go out (and find lost connections), stuck shards are requeued,
    /// and work waiting with no worker at all for the idle timeout fails. A quiet worker is not
    /// dead: its connection says whether it is.
    public mutating func tick(now: UInt64) -> [Action] {
        var actions: [Action] = []
        if hasCapacity { lastWorkerSeen = max(lastWorkerSeen, now) }
        // A task out longer than the timeout is taken back and queued for whichever worker is
        // idle first, this one included: a lost task or result cannot stall a step. Each time a
        // shard is taken back its next deadline doubles, so a task that simply takes long
        // still finishes.
        for (peer, worker) in workers where worker.assignment != nil && now > worker.deadline {
            actions += release(peer, .timedOut)
        }
        if now >= lastHeartbeatSent + settings.heartbeatInterval {
            lastHeartbeatSent = now
            heartbeatSequence += 1
            actions += workers.keys.map { .send($0, .heartbeat(sequence: heartbeatSequence)) }
        }
        replanIfStuck()
        if !hasCapacity, case .running(var step) = state, step.failure == nil,
            now > lastWorkerSeen + settings.idleTimeout
        {
            step.failure = Failure(
                code: .noWorkers,
                message: "no worker has been connected for \(settings.idleTimeout / 1000) s; the work cannot go on"
            )
            state = .running(step)
        }
        return actions + assignIdle(now: now)
    }

    // MARK: Rules

    private var runningStep: Step? {
        if case .running(let step) = state { return step }
        return nil
    }

    /// Changes the running step, if any.
    private mutating func withStep(_ body: (inout Step) -> Void) {
        guard case .running(var step) = state else { return }
        state = .idle  // drop the enum's reference so `step` is mutated in place
        body(&step)
        state = .running(step)
    }

    private func welcome(slot: UInt32?) -> WireMessage {
        let grant = slot.flatMap { slot in
            settings.sharedMemory.map {
                WireMessage.SharedMemoryGrant(
                    path: $0.path,
                    slot: slot,
                    slotFloats: $0.slotFloats,
                    parameterSlots: $0.parameterSlots
                )
            }
        }
        return .welcome(
            .init(
                heartbeatIntervalMilliseconds: UInt32(clamping: settings.heartbeatInterval),
                configuration: settings.configuration,
                sharedMemory: grant
            )
        )
    }

    private mutating func register(_ peer: Peer, _ hello: WireMessage.Hello, now: UInt64) -> [Action] {
        if let required = settings.dataFingerprint, hello.dataFingerprint != required {
            if refusedPeers.insert(peer).inserted {
                counters.refusedWorkers += 1
                if refusedPeers.count > Self.refusedPeersKept { refusedPeers = [peer] }
            }
            let reason =
                "data mismatch: this run's data has fingerprint \(Array(required.prefix(8)).hexString), "
                + """
                the worker's \(Array(hello.dataFingerprint.prefix(8)).hexString); start the worker on the same data \
                file and options
                """
            return [.refused(peer, reason: reason), .send(peer, .reject(reason: reason))]
        }
        lastWorkerSeen = max(lastWorkerSeen, now)
        let sameHost = !hello.hostID.isEmpty && hello.hostID == settings.hostID
        if workers[peer] != nil {
            // A relay says hello again when its workers come or go: its capacity changes.
            workers[peer]?.capacity = Int(hello.capacity)
            workers[peer]?.blockLimit = Int(hello.maxBlockShards)
            // The same process again (a routing id is never reused by another process): hellos
            // queued before this coordinator listened, or a worker that lost its parameters.
            // It keeps its registration and slot; a shard it held goes back to the queue.
            _ = release(peer, .rejoined)
            workers[peer]?.lastHeard = now
            if !sameHost { workers[peer]?.slot = nil }  // shared memory declined
            guard workers[peer]?.awaitingSlot == false else { return [] }  // its welcome follows the reservation
            return [.send(peer, welcome(slot: workers[peer]?.slot))] + assignIdle(now: now)
        }
        var worker = Worker(name: hello.name, processID: hello.processID, lastHeard: now)
        worker.capacity = Int(hello.capacity)
        worker.blockLimit = Int(hello.maxBlockShards)
        counters.workersJoined += 1
        if let shared = settings.sharedMemory, sameHost, nextSlot <= shared.slots {
            worker.slot = nextSlot
            worker.awaitingSlot = true
            nextSlot += 1
            workers[peer] = worker
            return [.workerJoined(peer, name: hello.name), .reserveSharedSlot(peer, slot: worker.slot!)]
        }
        workers[peer] = worker
        return [.workerJoined(peer, name: hello.name), .send(peer, welcome(slot: nil))] + assignIdle(now: now)
    }

    /// Takes back whatever task `peer` holds, for `reason`, and requeues it unless it was
    /// answered or failed (their callers judge the shard). A lost worker leaves the run.
    private mutating func release(_ peer: Peer, _ reason: Release) -> [Action] {
        guard var worker = workers[peer] else { return [] }
        let assignment = worker.assignment
        let current = assignment.flatMap { $0.step == runningStep?.plan.step ? $0.shard : nil }
        worker.assignment = nil
        var actions: [Action] = []
        switch reason {
        case .answered:
            worker.stalled = false
        case .timedOut:
            worker.parameters = nil
            worker.stalled = true
            if let current { withStep { $0.retakes[current, default: 0] += 1 } }
        case .rejoined, .failed:
            worker.parameters = nil
        case .lost(let why):
            workers.removeValue(forKey: peer)
            counters.workersLost += 1
            actions.append(.workerLost(peer, name: worker.name, reason: why))
        }
        if case .lost = reason {} else { workers[peer] = worker }
        if reason.requeues, let current { requeueIfUnheld(current) }
        return actions
    }

    private mutating func taskFailed(
        step: UInt64,
        shard: UInt32,
        ticket: UInt64,
        reason: String,
        from peer: Peer,
        now: UInt64
    ) -> [Action] {
        guard holds(peer, step: step, shard: shard, ticket: ticket) else {
            counters.lateResults += 1
            return assignIdle(now: now)
        }
        _ = release(peer, .failed)
        guard let running = runningStep, step == running.plan.step, running.expected.contains(shard),
            running.results[shard] == nil
        else {
            counters.lateResults += 1
            return assignIdle(now: now)
        }
        counters.failedTasks += 1
        let failures = running.failures[shard, default: 0] + 1
        withStep { $0.failures[shard] = failures }
        if failures >= Self.maxTaskFailures {
            withStep {
                $0.failure = Failure(
                    code: .taskFailed,
                    message: "shard \(shard) of step \(step) failed \(failures) times; last: \(reason)"
                )
            }
            return [.refused(peer, reason: "task failed: \(reason)")]
        }
        requeueIfUnheld(shard)
        return [.refused(peer, reason: "task failed: \(reason)")] + assignIdle(now: now)
    }

    private mutating func accept(_ result: WireMessage.Result, from peer: Peer, now: UInt64) -> [Action] {
        // The task a worker holds counts. So does an inline answer to an earlier hand-out of
        // a shard still without a result, made to this worker in this step (a task taken back
        // for taking long): its values are the same. Anything else is dropped: a result from an
        // earlier step, for a shard it was never given, or in shared memory the worker may
        // already be writing again.
        workers[peer]?.stalled = false
        let held = holds(peer, step: result.step, shard: result.shard, ticket: result.ticket)
        let running = runningStep
        let earlier =
            !held && result.values.inlineValues != nil && result.step == running?.plan.step
            && running?.issued[result.ticket].map { $0.peer == peer && $0.shard == result.shard } == true
            && running?.results[result.shard] == nil
        guard held || earlier else {
            counters.lateResults += 1
            return assignIdle(now: now)
        }
        if held { _ = release(peer, .answered) }
        guard let step = running, result.step == step.plan.step else {
            counters.lateResults += 1
            return assignIdle(now: now)
        }
        let plan = step.plan
        guard step.expected.contains(result.shard) else {
            counters.badResults += 1
            return [.refused(peer, reason: "result for shard \(result.shard) of a \(plan.shards.count)-shard step")]
                + assignIdle(now: now)
        }
        if let expected = plan.digest(first: Int(result.shard), count: shardsInTask(startingAt: result.shard)),
            result.maskDigest != expected
        {
            counters.maskMismatches += 1
            let reason =
                """
                mask digest \(result.maskDigest.hexString) differs from the step's \(expected.hexString): the worker \
                built other masks
                """
            var actions: [Action] = [
                .refused(peer, reason: reason), .send(peer, .shutdown(exitCode: 6, reason: reason)),
            ]
            requeueIfUnheld(result.shard)
            actions += release(peer, .lost(reason))
            return actions + assignIdle(now: now)
        }
        let expected = step.issued[result.ticket]?.values ?? plan.resultCounts[Int(result.shard)]
        let slot = workers[peer]?.slot
        let fits: Bool
        switch result.values {
        case .inline(let values): fits = values.count == expected
        case .shared(let s, let count):
            fits = held && !plan.sharedResultsInComputeOrder && s == slot && Int(count) == plan.sharedResultCount
        case .sharedCompute(let s, let count):
            // With regions, only a task of one region's mask answers in compute order (that mask's).
            let ordered =
                plan.sharedRegions.isEmpty
                || plan.sharedRegion(first: Int(result.shard), count: shardsInTask(startingAt: result.shard)) != nil
            fits =
                held && plan.sharedResultsInComputeOrder && ordered && s == slot
                && Int(count) == plan.sharedResultCount
        case .absent: fits = false
        }
        guard fits else {
            counters.badResults += 1
            requeueIfUnheld(result.shard)
            let order = plan.sharedResultsInComputeOrder ? " in compute order" : ""
            let shared = plan.sharedResultCount.map { " or \($0) in its shared-memory slot\(order)" } ?? ""
            let form = result.values.inlineValues == nil ? "not inline" : "inline"
            return [
                .refused(
                    peer,
                    reason: "a result of \(result.values.count) values (\(form)), expected \(expected) inline\(shared)"
                )
            ]
                + assignIdle(now: now)
        }
        withStep {
            $0.results[result.shard] = result
            $0.pending.removeAll { $0 == result.shard }
            // Taken where it lies: the gradient stays in that slot until its worker is given another task.
            if let s = result.values.sharedSlot { $0.inSharedSlot[s] = result.shard }
        }
        return assignIdle(now: now)
    }

    /// Requeues `shard` at the front unless it has a result, is queued, or a worker holds it.
    private mutating func requeueIfUnheld(_ shard: UInt32) {
        guard let step = runningStep, step.expected.contains(shard), step.results[shard] == nil,
            !step.pending.contains(shard),
            !workers.values.contains(where: {
                $0.assignment.map { $0.step == step.plan.step && $0.shard == shard } == true
            })
        else { return }
        withStep { $0.pending.prepend(shard) }
        counters.reassignedShards += 1
    }

    /// When no registered peer may take the step's blocks any more (the relays that could are
    /// gone, and the workers left take smaller ones) and none is in flight, the step starts over
    /// in blocks they can take: the same tree, so the same sum. What was answered in the larger
    /// blocks is computed again, and an answer to an earlier hand-out no longer counts.
    private mutating func replanIfStuck() {
        guard let step = runningStep, step.failure == nil, !step.isComplete, step.block > 1, hasCapacity,
            !workers.values.contains(where: { $0.assignment?.step == step.plan.step }),
            !workers.values.contains(where: { $0.capacity > 0 && $0.blockLimit >= Int(step.block) })
        else { return }
        var fresh = Step(plan: step.plan, block: UInt32(chooseBlockSize(for: step.plan)), pending: [], expected: [])
        fresh.pending = Deque(stride(from: 0, to: UInt32(step.plan.shards.count), by: Int(fresh.block)))
        fresh.expected = Set(fresh.pending)
        fresh.failures = step.failures
        state = .running(fresh)
        counters.reassignedShards += fresh.pending.count
    }

    private mutating func assignIdle(now: UInt64) -> [Action] {
        guard var step = runningStep, !step.pending.isEmpty else { return [] }
        var actions: [Action] = []
        let ready = workers.elements.filter { $0.value.canTake(1) }
        for peer in ready.filter({ !$0.value.stalled }).map(\.key) + ready.filter({ $0.value.stalled }).map(\.key) {
            guard let next = step.pending.first else { break }
            guard workers[peer]!.canTake(min(Int(step.block), step.plan.shards.count - Int(next))) else { continue }
            let shard = step.pending.removeFirst()
            var worker = workers[peer]!
            let ticket = nextTicket
            nextTicket &+= 1
            worker.assignment = Assignment(step: step.plan.step, shard: shard, ticket: ticket)
            worker.lastTicket = ticket
            let (allowed, overflow) = settings.taskTimeout.multipliedReportingOverflow(
                by: 1 << min(step.retakes[shard] ?? 0, 10)
            )
            let (deadline, late) = now.addingReportingOverflow(overflow ? .max : allowed)
            worker.deadline = late ? .max : deadline
            let plan = step.plan
            let count = min(Int(step.block), plan.shards.count - Int(shard))
            let maskSeeds = Array(plan.maskSeeds[Int(shard)..<(Int(shard) + count)])
            // Parameters the worker holds for this step serve the task when they cover its masks;
            // otherwise they come again, over the socket packed by the task's own masks (or as
            // the step's), in shared memory as the step's.
            let route: ParameterRoute?
            let packing: (seeds: [UInt64], values: Int)
            if let held = worker.parameters, held.serve(step: plan.step, maskSeeds: maskSeeds) {
                route = nil
                packing =
                    held.packingSeeds == plan.packingSeeds
                    ? (plan.packingSeeds, plan.resultCounts[Int(shard)])
                    : (held.packingSeeds, plan.taskPackings[held.packingSeeds] ?? plan.resultCounts[Int(shard)])
            } else {
                route = worker.slot == nil ? .inline : .sharedMemory
                if route == .inline {
                    packing = plan.packing(first: Int(shard), count: count)
                } else if let region = plan.sharedRegion(first: Int(shard), count: count) {
                    packing = ([region], plan.taskPackings[[region]]!)
                } else {
                    packing = (plan.packingSeeds, plan.resultCounts[Int(shard)])
                }
                worker.parameters = HeldParameters(step: plan.step, packingSeeds: packing.seeds)
            }
            step.issued[ticket] = (peer, shard, packing.values)
            if let slot = worker.slot, let unread = step.inSharedSlot.removeValue(forKey: slot) {
                actions.append(.saveSharedResult(slot: slot, shard: unread))
            }
            workers[peer] = worker
            let members = plan.shards[Int(shard)..<(Int(shard) + count)]
            let task = WireMessage.Task(
                step: plan.step,
                shard: shard,
                shardCount: UInt32(plan.shards.count),
                maskSeeds: maskSeeds,
                packingSeeds: packing.seeds,
                rows: Array(members.joined()),
                work: plan.work,
                parameters: .absent,
                ticket: ticket,
                rowsPerShard: members.map { UInt32($0.count) }
            )
            actions.append(.assign(peer, task, parameters: route))
        }
        state = .running(step)
        return actions
    }
}
