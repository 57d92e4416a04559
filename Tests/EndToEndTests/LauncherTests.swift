import Foundation
import Testing

/// The launchers of `cluster/` that need neither root nor other hosts: the local one for real,
/// the ssh one as the commands it would run.
@Suite("Cluster launchers", .serialized)
struct LauncherTests {
    /// Runs `cluster/<script> arguments` with MADE_BIN set; returns its exit code and output.
    func launch(
        _ script: String,
        _ arguments: [String],
        environment extra: [String: String] = [:],
        folder: String
    ) throws -> (Int32, String) {
        try EndToEnd.script("cluster/\(script)", arguments, folder: folder, name: script, environment: extra)
    }

    @Test("launch-local.sh: a coordinator and two worker processes, the single-process checksum, both workers busy")
    func local() throws {
        let folder = EndToEnd.folder("launch-local")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try ClusterProcessTests.reference(folder, data: data)
        let logs = folder + "/logs"
        let (code, output) = try launch(
            "launch-local.sh",
            ["2"] + ClusterProcessTests.runFlags(data: data),
            environment: ["MADE_LOG_DIR": logs],
            folder: folder
        )
        #expect(code == 0, "\(output)")
        #expect(EndToEnd.checksum(output) == expected)
        for i in 0..<2 {
            let log = (try? String(contentsOfFile: logs + "/worker-\(i).log", encoding: .utf8)) ?? ""
            #expect(EndToEnd.computedTasks(log), "worker \(i): \(log)")
        }
        // A bad worker count is refused before anything starts.
        let (badCode, badOutput) = try launch("launch-local.sh", ["zero", "-d", data], folder: folder)
        #expect(badCode == 2 && badOutput.contains("positive number of workers"))
    }

    @Test(
        "launch-ssh.sh --dry-run: a shard and an awaited worker per slot, a relay per host of slots; all dial the head"
    )
    func sshDryRun() throws {
        let folder = EndToEnd.folder("launch-ssh")
        let hosts = folder + "/hosts"
        try "# two hosts\nnode-a 2\nnode-b slots=1\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let (code, output) = try launch(
            "launch-ssh.sh",
            [hosts, "--dry-run", "-d", "/data/x.npz", "--insecure", "--epochs", "1"],
            environment: ["MADE_ADVERTISE": "head", "MADE_PORT": "29511"],
            folder: folder
        )
        #expect(code == 0, "\(output)")
        let lines = output.split(separator: "\n").map(String.init)
        let coordinator = try #require(lines.first { $0.contains(" coordinator ") })
        #expect(coordinator.contains("--bind tcp://0.0.0.0:29511") && coordinator.contains("--advertise-host head"))
        #expect(coordinator.contains("--shards 3") && coordinator.contains("--wait-for-workers 3"))
        // node-a's two workers run behind one relay; node-b's one worker dials the coordinator itself.
        let remote = lines.filter { $0.hasPrefix("ssh -tt ") }
        #expect(remote.count == 2)
        #expect(remote.allSatisfy { $0.contains("--connect tcp://head:29511") && $0.contains("-d /data/x.npz") })
        #expect(
            remote.filter { $0.hasPrefix("ssh -tt node-a ") && $0.contains(" relay ") && $0.contains("--workers 2") }
                .count == 1
        )
        #expect(remote.filter { $0.hasPrefix("ssh -tt node-b ") && $0.contains(" worker ") }.count == 1)
        // Without relays (--no-relay, or MADE_RELAY=0) every worker dials the coordinator.
        for (flags, environment) in [(["--no-relay"], [:]), ([], ["MADE_RELAY": "0"])] as [([String], [String: String])]
        {
            let (plainCode, plain) = try launch(
                "launch-ssh.sh",
                [hosts, "--dry-run", "-d", "/data/x.npz", "--insecure"] + flags,
                environment: environment.merging(["MADE_ADVERTISE": "head"]) { $1 },
                folder: folder
            )
            #expect(plainCode == 0, "\(plain)")
            let workers = plain.split(separator: "\n").filter { $0.hasPrefix("ssh -tt ") }
            #expect(workers.count == 3 && workers.allSatisfy { $0.contains(" worker ") && !$0.contains(" relay ") })
            #expect(workers.filter { $0.hasPrefix("ssh -tt node-a ") }.count == 2)
            #expect(plain.contains("--shards 3") && plain.contains("--wait-for-workers 3"))
        }
        // Flags that name the shards or the awaited workers are left as given.
        let (givenCode, given) = try launch(
            "launch-ssh.sh",
            [hosts, "--dry-run", "-d", "/data/x.npz", "--insecure", "--shards", "8", "--wait-for-workers", "1"],
            folder: folder
        )
        #expect(givenCode == 0, "\(given)")
        let line = try #require(given.split(separator: "\n").first { $0.contains(" coordinator ") })
        #expect(!line.contains("--shards 3") && !line.contains("--wait-for-workers 3"))
        #expect(line.contains("--shards 8") && line.contains("--wait-for-workers 1"))
    }

    @Test("launch-ssh.sh through an ssh that runs here: a host of two slots gets a relay; the single-process checksum")
    func sshThroughRelay() throws {
        let folder = EndToEnd.folder("launch-ssh-relay")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try ClusterProcessTests.reference(folder, data: data)
        let hosts = folder + "/hosts"
        try "localhost 2\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        // `ssh -tt HOST COMMAND` run here: the command is one string, as a remote shell gets it.
        let ssh = folder + "/ssh-here"
        try "#!/bin/bash\nshift 2\nexec bash -c \"$1\"\n".write(toFile: ssh, atomically: true, encoding: .utf8)
        chmod(ssh, 0o755)
        let logs = folder + "/logs"
        let (code, output) = try launch(
            "launch-ssh.sh",
            [hosts, "--insecure", "-v"] + ClusterProcessTests.runFlags(data: data),
            environment: ["MADE_SSH": ssh, "MADE_ADVERTISE": "127.0.0.1", "MADE_PORT": "0", "MADE_LOG_DIR": logs],
            folder: folder
        )
        #expect(code == 0, "\(output)")
        #expect(EndToEnd.checksum(output) == expected)
        #expect(EndToEnd.clusterCounters(output)["workers_joined"] == 1, "one peer: the relay")
        let log = (try? String(contentsOfFile: logs + "/localhost-0.log", encoding: .utf8)) ?? ""
        let done = log.split(separator: "\n").filter { $0.contains("worker done") }
        #expect(
            done.count == 3 && done.allSatisfy { EndToEnd.computedTasks(String($0)) },
            "the relay and its two workers: \(log)"
        )
    }
}
