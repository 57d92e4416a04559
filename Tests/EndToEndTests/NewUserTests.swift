import Foundation
import MADE
import Testing

/// What a new user meets: help texts, logs, metrics, the defaults eval and sample take from a
/// checkpoint, keys, and the model handed to PyTorch users. Each test starts the real `made`.
@Suite("What a new user meets")
struct NewUserTests {
    @Test(
        """
        help marks -d required, shows one style of defaults and each once, speaks of its own command, and hides \
        --parent-pid
        """
    )
    func helpTexts() throws {
        let folder = EndToEnd.folder("help")
        var texts: [String: String] = [:]
        for command in [
            "train", "coordinator", "worker", "relay", "launch", "eval", "sample", "keygen", "export", "import",
            "bench", "checksum",
        ] {
            let (code, out, err) = try EndToEnd.run(
                [command, "--help"],
                folder: folder,
                name: "help-\(command)",
                timeout: 30
            )
            #expect(code == 0, "\(command): \(err)")
            texts[command] = out.split(whereSeparator: { $0 == " " || $0 == "\n" }).joined(separator: " ")  // unwrapped
            #expect(!out.contains("[default:"), "\(command) mixes default styles")
            #expect(!out.contains("0.16666"), "\(command) shows 1/6 as a long decimal")
            let twice = /\(default: [^()]*\) \([^()]*default:/
            #expect(!texts[command]!.contains(twice), "\(command) gives an option's default twice")
        }
        for command in ["train", "coordinator", "launch"] {
            #expect(texts[command]!.contains("made \(command) -d <path>"), "\(texts[command]!)")
            #expect(texts[command]!.contains("(required)"))
        }
        #expect(texts["worker"]!.contains("(-d <path> | --no-data)"))
        #expect(!texts["worker"]!.contains("parent-pid"))
        #expect(
            !texts["relay"]!.contains("parent-pid") && texts["relay"]!.contains("--workers")
                && texts["relay"]!.contains("--listen")
        )
        #expect(texts["train"]!.contains("(default: 1/6)"))
        for command in ["eval", "sample"] {
            let text = texts[command]!
            #expect(
                !text.contains("training starts") && !text.contains("first step")
                    && !text.contains("shards reassigned"),
                "\(command): \(text)"
            )
        }
        #expect(texts["eval"]!.contains("(default: the data the checkpoint was trained on)"))
        #expect(texts["sample"]!.contains("--scale") && texts["sample"]!.contains("--mean"))
        // -d left out: the error says so, with the usage that marks it.
        let (code, _, err) = try EndToEnd.run(["train", "-q", "4"], folder: folder, name: "no-data", timeout: 30)
        #expect(code != 0 && err.contains("-d/--data-path") && err.contains("made train -d <path>"), "\(err)")
    }

    @Test("worker comings and goings are quiet by default and shown with -v")
    func quietByDefault() throws {
        let folder = EndToEnd.folder("quiet")
        let data = try EndToEnd.writeData(to: folder)
        let flags = ["train", "-d", data, "-q", "8", "--epochs", "1", "--batch-size", "50", "--workers", "2"]
        let (code, out, err) = try EndToEnd.run(flags, folder: folder, name: "quiet")
        #expect(code == 0, "\(err)")
        #expect(EndToEnd.checksum(out) != nil)
        for line in ["worker connecting", "worker welcomed", "worker joined", "worker done", "coordinator listening"] {
            #expect(!err.contains(line), "'\(line)' shown without -v: \(err)")
        }
        let (vcode, vout, verr) = try EndToEnd.run(flags + ["-v"], folder: folder, name: "verbose")
        #expect(vcode == 0, "\(verr)")
        #expect(EndToEnd.checksum(vout) == EndToEnd.checksum(out))
        for line in ["worker connecting", "worker welcomed", "worker joined", "worker done"] {
            #expect(verr.contains(line), "'\(line)' missing with -v: \(verr)")
        }
        // A coordinator waiting for workers started by hand says where it listens (port 0 picked one).
        let (ccode, _, cerr) = try EndToEnd.run(
            [
                "coordinator", "-d", data, "-q", "8", "--shards", "2", "--bind", "tcp://127.0.0.1:0",
                "--idle-timeout", "1",
            ],
            folder: folder,
            name: "coordinator",
            timeout: 60
        )
        #expect(ccode != 0)
        #expect(
            cerr.contains("coordinator listening") && cerr.contains("endpoint=tcp://127.0.0.1:")
                && !cerr.contains("endpoint=tcp://127.0.0.1:0 "),
            "\(cerr)"
        )
    }

    @Test("metrics records carry a run id kept across a resume; plot.sh draws the last run unless told")
    func metricsRuns() throws {
        let folder = EndToEnd.folder("runs")
        let data = try EndToEnd.writeData(to: folder)
        let metrics = folder + "/m.jsonl"
        let checkpoint = folder + "/run.ckpt"
        let flags = ["train", "-d", data, "-q", "8", "--epochs", "3", "--batch-size", "50", "--metrics", metrics]
        // A first run, stopped after 15 steps and resumed: one run id.
        let (a, _, errA) = try EndToEnd.run(
            flags + ["--checkpoint", checkpoint, "--stop-after-steps", "15"],
            folder: folder,
            name: "first"
        )
        #expect(a == 0, "\(errA)")
        let (b, outB, errB) = try EndToEnd.run(
            flags + ["--checkpoint", checkpoint, "--resume"],
            folder: folder,
            name: "resumed"
        )
        #expect(b == 0, "\(errB)")
        #expect(EndToEnd.checksum(outB) != nil)
        // A second run without a checkpoint into the same file: another id.
        let (c, _, errC) = try EndToEnd.run(flags + ["--epochs", "1"], folder: folder, name: "second")
        #expect(c == 0, "\(errC)")

        let records = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        let runs = records.map { $0["run"] as? String ?? "" }
        #expect(!runs.contains(""))
        var ids: [String] = []
        for run in runs where ids.last != run { ids.append(run) }
        #expect(ids.count == 2, "\(ids)")
        let starts = records.filter { $0["type"] as? String == "start" }
        #expect(starts.map { $0["step"] as? Int } == [0, 15, 0])
        #expect(try Checkpoint.read(from: checkpoint).runID == ids[0])
        let firstSteps = records.filter { $0["type"] as? String == "step" && $0["run"] as? String == ids[0] }
        #expect(Set(firstSteps.compactMap { $0["step"] as? Int }) == Set(1...36))
        // The first step of a process has no rate: its time includes the start.
        #expect(firstSteps.first?["examples_per_s"] is NSNull)

        guard EndToEnd.commandExists("gnuplot") else { return }
        let (p1, last) = try EndToEnd.script(
            "scripts/plot.sh",
            [metrics, folder + "/last.png"],
            folder: folder,
            name: "plot-last"
        )
        #expect(p1 == 0 && last.contains("run \(ids[1]) of 2: 12 steps, 1 epochs"), "\(last)")
        let (p2, first) = try EndToEnd.script(
            "scripts/plot.sh",
            [metrics, folder + "/first.png", "--run", ids[0]],
            folder: folder,
            name: "plot-first"
        )
        #expect(p2 == 0 && first.contains("run \(ids[0]) of 2: 36 steps, 3 epochs"), "\(first)")
        let (p3, missing) = try EndToEnd.script(
            "scripts/plot.sh",
            [metrics, folder + "/none.png", "--run", "nope"],
            folder: folder,
            name: "plot-none"
        )
        #expect(p3 != 0 && missing.contains("no run nope"), "\(missing)")
    }

    @Test("eval scores the checkpoint's own data by default, and warns when -s exceeds the masks trained")
    func evalDefaults() throws {
        let folder = EndToEnd.folder("eval-defaults")
        let data = try EndToEnd.writeData(to: folder)
        let checkpoint = folder + "/run.ckpt"
        let (code, out, err) = try EndToEnd.run(
            ["train", "-d", data, "-q", "8", "--epochs", "1", "--batch-size", "50", "--checkpoint", checkpoint],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        let test = try #require(out.split(separator: "\n").first { $0.hasPrefix("test_nll=") })
        let saved = try Checkpoint.read(from: checkpoint)
        #expect(saved.dataSource?.path == URL(fileURLWithPath: data).standardizedFileURL.path)

        let (a, outA, errA) = try EndToEnd.run(
            ["eval", "--checkpoint", checkpoint],
            folder: folder,
            name: "eval-default"
        )
        #expect(a == 0, "\(errA)")
        #expect(outA.hasPrefix("nll=" + test.dropFirst("test_nll=".count).prefix { $0 != " " }), "\(outA) vs \(test)")
        #expect(!errA.contains("warning"))
        // Through workers too: they are handed the recorded data.
        let (w, outW, errW) = try EndToEnd.run(
            ["eval", "--checkpoint", checkpoint, "--workers", "2"],
            folder: folder,
            name: "eval-workers"
        )
        #expect(w == 0 && outW == outA, "\(errW)")
        let (b, _, errB) = try EndToEnd.run(
            ["eval", "--checkpoint", checkpoint, "-s", "4"],
            folder: folder,
            name: "eval-s4"
        )
        #expect(b == 0)
        #expect(errB.contains("warning: -s 4 asks for 4 masks, but the model was trained with -n 1"), "\(errB)")
        // Training says so too, when its validation ensemble repeats masks.
        let (t, _, errT) = try EndToEnd.run(
            ["train", "-d", data, "-q", "8", "--epochs", "1", "--batch-size", "50", "-s", "2"],
            folder: folder,
            name: "train-s2"
        )
        #expect(t == 0 && errT.contains("-s 2 asks for 2 masks, but the model was trained with -n 1"), "\(errT)")
        // A checkpoint from before data sources were recorded: -d is asked for.
        var old = saved
        old.dataSource = nil
        try old.write(to: folder + "/old.ckpt")
        let (c, _, errC) = try EndToEnd.run(
            ["eval", "--checkpoint", folder + "/old.ckpt"],
            folder: folder,
            name: "eval-old"
        )
        #expect(c != 0 && errC.contains("-d/--data-path"), "\(errC)")
    }

    @Test("sample writes what its name says, at --scale 3 by default, and --mean draws probabilities")
    func sampleOutput() throws {
        let folder = EndToEnd.folder("sample-output")
        let data = try EndToEnd.writeData(to: folder, dimension: 16)
        let checkpoint = folder + "/run.ckpt"
        let (code, _, err) = try EndToEnd.run(
            ["train", "-d", data, "-q", "8", "--epochs", "1", "--batch-size", "50", "--checkpoint", checkpoint],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        let (bad, _, badErr) = try EndToEnd.run(
            ["sample", "--checkpoint", checkpoint, "--out", folder + "/x.jpg"],
            folder: folder,
            name: "jpg"
        )
        #expect(bad != 0 && badErr.contains("ending in .png"), "\(badErr)")
        #expect(!FileManager.default.fileExists(atPath: folder + "/x.jpg"))

        func png(_ name: String, _ flags: [String]) throws -> (width: Int, height: Int) {
            let path = folder + "/\(name).png"
            let (code, out, err) = try EndToEnd.run(
                ["sample", "--checkpoint", checkpoint, "--count", "4", "--out", path] + flags,
                folder: folder,
                name: name
            )
            #expect(code == 0, "\(err)")
            #expect(out.contains(path))
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            return (bytes[16..<20].reduce(0) { $0 << 8 | Int($1) }, bytes[20..<24].reduce(0) { $0 << 8 | Int($1) })
        }
        // Four 4x4 images in a 2x2 grid: 2 x 4 values and 3 paddings a side, times the scale.
        #expect(try png("default", []) == (33, 33))
        #expect(try png("scale1", ["--scale", "1"]) == (11, 11))
        #expect(try png("mean", ["--mean"]) == (33, 33))
        let (meanWithWorkers, _, meanErr) = try EndToEnd.run(
            ["sample", "--checkpoint", checkpoint, "--out", folder + "/m.png", "--mean", "--workers", "2"],
            folder: folder,
            name: "mean-workers"
        )
        #expect(meanWithWorkers != 0 && meanErr.contains("--mean"), "\(meanErr)")
    }

    @Test("keygen keeps existing worker keys unless --force, which also drops the old key from authorized_keys")
    func keygen() throws {
        let folder = EndToEnd.folder("keygen")
        let keys = folder + "/keys"
        let (a, _, errA) = try EndToEnd.run(["keygen", keys], folder: folder, name: "first")
        #expect(a == 0, "\(errA)")
        let firstPublic = try String(contentsOfFile: keys + "/worker.pub", encoding: .utf8)
        let secret = try String(contentsOfFile: keys + "/worker.key", encoding: .utf8)
        let (b, _, errB) = try EndToEnd.run(["keygen", keys], folder: folder, name: "again")
        #expect(b != 0 && errB.contains("--force"), "\(errB)")
        #expect(try String(contentsOfFile: keys + "/worker.key", encoding: .utf8) == secret)
        let (c, _, errC) = try EndToEnd.run(["keygen", keys, "--name", "host2"], folder: folder, name: "host2")
        #expect(c == 0, "\(errC)")
        let (d, _, errD) = try EndToEnd.run(["keygen", keys, "--force"], folder: folder, name: "force")
        #expect(d == 0, "\(errD)")
        #expect(try String(contentsOfFile: keys + "/worker.key", encoding: .utf8) != secret)
        func key(_ text: String) -> String? {
            let key = text.trimmingCharacters(in: .whitespacesAndNewlines)
            return key.utf8.count == 40 ? key : nil
        }
        let old = try #require(key(firstPublic))
        let new = try #require(key(try String(contentsOfFile: keys + "/worker.pub", encoding: .utf8)))
        let host2 = try #require(key(try String(contentsOfFile: keys + "/host2.pub", encoding: .utf8)))
        let authorized = try String(contentsOfFile: keys + "/authorized_keys", encoding: .utf8)
        #expect(!authorized.contains(old), "the replaced key still gets in: \(authorized)")
        #expect(authorized.contains(new) && authorized.contains(host2))
    }

    @Test("run.sh takes --fetch anywhere and writes metrics by default (as its dry run shows)")
    func runScript() throws {
        let folder = EndToEnd.folder("run-sh")
        let (code, out) = try EndToEnd.script(
            "scripts/run.sh",
            ["--epochs", "3", "--fetch", "-q", "8", "--dry-run"],
            folder: folder,
            name: "dry"
        )
        #expect(code == 0, "\(out)")
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.contains("scripts/get-data.sh --fetch"))
        let train = try #require(lines.first { $0.contains(" train ") })
        #expect(!train.contains("--fetch") && train.contains("--epochs 3 -q 8"))
        #expect(train.contains("--checkpoint runs/made.ckpt --resume") && train.contains("--metrics runs/made.jsonl"))
        let (code2, out2) = try EndToEnd.script(
            "scripts/run.sh",
            ["--dry-run", "--metrics", "m.jsonl"],
            folder: folder,
            name: "dry2"
        )
        #expect(code2 == 0 && !out2.contains("runs/made.jsonl") && out2.contains("--metrics m.jsonl"), "\(out2)")
        #expect(!out2.contains("--fetch"))
    }

    @Test(
        "launch-local.sh without -d trains on the data run.sh uses",
        .enabled(
            if: FileManager.default.fileExists(atPath: "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
        )
    )
    func launchLocalFindsData() throws {
        let folder = EndToEnd.folder("launch-default-data")
        // The coordinator reads and fingerprints the whole data set before it writes its endpoint, which a
        // debug build on a loaded machine can take longer than the workers' default minute to do.
        let (code, out) = try EndToEnd.script(
            "cluster/launch-local.sh",
            ["1", "-q", "4", "--epochs", "0"],
            folder: folder,
            name: "launch",
            environment: ["MADE_COORDINATOR_TIMEOUT": "600"]
        )
        #expect(code == 0, "\(out)")
        #expect(out.contains("fashion-mnist") && out.contains("test_nll="), "\(out)")
    }

    /// A Python 3 with NumPy: `python3` on the PATH, else Debian's.
    static let numpyPython: String? = ["python3", "/usr/bin/python3"].first { python in
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [python, "-c", "import numpy"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return false }
        p.waitUntilExit()
        return p.terminationStatus == 0
    }

    @Test(
        """
        export: log p(x) from the safetensors file with NumPy equals made eval --per-example; import gives the model \
        back
        """,
        .enabled(if: numpyPython != nil, "needs python3 with NumPy (scripts/test.sh installs python3-numpy)")
    )
    func exportMatchesNumPy() throws {
        let folder = EndToEnd.folder("export")
        let data = try EndToEnd.writeData(to: folder)
        let checkpoint = folder + "/run.ckpt"
        let (code, out, err) = try EndToEnd.run(
            [
                "train", "-d", data, "-q", "16,12", "--epochs", "2", "--batch-size", "50", "-n", "3",
                "--checkpoint", checkpoint,
            ],
            folder: folder,
            name: "train"
        )
        #expect(code == 0, "\(err)")
        let trained = try #require(EndToEnd.checksum(out))
        func lines(_ path: String) throws -> [Double] {
            try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { try #require(Double($0)) }
        }
        // made's per-mask log-likelihoods: -s 1 is mask seed 0; -s 2 the log-mean-exp of seeds 0 and 1.
        var numpy: [[Double]] = []
        for seed in 0..<2 {
            let file = folder + "/model-\(seed).safetensors"
            let (e, eOut, eErr) = try EndToEnd.run(
                [
                    "export", "--checkpoint", checkpoint, "--format", "safetensors", "--out", file,
                    "--mask-seed", "\(seed)",
                ],
                folder: folder,
                name: "export-\(seed)"
            )
            #expect(e == 0 && eOut.contains(trained), "\(eErr)")
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = [
                Self.numpyPython!, EndToEnd.repositoryRoot.appendingPathComponent("scripts/made_logp.py").path, file,
                data,
                "--split", "test", "--out", folder + "/numpy-\(seed).txt",
            ]
            try p.run()
            p.waitUntilExit()
            #expect(p.terminationStatus == 0)
            numpy.append(try lines(folder + "/numpy-\(seed).txt"))
        }
        for k in 1...2 {
            let (e, _, eErr) = try EndToEnd.run(
                [
                    "eval", "--checkpoint", checkpoint, "-d", data, "-s", "\(k)", "--per-example",
                    folder + "/made-\(k).txt",
                ],
                folder: folder,
                name: "eval-\(k)"
            )
            #expect(e == 0, "\(eErr)")
            let made = try lines(folder + "/made-\(k).txt")
            let expected =
                k == 1
                ? numpy[0]
                : zip(numpy[0], numpy[1]).map { a, b in max(a, b) + log((exp(a - max(a, b)) + exp(b - max(a, b))) / 2) }
            #expect(made.count == 100 && expected.count == 100)
            let worst = zip(made, expected).map { abs($0 - $1) }.max() ?? .infinity
            #expect(worst < 1e-4, "-s \(k): NumPy and made differ by \(worst) nats")
        }

        // Import the seed-0 file: the same parameters, and eval gives the same figures.
        let imported = folder + "/imported.ckpt"
        let (i, iOut, iErr) = try EndToEnd.run(
            ["import", folder + "/model-0.safetensors", "--checkpoint", imported],
            folder: folder,
            name: "import"
        )
        #expect(i == 0, "\(iErr)")
        #expect(EndToEnd.checksum(iOut) == trained)
        let (e, _, eErr) = try EndToEnd.run(
            ["eval", "--checkpoint", imported, "-d", data, "--per-example", folder + "/imported.txt"],
            folder: folder,
            name: "eval-imported"
        )
        #expect(e == 0, "\(eErr)")
        #expect(
            try String(contentsOfFile: folder + "/imported.txt", encoding: .utf8)
                == String(contentsOfFile: folder + "/made-1.txt", encoding: .utf8)
        )
        let (s, _, sErr) = try EndToEnd.run(
            ["sample", "--checkpoint", imported, "--count", "4", "--out", folder + "/imported.png"],
            folder: folder,
            name: "sample-imported"
        )
        #expect(s == 0, "\(sErr)")

        // A model with direct connections has no reference state dict.
        let direct = folder + "/direct.ckpt"
        let (t, _, tErr) = try EndToEnd.run(
            ["train", "-d", data, "-q", "8", "--epochs", "1", "--direct", "--checkpoint", direct],
            folder: folder,
            name: "direct"
        )
        #expect(t == 0, "\(tErr)")
        let (x, _, xErr) = try EndToEnd.run(
            ["export", "--checkpoint", direct, "--out", folder + "/direct.safetensors"],
            folder: folder,
            name: "export-direct"
        )
        #expect(x != 0 && xErr.contains("direct"), "\(xErr)")
    }
}
