import ArgumentParser
import Foundation
import Logging
import MADE
import MADECluster

/// Flags of the data-parallel cluster, shared by `train`, `coordinator`, `launch`, `eval` and `sample`.
struct ClusterArguments: ParsableArguments {
    @Option(
        parsing: .unconditional,
        help: "Start this many local worker processes and spread the work over them (0: work in this process)."
    )
    var workers: Int = 0
    @Option(
        help:
            """
            Endpoint the coordinator listens on, e.g. tcp://0.0.0.0:29500; port 0 picks a free port. (default: \
            tcp://127.0.0.1:0 with --workers)
            """
    )
    var bind: String?
    @Option(help: "Write the endpoint workers should dial to this file once bound.")
    var endpointFile: String?
    @Option(help: "Host name to advertise in the endpoint file when listening on every interface.")
    var advertiseHost: String?
    @Option(
        help:
            """
            CURVE key folder made by `made keygen`: coordinator.key and authorized_keys. Required to listen beyond \
            loopback.
            """
    )
    var keys: String?
    @Flag(help: "Listen beyond loopback without CURVE (only on a trusted network).")
    var insecure = false
    @Flag(help: "Send parameters and gradients over the socket even to workers on this host (no shared-memory file).")
    var noSharedMemory = false
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Seconds a worker's connection may carry nothing (libzmq's heartbeats go unanswered) before it is "
                + "dropped, the worker declared dead and its work given to another. A worker busy sending or "
                + "receiving a large message is alive."
        )
    )
    var heartbeatTimeout: Double = 10
    @Option(
        parsing: .unconditional,
        help:
            """
            Seconds after which a task still in flight (a shard of a step, a chunk of rows to score, a batch of \
            samples) is taken back and given to the first idle worker.
            """
    )
    var taskTimeout: Double = 60
    @Option(parsing: .unconditional, help: "Seconds without any worker before the coordinator gives up.")
    var idleTimeout: Double = 120
    @Option(
        parsing: .unconditional,
        help:
            """
            Workers to wait for before the work starts. (default: N with --workers N, WORLD_SIZE - 1 under made \
            launch, else 0)
            """
    )
    var waitForWorkers: Int?
    @Option(
        parsing: .unconditional,
        help: "Seconds to wait for them; then the work starts with the workers that joined."
    )
    var joinTimeout: Double = 60

    /// Most local worker processes, and most workers to wait for.
    static let maxWorkers = 1024

    func validate() throws {
        try checkRange("--workers", workers, 0...Self.maxWorkers)
        try checkRange("--wait-for-workers", waitForWorkers, 0...Self.maxWorkers)
        if let bind {
            do { try Endpoint.validate(bind) } catch { throw ValidationError("--bind \(error)") }
        }
        for (name, value) in [
            ("--heartbeat-timeout", heartbeatTimeout), ("--task-timeout", taskTimeout), ("--idle-timeout", idleTimeout),
            ("--join-timeout", joinTimeout),
        ] {
            if let problem = TimeoutRange.problem(name, seconds: value) { throw ValidationError(problem) }
        }
    }

    /// Whether training goes through a coordinator.
    var isDistributed: Bool { workers > 0 || bind != nil }

    func coordinatorOptions(bind defaultBind: String) throws -> ClusterCoordinator.Options {
        var options = ClusterCoordinator.Options(bind: bind ?? defaultBind)
        options.endpointFile = endpointFile
        options.advertisedHost = advertiseHost
        if let keys {
            options.security = try ClusterSecurity.Server.load(folder: keys)
        } else if !Endpoint.isLocal(options.bind) && !insecure {
            throw ValidationError(
                """
                listening on \(options.bind) needs CURVE keys: make them with `made keygen DIR` and pass --keys DIR \
                (or --insecure on a trusted network)
                """
            )
        }
        options.allowInsecure = insecure
        options.sharedMemory = !noSharedMemory
        options.heartbeatTimeout = TimeoutRange.milliseconds(heartbeatTimeout)
        options.taskTimeout = TimeoutRange.milliseconds(taskTimeout)
        options.idleTimeout = TimeoutRange.milliseconds(idleTimeout)
        return options
    }

    /// A coordinator listening at `--bind` (else `defaultBind`) with `--workers` local workers
    /// started with `workerArguments`, the `--threads` of `runtime` and `--verbose` when it asks
    /// for it; stopped on SIGINT and SIGTERM. It waits for `--wait-for-workers`, else `announced` (WORLD_SIZE - 1),
    /// else
    /// `--workers`. Without `--keys`, `--bind` and `--insecure`, the local workers get the
    /// session's own CURVE keys.
    func session(
        configuration: TrainingConfiguration,
        dataFingerprint: [UInt8]?,
        bind defaultBind: String = "tcp://127.0.0.1:0",
        workerArguments: [String],
        runtime: RuntimeArguments,
        announced: Int? = nil,
        largestResult: Int = 0,
        logger: Logger
    ) throws -> ClusterSession {
        var options = ClusterSession.Options(coordinator: try coordinatorOptions(bind: defaultBind))
        options.coordinator.largestJobResult = largestResult
        options.localWorkers = workers
        options.workerArguments = workerArguments + (runtime.verbose ? ["--verbose"] : [])
        options.workerThreads = runtime.threads
        options.workerKeyFolder = keys
        // Keys of the run's own only when no one else is meant to join: no --bind, no --insecure, loopback.
        options.ephemeralKeys = bind == nil && !insecure && Endpoint.isLocal(options.coordinator.bind)
        options.awaitedWorkers = waitForWorkers ?? announced ?? workers
        options.joinTimeout = TimeoutRange.milliseconds(joinTimeout)
        let session = try ClusterSession(
            configuration: configuration,
            dataFingerprint: dataFingerprint,
            options: options,
            logger: logger
        )
        // Workers started by hand need the endpoint (port 0 picks one; -v logs it anyway); local ones are told it.
        if workers == 0, !runtime.verbose {
            logger.notice("coordinator listening", metadata: ["endpoint": "\(session.coordinator.endpoint)"])
        }
        SignalFlag.install()
        session.coordinator.shouldStop = { SignalFlag.isSet }
        return session
    }
}
