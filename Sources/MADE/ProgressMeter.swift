/// Examples per second for people: the live rate and time left, and each epoch's rate.
///
/// The live rate is measured over the last `window` steps, from step end to step end, or from a
/// ``restart(at:)`` (the moment the next step begins, after a pause) to a step end. The time
/// before the first step ends (loading, workers joining, masks built) and pauses between epochs
/// (validation, checkpoints) never count, so the first figure shown is the rate of training
/// itself. An epoch's rate counts only the steps this process ran
/// in that epoch, so the epoch a resumed run finishes is not credited with the steps done before
/// the resume.
///
/// Times are seconds on any monotonic clock; the meter reads no clock itself.
public struct ProgressMeter: Sendable {
    public let batchSize: Int
    public let window: Int
    /// Steps measured before a live rate is given, so one step's noise is not shown as the rate.
    public let minimumSteps: Int
    /// End times of the recent steps, oldest first, at most `window + 1`.
    private var ends: [Double] = []
    private var first = 0
    private var stepsThisEpoch = 0
    /// Seconds of pauses (validation, checkpoints) since the last epoch end, and those of the
    /// epoch end before it.
    private var pausesSinceEpoch = 0.0
    public private(set) var lastEpochPause = 0.0

    public init(batchSize: Int, window: Int = 200, minimumSteps: Int = 1) {
        precondition(batchSize >= 1 && window >= 1 && minimumSteps >= 1 && minimumSteps <= window)
        self.batchSize = batchSize
        self.window = window
        self.minimumSteps = minimumSteps
    }

    /// Forgets the time before `time` (a pause, an epoch end): the next step begins at `time`.
    public mutating func restart(at time: Double) {
        if let last = ends.last, time > last { pausesSinceEpoch += time - last }
        ends.removeAll(keepingCapacity: true)
        ends.append(time)
        first = 0
    }

    /// Records that a step ended at `time`. Returns that step's own rate when its beginning is
    /// known (a step ended or a restart happened before it), else nil.
    @discardableResult
    public mutating func stepEnded(at time: Double) -> Double? {
        stepsThisEpoch += 1
        let previous = ends.count > first ? ends.last : nil
        ends.append(time)
        if ends.count - first > window + 1 { first += 1 }
        if first > 4 * window {
            ends.removeFirst(first)
            first = 0
        }
        guard let previous, time > previous else { return nil }
        return Double(batchSize) / (time - previous)
    }

    /// Examples per second over the recorded steps; nil until `minimumSteps` steps have been
    /// measured from beginning to end (a step's beginning is known after a restart or once the
    /// step before it has ended).
    public var examplesPerSecond: Double? {
        let n = ends.count - first
        guard n >= 1 + minimumSteps, let last = ends.last, last > ends[first] else { return nil }
        return Double((n - 1) * batchSize) / (last - ends[first])
    }

    /// Seconds to run `steps` more steps at the current rate, and `epochEnds` more epoch ends
    /// each pausing as long as the last did (validation, checkpoint); nil while the rate is unknown.
    public func secondsLeft(steps: Int, epochEnds: Int = 0) -> Double? {
        examplesPerSecond.map {
            Double(max(0, steps)) * Double(batchSize) / $0 + Double(max(0, epochEnds)) * lastEpochPause
        }
    }

    /// Ends an epoch whose steps took `seconds` in this process: the examples per second of the
    /// steps run here (0 when none ran or no time passed). Starts counting the next epoch.
    public mutating func epochEnded(seconds: Double) -> Double {
        defer { stepsThisEpoch = 0 }
        if pausesSinceEpoch > 0 { lastEpochPause = pausesSinceEpoch }
        pausesSinceEpoch = 0
        guard seconds > 0 else { return 0 }
        return Double(stepsThisEpoch * batchSize) / seconds
    }
}
