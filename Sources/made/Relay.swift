import ArgumentParser
import Foundation
import Logging
import MADE
import MADECluster

struct Relay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Stand for this host's workers at a coordinator: take a block of each step's shards, share the parameters "
            + "with the workers here through shared memory, and answer once with the sum of their gradients.",
        usage: "made relay -d <path> [--connect <endpoint> | --endpoint-file <file>] --workers <n> [<options>]",
        discussion: """
            The coordinator sees one peer per host: it sends the step's parameters once and gets one \
            gradient back, so its traffic grows with hosts, not workers, and the result is bit-identical. \
            With --workers N the relay starts N workers itself (they exit with it); workers started apart \
            dial --listen. When the relay dies its block goes to another peer; when one of its workers \
            dies, its shards go to the others here. --heartbeat-timeout holds for both of its connections: \
            to the coordinator and to each of its workers.
            """
    )

    @OptionGroup var data: DataArguments<WorkerData>
    @OptionGroup var worker: WorkerArguments
    @Option(parsing: .unconditional, help: "Worker processes to start on this host; they dial this relay.")
    var workers: Int = 0
    @Option(
        help: ArgumentHelp(
            "Endpoint this host's workers dial, on this host (ipc:// or loopback). "
                + "(default: an ipc socket in a new folder only this user can enter)"
        )
    )
    var listen: String?
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Seconds after which a shard one of this host's workers holds is taken back and given to the first "
                + "idle one."
        )
    )
    var taskTimeout: Double = 60
    @OptionGroup var runtime: RuntimeArguments

    func validate() throws {
        if data.dataPath == nil && !worker.noData {
            throw ValidationError("give the data with -d/--data-path (or --no-data for sampling only)")
        }
        try checkRange("--workers", workers, 0...ClusterArguments.maxWorkers)
        if let problem = TimeoutRange.problem("--task-timeout", seconds: taskTimeout) { throw ValidationError(problem) }
        if let listen {
            do { try Endpoint.validate(listen) } catch { throw ValidationError("--listen \(error)") }
            guard Endpoint.isLocal(listen) else {
                throw ValidationError("--listen must stay on this host (ipc:// or loopback), not \(listen)")
            }
        }
        if listen == nil && workers == 0 {
            throw ValidationError(
                "give --workers N to start this host's workers, or --listen ENDPOINT for workers started apart"
            )
        }
    }

    func run() throws {
        let logger = CommandLineSupport.bootstrap(label: "made.relay", verbose: runtime.verbose)
        let environment = try ClusterEnvironment.detect(ProcessInfo.processInfo.environment)
        // No way to find the coordinator: said before anything is loaded.
        if worker.connect == nil, worker.endpointFile == nil, environment == nil {
            _ = try worker.endpoint(environment: nil)
        }
        // The relay reads no rows itself: the data is loaded for its fingerprint only.
        let fingerprint = DataFingerprint.bytes(of: try worker.dataset(data))
        var options = try worker.workerOptions(environment: environment)
        // Parameters come packed and the block's sum goes back packed, whatever the host.
        options.sharedMemory = false
        var folder: String?
        let endpoint: String
        if let listen {
            endpoint = listen
        } else {
            (endpoint, folder) = try PrivateEndpoint.fresh()
        }
        defer { if let folder { try? FileManager.default.removeItem(atPath: folder) } }
        var local = ClusterCoordinator.Options(bind: endpoint)
        local.sharedMemory = !worker.noSharedMemory
        // One heartbeat timeout for both of the relay's connections: to the coordinator and to each
        // of this host's workers.
        local.heartbeatTimeout = options.heartbeatTimeout
        local.heartbeatInterval = options.heartbeatInterval
        local.taskTimeout = TimeoutRange.milliseconds(taskTimeout)
        // Without workers a relay is given no task; the coordinator's own idle timeout applies.
        local.idleTimeout = TimeoutRange.milliseconds(TimeoutRange.maxSeconds)
        var relayOptions = RelayComputer.Options(coordinator: local)
        relayOptions.localWorkers = workers
        var forwarded = worker.noData ? ["--no-data"] : data.forwarded
        if worker.singleSplit { forwarded.append("--single-split") }
        if worker.noSharedMemory { forwarded.append("--no-shared-memory") }
        relayOptions.workerArguments =
            forwarded + ["--coordinator-timeout", "\(worker.coordinatorTimeout)"]
            + (runtime.verbose ? ["--verbose"] : [])
        relayOptions.workerThreads = runtime.threads
        relayOptions.namePrefix = options.name
        let computer = RelayComputer(dataFingerprint: fingerprint, options: relayOptions, logger: logger)
        computer.shouldStop = { SignalFlag.isSet }
        try worker.run(computer: computer, options: options, logger: logger)
    }
}
