import Foundation
import MADE
import MADECluster
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The cluster as users run it: real `made` processes over real ZeroMQ sockets.
@Suite("Cluster end to end", .serialized)
struct ClusterProcessTests {
    /// A small run: 600 examples of 24 dimensions, batch 20, 4 shards, 3 masks; with
    /// `masksPerStep`, 4 masks of which that many train in every step.
    static func runFlags(data: String, epochs: Int = 3, masksPerStep: Int? = nil) -> [String] {
        [
            "-d", data, "-q", "32", "--epochs", "\(epochs)", "--batch-size", "20", "--shards", "4", "-r", "7", "--lr",
            "0.01",
        ]
            + (masksPerStep.map { ["-n", "4", "--masks-per-step", "\($0)"] } ?? ["-n", "3"])
    }

    /// The checksum of the same run in one process with the same shards.
    static func reference(_ folder: String, data: String, epochs: Int = 3, masksPerStep: Int? = nil) throws -> String {
        let (code, out, err) = try EndToEnd.run(
            ["train"] + runFlags(data: data, epochs: epochs, masksPerStep: masksPerStep),
            folder: folder,
            name: "reference"
        )
        #expect(code == 0, "reference run failed: \(err)")
        return try #require(EndToEnd.checksum(out))
    }

    @Test("1, 2, 3 and 4 workers with S = 4 give the single-process checksum")
    func workerCounts() throws {
        let folder = EndToEnd.folder("counts")
        let data = try EndToEnd.writeData(to: folder)
        let (referenceCode, referenceOutput, referenceErrors) = try EndToEnd.run(
            ["train", "-s", "2"] + Self.runFlags(data: data),
            folder: folder,
            name: "reference"
        )
        #expect(referenceCode == 0, "\(referenceErrors)")
        let expected = try #require(EndToEnd.checksum(referenceOutput))
        // Validation and test NLL, scored by the workers, must read the same.
        #expect(EndToEnd.scores(referenceOutput).count == 5)
        for workers in 1...4 {
            let (code, out, err) = try EndToEnd.run(
                ["train", "-s", "2", "--workers", "\(workers)"] + Self.runFlags(data: data),
                folder: folder,
                name: "w\(workers)"
            )
            #expect(code == 0, "\(workers) workers: \(err)")
            #expect(EndToEnd.checksum(out) == expected, "\(workers) workers")
            #expect(EndToEnd.scores(out) == EndToEnd.scores(referenceOutput), "\(workers) workers")
            #expect(EndToEnd.clusterCounters(out)["workers_joined"] == workers)
        }
    }

    @Test(
        "with 2 and 4 masks per step, 1, 2, 3 and 4 workers (and the socket alone) give the single-process checksum",
        arguments: [2, 4]
    )
    func masksPerStepWorkerCounts(masksPerStep: Int) throws {
        let folder = EndToEnd.folder("masks\(masksPerStep)")
        let data = try EndToEnd.writeData(to: folder)
        let flags = ["-s", "4"] + Self.runFlags(data: data, masksPerStep: masksPerStep)
        let (referenceCode, referenceOutput, referenceErrors) = try EndToEnd.run(
            ["train"] + flags,
            folder: folder,
            name: "reference"
        )
        #expect(referenceCode == 0, "\(referenceErrors)")
        let expected = try #require(EndToEnd.checksum(referenceOutput))
        let oneMask = try Self.reference(folder, data: data)
        #expect(expected != oneMask)
        let validation = referenceOutput.split(separator: "\n").filter {
            $0.hasPrefix("valid_nll=") || $0.hasPrefix("test_nll=")
        }
        #expect(validation.count == 2)
        // Over the socket with 2 workers a task is a block of both halves of the step; with 4, one shard of one mask.
        let socket = ["--no-shared-memory"]
        for (workers, extra) in [(1, []), (2, []), (3, []), (4, []), (2, socket), (4, socket)] {
            let (code, out, err) = try EndToEnd.run(
                ["train", "--workers", "\(workers)"] + extra + flags,
                folder: folder,
                name: "w\(workers)\(extra.count)"
            )
            #expect(code == 0, "\(workers) workers \(extra): \(err)")
            #expect(EndToEnd.checksum(out) == expected, "\(workers) workers \(extra)")
            #expect(
                out.split(separator: "\n").filter { $0.hasPrefix("valid_nll=") || $0.hasPrefix("test_nll=") }
                    == validation
            )
            let counters = EndToEnd.clusterCounters(out)
            #expect(
                counters["workers_joined"] == workers && counters["mask_mismatches"] == 0 && counters["rejected"] == 0
            )
        }
    }

    @Test("natural input order, 4 masks per step through 4 workers: the single-process checksum")
    func masksPerStepNaturalOrder() throws {
        let folder = EndToEnd.folder("masksnatural")
        let data = try EndToEnd.writeData(to: folder)
        // One shard per worker: each mask reads its own region, which the coordinator writes and
        // sums through the columns the orders keep in place.
        let flags = ["--natural-ordering"] + Self.runFlags(data: data, epochs: 2, masksPerStep: 4)
        let (code, out, err) = try EndToEnd.run(["train"] + flags, folder: folder, name: "reference")
        #expect(code == 0, "\(err)")
        let expected = try #require(EndToEnd.checksum(out))
        let (c, o, e) = try EndToEnd.run(["train", "--workers", "4"] + flags, folder: folder, name: "w4")
        #expect(c == 0, "\(e)")
        #expect(EndToEnd.checksum(o) == expected)
        let counters = EndToEnd.clusterCounters(o)
        #expect(counters["workers_joined"] == 4 && counters["mask_mismatches"] == 0 && counters["rejected"] == 0)
    }

    @Test("a step of more masks than the wire names for packing (80) travels dense, with the single-process checksum")
    func manyMasksPerStep() throws {
        let folder = EndToEnd.folder("manymasks")
        let data = try EndToEnd.writeData(to: folder)
        let flags = [
            "-d", data, "-q", "16", "--epochs", "2", "--batch-size", "80", "-n", "80", "--masks-per-step", "80",
            "--shards", "80",
        ]
        let (code, out, err) = try EndToEnd.run(["train"] + flags, folder: folder, name: "reference")
        #expect(code == 0, "\(err)")
        let expected = try #require(EndToEnd.checksum(out))
        for extra in [[], ["--no-shared-memory"]] {
            let (c, o, e) = try EndToEnd.run(
                ["train", "--workers", "2"] + extra + flags,
                folder: folder,
                name: "w2\(extra.count)"
            )
            #expect(c == 0, "\(e)")
            #expect(EndToEnd.checksum(o) == expected, "\(extra)")
            #expect(EndToEnd.clusterCounters(o)["malformed"] == 0)
        }
    }

    @Test("workers started before their coordinator give the same checksum")
    func workersFirst() throws {
        let folder = EndToEnd.folder("workersfirst")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try Self.reference(folder, data: data, epochs: 4)
        let port = EndToEnd.freePort()
        let workers = try (0..<2).map {
            try EndToEnd.Child(
                ["worker", "-d", data, "--connect", "tcp://127.0.0.1:\(port)", "--name", "early\($0)"],
                folder: folder,
                name: "worker\($0)"
            )
        }
        usleep(2_500_000)  // several hello retries go out before anyone listens
        let (code, out, err) = try EndToEnd.run(
            ["coordinator", "--bind", "tcp://127.0.0.1:\(port)"] + Self.runFlags(data: data, epochs: 4),
            folder: folder,
            name: "coordinator"
        )
        #expect(code == 0, "\(err)")
        #expect(EndToEnd.checksum(out) == expected)
        let counters = EndToEnd.clusterCounters(out)
        #expect(counters["workers_joined"] == 2 && counters["workers_lost"] == 0)
        for w in workers { #expect(w.wait(timeout: 10) == 0) }
    }

    @Test("a worker using shared memory and one using the socket, in one run, give the single-process checksum")
    func mixedTransports() throws {
        let folder = EndToEnd.folder("mixed")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try Self.reference(folder, data: data)
        let port = EndToEnd.freePort()
        let coordinator = try EndToEnd.Child(
            ["coordinator", "--bind", "tcp://127.0.0.1:\(port)", "--wait-for-workers", "2"] + Self.runFlags(data: data),
            folder: folder,
            name: "coordinator"
        )
        let workers = try [[], ["--no-shared-memory"]].enumerated().map { i, flags in
            try EndToEnd.Child(
                ["worker", "-v", "-d", data, "--connect", "tcp://127.0.0.1:\(port)", "--name", "mixed\(i)"] + flags,
                folder: folder,
                name: "worker\(i)"
            )
        }
        #expect(coordinator.wait(timeout: 120) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.checksum(coordinator.output) == expected)
        for w in workers { #expect(w.wait(timeout: 10) == 0) }
        #expect(workers[0].errors.contains("shared_memory=true"), "\(workers[0].errors)")
        #expect(workers[1].errors.contains("shared_memory=false"), "\(workers[1].errors)")
        for w in workers { #expect(EndToEnd.computedTasks(w.errors), "both workers computed shards") }
    }

    @Test("the coordinator waits for the workers it expects before the first step, and no longer than --join-timeout")
    func waitForWorkers() throws {
        let folder = EndToEnd.folder("wait")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try Self.reference(folder, data: data)
        let port = EndToEnd.freePort()
        let coordinator = try EndToEnd.Child(
            ["coordinator", "--bind", "tcp://127.0.0.1:\(port)", "--wait-for-workers", "2"] + Self.runFlags(data: data),
            folder: folder,
            name: "coordinator"
        )
        let early = try EndToEnd.Child(
            ["worker", "-v", "-d", data, "--connect", "tcp://127.0.0.1:\(port)", "--name", "early"],
            folder: folder,
            name: "early"
        )
        usleep(2_000_000)  // the whole run takes less than this with one worker
        #expect(
            !coordinator.output.contains("epoch "),
            "training started before the second worker: \(coordinator.output)"
        )
        let late = try EndToEnd.Child(
            ["worker", "-v", "-d", data, "--connect", "tcp://127.0.0.1:\(port)", "--name", "late"],
            folder: folder,
            name: "late"
        )
        #expect(coordinator.wait(timeout: 120) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.checksum(coordinator.output) == expected)
        for w in [early, late] {
            #expect(w.wait(timeout: 10) == 0)
            #expect(EndToEnd.computedTasks(w.errors), "\(w.errors)")
        }
        // Expecting more workers than come: training starts after the join timeout all the same.
        let port2 = EndToEnd.freePort()
        let patient = try EndToEnd.Child(
            ["coordinator", "--bind", "tcp://127.0.0.1:\(port2)", "--wait-for-workers", "3", "--join-timeout", "1"]
                + Self.runFlags(data: data),
            folder: folder,
            name: "patient"
        )
        let only = try EndToEnd.Child(
            ["worker", "-d", data, "--connect", "tcp://127.0.0.1:\(port2)"],
            folder: folder,
            name: "only"
        )
        #expect(patient.wait(timeout: 120) == 0, "\(patient.errors)")
        #expect(EndToEnd.checksum(patient.output) == expected)
        #expect(patient.errors.contains("starting without every expected worker"))
        #expect(only.wait(timeout: 10) == 0)
    }

    @Test("local workers that cannot start: the coordinator stops waiting for them at once and fails with the reason")
    func localWorkersFail() throws {
        let folder = EndToEnd.folder("nostart")
        let data = try EndToEnd.writeData(to: folder)
        let keys = folder + "/keys"
        let (keygen, _, _) = try EndToEnd.run(["keygen", keys], folder: folder, name: "keygen")
        #expect(keygen == 0)
        try FileManager.default.removeItem(atPath: keys + "/worker.key")  // the workers' key pair is gone
        // The run is killed after 50 s, before the 60 s join timeout could end it: an exit code
        // at all means the coordinator stopped because its workers exited.
        let (code, _, err) = try EndToEnd.run(
            ["train", "--workers", "2", "--keys", keys, "--idle-timeout", "3"] + Self.runFlags(data: data),
            folder: folder,
            name: "train",
            timeout: 50
        )
        #expect(code != nil && code != 0, "the coordinator did not stop when its local workers exited")
        // The two workers write their errors to this same stream, each in one write, so they do not interleave.
        #expect(err.contains("Error: \(keys)/worker.key: no such file"), "\(err)")
        // Both workers exiting before the wait ends, or one before and one after the work starts,
        // are the two ways this can go; each ends the run at once with its own message.
        let atStart = err.contains("a local worker process exited") && err.contains("no worker has been connected")
        let afterStart = err.contains("a local worker process ended") && err.contains("no other worker is connected")
        #expect(atStart || afterStart, "\(err)")
    }

    @Test("a worker speaking an older protocol version is refused in a frame of its own version, with the reason")
    func olderProtocol() throws {
        let folder = EndToEnd.folder("older")
        let data = try EndToEnd.writeData(to: folder)
        let port = EndToEnd.freePort()
        let endpoint = "tcp://127.0.0.1:\(port)"
        let coordinator = try EndToEnd.Child(
            ["coordinator", "--bind", endpoint, "--wait-for-workers", "1", "--join-timeout", "30"]
                + Self.runFlags(data: data, epochs: 1),
            folder: folder,
            name: "coordinator"
        )
        defer { coordinator.signal(SIGKILL) }
        let context = try ZMQContext()
        defer { context.shutdown() }
        let old = try ZMQSocket(context: context, kind: .dealer)
        defer { old.close() }
        try old.connect(endpoint)
        var hello = WireFormat.encode(
            .hello(.init(dataFingerprint: [UInt8](repeating: 0, count: 32), processID: 1, name: "old")),
            runID: 0
        )
        hello[4] = 1  // protocol version 1
        var reply: [UInt8]?
        for _ in 0..<100 where reply == nil {
            try old.send(bytes: [hello], dontWait: true)
            _ = try ZMQSocket.poll([.socket(old)], timeoutMilliseconds: 200)
            reply = try old.receiveMessage(maxParts: 1, dontWait: true)?.frames.first
        }
        let frame = try #require(reply, "no answer to a version-1 hello")
        #expect(frame[4] == 1 && frame[5] == 0, "the reply is not in version 1")
        #expect(frame[6] == WireMessage.Kind.reject.rawValue)
        guard case .reject(let reason) = try WireFormat.decode(frame).message else {
            Issue.record("not a reject")
            return
        }
        #expect(reason.contains("protocol version"))
    }

    @Test(
        "a worker killed with SIGKILL mid-run changes nothing, with one mask per step or four",
        arguments: [nil, 4] as [Int?]
    )
    func killWorker(masksPerStep: Int?) throws {
        let folder = EndToEnd.folder("killworker\(masksPerStep ?? 1)")
        let data = try EndToEnd.writeData(to: folder)
        // Long enough that the victim dies mid-run and its silence (1 s) is noticed before the end.
        let expected = try Self.reference(folder, data: data, epochs: 300, masksPerStep: masksPerStep)
        let endpoint = folder + "/endpoint"
        let coordinator = try EndToEnd.Child(
            [
                "coordinator", "-v", "--bind", "tcp://127.0.0.1:0", "--endpoint-file", endpoint,
                "--heartbeat-timeout", "1",
            ] + Self.runFlags(data: data, epochs: 300, masksPerStep: masksPerStep),
            folder: folder,
            name: "coordinator"
        )
        let victim = try EndToEnd.Child(
            ["worker", "-d", data, "--endpoint-file", endpoint, "--name", "victim"],
            folder: folder,
            name: "victim"
        )
        let survivor = try EndToEnd.Child(
            ["worker", "-d", data, "--endpoint-file", endpoint, "--name", "survivor"],
            folder: folder,
            name: "survivor"
        )
        // Both workers must be in (and busy) before one dies.
        #expect(
            coordinator.waitFor(timeout: 60) { $0.contains("workers=2") },
            "the workers did not both join: \(coordinator.errors)"
        )
        let epochs = EndToEnd.epochLines(coordinator.output)
        #expect(
            coordinator.waitFor(timeout: 60) { text in
                EndToEnd.epochLines(text) > epochs
            }
        )
        victim.signal(SIGKILL)
        #expect(coordinator.wait(timeout: 120) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.checksum(coordinator.output) == expected)
        let counters = EndToEnd.clusterCounters(coordinator.output)
        #expect(counters["workers_lost"] == 1)
        #expect(survivor.wait(timeout: 10) == 0)
    }

    @Test(
        """
        local workers killed with SIGKILL mid-run: one, and the other takes its shards at once; both, and the run \
        stops at once with an error naming them and resumes bit-identical from its checkpoint
        """,
        arguments: [1, 2]
    )
    func killLocalWorkers(killed: Int) throws {
        let folder = EndToEnd.folder("killlocal\(killed)")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try Self.reference(folder, data: data, epochs: 200)
        let checkpoint = folder + "/run.ckpt"
        let flags =
            ["train", "--workers", "2", "--checkpoint", checkpoint, "--resume"]
            + Self.runFlags(data: data, epochs: 200)
        let run = try EndToEnd.Child(flags, folder: folder, name: "train1")
        #expect(run.waitFor(timeout: 60) { $0.contains("epoch 3/200") }, "training did not get going: \(run.errors)")
        // The session's children: its two local workers.
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(run.pid)/task")) ?? []
        let workers = tasks.flatMap { task in
            let file = "/proc/\(run.pid)/task/\(task)/children"
            let children = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            return children.split(separator: " ").compactMap { Int32($0) }
        }
        try #require(workers.count == 2, "local workers of \(run.pid): \(workers)")
        let victims = Array(workers.prefix(killed))
        for pid in victims { kill(pid, SIGKILL) }
        // Well within the idle timeout (120 s): the session sees its children end.
        let code = run.wait(timeout: killed == 2 ? 90 : 300)
        for pid in victims { #expect(run.errors.contains("(pid \(pid)) was killed by signal 9"), "\(run.errors)") }
        #expect(run.errors.contains("worker lost; its shards go to the others"), "\(run.errors)")
        if killed == 1 {
            #expect(code == 0, "\(run.errors)")
            #expect(EndToEnd.checksum(run.output) == expected)
            #expect(EndToEnd.clusterCounters(run.output)["workers_lost"] == 1)
            return
        }
        #expect(code != nil && code != 0, "\(run.errors)")
        let error = try #require(run.errors.split(separator: "\n").first { $0.hasPrefix("Error: ") }, "\(run.errors)")
        #expect(error.contains("every local worker process ended and no other worker is connected"), "\(error)")
        for pid in workers { #expect(error.contains("(pid \(pid)) was killed by signal 9"), "\(error)") }
        #expect(error.contains("local-0 (pid") && error.contains("local-1 (pid"), "\(error)")
        let saved = try Checkpoint.read(from: checkpoint)
        #expect(saved.state.step > 0 && saved.state.completedEpochs < 200)
        let second = try EndToEnd.Child(flags, folder: folder, name: "train2")
        #expect(second.wait(timeout: 300) == 0, "\(second.errors)")
        #expect(second.errors.contains("resuming"))
        #expect(EndToEnd.checksum(second.output) == expected)
    }

    @Test(
        """
        a worker frozen with SIGSTOP (libzmq's threads too) loses its connection to the heartbeat timeout; the run \
        ends unchanged
        """
    )
    func frozenWorker() throws {
        let folder = EndToEnd.folder("frozenworker")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try Self.reference(folder, data: data, epochs: 300)
        let endpoint = folder + "/endpoint"
        let coordinator = try EndToEnd.Child(
            [
                "coordinator", "-v", "--bind", "tcp://127.0.0.1:0", "--endpoint-file", endpoint,
                "--heartbeat-timeout", "1",
            ] + Self.runFlags(data: data, epochs: 300),
            folder: folder,
            name: "coordinator"
        )
        let victim = try EndToEnd.Child(
            ["worker", "-d", data, "--endpoint-file", endpoint, "--name", "victim"],
            folder: folder,
            name: "victim"
        )
        defer { victim.signal(SIGKILL) }
        let survivor = try EndToEnd.Child(
            ["worker", "-d", data, "--endpoint-file", endpoint, "--name", "survivor"],
            folder: folder,
            name: "survivor"
        )
        #expect(
            coordinator.waitFor(timeout: 60) { $0.contains("workers=2") },
            "the workers did not both join: \(coordinator.errors)"
        )
        let epochs = EndToEnd.epochLines(coordinator.output)
        #expect(
            coordinator.waitFor(timeout: 60) { text in
                EndToEnd.epochLines(text) > epochs
            }
        )
        // Its socket stays open: only the unanswered heartbeats can tell.
        victim.signal(SIGSTOP)
        #expect(coordinator.wait(timeout: 120) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.checksum(coordinator.output) == expected)
        #expect(EndToEnd.clusterCounters(coordinator.output)["workers_lost"] == 1)
        #expect(coordinator.errors.contains("its connection is gone"), "\(coordinator.errors)")
        #expect(survivor.wait(timeout: 10) == 0)
    }

    @Test(
        """
        a coordinator killed with SIGKILL and restarted with --resume finishes bit-identical, with one mask per step \
        or two
        """,
        arguments: [nil, 2] as [Int?]
    )
    func killCoordinator(masksPerStep: Int?) throws {
        let folder = EndToEnd.folder("killcoordinator\(masksPerStep ?? 1)")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try Self.reference(folder, data: data, epochs: 200, masksPerStep: masksPerStep)
        let port = EndToEnd.freePort()
        let flags =
            [
                "coordinator", "--bind", "tcp://127.0.0.1:\(port)", "--checkpoint", folder + "/run.ckpt", "--resume",
                "--checkpoint-every", "7",
            ] + Self.runFlags(data: data, epochs: 200, masksPerStep: masksPerStep)
        let first = try EndToEnd.Child(flags, folder: folder, name: "coordinator1")
        let workers = try (0..<2).map {
            try EndToEnd.Child(
                ["worker", "-d", data, "--connect", "tcp://127.0.0.1:\(port)", "--name", "w\($0)"],
                folder: folder,
                name: "worker\($0)"
            )
        }
        #expect(
            first.waitFor(timeout: 60) { $0.contains("epoch 3/200") },
            "training did not get going: \(first.errors)"
        )
        first.signal(SIGKILL)
        _ = first.wait(timeout: 10)
        let saved = try Checkpoint.read(from: folder + "/run.ckpt")
        #expect(saved.state.step > 0 && saved.state.completedEpochs < 200)
        #expect(saved.configuration.masksPerStep == (masksPerStep ?? 1))
        let second = try EndToEnd.Child(flags, folder: folder, name: "coordinator2")
        #expect(second.wait(timeout: 120) == 0, "\(second.errors)")
        #expect(second.errors.contains("resuming"))
        #expect(EndToEnd.checksum(second.output) == expected)
        for w in workers { #expect(w.wait(timeout: 10) == 0) }
    }

    @Test(
        "malformed frames and unauthenticated clients during training are refused and counted; the result is unchanged"
    )
    func hostilePeers() throws {
        let folder = EndToEnd.folder("hostile")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try Self.reference(folder, data: data, epochs: 300)
        let keys = folder + "/keys"
        let (keygen, _, keygenErrors) = try EndToEnd.run(["keygen", keys], folder: folder, name: "keygen")
        #expect(keygen == 0, "\(keygenErrors)")
        let port = EndToEnd.freePort()
        let endpoint = "tcp://127.0.0.1:\(port)"
        let coordinator = try EndToEnd.Child(
            ["coordinator", "--bind", endpoint, "--keys", keys] + Self.runFlags(data: data, epochs: 300),
            folder: folder,
            name: "coordinator"
        )
        let workers = try (0..<2).map {
            try EndToEnd.Child(
                ["worker", "-d", data, "--connect", endpoint, "--keys", keys, "--name", "w\($0)"],
                folder: folder,
                name: "worker\($0)"
            )
        }
        #expect(
            coordinator.waitFor(timeout: 60) { $0.contains("epoch 1/300") },
            "training did not get going: \(coordinator.errors)"
        )

        let context = try ZMQContext()
        defer { context.shutdown() }
        // An authenticated peer that sends garbage.
        let authorized = try ClusterSecurity.Client.load(folder: keys)
        let noisy = try ZMQSocket(context: context, kind: .dealer)
        try noisy.configureCurveClient(keyPair: authorized.keyPair, serverPublicKey: authorized.serverPublicKey)
        try noisy.connect(endpoint)
        var rng = RandomStream(seed: 1, domain: .sampling)
        var frames: [[UInt8]] = [
            Array("GET / HTTP/1.1\r\n\r\n".utf8),
            [],
            WireFormat.encode(.heartbeat(sequence: 1), runID: 1).enumerated().map { $0.offset == 4 ? 9 : $0.element },
        ]
        for _ in 0..<20 { frames.append((0..<64).map { _ in UInt8(truncatingIfNeeded: rng.next()) }) }
        for frame in frames { try noisy.send(bytes: [frame]) }
        try noisy.send(bytes: [[1, 2, 3], [4, 5, 6]])
        // A CURVE client whose key is not authorized, and a client without CURVE.
        let stranger = try ZMQSocket(context: context, kind: .dealer)
        try stranger.configureCurveClient(
            keyPair: try CurveKeyPair.generate(),
            serverPublicKey: authorized.serverPublicKey
        )
        try stranger.connect(endpoint)
        try stranger.send(
            bytes: [
                WireFormat.encode(
                    .hello(.init(dataFingerprint: [UInt8](repeating: 0, count: 32), processID: 1, name: "x")),
                    runID: 0
                )
            ],
            dontWait: true
        )
        let plain = try ZMQSocket(context: context, kind: .dealer)
        try plain.connect(endpoint)
        try plain.send(bytes: [WireFormat.encode(.heartbeat(sequence: 1), runID: 0)], dontWait: true)

        #expect(coordinator.wait(timeout: 120) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.checksum(coordinator.output) == expected)
        let counters = EndToEnd.clusterCounters(coordinator.output)
        #expect((counters["malformed"] ?? 0) >= frames.count)
        #expect((counters["curve_refused"] ?? 0) >= 1)
        #expect((counters["rejected"] ?? 0) >= frames.count)
        for w in workers { #expect(w.wait(timeout: 10) == 0) }
        noisy.close()
        stranger.close()
        plain.close()
    }

    @Test("a worker with other data is refused with the reason and exits 3")
    func dataMismatch() throws {
        let folder = EndToEnd.folder("mismatch")
        let data = try EndToEnd.writeData(to: folder)
        let otherFolder = folder + "/other"
        try FileManager.default.createDirectory(atPath: otherFolder, withIntermediateDirectories: true)
        let other = try EndToEnd.writeData(to: otherFolder, seed: 6)
        let endpoint = folder + "/endpoint"
        let coordinator = try EndToEnd.Child(
            ["coordinator", "--bind", "tcp://127.0.0.1:0", "--endpoint-file", endpoint]
                + Self.runFlags(data: data, epochs: 1),
            folder: folder,
            name: "coordinator"
        )
        let wrong = try EndToEnd.Child(
            ["worker", "-d", other, "--endpoint-file", endpoint],
            folder: folder,
            name: "wrong"
        )
        #expect(wrong.wait(timeout: 30) == 3)
        #expect(wrong.errors.contains("data mismatch"))
        let right = try EndToEnd.Child(
            ["worker", "-d", data, "--endpoint-file", endpoint],
            folder: folder,
            name: "right"
        )
        #expect(coordinator.wait(timeout: 60) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.clusterCounters(coordinator.output)["refused_workers"] == 1)
        #expect(right.wait(timeout: 10) == 0)
    }

    @Test("a worker gives up with exit code 4 when the coordinator is gone")
    func coordinatorGone() throws {
        let folder = EndToEnd.folder("gone")
        let data = try EndToEnd.writeData(to: folder)
        let port = EndToEnd.freePort()
        let worker = try EndToEnd.Child(
            ["worker", "-d", data, "--connect", "tcp://127.0.0.1:\(port)", "--coordinator-timeout", "1.5"],
            folder: folder,
            name: "worker"
        )
        #expect(worker.wait(timeout: 20) == 4)
        #expect(worker.errors.contains("no coordinator"))
    }

    @Test("Ctrl-C stops training, checkpoints, leaves no worker behind, and the run resumes bit-identical")
    func interrupt() throws {
        let folder = EndToEnd.folder("interrupt")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try Self.reference(folder, data: data, epochs: 200)
        let flags =
            ["train", "--workers", "2", "--checkpoint", folder + "/run.ckpt", "--resume"]
            + Self.runFlags(data: data, epochs: 200)
        let first = try EndToEnd.Child(flags, folder: folder, name: "first")
        #expect(first.waitFor(timeout: 60) { $0.contains("epoch 2/200") })
        first.signal(SIGINT)
        #expect(first.wait(timeout: 30) == 130)
        #expect(first.output.contains("stopped at step"))
        // No worker of the first run is left.
        let ps = Process()
        ps.executableURL = URL(fileURLWithPath: "/usr/bin/pgrep")
        ps.arguments = ["-f", "--", "parent-pid \(first.pid)"]
        try ps.run()
        ps.waitUntilExit()
        #expect(ps.terminationStatus == 1, "a worker of the interrupted run is still running")
        let second = try EndToEnd.Child(flags, folder: folder, name: "second")
        #expect(second.wait(timeout: 120) == 0, "\(second.errors)")
        #expect(EndToEnd.checksum(second.output) == expected)
    }
}
