import MADE

/// A training run carried to its end: in this process, or through a ``ClusterSession``'s
/// workers, followed by the final validation and test scores of the parameters it stands by.
///
/// One step across the cluster: ``Trainer/drive(until:compute:)`` plans the step (rows of each
/// shard, mask seed) and hands it to ``ClusterCoordinator/computeStep(_:parameters:)`` (or, with the
/// sparse kernel and shared memory, ``ClusterCoordinator/computeStep(_:held:)`` on the parameters
/// the trainer holds in the compute order of the step's mask), whose
/// ``CoordinatorStateMachine`` hands the shards to the workers; each ``ClusterWorker`` computes
/// its task with a ``ShardComputer`` and answers; the coordinator sums the answers in the fixed
/// tree order (``GradientReducer``) and the trainer applies Adam. Validation at epoch ends and
/// the final scores go to the workers too, chunk by chunk, with the same bits as in one process.
public struct TrainingRun {
    /// How the run ended, and the mean NLL of each held-out split the data has (valid, then
    /// test) under the parameters it stands by; no scores for an interrupted run.
    public struct Result {
        public var outcome: TrainingOutcome
        public var scores: [(split: DataSplit, nll: Double)]
    }

    /// Trains in this process until the schedule ends or `shouldStop` turns true.
    public static func local(_ trainer: Trainer, until shouldStop: () -> Bool) throws -> Result {
        let outcome = try trainer.run(until: shouldStop)
        guard outcome != .interrupted else { return Result(outcome: outcome, scores: []) }
        let parameters = trainer.checkpoint.modelParameters
        return Result(
            outcome: outcome,
            scores: heldOut(trainer.dataset).map { ($0, trainer.evaluate($1, parameters: parameters)) }
        )
    }

    /// Trains through `session`'s workers until the schedule ends or `shouldStop` turns true.
    ///
    /// The coordinator updates the parameters with every core while the workers wait, and keeps
    /// answering them during long work between steps. On an interruption (the coordinator's
    /// `shouldStop`) and on a failure the state, at a step boundary, is checkpointed; every
    /// worker is told to stop either way.
    public static func cluster(
        _ trainer: Trainer,
        session: ClusterSession,
        until shouldStop: () -> Bool
    ) throws -> Result {
        let c = session.coordinator
        let configuration = trainer.configuration
        trainer.optimizerThreads = c.threads
        trainer.keepAlive = { c.keepAlive() }
        func score(_ split: DataSplit, _ data: DataMatrix, _ parameters: [Float]) throws -> Double {
            Evaluator<Float>.meanNLL(
                try c.logLikelihoods(
                    split: split,
                    rowCount: data.count,
                    masks: configuration.evaluationMasks,
                    mode: configuration.ensembleMode,
                    parameters: parameters
                )
            )
        }
        if let valid = trainer.dataset.valid { trainer.validationScorer = { try score(.valid, valid, $0) } }
        do {
            return try session.run(
                { c in
                    let outcome = try trainer.drive(until: shouldStop, offeringHeld: { c.heldOffer }) { plan, held in
                        try Self.step(plan, held: held, coordinator: c, trainer: trainer)
                    }
                    guard outcome != .interrupted else { return Result(outcome: outcome, scores: []) }
                    let parameters = trainer.checkpoint.modelParameters
                    return Result(
                        outcome: outcome,
                        scores: try heldOut(trainer.dataset).map { ($0, try score($0, $1, parameters)) }
                    )
                },
                done: { $0.outcome == .interrupted ? "the run was interrupted" : "the run is complete" },
                interruptedExitCode: 0
            )
        } catch is ClusterCoordinator.Interrupted {
            try trainer.saveCheckpoint()
            return Result(outcome: .interrupted, scores: [])
        } catch {
            // The state is at a step boundary: keep what was done.
            try? trainer.saveCheckpoint()
            throw error
        }
    }

    /// One step through `coordinator`: in the compute order of the parameters the trainer holds,
    /// or in layout order.
    public static func step(
        _ plan: StepPlan,
        held: Trainer.HeldParameters?,
        coordinator: ClusterCoordinator,
        trainer: Trainer
    ) throws -> (gradient: [Float], lossSum: Double, computeOrder: Bool) {
        if let held {
            let (gradient, loss) = try coordinator.computeStep(plan, held: held)
            return (gradient, loss, true)
        }
        let (gradient, loss) = try coordinator.computeStep(plan, parameters: trainer.state.parameters)
        return (gradient, loss, false)
    }

    private static func heldOut(_ dataset: Dataset) -> [(DataSplit, DataMatrix)] {
        [DataSplit.valid, .test].compactMap { split in split.rows(of: dataset).map { (split, $0) } }
    }
}
