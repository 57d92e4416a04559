import ArgumentParser
import Foundation
import Logging
import MADE
import MADECluster

/// A training run as the command line asks for it: in this process, or as the coordinator of
/// local or remote workers.
struct TrainingJob {
    let data: DataArguments<TrainingData>
    let training: TrainingArguments
    let cluster: ClusterArguments
    let runtime: RuntimeArguments
    let role: Role
    /// The workers expected at the start: `--shards`, when not given, gives each one a shard.
    var defaultWorkers: Int { max(1, expectedWorkers ?? cluster.workers) }
    /// Workers a launcher announced (WORLD_SIZE - 1), when known.
    var expectedWorkers: Int? = nil

    enum Role {
        /// `made train`: this process, or a coordinator of `--workers N` local workers.
        case local
        /// `made coordinator` or rank 0 of `made launch`: listen at `bind` for remote workers.
        case coordinator(bind: String)
    }

    func run() throws {
        if case .coordinator = role, training.shards == nil, expectedWorkers == nil, cluster.workers == 0 {
            throw ValidationError(
                """
                give --shards S: the pieces each batch is cut into, usually the number of workers (the result depends \
                on S, not on how many workers run)
                """
            )
        }
        let logger = CommandLineSupport.bootstrap(label: "made", verbose: runtime.verbose)
        BLAS.setThreads(runtime.threads)
        // Held until the run ends: no second run writes this checkpoint meanwhile.
        let lock = try training.checkpoint.map { try prepareCheckpoint($0, logger: logger) }
        defer { withExtendedLifetime(lock) {} }
        let dataPath = try data.path()
        let dataset = try DatasetLoader.load(path: dataPath, options: data.options)
        guard let dimension = dataset.dimension else { throw CommandFailure("\(dataPath): no data") }
        var configuration = try training.configuration(inputCount: dimension, workers: defaultWorkers)
        var state: TrainingState?
        var runID = RunID.make()
        if training.resume, let path = training.checkpoint, FileManager.default.fileExists(atPath: path) {
            let saved = try Checkpoint.read(from: path)
            let conflicts = training.conflicts(with: saved.configuration)
            guard conflicts.isEmpty else {
                throw ValidationError(
                    "\(path): flags disagree with the checkpoint's run: \(conflicts.joined(separator: "; "))"
                )
            }
            let fingerprint = DataFingerprint.of(dataset)
            guard saved.dataFingerprint == fingerprint else {
                throw CommandFailure(
                    """
                    \(path): the checkpoint was trained on different data (fingerprint \
                    \(saved.dataFingerprint.prefix(12)), this data \(fingerprint.prefix(12)))
                    """
                )
            }
            try saved.requireFinite(resuming: true, path: path)
            configuration = saved.configuration
            if let epochs = training.epochs { configuration.epochs = epochs }
            state = saved.state
            if let id = saved.runID { runID = id }
            logger.notice(
                "resuming",
                metadata: [
                    "checkpoint": "\(path)", "step": "\(saved.state.step)", "epoch": "\(saved.state.completedEpochs)",
                ]
            )
        } else if training.resume, let path = training.checkpoint {
            logger.notice("no checkpoint yet; starting a new run", metadata: ["checkpoint": "\(path)"])
        }

        if let warning = Eval.ensembleWarning(
            masks: configuration.evaluationMasks,
            trained: configuration.model.maskCount
        ) {
            logger.warning("\(warning)")
        }
        if case .local = role, cluster.workers > 0 {
            // The local workers' memory, beside this process's run, before any of it is taken.
            let each = ClusterSession.workerBytes(configuration: configuration, dataBytes: dataset.byteCount)
            var total = each.flatMap { MemoryBudget.product($0, cluster.workers) }
            if let workers = total, let own = configuration.trainingBytes {
                let (sum, overflow) = workers.addingReportingOverflow(own)
                total = overflow ? nil : sum
            }
            let perWorker = each.map(MemoryBudget.describe) ?? "too much"
            try MemoryBudget.require(
                total,
                for: "--workers \(cluster.workers) (\(perWorker) per local worker process "
                    + "for the data and the model, and this coordinator's own run)",
                available: MemoryBudget.hostAvailableBytes
            )
        }
        let trainer = try Trainer(configuration: configuration, dataset: dataset, state: state, logger: logger)
        let firstStep = trainer.state.step
        trainer.checkpointPath = training.checkpoint
        trainer.checkpointEvery = training.checkpointEvery
        trainer.dataSource = DataSource(path: dataPath, options: data.options)
        trainer.runID = runID
        print(
            CommandLineSupport.describe(
                configuration,
                dataset: dataset,
                parameters: ParameterLayout(configuration.model).count
            )
        )
        let report = ProgressReport(
            stepsPerEpoch: trainer.stepsPerEpoch,
            batchSize: configuration.batchSize,
            epochs: configuration.epochs
        )
        if let path = training.metrics {
            report.metrics = try MetricsFile(path: path, runID: runID, startStep: trainer.state.step)
        }
        trainer.onEvent = { report.handle($0) }
        defer { report.metrics?.flush() }

        SignalFlag.install()
        let stopAfter = training.stopAfterSteps
        let shouldStop = { SignalFlag.isSet || (stopAfter.map { trainer.step >= $0 } ?? false) }

        let result: TrainingRun.Result
        var coordinator: ClusterCoordinator?
        switch role {
        case .local where !cluster.isDistributed:
            result = try TrainingRun.local(trainer, until: shouldStop)
        case .local, .coordinator:
            var bind = "tcp://127.0.0.1:0"
            if case .coordinator(let b) = role { bind = b }
            let session = try cluster.session(
                configuration: configuration,
                dataFingerprint: DataFingerprint.bytes(of: dataset),
                bind: bind,
                workerArguments: data.forwarded,
                runtime: runtime,
                announced: expectedWorkers,
                logger: logger
            )
            let c = session.coordinator
            report.cluster = { (c.workerCount, c.lastStepTimings) }
            coordinator = c
            result = try TrainingRun.cluster(trainer, session: session, until: shouldStop)
        }
        let outcome = result.outcome
        let k = configuration.evaluationMasks
        let mode = configuration.ensembleMode

        report.clearLiveLine()
        if outcome == .interrupted {
            print(
                "stopped at step \(trainer.state.step)"
                    + (training.checkpoint.map { "; checkpoint \($0)" }
                        ?? "; nothing was saved (no --checkpoint): the run cannot be resumed")
            )
            if SignalFlag.isSet { throw ExitCode(130) }
            return
        }
        if outcome == .stoppedEarly {
            print(
                """
                stopped early after epoch \(trainer.state.completedEpochs): no better validation NLL for \
                \(configuration.patience) epochs; best epoch \(trainer.state.bestEpoch + 1)
                """
            )
        }
        let final = trainer.checkpoint
        let label = mode == .logits ? " (logit averaging: not a normalized likelihood)" : ""
        for (split, nll) in result.scores {
            print(String(format: "%@_nll=%.4f", split.name, nll) + " masks=\(k)\(label)")
        }
        if let c = coordinator {
            let n = c.counters
            print(
                """
                cluster workers_joined=\(n.workersJoined) workers_lost=\(n.workersLost) \
                reassigned_shards=\(n.reassignedShards) 
                """
                    + """
                    rejected=\(n.rejected) malformed=\(n.malformed) wrong_run=\(n.wrongRun) \
                    unknown_peer=\(n.unknownPeer) 
                    """
                    + "refused_workers=\(n.refusedWorkers) mask_mismatches=\(n.maskMismatches) late=\(n.lateResults) "
                    + "failed_tasks=\(n.failedTasks) curve_refused=\(c.refusedClients) bytes_sent=\(c.bytesSent) "
                    + "bytes_received=\(c.bytesReceived) "
                    + "bytes_per_step=\((c.bytesSent + c.bytesReceived) / max(1, trainer.state.step - firstStep))"
            )
        }
        print("params_sha256=\(final.parametersSHA256)")
    }

    /// Checks, before any data is loaded, that the run can keep its checkpoint at `path`: the
    /// folder exists and is writable, no other run writes there (the lock it returns), and a
    /// checkpoint already there is carried on only with `--resume` and replaced only with
    /// `--overwrite`. Removes the partial files of writes that a dead process left behind.
    private func prepareCheckpoint(_ path: String, logger: Logger) throws -> CheckpointLock {
        try AtomicFile.checkWritableFolder(of: path)
        let lock = try CheckpointLock(checkpoint: path)
        for stale in AtomicFile.removeStaleTemporaries(of: path) {
            logger.info(
                "removed the partial checkpoint of a process that died while writing it",
                metadata: ["file": "\(stale)"]
            )
        }
        guard !training.resume, !training.overwrite, FileManager.default.fileExists(atPath: path) else { return lock }
        let held: String
        if let saved = try? Checkpoint.read(from: path) {
            let c = saved.configuration
            let sizes = ([c.model.inputCount] + c.model.hiddenSizes + [c.model.outputCount]).map(String.init).joined(
                separator: "-"
            )
            held =
                """
                a run of MADE \(sizes), \(c.model.maskCount) mask(s), at step \(saved.state.step) (epoch \
                \(saved.state.completedEpochs) of \(c.epochs))
                """
        } else {
            held = "a file that is not a readable checkpoint"
        }
        throw CommandFailure(
            """
            \(path) already holds \(held); add --resume to carry it on, --overwrite to replace it with a new run, or \
            give another --checkpoint
            """
        )
    }
}
