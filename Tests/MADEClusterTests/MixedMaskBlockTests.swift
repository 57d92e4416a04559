import MADE
import Testing

@testable import MADECluster

/// Steps whose shards train different masks (`--masks-per-step M`), driven through the
/// coordinator's machine with no sockets: what each task names, and which digests count.
@Suite("Coordinator state machine: blocks of mixed masks")
struct MixedMaskBlockTests {
    static let fingerprint = [UInt8](repeating: 7, count: 32)
    /// The digest of each mask seed's masks, as the coordinator computes them.
    static func digest(_ seed: UInt64) -> [UInt8] { [UInt8](repeating: UInt8(seed + 1), count: 16) }
    let a: [UInt8] = Array("worker-a".utf8)
    let b: [UInt8] = Array("worker-b".utf8)

    func machine(workers: [[UInt8]]) -> CoordinatorStateMachine {
        var s = CoordinatorStateMachine.Settings(runID: 77, dataFingerprint: Self.fingerprint, configuration: [1])
        s.heartbeatInterval = 100
        s.heartbeatTimeout = 1000
        s.taskTimeout = 5000
        var m = CoordinatorStateMachine(settings: s)
        for w in workers {
            _ = m.receive(
                from: w,
                runID: 0,
                message: .hello(.init(dataFingerprint: Self.fingerprint, processID: 1, name: "w")),
                now: 0
            )
        }
        return m
    }

    /// A step of `seeds.count` shards of two rows each, shard `s` training `seeds[s]`, in blocks of up to 8.
    func plan(step: UInt64 = 0, seeds: [UInt64]) -> CoordinatorStateMachine.WorkPlan {
        var distinct: [UInt64] = []
        for s in seeds where !distinct.contains(s) { distinct.append(s) }
        var p = CoordinatorStateMachine.WorkPlan(
            step: step,
            maskSeeds: seeds,
            packingSeeds: distinct,
            maskDigests: seeds.map(Self.digest),
            gradientCount: 3,
            shards: seeds.indices.map { [Int32(2 * $0), Int32(2 * $0 + 1)] }
        )
        p.maxShardsPerTask = 8
        return p
    }

    func tasks(_ actions: [CoordinatorStateMachine.Action]) -> [([UInt8], WireMessage.Task)] {
        actions.compactMap { if case .assign(let p, let t, _) = $0 { (p, t) } else { nil } }
    }

    func result(_ task: WireMessage.Task, digest: [UInt8], ticket: UInt64? = nil) -> WireMessage {
        .result(
            .init(
                step: task.step,
                shard: task.shard,
                maskDigest: digest,
                lossSum: 1,
                computeMicroseconds: 1,
                values: .inline([1, 2, 3]),
                ticket: ticket ?? task.ticket
            )
        )
    }

    @Test("the block digest: one mask's digest when every shard shares it, else a digest of every shard's in order")
    func blockDigest() {
        let d0 = Self.digest(0)
        let d1 = Self.digest(1)
        #expect(WireFormat.blockDigest([d0, d0, d0]) == d0)
        let mixed = WireFormat.blockDigest([d0, d1])
        #expect(mixed.count == 16 && mixed != d0 && mixed != d1)
        #expect(mixed != WireFormat.blockDigest([d1, d0]))
        #expect(mixed != WireFormat.blockDigest([d0, d1, d0, d1]))
        #expect(WireFormat.blockDigest([d0, d1, d0, d1]) == WireFormat.blockDigest([d0, d1, d0, d1]))
    }

    @Test(
        """
        one worker takes a block of four shards of two masks: the task names each shard's mask and the step's packing \
        masks
        """
    )
    func taskNamesEveryMask() {
        var m = machine(workers: [a])
        let handed = tasks(m.begin(plan(seeds: [0, 1, 0, 1]), now: 1))
        #expect(handed.count == 1)
        let task = handed[0].1
        #expect(task.shard == 0 && task.rowsPerShard == [2, 2, 2, 2])
        #expect(task.maskSeeds == [0, 1, 0, 1])
        #expect(task.packingSeeds == [0, 1])
        let good = WireFormat.blockDigest([0, 1, 0, 1].map(Self.digest))
        _ = m.receive(from: a, runID: 77, message: result(task, digest: good), now: 2)
        #expect(m.isStepComplete)
        #expect(m.counters.maskMismatches == 0)
    }

    @Test("two workers, M = 4 in blocks of two: each result must carry the digest of its own block's masks")
    func digestPerBlock() {
        var m = machine(workers: [a, b])
        let handed = tasks(m.begin(plan(seeds: [0, 1, 2, 3]), now: 1))
        #expect(handed.map(\.1.maskSeeds) == [[0, 1], [2, 3]])
        #expect(handed.allSatisfy { $0.1.packingSeeds == [0, 1, 2, 3] })
        let (toA, taskA) = handed[0]
        let (toB, taskB) = handed[1]
        #expect(toA == a && toB == b)
        // a answers with the digest of the first mask only: it built the masks of one shard, not of the block.
        let wrong = m.receive(from: a, runID: 77, message: result(taskA, digest: Self.digest(0)), now: 2)
        #expect(m.counters.maskMismatches == 1)
        #expect(wrong.contains { if case .send(let p, .shutdown(6, _)) = $0 { p == a } else { false } })
        #expect(m.workerCount == 1)
        // b answers its own block correctly, then gets a's block with the same masks.
        let next = tasks(
            m.receive(
                from: b,
                runID: 77,
                message: result(taskB, digest: WireFormat.blockDigest([2, 3].map(Self.digest))),
                now: 3
            )
        )
        #expect(next.count == 1 && next[0].0 == b && next[0].1.shard == 0 && next[0].1.maskSeeds == [0, 1])
        // The digest of the other block's masks does not count for this one either.
        let swapped = m.receive(
            from: b,
            runID: 77,
            message: result(next[0].1, digest: WireFormat.blockDigest([2, 3].map(Self.digest))),
            now: 4
        )
        #expect(m.counters.maskMismatches == 2)
        #expect(swapped.contains { if case .refused = $0 { true } else { false } })
        #expect(!m.isStepComplete)
    }

    @Test(
        """
        a mixed block taken back from a dead worker goes to another with the same masks, and its answer completes the \
        step
        """
    )
    func deadWorkerBlock() {
        var m = machine(workers: [a, b])
        let handed = tasks(m.begin(plan(seeds: [0, 1, 0, 1, 0, 1, 0, 1]), now: 1))
        #expect(handed.map(\.1.maskSeeds) == [[0, 1, 0, 1], [0, 1, 0, 1]])
        let taskB = handed[1].1
        // a's connection goes; b answers and then takes a's block.
        _ = m.receive(from: b, runID: 77, message: .heartbeat(sequence: 1), now: 900)
        let digest = WireFormat.blockDigest([0, 1, 0, 1].map(Self.digest))
        _ = m.receive(from: b, runID: 77, message: result(taskB, digest: digest), now: 950)
        var retaken = tasks(m.connectionLost(a, now: 1500))
        retaken += tasks(m.receive(from: b, runID: 77, message: .heartbeat(sequence: 2), now: 1500))
        #expect(m.counters.workersLost == 1)
        #expect(retaken.count == 1 && retaken[0].0 == b)
        #expect(
            retaken[0].1.shard == 0 && retaken[0].1.maskSeeds == [0, 1, 0, 1] && retaken[0].1.packingSeeds == [0, 1]
        )
        _ = m.receive(from: b, runID: 77, message: result(retaken[0].1, digest: digest), now: 1600)
        #expect(m.isStepComplete)
        #expect(m.takeResults().map(\.shard) == [0, 4])
    }

    @Test("a worker given a later task of the same step gets no parameters again: they cover every mask of the step")
    func parametersOncePerStep() {
        var m = machine(workers: [a])
        var p = plan(seeds: [0, 1, 2, 3])
        p.maxShardsPerTask = 1
        let first = m.begin(p, now: 1)
        #expect(
            first.contains {
                if case .assign(_, let t, let route) = $0 { t.maskSeeds == [0] && route == .inline } else { false }
            }
        )
        let task = tasks(first)[0].1
        let second = m.receive(from: a, runID: 77, message: result(task, digest: Self.digest(0)), now: 2)
        #expect(
            second.contains {
                if case .assign(_, let t, let route) = $0 {
                    t.maskSeeds == [1] && t.packingSeeds == [0, 1, 2, 3] && route == nil
                } else {
                    false
                }
            }
        )
    }

    /// `plan(seeds:)` with each one-mask block packed by its own mask: 2 values for mask 0,
    /// 1 for mask 1, against the step's 3.
    func planPackedByTask(step: UInt64 = 0, seeds: [UInt64]) -> CoordinatorStateMachine.WorkPlan {
        var p = plan(step: step, seeds: seeds)
        p.taskPackings = [[0]: 2, [1]: 1]
        return p
    }

    func result(_ task: WireMessage.Task, values: Int, ticket: UInt64? = nil) -> WireMessage {
        .result(
            .init(
                step: task.step,
                shard: task.shard,
                maskDigest: WireFormat.blockDigest(task.maskSeeds.map(Self.digest)),
                lossSum: 1,
                computeMicroseconds: 1,
                values: .inline((0..<values).map(Float.init)),
                ticket: ticket ?? task.ticket
            )
        )
    }

    @Test("two workers, a shard of one mask each: each task packed by its own mask, its result counted so only")
    func packedByTask() {
        var m = machine(workers: [a, b])
        let handed = tasks(m.begin(planPackedByTask(seeds: [0, 1]), now: 1))
        #expect(handed.map(\.1.maskSeeds) == [[0], [1]])
        #expect(handed.map(\.1.packingSeeds) == [[0], [1]])
        // The step's size is not this task's: refused as bad, and the shard waits for a good answer.
        let again = tasks(m.receive(from: a, runID: 77, message: result(handed[0].1, values: 3), now: 2))
        #expect(m.counters.badResults == 1)
        #expect(again.count == 1 && again[0].1.shard == 0 && again[0].1.packingSeeds == [0])
        _ = m.receive(from: a, runID: 77, message: result(again[0].1, values: 2), now: 4)
        _ = m.receive(from: b, runID: 77, message: result(handed[1].1, values: 1), now: 5)
        #expect(m.isStepComplete)
        #expect(m.counters.badResults == 1 && m.counters.maskMismatches == 0)
    }

    @Test("a later task of the step reuses the parameters held when their masks cover it, else brings its own")
    func parametersPerPacking() {
        var m = machine(workers: [a])
        var p = planPackedByTask(seeds: [0, 1, 0, 1])
        p.maxShardsPerTask = 1
        let first = m.begin(p, now: 1)
        #expect(
            first.contains {
                if case .assign(_, let t, let r) = $0 {
                    t.maskSeeds == [0] && t.packingSeeds == [0] && r == .inline
                } else {
                    false
                }
            }
        )
        let second = m.receive(from: a, runID: 77, message: result(tasks(first)[0].1, values: 2), now: 2)
        #expect(
            second.contains {
                if case .assign(_, let t, let r) = $0 {
                    t.maskSeeds == [1] && t.packingSeeds == [1] && r == .inline
                } else {
                    false
                }
            }
        )
        // Shard 2 trains mask 0 again, but the worker now holds mask 1's parameters.
        let third = m.receive(from: a, runID: 77, message: result(tasks(second)[0].1, values: 1), now: 3)
        #expect(
            third.contains {
                if case .assign(_, let t, let r) = $0 {
                    t.shard == 2 && t.packingSeeds == [0] && r == .inline
                } else {
                    false
                }
            }
        )
        // A worker holding the parameters packed by a union takes a task of one of its masks without them.
        var u = machine(workers: [a])
        var q = plan(seeds: [0, 1, 0, 1])
        q.taskPackings = [[0]: 2, [1]: 1]  // blocks of two shards hold both masks: packed as the step
        let block = tasks(u.begin(q, now: 1))
        #expect(block.count == 1 && block[0].1.packingSeeds == [0, 1])
    }

    @Test("a worker on this host is handed the step's packing, which masks the parameters in shared memory")
    func sharedMemoryPacksAsTheStep() {
        var s = CoordinatorStateMachine.Settings(runID: 77, dataFingerprint: Self.fingerprint, configuration: [1])
        s.hostID = "here"
        s.sharedMemory = .init(path: "/dev/shm/run", slotFloats: 10, slots: 2)
        var m = CoordinatorStateMachine(settings: s)
        let local = WireMessage.hello(.init(dataFingerprint: Self.fingerprint, processID: 1, name: "a", hostID: "here"))
        _ = m.receiveReserving(from: a, runID: 0, message: local, now: 0)
        let remote = WireMessage.hello(.init(dataFingerprint: Self.fingerprint, processID: 2, name: "b"))
        _ = m.receive(from: b, runID: 0, message: remote, now: 0)
        let actions = m.begin(planPackedByTask(seeds: [0, 1]), now: 1)
        let routes = actions.compactMap {
            if case .assign(let p, let t, let r) = $0 { (p, t.packingSeeds, r) } else { nil }
        }
        #expect(routes.count == 2)
        #expect(routes.contains { $0.0 == a && $0.1 == [0, 1] && $0.2 == .sharedMemory })
        #expect(routes.contains { $0.0 == b && $0.1 == [1] && $0.2 == .inline })
    }

    @Test("an inline answer to an earlier hand-out counts at the size of that hand-out's packing")
    func earlierHandOutKeepsItsSize() {
        var m = machine(workers: [a])
        var p = planPackedByTask(seeds: [0, 1])
        p.maxShardsPerTask = 1
        let first = tasks(m.begin(p, now: 1))[0].1
        // Taken back for taking too long, and handed to the same (only) worker again.
        _ = m.receive(from: a, runID: 77, message: .heartbeat(sequence: 1), now: 4500)
        let retaken = tasks(m.tick(now: 5002))
        #expect(retaken.count == 1 && retaken[0].1.shard == 0 && retaken[0].1.ticket != first.ticket)
        _ = m.receive(from: a, runID: 77, message: result(first, values: 3), now: 5003)
        #expect(m.counters.badResults == 1)
        _ = m.receive(from: a, runID: 77, message: result(first, values: 2), now: 5004)
        #expect(m.counters.badResults == 1 && m.counters.lateResults == 0)
        let next = tasks(m.receive(from: a, runID: 77, message: result(retaken[0].1, values: 2), now: 5005))
        #expect(next.count == 1 && next[0].1.shard == 1 && next[0].1.packingSeeds == [1])
        _ = m.receive(from: a, runID: 77, message: result(next[0].1, values: 1), now: 5006)
        #expect(m.isStepComplete)
    }

    @Test("a worker given a task without parameters, packed by masks other than those it holds, says hello again")
    func workerHoldsOnePacking() {
        var s = WorkerStateMachine.Settings(dataFingerprint: [UInt8](repeating: 1, count: 32), processID: 9, name: "w")
        s.helloRetry = 500
        var w = WorkerStateMachine(settings: s)
        _ = w.start(now: 0)
        let welcome = WireMessage.welcome(.init(heartbeatIntervalMilliseconds: 200, configuration: []))
        _ = w.receive(runID: 5, message: welcome, now: 10)
        func task(_ packing: [UInt64], _ parameters: FloatPayload) -> WireMessage {
            .task(
                .init(
                    step: 4,
                    shard: 0,
                    shardCount: 2,
                    maskSeeds: [packing[0]],
                    packingSeeds: packing,
                    rows: [1],
                    parameters: parameters
                )
            )
        }
        #expect(w.receive(runID: 5, message: task([0], .inline([1, 2])), now: 20).count == 1)
        let held = w.receive(runID: 5, message: task([0], .absent), now: 30)
        if case .compute = held.first {} else { Issue.record("expected compute, got \(held)") }
        let other = w.receive(runID: 5, message: task([1], .absent), now: 40)
        if case .send(.hello) = other.first {} else { Issue.record("expected hello, got \(other)") }
    }
}

/// A step of several masks whose parameters lie in shared memory in a region per mask, each in
/// its own mask's compute order.
@Suite("Coordinator state machine: a parameter region per mask")
struct ParameterRegionTests {
    let a: [UInt8] = Array("worker-a".utf8)
    let b: [UInt8] = Array("worker-b".utf8)

    func machine(workers: [[UInt8]]) -> (CoordinatorStateMachine, [WireMessage.SharedMemoryGrant?]) {
        var s = CoordinatorStateMachine.Settings(
            runID: 77,
            dataFingerprint: MixedMaskBlockTests.fingerprint,
            configuration: [1]
        )
        s.hostID = "here"
        s.sharedMemory = .init(path: "/dev/shm/run", slotFloats: 10, slots: 2, parameterSlots: [3])
        var m = CoordinatorStateMachine(settings: s)
        var grants: [WireMessage.SharedMemoryGrant?] = []
        for w in workers {
            let hello = WireMessage.hello(
                .init(dataFingerprint: MixedMaskBlockTests.fingerprint, processID: 1, name: "w", hostID: "here")
            )
            for case .send(_, .welcome(let welcome)) in m.receiveReserving(from: w, runID: 0, message: hello, now: 0) {
                grants.append(welcome.sharedMemory)
            }
        }
        return (m, grants)
    }

    func plan(seeds: [UInt64]) -> CoordinatorStateMachine.WorkPlan {
        var p = MixedMaskBlockTests().plan(seeds: seeds)
        p.sharedResultCount = 10
        p.sharedResultsInComputeOrder = true
        p.sharedRegions = [0, 1]
        p.taskPackings = [[0]: 2, [1]: 2]
        return p
    }

    func answer(
        _ m: CoordinatorStateMachine,
        _ task: WireMessage.Task,
        from peer: [UInt8],
        _ values: FloatPayload
    )
        -> WireMessage
    {
        .result(
            .init(
                step: task.step,
                shard: task.shard,
                maskDigest: WireFormat.blockDigest(task.maskSeeds.map(MixedMaskBlockTests.digest)),
                lossSum: 1,
                computeMicroseconds: 1,
                values: values,
                ticket: m.lastTicket(of: peer) ?? 0
            )
        )
    }

    @Test("the welcome names the parameter slots; a task of one mask is packed by it and answers in its order")
    func taskOfOneMask() {
        var (m, grants) = machine(workers: [a, b])
        #expect(grants.map { $0?.parameterSlots } == [[3], [3]])
        #expect(grants.map { $0?.slot } == [1, 2])
        let actions = m.begin(plan(seeds: [0, 1]), now: 1)
        let handed = actions.compactMap {
            action -> ([UInt8], WireMessage.Task, CoordinatorStateMachine.ParameterRoute?)? in
            if case .assign(let p, let t, let route) = action { (p, t, route) } else { nil }
        }
        #expect(handed.map(\.1.packingSeeds) == [[0], [1]])
        #expect(handed.allSatisfy { $0.2 == .sharedMemory })
        for (peer, task, _) in handed {
            let slot = UInt32(m.sharedSlot(of: peer)!)
            _ = m.receive(
                from: peer,
                runID: 77,
                message: answer(m, task, from: peer, .sharedCompute(slot: slot, count: 10)),
                now: 2
            )
        }
        #expect(m.isStepComplete && m.counters.badResults == 0)
    }

    @Test("a block of two masks through shared memory is packed as the step, and may not answer in a mask's order")
    func mixedBlock() {
        var (m, _) = machine(workers: [a])
        let actions = m.begin(plan(seeds: [0, 1]), now: 1)
        let handed = actions.compactMap { action -> WireMessage.Task? in
            if case .assign(_, let t, _) = action { t } else { nil }
        }
        #expect(handed.count == 1 && handed[0].maskSeeds == [0, 1] && handed[0].packingSeeds == [0, 1])
        _ = m.receive(
            from: a,
            runID: 77,
            message: answer(m, handed[0], from: a, .sharedCompute(slot: 1, count: 10)),
            now: 2
        )
        #expect(!m.isStepComplete && m.counters.badResults == 1)
        _ = m.receive(from: a, runID: 77, message: answer(m, handed[0], from: a, .inline([1, 2, 3])), now: 3)
        #expect(m.isStepComplete)
    }
}
