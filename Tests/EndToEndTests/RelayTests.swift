import Foundation
import MADE
import MADECluster
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Relays (`made relay`): one peer per host standing for the workers there, as real processes.
@Suite("Relays end to end", .serialized)
struct RelayTests {
    static func runFlags(data: String, epochs: Int, masksPerStep: Int? = nil) -> [String] {
        ClusterProcessTests.runFlags(data: data, epochs: epochs, masksPerStep: masksPerStep)
    }

    /// Process ids of the children of `pid`.
    static func children(of pid: Int32) -> [Int32] {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { Int32($0) }
    }

    /// A coordinator at a fresh endpoint file and `relays` relays of `workers` workers each.
    static func start(
        _ folder: String,
        data: String,
        epochs: Int,
        relays: Int,
        workers: Int,
        coordinatorFlags: [String] = [],
        relayFlags: [String] = [],
        masksPerStep: Int? = nil
    ) throws -> (EndToEnd.Child, [EndToEnd.Child]) {
        let tag =
            "\(relays)x\(workers)"
            + (relayFlags.isEmpty && masksPerStep == nil ? "" : "-\(relayFlags.count)m\(masksPerStep ?? 1)")
        let endpoint = folder + "/endpoint-\(tag)"
        let coordinator = try EndToEnd.Child(
            [
                "coordinator", "-v", "--bind", "tcp://127.0.0.1:0", "--endpoint-file", endpoint,
                "--wait-for-workers", "\(relays * workers)",
            ] + coordinatorFlags
                + runFlags(data: data, epochs: epochs, masksPerStep: masksPerStep),
            folder: folder,
            name: "coordinator-\(tag)"
        )
        let started = try (0..<relays).map { r in
            try EndToEnd.Child(
                [
                    "relay", "-v", "-d", data, "--endpoint-file", endpoint, "--name", "relay\(r)", "--workers",
                    "\(workers)",
                ]
                    + relayFlags,
                folder: folder,
                name: "relay\(r)-\(tag)"
            )
        }
        return (coordinator, started)
    }

    @Test("one relay of 2 workers, and two: the single-process checksum and scores; one answer per relay and step")
    func checksums() throws {
        let folder = EndToEnd.folder("relays")
        let data = try EndToEnd.writeData(to: folder)
        let (code, referenceOutput, referenceErrors) = try EndToEnd.run(
            ["train"] + Self.runFlags(data: data, epochs: 3),
            folder: folder,
            name: "reference"
        )
        #expect(code == 0, "\(referenceErrors)")
        let expected = try #require(EndToEnd.checksum(referenceOutput))
        for relays in [1, 2] {
            let (coordinator, started) = try Self.start(folder, data: data, epochs: 3, relays: relays, workers: 2)
            #expect(coordinator.wait(timeout: 120) == 0, "\(relays) relays: \(coordinator.errors)")
            #expect(EndToEnd.checksum(coordinator.output) == expected, "\(relays) relays")
            #expect(EndToEnd.scores(coordinator.output) == EndToEnd.scores(referenceOutput), "\(relays) relays")
            let counters = EndToEnd.clusterCounters(coordinator.output)
            #expect(
                counters["workers_joined"] == relays && counters["workers_lost"] == 0 && counters["failed_tasks"] == 0
            )
            for relay in started {
                #expect(relay.wait(timeout: 20) == 0, "\(relay.errors)")
                // The relay and both of its workers computed: the workers' shards went through it.
                let done = relay.errors.split(separator: "\n").filter { $0.contains("worker done") }
                #expect(done.count == 3 && done.allSatisfy { EndToEnd.computedTasks(String($0)) }, "\(relay.errors)")
                #expect(relay.errors.contains("shared_memory=true"), "the relay's workers share its memory")
            }
            if relays == 2 {
                // 90 steps of 4 shards: one block of 2 per relay and step, and a few scoring tasks.
                let tasks = started.map { relay in
                    relay.errors.split(separator: "\n").first {
                        $0.contains("made.relay") && $0.contains("worker done")
                    }
                    .flatMap { line in
                        line.split(separator: " ").first { $0.hasPrefix("tasks=") }.flatMap { Int($0.dropFirst(6)) }
                    } ?? 0
                }
                #expect(
                    tasks.allSatisfy { $0 >= 90 && $0 <= 95 } && tasks.reduce(0, +) == 185,
                    "tasks per relay: \(tasks)"
                )
            }
        }
    }

    @Test("4 masks per step through two relays of 2 workers, sharing memory or not: the single-process checksum")
    func masksPerStep() throws {
        let folder = EndToEnd.folder("relaymasks")
        let data = try EndToEnd.writeData(to: folder)
        let (code, referenceOutput, referenceErrors) = try EndToEnd.run(
            ["train"] + Self.runFlags(data: data, epochs: 2, masksPerStep: 4),
            folder: folder,
            name: "reference"
        )
        #expect(code == 0, "\(referenceErrors)")
        let expected = try #require(EndToEnd.checksum(referenceOutput))
        // Each relay's block of two shards trains two masks and comes packed by their union; its
        // workers' shards of one mask each go on packed by that mask alone when not in shared memory.
        for relayFlags in [[], ["--no-shared-memory"]] {
            let (coordinator, started) = try Self.start(
                folder,
                data: data,
                epochs: 2,
                relays: 2,
                workers: 2,
                relayFlags: relayFlags,
                masksPerStep: 4
            )
            #expect(coordinator.wait(timeout: 120) == 0, "\(relayFlags): \(coordinator.errors)")
            #expect(EndToEnd.checksum(coordinator.output) == expected, "\(relayFlags)")
            #expect(EndToEnd.scores(coordinator.output) == EndToEnd.scores(referenceOutput), "\(relayFlags)")
            let counters = EndToEnd.clusterCounters(coordinator.output)
            #expect(counters["failed_tasks"] == 0 && counters["mask_mismatches"] == 0 && counters["rejected"] == 0)
            for relay in started { #expect(relay.wait(timeout: 20) == 0, "\(relay.errors)") }
        }
    }

    @Test("a relay killed with SIGKILL mid-run: its block goes to the other relay and the checksum is unchanged")
    func killRelay() throws {
        let folder = EndToEnd.folder("killrelay")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try ClusterProcessTests.reference(folder, data: data, epochs: 60)
        let (coordinator, relays) = try Self.start(
            folder,
            data: data,
            epochs: 60,
            relays: 2,
            workers: 2,
            coordinatorFlags: ["--heartbeat-timeout", "1"]
        )
        #expect(
            coordinator.waitFor(timeout: 60) { EndToEnd.epochLines($0) >= 2 },
            "the run did not start: \(coordinator.errors)"
        )
        let victims = Self.children(of: relays[0].pid)
        #expect(victims.count == 2, "the relay's two workers")
        relays[0].signal(SIGKILL)
        #expect(coordinator.wait(timeout: 120) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.checksum(coordinator.output) == expected)
        #expect(EndToEnd.clusterCounters(coordinator.output)["workers_lost"] == 1)
        #expect(relays[1].wait(timeout: 20) == 0)
        // The dead relay's workers leave by themselves once their parent is gone.
        for pid in victims {
            var gone = false
            for _ in 0..<250 where !gone {
                gone = kill(pid, 0) != 0
                if !gone { usleep(20_000) }
            }
            #expect(gone, "worker \(pid) of the killed relay is still running")
        }
    }

    @Test("a worker behind a relay killed mid-run: its shards go to the relay's other worker; checksum unchanged")
    func killWorkerBehindRelay() throws {
        let folder = EndToEnd.folder("killbehind")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try ClusterProcessTests.reference(folder, data: data, epochs: 60)
        let (coordinator, relays) = try Self.start(
            folder,
            data: data,
            epochs: 60,
            relays: 1,
            workers: 2,
            relayFlags: ["--heartbeat-timeout", "1"]
        )
        #expect(
            coordinator.waitFor(timeout: 60) { EndToEnd.epochLines($0) >= 2 },
            "the run did not start: \(coordinator.errors)"
        )
        let workers = Self.children(of: relays[0].pid)
        #expect(workers.count == 2, "the relay's two workers")
        if let victim = workers.first { kill(victim, SIGKILL) }
        #expect(coordinator.wait(timeout: 120) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.checksum(coordinator.output) == expected)
        let counters = EndToEnd.clusterCounters(coordinator.output)
        #expect(counters["workers_lost"] == 0 && counters["failed_tasks"] == 0, "the coordinator saw the relay only")
        #expect(relays[0].wait(timeout: 20) == 0)
        #expect(relays[0].errors.contains("worker lost"), "\(relays[0].errors)")
    }

    /// Liveness by the connection on both sides of a relay. A process frozen with SIGSTOP keeps
    /// its sockets open (and libzmq's threads stop with it): only unanswered heartbeats tell.
    @Test(
        """
        a worker behind a relay frozen with SIGSTOP: the relay's heartbeats let it go and its other worker takes \
        its shards; a relay frozen: the coordinator's heartbeats let it go and the other relay takes its block; \
        checksum unchanged
        """,
        arguments: ["worker", "relay"]
    )
    func frozenBehindOrRelay(frozen: String) throws {
        let folder = EndToEnd.folder("frozen-\(frozen)")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try ClusterProcessTests.reference(folder, data: data, epochs: 60)
        let relayCount = frozen == "relay" ? 2 : 1
        let (coordinator, relays) = try Self.start(
            folder,
            data: data,
            epochs: 60,
            relays: relayCount,
            workers: 2,
            coordinatorFlags: ["--heartbeat-timeout", "1"],
            relayFlags: ["--heartbeat-timeout", "1"]
        )
        #expect(
            coordinator.waitFor(timeout: 60) { EndToEnd.epochLines($0) >= 2 },
            "the run did not start: \(coordinator.errors)"
        )
        let workers = Self.children(of: relays[0].pid)
        try #require(workers.count == 2, "the relay's two workers: \(workers)")
        let victim = frozen == "relay" ? relays[0].pid : workers[0]
        kill(victim, SIGSTOP)
        defer {
            kill(victim, SIGKILL)
            if frozen == "relay" { for pid in workers { kill(pid, SIGKILL) } }
        }
        #expect(coordinator.wait(timeout: 120) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.checksum(coordinator.output) == expected)
        let counters = EndToEnd.clusterCounters(coordinator.output)
        if frozen == "relay" {
            #expect(counters["workers_lost"] == 1, "\(counters)")
            #expect(coordinator.errors.contains("its connection is gone"), "\(coordinator.errors)")
            #expect(relays[1].wait(timeout: 20) == 0, "\(relays[1].errors)")
        } else {
            #expect(
                counters["workers_lost"] == 0 && counters["failed_tasks"] == 0,
                "the coordinator saw the relay only"
            )
            #expect(relays[0].wait(timeout: 20) == 0, "\(relays[0].errors)")
            #expect(relays[0].errors.contains("its connection is gone"), "\(relays[0].errors)")
        }
    }
}

@Suite("Relay traffic")
struct RelayTrafficTests {
    @Test("coordinator bytes grow with hosts, not workers: 2 relays cost twice one (within 5%), half 4 direct workers")
    func bytesPerHost() throws {
        let folder = EndToEnd.folder("relaybytes")
        let (code, out, err) = try EndToEnd.run(
            [
                "bench", "--workers", "2", "--hosts", "1,2", "--steps", "10", "--warmup", "2", "-q", "64",
                "--dimension", "64", "--examples", "1000",
            ],
            folder: folder,
            name: "bench"
        )
        #expect(code == 0, "\(err)")
        let lines = out.split(separator: "\n").filter { $0.hasPrefix("made_hosts ") }
        #expect(lines.count == 2, "\(out)")
        func value(_ line: Substring, _ key: String) -> Double? {
            line.split(separator: " ").first { $0.hasPrefix(key + "=") }.flatMap { Double($0.dropFirst(key.count + 1)) }
        }
        for line in lines {
            #expect(line.contains("same_checksum=true"), "\(line)")
            let ratio = try #require(value(line, "per_host_vs_first"))
            #expect(abs(ratio - 1) <= 0.05, "\(line)")
            let direct = try #require(value(line, "direct_vs_relay"))
            #expect(direct > 1.9, "2 workers per host dialing directly move about twice the bytes: \(line)")
        }
    }
}

@Suite("made launch with relays", .serialized)
struct LaunchRelayTests {
    @Test("made launch: a second host's first process starts a relay its processes work behind; same checksum")
    func launchStartsRelays() throws {
        let folder = EndToEnd.folder("launchrelay")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try ClusterProcessTests.reference(folder, data: data)
        let port = EndToEnd.freePort()
        // Ranks 0 and 3 on the coordinator's host (GROUP_RANK 0), ranks 1 and 2 on a second one.
        let places = [(0, 0), (1, 0), (1, 1), (0, 1)]
        var environment = ProcessInfo.processInfo.environment
        environment["MASTER_ADDR"] = "127.0.0.1"
        environment["MASTER_PORT"] = "\(port)"
        environment["WORLD_SIZE"] = "4"
        environment["TORCHELASTIC_RUN_ID"] = "e2e\(getpid())"
        let processes = try places.enumerated().map { rank, place in
            var e = environment
            e["RANK"] = "\(rank)"
            e["GROUP_RANK"] = "\(place.0)"
            e["LOCAL_RANK"] = "\(place.1)"
            return try EndToEnd.Child(
                // The work waits for all three workers, however long a loaded machine takes to start them.
                ["launch", "-v", "--insecure", "--join-timeout", "600"] + ClusterProcessTests.runFlags(data: data),
                folder: folder,
                name: "rank\(rank)",
                environment: e
            )
        }
        #expect(processes[0].wait(timeout: 660) == 0, "\(processes[0].errors)")
        #expect(!processes[0].errors.contains("starting without every expected worker"), "\(processes[0].errors)")
        #expect(EndToEnd.checksum(processes[0].output) == expected)
        // Two peers: the relay of the second host, and rank 3 beside the coordinator.
        #expect(EndToEnd.clusterCounters(processes[0].output)["workers_joined"] == 2, "\(processes[0].output)")
        for p in processes.dropFirst() { #expect(p.wait(timeout: 30) == 0, "\(p.errors)") }
        #expect(processes[1].errors.contains("relay ready for its workers"), "\(processes[1].errors)")
        // The ranks behind the relay computed. Rank 3 joined (counted above) but may get no task: when the
        // relay registers first, a block of all 4 shards, done by its 2 workers, ties with blocks of 2 in
        // the planner's time (blockSize(shards:capacities:limit:)) and wins for its fewer messages.
        for rank in 1...2 {
            #expect(EndToEnd.computedTasks(processes[rank].errors), "rank \(rank) computed: \(processes[rank].errors)")
        }
    }
}
