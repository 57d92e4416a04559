import Foundation
import MADE
import MADECluster
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real `made` against bad input, hostile peers and damaged files: a clear error or a
/// counted rejection, never a trap, and nothing lost.
@Suite("Safety end to end")
struct SafetyEndToEndTests {
    /// The flags of a small run (600 examples of dimension 24).
    static func small(_ data: String, epochs: Int = 2) -> [String] {
        ["-d", data, "-q", "16", "--epochs", "\(epochs)", "--batch-size", "50"]
    }

    /// No trap: exit codes 132 (SIGILL), 133 (SIGTRAP), 134 (SIGABRT), 135 (SIGBUS), 139 (SIGSEGV) and 141 (SIGPIPE)
    /// never happen.
    static func expectNoTrap(_ code: Int32?, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(code != nil, "timed out", sourceLocation: sourceLocation)
        #expect(
            ![132, 133, 134, 135, 139, 141].contains(code ?? 0),
            "trapped with \(String(describing: code)): \(text)",
            sourceLocation: sourceLocation
        )
        #expect(!text.contains("Fatal error"), "crashed: \(text)", sourceLocation: sourceLocation)
    }

    @Test(
        "flags out of range are refused in validation, with the flag named and the usage shown",
        arguments: [
            (["train", "-d", "DATA", "--weight-decay", "-1"], "--weight-decay"),
            (["train", "-d", "DATA", "--weight-decay", "nan"], "--weight-decay"),
            (["train", "-d", "DATA", "--lr-gamma", "-1"], "--lr-gamma"),
            (["train", "-d", "DATA", "--lr-gamma", "1e300"], "--lr-gamma"),
            (["train", "-d", "DATA", "--lr-step-epochs", "-5"], "--lr-step-epochs"),
            (["train", "-d", "DATA", "--stop-after-steps", "-1"], "--stop-after-steps"),
            (["train", "-d", "DATA", "--lr", "-0.1"], "--lr"),
            (["train", "-d", "DATA", "--epochs", "9223372036854775807"], "--epochs"),
            (["train", "-d", "DATA", "-n", "4611686018427387904"], "--num-masks"),
            (["train", "-d", "DATA", "--threads", "100000"], "--threads"),
            (["train", "-d", "DATA", "--workers", "100000"], "--workers"),
            (["train", "-d", "DATA", "--bind", "tcp://127.0.0.1:99999"], "65535"),
            (["worker", "-d", "DATA", "--connect", "tcp://127.0.0.1:70000"], "65535"),
            (["eval", "--checkpoint", "x", "-d", "DATA", "-s", "100000"], "--samples"),
            (["sample", "--checkpoint", "x", "--out", "x.png", "-s", "1000000000"], "--samples"),
            (["sample", "--checkpoint", "x", "--out", "x.png", "--count", "1000000000000"], "--count"),
            (
                ["sample", "--checkpoint", "x", "--out", "x.png", "--count", "4", "--columns", "1000000000"],
                "--columns"
            ),
            (["train", "-d", "DATA", "--resume", "--overwrite", "--checkpoint", "x"], "--overwrite"),
            (["coordinator", "-d", "DATA", "--bind", "tcp://127.0.0.1:0"], "--shards"),
            (["keygen", "keys", "--name", "../escape"], "--name"),
        ]
    )
    func flags(arguments: [String], flag: String) throws {
        let folder = EndToEnd.folder("flags-\(abs(arguments.joined().hashValue))")
        let data = try EndToEnd.writeData(to: folder, count: 200)
        let (code, out, err) = try EndToEnd.run(
            arguments.map { $0 == "DATA" ? data : $0 },
            folder: folder,
            name: "flags",
            timeout: 60
        )
        Self.expectNoTrap(code, err)
        #expect(code == 64, "\(arguments): exit \(String(describing: code)): \(err)")
        #expect(err.contains(flag), "no '\(flag)' in: \(err)")
        #expect(err.contains("Usage:"))
        #expect(!out.contains("epoch"))
    }

    @Test(
        "run-time failures print one clear line without the usage text, and exit 1",
        arguments: [
            (["train", "-d", "DATA", "--checkpoint", "FOLDER/missing/run.ckpt"], "does not exist"),
            (["train", "-d", "DATA", "--batch-size", "5000", "-q", "4"], "fewer than one batch"),
            (["eval", "--checkpoint", "FOLDER/none.ckpt", "-d", "DATA"], "none.ckpt"),
        ]
    )
    func runTimeErrors(arguments: [String], expected: String) throws {
        let folder = EndToEnd.folder("runtime-\(abs(arguments.joined().hashValue))")
        let data = try EndToEnd.writeData(to: folder, count: 200)
        let args = arguments.map { $0 == "DATA" ? data : $0.replacingOccurrences(of: "FOLDER", with: folder) }
        let (code, out, err) = try EndToEnd.run(args, folder: folder, name: "runtime", timeout: 60)
        Self.expectNoTrap(code, err)
        #expect(code == 1, "exit \(String(describing: code)): \(err)")
        #expect(err.contains(expected), "no '\(expected)' in: \(err)")
        #expect(!err.contains("Usage:"), "usage printed under a run-time error: \(err)")
        #expect(!out.contains("epoch 1/"), "trained before failing: \(out)")
    }

    @Test(
        """
        --checkpoint: an existing run is refused without --resume or --overwrite, a second writer is refused naming \
        the holder, stale partial files go
        """
    )
    func checkpointOwnership() throws {
        let folder = EndToEnd.folder("ownership")
        let data = try EndToEnd.writeData(to: folder)
        let checkpoint = folder + "/run.ckpt"
        let (first, firstOut, firstErr) = try EndToEnd.run(
            ["train"] + Self.small(data) + ["--checkpoint", checkpoint],
            folder: folder,
            name: "first"
        )
        #expect(first == 0, "\(firstErr)")
        let trained = try Checkpoint.read(from: checkpoint)
        // A new run on it without --resume: refused, the checkpoint untouched.
        let (again, _, againErr) = try EndToEnd.run(
            ["train"] + Self.small(data, epochs: 1) + ["-n", "4", "--checkpoint", checkpoint],
            folder: folder,
            name: "again"
        )
        #expect(again == 1)
        #expect(
            againErr.contains("already holds a run") && againErr.contains("--resume")
                && againErr.contains("--overwrite"),
            "\(againErr)"
        )
        #expect(try Checkpoint.read(from: checkpoint) == trained)
        // A partial file of a writer that died is removed at the start of the next run.
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        try dead.run()
        dead.waitUntilExit()
        let stale = folder + "/.run.ckpt.tmp-\(dead.processIdentifier)"
        try Data(repeating: 1, count: 1000).write(to: URL(fileURLWithPath: stale))
        // --resume carries on (nothing left to do), --overwrite starts again.
        let (resumed, resumedOut, resumedErr) = try EndToEnd.run(
            ["train"] + Self.small(data) + ["--checkpoint", checkpoint, "--resume"],
            folder: folder,
            name: "resumed"
        )
        #expect(resumed == 0, "\(resumedErr)")
        #expect(EndToEnd.checksum(resumedOut) == EndToEnd.checksum(firstOut))
        #expect(!FileManager.default.fileExists(atPath: stale))
        let (over, _, overErr) = try EndToEnd.run(
            ["train"] + Self.small(data, epochs: 1) + ["--checkpoint", checkpoint, "--overwrite"],
            folder: folder,
            name: "overwrite"
        )
        #expect(over == 0, "\(overErr)")
        #expect(try Checkpoint.read(from: checkpoint).configuration.epochs == 1)

        // `made import` keeps the same rule: an existing checkpoint is replaced only with --overwrite.
        let exported = folder + "/model.safetensors"
        let imported = folder + "/imported.ckpt"
        let (x, _, xErr) = try EndToEnd.run(
            ["export", "--checkpoint", checkpoint, "--out", exported],
            folder: folder,
            name: "export"
        )
        #expect(x == 0, "\(xErr)")
        for (name, extra, expected) in [
            ("import1", [String](), Int32(0)), ("import2", [], 1), ("import3", ["--overwrite"], 0),
        ] {
            let (code, _, err) = try EndToEnd.run(
                ["import", exported, "--checkpoint", imported] + extra,
                folder: folder,
                name: name
            )
            #expect(code == expected, "\(name): \(err)")
            if expected == 1 { #expect(err.contains("already exists") && err.contains("--overwrite"), "\(err)") }
        }

        // Two runs on one checkpoint: the second refuses at its start and names the first.
        let long = try EndToEnd.Child(
            ["train"] + Self.small(data, epochs: 100_000) + ["--checkpoint", checkpoint, "--overwrite"],
            folder: folder,
            name: "long"
        )
        #expect(long.waitFor(timeout: 60) { $0.contains("epoch 1/") }, "\(long.errors)")
        let (second, secondOut, secondErr) = try EndToEnd.run(
            ["train"] + Self.small(data, epochs: 100_000) + ["--checkpoint", checkpoint, "--resume"],
            folder: folder,
            name: "second",
            timeout: 60
        )
        #expect(second == 1)
        #expect(secondErr.contains("pid \(long.pid)"), "\(secondErr)")
        #expect(!secondOut.contains("epoch"))
        long.signal(SIGINT)
        #expect(long.wait(timeout: 30) == 130)
        #expect(try Checkpoint.read(from: checkpoint).state.step > 0)
    }

    @Test("stopping without --checkpoint says that nothing was saved")
    func nothingSaved() throws {
        let folder = EndToEnd.folder("nothing-saved")
        let data = try EndToEnd.writeData(to: folder)
        let (code, out, err) = try EndToEnd.run(
            ["train"] + Self.small(data, epochs: 5) + ["--stop-after-steps", "3"],
            folder: folder,
            name: "stop"
        )
        #expect(code == 0, "\(err)")
        #expect(out.contains("stopped at step 3; nothing was saved"), "\(out)")
        let interrupted = try EndToEnd.Child(
            ["train"] + Self.small(data, epochs: 100_000),
            folder: folder,
            name: "interrupted"
        )
        #expect(interrupted.waitFor(timeout: 60) { $0.contains("epoch 1/") })
        interrupted.signal(SIGINT)
        #expect(interrupted.wait(timeout: 30) == 130)
        #expect(interrupted.output.contains("nothing was saved"), "\(interrupted.output)")
    }

    @Test(
        """
        a checkpoint with non-finite parameters, or with 2^63 - 1 epochs, is refused by eval, sample, checksum and \
        resume with the reason
        """
    )
    func badCheckpoints() throws {
        let folder = EndToEnd.folder("bad-checkpoints")
        let data = try EndToEnd.writeData(to: folder)
        let good = folder + "/good.ckpt"
        let (code, _, err) = try EndToEnd.run(
            ["train"] + Self.small(data, epochs: 1) + ["--checkpoint", good],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        var diverged = try Checkpoint.read(from: good)
        diverged.state.parameters[5] = .nan
        try diverged.write(to: folder + "/nan.ckpt")
        var huge = try Checkpoint.read(from: good)
        huge.configuration.epochs = Int.max
        try huge.write(to: folder + "/huge.ckpt")
        for (name, reason, commands) in [
            (
                "nan.ckpt", "not finite",
                [
                    ["eval", "-d", data], ["sample", "--out", folder + "/nan.png"],
                    ["train", "--resume"] + Self.small(data),
                ]
            ),
            (
                "huge.ckpt", "epochs",
                [
                    ["eval", "-d", data], ["sample", "--out", folder + "/huge.png"], ["checksum"],
                    ["train", "--resume", "-d", data],
                ]
            ),
        ] {
            for command in commands {
                let path = folder + "/" + name
                let args = command[0] == "checksum" ? ["checksum", path] : command + ["--checkpoint", path]
                let (code, out, err) = try EndToEnd.run(
                    args,
                    folder: folder,
                    name: "\(command[0])-\(name)",
                    timeout: 60
                )
                Self.expectNoTrap(code, err)
                #expect(code == 1, "\(args): \(err)")
                #expect(err.contains(reason), "\(args): no '\(reason)' in \(err)")
                #expect(!out.contains("nll=") && !out.contains("sampled"))
            }
        }
        #expect(!FileManager.default.fileExists(atPath: folder + "/nan.png"))
    }

    @Test("a model of 5000 masks samples only with -s within the limit; eval -s beyond it is refused")
    func manyMasks() throws {
        let folder = EndToEnd.folder("many-masks")
        let data = try EndToEnd.writeData(to: folder)
        let checkpoint = folder + "/run.ckpt"
        let (code, _, err) = try EndToEnd.run(
            ["train"] + Self.small(data, epochs: 1) + ["-n", "5000", "--checkpoint", checkpoint],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        let (refused, _, refusedErr) = try EndToEnd.run(
            ["sample", "--checkpoint", checkpoint, "--out", folder + "/a.png"],
            folder: folder,
            name: "sample"
        )
        Self.expectNoTrap(refused, refusedErr)
        #expect(refused == 1 && refusedErr.contains("give -s K"), "\(refusedErr)")
        let (ok, _, okErr) = try EndToEnd.run(
            ["sample", "--checkpoint", checkpoint, "--out", folder + "/b.png", "-s", "3", "--count", "4"],
            folder: folder,
            name: "sample-s"
        )
        #expect(ok == 0, "\(okErr)")
    }

    @Test(
        """
        an evaluation whose results outgrow the training run's (8 masks, chunks of 1000 rows) still fits the \
        coordinator's frame limit
        """
    )
    func evaluationFrames() throws {
        let folder = EndToEnd.folder("eval-frames")
        let data = try EndToEnd.writeData(to: folder, count: 2000)
        let checkpoint = folder + "/run.ckpt"
        let (code, _, err) = try EndToEnd.run(
            ["train"] + Self.small(data, epochs: 1) + ["-n", "2", "--checkpoint", checkpoint],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        let flags = ["eval", "--checkpoint", checkpoint, "-d", data, "--split", "train", "-s", "8"]
        let (local, localOut, localErr) = try EndToEnd.run(flags, folder: folder, name: "local")
        let (spread, spreadOut, spreadErr) = try EndToEnd.run(
            flags + ["--workers", "2"],
            folder: folder,
            name: "spread"
        )
        #expect(local == 0 && spread == 0, "\(localErr) \(spreadErr)")
        let nll = { (out: String) in out.split(separator: " ").first { $0.hasPrefix("nll=") } }
        #expect(nll(localOut) != nil && nll(localOut) == nll(spreadOut), "\(localOut) / \(spreadOut)")
    }

    @Test("`made train | head -1` keeps training and checkpointing after the reader has gone, and exits 0")
    func brokenPipe() throws {
        let folder = EndToEnd.folder("pipe")
        let data = try EndToEnd.writeData(to: folder)
        let checkpoint = folder + "/run.ckpt"
        let command = ([EndToEnd.executable, "train"] + Self.small(data, epochs: 4) + ["--checkpoint", checkpoint])
            .map { "'\($0)'" }.joined(separator: " ")
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/bash")
        shell.arguments = ["-c", "\(command) 2>\(folder)/err | head -1 >\(folder)/out; exit ${PIPESTATUS[0]}"]
        try shell.run()
        shell.waitUntilExit()
        let errors = (try? String(contentsOfFile: folder + "/err", encoding: .utf8)) ?? ""
        #expect(shell.terminationStatus == 0, "exit \(shell.terminationStatus): \(errors)")
        #expect(try String(contentsOfFile: folder + "/out", encoding: .utf8).hasPrefix("MADE "))
        #expect(try Checkpoint.read(from: checkpoint).state.completedEpochs == 4)
    }

    @Test("--metrics on a full disk warns once and training goes on to its checkpoint")
    func metricsOnFullDisk() throws {
        let folder = EndToEnd.folder("full-disk")
        let data = try EndToEnd.writeData(to: folder)
        let checkpoint = folder + "/run.ckpt"
        let (code, out, err) = try EndToEnd.run(
            ["train"] + Self.small(data, epochs: 3) + ["--metrics", "/dev/full", "--checkpoint", checkpoint],
            folder: folder,
            name: "train"
        )
        Self.expectNoTrap(code, err)
        #expect(code == 0, "\(err)")
        #expect(err.components(separatedBy: "cannot write the metrics").count == 2, "\(err)")
        #expect(err.contains("No space left on device"))
        #expect(EndToEnd.checksum(out) != nil)
        #expect(try Checkpoint.read(from: checkpoint).state.completedEpochs == 3)
    }

    @Test("--workers N whose memory cannot fit on this host is refused at start, with their need and what is available")
    func workersBeyondMemory() throws {
        let folder = EndToEnd.folder("workers-memory")
        let data = try EndToEnd.writeData(to: folder)
        // 1024 workers of a model of 48 million parameters: terabytes.
        let flags = ["train", "-d", data, "-q", "1000000", "--workers", "1024", "--epochs", "1"]
        let (code, out, err) = try EndToEnd.run(flags, folder: folder, name: "train", timeout: 60)
        Self.expectNoTrap(code, err)
        #expect(code == 1, "\(err)")
        #expect(err.contains("Error: --workers 1024 (") && err.contains("per local worker process"), "\(err)")
        #expect(err.contains("of memory available"), "\(err)")
        #expect(!out.contains("epoch") && !err.contains("worker joined"))
    }

    @Test(
        """
        a slot file truncated mid-run is noticed, never a SIGBUS: results in it are refused, the step is recomputed \
        over the socket, and the run ends with the single-process checksum
        """
    )
    func truncatedSlotFile() throws {
        let folder = EndToEnd.folder("truncated-slots")
        let data = try EndToEnd.writeData(to: folder)
        let flags = ["-d", data, "-q", "32", "--epochs", "150", "--batch-size", "20", "--shards", "2", "--lr", "0.01"]
        let (refCode, refOut, refErr) = try EndToEnd.run(["train"] + flags, folder: folder, name: "reference")
        #expect(refCode == 0, "\(refErr)")
        let run = try EndToEnd.Child(["train", "--workers", "2"] + flags, folder: folder, name: "cluster")
        #expect(run.waitFor(timeout: 60) { $0.contains("epoch 3/") }, "\(run.errors)")
        let files = try FileManager.default.contentsOfDirectory(atPath: "/dev/shm").filter {
            $0.hasPrefix("made-\(run.pid)-") && $0.hasSuffix(".slots")
        }
        try #require(files.count == 1, "no slot file of \(run.pid): \(files)")
        #expect(truncate("/dev/shm/" + files[0], 0) == 0)
        let code = run.wait(timeout: 300)
        Self.expectNoTrap(code, run.errors)
        #expect(code == 0, "\(run.errors)")
        #expect(run.errors.contains("shrank"), "\(run.errors)")
        // Neither the coordinator nor a worker died: each went on over the socket.
        #expect(!run.errors.contains("process ended"), "\(run.errors)")
        #expect(EndToEnd.checksum(run.output) == EndToEnd.checksum(refOut))
    }

    @Test(
        """
        a rogue coordinator's welcome naming a victim file: the worker never opens it, with or without \
        --no-shared-memory
        """
    )
    func rogueCoordinator() throws {
        let folder = EndToEnd.folder("rogue")
        let data = try EndToEnd.writeData(to: folder)
        let victim = folder + "/victim.bin"
        let original = [UInt8](repeating: 0xCD, count: 1 << 16)
        try Data(original).write(to: URL(fileURLWithPath: victim))
        let planted = "/dev/shm/made-\(getpid())-\(UInt16.random(in: 1...9999)).slots"
        try FileManager.default.createSymbolicLink(atPath: planted, withDestinationPath: victim)
        defer { unlink(planted) }

        let model = ModelConfiguration(inputCount: 24, hiddenSizes: [8])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let configuration = Array(try encoder.encode(TrainingConfiguration(model: model, batchSize: 10)))
        let dense = ParameterLayout(model).count
        let context = try ZMQContext()
        defer { context.shutdown() }
        let router = try ZMQSocket(context: context, kind: .router)
        defer { router.close() }
        try router.set(.linger(milliseconds: 0), .receiveTimeout(milliseconds: 10_000))
        try router.bind("tcp://127.0.0.1:*")
        /// The next message of `kind` a worker sends, and its routing id.
        func next(_ kind: WireMessage.Kind) throws -> ([UInt8], WireMessage)? {
            while let frames = try router.receive() {
                guard frames.count == 2, let (_, message) = try? WireFormat.decode(frames[1]) else { continue }
                if message.kind == kind { return (frames[0], message) }
            }
            return nil
        }
        for (path, extra) in [
            (victim, []), (planted, []), (victim, ["--no-shared-memory"]), (planted, ["--no-shared-memory"]),
        ] {
            let worker = try EndToEnd.Child(
                ["worker", "-d", data, "--connect", router.lastEndpoint, "--coordinator-timeout", "20"] + extra,
                folder: folder,
                name: "worker-\(extra.count)-\(path.count)"
            )
            let (peer, hello) = try #require(try next(.hello), "no hello: \(worker.errors)")
            guard case .hello(let h) = hello else { continue }
            #expect(h.hostID.isEmpty == !extra.isEmpty)
            let grant = WireMessage.SharedMemoryGrant(path: path, slot: 1, slotFloats: 64)
            try router.send(bytes: [
                peer,
                WireFormat.encode(
                    .welcome(
                        .init(
                            heartbeatIntervalMilliseconds: 1000,
                            configuration: configuration,
                            sharedMemory: grant
                        )
                    ),
                    runID: 77
                ),
            ])
            // The worker declines: it says hello again, without a host id. Hellos it repeated before
            // the welcome reached it still carry one; a worker that took the grant never sends one without.
            var declined = false
            while !declined, let (_, again) = try next(.hello) {
                if case .hello(let h2) = again { declined = h2.hostID.isEmpty }
            }
            #expect(declined, "no hello without a host id: \(worker.errors)")
            // Welcomed without shared memory, a task that claims its parameters lie there fails: nothing was mapped.
            try router.send(bytes: [
                peer,
                WireFormat.encode(
                    .welcome(.init(heartbeatIntervalMilliseconds: 1000, configuration: configuration)),
                    runID: 77
                ),
            ])
            let task = WireMessage.Task(
                step: 1,
                shard: 0,
                shardCount: 1,
                maskSeed: 0,
                rows: Array(0..<10),
                work: .gradient,
                parameters: .shared(slot: 0, count: UInt32(dense)),
                ticket: 5,
                rowsPerShard: [10]
            )
            try router.send(bytes: [peer, WireFormat.encode(.task(task), runID: 77)])
            #expect(try next(.failed) != nil, "the task did not fail: \(worker.errors)")
            try router.send(bytes: [peer, WireFormat.encode(.shutdown(exitCode: 0, reason: "test over"), runID: 77)])
            #expect(worker.wait(timeout: 30) == 0, "\(worker.errors)")
            // With --no-shared-memory the grant is declined unopened; otherwise it is opened and refused.
            #expect(
                worker.errors.contains(extra.isEmpty ? "refusing the shared memory" : "declining shared memory"),
                "\(worker.errors)"
            )
            #expect(try Array(Data(contentsOf: URL(fileURLWithPath: victim))) == original)
        }
    }
}
