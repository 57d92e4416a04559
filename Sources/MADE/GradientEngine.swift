import CKernels
import Dispatch

/// Computes the gradient of the summed negative log-likelihood of some examples under one mask
/// seed: the unit of work of a training step, whether one process runs it or a cluster worker.
///
/// Masks are rebuilt from `(runSeed, maskSeed)` alone and cached by seed, so any process given
/// the same configuration, parameters, examples and seed computes the same bits.
public final class GradientEngine {
    public let configuration: ModelConfiguration
    public let distribution: OutputDistribution
    public let runSeed: UInt64
    public let workspace: NetworkWorkspace<Float>
    /// The masks (and packings) of the seeds seen so far.
    public let masks: MaskPacking.Cache
    private var preparedMaskSeed: UInt64?

    /// - Parameter capacity: the largest number of examples passed to one ``gradient(data:indices:into:)``.
    /// - Parameter kernel: the arithmetic of the passes (see ``ComputeKernel``).
    public init(
        configuration: ModelConfiguration,
        distribution: OutputDistribution,
        runSeed: UInt64,
        capacity: Int,
        kernel: ComputeKernel = .sparse
    ) {
        self.configuration = configuration
        self.distribution = distribution
        self.runSeed = runSeed
        self.workspace = NetworkWorkspace(configuration: configuration, capacity: capacity, kernel: kernel)
        self.masks = MaskPacking.Cache(configuration: configuration, runSeed: runSeed)
    }

    /// The masks of `maskSeed`, built once and kept (at most `configuration.maskCount` seeds are used in training).
    public func maskSet(_ maskSeed: UInt64) -> MaskSet { masks.maskSet(maskSeed) }

    /// Starts a step: sets the masks of `maskSeed` and masks the parameters once for every shard that follows.
    public func begin(parameters: UnsafeBufferPointer<Float>, maskSeed: UInt64) {
        workspace.setMasks(maskSet(maskSeed))
        workspace.prepare(parameters: parameters)
        preparedMaskSeed = maskSeed
    }

    /// Starts a step from packed parameters (see ``MaskPacking``): one scatter, no dense vector.
    ///
    /// - Returns: whether every parameter was finite.
    @discardableResult
    public func begin(packed: UnsafeBufferPointer<Float>, packing: MaskPacking, maskSeed: UInt64) -> Bool {
        workspace.setMasks(maskSet(maskSeed))
        preparedMaskSeed = maskSeed
        return packing.activeIndices.withUnsafeBufferPointer { workspace.prepare(packed: packed, indices: $0) }
    }

    /// Starts a step on parameters already masked for `maskSeed` (see
    /// ``MaskPacking/mask(_:into:threads:)``), read where they are until the next `begin`.
    public func begin(inPlace masked: UnsafeBufferPointer<Float>, maskSeed: UInt64) {
        workspace.setMasks(maskSet(maskSeed))
        workspace.prepare(inPlace: masked)
        preparedMaskSeed = maskSeed
    }

    /// Starts a step on parameters already in the compute order of `maskSeed`'s masks, masked
    /// (see ``BlockPartition/gatherMasked(_:into:layout:threads:)``; sparse kernel), read where
    /// they are until the next `begin`.
    public func begin(computeOrder masked: UnsafeBufferPointer<Float>, maskSeed: UInt64) {
        workspace.setMasks(maskSet(maskSeed))
        workspace.prepare(computeOrder: masked)
        preparedMaskSeed = maskSeed
    }

    /// ``begin(parameters:maskSeed:)`` for an array.
    public func begin(parameters: [Float], maskSeed: UInt64) {
        parameters.withUnsafeBufferPointer { begin(parameters: $0, maskSeed: maskSeed) }
    }

    /// Writes the gradient of the summed NLL of `data` rows `indices` into `gradient` and returns that sum (nats).
    ///
    /// With `maskingGradient` false, masked-out weights' entries are left unzeroed (see
    /// ``NetworkWorkspace/backward(into:inputGradient:maskingGradient:)``): for callers that pack.
    ///
    /// - Precondition: one of the `begin` methods was called for this step.
    ///
    /// With `computeOrder` (sparse kernel) the gradient stays in the compute order of the step's
    /// masks, for ``adamStep(state:gradient:scale:learningRate:configuration:nextMaskSeed:)``.
    ///
    /// `layerDone(k)` reports matrix `k` of ``ParameterLayout/matrices`` done as the backward pass
    /// finishes it (see ``NetworkWorkspace/backward(into:inputGradient:maskingGradient:computeOrder:layerDone:)``):
    /// its entries of `gradient` are final, and its parameters are read no more in this call.
    public func gradient(
        data: DataMatrix,
        indices: UnsafeBufferPointer<Int32>,
        into gradient: UnsafeMutableBufferPointer<Float>,
        maskingGradient: Bool = true,
        computeOrder: Bool = false,
        layerDone: ((Int) -> Void)? = nil
    ) -> Double {
        precondition(preparedMaskSeed != nil, "GradientEngine: begin a step first")
        workspace.loadRows(from: data, indices: indices)
        workspace.forward()
        let loss = workspace.lossAndGradient(distribution)
        workspace.backward(
            into: gradient,
            maskingGradient: maskingGradient,
            computeOrder: computeOrder,
            layerDone: layerDone
        )
        return loss
    }

    /// ``gradient(data:indices:into:maskingGradient:computeOrder:)`` in the compute order of the
    /// step's masks, masked: the compute order of the layout-order gradient (every masked-out
    /// weight +0), written without moving a weight. The backward pass writes inside the bands
    /// only; with `clearingOutside` the weights outside them are set to +0 too, which `gradient`
    /// needs unless it held this mask's compute-order gradient before.
    ///
    /// - Precondition: the sparse kernel.
    ///
    /// `layerDone(k)`: as in ``gradient(data:indices:into:maskingGradient:computeOrder:layerDone:)``,
    /// once matrix `k`'s entries are masked too.
    public func gradientInComputeOrder(
        data: DataMatrix,
        indices: UnsafeBufferPointer<Int32>,
        into gradient: UnsafeMutableBufferPointer<Float>,
        clearingOutside: Bool,
        layerDone: ((Int) -> Void)? = nil
    ) -> Double {
        precondition(workspace.kernel == .sparse, "GradientEngine: compute order is the sparse kernel's")
        let blocks = maskSet(preparedMaskSeed!).blocks
        let layout = workspace.layout
        let out = gradient.baseAddress!
        return self.gradient(data: data, indices: indices, into: gradient, computeOrder: true) { k in
            blocks.maskDropped(out, layout: layout, outside: clearingOutside, matrix: k)
            layerDone?(k)
        }
    }

    /// ``gradient(data:indices:into:)`` for arrays.
    public func gradient(
        data: DataMatrix,
        indices: ArraySlice<Int32>,
        into gradient: inout [Float],
        maskingGradient: Bool = true,
        computeOrder: Bool = false
    ) -> Double {
        indices.withUnsafeBufferPointer { i in
            gradient.withUnsafeMutableBufferPointer { g in
                self.gradient(
                    data: data,
                    indices: i,
                    into: g,
                    maskingGradient: maskingGradient,
                    computeOrder: computeOrder
                )
            }
        }
    }

    /// The mask seed in whose compute order the caller's parameters and Adam moments are held
    /// (sparse kernel), between a ``hold(_:maskSeed:)`` and a ``release(_:)``.
    public private(set) var heldMaskSeed: UInt64?

    /// Turns `state`'s parameters and Adam moments, in place, into the compute order of
    /// `maskSeed`'s masks (sparse kernel), and starts a step on them: until ``release(_:)`` the
    /// steps run ``beginHeld()``, ``gradient(data:indices:into:maskingGradient:computeOrder:)`` in
    /// compute order and ``adamStepHeld(_:gradient:scale:learningRate:configuration:copyInto:threads:)`` on the same
    /// state, and nothing changes order. Meanwhile `state` is not in layout order: nothing else may
    /// read its parameters or moments.
    ///
    /// - Complexity: O(number of parameters); no second copy of the parameters or moments.
    public func hold(_ state: inout TrainingState, maskSeed: UInt64) {
        precondition(
            workspace.kernel == .sparse,
            "GradientEngine: only the sparse kernel holds parameters in compute order"
        )
        precondition(heldMaskSeed == nil, "GradientEngine: parameters are already held")
        begin(parameters: state.parameters, maskSeed: maskSeed)
        permute(&state, maskSeed: maskSeed, toCompute: true)
        heldMaskSeed = maskSeed
        heldValues = UnsafeBufferPointer(workspace.compute)
        heldOthers = []
    }

    /// Where the masked held parameters are: the workspace's buffer, or where the last held Adam
    /// step was asked to copy them.
    private var heldValues: UnsafeBufferPointer<Float>?

    /// Turns the held `state` back into layout order, in place, and ends the hold.
    public func release(_ state: inout TrainingState) {
        guard let seed = heldMaskSeed else { return }
        permute(&state, maskSeed: seed, toCompute: false)
        heldMaskSeed = nil
        heldValues = nil
        heldOthers = []
    }

    /// The further masks of a step of several masks whose parameters are held in the compute
    /// order of one (``heldMaskSeed``): each with where its masked parameters lie in its own
    /// compute order (``RelativeOrder/gatherMasked(_:into:layout:threads:)``'s form), which
    /// every held Adam step of such a step writes anew.
    public private(set) var heldOthers: [(maskSeed: UInt64, values: UnsafeMutablePointer<Float>)] = []

    private var relativeOrders: [[UInt64]: RelativeOrder] = [:]

    /// How `other`'s compute order lies in `held`'s, made once per pair and kept.
    public func relativeOrder(held: UInt64, other: UInt64) -> RelativeOrder {
        if let known = relativeOrders[[held, other]] { return known }
        if relativeOrders.count >= 64 { relativeOrders = [:] }
        let order = RelativeOrder(held: maskSet(held).blocks, other: maskSet(other).blocks)
        relativeOrders[[held, other]] = order
        return order
    }

    /// Makes `seeds` (masks besides the held one) the held parameters' further masks, their
    /// masked parameters in `destinations` (one each, the layout's size): written now from the
    /// held `state` unless the last held Adam step left them there. Empty seeds: none.
    public func holdOthers(
        _ seeds: [UInt64],
        in destinations: [UnsafeMutableBufferPointer<Float>],
        state: TrainingState,
        threads: Int = 1
    ) {
        guard let held = heldMaskSeed else { preconditionFailure("GradientEngine: no parameters held") }
        precondition(
            seeds.count <= destinations.count,
            "holdOthers: \(seeds.count) masks for \(destinations.count) places"
        )
        let wanted = zip(seeds, destinations).map { (maskSeed: $0, values: $1.baseAddress!) }
        precondition(
            destinations.prefix(seeds.count).allSatisfy { $0.count == workspace.layout.count },
            "holdOthers: a place of another size than the layout"
        )
        let same =
            wanted.count == heldOthers.count
            && zip(wanted, heldOthers).allSatisfy { $0.maskSeed == $1.maskSeed && $0.values == $1.values }
        if same { return }
        let layout = workspace.layout
        state.parameters.withUnsafeBufferPointer { p in
            for (seed, out) in wanted {
                relativeOrder(held: held, other: seed).gatherMasked(
                    p.baseAddress!,
                    into: out,
                    layout: layout,
                    threads: threads
                )
            }
        }
        heldOthers = wanted
    }

    private func permute(_ state: inout TrainingState, maskSeed: UInt64, toCompute: Bool) {
        let blocks = maskSet(maskSeed).blocks
        let workspace = self.workspace
        precondition(
            state.parameters.count == workspace.layout.count
                && state.adam.firstMoment.count == workspace.layout.count
                && state.adam.secondMoment.count == workspace.layout.count,
            "GradientEngine: a state of \(state.parameters.count) parameters for a layout of "
                + "\(workspace.layout.count)"
        )
        let layout = workspace.layout
        func permute(_ values: inout [Float]) {
            values.withUnsafeMutableBufferPointer {
                blocks.permute(
                    $0.baseAddress!,
                    layout: layout,
                    toCompute: toCompute
                )
            }
        }
        permute(&state.parameters)
        permute(&state.adam.firstMoment)
        permute(&state.adam.secondMoment)
    }

    /// The held parameters masked in compute order, as the step's passes read them (see
    /// ``BlockPartition/gatherMasked(_:into:layout:threads:)``; the entries outside the bands
    /// hold anything): what ``hold(_:maskSeed:)`` or the last
    /// ``adamStepHeld(_:gradient:scale:learningRate:configuration:copyInto:threads:)`` left (in
    /// the workspace, or where that step copied them), valid until the next step or `begin`.
    public var heldParameters: UnsafeBufferPointer<Float> {
        guard heldMaskSeed != nil, let values = heldValues else {
            preconditionFailure("GradientEngine: no parameters held")
        }
        return values
    }

    /// Starts a step on the held parameters, where the last Adam step (or ``hold(_:maskSeed:)``)
    /// left them masked.
    public func beginHeld() {
        guard let seed = heldMaskSeed else { preconditionFailure("GradientEngine: no parameters held") }
        workspace.setMasks(maskSet(seed))
        workspace.prepare(computeOrder: heldParameters)
        preparedMaskSeed = seed
    }

    /// Applies Adam to the held `state` with `scale * gradient`, the gradient in compute order
    /// (see ``gradient(data:indices:into:maskingGradient:computeOrder:)``, summed over shards
    /// elementwise), and counts the step: the same bits as
    /// ``AdamState/update(parameters:gradient:scale:learningRate:configuration:threads:)``
    /// on the parameters and gradient in layout order.
    ///
    /// - Parameter copyInto: where the updated parameters go, masked, for the next step (see
    ///   ``heldParameters``; by default the workspace): a buffer of the layout's size whose
    ///   entries outside the bands nothing reads.
    /// - Parameter threads: threads to split the pass over (a matrix each); the result does not depend on it.
    public func adamStepHeld(
        _ state: inout TrainingState,
        gradient: [Float],
        scale: Float,
        learningRate: Double,
        configuration: AdamConfiguration,
        copyInto destination: UnsafeMutableBufferPointer<Float>? = nil,
        threads: Int = 1
    ) {
        let count = workspace.layout.count
        if let destination {
            precondition(
                destination.count == count,
                "adamStep: a copy of \(destination.count) values for a layout of \(count)"
            )
        }
        let out = destination?.baseAddress ?? workspace.compute.baseAddress!
        let constants = state.adam.nextStep(scale: scale, learningRate: learningRate, configuration: configuration)
        if heldOthers.isEmpty {
            applyHeld(&state, gradient: gradient, constants: constants, into: out, threads: threads)
        } else {
            applyHeldSeveral(&state, gradient: gradient, constants: constants, into: out, threads: threads)
        }
        heldValues = UnsafeBufferPointer(start: out, count: count)
    }

    /// The held Adam step of a step of several masks (``heldOthers`` not empty): the gradient,
    /// summed over the step's masks, is used as it is (+0 outside their union), as in layout
    /// order; the updated parameters go masked into `out` for the held mask and into each
    /// further mask's place in its own compute order.
    private func applyHeldSeveral(
        _ state: inout TrainingState,
        gradient: [Float],
        constants: made_adam_constants,
        into out: UnsafeMutablePointer<Float>,
        threads: Int
    ) {
        guard let seed = heldMaskSeed else { preconditionFailure("GradientEngine: no parameters held") }
        precondition(
            gradient.count == state.parameters.count,
            "adamStep: \(gradient.count) gradients for \(state.parameters.count) parameters"
        )
        let layout = workspace.layout
        // The first further mask's copy is written in Adam's pass; any others after it.
        let first = heldOthers.first.map { (order: relativeOrder(held: seed, other: $0.maskSeed), values: $0.values) }
        state.parameters.withUnsafeMutableBufferPointer { p in
            gradient.withUnsafeBufferPointer { g in
                state.adam.firstMoment.withUnsafeMutableBufferPointer { m in
                    state.adam.secondMoment.withUnsafeMutableBufferPointer { v in
                        let update = Self.heldSeveralUpdate(
                            blocks: maskSet(seed).blocks,
                            layout: layout,
                            state: (p.baseAddress!, g.baseAddress!, m.baseAddress!, v.baseAddress!) as HeldPointers,
                            constants: constants,
                            out: out,
                            first: first
                        )
                        if threads > 1 && layout.matrices.count > 1 {
                            // Each matrix whole on one thread: elementwise, so the bits do not depend on it.
                            let box = UncheckedSendable(update)
                            DispatchQueue.concurrentPerform(iterations: layout.matrices.count) { box.value($0) }
                        } else {
                            for k in layout.matrices.indices { update(k) }
                        }
                    }
                }
            }
            for (other, values) in heldOthers.dropFirst() {
                relativeOrder(held: seed, other: other).gatherMasked(
                    UnsafePointer(p.baseAddress!),
                    into: values,
                    layout: layout,
                    threads: threads
                )
            }
        }
    }

    /// Parameters, gradient, first and second moments.
    private typealias HeldPointers = (
        UnsafeMutablePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>
    )

    /// The update of matrix `k` (weights and bias) in ``applyHeldSeveral(_:gradient:constants:into:threads:)``.
    private static func heldSeveralUpdate(
        blocks: BlockPartition,
        layout: ParameterLayout,
        state: HeldPointers,
        constants: made_adam_constants,
        out: UnsafeMutablePointer<Float>,
        first: (order: RelativeOrder, values: UnsafeMutablePointer<Float>)?
    ) -> (Int) -> Void {
        let (p, g, m, v) = state
        return { k in
            let b = blocks.matrices[k]
            let matrix = layout.matrices[k]
            let o = matrix.offset
            if let (order, values) = first {
                made_adam_copy_gather_f32(
                    b.rows,
                    b.columns,
                    p + o,
                    g + o,
                    m + o,
                    v + o,
                    b.activeRows,
                    b.bandTable,
                    b.bands.count,
                    out + o,
                    constants,
                    values + o,
                    order.heldRows[k],
                    order.otherColumns[k],
                    order.other.matrices[k].activeRows,
                    order.other.matrices[k].bandTable,
                    order.other.matrices[k].bands.count
                )
            } else {
                made_adam_copy_f32(
                    b.rows,
                    b.columns,
                    p + o,
                    g + o,
                    m + o,
                    v + o,
                    b.activeRows,
                    b.bandTable,
                    b.bands.count,
                    out + o,
                    constants
                )
            }
            if let bias = matrix.biasOffset {
                made_adam_f32(matrix.columns, p + bias, g + bias, m + bias, v + bias, constants)
                (out + bias).update(from: p + bias, count: matrix.columns)
                if let (order, values) = first {
                    let columns = order.heldColumns[k]
                    for j in 0..<matrix.columns { values[bias + Int(columns[j])] = p[bias + j] }
                }
            }
        }
    }

    /// An Adam step on held parameters applied matrix by matrix: see
    /// ``beginAdamStepHeld(_:scale:learningRate:configuration:copyInto:)``.
    public struct HeldAdamStep {
        let constants: made_adam_constants
        let out: UnsafeMutablePointer<Float>
        let maskSeed: UInt64
    }

    /// Counts an Adam step on the held `state`, as
    /// ``adamStepHeld(_:gradient:scale:learningRate:configuration:copyInto:threads:)`` does, and
    /// returns it for ``adamStepHeld(_:gradient:matrix:step:)`` to apply matrix by matrix, in any
    /// order, each matrix of ``ParameterLayout/matrices`` once: together the same bits as the
    /// whole step. Meanwhile the held parameters are those the step leaves (``heldParameters``).
    public func beginAdamStepHeld(
        _ state: inout TrainingState,
        scale: Float,
        learningRate: Double,
        configuration: AdamConfiguration,
        copyInto destination: UnsafeMutableBufferPointer<Float>? = nil
    ) -> HeldAdamStep {
        guard let seed = heldMaskSeed else { preconditionFailure("GradientEngine: no parameters held") }
        precondition(heldOthers.isEmpty, "adamStep: matrix by matrix for a step of one mask only")
        let count = workspace.layout.count
        if let destination {
            precondition(
                destination.count == count,
                "adamStep: a copy of \(destination.count) values for a layout of \(count)"
            )
        }
        let out = destination?.baseAddress ?? workspace.compute.baseAddress!
        let constants = state.adam.nextStep(scale: scale, learningRate: learningRate, configuration: configuration)
        heldValues = UnsafeBufferPointer(start: out, count: count)
        return HeldAdamStep(constants: constants, out: out, maskSeed: seed)
    }

    /// Applies `step` to matrix `k` of ``ParameterLayout/matrices`` (weights and bias) of the
    /// held `state`, with `scale * gradient` read at that matrix's entries (compute order, the
    /// layout's size): the bits ``adamStepHeld(_:gradient:scale:learningRate:configuration:copyInto:threads:)``
    /// gives that matrix. The masked parameters go where the step said.
    public func adamStepHeld(
        _ state: inout TrainingState,
        gradient: UnsafePointer<Float>,
        matrix k: Int,
        step: HeldAdamStep
    ) {
        precondition(heldMaskSeed == step.maskSeed, "adamStep: a step begun on other held parameters")
        precondition(workspace.layout.matrices.indices.contains(k), "adamStep: no matrix \(k)")
        let workspace = self.workspace
        let constants = step.constants
        let out = step.out
        state.parameters.withUnsafeMutableBufferPointer { p in
            state.adam.firstMoment.withUnsafeMutableBufferPointer { m in
                state.adam.secondMoment.withUnsafeMutableBufferPointer { v in
                    workspace.adamStep(
                        parameters: p.baseAddress!,
                        gradient: gradient,
                        firstMoment: m.baseAddress!,
                        secondMoment: v.baseAddress!,
                        constants: constants,
                        into: out,
                        only: k
                    )
                }
            }
        }
    }

    private func applyHeld(
        _ state: inout TrainingState,
        gradient: [Float],
        constants: made_adam_constants,
        into out: UnsafeMutablePointer<Float>,
        threads: Int
    ) {
        precondition(heldMaskSeed != nil, "GradientEngine: no parameters held")
        precondition(
            gradient.count == state.parameters.count,
            "adamStep: \(gradient.count) gradients for \(state.parameters.count) parameters"
        )
        let workspace = self.workspace
        state.parameters.withUnsafeMutableBufferPointer { p in
            gradient.withUnsafeBufferPointer { g in
                state.adam.firstMoment.withUnsafeMutableBufferPointer { m in
                    state.adam.secondMoment.withUnsafeMutableBufferPointer { v in
                        workspace.adamStep(
                            parameters: p.baseAddress!,
                            gradient: g.baseAddress!,
                            firstMoment: m.baseAddress!,
                            secondMoment: v.baseAddress!,
                            constants: constants,
                            into: out,
                            threads: threads
                        )
                    }
                }
            }
        }
    }
}

/// Sums shard gradients in an order fixed by shard index: a binary tree over `0..<S`.
///
/// Level `k` adds shard-slot `i + 2^k` into slot `i` for every `i` that is a multiple of
/// `2^(k+1)`, so slot 0 ends with `((g0 + g1) + (g2 + g3)) + ...`. Any process holding a whole
/// aligned block `[j * 2^k, (j + 1) * 2^k)` may add it in advance by the same rule and get the
/// bits the full reduction would have had for that block: the reduction is bitwise the same
/// whoever computed which shard.
public enum GradientReducer {
    /// Reduces `shards` in place into `shards[0]`, in tree order.
    ///
    /// - Complexity: O(S x n) additions; allocates nothing.
    public static func reduce(_ shards: inout [[Float]], threads: Int = 1) {
        let s = shards.count
        var stride = 1
        while stride < s {
            var i = 0
            while i + stride < s {
                add(&shards, from: i + stride, to: i, threads: threads)
                i += 2 * stride
            }
            stride *= 2
        }
    }

    /// Reduces the `count` values behind each of `shards` in tree order and writes the sum to
    /// `out`, with the same bits as ``reduce(_:threads:)``. The shards serve as scratch: every
    /// level but the last adds in place.
    ///
    /// - Returns: whether every value of the sum is finite. A term that is not finite makes its
    ///   sum not finite, so false means some term was not, or a sum overflowed.
    ///
    /// With `partials`, the sums of every level but the last go to `partials[i]` instead of
    /// `shards[i]` (the first level reads `shards`, the later ones `partials`): the same bits,
    /// and the shards are only read.
    @discardableResult
    public static func reduce(
        _ shards: [UnsafeMutablePointer<Float>],
        count: Int,
        into out: UnsafeMutablePointer<Float>,
        threads: Int = 1,
        partials: [UnsafeMutablePointer<Float>]? = nil
    ) -> Bool {
        let s = shards.count
        precondition(s > 0, "GradientReducer: no shards")
        precondition(partials.map { $0.count == s } ?? true, "GradientReducer: one partial sum per shard")
        if s == 1 { return made_copy_finite_f32(count, shards[0], out) != 0 }
        var current = shards
        var finite = true
        var stride = 1
        while stride < s {
            var i = 0
            while i + stride < s {
                let target = 2 * stride >= s ? out : partials?[i] ?? shards[i]
                finite = add(current[i], current[i + stride], into: target, count: count, threads: threads)
                current[i] = target
                i += 2 * stride
            }
            stride *= 2
        }
        return finite
    }

    /// The same tree over scalars (the loss sums of the shards).
    public static func reduce(_ values: [Double]) -> Double {
        var v = values
        let s = v.count
        guard s > 0 else { return 0 }
        var stride = 1
        while stride < s {
            var i = 0
            while i + stride < s {
                v[i] += v[i + stride]
                i += 2 * stride
            }
            stride *= 2
        }
        return v[0]
    }

    private static func add(_ shards: inout [[Float]], from source: Int, to target: Int, threads: Int) {
        let n = shards[target].count
        precondition(shards[source].count == n, "GradientReducer: shards of different sizes")
        shards.withUnsafeMutableBufferPointer { all in
            all[target].withUnsafeMutableBufferPointer { t in
                all[source].withUnsafeMutableBufferPointer { s in
                    _ = add(t.baseAddress!, s.baseAddress!, into: t.baseAddress!, count: n, threads: threads)
                }
            }
        }
    }

    /// `out[i] = a[i] + b[i]`; `out` may be `a`. Returns whether every sum is finite.
    @discardableResult
    private static func add(
        _ a: UnsafeMutablePointer<Float>,
        _ b: UnsafeMutablePointer<Float>,
        into out: UnsafeMutablePointer<Float>,
        count n: Int,
        threads: Int
    ) -> Bool {
        let pointers = UncheckedSendable((a, b, out))
        return allChunks(count: n, parts: threads) { r in
            let (a, b, out) = pointers.value
            return made_add_f32(r.count, a + r.lowerBound, b + r.lowerBound, out + r.lowerBound) != 0
        }
    }
}
