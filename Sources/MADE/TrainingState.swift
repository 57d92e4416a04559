/// What a run has done so far: enough to carry it on bit for bit.
public struct TrainingState: Sendable, Equatable {
    public var parameters: [Float]
    public var adam: AdamState
    /// Steps taken over the whole run; also the index of the next step.
    public var step: Int
    /// Epochs finished, validation included.
    public var completedEpochs: Int
    /// Sum of the training NLL of the current epoch's steps so far, and how many examples it covers.
    public var epochLossSum: Double
    public var epochExamples: Int
    /// The best validation NLL seen, the epoch it came from, and those parameters (empty before any validation).
    public var bestValidNLL: Double?
    public var bestEpoch: Int
    public var bestParameters: [Float]
    public var epochsWithoutImprovement: Int
    /// Whether training stopped early for lack of improvement.
    public var stoppedEarly: Bool
    /// One record per finished epoch.
    public var history: [EpochRecord]

    /// A fresh run: initial parameters from the seed, Adam at zero.
    public init(configuration: TrainingConfiguration) {
        let layout = ParameterLayout(configuration.model)
        parameters = layout.initialParameters(seed: configuration.seed, as: Float.self)
        adam = AdamState(parameterCount: layout.count)
        step = 0
        completedEpochs = 0
        epochLossSum = 0
        epochExamples = 0
        bestValidNLL = nil
        bestEpoch = -1
        bestParameters = []
        epochsWithoutImprovement = 0
        stoppedEarly = false
        history = []
    }

    /// One Adam step on the parameters (see
    /// ``AdamState/update(parameters:gradient:scale:learningRate:configuration:)``).
    public mutating func applyAdam(
        gradient: [Float],
        scale: Float,
        learningRate: Double,
        configuration: AdamConfiguration,
        threads: Int = 1
    ) {
        adam.update(
            parameters: &parameters,
            gradient: gradient,
            scale: scale,
            learningRate: learningRate,
            configuration: configuration,
            threads: threads
        )
    }

    /// The parameters a finished run stands by: the best by validation when early stopping is on, else the last.
    public func modelParameters(_ configuration: TrainingConfiguration) -> [Float] {
        configuration.patience > 0 && !bestParameters.isEmpty ? bestParameters : parameters
    }
}

/// The numbers of one finished epoch.
public struct EpochRecord: Sendable, Equatable, Codable {
    public var epoch: Int
    /// Mean training NLL (nats per example) over the epoch's steps.
    public var trainNLL: Double
    /// Validation NLL of the evaluation ensemble at the end of the epoch; nil without a validation split.
    public var validNLL: Double?
    public var learningRate: Double
    /// Wall-clock seconds of the epoch's training steps (not reproducible; for people).
    public var seconds: Double

    public init(epoch: Int, trainNLL: Double, validNLL: Double?, learningRate: Double, seconds: Double) {
        self.epoch = epoch
        self.trainNLL = trainNLL
        self.validNLL = validNLL
        self.learningRate = learningRate
        self.seconds = seconds
    }
}
