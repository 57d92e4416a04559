import Foundation
import Testing

/// The launchers of `cluster/` that need neither root nor other hosts: the local one for real,
/// the ssh one as the commands it would run.
@Suite("Cluster launchers", .serialized)
struct LauncherTests {
    /// Runs `cluster/<script> arguments` with MADE_BIN set; returns its exit code and output.
    func launch(_ script: String, _ arguments: [String], environment extra: [String: String] = [:], folder: String) throws -> (Int32, String) {
        try EndToEnd.script("cluster/\(script)", arguments, folder: folder, name: script, environment: extra)
    }

    @Test("launch-local.sh: a coordinator and two worker processes, the single-process checksum, both workers busy")
    func local() throws {
        let folder = EndToEnd.folder("launch-local")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try ClusterProcessTests.reference(folder, data: data)
        let logs = folder + "/logs"
        let (code, output) = try launch("launch-local.sh", ["2"] + ClusterProcessTests.runFlags(data: data),
                                        environment: ["MADE_LOG_DIR": logs], folder: folder)
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

    @Test("launch-ssh.sh --dry-run: one shard and one awaited worker per host slot, workers dial the advertised endpoint")
    func sshDryRun() throws {
        let folder = EndToEnd.folder("launch-ssh")
        let hosts = folder + "/hosts"
        try "# two hosts\nnode-a 2\nnode-b slots=1\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let (code, output) = try launch("launch-ssh.sh", [hosts, "--dry-run", "-d", "/data/x.npz", "--insecure", "--epochs", "1"],
                                        environment: ["MADE_ADVERTISE": "head", "MADE_PORT": "29511"], folder: folder)
        #expect(code == 0, "\(output)")
        let lines = output.split(separator: "\n").map(String.init)
        let coordinator = try #require(lines.first { $0.contains(" coordinator ") })
        #expect(coordinator.contains("--bind tcp://0.0.0.0:29511") && coordinator.contains("--advertise-host head"))
        #expect(coordinator.contains("--shards 3") && coordinator.contains("--wait-for-workers 3"))
        let workers = lines.filter { $0.contains(" worker ") }
        #expect(workers.count == 3)
        #expect(workers.allSatisfy { $0.contains("--connect tcp://head:29511") && $0.contains("-d /data/x.npz") })
        #expect(workers.filter { $0.hasPrefix("ssh -tt node-a ") }.count == 2 && workers.filter { $0.hasPrefix("ssh -tt node-b ") }.count == 1)
        // Flags that name the shards or the awaited workers are left as given.
        let (givenCode, given) = try launch("launch-ssh.sh", [hosts, "--dry-run", "-d", "/data/x.npz", "--insecure", "--shards", "8", "--wait-for-workers", "1"],
                                    folder: folder)
        #expect(givenCode == 0, "\(given)")
        let line = try #require(given.split(separator: "\n").first { $0.contains(" coordinator ") })
        #expect(!line.contains("--shards 3") && !line.contains("--wait-for-workers 3"))
        #expect(line.contains("--shards 8") && line.contains("--wait-for-workers 1"))
    }
}
