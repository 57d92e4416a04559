import Foundation
import MADE

/// The coordinator's decisions, with no sockets: who is alive, which shard goes to whom, which
/// result counts.
///
/// A thin loop feeds it decoded frames (``receive(from:runID:message:now:)``), decoding failures
/// (``malformed(from:error:now:)``) and clock ticks (``tick(now:)``), and carries out the
/// ``Action``s it returns. Time is milliseconds on any monotonic clock.
///
/// Work is pulled: a registered worker holds at most one task (a shard, or an aligned block of
/// shards) at a time and gets the next pending one as soon as it is idle. A worker not heard
/// from for `heartbeatTimeout` is dead and its task goes back to the queue; a task in flight
/// longer than its deadline (`taskTimeout`, doubled each time that shard was taken back) is
/// taken back and queued for the first idle worker. A result counts when it carries the ticket
/// of the task its sender holds, or, inline, the ticket of an earlier hand-out of that shard to
/// it in this step while the shard has no result; anything else is dropped and counted. A
/// result whose mask digest differs from the step's is refused and its worker dismissed, since
/// the two disagree on the masks.
public struct CoordinatorStateMachine: Sendable {
    public typealias Peer = [UInt8]

    public struct Settings: Sendable {
        public var runID: UInt64
        /// The data fingerprint workers must present (32 bytes); nil accepts any (sampling needs no data).
        public var dataFingerprint: [UInt8]?
        /// Sent to workers in `welcome`: the run's configuration, opaque here.
        public var configuration: [UInt8]
        public var heartbeatInterval: UInt64 = 1000
        public var heartbeatTimeout: UInt64 = 10_000
        public var taskTimeout: UInt64 = 60_000
        /// The first ticket handed out. Random by default, so a restarted coordinator does not
        /// take an answer to a task of its predecessor for one of its own.
        public var firstTicket = UInt64.random(in: 1...(UInt64.max / 2))
        /// This host's id; a worker presenting the same one may share memory.
        public var hostID = ""
        /// The shared-memory file offered to same-host workers, if any.
        public var sharedMemory: SharedMemory?

        /// A file of `slots + 1` slots of `slotFloats` values: slot 0 for parameters, then one per worker.
        public struct SharedMemory: Sendable {
            public var path: String
            public var slotFloats: UInt32
            public var slots: UInt32
            public init(path: String, slotFloats: UInt32, slots: UInt32) {
                self.path = path
                self.slotFloats = slotFloats
                self.slots = slots
            }
        }

        public init(runID: UInt64, dataFingerprint: [UInt8]?, configuration: [UInt8]) {
            self.runID = runID
            self.dataFingerprint = dataFingerprint
            self.configuration = configuration
        }
    }

    /// One step's work: a gradient step of training, or a piece of an evaluation or sampling job.
    public struct StepPlan: Sendable, Equatable {
        public var step: UInt64
        public var maskSeed: UInt64
        public var work: WireMessage.Work
        /// Digest of the step's masks (16 bytes) that results must carry; nil to check none.
        public var maskDigest: [UInt8]?
        /// Rows of each shard, by shard index.
        public var shards: [[Int32]]
        /// Values each shard's result must hold, by shard index, when it comes inline.
        public var resultCounts: [Int]
        /// Values a result holds when it comes in the sender's own shared-memory slot (dense
        /// gradients of workers on this host); nil when results must come inline.
        public var sharedResultCount: Int?
        /// Most shards one task may hold: a worker then sums a whole aligned block of the
        /// reduction tree itself and answers once. 1 keeps one shard per task.
        public var maxShardsPerTask = 1

        public init(step: UInt64, maskSeed: UInt64, work: WireMessage.Work = .gradient, maskDigest: [UInt8]?,
                    shards: [[Int32]], resultCounts: [Int]) {
            precondition(shards.count == resultCounts.count, "StepPlan: one result count per shard")
            self.step = step
            self.maskSeed = maskSeed
            self.work = work
            self.maskDigest = maskDigest
            self.shards = shards
            self.resultCounts = resultCounts
        }

        /// A gradient step: every shard answers with `gradientCount` packed values inline, or
        /// with `denseCount` values in the worker's shared-memory slot.
        public init(step: UInt64, maskSeed: UInt64, maskDigest: [UInt8], gradientCount: Int, denseCount: Int? = nil, shards: [[Int32]]) {
            self.init(step: step, maskSeed: maskSeed, work: .gradient, maskDigest: maskDigest, shards: shards,
                      resultCounts: Array(repeating: gradientCount, count: shards.count))
            sharedResultCount = denseCount
        }
    }

    public enum Action: Sendable, Equatable {
        /// Send a small control message.
        case send(Peer, WireMessage)
        /// Send a task; the loop attaches the step's parameters when `includeParameters` is set
        /// (packed inline, or in shared memory for a worker with a slot).
        case assign(Peer, WireMessage.Task, includeParameters: Bool)
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

    /// A shard of a step handed to a worker, and the ticket of that hand-out.
    struct Assignment: Sendable, Equatable {
        var step: UInt64
        var shard: UInt32
        var ticket: UInt64
    }

    struct Worker: Sendable {
        var name: String
        var lastHeard: UInt64
        /// The task this worker holds; only its result counts.
        var assignment: Assignment?
        /// A task was taken back from this worker for taking too long: others go first.
        var stalled = false
        /// When the task it holds is taken back.
        var deadline: UInt64 = 0
        var parametersStep: UInt64?
        var slot: UInt32?
        var lastTicket: UInt64?
    }

    public let settings: Settings
    public private(set) var counters = Counters()
    private var workers: [Peer: Worker] = [:]
    /// Registration order, so assignment is deterministic for a given sequence of events.
    private var order: [Peer] = []
    private var plan: StepPlan?
    /// Shards not handed out yet, each the first of a task of up to `block` shards.
    private var pending: [UInt32] = []
    /// Shards per task in the current step.
    private var block: UInt32 = 1
    /// Times each shard of the current step was taken back for taking too long.
    private var retakes: [UInt32: Int] = [:]
    /// The tickets handed out in the current step: to whom, for which shard.
    private var issued: [UInt64: (peer: Peer, shard: UInt32)] = [:]
    private var results: [UInt32: WireMessage.Result] = [:]
    /// The shards the current step waits for.
    private var expected: Set<UInt32> = []
    private var lastHeartbeatSent: UInt64 = 0
    /// Slots are never reused: a worker declared dead might still write to its old one.
    private var nextSlot: UInt32 = 1
    private var heartbeatSequence: UInt64 = 0
    /// The next task's ticket; tickets are never reused within a run of this machine.
    private var nextTicket: UInt64

    public init(settings: Settings) {
        self.settings = settings
        nextTicket = settings.firstTicket
    }

    /// Workers currently registered.
    public var workerCount: Int { workers.count }

    /// Whether `peer` holds that very hand-out of the task (answers in shared memory, and
    /// failures, count only then).
    public func holds(_ peer: Peer, step: UInt64, shard: UInt32, ticket: UInt64) -> Bool {
        workers[peer]?.assignment == Assignment(step: step, shard: shard, ticket: ticket)
    }

    /// Whether shard `shard` of step `step`, the current one, has its result.
    public func hasResult(step: UInt64, shard: UInt32) -> Bool {
        plan?.step == step && results[shard] != nil
    }

    /// The ticket of the last task handed to `peer`, whether it still holds it or not.
    public func lastTicket(of peer: Peer) -> UInt64? { workers[peer]?.lastTicket }

    /// Takes back `peer`'s shared-memory slot (its memory could not be reserved); it then
    /// exchanges everything over the socket.
    public mutating func revokeSharedSlot(of peer: Peer) {
        workers[peer]?.slot = nil
    }

    /// The shared-memory slot of `peer`, when it has one.
    public func sharedSlot(of peer: Peer) -> UInt32? { workers[peer]?.slot }


    /// Whether every shard of the current step has a result.
    public var isStepComplete: Bool {
        plan != nil && results.count == expected.count
    }

    // MARK: Steps

    /// Starts a step: queues its shards (or only those listed in `only`; the step is then
    /// complete when they are) and hands them to idle workers.
    public mutating func begin(_ plan: StepPlan, now: UInt64, only: [UInt32]? = nil) -> [Action] {
        precondition(!plan.shards.isEmpty, "a step needs at least one shard")
        self.plan = plan
        results = [:]
        failures = [:]
        failure = nil
        retakes = [:]
        issued = [:]
        block = UInt32(only == nil ? Self.blockSize(shards: plan.shards.count, workers: workers.count, limit: plan.maxShardsPerTask) : 1)
        pending = only ?? Array(stride(from: 0, to: UInt32(plan.shards.count), by: Int(block)))
        precondition(!pending.isEmpty && pending.allSatisfy { Int($0) < plan.shards.count }, "begin: shards out of range")
        expected = Set(pending)
        for peer in order { workers[peer]?.assignment = nil }
        return assignIdle(now: now)
    }

    /// Shards per task for `shards` shards among `workers` workers: the largest power of two up
    /// to `limit` that leaves no worker more shards to compute than one shard per task would.
    /// With 4 shards: 4 for one worker, 2 for two or three (the third would wait either way), 1 for four.
    static func blockSize(shards: Int, workers: Int, limit: Int) -> Int {
        guard workers > 0, shards > 1 else { return 1 }
        let perWorker = (shards + workers - 1) / workers
        var best = 1
        var size = 2
        while size <= limit {
            let blocks = (shards + size - 1) / size
            // The busiest worker's blocks, counted as full ones; all of them hold no more than `shards`.
            if min((blocks + workers - 1) / workers * size, shards) <= perWorker { best = size }
            if size >= shards { break }   // one block already holds every shard
            size *= 2
        }
        return best
    }

    /// Shards in the task that starts at shard `first` of the current step.
    public func shardsInTask(startingAt first: UInt32) -> Int {
        guard let plan else { return 1 }
        return min(Int(block), plan.shards.count - Int(first))
    }

    /// The results of the completed step, by shard index, and clears it.
    public mutating func takeResults() -> [WireMessage.Result] {
        precondition(isStepComplete, "takeResults: the step is not complete")
        let out = expected.sorted().map { results[$0]! }
        plan = nil
        results = [:]
        pending = []
        return out
    }

    /// Tells every worker to exit.
    public mutating func shutdownAll(exitCode: UInt8, reason: String) -> [Action] {
        let actions = order.map { Action.send($0, .shutdown(exitCode: exitCode, reason: reason)) }
        workers = [:]
        order = []
        return actions
    }

    // MARK: Events

    /// A frame from `peer` that decoded to `message` with header run id `runID`.
    public mutating func receive(from peer: Peer, runID: UInt64, message: WireMessage, now: UInt64) -> [Action] {
        if case .hello(let hello) = message { return register(peer, hello, now: now) }
        guard runID == settings.runID else {
            counters.wrongRun += 1
            return [.refused(peer, reason: "run id \(String(runID, radix: 16)) is not this run's"),
                    .send(peer, .reject(reason: "this coordinator runs another job (run id \(String(settings.runID, radix: 16)))"))]
        }
        guard var worker = workers[peer] else {
            counters.unknownPeer += 1
            return [.send(peer, .who)]
        }
        worker.lastHeard = now
        workers[peer] = worker
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
    /// When `peer` is a worker holding a task of this step, the frame was likely its result: the
    /// task counts as failed and goes out again at once, rather than after the task timeout.
    public mutating func malformed(from peer: Peer, error: WireError, now: UInt64) -> [Action] {
        counters.malformed += 1
        var actions: [Action] = [.refused(peer, reason: "malformed frame: \(error)")]
        if case .unsupportedVersion = error {
            actions.append(.send(peer, .reject(reason: "unsupported protocol version; this coordinator speaks version \(WireFormat.version)")))
        }
        if let assignment = workers[peer]?.assignment, assignment.step == plan?.step {
            actions += taskFailed(step: assignment.step, shard: assignment.shard, ticket: assignment.ticket,
                                  reason: "malformed frame: \(error)", from: peer, now: now)
        }
        return actions
    }

    /// Time passes: heartbeats go out, silent workers are declared dead, stuck shards requeued.
    public mutating func tick(now: UInt64) -> [Action] {
        var actions: [Action] = []
        for peer in order {
            guard let worker = workers[peer], now > worker.lastHeard + settings.heartbeatTimeout else { continue }
            actions += remove(peer, reason: "no message for \(now - worker.lastHeard) ms")
        }
        // A task out longer than the timeout is taken back and queued for whichever worker is
        // idle first, this one included: a lost task or result cannot stall a step. Each time a
        // shard is taken back its next deadline doubles, so a task that simply takes long
        // still finishes.
        for peer in order {
            guard let worker = workers[peer], let assignment = worker.assignment, now > worker.deadline else { continue }
            workers[peer]?.assignment = nil
            workers[peer]?.parametersStep = nil
            workers[peer]?.stalled = true
            if assignment.step == plan?.step {
                retakes[assignment.shard, default: 0] += 1
                requeueIfUnheld(assignment.shard)
            }
        }
        if now >= lastHeartbeatSent + settings.heartbeatInterval {
            lastHeartbeatSent = now
            heartbeatSequence += 1
            actions += order.map { .send($0, .heartbeat(sequence: heartbeatSequence)) }
        }
        return actions + assignIdle(now: now)
    }

    // MARK: Internals

    /// Tasks a shard may fail before the step is given up.
    public static let maxTaskFailures = 3

    /// Why the current step cannot complete (a shard failed on every try), if it cannot.
    public private(set) var failure: String?
    private var failures: [UInt32: Int] = [:]

    private mutating func taskFailed(step: UInt64, shard: UInt32, ticket: UInt64, reason: String, from peer: Peer, now: UInt64) -> [Action] {
        guard holds(peer, step: step, shard: shard, ticket: ticket) else {
            counters.lateResults += 1
            return assignIdle(now: now)
        }
        workers[peer]?.assignment = nil
        workers[peer]?.parametersStep = nil
        guard let plan, step == plan.step, expected.contains(shard), results[shard] == nil else {
            counters.lateResults += 1
            return assignIdle(now: now)
        }
        counters.failedTasks += 1
        failures[shard, default: 0] += 1
        if failures[shard]! >= Self.maxTaskFailures {
            failure = "shard \(shard) of step \(step) failed \(failures[shard]!) times; last: \(reason)"
            return [.refused(peer, reason: "task failed: \(reason)")]
        }
        requeueIfUnheld(shard)
        return [.refused(peer, reason: "task failed: \(reason)")] + assignIdle(now: now)
    }

    private mutating func register(_ peer: Peer, _ hello: WireMessage.Hello, now: UInt64) -> [Action] {
        if let required = settings.dataFingerprint, hello.dataFingerprint != required {
            counters.refusedWorkers += 1
            let reason = "data mismatch: this run's data has fingerprint \(Array(required.prefix(8)).hexString), "
                + "the worker's \(Array(hello.dataFingerprint.prefix(8)).hexString); start the worker on the same data file and options"
            return [.refused(peer, reason: reason), .send(peer, .reject(reason: reason))]
        }
        if var known = workers[peer] {
            // The same process again (a routing id is never reused by another process): hellos
            // queued before this coordinator listened, or a worker that lost its parameters.
            // It keeps its registration and slot; a shard it held goes back to the queue.
            if let assignment = known.assignment {
                known.assignment = nil
                workers[peer] = known
                if assignment.step == plan?.step { requeueIfUnheld(assignment.shard) }
            }
            known.parametersStep = nil
            known.lastHeard = now
            if hello.hostID.isEmpty || hello.hostID != settings.hostID { known.slot = nil }   // shared memory declined
            workers[peer] = known
            let grant = known.slot.flatMap { slot in
                settings.sharedMemory.map { WireMessage.SharedMemoryGrant(path: $0.path, slot: slot, slotFloats: $0.slotFloats) }
            }
            return [.send(peer, .welcome(.init(heartbeatIntervalMilliseconds: UInt32(clamping: settings.heartbeatInterval),
                                               configuration: settings.configuration, sharedMemory: grant)))] + assignIdle(now: now)
        }
        var actions: [Action] = []
        var worker = Worker(name: hello.name, lastHeard: now)
        var grant: WireMessage.SharedMemoryGrant?
        if let shared = settings.sharedMemory, !hello.hostID.isEmpty, hello.hostID == settings.hostID, nextSlot <= shared.slots {
            worker.slot = nextSlot
            grant = .init(path: shared.path, slot: nextSlot, slotFloats: shared.slotFloats)
            nextSlot += 1
        }
        workers[peer] = worker
        order.append(peer)
        counters.workersJoined += 1
        actions.append(.workerJoined(peer, name: hello.name))
        actions.append(.send(peer, .welcome(.init(heartbeatIntervalMilliseconds: UInt32(clamping: settings.heartbeatInterval),
                                                    configuration: settings.configuration, sharedMemory: grant))))
        return actions + assignIdle(now: now)
    }

    private mutating func remove(_ peer: Peer, reason: String) -> [Action] {
        guard let worker = workers.removeValue(forKey: peer) else { return [] }
        order.removeAll { $0 == peer }
        if let assignment = worker.assignment, assignment.step == plan?.step { requeueIfUnheld(assignment.shard) }
        counters.workersLost += 1
        return [.workerLost(peer, name: worker.name, reason: reason)]
    }

    private mutating func accept(_ result: WireMessage.Result, from peer: Peer, now: UInt64) -> [Action] {
        // The task a worker holds counts. So does an inline answer to an earlier hand-out of
        // a shard still without a result, made to this worker in this step (a task taken back
        // for taking long): its values are the same. Anything else is dropped: a result from an
        // earlier step, for a shard it was never given, or in shared memory the worker may
        // already be writing again.
        workers[peer]?.stalled = false
        let held = holds(peer, step: result.step, shard: result.shard, ticket: result.ticket)
        let earlier = !held && result.values.inlineValues != nil && result.step == plan?.step
            && issued[result.ticket].map { $0.peer == peer && $0.shard == result.shard } == true && results[result.shard] == nil
        guard held || earlier else {
            counters.lateResults += 1
            return assignIdle(now: now)
        }
        if held { workers[peer]?.assignment = nil }
        guard let plan, result.step == plan.step else {
            counters.lateResults += 1
            return assignIdle(now: now)
        }
        guard expected.contains(result.shard) else {
            counters.badResults += 1
            return [.refused(peer, reason: "result for shard \(result.shard) of a \(plan.shards.count)-shard step")] + assignIdle(now: now)
        }
        if let expected = plan.maskDigest, result.maskDigest != expected {
            counters.maskMismatches += 1
            let reason = "mask digest \(result.maskDigest.hexString) differs from the step's \(expected.hexString): the worker built other masks"
            var actions: [Action] = [.refused(peer, reason: reason), .send(peer, .shutdown(exitCode: 6, reason: reason))]
            requeueIfUnheld(result.shard)
            actions += remove(peer, reason: reason)
            return actions + assignIdle(now: now)
        }
        let expected = plan.resultCounts[Int(result.shard)]
        let fits: Bool
        switch result.values {
        case .inline(let values): fits = values.count == expected
        case .shared(let slot, let count): fits = slot == workers[peer]?.slot && Int(count) == plan.sharedResultCount
        case .absent: fits = false
        }
        guard fits else {
            counters.badResults += 1
            requeueIfUnheld(result.shard)
            let shared = plan.sharedResultCount.map { " or \($0) in its shared-memory slot" } ?? ""
            return [.refused(peer, reason: "a result of \(result.values.count) values (\(result.values.inlineValues == nil ? "not inline" : "inline")), expected \(expected) inline\(shared)")] + assignIdle(now: now)
        }
        results[result.shard] = result
        pending.removeAll { $0 == result.shard }
        return assignIdle(now: now)
    }

    /// Requeues `shard` unless it has a result, is queued, or another worker holds it.
    private mutating func requeueIfUnheld(_ shard: UInt32) {
        guard plan != nil, expected.contains(shard), results[shard] == nil, !pending.contains(shard),
              !order.contains(where: { workers[$0]?.assignment.map { $0.step == plan!.step && $0.shard == shard } == true }) else { return }
        pending.insert(shard, at: 0)
        counters.reassignedShards += 1
    }

    private mutating func assignIdle(now: UInt64) -> [Action] {
        guard let plan else { return [] }
        var actions: [Action] = []
        for peer in order.filter({ workers[$0]?.stalled == false }) + order.filter({ workers[$0]?.stalled == true }) {
            guard !pending.isEmpty else { break }
            guard var worker = workers[peer], worker.assignment == nil else { continue }
            let shard = pending.removeFirst()
            let includeParameters = worker.parametersStep != plan.step
            let ticket = nextTicket
            nextTicket &+= 1
            worker.assignment = Assignment(step: plan.step, shard: shard, ticket: ticket)
            worker.lastTicket = ticket
            let (allowed, overflow) = settings.taskTimeout.multipliedReportingOverflow(by: 1 << min(retakes[shard] ?? 0, 10))
            let (deadline, late) = now.addingReportingOverflow(overflow ? .max : allowed)
            worker.deadline = late ? .max : deadline
            issued[ticket] = (peer, shard)
            worker.parametersStep = plan.step
            workers[peer] = worker
            let members = plan.shards[Int(shard)..<(Int(shard) + shardsInTask(startingAt: shard))]
            let task = WireMessage.Task(step: plan.step, shard: shard, shardCount: UInt32(plan.shards.count),
                                        maskSeed: plan.maskSeed, rows: Array(members.joined()), work: plan.work, parameters: .absent,
                                        ticket: ticket, rowsPerShard: members.map { UInt32($0.count) })
            actions.append(.assign(peer, task, includeParameters: includeParameters))
        }
        return actions
    }
}
