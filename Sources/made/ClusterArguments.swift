import ArgumentParser
import Foundation
import Logging
import MADECluster

/// Flags of the data-parallel cluster, shared by `train`, `coordinator`, `launch`, `eval` and `sample`.
struct ClusterArguments: ParsableArguments {
    @Option(help: "Start this many local worker processes and spread the work over them (0: work in this process).")
    var workers: Int = 0
    @Option(help: "Endpoint the coordinator listens on, e.g. tcp://0.0.0.0:29500; port 0 picks a free port. (default: tcp://127.0.0.1:0 with --workers)")
    var bind: String?
    @Option(help: "Write the endpoint workers should dial to this file once bound.")
    var endpointFile: String?
    @Option(help: "Host name to advertise in the endpoint file when listening on every interface.")
    var advertiseHost: String?
    @Option(help: "CURVE key folder made by `made keygen`: coordinator.key and authorized_keys. Required to listen beyond loopback.")
    var keys: String?
    @Flag(help: "Listen beyond loopback without CURVE (only on a trusted network).")
    var insecure = false
    @Flag(help: "Send parameters and gradients over the socket even to workers on this host (no shared-memory file).")
    var noSharedMemory = false
    @Option(help: "Seconds of silence after which a worker is declared dead and its work given to another.")
    var heartbeatTimeout: Double = 10
    @Option(help: "Seconds after which a task still in flight (a shard of a step, a chunk of rows to score, a batch of samples) is taken back and given to the first idle worker.")
    var taskTimeout: Double = 60
    @Option(help: "Seconds without any worker before the coordinator gives up.")
    var idleTimeout: Double = 120
    @Option(help: "Workers to wait for before the work starts. (default: N with --workers N, WORLD_SIZE - 1 under made launch, else 0)")
    var waitForWorkers: Int?
    @Option(help: "Seconds to wait for them; then the work starts with the workers that joined.")
    var joinTimeout: Double = 60

    func validate() throws {
        guard workers >= 0 else { throw ValidationError("--workers must not be negative") }
        guard (waitForWorkers ?? 0) >= 0 else { throw ValidationError("--wait-for-workers must not be negative") }
        for (name, value) in [("--heartbeat-timeout", heartbeatTimeout), ("--task-timeout", taskTimeout), ("--idle-timeout", idleTimeout),
                              ("--join-timeout", joinTimeout)] {
            guard value > 0, value <= 1_000_000 else { throw ValidationError("\(name) must be between 0 and 1000000 seconds, not \(value)") }
        }
    }

    /// Waits until the workers to wait for have joined `coordinator`: `--wait-for-workers`, else
    /// `announced` (WORLD_SIZE - 1), else `--workers`. Gives up after `--join-timeout`, or at once
    /// when a process of `pool` has died and the count cannot be reached; training then starts
    /// with the workers that came.
    func awaitWorkers(_ coordinator: ClusterCoordinator, announced: Int? = nil, pool: LocalWorkerPool?, logger: Logger) throws {
        let awaited = waitForWorkers ?? announced ?? workers
        guard awaited > 0 else { return }
        let deadline = ContinuousClock.now + .milliseconds(Int(joinTimeout * 1000))
        while try !coordinator.waitForWorkers(awaited, timeout: 200) {
            let local = pool?.processes.count ?? 0
            let localLost = local > 0 && (pool?.running.count ?? 0) < min(awaited, local)
            if localLost || ContinuousClock.now >= deadline {
                logger.warning("starting without every expected worker", metadata: [
                    "joined": "\(coordinator.workerCount)", "expected": "\(awaited)",
                    "reason": "\(localLost ? "a local worker process exited" : "--join-timeout passed")"])
                return
            }
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
            throw ValidationError("listening on \(options.bind) needs CURVE keys: make them with `made keygen DIR` and pass --keys DIR (or --insecure on a trusted network)")
        }
        options.allowInsecure = insecure
        options.sharedMemory = !noSharedMemory
        options.heartbeatTimeout = UInt64(heartbeatTimeout * 1000)
        options.taskTimeout = UInt64(taskTimeout * 1000)
        options.idleTimeout = UInt64(idleTimeout * 1000)
        return options
    }
}
