import Testing

@testable import MADECluster

@Suite("Coordinator state machine")
struct CoordinatorStateMachineTests {
    static let fingerprint = [UInt8](repeating: 7, count: 32)
    static let digest = [UInt8](repeating: 1, count: 16)
    let a: [UInt8] = Array("worker-a".utf8)
    let b: [UInt8] = Array("worker-b".utf8)
    let c: [UInt8] = Array("worker-c".utf8)

    func machine() -> CoordinatorStateMachine {
        var s = CoordinatorStateMachine.Settings(
            runID: 77,
            dataFingerprint: Self.fingerprint,
            configuration: [1, 2, 3]
        )
        s.heartbeatInterval = 100
        s.heartbeatTimeout = 1000
        s.taskTimeout = 5000
        return CoordinatorStateMachine(settings: s)
    }

    func hello(_ name: String, fingerprint: [UInt8] = fingerprint) -> WireMessage {
        .hello(.init(dataFingerprint: fingerprint, processID: 1, name: name))
    }

    func plan(step: UInt64, shards: Int = 4) -> CoordinatorStateMachine.WorkPlan {
        .init(
            step: step,
            maskSeed: 3,
            maskDigest: Self.digest,
            gradientCount: 2,
            shards: (0..<shards).map { [Int32($0 * 10), Int32($0 * 10 + 1)] }
        )
    }

    /// A result carrying `ticket`: pass `m.lastTicket(of: peer)`, the last hand-out to the sender.
    func result(step: UInt64, shard: UInt32, ticket: UInt64?, digest: [UInt8] = digest, count: Int = 2) -> WireMessage {
        .result(
            .init(
                step: step,
                shard: shard,
                maskDigest: digest,
                lossSum: Double(shard),
                computeMicroseconds: 1,
                values: .inline([Float](repeating: Float(shard), count: count)),
                ticket: ticket ?? 0
            )
        )
    }

    func assignments(_ actions: [CoordinatorStateMachine.Action]) -> [([UInt8], UInt32, Bool)] {
        actions.compactMap { if case .assign(let p, let t, let route) = $0 { (p, t.shard, route != nil) } else { nil } }
    }

    @Test("workers are welcomed, pull shards in order and get parameters once per step")
    func assignment() {
        var m = machine()
        let joined = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        #expect(
            joined.contains(.send(a, .welcome(.init(heartbeatIntervalMilliseconds: 100, configuration: [1, 2, 3]))))
        )
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 0)
        let first = assignments(m.begin(plan(step: 0), now: 1))
        #expect(first.map(\.1) == [0, 1])
        #expect(first.allSatisfy { $0.2 })
        let next = assignments(
            m.receive(from: b, runID: 77, message: result(step: 0, shard: 1, ticket: m.lastTicket(of: b)), now: 2)
        )
        #expect(next.count == 1 && next[0].0 == b && next[0].1 == 2 && next[0].2 == false)
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: a)), now: 3)
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 2, ticket: m.lastTicket(of: b)), now: 4)
        #expect(!m.isStepComplete)
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 3, ticket: m.lastTicket(of: a)), now: 5)
        #expect(m.isStepComplete)
        #expect(m.takeResults().map(\.shard) == [0, 1, 2, 3])
        let second = assignments(m.begin(plan(step: 1), now: 6))
        #expect(second.count == 2 && second.allSatisfy { $0.2 })
    }

    @Test("a worker with other data is refused with the reason")
    func dataMismatch() {
        var m = machine()
        let actions = m.receive(
            from: a,
            runID: 0,
            message: hello("a", fingerprint: [UInt8](repeating: 9, count: 32)),
            now: 0
        )
        #expect(m.workerCount == 0)
        #expect(m.counters.refusedWorkers == 1)
        #expect(
            actions.contains {
                if case .send(_, .reject(let reason)) = $0 { reason.contains("data mismatch") } else { false }
            }
        )
        // Its next hello, sent before the refusal reached it, is refused again but the worker counts once.
        let again = m.receive(
            from: a,
            runID: 0,
            message: hello("a", fingerprint: [UInt8](repeating: 9, count: 32)),
            now: 300
        )
        #expect(again.contains { if case .send(_, .reject) = $0 { true } else { false } })
        #expect(m.counters.refusedWorkers == 1)
        _ = m.receive(from: b, runID: 0, message: hello("b", fingerprint: [UInt8](repeating: 9, count: 32)), now: 310)
        #expect(m.counters.refusedWorkers == 2)
    }

    @Test("duplicate, late, foreign and malformed input is dropped and counted")
    func drops() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.begin(plan(step: 5, shards: 2), now: 0)
        _ = m.receive(from: a, runID: 77, message: result(step: 5, shard: 0, ticket: m.lastTicket(of: a)), now: 1)
        _ = m.receive(from: a, runID: 77, message: result(step: 5, shard: 0, ticket: m.lastTicket(of: a)), now: 2)
        #expect(m.counters.lateResults == 1)  // a holds shard 1 now, not shard 0
        _ = m.receive(from: a, runID: 77, message: result(step: 4, shard: 1, ticket: m.lastTicket(of: a)), now: 3)
        #expect(m.counters.lateResults == 2)
        let foreign = m.receive(
            from: a,
            runID: 78,
            message: result(step: 5, shard: 1, ticket: m.lastTicket(of: a)),
            now: 4
        )
        #expect(m.counters.wrongRun == 1)
        #expect(foreign.contains { if case .send(_, .reject) = $0 { true } else { false } })
        let stranger = m.receive(from: c, runID: 77, message: .heartbeat(sequence: 1), now: 5)
        #expect(stranger == [.send(c, .who)])
        _ = m.malformed(from: c, error: .badMagic, now: 6)
        let old = m.malformed(from: c, error: .unsupportedVersion(9), now: 6)
        #expect(old.contains { if case .send(_, .reject) = $0 { true } else { false } })
        _ = m.receive(
            from: a,
            runID: 77,
            message: result(step: 5, shard: 1, ticket: m.lastTicket(of: a), count: 3),
            now: 7
        )
        #expect(m.counters.badResults == 1)
        #expect(!m.isStepComplete)
        _ = m.receive(from: a, runID: 77, message: result(step: 5, shard: 1, ticket: m.lastTicket(of: a)), now: 8)
        #expect(m.isStepComplete)
        #expect(m.counters.malformed == 2)
        #expect(m.counters.rejected == 5)
    }

    @Test("a worker whose connection is gone is declared dead and its shard goes to another")
    func deadWorker() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 0)
        _ = m.begin(plan(step: 0, shards: 2), now: 0)
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 1, ticket: m.lastTicket(of: b)), now: 500)
        let actions = m.connectionLost(a, now: 1200)
        #expect(
            actions.contains(.workerLost(a, name: "a", reason: "its connection is gone (last message 1200 ms ago)"))
        )
        let moved = assignments(actions)
        #expect(moved.count == 1 && moved[0].0 == b && moved[0].1 == 0)
        #expect(m.counters.workersLost == 1)
        #expect(m.connectionLost(a, now: 1250).isEmpty, "a worker is lost once")
        // A late result from the dead worker counts for nothing now it is gone.
        #expect(
            m.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: a)), now: 1300)
                == [.send(a, .who)]
        )
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: b)), now: 1400)
        #expect(m.isStepComplete)
    }

    @Test("a worker whose process ended leaves at once, its shard to another; a namesake of another process stays")
    func processEnded() {
        var m = machine()
        func hello(_ name: String, _ pid: UInt32) -> WireMessage {
            .hello(.init(dataFingerprint: Self.fingerprint, processID: pid, name: name))
        }
        _ = m.receive(from: a, runID: 0, message: hello("local-0", 41), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("local-1", 42), now: 0)
        _ = m.begin(plan(step: 0, shards: 2), now: 0)
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 1, ticket: m.lastTicket(of: b)), now: 10)
        // Another process of that name, or that process id under another name, is not the one that ended.
        #expect(m.processEnded(name: "local-0", processID: 40, reason: "gone", now: 20).isEmpty)
        #expect(m.processEnded(name: "local-1", processID: 41, reason: "gone", now: 20).isEmpty)
        #expect(m.workerCount == 2)
        let actions = m.processEnded(name: "local-0", processID: 41, reason: "its process ended", now: 30)
        #expect(actions.contains(.workerLost(a, name: "local-0", reason: "its process ended")))
        let moved = assignments(actions)
        #expect(moved.count == 1 && moved[0].0 == b && moved[0].1 == 0)
        #expect(m.workerCount == 1 && m.counters.workersLost == 1)
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: b)), now: 40)
        #expect(m.isStepComplete)
    }

    @Test(
        """
        a quiet worker whose connection is up is alive: no heartbeat timeout drops it, only the task timeout takes \
        its task back
        """
    )
    func quietWorkerStays() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.begin(plan(step: 0, shards: 1), now: 0)
        // Far beyond the heartbeat timeout (1000 ms) without a word: it may be sending its result on a slow link.
        for t in stride(from: UInt64(100), through: 4900, by: 100) {
            #expect(!m.tick(now: t).contains { if case .workerLost = $0 { true } else { false } })
        }
        #expect(m.workerCount == 1 && m.counters.workersLost == 0)
        // Its result, arriving late, counts.
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: a)), now: 4950)
        #expect(m.isStepComplete)
        _ = m.takeResults()
        // Progress is still guarded: a task out longer than the task timeout (5000 ms) is taken back.
        _ = m.begin(plan(step: 1, shards: 1), now: 5000)
        let retaken = m.tick(now: 10_001)
        #expect(assignments(retaken).count == 1 && m.counters.reassignedShards == 1 && m.workerCount == 1)
    }

    @Test("a lone worker whose task was lost gets it again after the task timeout")
    func lostTask() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.begin(plan(step: 0, shards: 1), now: 0)
        var again: [([UInt8], UInt32, Bool)] = []
        for t in stride(from: UInt64(100), through: 5200, by: 100) {
            _ = m.receive(from: a, runID: 77, message: .heartbeat(sequence: t), now: t)
            again += assignments(m.tick(now: t))
        }
        #expect(again.count == 1 && again[0].0 == a && again[0].1 == 0 && again[0].2)
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: a)), now: 5300)
        #expect(m.isStepComplete)
    }

    @Test("a late result from an earlier step does not cancel the worker's current task")
    func lateResultKeepsAssignment() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.begin(plan(step: 1, shards: 1), now: 0)
        _ = m.receive(from: a, runID: 77, message: result(step: 1, shard: 0, ticket: m.lastTicket(of: a)), now: 1)
        _ = m.takeResults()
        _ = m.begin(plan(step: 2, shards: 1), now: 2)
        // A stale copy of step 1's result arrives: a still holds step 2's shard 0.
        _ = m.receive(from: a, runID: 77, message: result(step: 1, shard: 0, ticket: m.lastTicket(of: a)), now: 3)
        #expect(m.holds(a, step: 2, shard: 0, ticket: m.lastTicket(of: a)!))
        _ = m.receive(from: a, runID: 77, message: result(step: 2, shard: 0, ticket: m.lastTicket(of: a)), now: 4)
        #expect(m.isStepComplete)
    }

    @Test(
        "a shard stuck past the task timeout is taken back and given to an idle worker; the late result does not count"
    )
    func stuckShard() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 0)
        _ = m.begin(plan(step: 0, shards: 2), now: 0)
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 1, ticket: m.lastTicket(of: b)), now: 10)
        for t in stride(from: UInt64(100), through: 5000, by: 100) {
            _ = m.receive(from: a, runID: 77, message: .heartbeat(sequence: t), now: t)
            _ = m.receive(from: b, runID: 77, message: .heartbeat(sequence: t), now: t)
            _ = m.tick(now: t)
        }
        let actions = m.tick(now: 5100)
        let moved = assignments(actions)
        #expect(moved.count == 1 && moved[0].0 == b && moved[0].1 == 0)
        #expect(m.counters.reassignedShards == 1)
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: b)), now: 5200)
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: a)), now: 5300)
        #expect(m.counters.lateResults == 1)  // a's task was taken back: its result no longer counts
        #expect(m.isStepComplete)
    }

    @Test("a result built with other masks is refused and its worker dismissed")
    func maskMismatch() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 0)
        _ = m.begin(plan(step: 0, shards: 2), now: 0)
        let actions = m.receive(
            from: a,
            runID: 77,
            message: result(step: 0, shard: 0, ticket: m.lastTicket(of: a), digest: [UInt8](repeating: 2, count: 16)),
            now: 1
        )
        #expect(m.counters.maskMismatches == 1)
        #expect(m.workerCount == 1)
        #expect(actions.contains { if case .send(let p, .shutdown) = $0 { p == a } else { false } })
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 1, ticket: m.lastTicket(of: b)), now: 2)
        let moved = assignments(m.tick(now: 3))
        #expect(moved.count == 0)  // shard 0 went to b right after its result
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: b)), now: 4)
        #expect(m.isStepComplete)
    }

    @Test("a restarted worker that says hello again gets its shard requeued and parameters resent")
    func rehello() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.begin(plan(step: 0, shards: 1), now: 0)
        let actions = m.receive(from: a, runID: 0, message: hello("a"), now: 10)
        let again = assignments(actions)
        #expect(again.count == 1 && again[0].1 == 0 && again[0].2)
        #expect(m.counters.workersLost == 0)
    }

    @Test("workers on this host get their own shared-memory slot, never reused; others get none")
    func sharedMemoryGrants() {
        var s = CoordinatorStateMachine.Settings(runID: 77, dataFingerprint: Self.fingerprint, configuration: [])
        s.hostID = "here"
        s.sharedMemory = .init(path: "/dev/shm/run", slotFloats: 10, slots: 2)
        var m = CoordinatorStateMachine(settings: s)
        func grant(_ actions: [CoordinatorStateMachine.Action]) -> WireMessage.SharedMemoryGrant?? {
            for case .send(_, .welcome(let w)) in actions { return .some(w.sharedMemory) }
            return nil
        }
        let local = WireMessage.hello(.init(dataFingerprint: Self.fingerprint, processID: 1, name: "a", hostID: "here"))
        #expect(
            grant(m.receiveReserving(from: a, runID: 0, message: local, now: 0))
                == .some(.init(path: "/dev/shm/run", slot: 1, slotFloats: 10))
        )
        #expect(m.sharedSlot(of: a) == 1)
        let remote = WireMessage.hello(
            .init(dataFingerprint: Self.fingerprint, processID: 1, name: "b", hostID: "elsewhere")
        )
        #expect(grant(m.receiveReserving(from: b, runID: 0, message: remote, now: 0)) == .some(nil))
        // The same process saying hello again keeps its slot.
        #expect(
            grant(m.receiveReserving(from: a, runID: 0, message: local, now: 1))
                == .some(.init(path: "/dev/shm/run", slot: 1, slotFloats: 10))
        )
        #expect(m.counters.workersJoined == 2)
        // A new process gets the next slot; then slots run out and later workers go without.
        #expect(
            grant(m.receiveReserving(from: c, runID: 0, message: local, now: 2))
                == .some(.init(path: "/dev/shm/run", slot: 2, slotFloats: 10))
        )
        let d: [UInt8] = Array("worker-d".utf8)
        #expect(grant(m.receiveReserving(from: d, runID: 0, message: local, now: 2)) == .some(nil))
        // A lost worker's slot is not handed out again.
        for peer in [a, b, c, d] { _ = m.connectionLost(peer, now: 1_000_000) }
        #expect(m.workerCount == 0)
        #expect(grant(m.receiveReserving(from: a, runID: 0, message: local, now: 1_000_001)) == .some(nil))
        // A gradient said to be in shared memory is not accepted as such.
        _ = m.begin(plan(step: 0, shards: 1), now: 3)
        for peer in [a, b, c] {
            let shared = WireMessage.result(
                .init(
                    step: 0,
                    shard: 0,
                    maskDigest: Self.digest,
                    lossSum: 0,
                    computeMicroseconds: 0,
                    values: .shared(slot: 1, count: 2),
                    ticket: m.lastTicket(of: peer) ?? 0
                )
            )
            _ = m.receive(from: peer, runID: 77, message: shared, now: 1_000_002)
        }
        #expect(!m.isStepComplete)
        #expect(m.counters.badResults >= 1)
    }

    @Test(
        "a gradient in shared memory counts only in its step's order: layout, or the mask's compute order",
        arguments: [false, true]
    )
    func sharedResultOrder(_ computeOrder: Bool) throws {
        var settings = CoordinatorStateMachine.Settings(runID: 77, dataFingerprint: Self.fingerprint, configuration: [])
        settings.hostID = "here"
        settings.sharedMemory = .init(path: "/dev/shm/run", slotFloats: 10, slots: 2)
        var m = CoordinatorStateMachine(settings: settings)
        _ = m.receiveReserving(
            from: a,
            runID: 0,
            message: .hello(.init(dataFingerprint: Self.fingerprint, processID: 1, name: "a", hostID: "here")),
            now: 0
        )
        var p = CoordinatorStateMachine.WorkPlan(
            step: 0,
            maskSeed: 3,
            maskDigest: Self.digest,
            gradientCount: 2,
            denseCount: 10,
            shards: [[0]]
        )
        p.sharedResultsInComputeOrder = computeOrder
        _ = m.begin(p, now: 1)
        func answer(_ values: FloatPayload) -> WireMessage {
            let ticket = m.lastTicket(of: a) ?? 0
            return .result(
                .init(
                    step: 0,
                    shard: 0,
                    maskDigest: Self.digest,
                    lossSum: 0,
                    computeMicroseconds: 0,
                    values: values,
                    ticket: ticket
                )
            )
        }
        let wrong: FloatPayload = computeOrder ? .shared(slot: 1, count: 10) : .sharedCompute(slot: 1, count: 10)
        let right: FloatPayload = computeOrder ? .sharedCompute(slot: 1, count: 10) : .shared(slot: 1, count: 10)
        let refused = m.receive(from: a, runID: 77, message: answer(wrong), now: 2)
        #expect(!m.isStepComplete && m.counters.badResults == 1)
        let reasons = refused.compactMap { action -> String? in
            if case .refused(_, let reason) = action { reason } else { nil }
        }
        #expect(reasons.contains { $0.contains(computeOrder ? "in compute order" : "slot") })
        // The shard goes back to the worker under a new ticket; the answer in the step's order counts.
        _ = m.receive(from: a, runID: 77, message: answer(right), now: 3)
        #expect(m.isStepComplete)
    }

    @Test(
        """
        tickets: an answer in shared memory counts only with the last ticket; an inline answer to an earlier hand-out \
        of the step counts; deadlines double
        """
    )
    func tickets() throws {
        var settings = CoordinatorStateMachine.Settings(runID: 77, dataFingerprint: Self.fingerprint, configuration: [])
        settings.heartbeatTimeout = 100_000
        settings.taskTimeout = 5000
        settings.hostID = "here"
        settings.sharedMemory = .init(path: "/dev/shm/run", slotFloats: 10, slots: 2)
        var m = CoordinatorStateMachine(settings: settings)
        _ = m.receiveReserving(
            from: a,
            runID: 0,
            message: .hello(.init(dataFingerprint: Self.fingerprint, processID: 1, name: "a", hostID: "here")),
            now: 0
        )
        let p = CoordinatorStateMachine.WorkPlan(
            step: 0,
            maskSeed: 3,
            maskDigest: Self.digest,
            gradientCount: 2,
            denseCount: 10,
            shards: [[0]]
        )
        _ = m.begin(p, now: 1)
        let firstTicket = try #require(m.lastTicket(of: a))
        // The task times out and, a being the only worker, goes back to a under a new ticket.
        let again = m.tick(now: 1 + 5001)
        let secondTicket = try #require(m.lastTicket(of: a))
        #expect(secondTicket != firstTicket)
        #expect(
            again.contains {
                if case .assign(a, let t, _) = $0 { t.ticket == secondTicket && t.shard == 0 } else { false }
            }
        )
        // Its deadline doubled: not taken back after another 5 s, but after 10 s.
        #expect(assignments(m.tick(now: 5002 + 5001)).isEmpty)
        #expect(m.holds(a, step: 0, shard: 0, ticket: secondTicket))
        var later = m
        #expect(assignments(later.tick(now: 5002 + 10_001)).map(\.1) == [0])
        #expect(later.lastTicket(of: a) != secondTicket)
        // The first hand-out's answer in shared memory does not count: a may be writing its slot again.
        let shared = WireMessage.result(
            .init(
                step: 0,
                shard: 0,
                maskDigest: Self.digest,
                lossSum: 0,
                computeMicroseconds: 0,
                values: .shared(slot: 1, count: 10),
                ticket: firstTicket
            )
        )
        _ = m.receive(from: a, runID: 77, message: shared, now: 10_100)
        #expect(!m.isStepComplete && m.counters.lateResults == 1)
        // A failure of the first hand-out does not count either.
        _ = m.receive(
            from: a,
            runID: 77,
            message: .failed(step: 0, shard: 0, ticket: firstTicket, reason: "x"),
            now: 10_101
        )
        #expect(m.counters.failedTasks == 0 && m.holds(a, step: 0, shard: 0, ticket: secondTicket))
        // The same answer inline counts: the values are those of the step, whichever hand-out made them.
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: firstTicket), now: 10_102)
        #expect(m.isStepComplete)
        // An answer with a ticket never handed out for that shard does not.
        var other = CoordinatorStateMachine(settings: settings)
        _ = other.receiveReserving(
            from: a,
            runID: 0,
            message: .hello(.init(dataFingerprint: Self.fingerprint, processID: 1, name: "a", hostID: "here")),
            now: 0
        )
        _ = other.begin(plan(step: 0, shards: 2), now: 1)
        let held = try #require(other.lastTicket(of: a))
        _ = other.receive(from: a, runID: 77, message: result(step: 0, shard: 1, ticket: held), now: 2)
        _ = other.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: held &+ 99), now: 3)
        #expect(!other.isStepComplete)
    }

    @Test("shards per task: the largest power of two that gives no worker more shards to compute")
    func blockSizes() {
        // (shards, workers, limit) -> shards per task
        let cases: [((Int, Int, Int), Int)] = [
            ((4, 1, 8), 4), ((4, 2, 8), 2), ((4, 3, 8), 2), ((4, 4, 8), 1), ((2, 2, 8), 1),
            ((7, 2, 8), 4), ((8, 3, 8), 1), ((64, 1, 8), 8), ((16, 2, 8), 8), ((4, 1, 1), 1), ((4, 0, 8), 1),
            ((3, 1, 8), 4), ((5, 1, 8), 8), ((6, 2, 8), 1), ((1, 1, 8), 1),
        ]
        for ((shards, workers, limit), expected) in cases {
            #expect(
                CoordinatorStateMachine.blockSize(shards: shards, workers: workers, limit: limit) == expected,
                "\(shards) \(workers) \(limit)"
            )
        }
    }

    @Test(
        """
        with fewer workers than shards, a task holds a whole aligned block of shards and its one result stands for \
        them
        """
    )
    func blockTasks() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 0)
        var p = plan(step: 0, shards: 4)
        p.maxShardsPerTask = 8
        let tasks = m.begin(p, now: 1).compactMap {
            if case .assign(let peer, let t, _) = $0 { (peer, t) } else { nil }
        }
        #expect(tasks.map(\.1.shard) == [0, 2])
        #expect(tasks.map(\.1.rowsPerShard) == [[2, 2], [2, 2]])
        #expect(tasks[0].1.rows == [0, 1, 10, 11] && tasks[1].1.rows == [20, 21, 30, 31])
        #expect(m.shardsInTask(startingAt: 2) == 2)
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 2, ticket: m.lastTicket(of: b)), now: 2)
        #expect(!m.isStepComplete)
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: a)), now: 3)
        #expect(m.isStepComplete)
        #expect(m.takeResults().map(\.shard) == [0, 2])
        // A worker lost mid-step leaves its whole block to the other.
        p.step = 1
        _ = m.begin(p, now: 10)
        _ = m.receive(from: a, runID: 77, message: .heartbeat(sequence: 1), now: 900)
        _ = m.connectionLost(b, now: 1011)
        #expect(m.workerCount == 1)
        let next = m.receive(
            from: a,
            runID: 77,
            message: result(step: 1, shard: 0, ticket: m.lastTicket(of: a)),
            now: 1012
        )
        #expect(
            next.contains {
                if case .assign(a, let t, _) = $0 { t.shard == 2 && t.rowsPerShard == [2, 2] } else { false }
            }
        )
        _ = m.receive(from: a, runID: 77, message: result(step: 1, shard: 2, ticket: m.lastTicket(of: a)), now: 1013)
        #expect(m.isStepComplete)
    }

    @Test("a malformed frame from a worker holding a task fails that task at once; three end the step with the reason")
    func malformedResult() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 0)
        #expect(assignments(m.begin(plan(step: 0, shards: 2), now: 1)).map(\.1) == [0, 1])
        // b's result does not decode: its shard goes out again now, to b, the one idle worker.
        let again = m.malformed(from: b, error: .invalidField("loss sum is not finite"), now: 2)
        #expect(assignments(again).map(\.1) == [1])
        #expect(m.counters.malformed == 1 && m.counters.failedTasks == 1)
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: a)), now: 3)
        // The second failure sends the shard to a, now idle and first in line; a fails it too.
        #expect(assignments(m.malformed(from: b, error: .badMagic, now: 4)).map { $0.0 == a && $0.1 == 1 } == [true])
        #expect(m.failure == nil)
        _ = m.malformed(from: a, error: .badMagic, now: 5)
        #expect(m.failure?.message.contains("shard 1 of step 0 failed 3 times") == true)
        #expect(m.failure?.message.contains("malformed frame") == true)
        // A malformed frame from a worker with no task only counts.
        var idle = machine()
        _ = idle.receive(from: a, runID: 0, message: hello("a"), now: 0)
        #expect(assignments(idle.malformed(from: a, error: .badMagic, now: 1)).isEmpty)
        #expect(idle.counters.failedTasks == 0 && idle.counters.malformed == 1)
    }

    @Test("a gradient in shared memory counts only from the sender's own slot, at the dense size")
    func sharedResults() {
        var s = CoordinatorStateMachine.Settings(runID: 77, dataFingerprint: Self.fingerprint, configuration: [])
        s.hostID = "here"
        s.sharedMemory = .init(path: "/dev/shm/run", slotFloats: 10, slots: 4)
        var m = CoordinatorStateMachine(settings: s)
        func hello(_ name: String, host: String) -> WireMessage {
            .hello(.init(dataFingerprint: Self.fingerprint, processID: 1, name: name, hostID: host))
        }
        _ = m.receiveReserving(from: a, runID: 0, message: hello("a", host: "here"), now: 0)
        _ = m.receiveReserving(from: b, runID: 0, message: hello("b", host: "elsewhere"), now: 0)
        _ = m.receiveReserving(from: c, runID: 0, message: hello("c", host: "here"), now: 0)
        #expect(m.sharedSlot(of: a) == 1 && m.sharedSlot(of: b) == nil && m.sharedSlot(of: c) == 2)
        let plan = CoordinatorStateMachine.WorkPlan(
            step: 0,
            maskSeed: 3,
            maskDigest: Self.digest,
            gradientCount: 2,
            denseCount: 10,
            shards: [[0], [1], [2]]
        )
        #expect(assignments(m.begin(plan, now: 1)).map(\.1) == [0, 1, 2])
        func shared(_ shard: UInt32, slot: UInt32, count: UInt32, ticket: UInt64?) -> WireMessage {
            .result(
                .init(
                    step: 0,
                    shard: shard,
                    maskDigest: Self.digest,
                    lossSum: 0,
                    computeMicroseconds: 0,
                    values: .shared(slot: slot, count: count),
                    ticket: ticket ?? 0
                )
            )
        }
        // Another worker's slot, or the packed size: refused, and the shard goes out again.
        #expect(
            assignments(
                m.receive(
                    from: a,
                    runID: 77,
                    message: shared(0, slot: 2, count: 10, ticket: m.lastTicket(of: a)),
                    now: 2
                )
            ).map(\.1) == [0]
        )
        #expect(
            assignments(
                m.receive(
                    from: a,
                    runID: 77,
                    message: shared(0, slot: 1, count: 2, ticket: m.lastTicket(of: a)),
                    now: 3
                )
            ).map(\.1) == [0]
        )
        // A worker without a slot cannot claim one.
        #expect(
            assignments(
                m.receive(
                    from: b,
                    runID: 77,
                    message: shared(1, slot: 1, count: 10, ticket: m.lastTicket(of: b)),
                    now: 4
                )
            ).map(\.1) == [1]
        )
        #expect(m.counters.badResults == 3)
        _ = m.receive(from: a, runID: 77, message: shared(0, slot: 1, count: 10, ticket: m.lastTicket(of: a)), now: 5)
        _ = m.receive(from: b, runID: 77, message: result(step: 0, shard: 1, ticket: m.lastTicket(of: b)), now: 6)
        _ = m.receive(from: c, runID: 77, message: shared(2, slot: 2, count: 10, ticket: m.lastTicket(of: c)), now: 7)
        #expect(m.isStepComplete)
        let results = m.takeResults()
        #expect(results.map(\.values) == [.shared(slot: 1, count: 10), .inline([1, 1]), .shared(slot: 2, count: 10)])
        #expect(m.counters.badResults == 3)
    }

    @Test("hellos queued before the coordinator listened change nothing: one registration, shards not lost")
    func repeatedHellos() {
        var m = machine()
        for t in 0..<5 { _ = m.receive(from: a, runID: 0, message: hello("a"), now: UInt64(t)) }
        #expect(m.workerCount == 1 && m.counters.workersJoined == 1 && m.counters.workersLost == 0)
        let first = assignments(m.begin(plan(step: 0, shards: 2), now: 10))
        #expect(first.map(\.1) == [0])
        // A late duplicate hello while the shard is out: it is queued again and handed back with parameters.
        let again = assignments(m.receive(from: a, runID: 0, message: hello("a"), now: 11))
        #expect(again.count == 1 && again[0].1 == 0 && again[0].2)
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: a)), now: 12)
        _ = m.receive(from: a, runID: 77, message: result(step: 0, shard: 1, ticket: m.lastTicket(of: a)), now: 13)
        #expect(m.isStepComplete)
    }

    @Test("a task that fails goes to another worker; a shard that fails on every try ends the step with the reason")
    func failedTasks() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 0)
        _ = m.begin(plan(step: 4, shards: 1), now: 0)
        let retry = assignments(
            m.receive(
                from: a,
                runID: 77,
                message: .failed(step: 4, shard: 0, ticket: m.lastTicket(of: a) ?? 0, reason: "out of memory"),
                now: 1
            )
        )
        #expect(retry.count == 1 && retry[0].0 == a && retry[0].2)  // a is idle again and first in order
        #expect(m.failure == nil)
        _ = m.receive(
            from: a,
            runID: 77,
            message: .failed(step: 4, shard: 0, ticket: m.lastTicket(of: a) ?? 0, reason: "out of memory"),
            now: 2
        )
        _ = m.receive(
            from: a,
            runID: 77,
            message: .failed(step: 4, shard: 0, ticket: m.lastTicket(of: a) ?? 0, reason: "out of memory"),
            now: 3
        )
        #expect(m.failure?.message.contains("out of memory") == true)
        #expect(m.counters.failedTasks == 3)
    }

    @Test("heartbeats go to every worker each interval; shutdown reaches all")
    func heartbeats() {
        var m = machine()
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 0)
        let beats = m.tick(now: 100).filter { if case .send(_, .heartbeat) = $0 { true } else { false } }
        #expect(beats.count == 2)
        #expect(m.tick(now: 150).isEmpty)
        let bye = m.shutdownAll(exitCode: 0, reason: "done")
        #expect(bye.count == 2)
        #expect(m.workerCount == 0)
    }
}

extension CoordinatorStateMachine {
    /// `receive`, then every shared-memory slot reservation it asks for reported done, as the
    /// loop does when the slot's memory is there.
    mutating func receiveReserving(from peer: Peer, runID: UInt64, message: WireMessage, now: UInt64) -> [Action] {
        var actions = receive(from: peer, runID: runID, message: message, now: now)
        for case .reserveSharedSlot(let p, _) in actions { actions += sharedSlotReserved(by: p, true, now: now) }
        return actions
    }
}

@Suite("Worker state machine")
struct WorkerStateMachineTests {
    func machine() -> WorkerStateMachine {
        var s = WorkerStateMachine.Settings(dataFingerprint: [UInt8](repeating: 1, count: 32), processID: 9, name: "w")
        s.coordinatorTimeout = 3000
        s.helloRetry = 500
        return WorkerStateMachine(settings: s)
    }

    func task(step: UInt64, parameters: [Float]?) -> WireMessage {
        .task(
            .init(
                step: step,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: [1],
                parameters: parameters.map { .inline($0) } ?? .absent
            )
        )
    }

    @Test("hello until welcomed, then configure, compute and answer")
    func lifecycle() {
        var w = machine()
        #expect(w.start(now: 0).count == 1)
        #expect(w.tick(now: 100).isEmpty)
        #expect(w.tick(now: 500).count == 1)  // hello again
        #expect(
            w.receive(
                runID: 5,
                message: .welcome(.init(heartbeatIntervalMilliseconds: 200, configuration: [4])),
                now: 600
            )
                == [.configure(runID: 5, configuration: [4], sharedMemory: nil)]
        )
        let compute = w.receive(runID: 5, message: task(step: 1, parameters: [1]), now: 700)
        #expect(compute.count == 1)
        let result = WireMessage.Result(
            step: 1,
            shard: 0,
            maskDigest: [UInt8](repeating: 0, count: 16),
            lossSum: 1,
            computeMicroseconds: 1,
            values: .inline([1]),
            ticket: 4
        )
        #expect(w.computed(result, now: 710) == [.send(.result(result))])
        // Second shard of the same step needs no parameters.
        #expect(w.receive(runID: 5, message: task(step: 1, parameters: nil), now: 720).count == 1)
        #expect(w.tick(now: 800).isEmpty)
        #expect(w.tick(now: 910) == [.send(.heartbeat(sequence: 1))])
    }

    @Test("a task without the parameters it needs, or a 'who', starts the handshake again")
    func recovery() {
        var w = machine()
        _ = w.start(now: 0)
        _ = w.receive(
            runID: 5,
            message: .welcome(.init(heartbeatIntervalMilliseconds: 200, configuration: [])),
            now: 10
        )
        let missing = w.receive(runID: 5, message: task(step: 3, parameters: nil), now: 20)
        #expect(missing.count == 1)
        if case .send(.hello) = missing[0] {} else { Issue.record("expected hello, got \(missing)") }
        _ = w.receive(
            runID: 5,
            message: .welcome(.init(heartbeatIntervalMilliseconds: 200, configuration: [])),
            now: 30
        )
        let who = w.receive(runID: 5, message: .who, now: 40)
        if case .send(.hello) = who.first {} else { Issue.record("expected hello after who") }
        #expect(
            w.receive(runID: 5, message: task(step: 3, parameters: [1]), now: 50).first.map {
                if case .dropped = $0 { true } else { false }
            } == true
        )
    }

    @Test("declining shared memory says hello again without a host id")
    func declineSharedMemory() {
        var s = WorkerStateMachine.Settings(
            dataFingerprint: [UInt8](repeating: 1, count: 32),
            processID: 9,
            name: "w",
            hostID: "here"
        )
        s.helloRetry = 500
        var w = WorkerStateMachine(settings: s)
        _ = w.start(now: 0)
        _ = w.receive(
            runID: 5,
            message: .welcome(
                .init(
                    heartbeatIntervalMilliseconds: 200,
                    configuration: [],
                    sharedMemory: .init(path: "/x", slot: 1, slotFloats: 4)
                )
            ),
            now: 10
        )
        #expect(
            w.declineSharedMemory(now: 20) == [
                .send(.hello(.init(dataFingerprint: s.dataFingerprint, processID: 9, name: "w", hostID: "")))
            ]
        )
    }

    @Test(
        """
        the connection: hello as soon as it is up; after a break, hello again on reconnection; a break that heals \
        keeps the worker
        """
    )
    func connectionEvents() {
        var w = machine()
        _ = w.start(now: 0)
        #expect(w.connectionUp(now: 100).count == 1, "hello at once")
        _ = w.receive(
            runID: 5,
            message: .welcome(.init(heartbeatIntervalMilliseconds: 200, configuration: [])),
            now: 110
        )
        #expect(w.connectionUp(now: 120).isEmpty, "no break, nothing to redo")
        #expect(w.connectionDown(now: 1000).isEmpty)
        #expect(w.tick(now: 3900).allSatisfy { if case .exit = $0 { false } else { true } })
        let again = w.connectionUp(now: 3900)
        if case .send(.hello) = again.first {} else { Issue.record("expected hello after the break, got \(again)") }
        // Waiting for its welcome again: the coordinator has the full timeout from the reconnection.
        #expect(w.tick(now: 6900).allSatisfy { if case .exit = $0 { false } else { true } })
        _ = w.receive(
            runID: 5,
            message: .welcome(.init(heartbeatIntervalMilliseconds: 200, configuration: [])),
            now: 6900
        )
        #expect(w.tick(now: 60_000).allSatisfy { if case .exit = $0 { false } else { true } })
    }

    @Test("exits: refused, shut down, coordinator gone, bad configuration")
    func exits() {
        var w = machine()
        _ = w.start(now: 0)
        #expect(
            w.receive(runID: 0, message: .reject(reason: "no"), now: 1).first.map {
                if case .exit(let code, _) = $0 { code == 3 } else { false }
            } == true
        )
        w = machine()
        _ = w.start(now: 0)
        #expect(
            w.receive(runID: 1, message: .shutdown(exitCode: 0, reason: "done"), now: 1) == [
                .exit(code: 0, reason: "done")
            ]
        )
        #expect(w.isFinished)
        w = machine()
        _ = w.start(now: 0)
        _ = w.receive(
            runID: 5,
            message: .welcome(.init(heartbeatIntervalMilliseconds: 200, configuration: [])),
            now: 10
        )
        // A quiet coordinator on a live connection is not gone; one whose connection stays down is.
        #expect(w.tick(now: 30_000).allSatisfy { if case .exit = $0 { false } else { true } })
        _ = w.connectionDown(now: 30_000)
        #expect(w.tick(now: 33_000).allSatisfy { if case .exit = $0 { false } else { true } })
        #expect(w.tick(now: 33_001).contains { if case .exit(let code, _) = $0 { code == 4 } else { false } })
        w = machine()
        _ = w.start(now: 0)
        #expect(w.tick(now: 3001).contains { if case .exit(let code, _) = $0 { code == 4 } else { false } })
        w = machine()
        #expect(
            w.configurationFailed("bad").first.map { if case .exit(let code, _) = $0 { code == 5 } else { false } }
                == true
        )
    }
}

@Suite("Coordinator state machine: relays")
struct RelayRuleTests {
    static let fingerprint = [UInt8](repeating: 7, count: 32)
    static let digest = [UInt8](repeating: 1, count: 16)
    let r1: [UInt8] = Array("relay-1".utf8)
    let r2: [UInt8] = Array("relay-2".utf8)
    let w: [UInt8] = Array("worker".utf8)

    func machine() -> CoordinatorStateMachine {
        var s = CoordinatorStateMachine.Settings(runID: 77, dataFingerprint: Self.fingerprint, configuration: [1])
        s.heartbeatInterval = 100
        s.heartbeatTimeout = 1000
        s.taskTimeout = 5000
        s.idleTimeout = 3000
        return CoordinatorStateMachine(settings: s)
    }

    func relay(_ name: String, capacity: UInt32) -> WireMessage {
        .hello(
            .init(dataFingerprint: Self.fingerprint, processID: 1, name: name, capacity: capacity, maxBlockShards: 1024)
        )
    }

    func plan(step: UInt64, shards: Int) -> CoordinatorStateMachine.WorkPlan {
        var p = CoordinatorStateMachine.WorkPlan(
            step: step,
            maskSeed: 3,
            maskDigest: Self.digest,
            gradientCount: 2,
            shards: (0..<shards).map { [Int32($0)] }
        )
        p.maxShardsPerTask = 1024
        return p
    }

    func result(step: UInt64, shard: UInt32, ticket: UInt64?) -> WireMessage {
        .result(
            .init(
                step: step,
                shard: shard,
                maskDigest: Self.digest,
                lossSum: 0,
                computeMicroseconds: 1,
                values: .inline([0, 0]),
                ticket: ticket ?? 0
            )
        )
    }

    func tasks(_ actions: [CoordinatorStateMachine.Action]) -> [([UInt8], UInt32, Int)] {
        actions.compactMap { if case .assign(let p, let t, _) = $0 { (p, t.shard, t.rowsPerShard.count) } else { nil } }
    }

    @Test(
        "shards per task with relays: a relay of W workers takes a block of W shards when there are enough to go round"
    )
    func blockSizesWithCapacities() {
        // (shards, capacities, limit) -> shards per task
        let cases: [((Int, [Int], Int), Int)] = [
            ((4, [2, 2], 1024), 2), ((4, [2], 1024), 4), ((8, [4, 4], 1024), 4), ((12, [4, 4, 4], 1024), 4),
            ((32, [16, 16], 1024), 16), ((32, [16, 16], 8), 8), ((16, [8, 8], 1024), 8), ((16, [2, 2, 2, 2], 1024), 4),
            ((8, [4, 0, 4], 1024), 4), ((8, [0], 1024), 1), ((8, [4, 1], 1024), 8), ((6, [3, 3], 1024), 8),
            ((12, [3, 3], 1024), 8),
        ]
        for ((shards, capacities, limit), expected) in cases {
            #expect(
                CoordinatorStateMachine.blockSize(shards: shards, capacities: capacities, limit: limit) == expected,
                "\(shards) \(capacities) \(limit)"
            )
        }
    }

    @Test(
        "two relays of two workers take one block of two shards each and answer once; the capacity counts their workers"
    )
    func relaysTakeBlocks() {
        var m = machine()
        _ = m.receive(from: r1, runID: 0, message: relay("r1", capacity: 2), now: 0)
        _ = m.receive(from: r2, runID: 0, message: relay("r2", capacity: 2), now: 0)
        #expect(m.workerCount == 2 && m.capacity == 4)
        let handed = tasks(m.begin(plan(step: 0, shards: 4), now: 1))
        #expect(handed.map(\.1) == [0, 2] && handed.allSatisfy { $0.2 == 2 })
        _ = m.receive(from: r1, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: r1)), now: 2)
        _ = m.receive(from: r2, runID: 77, message: result(step: 0, shard: 2, ticket: m.lastTicket(of: r2)), now: 3)
        #expect(m.isStepComplete)
        #expect(m.takeResults().map(\.shard) == [0, 2])
    }

    @Test("a relay left without workers gives its block back unfailed by saying capacity 0, and gets no more")
    func relayWithoutWorkers() {
        var m = machine()
        _ = m.receive(from: r1, runID: 0, message: relay("r1", capacity: 2), now: 0)
        _ = m.receive(from: r2, runID: 0, message: relay("r2", capacity: 2), now: 0)
        _ = m.begin(plan(step: 0, shards: 4), now: 1)
        let ticket = m.lastTicket(of: r1)
        _ = m.receive(from: r2, runID: 77, message: result(step: 0, shard: 2, ticket: m.lastTicket(of: r2)), now: 2)
        let again = tasks(m.receive(from: r1, runID: 0, message: relay("r1", capacity: 0), now: 3))
        #expect(again.map(\.0) == [r2] && again.map(\.1) == [0])
        #expect(m.counters.failedTasks == 0 && m.capacity == 2)
        _ = m.receive(from: r2, runID: 77, message: result(step: 0, shard: 0, ticket: m.lastTicket(of: r2)), now: 4)
        // r1's late answer to the block it gave back does not count twice.
        _ = m.receive(from: r1, runID: 77, message: result(step: 0, shard: 0, ticket: ticket), now: 5)
        #expect(m.isStepComplete && m.takeResults().count == 2)
        // The next step goes to r2 alone, whole.
        #expect(
            tasks(m.begin(plan(step: 1, shards: 4), now: 6)).map { [$0.0 == r2 ? 2 : 1, Int($0.1), $0.2] } == [
                [2, 0, 4]
            ]
        )
        // Its workers back, r1 takes work again.
        _ = m.receive(from: r2, runID: 77, message: result(step: 1, shard: 0, ticket: m.lastTicket(of: r2)), now: 7)
        _ = m.takeResults()
        _ = m.receive(from: r1, runID: 0, message: relay("r1", capacity: 2), now: 8)
        #expect(tasks(m.begin(plan(step: 2, shards: 4), now: 9)).map(\.2) == [2, 2])
    }

    @Test("no block beyond a peer's limit; once the relays are gone, the step starts over in blocks the worker takes")
    func blockLimitsAndReplanning() {
        var m = machine()
        _ = m.receive(from: r1, runID: 0, message: relay("r1", capacity: 16), now: 0)
        let handed = tasks(m.begin(plan(step: 0, shards: 32), now: 1))
        #expect(handed.map(\.2) == [32])
        // A worker (8 shards at most) joining mid-step gets nothing of this step's 32-shard blocks.
        let joined = m.receive(
            from: w,
            runID: 0,
            message: .hello(.init(dataFingerprint: Self.fingerprint, processID: 2, name: "w")),
            now: 2
        )
        #expect(tasks(joined).isEmpty)
        // The relay's connection is gone: the worker takes the step over in blocks of 8, the same tree.
        let after = tasks(m.connectionLost(r1, now: 1500))
        #expect(m.workerCount == 1)
        #expect(after.map(\.1) == [0] && after.map(\.2) == [8])
        var next = after
        var now: UInt64 = 1501
        var answered: [UInt32] = []
        while let (_, shard, _) = next.first {
            answered.append(shard)
            next = tasks(
                m.receive(
                    from: w,
                    runID: 77,
                    message: result(step: 0, shard: shard, ticket: m.lastTicket(of: w)),
                    now: now
                )
            )
            now += 1
        }
        #expect(answered == [0, 8, 16, 24])
        #expect(m.isStepComplete)
        #expect(m.shardsInTask(startingAt: 0) == 8)
    }

    @Test("a relay without workers does not hold the run: with no capacity, the work fails after the idle timeout")
    func idleWithEmptyRelay() {
        var m = machine()
        _ = m.receive(from: r1, runID: 0, message: relay("r1", capacity: 0), now: 0)
        #expect(tasks(m.begin(plan(step: 0, shards: 4), now: 1)).isEmpty)
        for t in stride(from: UInt64(100), through: 3200, by: 100) {
            _ = m.receive(from: r1, runID: 77, message: .heartbeat(sequence: t), now: t)
            _ = m.tick(now: t)
        }
        #expect(m.failure?.code == .noWorkers)
    }
}

@Suite("Worker state machine: capacity")
struct WorkerCapacityTests {
    @Test("a changed capacity goes out in a new hello; the same one, or one before welcome, sends nothing new")
    func announce() {
        var s = WorkerStateMachine.Settings(
            dataFingerprint: [UInt8](repeating: 1, count: 32),
            processID: 9,
            name: "relay"
        )
        s.capacity = 0
        s.maxBlockShards = 1024
        var m = WorkerStateMachine(settings: s)
        let first = m.start(now: 0)
        #expect(
            first == [
                .send(
                    .hello(
                        .init(
                            dataFingerprint: s.dataFingerprint,
                            processID: 9,
                            name: "relay",
                            capacity: 0,
                            maxBlockShards: 1024
                        )
                    )
                )
            ]
        )
        // Before the welcome the next hello simply carries the new number.
        #expect(m.announce(capacity: 1, now: 10).isEmpty)
        _ = m.receive(
            runID: 5,
            message: .welcome(.init(heartbeatIntervalMilliseconds: 1000, configuration: [])),
            now: 20
        )
        #expect(m.announce(capacity: 1, now: 30).isEmpty)
        let again = m.announce(capacity: 2, now: 40)
        #expect(
            again == [
                .send(
                    .hello(
                        .init(
                            dataFingerprint: s.dataFingerprint,
                            processID: 9,
                            name: "relay",
                            capacity: 2,
                            maxBlockShards: 1024
                        )
                    )
                )
            ]
        )
        // Until welcomed again it takes no task.
        let task = WireMessage.Task(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [0], parameters: .inline([1]))
        #expect(
            m.receive(runID: 5, message: .task(task), now: 50).allSatisfy {
                if case .dropped = $0 { true } else { false }
            }
        )
        _ = m.receive(
            runID: 5,
            message: .welcome(.init(heartbeatIntervalMilliseconds: 1000, configuration: [])),
            now: 60
        )
        #expect(m.receive(runID: 5, message: .task(task), now: 70) == [.compute(task)])
    }
}
