import CKernels
import Foundation

/// Adam's hyper-parameters, with weight decay added to the gradient as PyTorch's `Adam` does.
public struct AdamConfiguration: Sendable, Equatable, Codable {
    public var learningRate: Double = 1e-3
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var epsilon: Double = 1e-8
    /// `lambda` in `g <- g + lambda * p` (L2 through the gradient, not decoupled).
    public var weightDecay: Double = 1e-4

    public init(
        learningRate: Double = 1e-3,
        beta1: Double = 0.9,
        beta2: Double = 0.999,
        epsilon: Double = 1e-8,
        weightDecay: Double = 1e-4
    ) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
    }
}

/// Adam's moment estimates and step count.
///
/// Step `t` (counting from 1), for each parameter `p` with raw gradient `g`:
///
///     g   = scale * g + weightDecay * p
///     m   = beta1 * m + (1 - beta1) * g
///     v   = beta2 * v + (1 - beta2) * g^2
///     p  -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + epsilon)
///
/// which is PyTorch's `torch.optim.Adam` (non-amsgrad) step. `scale` turns a sum of per-example
/// gradients into their mean without a separate pass.
public struct AdamState: Sendable, Equatable {
    public var firstMoment: [Float]
    public var secondMoment: [Float]
    /// Steps taken so far.
    public var step: Int

    public init(parameterCount: Int) {
        firstMoment = [Float](repeating: 0, count: parameterCount)
        secondMoment = [Float](repeating: 0, count: parameterCount)
        step = 0
    }

    public init(firstMoment: [Float], secondMoment: [Float], step: Int) {
        precondition(firstMoment.count == secondMoment.count)
        self.firstMoment = firstMoment
        self.secondMoment = secondMoment
        self.step = step
    }

    /// Takes one step on `parameters` with gradient `scale * gradient` at learning rate `learningRate`.
    ///
    /// - Complexity: one pass over the parameters; allocates nothing.
    /// - Parameter threads: threads to split the pass over; the result does not depend on it.
    public mutating func update(
        parameters: inout [Float],
        gradient: [Float],
        scale: Float,
        learningRate: Double,
        configuration c: AdamConfiguration,
        threads: Int = 1
    ) {
        precondition(
            parameters.count == firstMoment.count && gradient.count == parameters.count,
            "Adam: \(parameters.count) parameters, \(gradient.count) gradients, state for \(firstMoment.count)"
        )
        let constants = nextStep(scale: scale, learningRate: learningRate, configuration: c)
        let n = parameters.count
        parameters.withUnsafeMutableBufferPointer { p in
            gradient.withUnsafeBufferPointer { g in
                firstMoment.withUnsafeMutableBufferPointer { m in
                    secondMoment.withUnsafeMutableBufferPointer { v in
                        let (pp, gp, mp, vp) = (p.baseAddress!, g.baseAddress!, m.baseAddress!, v.baseAddress!)
                        let pointers = UncheckedSendable((pp, gp, mp, vp))
                        forEachChunk(count: n, parts: threads) { r in
                            let (pp, gp, mp, vp) = pointers.value
                            made_adam_f32(
                                r.count,
                                pp + r.lowerBound,
                                gp + r.lowerBound,
                                mp + r.lowerBound,
                                vp + r.lowerBound,
                                constants
                            )
                        }
                    }
                }
            }
        }
    }
}

extension AdamState {
    /// Counts a step and returns the constants of its update (see the formula on ``AdamState``),
    /// for kernels that apply it themselves.
    mutating func nextStep(
        scale: Float,
        learningRate: Double,
        configuration c: AdamConfiguration
    ) -> made_adam_constants {
        step += 1
        let t = Double(step)
        return made_adam_constants(
            scale: scale,
            decay: Float(c.weightDecay),
            beta1: Float(c.beta1),
            one_minus_beta1: Float(1 - c.beta1),
            beta2: Float(c.beta2),
            one_minus_beta2: Float(1 - c.beta2),
            step_size: Float(learningRate / (1 - Foundation.pow(c.beta1, t))),
            inverse_root_correction2: Float(1 / (1 - Foundation.pow(c.beta2, t)).squareRoot()),
            epsilon: Float(c.epsilon)
        )
    }
}

/// The reference's learning-rate schedule: `lr * gamma^floor(epoch / stepEpochs)`.
public struct StepSchedule: Sendable, Equatable, Codable {
    public var baseLearningRate: Double
    /// Epochs between decays; 0 keeps the rate constant.
    public var stepEpochs: Int
    public var gamma: Double

    public init(baseLearningRate: Double = 1e-3, stepEpochs: Int = 45, gamma: Double = 0.1) {
        self.baseLearningRate = baseLearningRate
        self.stepEpochs = stepEpochs
        self.gamma = gamma
    }

    /// The learning rate during `epoch` (0-based).
    public func learningRate(epoch: Int) -> Double {
        guard stepEpochs > 0 else { return baseLearningRate }
        return baseLearningRate * Foundation.pow(gamma, Double(epoch / stepEpochs))
    }
}
