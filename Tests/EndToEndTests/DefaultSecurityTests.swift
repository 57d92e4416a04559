import Foundation
import Logging
import MADE
import MADECluster
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A default local run (`made train --workers N`, no key folder) is authenticated, and a run whose
/// local workers cannot start ends with their reasons.
@Suite("Default local runs", .serialized)
struct DefaultSecurityTests {
    @Test(
        """
        a process that connects to a default `train --workers 2` run without its keys gets nothing accepted; the keys \
        are not on any command line
        """
    )
    func strangersGetNothing() throws {
        let folder = EndToEnd.folder("default-keys")
        let data = try EndToEnd.writeData(to: folder)
        let expected = try ClusterProcessTests.reference(folder, data: data, epochs: 300)
        let endpointFile = folder + "/endpoint"
        let coordinator = try EndToEnd.Child(
            ["train", "--workers", "2", "--endpoint-file", endpointFile]
                + ClusterProcessTests.runFlags(data: data, epochs: 300),
            folder: folder,
            name: "train"
        )
        #expect(
            coordinator.waitFor(timeout: 60) { $0.contains("epoch 1/300") },
            "training did not get going: \(coordinator.errors)"
        )
        let endpoint = try String(contentsOfFile: endpointFile, encoding: .utf8).trimmingCharacters(
            in: .whitespacesAndNewlines
        )

        // The local workers got their keys on standard input, not as arguments.
        let pgrep = Process()
        let found = Pipe()
        pgrep.executableURL = URL(fileURLWithPath: "/usr/bin/pgrep")
        pgrep.arguments = ["-f", "--", "parent-pid \(coordinator.pid)"]
        pgrep.standardOutput = found
        try pgrep.run()
        pgrep.waitUntilExit()
        let pids = String(decoding: found.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(
            separator: "\n"
        )
        #expect(pids.count == 2)
        for pid in pids {
            let arguments =
                (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8))?.split(separator: "\0").map(
                    String.init
                ) ?? []
            #expect(arguments.contains("--keys-on-stdin"), "\(arguments)")
            #expect(!arguments.contains("--keys"), "\(arguments)")
            #expect(arguments.contains("--threads"), "every local worker is told its BLAS threads: \(arguments)")
        }

        // A would-be worker with the right data over plain TCP, and one with CURVE but keys of its own.
        let dataset = try DatasetLoader.load(path: data)
        let hello = WireFormat.encode(
            .hello(.init(dataFingerprint: DataFingerprint.bytes(of: dataset), processID: 1, name: "intruder")),
            runID: 0
        )
        let context = try ZMQContext()
        defer { context.shutdown() }
        let plain = try ZMQSocket(context: context, kind: .dealer)
        try plain.connect(endpoint)
        let guesser = try ZMQSocket(context: context, kind: .dealer)
        try guesser.configureCurveClient(
            keyPair: try CurveKeyPair.generate(),
            serverPublicKey: try CurveKeyPair.generate().publicKey
        )
        try guesser.connect(endpoint)
        var answers = 0
        for _ in 0..<10 {
            for socket in [plain, guesser] { _ = try? socket.send(bytes: [hello], dontWait: true) }
            _ = try ZMQSocket.poll([.socket(plain), .socket(guesser)], timeoutMilliseconds: 200)
            for socket in [plain, guesser] {
                while try socket.receiveMessage(maxParts: 2, dontWait: true) != nil { answers += 1 }
            }
        }
        #expect(answers == 0, "a stranger heard from the coordinator")

        #expect(coordinator.wait(timeout: 300) == 0, "\(coordinator.errors)")
        #expect(EndToEnd.checksum(coordinator.output) == expected)
        let counters = EndToEnd.clusterCounters(coordinator.output)
        #expect(counters["workers_joined"] == 2)
        #expect(counters["refused_workers"] == 0 && counters["unknown_peer"] == 0 && counters["malformed"] == 0)
        plain.close()
        guesser.close()
    }

    @Test("when every local worker exits at start, the session gives up at once with their exit reasons")
    func localWorkersDieAtStart() throws {
        var options = ClusterSession.Options(coordinator: .init(bind: "tcp://127.0.0.1:0"))
        options.coordinator.sharedMemory = false
        options.localWorkers = 2
        options.awaitedWorkers = 2
        options.joinTimeout = 600_000  // far beyond: only the workers' exits end the wait
        options.executable = "/bin/false"
        let model = ModelConfiguration(inputCount: 4, hiddenSizes: [3])
        let session = try ClusterSession(
            configuration: TrainingConfiguration(model: model),
            dataFingerprint: nil,
            options: options,
            logger: Logger(label: "test")
        )
        #expect(session.usesEphemeralKeys)
        let error = try #require(throws: ClusterError.self) { try session.awaitWorkers() }
        #expect(error.code == .noWorkers)
        #expect(error.message.contains("local-0 (pid"), "\(error)")
        #expect(error.message.contains("exited with status 1"), "\(error)")
        #expect(session.workerExits.map(\.status) == [1, 1])
        #expect(session.finish(exitCode: 1, reason: "test").count == 2)
    }
}
