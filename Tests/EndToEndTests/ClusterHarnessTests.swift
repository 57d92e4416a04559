import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The root-only harnesses of `cluster/`: a coordinator and workers in separate network namespaces
/// over a bridge with CURVE, and `srun made launch` under a single-node Slurm. Each must end with
/// the same `params_sha256` as a single-process run and print its PASS line.
@Suite("Cluster harnesses (root)", .serialized)
struct ClusterHarnessTests {
    /// Seconds a harness may take before it is stopped (SIGTERM, so that it tears down, then SIGKILL).
    static let timeLimit: Double = 170

    static var netnsAvailable: Bool {
        EndToEnd.isRoot && EndToEnd.commandExists("ip") && FileManager.default.fileExists(atPath: "/proc/self/ns/net")
    }

    static var slurmAvailable: Bool {
        guard EndToEnd.isRoot, !processRunning("slurmctld"), !processRunning("slurmd") else { return false }
        let installed = ["slurmctld", "slurmd", "munged", "srun", "sinfo"].allSatisfy(EndToEnd.commandExists)
        return installed || EndToEnd.commandExists("apt-get")
    }

    /// Whether a process with this command name runs (the harness will not start a second Slurm).
    static func processRunning(_ name: String) -> Bool {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return false }
        return entries.contains { entry in
            guard Int(entry) != nil, let comm = try? String(contentsOfFile: "/proc/\(entry)/comm", encoding: .utf8)
            else { return false }
            return comm.trimmingCharacters(in: .whitespacesAndNewlines) == name
        }
    }

    /// Runs `cluster/<script>` with a small data set and config; returns its exit code (nil on
    /// timeout) and its output. `settings` overrides the harness's environment; `rows` and
    /// `dimension` shape the generated data.
    func runHarness(
        _ script: String,
        name: String,
        arguments: [String] = [],
        rows: Int = 2000,
        dimension: Int = 32,
        settings: [String: String] = [:]
    ) throws -> (code: Int32?, output: String) {
        let folder = EndToEnd.folder(name)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        // A small generated data set keeps the debug build well inside the time limit.
        let data = try EndToEnd.writeData(to: folder, count: rows, dimension: dimension)
        let outputPath = folder + "/harness.out"
        var environment = ProcessInfo.processInfo.environment
        environment["MADE_BIN"] = EndToEnd.executable
        environment["DATA"] = data
        environment["MADE_FLAGS"] = "-q 32 --epochs 2 --batch-size 50 --shards 4"
        environment["HARNESS_TIMEOUT"] = "120"
        environment.merge(settings) { $1 }
        let pid = try Self.spawn(
            ["/bin/bash", EndToEnd.repositoryRoot.appendingPathComponent("cluster/\(script)").path] + arguments,
            environment: environment,
            outputPath: outputPath
        )

        var code = Self.waitExit(pid, timeout: Self.timeLimit)
        if code == nil {
            // SIGTERM lets the harness tear down; then the whole process group goes.
            kill(pid, SIGTERM)
            if Self.waitExit(pid, timeout: 30) == nil {
                kill(-pid, SIGKILL)
                _ = Self.waitExit(pid, timeout: 10)
            }
            code = nil
        }
        return (code, (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
    }

    /// Starts `arguments` in its own process group, with stdin from /dev/null and stdout and stderr
    /// to `outputPath`, with no signal blocked and the usual ones at their default action. (A thread
    /// of the test runner has most signals blocked, and a child started by `Process` inherits that
    /// mask: the harness could not trap SIGTERM, nor stop the daemons it starts with it.)
    static func spawn(_ arguments: [String], environment: [String: String], outputPath: String) throws -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGHUP, SIGINT, SIGQUIT, SIGPIPE, SIGALRM, SIGTERM, SIGUSR1, SIGUSR2, SIGCHLD] {
            sigaddset(&defaults, signal)
        }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes,
            Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP)
        )

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)

        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw POSIXError(POSIXErrorCode(rawValue: result) ?? .EINVAL)
        }
        return pid
    }

    /// The exit code of `pid` (128 + signal when killed), or nil if it still runs after `timeout` seconds.
    static func waitExit(_ pid: pid_t, timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f) }
            if r < 0 && errno != EINTR { return -1 }
            if Date() >= deadline { return nil }
            usleep(100_000)
        }
    }

    @Test(
        "netns: coordinator and workers in three network namespaces, CURVE, same checksum as one process",
        .enabled(if: ClusterHarnessTests.netnsAvailable, "needs root and ip (iproute2)")
    )
    func networkNamespaces() throws {
        let (code, output) = try runHarness("netns-harness.sh", name: "netns-harness")
        #expect(code != nil, "netns-harness.sh did not finish within \(Int(Self.timeLimit)) s:\n\(output)")
        #expect(code == 0, "netns-harness.sh exited with \(code.map(String.init) ?? "timeout"):\n\(output)")
        #expect(output.split(separator: "\n").contains { $0.hasPrefix("netns: PASS") }, "no PASS line:\n\(output)")
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/made-h0"), "the namespaces were not removed")
    }

    /// Liveness by the connection: over a 2 Mbit/s uplink a 784-500-784 model's packed gradient
    /// (1.6 MB) takes about 6.4 s to cross, more than three times the 2 s heartbeat timeout of
    /// both sides. The worker must not be dropped, and the run must end with the local checksum.
    @Test(
        """
        netns: over a 2 Mbit/s uplink on which one result takes three heartbeat timeouts, steps complete, no worker \
        is lost, same checksum
        """,
        .enabled(if: ClusterHarnessTests.netnsAvailable, "needs root and ip (iproute2)"),
        .enabled(if: EndToEnd.commandExists("tc"), "needs tc (iproute2) for the tbf rate limit")
    )
    func slowLink() throws {
        let (code, output) = try runHarness(
            "netns-harness.sh",
            name: "netns-slow",
            arguments: ["2"],
            rows: 200,
            dimension: 784,
            settings: [
                "UPLINK_RATE": "2mbit", "WORKER_EXTRA": "--heartbeat-timeout 2",
                "MADE_FLAGS": "-q 500 --epochs 1 --batch-size 100 --shards 1 --heartbeat-timeout 2",
            ]
        )
        #expect(code != nil, "netns-harness.sh did not finish within \(Int(Self.timeLimit)) s:\n\(output)")
        #expect(code == 0, "netns-harness.sh exited with \(code.map(String.init) ?? "timeout"):\n\(output)")
        let pass = output.split(separator: "\n").first { $0.hasPrefix("netns: PASS") }
        #expect(pass?.contains("up 2mbit") == true, "no PASS line over the slow link:\n\(output)")
        #expect(pass?.contains("workers_lost=0") == true, "a worker was dropped:\n\(output)")
    }

    /// The relay's upstream connection is a worker's: over the same 2 Mbit/s uplink its answer (the
    /// packed sum of its two workers' shards, 1.6 MB) takes three of its 2 s heartbeat timeouts to
    /// cross, and the relay must not be dropped.
    @Test(
        """
        netns: a relay of 2 workers over a 2 Mbit/s uplink on which its answer takes three heartbeat timeouts: \
        not dropped, same checksum
        """,
        .enabled(if: ClusterHarnessTests.netnsAvailable, "needs root and ip (iproute2)"),
        .enabled(if: EndToEnd.commandExists("tc"), "needs tc (iproute2) for the tbf rate limit")
    )
    func slowLinkRelay() throws {
        let (code, output) = try runHarness(
            "netns-harness.sh",
            name: "netns-slow-relay",
            arguments: ["2"],
            rows: 200,
            dimension: 784,
            settings: [
                "UPLINK_RATE": "2mbit", "WORKER_EXTRA": "--heartbeat-timeout 2", "RELAY_WORKERS": "2",
                "MADE_FLAGS": "-q 500 --epochs 1 --batch-size 100 --shards 2 --heartbeat-timeout 2",
            ]
        )
        #expect(code != nil, "netns-harness.sh did not finish within \(Int(Self.timeLimit)) s:\n\(output)")
        #expect(code == 0, "netns-harness.sh exited with \(code.map(String.init) ?? "timeout"):\n\(output)")
        let pass = output.split(separator: "\n").first { $0.hasPrefix("netns: PASS") }
        #expect(
            pass?.contains("a relay of 2 workers, worker links up 2mbit") == true,
            "no PASS line through a relay:\n\(output)"
        )
        #expect(pass?.contains("workers_joined=1 workers_lost=0") == true, "the relay was dropped:\n\(output)")
    }

    @Test(
        "slurm: srun -n 3 made launch under a single-node Slurm, same checksum as one process",
        .enabled(
            if: ClusterHarnessTests.slurmAvailable,
            "needs root and Slurm (or apt-get to install it), and no Slurm daemons running"
        )
    )
    func slurm() throws {
        let (code, output) = try runHarness("slurm-harness.sh", name: "slurm-harness")
        #expect(code != nil, "slurm-harness.sh did not finish within \(Int(Self.timeLimit)) s:\n\(output)")
        #expect(code == 0, "slurm-harness.sh exited with \(code.map(String.init) ?? "timeout"):\n\(output)")
        #expect(output.split(separator: "\n").contains { $0.hasPrefix("slurm: PASS") }, "no PASS line:\n\(output)")
        #expect(!Self.processRunning("slurmctld") && !Self.processRunning("slurmd"), "Slurm daemons were left running")
    }
}
