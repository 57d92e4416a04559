import Foundation
import Testing

@testable import MADECluster

#if canImport(Glibc)
import Glibc
#endif

@Suite("Cluster environment")
struct ClusterEnvironmentTests {
    @Test("Slurm node lists expand")
    func nodeLists() throws {
        #expect(try SlurmNodeList.expand("node[01-03,7],gpu5") == ["node01", "node02", "node03", "node7", "gpu5"])
        #expect(try SlurmNodeList.expand("localhost") == ["localhost"])
        #expect(try SlurmNodeList.expand("a[1-2]-b[3-4]") == ["a1-b3", "a1-b4", "a2-b3", "a2-b4"])
        #expect(throws: ClusterError.self) { try SlurmNodeList.expand("node[01-") }
        #expect(throws: ClusterError.self) { try SlurmNodeList.expand("node[5-2]") }
        // Sizes are bounded: no list of billions of hosts is built.
        #expect(throws: ClusterError.self) { try SlurmNodeList.expand("n[0-99998]x[0-99998]") }
    }

    @Test("MASTER_ADDR, RANK and WORLD_SIZE")
    func torchStyle() throws {
        let e = try #require(
            try ClusterEnvironment.detect([
                "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "6000", "RANK": "2", "WORLD_SIZE": "3",
            ])
        )
        #expect(e.rank == 2 && e.worldSize == 3 && !e.isCoordinator)
        #expect(e.connectEndpoint == "tcp://10.0.0.1:6000")
        #expect(e.bindEndpoint == "tcp://*:6000")
        #expect(throws: ClusterError.self) { try ClusterEnvironment.detect(["RANK": "0", "WORLD_SIZE": "2"]) }
        #expect(throws: ClusterError.self) {
            try ClusterEnvironment.detect(["MASTER_ADDR": "h", "RANK": "3", "WORLD_SIZE": "3"])
        }
        #expect(throws: ClusterError.self) {
            try ClusterEnvironment.detect(["MASTER_ADDR": "h", "RANK": "x", "WORLD_SIZE": "3"])
        }
        #expect(throws: ClusterError.self) {
            try ClusterEnvironment.detect(["MASTER_ADDR": "h", "RANK": "1", "WORLD_SIZE": "9223372036854775807"])
        }
        #expect(try ClusterEnvironment.detect([:]) == nil)
    }

    @Test("Slurm variables")
    func slurm() throws {
        let e = try #require(
            try ClusterEnvironment.detect(["SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "cn[07-08]"])
        )
        #expect(e.isCoordinator && e.worldSize == 4)
        #expect(e.connectEndpoint == "tcp://cn07:\(ClusterEnvironment.defaultPort)")
        let single = try #require(
            try ClusterEnvironment.detect([
                "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "x", "MASTER_PORT": "7000",
            ])
        )
        #expect(single.connectEndpoint == "tcp://x:7000")
        #expect(throws: ClusterError.self) {
            try ClusterEnvironment.detect(["SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "x"])
        }
    }

    @Test("endpoints")
    func endpoints() {
        #expect(Endpoint.isLocal("tcp://127.0.0.1:5555"))
        #expect(Endpoint.isLocal("tcp://localhost:0"))
        #expect(Endpoint.isLocal("ipc:///tmp/x"))
        #expect(!Endpoint.isLocal("tcp://*:5555"))
        #expect(!Endpoint.isLocal("tcp://10.1.2.3:5555"))
        #expect(Endpoint.isLocal("tcp://[::1]:5555"))
        #expect(Endpoint.zeroMQSpelling("tcp://127.0.0.1:0") == "tcp://127.0.0.1:*")
        #expect(Endpoint.zeroMQSpelling("tcp://127.0.0.1:5000") == "tcp://127.0.0.1:5000")
        #expect(Endpoint.tcpHost("tcp://[fe80::1]:9") == "fe80::1")
    }
}

@Suite("Launch roles")
struct LaunchRoleTests {
    @Test("under srun, a host's first task starts a relay (not on the coordinator's host); the others work behind it")
    func slurmRoles() throws {
        func role(_ procid: Int, node: Int, local: Int, relays: Bool = true) throws -> ClusterEnvironment.LaunchRole {
            let e = try #require(
                try ClusterEnvironment.detect([
                    "SLURM_PROCID": "\(procid)", "SLURM_NTASKS": "6", "SLURM_JOB_NODELIST": "cn[1-3]",
                    "SLURM_NODEID": "\(node)",
                    "SLURM_LOCALID": "\(local)", "SLURM_JOB_ID": "4711", "MASTER_PORT": "24711",
                ])
            )
            return e.launchRole(relays: relays)
        }
        #expect(try role(0, node: 0, local: 0) == .coordinator)
        #expect(try role(1, node: 0, local: 1) == .worker)  // beside the coordinator: shared memory with it
        #expect(try role(2, node: 1, local: 0) == .relayAndWorker(relayTag: "relay-4711-24711"))
        #expect(try role(3, node: 1, local: 1) == .workerBehindRelay(relayTag: "relay-4711-24711"))
        #expect(try role(3, node: 1, local: 1, relays: false) == .worker)
    }

    @Test("without the host's place in the environment, every process but rank 0 dials the coordinator")
    func unknownPlace() throws {
        let e = try #require(try ClusterEnvironment.detect(["MASTER_ADDR": "h", "RANK": "3", "WORLD_SIZE": "4"]))
        #expect(e.launchRole(relays: true) == .worker)
        let placed = try #require(
            try ClusterEnvironment.detect([
                "MASTER_ADDR": "h", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "0",
                "GROUP_RANK": "1", "TORCHELASTIC_RUN_ID": "x/../y",
            ])
        )
        #expect(placed.launchRole(relays: true) == .relayAndWorker(relayTag: "relay-xy-29500"))
    }

    @Test("a relay's shared socket lies in a folder no other user may enter; a planted folder is refused")
    func privateFolders() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("made-private-\(getpid())").path
        try? FileManager.default.removeItem(atPath: base)
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let endpoint = try PrivateEndpoint.shared(tag: "relay-1-2", temporaryFolder: base)
        #expect(endpoint == "ipc://\(base)/made-\(getuid())/relay-1-2.ipc")
        #expect(try PrivateEndpoint.shared(tag: "relay-1-2", temporaryFolder: base) == endpoint)
        chmod("\(base)/made-\(getuid())", 0o755)
        #expect(throws: ClusterError.self) { try PrivateEndpoint.shared(tag: "relay-1-2", temporaryFolder: base) }
        try FileManager.default.removeItem(atPath: "\(base)/made-\(getuid())")
        try FileManager.default.createSymbolicLink(atPath: "\(base)/made-\(getuid())", withDestinationPath: "/tmp")
        #expect(throws: ClusterError.self) { try PrivateEndpoint.shared(tag: "relay-1-2", temporaryFolder: base) }
        #expect(throws: ClusterError.self) { try PrivateEndpoint.shared(tag: "../x", temporaryFolder: base) }
        let (fresh, folder) = try PrivateEndpoint.fresh(temporaryFolder: base)
        #expect(fresh == "ipc://\(folder)/relay.ipc")
    }
}
