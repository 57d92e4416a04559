import ArgumentParser
import Foundation
import Logging
import MADE
import MADECluster

/// A coordinator for one evaluation or sampling job, with its local workers: `--workers N`
/// starts them here, `--bind` also lets remote `made worker` processes in.
enum JobCluster {
    static func run<R>(checkpoint: Checkpoint, dataFingerprint: [UInt8]?, cluster: ClusterArguments, workerArguments: [String],
                       verbose: Bool, body: (ClusterCoordinator) throws -> R) throws -> R {
        let logger = CommandLineSupport.bootstrap(label: "made", verbose: verbose)
        let coordinator = try ClusterCoordinator(configuration: checkpoint.configuration, dataFingerprint: dataFingerprint,
                                                 options: try cluster.coordinatorOptions(bind: "tcp://127.0.0.1:0"), logger: logger)
        if cluster.workers == 0, !verbose { logger.notice("coordinator listening", metadata: ["endpoint": "\(coordinator.endpoint)"]) }
        SignalFlag.install()
        coordinator.shouldStop = { SignalFlag.isSet }
        let pool = LocalWorkerPool(logger: logger)
        if cluster.workers > 0 {
            try pool.start(count: cluster.workers) { i in
                ["worker", "--connect", coordinator.endpoint, "--name", "local-\(i)", "--parent-pid", "\(getpid())"]
                    + workerArguments + (cluster.keys.map { ["--keys", $0] } ?? []) + (verbose ? ["--verbose"] : [])
            }
        }
        defer { pool.stop() }
        do {
            try cluster.awaitWorkers(coordinator, pool: pool, logger: logger)
            let result = try body(coordinator)
            coordinator.shutdownWorkers(reason: "the job is complete")
            return result
        } catch is ClusterCoordinator.Interrupted {
            coordinator.shutdownWorkers(exitCode: 1, reason: "the job was interrupted")
            throw ExitCode(130)
        } catch {
            coordinator.shutdownWorkers(exitCode: 1, reason: "the job failed: \(error)")
            throw error
        }
    }
}
