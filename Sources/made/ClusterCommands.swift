import ArgumentParser
import Foundation
import Logging
import MADE
import MADECluster

struct Coordinator: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Coordinate a data-parallel run: listen for workers, hand out shards, apply Adam, checkpoint.",
        usage: "made coordinator -d <path> --bind <endpoint> [--shards <n>] [<options>]"
    )

    @OptionGroup var data: DataArguments<TrainingData>
    @OptionGroup var training: TrainingArguments
    @OptionGroup var cluster: ClusterArguments
    @OptionGroup var runtime: RuntimeArguments

    func validate() throws {
        _ = try data.path()
        if cluster.bind == nil && ProcessInfo.processInfo.environment["MASTER_PORT"] == nil {
            throw ValidationError(
                """
                give --bind ENDPOINT (e.g. tcp://0.0.0.0:29500, or tcp://127.0.0.1:0 with --endpoint-file) or set \
                MASTER_PORT
                """
            )
        }
    }

    func run() throws {
        let bind = cluster.bind ?? "tcp://*:\(ProcessInfo.processInfo.environment["MASTER_PORT"]!)"
        try TrainingJob(
            data: data,
            training: training,
            cluster: cluster,
            runtime: runtime,
            role: .coordinator(bind: bind)
        ).run()
    }
}

/// How a worker finds and trusts its coordinator.
struct WorkerArguments: ParsableArguments {
    @Option(
        help: "The coordinator's endpoint, e.g. tcp://10.0.0.1:29500. (default: from MASTER_ADDR/MASTER_PORT or Slurm)"
    )
    var connect: String?
    @Option(help: "Read the coordinator's endpoint from this file (waiting for it to appear).")
    var endpointFile: String?
    @Option(help: "A name for logs. (default: host:pid)")
    var name: String?
    @Option(help: "CURVE key folder made by `made keygen`: this worker's key and coordinator.pub.")
    var keys: String?
    @Option(help: "Which key pair of the folder this worker uses.")
    var keyName: String = "worker"
    @Flag(
        help:
            """
            Read the coordinator's public key and this worker's secret key from standard input (how `made train \
            --workers N` hands its workers the run's keys).
            """
    )
    var keysOnStdin = false
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Seconds the connection to the coordinator may stay down (or, before it answers, hellos "
                + "unanswered) before giving up (exit code 4)."
        )
    )
    var coordinatorTimeout: Double = 60
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Seconds the connection to the coordinator may carry nothing (libzmq's heartbeats) before it is "
                + "dropped and dialled again."
        )
    )
    var heartbeatTimeout: Double = 10
    @Option(help: .private)
    var parentPid: Int32?  // internal: exit when this process (the launcher) is gone
    @Flag(help: "The data file holds one split (one .amat or IDX file), scored whole: for evaluation jobs.")
    var singleSplit = false
    @Flag(help: "Hold no data: serve sampling jobs only.")
    var noData = false
    @Flag(help: "Decline shared memory from a coordinator on this host.")
    var noSharedMemory = false

    func validate() throws {
        for (name, value) in [("--coordinator-timeout", coordinatorTimeout), ("--heartbeat-timeout", heartbeatTimeout)]
        {
            if let problem = TimeoutRange.problem(name, seconds: value) { throw ValidationError(problem) }
        }
        if keysOnStdin && keys != nil { throw ValidationError("--keys and --keys-on-stdin exclude each other") }
        if let name, name.isEmpty || name.utf8.count > 200 { throw ValidationError("--name must hold 1 to 200 bytes") }
        if noData && singleSplit { throw ValidationError("--no-data and --single-split exclude each other") }
        if let connect {
            do { try Endpoint.validate(connect) } catch { throw ValidationError("--connect \(error)") }
        }
    }

    func endpoint(environment: ClusterEnvironment?) throws -> String {
        if let connect { return connect }
        if let endpointFile {
            let deadline = Date().addingTimeInterval(coordinatorTimeout)
            while Date() < deadline {
                if let text = try? String(contentsOfFile: endpointFile, encoding: .utf8),
                    case let line = text.trimmingCharacters(in: .whitespacesAndNewlines), !line.isEmpty
                {
                    return line
                }
                usleep(100_000)
            }
            throw CommandFailure("\(endpointFile): no endpoint appeared within \(Int(coordinatorTimeout)) s")
        }
        if let environment { return environment.connectEndpoint }
        throw ValidationError(
            "give --connect ENDPOINT or --endpoint-file FILE, or set MASTER_ADDR/MASTER_PORT (or run under srun)"
        )
    }

    func run<Role>(data: DataArguments<Role>, runtime: RuntimeArguments, environment: ClusterEnvironment?) throws {
        let logger = CommandLineSupport.bootstrap(label: "made.worker", verbose: runtime.verbose)
        BLAS.setThreads(runtime.threads)
        // No way to find the coordinator: said before anything is loaded.
        if connect == nil, endpointFile == nil, environment == nil { _ = try endpoint(environment: nil) }
        let computer = ShardComputer(dataset: try dataset(data))
        // Waited for once the data is in: a coordinator started alongside loads its own data
        // before it writes its endpoint, and --coordinator-timeout is the time spent waiting.
        let options = try workerOptions(environment: environment)
        try run(computer: computer, options: options, logger: logger)
    }

    /// The data set these flags name: none, one split, or the whole file.
    func dataset<Role>(_ data: DataArguments<Role>) throws -> Dataset {
        if noData { return Dataset(train: nil, valid: nil, test: nil, source: "no data") }
        let path = try data.path()
        if singleSplit {
            return Dataset(
                train: nil,
                valid: nil,
                test: try DatasetLoader.loadSplit(path: path, split: nil, options: data.options),
                source: path
            )
        }
        return try DatasetLoader.load(path: path, options: data.options)
    }

    /// How the worker loop finds and trusts its coordinator, from these flags and the environment.
    func workerOptions(environment: ClusterEnvironment?) throws -> ClusterWorker.Options {
        let endpoint = try endpoint(environment: environment)
        var options = ClusterWorker.Options(
            connect: endpoint,
            name: name ?? "\(ProcessInfo.processInfo.hostName):\(getpid())"
        )
        if let keys { options.security = try ClusterSecurity.Client.load(folder: keys, name: keyName) }
        if keysOnStdin {
            let text = String(decoding: FileHandle.standardInput.readDataToEndOfFile().prefix(4096), as: UTF8.self)
            options.security = try ClusterSecurity.Client.parse(stdinText: text)
        }
        options.coordinatorTimeout = TimeoutRange.milliseconds(coordinatorTimeout)
        options.heartbeatTimeout = TimeoutRange.milliseconds(heartbeatTimeout)
        options.heartbeatInterval = CoordinatorStateMachine.Settings.heartbeatInterval(
            wanted: 1000,
            timeout: options.heartbeatTimeout
        )
        options.parentProcess = parentPid
        options.sharedMemory = !noSharedMemory
        return options
    }

    /// Runs the worker loop around `computer` until the coordinator ends the run; a non-zero
    /// exit code leaves as the process's.
    func run(computer: any TaskComputer, options: ClusterWorker.Options, logger: Logger) throws {
        let worker = ClusterWorker(computer: computer, options: options, logger: logger)
        SignalFlag.install()
        worker.shouldStop = { SignalFlag.isSet }
        let code = try worker.run()
        if code != 0 { throw ExitCode(code) }
    }
}

struct Worker: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compute gradient shards for a coordinator until it ends the run.",
        usage: "made worker (-d <path> | --no-data) [--connect <endpoint> | --endpoint-file <file>] [<options>]"
    )

    @OptionGroup var data: DataArguments<WorkerData>
    @OptionGroup var worker: WorkerArguments
    @OptionGroup var runtime: RuntimeArguments

    func validate() throws {
        if data.dataPath == nil && !worker.noData {
            throw ValidationError("give the data with -d/--data-path (or --no-data for a sampling-only worker)")
        }
    }

    func run() throws {
        try worker.run(
            data: data,
            runtime: runtime,
            environment: try ClusterEnvironment.detect(ProcessInfo.processInfo.environment)
        )
    }
}

struct Launch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            """
            Be the coordinator or a worker according to RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS (rank 0 \
            coordinates); for srun and similar launchers.
            """,
        usage: "made launch -d <path> [<options>]"
    )

    @OptionGroup var data: DataArguments<TrainingData>
    @OptionGroup var training: TrainingArguments
    @OptionGroup var cluster: ClusterArguments
    @OptionGroup var runtime: RuntimeArguments
    @Option(
        parsing: .unconditional,
        help: "Workers: seconds the connection to the coordinator may stay down before giving up."
    )
    var coordinatorTimeout: Double = 60
    @Flag(
        help: ArgumentHelp(
            "No relay per host: every worker dials the coordinator. (By default the first process of each host but the "
                + """
                coordinator's also starts a relay, which the host's processes work behind: the coordinator sends each 
                """
                + "host the step's parameters once and gets one gradient back.)"
        )
    )
    var noRelay = false

    func validate() throws {
        _ = try data.path()
        if let problem = TimeoutRange.problem("--coordinator-timeout", seconds: coordinatorTimeout) {
            throw ValidationError(problem)
        }
    }

    func run() throws {
        guard let environment = try ClusterEnvironment.detect(ProcessInfo.processInfo.environment) else {
            throw CommandFailure(
                """
                made launch needs RANK, WORLD_SIZE and MASTER_ADDR, or SLURM_PROCID, SLURM_NTASKS and \
                SLURM_JOB_NODELIST
                """
            )
        }
        if environment.isCoordinator {
            try TrainingJob(
                data: data,
                training: training,
                cluster: cluster,
                runtime: runtime,
                role: .coordinator(bind: cluster.bind ?? environment.bindEndpoint),
                expectedWorkers: environment.worldSize - 1
            ).run()
            return
        }
        var worker = try WorkerArguments.parse([])
        worker.keys = cluster.keys
        worker.endpointFile = cluster.endpointFile
        worker.coordinatorTimeout = coordinatorTimeout
        worker.heartbeatTimeout = cluster.heartbeatTimeout
        var relay: Process?
        switch environment.launchRole(relays: !noRelay) {
        case .coordinator, .worker:
            break
        case .relayAndWorker(let tag):
            let endpoint = try PrivateEndpoint.shared(tag: tag)
            relay = try startRelay(listen: endpoint, environment: environment)
            (worker.connect, worker.keys, worker.endpointFile) = (endpoint, nil, nil)
        case .workerBehindRelay(let tag):
            (worker.connect, worker.keys, worker.endpointFile) = (try PrivateEndpoint.shared(tag: tag), nil, nil)
        }
        defer { if let relay { Self.stop(relay) } }
        try worker.run(data: data, runtime: runtime, environment: environment)
    }

    /// Starts this host's relay: it dials the coordinator and listens at `listen` for the host's
    /// processes, and exits with this process.
    func startRelay(listen: String, environment: ClusterEnvironment) throws -> Process {
        var arguments = [
            "relay", "--listen", listen, "--parent-pid", "\(getpid())", "--name",
            "\(ProcessInfo.processInfo.hostName)-relay",
            "--coordinator-timeout", "\(coordinatorTimeout)", "--heartbeat-timeout", "\(cluster.heartbeatTimeout)",
            "--threads", "\(runtime.threads)",
        ]
        arguments +=
            cluster.endpointFile.map { ["--endpoint-file", $0] } ?? ["--connect", environment.connectEndpoint]
        if let keys = cluster.keys { arguments += ["--keys", keys] }
        if runtime.verbose { arguments.append("--verbose") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ClusterSession.currentExecutable)
        process.arguments = arguments + data.forwarded
        try process.run()
        return process
    }

    /// Waits a moment for the relay to follow the run's end, then ends it.
    static func stop(_ relay: Process) {
        let deadline = Date().addingTimeInterval(10)
        while relay.isRunning, Date() < deadline { usleep(20_000) }
        if relay.isRunning { kill(relay.processIdentifier, SIGTERM) }
        relay.waitUntilExit()
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make CURVE keys in a folder: the coordinator's pair (once), a worker pair, and authorized_keys."
    )

    @Argument(help: "Key folder (shared with the workers, e.g. on a shared file system, or copied).")
    var folder: String
    @Option(help: "Name of the worker key pair to add.")
    var name: String = "worker"
    @Flag(help: "Replace an existing worker key pair of that name; its old public key leaves authorized_keys.")
    var force = false

    func validate() throws {
        guard name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }), !name.isEmpty
        else {
            throw ValidationError("--name may hold letters, digits, '-', '_' and '.' only")
        }
    }

    func run() throws {
        for path in try ClusterSecurity.generate(folder: folder, workerName: name, replace: force) {
            print("wrote \(path)")
        }
    }
}
