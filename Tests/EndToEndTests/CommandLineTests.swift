import Foundation
import MADE
import Testing

/// The `made` command line on small data: what a user types and sees.
@Suite("Command line")
struct CommandLineTests {
    @Test("train, checksum and eval agree; --per-example writes one log-likelihood per example")
    func trainCheckEval() throws {
        let folder = EndToEnd.folder("cli")
        let data = try EndToEnd.writeData(to: folder)
        let checkpoint = folder + "/run.ckpt"
        let (code, out, err) = try EndToEnd.run(
            [
                "train", "-d", data, "-q", "16", "--epochs", "2", "--batch-size", "50", "-s", "3", "-n", "3",
                "--checkpoint", checkpoint,
            ],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        let trained = try #require(EndToEnd.checksum(out))
        #expect(out.contains("valid_nll=") && out.contains("test_nll=") && out.contains("masks=3"))

        let (sumCode, sumOut, _) = try EndToEnd.run(["checksum", checkpoint], folder: folder, name: "checksum")
        #expect(sumCode == 0)
        #expect(EndToEnd.checksum(sumOut) == trained)

        let perExample = folder + "/ll.txt"
        let (evalCode, evalOut, evalErr) = try EndToEnd.run(
            [
                "eval", "--checkpoint", checkpoint, "-d", data, "--split", "test",
                "--per-example", perExample,
            ],
            folder: folder,
            name: "eval"
        )
        #expect(evalCode == 0, "\(evalErr)")
        let values = try String(contentsOfFile: perExample, encoding: .utf8).split(separator: "\n").compactMap {
            Double($0)
        }
        #expect(values.count == 100)
        #expect(values.allSatisfy { $0 < 0 })
        let printed = try #require(
            evalOut.split(separator: " ").first { $0.hasPrefix("nll=") }.flatMap { Double($0.dropFirst(4)) }
        )
        let test = try #require(out.split(separator: "\n").first { $0.hasPrefix("test_nll=") })
        #expect(test.hasPrefix(String(format: "test_nll=%.4f", printed)))
        #expect(abs(-values.reduce(0, +) / 100 - printed) < 1e-3)

        let (logitCode, logitOut, _) = try EndToEnd.run(
            ["eval", "--checkpoint", checkpoint, "-d", data, "--ensemble", "logits"],
            folder: folder,
            name: "logits"
        )
        #expect(logitCode == 0)
        #expect(logitOut.contains("not a normalized likelihood"))
    }

    @Test(
        "bad input gets a clear error and a non-zero exit",
        arguments: [
            (["train", "-d", "/nonexistent/data.npz"], "/nonexistent/data.npz"),
            (["train", "-d", "DATA", "-q", "10,x"], "--hiddens"),
            (["train", "-d", "DATA", "--batch-size", "0", "-q", "4"], "batch size"),
            (["train", "-d", "DATA", "--resume"], "--resume needs --checkpoint"),
            (["train", "-d", "DATA", "--shards", "500", "-q", "4"], "shards must be between"),
            (["train", "-d", "DATA", "--masks-per-step", "3", "-n", "2", "-q", "4"], "more than the 2 masks"),
            (["train", "-d", "DATA", "--masks-per-step", "2", "-q", "4"], "--num-masks 1"),
            (
                ["train", "-d", "DATA", "--masks-per-step", "2", "-n", "4", "--shards", "3", "-q", "4"],
                "must divide --shards 3"
            ),
            (["train", "-d", "DATA", "--masks-per-step", "0", "-q", "4"], "at least 1"),
            (["bench", "--masks-per-step", "2", "--shards", "3", "--steps", "1"], "must divide --shards 3"),
            (["eval", "--checkpoint", "DATA", "-d", "DATA"], "checkpoint"),
            (["coordinator", "-d", "DATA", "--bind", "tcp://0.0.0.0:0", "--shards", "2", "-q", "4"], "CURVE"),
            (["train", "-d", "BROKEN"], "BROKEN"),
            (["train", "-d", "DATA", "-q", "8", "--lr", "1e30"], "training diverged at step 1"),
            (["train", "-d", "DATA", "-q", "8", "--lr", "1e30", "--workers", "2"], "not finite: training diverged"),
            (
                ["train", "-d", "DATA", "-q", "8", "--lr", "1e30", "--workers", "2", "--no-shared-memory"],
                "not finite: training diverged"
            ),
        ]
    )
    func badInput(arguments: [String], expected: String) throws {
        let folder = EndToEnd.folder("bad-\(abs(arguments.joined().hashValue))")
        let data = try EndToEnd.writeData(to: folder, count: 200)
        let broken = folder + "/broken.npz"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: data))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: broken))
        let args = arguments.map { $0 == "DATA" ? data : $0 == "BROKEN" ? broken : $0 }
        let (code, out, err) = try EndToEnd.run(args, folder: folder, name: "bad", timeout: 60)
        #expect(code != nil && code != 0, "exit \(String(describing: code)) for \(args)")
        let expectedText = expected == "BROKEN" ? broken : expected
        #expect((out + err).contains(expectedText), "no '\(expectedText)' in: \(err)")
        #expect(!(out + err).contains("Fatal error"), "crashed: \(err)")
    }

    @Test(
        """
        --masks-per-step: shards default to M in one process, a resume keeps M and refuses another, and ends \
        bit-identical
        """
    )
    func masksPerStepResume() throws {
        let folder = EndToEnd.folder("masks-per-step")
        let data = try EndToEnd.writeData(to: folder)
        let checkpoint = folder + "/run.ckpt"
        let flags = [
            "train", "-d", data, "-q", "8", "-n", "4", "--masks-per-step", "4", "-s", "4", "--epochs", "3",
            "--batch-size", "50",
        ]
        let (full, fullOut, fullErr) = try EndToEnd.run(flags, folder: folder, name: "full")
        #expect(full == 0, "\(fullErr)")
        #expect(fullOut.contains("4 mask(s) (4 per step)") && fullOut.contains("4 shard(s)"), "\(fullOut)")
        let (a, _, errA) = try EndToEnd.run(
            flags + ["--checkpoint", checkpoint, "--stop-after-steps", "15"],
            folder: folder,
            name: "first"
        )
        #expect(a == 0, "\(errA)")
        let (refused, _, errRefused) = try EndToEnd.run(
            ["train", "-d", data, "--checkpoint", checkpoint, "--resume", "--masks-per-step", "2"],
            folder: folder,
            name: "refused"
        )
        #expect(refused != 0 && errRefused.contains("--masks-per-step 2 (checkpoint: 4)"), "\(errRefused)")
        let (b, outB, errB) = try EndToEnd.run(
            ["train", "-d", data, "--checkpoint", checkpoint, "--resume"],
            folder: folder,
            name: "resumed"
        )
        #expect(b == 0, "\(errB)")
        #expect(EndToEnd.checksum(outB) != nil && EndToEnd.checksum(outB) == EndToEnd.checksum(fullOut))
        // Another M trains something else.
        let (other, otherOut, _) = try EndToEnd.run(
            flags.map { $0 == "--masks-per-step" ? "--shards" : $0 },
            folder: folder,
            name: "other"
        )
        #expect(other == 0 && EndToEnd.checksum(otherOut) != EndToEnd.checksum(fullOut))
    }

    @Test("--metrics writes a JSON object per step and per epoch, with per-worker times in a cluster run")
    func metrics() throws {
        let folder = EndToEnd.folder("metrics")
        let data = try EndToEnd.writeData(to: folder)
        let path = folder + "/metrics.jsonl"
        let (code, _, err) = try EndToEnd.run(
            [
                "train", "-d", data, "-q", "16", "--epochs", "2", "--batch-size", "50", "--workers", "2",
                "--metrics", path,
            ],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        let objects = try lines.map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        let steps = objects.filter { $0["type"] as? String == "step" }
        let epochs = objects.filter { $0["type"] as? String == "epoch" }
        #expect(steps.count == 2 * 12 && epochs.count == 2)
        #expect(steps.map { $0["step"] as? Int } == (1...24).map { $0 })
        #expect(steps.allSatisfy { ($0["loss"] as? Double).map { $0 > 0 } == true && $0["lr"] as? Double == 0.001 })
        // Every step names the workers that computed its two shards (one may have done both
        // while the other was still starting).
        for step in steps {
            let workers = try #require(step["workers"] as? [[String: Any]])
            #expect((1...2).contains(workers.count))
            #expect(workers.map { $0["shards"] as? Int ?? 0 }.reduce(0, +) == 2)
            #expect(
                workers.allSatisfy {
                    ($0["name"] as? String)?.hasPrefix("local-") == true && $0["compute_ms"] is Double
                        && $0["wait_ms"] is Double
                }
            )
        }
        #expect(epochs.allSatisfy { $0["valid_nll"] is Double })
    }

    @Test("evaluation and sampling spread over workers give exactly the single-process results")
    func distributedEvalAndSample() throws {
        let folder = EndToEnd.folder("distributed-eval")
        let data = try EndToEnd.writeData(to: folder, count: 600)
        let checkpoint = folder + "/run.ckpt"
        let (code, _, err) = try EndToEnd.run(
            [
                "train", "-d", data, "-q", "16", "--epochs", "2", "--batch-size", "50", "-n", "4",
                "--checkpoint", checkpoint,
            ],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        // A single-split file too: the test split alone, as .npy.
        let single = folder + "/test.npy"
        let dataset = try DatasetLoader.load(path: data)
        try Data(DatasetWriter.npy(dataset.test!)).write(to: URL(fileURLWithPath: single))
        for (name, arguments) in [
            ("npz", ["-d", data, "--split", "valid", "-s", "4"]),
            ("logits", ["-d", data, "-s", "3", "--ensemble", "logits"]),
            ("single", ["-d", single, "-s", "2"]),
        ] {
            let local = folder + "/\(name)-local.txt"
            let spread = folder + "/\(name)-spread.txt"
            let (a, outA, errA) = try EndToEnd.run(
                ["eval", "--checkpoint", checkpoint, "--per-example", local] + arguments,
                folder: folder,
                name: "eval-\(name)"
            )
            let (b, outB, errB) = try EndToEnd.run(
                ["eval", "--checkpoint", checkpoint, "--per-example", spread, "--workers", "2"] + arguments,
                folder: folder,
                name: "eval-\(name)-workers"
            )
            #expect(a == 0 && b == 0, "\(errA) \(errB)")
            #expect(outA == outB, "\(name): \(outA) vs \(outB)")
            #expect(
                try String(contentsOfFile: local, encoding: .utf8) == String(contentsOfFile: spread, encoding: .utf8),
                "\(name)"
            )
        }
        let (a, outA, errA) = try EndToEnd.run(
            ["sample", "--checkpoint", checkpoint, "--count", "70", "--out", folder + "/local.png", "--seed", "3"],
            folder: folder,
            name: "sample"
        )
        let (b, _, errB) = try EndToEnd.run(
            [
                "sample", "--checkpoint", checkpoint, "--count", "70", "--out", folder + "/spread.png", "--seed", "3",
                "--workers", "3",
            ],
            folder: folder,
            name: "sample-workers"
        )
        #expect(a == 0 && b == 0, "\(errA) \(errB)")
        #expect(outA.contains("sampled 70 images"))
        let pngA = try Data(contentsOf: URL(fileURLWithPath: folder + "/local.png"))
        let pngB = try Data(contentsOf: URL(fileURLWithPath: folder + "/spread.png"))
        #expect(pngA == pngB)
    }

    @Test(
        "scripts/plot-compare.sh draws two runs' validation NLL to a PNG, and refuses a broken file or argument",
        .enabled(if: EndToEnd.commandExists("gnuplot"))
    )
    func plotCompare() throws {
        let folder = EndToEnd.folder("plot-compare")
        let data = try EndToEnd.writeData(to: folder)
        var specs: [String] = []
        for m in [1, 2] {
            let metrics = folder + "/m\(m).jsonl"
            let (code, _, err) = try EndToEnd.run(
                [
                    "train", "-d", data, "-q", "16", "--epochs", "2", "--batch-size", "50", "-n", "2", "-s", "2",
                    "--masks-per-step", "\(m)", "--metrics", metrics,
                ],
                folder: folder,
                name: "train\(m)"
            )
            #expect(code == 0, "\(err)")
            specs.append("M\(m)=\(metrics)")
        }
        let (code, out) = try EndToEnd.script(
            "scripts/plot-compare.sh",
            [folder + "/compare.png"] + specs,
            folder: folder,
            name: "compare"
        )
        #expect(code == 0, "\(out)")
        let png = try [UInt8](Data(contentsOf: URL(fileURLWithPath: folder + "/compare.png")))
        #expect(Array(png.prefix(4)) == [0x89, 0x50, 0x4E, 0x47])
        try "not json\n".write(toFile: folder + "/broken.jsonl", atomically: true, encoding: .utf8)
        let (broken, brokenOut) = try EndToEnd.script(
            "scripts/plot-compare.sh",
            [folder + "/b.png", "x=" + folder + "/broken.jsonl"],
            folder: folder,
            name: "broken"
        )
        #expect(broken != 0 && brokenOut.contains("broken.jsonl"), "\(brokenOut)")
        let (noLabel, noLabelOut) = try EndToEnd.script(
            "scripts/plot-compare.sh",
            [folder + "/c.png", folder + "/m1.jsonl"],
            folder: folder,
            name: "nolabel"
        )
        #expect(noLabel != 0 && noLabelOut.contains("is not LABEL=FILE"), "\(noLabelOut)")
    }

    @Test(
        "scripts/plot.sh renders a metrics file to a PNG, and refuses a broken one",
        .enabled(if: EndToEnd.commandExists("gnuplot"))
    )
    func plot() throws {
        let folder = EndToEnd.folder("plot")
        let data = try EndToEnd.writeData(to: folder)
        let metrics = folder + "/metrics.jsonl"
        let (code, _, err) = try EndToEnd.run(
            ["train", "-d", data, "-q", "16", "--epochs", "3", "--batch-size", "50", "--metrics", metrics],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        let script = EndToEnd.repositoryRoot.appendingPathComponent("scripts/plot.sh").path
        func plot(_ input: String, _ output: String) throws -> Int32 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = [script, input, output]
            p.standardError = FileHandle.nullDevice
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            p.waitUntilExit()
            return p.terminationStatus
        }
        #expect(try plot(metrics, folder + "/curve.png") == 0)
        let png = try [UInt8](Data(contentsOf: URL(fileURLWithPath: folder + "/curve.png")))
        #expect(Array(png.prefix(4)) == [0x89, 0x50, 0x4E, 0x47])
        try "not json\n".write(toFile: folder + "/broken.jsonl", atomically: true, encoding: .utf8)
        #expect(try plot(folder + "/broken.jsonl", folder + "/broken.png") != 0)
    }

    @Test("Gaussian outputs train on grey levels")
    func gaussian() throws {
        let folder = EndToEnd.folder("gaussian")
        var rng = RandomStream(seed: 2, domain: .sampling)
        func split(_ n: Int) -> DataMatrix {
            DataMatrix(real: (0..<(n * 8)).map { _ in Float(rng.unitDouble()) }, count: n, dimension: 8)
        }
        let data = folder + "/grey.npz"
        try DatasetWriter.writeNPZ(
            Dataset(train: split(200), valid: split(50), test: split(50), source: "grey"),
            to: data
        )
        let (code, out, err) = try EndToEnd.run(
            [
                "train", "-d", data, "--distribution", "gaussian", "-q", "16", "--epochs", "3",
                "--batch-size", "20",
            ],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        #expect(EndToEnd.checksum(out) != nil)
        #expect(out.contains("valid_nll="))
    }
}
