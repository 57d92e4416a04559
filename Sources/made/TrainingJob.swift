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
    /// Shards when `--shards` is not given: the workers expected at the start.
    var defaultShards: Int { max(1, expectedWorkers ?? cluster.workers) }
    /// Workers a launcher announced (WORLD_SIZE - 1), when known.
    var expectedWorkers: Int? = nil

    enum Role {
        /// `made train`: this process, or a coordinator of `--workers N` local workers.
        case local
        /// `made coordinator` or rank 0 of `made launch`: listen at `bind` for remote workers.
        case coordinator(bind: String)
    }

    func run() throws {
        let logger = CommandLineSupport.bootstrap(label: "made", verbose: runtime.verbose)
        BLAS.setThreads(runtime.threads)
        let dataPath = try data.path()
        let dataset = try DatasetLoader.load(path: dataPath, options: data.options)
        guard let dimension = dataset.dimension else { throw ValidationError("\(dataPath): no data") }

        if case .coordinator = role, training.shards == nil, expectedWorkers == nil, cluster.workers == 0 {
            throw ValidationError("give --shards S: the pieces each batch is cut into, usually the number of workers (the result depends on S, not on how many workers run)")
        }
        var configuration = try training.configuration(inputCount: dimension, defaultShards: defaultShards)
        var state: TrainingState?
        var runID = RunID.make()
        if training.resume, let path = training.checkpoint, FileManager.default.fileExists(atPath: path) {
            let saved = try Checkpoint.read(from: path)
            let conflicts = training.conflicts(with: saved.configuration)
            guard conflicts.isEmpty else {
                throw ValidationError("\(path): flags disagree with the checkpoint's run: \(conflicts.joined(separator: "; "))")
            }
            let fingerprint = DataFingerprint.of(dataset)
            guard saved.dataFingerprint == fingerprint else {
                throw ValidationError("\(path): the checkpoint was trained on different data (fingerprint \(saved.dataFingerprint.prefix(12)), this data \(fingerprint.prefix(12)))")
            }
            configuration = saved.configuration
            if let epochs = training.epochs { configuration.epochs = epochs }
            state = saved.state
            if let id = saved.runID { runID = id }
            logger.notice("resuming", metadata: ["checkpoint": "\(path)", "step": "\(saved.state.step)", "epoch": "\(saved.state.completedEpochs)"])
        } else if training.resume, let path = training.checkpoint {
            logger.notice("no checkpoint yet; starting a new run", metadata: ["checkpoint": "\(path)"])
        }

        if let warning = Eval.ensembleWarning(masks: configuration.evaluationMasks, trained: configuration.model.maskCount) {
            logger.warning("\(warning)")
        }
        let trainer = try Trainer(configuration: configuration, dataset: dataset, state: state, logger: logger)
        trainer.checkpointPath = training.checkpoint
        trainer.checkpointEvery = training.checkpointEvery
        trainer.dataSource = DataSource(path: dataPath, options: data.options)
        trainer.runID = runID
        print(CommandLineSupport.describe(configuration, dataset: dataset, parameters: ParameterLayout(configuration.model).count))
        let report = ProgressReport(stepsPerEpoch: trainer.stepsPerEpoch, batchSize: configuration.batchSize, epochs: configuration.epochs)
        if let path = training.metrics { report.metrics = try MetricsFile(path: path, runID: runID, startStep: trainer.state.step) }
        trainer.onEvent = { report.handle($0) }
        defer { report.metrics?.flush() }

        SignalFlag.install()
        let stopAfter = training.stopAfterSteps
        let shouldStop = { SignalFlag.isSet || (stopAfter.map { trainer.step >= $0 } ?? false) }

        var outcome: TrainingOutcome
        var coordinator: ClusterCoordinator?
        var pool: LocalWorkerPool?
        let k = configuration.evaluationMasks
        let mode = configuration.ensembleMode
        /// The final validation and test NLL of the parameters the run stands by.
        func finalScores(_ score: (_ split: DataSplit, _ data: DataMatrix) throws -> Double) throws -> [(String, Double)] {
            try [("valid", DataSplit.valid), ("test", .test)].compactMap { name, split in
                try split.rows(of: dataset).map { (name, try score(split, $0)) }
            }
        }
        var scores: [(String, Double)] = []
        switch role {
        case .local where !cluster.isDistributed:
            outcome = try trainer.run(until: shouldStop)
            if outcome != .interrupted {
                scores = try finalScores { _, data in trainer.evaluate(data, parameters: trainer.checkpoint.modelParameters) }
            }
        case .local, .coordinator:
            var bind = "tcp://127.0.0.1:0"
            if case .coordinator(let b) = role { bind = b }
            let c = try ClusterCoordinator(configuration: configuration, dataFingerprint: DataFingerprint.bytes(of: dataset),
                                           options: try cluster.coordinatorOptions(bind: bind), logger: logger)
            c.shouldStop = { SignalFlag.isSet }
            // Workers wait while the coordinator updates the parameters: let it use every core then.
            trainer.optimizerThreads = c.threads
            trainer.keepAlive = { c.keepAlive() }
            report.cluster = { (c.workerCount, c.lastStepTimings) }
            // Validation goes to the workers too, chunk by chunk, with the same bits as here.
            func clusterScore(_ split: DataSplit, _ data: DataMatrix, _ parameters: [Float]) throws -> Double {
                Evaluator<Float>.meanNLL(try c.logLikelihoods(split: split, rowCount: data.count, masks: k, mode: mode, parameters: parameters))
            }
            if let valid = dataset.valid { trainer.validationScorer = { try clusterScore(.valid, valid, $0) } }
            coordinator = c
            // Workers started by hand need the endpoint (port 0 picks one; -v logs it anyway); local ones are told it.
            if cluster.workers == 0, !runtime.verbose { logger.notice("coordinator listening", metadata: ["endpoint": "\(c.endpoint)"]) }
            if cluster.workers > 0 {
                let p = LocalWorkerPool(logger: logger)
                pool = p
                try p.start(count: cluster.workers) { i in
                    ["worker", "--connect", c.endpoint, "--name", "local-\(i)", "--parent-pid", "\(getpid())"]
                        + data.forwarded + (cluster.keys.map { ["--keys", $0] } ?? []) + (runtime.verbose ? ["--verbose"] : [])
                }
            }
            do {
                // Start with every worker the launch announced, so none arrives after the work is done.
                try cluster.awaitWorkers(c, announced: expectedWorkers, pool: pool, logger: logger)
                outcome = try trainer.drive(until: shouldStop) { plan in
                    try c.computeStep(plan, parameters: trainer.state.parameters)
                }
                if outcome != .interrupted {
                    let parameters = trainer.checkpoint.modelParameters
                    scores = try finalScores { split, data in try clusterScore(split, data, parameters) }
                }
            } catch is ClusterCoordinator.Interrupted {
                try trainer.saveCheckpoint()
                outcome = .interrupted
            } catch {
                // The state is at a step boundary: keep what was done.
                try? trainer.saveCheckpoint()
                c.shutdownWorkers(exitCode: 1, reason: "the coordinator failed: \(error)")
                pool?.stop(grace: 2)
                throw error
            }
            c.shutdownWorkers(exitCode: 0, reason: outcome == .interrupted ? "the run was interrupted" : "the run is complete")
            pool?.stop()
        }

        report.clearLiveLine()
        if outcome == .interrupted {
            print("stopped at step \(trainer.state.step)\(training.checkpoint.map { "; checkpoint \($0)" } ?? "")")
            if SignalFlag.isSet { throw ExitCode(130) }
            return
        }
        if outcome == .stoppedEarly {
            print("stopped early after epoch \(trainer.state.completedEpochs): no better validation NLL for \(configuration.patience) epochs; best epoch \(trainer.state.bestEpoch + 1)")
        }
        let final = trainer.checkpoint
        let label = mode == .logits ? " (logit averaging: not a normalized likelihood)" : ""
        for (name, nll) in scores { print(String(format: "%@_nll=%.4f", name, nll) + " masks=\(k)\(label)") }
        if let c = coordinator {
            let n = c.counters
            print("cluster workers_joined=\(n.workersJoined) workers_lost=\(n.workersLost) reassigned_shards=\(n.reassignedShards) "
                  + "rejected=\(n.rejected) malformed=\(n.malformed) wrong_run=\(n.wrongRun) unknown_peer=\(n.unknownPeer) "
                  + "refused_workers=\(n.refusedWorkers) mask_mismatches=\(n.maskMismatches) late=\(n.lateResults) "
                  + "failed_tasks=\(n.failedTasks) curve_refused=\(c.refusedClients) bytes_sent=\(c.bytesSent) bytes_received=\(c.bytesReceived)")
        }
        print("params_sha256=\(final.parametersSHA256)")
    }
}
