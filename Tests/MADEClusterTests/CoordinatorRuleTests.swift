import MADE
import Testing

@testable import MADECluster

/// Rules of the coordinator and the worker that used to live in their socket loops and were
/// checked only by starting processes, now driven through the state machines alone.
@Suite("Coordinator and worker rules without sockets")
struct CoordinatorRuleTests {
    static let fingerprint = [UInt8](repeating: 7, count: 32)
    static let digest = [UInt8](repeating: 1, count: 16)
    let a: [UInt8] = Array("worker-a".utf8)
    let b: [UInt8] = Array("worker-b".utf8)

    func settings(sharedSlots: UInt32? = nil) -> CoordinatorStateMachine.Settings {
        var s = CoordinatorStateMachine.Settings(runID: 77, dataFingerprint: Self.fingerprint, configuration: [1])
        s.heartbeatInterval = 100
        s.heartbeatTimeout = 1000
        s.taskTimeout = 5000
        s.idleTimeout = 3000
        if let sharedSlots {
            s.hostID = "here"
            s.sharedMemory = .init(path: "/dev/shm/run", slotFloats: 10, slots: sharedSlots)
        }
        return s
    }

    func hello(_ name: String, host: String = "") -> WireMessage {
        .hello(.init(dataFingerprint: Self.fingerprint, processID: 1, name: name, hostID: host))
    }

    func gradientPlan(step: UInt64 = 0, shards: Int) -> CoordinatorStateMachine.WorkPlan {
        .init(
            step: step,
            maskSeed: 3,
            maskDigest: Self.digest,
            gradientCount: 2,
            denseCount: 10,
            shards: (0..<shards).map { [Int32($0)] }
        )
    }

    func shared(step: UInt64 = 0, _ shard: UInt32, slot: UInt32, ticket: UInt64?) -> WireMessage {
        .result(
            .init(
                step: step,
                shard: shard,
                maskDigest: Self.digest,
                lossSum: 0,
                computeMicroseconds: 0,
                values: .shared(slot: slot, count: 10),
                ticket: ticket ?? 0
            )
        )
    }

    func welcomes(_ actions: [CoordinatorStateMachine.Action]) -> [WireMessage.Welcome] {
        actions.compactMap { if case .send(_, .welcome(let w)) = $0 { w } else { nil } }
    }

    func routes(_ actions: [CoordinatorStateMachine.Action]) -> [CoordinatorStateMachine.ParameterRoute?] {
        actions.compactMap { if case .assign(_, _, let route) = $0 { .some(route) } else { nil } }
    }

    @Test("a worker of an older protocol version is answered in its own version; a newer or unknown one in ours")
    func olderVersionAnswer() {
        var m = CoordinatorStateMachine(settings: settings())
        for old in UInt16(1)..<WireFormat.version {
            let actions = m.malformed(from: a, error: .unsupportedVersion(old), now: 0)
            #expect(
                actions.contains {
                    if case .sendInVersion(a, .reject(let reason), old) = $0 {
                        reason.contains("version \(WireFormat.version)")
                    } else {
                        false
                    }
                }
            )
            #expect(!actions.contains { if case .send(_, .reject) = $0 { true } else { false } })
        }
        for other in [UInt16(0), WireFormat.version + 1, 900] {
            let actions = m.malformed(from: a, error: .unsupportedVersion(other), now: 0)
            #expect(actions.contains { if case .send(a, .reject) = $0 { true } else { false } })
            #expect(!actions.contains { if case .sendInVersion = $0 { true } else { false } })
        }
        #expect(m.counters.malformed == Int(WireFormat.version) - 1 + 3)
    }

    @Test(
        """
        a joining worker on this host is welcomed only once its slot's memory is reserved; without room it gets no \
        slot and uses the socket
        """
    )
    func slotReservation() {
        var m = CoordinatorStateMachine(settings: settings(sharedSlots: 4))
        let joined = m.receive(from: a, runID: 0, message: hello("a", host: "here"), now: 0)
        #expect(joined == [.workerJoined(a, name: "a"), .reserveSharedSlot(a, slot: 1)])
        // No task before the welcome.
        #expect(routes(m.begin(gradientPlan(shards: 2), now: 1)).isEmpty)
        let refused = m.sharedSlotReserved(by: a, false, now: 2)
        #expect(welcomes(refused).map(\.sharedMemory) == [nil])
        #expect(m.sharedSlot(of: a) == nil)
        // Its parameters then travel inline, and a result "in shared memory" is refused.
        #expect(routes(refused) == [.inline])
        _ = m.receive(from: a, runID: 77, message: shared(0, slot: 1, ticket: m.lastTicket(of: a)), now: 3)
        #expect(m.counters.badResults == 1)
        // A second answer for the same reservation changes nothing.
        #expect(m.sharedSlotReserved(by: a, true, now: 4).isEmpty)
        // The next worker gets the next slot (slots are never reused) and shared memory when there is room.
        _ = m.receive(from: b, runID: 0, message: hello("b", host: "here"), now: 5)
        let granted = m.sharedSlotReserved(by: b, true, now: 6)
        #expect(welcomes(granted).map(\.sharedMemory) == [.init(path: "/dev/shm/run", slot: 2, slotFloats: 10)])
        #expect(routes(granted) == [.sharedMemory])
    }

    @Test("a worker that says hello again while its slot is being reserved gets one welcome, after the reservation")
    func helloDuringReservation() {
        var m = CoordinatorStateMachine(settings: settings(sharedSlots: 4))
        _ = m.receive(from: a, runID: 0, message: hello("a", host: "here"), now: 0)
        #expect(m.receive(from: a, runID: 0, message: hello("a", host: "here"), now: 1).isEmpty)
        #expect(welcomes(m.sharedSlotReserved(by: a, true, now: 2)).count == 1)
        #expect(m.counters.workersJoined == 1)
    }

    @Test("parameters go by shared memory to a worker with a slot, inline to others, and once per step")
    func parameterRoutes() {
        var m = CoordinatorStateMachine(settings: settings(sharedSlots: 4))
        _ = m.receiveReserving(from: a, runID: 0, message: hello("a", host: "here"), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("b", host: "elsewhere"), now: 0)
        #expect(routes(m.begin(gradientPlan(shards: 4), now: 1)) == [.sharedMemory, .inline])
        // The second task of the step carries none.
        let next = m.receive(
            from: b,
            runID: 77,
            message: .result(
                .init(
                    step: 0,
                    shard: 1,
                    maskDigest: Self.digest,
                    lossSum: 0,
                    computeMicroseconds: 0,
                    values: .inline([0, 0]),
                    ticket: m.lastTicket(of: b)!
                )
            ),
            now: 2
        )
        #expect(routes(next) == [nil])
    }

    @Test("a gradient taken where it lies in a slot is copied out before its worker gets another task, and only then")
    func unreadSharedResults() {
        let p = gradientPlan(step: 1, shards: 3)  // one shard per task
        var n = CoordinatorStateMachine(settings: settings(sharedSlots: 4))
        _ = n.receiveReserving(from: a, runID: 0, message: hello("a", host: "here"), now: 0)
        _ = n.begin(p, now: 1)
        let second = n.receive(
            from: a,
            runID: 77,
            message: shared(step: 1, 0, slot: 1, ticket: n.lastTicket(of: a)),
            now: 2
        )
        // Shard 0's gradient lies in slot 1: copied out before shard 1 goes to a.
        #expect(second.first == .saveSharedResult(slot: 1, shard: 0))
        #expect(second.dropFirst().contains { if case .assign(a, let t, _) = $0 { t.shard == 1 } else { false } })
        #expect(n.resultsInSharedSlots.isEmpty)
        let third = n.receive(
            from: a,
            runID: 77,
            message: shared(step: 1, 1, slot: 1, ticket: n.lastTicket(of: a)),
            now: 3
        )
        #expect(third.first == .saveSharedResult(slot: 1, shard: 1))
        _ = n.receive(from: a, runID: 77, message: shared(step: 1, 2, slot: 1, ticket: n.lastTicket(of: a)), now: 4)
        // The last one stays where it is: the sum reads it in place.
        #expect(n.resultsInSharedSlots == [1: 2])
        #expect(n.isStepComplete)
        #expect(n.takeResults().count == 3)
        #expect(n.resultsInSharedSlots.isEmpty)
    }

    @Test("a gradient in shared memory from a task taken back does not count, even from the sender's own slot")
    func sharedResultOfReleasedTask() {
        var m = CoordinatorStateMachine(settings: settings(sharedSlots: 4))
        _ = m.receiveReserving(from: a, runID: 0, message: hello("a", host: "here"), now: 0)
        _ = m.begin(gradientPlan(shards: 1), now: 1)
        let first = m.lastTicket(of: a)
        _ = m.receive(from: a, runID: 77, message: .heartbeat(sequence: 1), now: 5000)
        _ = m.tick(now: 5002)  // taken back and handed to a again under a new ticket
        #expect(m.lastTicket(of: a) != first)
        _ = m.receive(from: a, runID: 77, message: shared(0, slot: 1, ticket: first), now: 5003)
        #expect(!m.isStepComplete && m.counters.lateResults == 1 && m.resultsInSharedSlots.isEmpty)
        _ = m.receive(from: a, runID: 77, message: shared(0, slot: 1, ticket: m.lastTicket(of: a)), now: 5004)
        #expect(m.isStepComplete && m.resultsInSharedSlots == [1: 0])
    }

    @Test(
        """
        work with no worker at all fails after the idle timeout, naming it; idle machines and registered workers keep \
        it from failing
        """
    )
    func idleTimeout() {
        var m = CoordinatorStateMachine(settings: settings())
        // Idle: no failure however long.
        _ = m.tick(now: 100_000)
        #expect(m.failure == nil)
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 100_000)
        _ = m.begin(gradientPlan(step: 0, shards: 1), now: 100_001)
        // The worker's connection goes and it is declared dead; the idle clock starts from when it was last there.
        _ = m.tick(now: 101_000)
        #expect(m.workerCount == 1 && m.failure == nil)
        _ = m.connectionLost(a, now: 101_001)
        _ = m.tick(now: 101_001)
        #expect(m.workerCount == 0 && m.failure == nil)
        _ = m.tick(now: 104_001)
        #expect(m.failure == nil)
        _ = m.tick(now: 104_002)
        #expect(m.failure?.code == .noWorkers)
        #expect(m.failure?.message.contains("no worker has been connected for 3 s") == true)
        // A worker that comes back does not revive the failed step, but the next one runs.
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 104_003)
        #expect(m.failure != nil)
        let next = m.begin(gradientPlan(step: 1, shards: 1), now: 104_004)
        #expect(m.failure == nil && routes(next).count == 1)
    }

    @Test("every way a task is taken back leaves its worker without it, and the shard queued once")
    func releasePaths() {
        var m = CoordinatorStateMachine(settings: settings())
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        _ = m.receive(from: b, runID: 0, message: hello("b"), now: 0)
        _ = m.begin(gradientPlan(shards: 2), now: 1)
        let ta = m.lastTicket(of: a)!
        // Failed: a's shard goes out again (to a, first idle in order) with parameters.
        let again = m.receive(from: a, runID: 77, message: .failed(step: 0, shard: 0, ticket: ta, reason: "x"), now: 2)
        #expect(routes(again) == [.inline])
        #expect(!m.holds(a, step: 0, shard: 0, ticket: ta))
        // Rejoined: b's shard goes back to b, which lost its parameters.
        let rejoin = m.receive(from: b, runID: 0, message: hello("b"), now: 3)
        #expect(rejoin.contains { if case .assign(b, let t, .inline) = $0 { t.shard == 1 } else { false } })
        #expect(m.counters.reassignedShards == 2)
        // Lost: both connections gone; each shard queued once, never twice.
        _ = m.connectionLost(a, now: 2000)
        _ = m.connectionLost(b, now: 2000)
        #expect(m.workerCount == 0 && m.counters.workersLost == 2 && m.counters.reassignedShards == 4)
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 2001)
        let tasks = m.receive(from: b, runID: 0, message: hello("b"), now: 2001)
        #expect(routes(tasks).count == 1)
        #expect(!m.isStepComplete)
    }

    @Test("after the shutdown, a late hello hears it too and counts as one join; nothing else registers or counts")
    func lateHelloAfterShutdown() {
        var m = CoordinatorStateMachine(settings: settings())
        _ = m.receive(from: a, runID: 0, message: hello("a"), now: 0)
        #expect(m.shutdownAll(exitCode: 0, reason: "done") == [.send(a, .shutdown(exitCode: 0, reason: "done"))])
        #expect(
            m.receive(from: b, runID: 0, message: hello("b"), now: 1) == [
                .send(b, .shutdown(exitCode: 0, reason: "done"))
            ]
        )
        #expect(
            m.receive(from: b, runID: 0, message: hello("b"), now: 1) == [
                .send(b, .shutdown(exitCode: 0, reason: "done"))
            ]
        )
        #expect(m.receive(from: a, runID: 77, message: .heartbeat(sequence: 1), now: 2).isEmpty)
        #expect(m.workerCount == 0 && m.counters.workersJoined == 2 && m.counters.unknownPeer == 0)
        let stranger = WireMessage.hello(
            .init(dataFingerprint: [UInt8](repeating: 9, count: 32), processID: 1, name: "c")
        )
        #expect(
            m.receive(from: Array("c".utf8), runID: 0, message: stranger, now: 3).contains {
                if case .send(_, .reject) = $0 { true } else { false }
            }
        )
        #expect(m.counters.refusedWorkers == 1 && m.counters.workersJoined == 2)
        #expect(m.tick(now: 5000).isEmpty)
    }

    @Test("the heartbeat interval told to workers is at least four per timeout and never below 50 ms")
    func heartbeatInterval() {
        #expect(CoordinatorStateMachine.Settings.heartbeatInterval(wanted: 1000, timeout: 10_000) == 1000)
        #expect(CoordinatorStateMachine.Settings.heartbeatInterval(wanted: 1000, timeout: 2000) == 500)
        #expect(CoordinatorStateMachine.Settings.heartbeatInterval(wanted: 1000, timeout: 100) == 50)
    }

    @Test("timeouts in seconds: above 0 and at most a million, else an error naming the flag")
    func timeoutRange() {
        #expect(TimeoutRange.problem("--x", seconds: 0.001) == nil)
        #expect(TimeoutRange.problem("--x", seconds: 1_000_000) == nil)
        for bad in [0, -1, 1_000_000.5, .infinity, .nan] {
            #expect(
                TimeoutRange.problem("--task-timeout", seconds: bad)?.contains(
                    "--task-timeout must be between 0 and 1000000 seconds"
                ) == true
            )
        }
        #expect(TimeoutRange.milliseconds(2.5) == 2500)
    }
}

@Suite("Worker heartbeats without sockets")
struct WorkerHeartbeatTests {
    func active() -> WorkerStateMachine {
        var s = WorkerStateMachine.Settings(dataFingerprint: [UInt8](repeating: 1, count: 32), processID: 9, name: "w")
        s.coordinatorTimeout = 60_000
        var w = WorkerStateMachine(settings: s)
        _ = w.start(now: 0)
        _ = w.receive(
            runID: 5,
            message: .welcome(.init(heartbeatIntervalMilliseconds: 1000, configuration: [])),
            now: 0
        )
        return w
    }

    @Test("a long computation sends a heartbeat every busy interval, numbered with the others")
    func busyHeartbeats() {
        var w = active()
        #expect(w.stillComputing(now: 100).isEmpty)
        #expect(w.stillComputing(now: 250) == [.send(.heartbeat(sequence: 1))])
        #expect(w.stillComputing(now: 400).isEmpty)
        #expect(w.stillComputing(now: 500) == [.send(.heartbeat(sequence: 2))])
        // The regular heartbeat counts from the last message sent.
        #expect(w.tick(now: 1400).isEmpty)
        #expect(w.tick(now: 1500) == [.send(.heartbeat(sequence: 3))])
        // A result sent resets the clock too.
        let result = WireMessage.Result(
            step: 1,
            shard: 0,
            maskDigest: [UInt8](repeating: 0, count: 16),
            lossSum: 0,
            computeMicroseconds: 0,
            values: .inline([]),
            ticket: 1
        )
        _ = w.computed(result, now: 1600)
        #expect(w.stillComputing(now: 1800).isEmpty)
        #expect(w.stillComputing(now: 1850).count == 1)
    }

    @Test("no heartbeat before welcome or after the end")
    func busyOutsideRun() {
        var w = WorkerStateMachine(
            settings: .init(dataFingerprint: [UInt8](repeating: 1, count: 32), processID: 9, name: "w")
        )
        _ = w.start(now: 0)
        #expect(w.stillComputing(now: 10_000).isEmpty)
        var done = active()
        _ = done.receive(runID: 5, message: .shutdown(exitCode: 0, reason: "done"), now: 1)
        #expect(done.stillComputing(now: 10_000).isEmpty)
    }
}

@Suite("Work kinds on the wire")
struct WorkKindTests {
    @Test("splits, ensemble modes and sampling methods keep their wire bytes, and unknown bytes are refused")
    func codes() {
        #expect(DataSplit.allCases.map(\.rawValue) == [0, 1, 2])
        #expect(DataSplit(rawValue: 3) == nil)
        #expect(EnsembleMode.likelihood.wireCode == 0 && EnsembleMode.logits.wireCode == 1)
        #expect(EnsembleMode(wireCode: 2) == nil)
        for mode in EnsembleMode.allCases { #expect(EnsembleMode(wireCode: mode.wireCode) == mode) }
        #expect(Sampler<Float>.Method.cached.wireCode == 0 && Sampler<Float>.Method.naive.wireCode == 1)
        #expect(Sampler<Float>.Method(wireCode: 2) == nil)
    }

    @Test("the keys a coordinator hands its workers on standard input parse back, and a broken text is an error")
    func stdinKeys() throws {
        let (server, client) = try ClusterSecurity.ephemeral()
        let parsed = try ClusterSecurity.Client.parse(stdinText: client.stdinText)
        #expect(parsed.keyPair == client.keyPair && parsed.serverPublicKey == server.keyPair.publicKey)
        #expect(server.authorized == (try AuthorizedKeys(publicKeys: [client.keyPair.publicKey])))
        #expect(throws: ClusterError.self) { try ClusterSecurity.Client.parse(stdinText: "") }
        #expect(throws: ClusterError.self) {
            try ClusterSecurity.Client.parse(stdinText: "coordinator-public-key abc\nworker-secret-key def\n")
        }
    }
}

@Suite("Worker exits without sockets")
struct WorkerExitTests {
    @Test("a worker whose launcher is gone exits with status 4, once")
    func launcherGone() {
        var w = WorkerStateMachine(
            settings: .init(dataFingerprint: [UInt8](repeating: 1, count: 32), processID: 9, name: "w")
        )
        _ = w.start(now: 0)
        #expect(
            w.launcherGone() == [
                .exit(code: WorkerStateMachine.ExitCode.coordinatorGone, reason: "the launching process is gone")
            ]
        )
        #expect(w.isFinished)
        #expect(w.launcherGone().isEmpty && w.tick(now: 1_000_000).isEmpty)
    }
}
