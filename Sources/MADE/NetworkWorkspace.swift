import CKernels

/// The buffers and kernels of MADE's forward and backward passes, for batches of up to
/// `capacity` examples, computing in `T`.
///
/// A step is:
/// 1. ``setMasks(_:)`` once per mask seed (cached: a repeated seed costs nothing);
/// 2. ``prepare(parameters:)`` (the one mask multiply of the step, `W_l * M_l` for every
///    matrix), ``prepare(packed:indices:)`` (one scatter) or ``prepare(inPlace:)`` (parameters
///    already masked, read where they are);
/// 3. ``loadRows(from:indices:)`` then ``forward()`` then a loss pass such as
///    ``bernoulliLossAndGradient()`` and ``backward(into:inputGradient:)``, once per shard.
///
/// Hidden units are ReLUs. Nothing here allocates after the first pass of each kind (the sparse
/// kernel makes its scratch when first asked for, and grows the forward product's only when the
/// output gradient's buffer cannot hold one row of it); every buffer is owned by the
/// workspace and reached only inside its methods, except parameters lent by
/// ``prepare(inPlace:)``. Weights are row-major `in x out`, so a batch
/// `X` (rows x in) maps to `X W`, one `?gemm` per layer.
///
/// With the ``ComputeKernel/sparse`` kernel the workspace holds the parameters, inputs,
/// activations and outputs in the compute order of the masks' ``BlockPartition`` and multiplies
/// only its bands (see NetworkWorkspace-sparse.swift); what goes in and comes out through the
/// public methods stays in layout order.
public final class NetworkWorkspace<T: BLASScalar> {
    public let configuration: ModelConfiguration
    public let layout: ParameterLayout
    public let capacity: Int
    public let kernel: ComputeKernel
    /// With the sparse kernel, loaded binary rows with at most this fraction of ones go through the
    /// first layer (and the direct connections) as sums of selected weight rows instead of a product.
    /// The default is the measured crossover of `made bench --density` (see README).
    public var sparseInputLimit: Double = NetworkWorkspace.defaultSparseInputLimit
    /// The measured crossover density of the binary first-layer path.
    public static var defaultSparseInputLimit: Double { 0.35 }
    /// ``ParameterLayout/matrices``, kept: the passes look them up every step.
    let matrices: [ParameterLayout.Matrix]

    /// Rows loaded by the last ``loadRows(from:indices:)``.
    public internal(set) var rows = 0
    /// The `(runSeed, maskSeed)` whose masks are materialized.
    public private(set) var maskKey: (runSeed: UInt64, maskSeed: UInt64)?

    let input: UnsafeMutableBufferPointer<T>
    let hidden: [UnsafeMutableBufferPointer<T>]
    let output: UnsafeMutableBufferPointer<T>
    let outputGradient: UnsafeMutableBufferPointer<T>
    let deltas: [UnsafeMutableBufferPointer<T>]
    /// Per matrix of ``ParameterLayout/matrices``: the 0/1 mask (dense kernel only).
    let masks: [UnsafeMutableBufferPointer<UInt8>]
    /// The step's parameters with the masks applied, in parameter-layout order, when the
    /// workspace holds its own copy (the sparse kernel makes it only for packed parameters).
    private(set) var prepared: UnsafeMutableBufferPointer<T>?
    /// Sparse kernel: the blocks of the masks set.
    var blocks: BlockPartition?
    /// Sparse kernel: the masked parameters in compute order, at their layout offsets.
    let compute: UnsafeMutableBufferPointer<T>
    /// Sparse kernel: a row of scratch for unpermuting a weight gradient in place and one
    /// layer's bias sums, made on the first backward pass.
    var computeGradient: UnsafeMutableBufferPointer<T>?
    /// Sparse kernel: which rows an in-place unpermutation has moved.
    var rowsDone: [UInt8] = []
    /// Sparse kernel: whether the loaded rows go through the first layer as selected rows, and
    /// which: row `r` selects the compute inputs `rowIndex[rowStart[r] ..< rowStart[r + 1]]`.
    var binaryInput = false
    let rowStart: UnsafeMutableBufferPointer<Int32>
    let rowIndex: UnsafeMutableBufferPointer<Int32>
    /// The transpose of the selection, for the weight gradient, made on the first backward pass:
    /// input `i` is selected by rows `inputRows[inputStart[i] ..< inputStart[i + 1]]`.
    var inputStart: UnsafeMutableBufferPointer<Int32>?
    var inputRows: UnsafeMutableBufferPointer<Int32>?
    /// Sparse kernel: input gradients in compute order, made when first asked for.
    var inputScratch: UnsafeMutableBufferPointer<T>?
    /// Sparse kernel, float: the staircase products' scratch (packed rows and tiles of a weight
    /// matrix, see `made_staircase_scratch_floats`) when the output gradient's buffer does not
    /// serve, made when first asked for, and the input gradient's list of tiles.
    var staircaseScratch: UnsafeMutableBufferPointer<Float>?
    var staircaseTiles: UnsafeMutableBufferPointer<Int32>?
    /// Where the passes read the masked parameters: ``prepared``, or memory the caller lent
    /// with ``prepare(inPlace:)``.
    var parameters: UnsafePointer<T>
    /// The masks whose zeros ``prepared`` holds at masked-out weights, after a scatter.
    private var scatteredKey: (runSeed: UInt64, maskSeed: UInt64)?
    /// Per-row losses of the last loss pass, in `Double`.
    let rowLosses: UnsafeMutableBufferPointer<Double>

    /// Allocates every buffer for batches of up to `capacity` rows.
    public init(configuration: ModelConfiguration, capacity: Int, kernel: ComputeKernel = .dense) {
        precondition(capacity >= 1, "NetworkWorkspace: capacity must be positive")
        self.configuration = configuration
        self.layout = ParameterLayout(configuration)
        self.capacity = capacity
        self.kernel = kernel
        func buffer(_ n: Int) -> UnsafeMutableBufferPointer<T> {
            let b = UnsafeMutableBufferPointer<T>.allocate(capacity: max(n, 1))
            b.initialize(repeating: 0)
            return b
        }
        input = buffer(capacity * configuration.inputCount)
        hidden = configuration.hiddenSizes.map { buffer(capacity * $0) }
        output = buffer(capacity * configuration.outputCount)
        outputGradient = buffer(capacity * configuration.outputCount)
        let widest = configuration.hiddenSizes.max() ?? 0
        deltas = widest > 0 ? [buffer(capacity * widest), buffer(capacity * widest)] : []
        matrices = layout.matrices
        let sparse = kernel == .sparse
        masks = matrices.map {
            let b = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: sparse ? 1 : max($0.count, 1))
            b.initialize(repeating: 0)
            return b
        }
        prepared = sparse ? nil : buffer(layout.count)
        compute = buffer(sparse ? layout.count : 0)
        func indices(_ n: Int) -> UnsafeMutableBufferPointer<Int32> {
            let b = UnsafeMutableBufferPointer<Int32>.allocate(capacity: max(n, 1))
            b.initialize(repeating: 0)
            return b
        }
        rowStart = indices(sparse ? capacity + 1 : 0)
        rowIndex = indices(sparse ? capacity * configuration.inputCount : 0)
        parameters = UnsafePointer((prepared ?? compute).baseAddress!)
        rowLosses = UnsafeMutableBufferPointer<Double>.allocate(capacity: capacity)
        rowLosses.initialize(repeating: 0)
    }

    deinit {
        input.deallocate()
        hidden.forEach { $0.deallocate() }
        output.deallocate()
        outputGradient.deallocate()
        deltas.forEach { $0.deallocate() }
        masks.forEach { $0.deallocate() }
        prepared?.deallocate()
        compute.deallocate()
        computeGradient?.deallocate()
        rowStart.deallocate()
        rowIndex.deallocate()
        inputStart?.deallocate()
        inputRows?.deallocate()
        inputScratch?.deallocate()
        staircaseScratch?.deallocate()
        staircaseTiles?.deallocate()
        rowLosses.deallocate()
    }

    // MARK: Masks and parameters

    /// Materializes the masks of `maskSet` in `T`, unless they already are.
    ///
    /// - Complexity: O(number of weights) when the seed changes, O(1) otherwise.
    public func setMasks(_ maskSet: MaskSet) {
        if let key = maskKey, key.runSeed == maskSet.runSeed, key.maskSeed == maskSet.maskSeed { return }
        precondition(
            maskSet.blocks.matrices.map { $0.rows * $0.columns } == matrices.map(\.count),
            "setMasks: mask set does not fit this network"
        )
        if kernel == .sparse {
            blocks = maskSet.blocks
            maskKey = (maskSet.runSeed, maskSet.maskSeed)
            scatteredKey = nil
            return
        }
        let source = maskSet.matrices
        for (m, bits) in zip(masks, source) {
            precondition(bits.count == m.count, "setMasks: mask of \(bits.count) entries for a matrix of \(m.count)")
            for i in 0..<bits.count { m[i] = bits[i] == 0 ? 0 : 1 }  // copy, normalized to 0/1
        }
        maskKey = (maskSet.runSeed, maskSet.maskSeed)
        scatteredKey = nil
    }

    /// Takes the step's parameters: masks every weight matrix (`W * M`, with masked-out entries
    /// set to +0) and copies the biases.
    ///
    /// - Precondition: masks are set and `parameters.count == layout.count`.
    /// - Complexity: O(number of parameters): the one mask multiply of a step.
    public func prepare(parameters: UnsafeBufferPointer<T>) {
        precondition(maskKey != nil, "prepare: set the masks first")
        precondition(
            parameters.count == layout.count,
            "prepare: \(parameters.count) parameters for a layout of \(layout.count)"
        )
        scatteredKey = nil
        if kernel == .sparse { return gatherCompute(from: parameters.baseAddress!) }
        let out = prepared!.baseAddress!
        self.parameters = UnsafePointer(out)
        let p = parameters.baseAddress!
        for (k, matrix) in matrices.enumerated() {
            maskSelect(p + matrix.offset, masks[k].baseAddress!, out + matrix.offset, count: matrix.count)
            if let b = matrix.biasOffset {
                (out + b).update(from: p + b, count: matrix.columns)
            }
        }
    }

    /// Reads the step's parameters where they are, without a copy: `parameters` already holds
    /// them masked (every masked-out weight +0, as ``prepare(parameters:)`` would leave them).
    /// The caller keeps that memory valid and unchanged until the next `prepare`.
    ///
    /// - Precondition: masks are set and `parameters.count == layout.count`.
    /// - Complexity: O(1).
    public func prepare(inPlace parameters: UnsafeBufferPointer<T>) {
        precondition(maskKey != nil, "prepare: set the masks first")
        precondition(
            parameters.count == layout.count,
            "prepare: \(parameters.count) parameters for a layout of \(layout.count)"
        )
        if kernel == .sparse { return gatherCompute(from: parameters.baseAddress!) }
        self.parameters = parameters.baseAddress!
    }

    /// Reads the step's parameters where they are, in the compute order of the masks set, masked
    /// (as ``BlockPartition/gatherMasked(_:into:layout:threads:)`` leaves them), without a copy.
    /// The caller keeps that memory valid and unchanged until the next `prepare`.
    ///
    /// - Precondition: the sparse kernel, masks set, and `parameters.count == layout.count`.
    /// - Complexity: O(1).
    public func prepare(computeOrder parameters: UnsafeBufferPointer<T>) {
        precondition(kernel == .sparse, "prepare: compute order is the sparse kernel's")
        precondition(maskKey != nil, "prepare: set the masks first")
        precondition(
            parameters.count == layout.count,
            "prepare: \(parameters.count) parameters for a layout of \(layout.count)"
        )
        self.parameters = parameters.baseAddress!
    }

    /// Takes the step's parameters in packed form: `packed[k]` is parameter `indices[k]`, and
    /// every parameter not listed is masked out. Gives the same values as
    /// ``prepare(parameters:)`` with the dense vector, in one scatter: the zeros of masked-out
    /// weights are written only when the masks changed since the last scatter.
    ///
    /// - Precondition: masks are set; `indices` are ascending layout indices, all active.
    /// - Returns: whether every value was finite (all are written either way).
    /// - Complexity: O(`packed.count`), plus O(number of parameters) when the masks changed.
    @discardableResult
    public func prepare(packed: UnsafeBufferPointer<T>, indices: UnsafeBufferPointer<Int32>) -> Bool {
        precondition(maskKey != nil, "prepare: set the masks first")
        precondition(packed.count == indices.count, "prepare: \(packed.count) values for \(indices.count) indices")
        if prepared == nil {
            prepared = .allocate(capacity: max(layout.count, 1))
            prepared!.initialize(repeating: 0)
            scatteredKey = nil
        }
        let prepared = self.prepared!
        defer { if kernel == .sparse { gatherCompute(from: UnsafePointer(prepared.baseAddress!)) } }
        if kernel == .dense { parameters = UnsafePointer(prepared.baseAddress!) }
        if scatteredKey == nil || scatteredKey! != maskKey! {
            prepared.update(repeating: 0)
            scatteredKey = maskKey
        }
        precondition(indices.last.map { Int($0) < layout.count } ?? true, "prepare: index beyond the layout")
        if isFloat, packed.count > 0 {
            return made_scatter_f32(
                packed.count,
                indices.baseAddress!,
                float(packed.baseAddress!),
                float(prepared.baseAddress!)
            ) != 0
        }
        var finite = true
        for k in 0..<packed.count {
            prepared[Int(indices[k])] = packed[k]
            finite = finite && packed[k].isFinite
        }
        return finite
    }

    /// ``prepare(parameters:)`` for an array.
    public func prepare(parameters: [T]) {
        parameters.withUnsafeBufferPointer { prepare(parameters: $0) }
    }

    /// The masked weights of matrix `k` of ``ParameterLayout/matrices``.
    @inline(__always)
    private func weights(_ k: Int) -> UnsafePointer<T> {
        parameters + matrices[k].offset
    }

    // MARK: Forward

    /// Copies the examples `indices` of `data` into the input buffer, in order.
    public func loadRows(from data: DataMatrix, indices: UnsafeBufferPointer<Int32>) {
        precondition(indices.count <= capacity, "loadRows: \(indices.count) rows for a capacity of \(capacity)")
        precondition(
            data.dimension == configuration.inputCount,
            "loadRows: data of dimension \(data.dimension) for nin = \(configuration.inputCount)"
        )
        if kernel == .sparse { return loadComputeRows(from: data, indices: indices) }
        data.copyRows(indices, into: input)
        rows = indices.count
    }

    /// ``loadRows(from:indices:)`` for an array of row indices.
    public func loadRows(from data: DataMatrix, indices: [Int32]) {
        indices.withUnsafeBufferPointer { loadRows(from: data, indices: $0) }
    }

    /// Sets the input rows directly (row-major, `values.count / nin` rows).
    public func loadRows(_ values: [T]) {
        let n = values.count / configuration.inputCount
        precondition(
            n * configuration.inputCount == values.count && n <= capacity,
            "loadRows: bad input size \(values.count)"
        )
        if kernel == .sparse { return values.withUnsafeBufferPointer { loadComputeRows($0, rows: n) } }
        values.withUnsafeBufferPointer { input.baseAddress!.update(from: $0.baseAddress!, count: values.count) }
        rows = n
    }

    /// The network outputs for the loaded rows: `rows x nout`, chunked by parameter.
    ///
    /// `h_l = relu(h_{l-1} (W_l * M_l) + b_l)`, `out = h_L (W * M) + b + x (A * M_A)`.
    /// - Complexity: one `?gemm` per matrix plus O(rows x units) elementwise work.
    ///
    /// The sparse kernel's float products use the output gradient's buffer as scratch: set the
    /// output gradient (a loss pass or ``setOutputGradient(_:)``) after this, not before.
    public func forward() {
        let n = rows
        guard n > 0 else { return }
        if kernel == .sparse { return sparseForward() }
        let layers = layout.layers
        var previous = UnsafePointer(input.baseAddress!)
        for l in 0..<layers.count {
            let m = layers[l]
            let isOutput = l == layers.count - 1
            let target = isOutput ? output.baseAddress! : hidden[l].baseAddress!
            T.gemm(
                transposeA: false,
                transposeB: false,
                m: n,
                n: m.columns,
                k: m.rows,
                alpha: 1,
                a: previous,
                lda: m.rows,
                b: weights(l),
                ldb: m.columns,
                beta: 0,
                c: target,
                ldc: m.columns
            )
            if isOutput, let d = layout.direct {
                T.gemm(
                    transposeA: false,
                    transposeB: false,
                    m: n,
                    n: d.columns,
                    k: d.rows,
                    alpha: 1,
                    a: input.baseAddress!,
                    lda: d.rows,
                    b: weights(layers.count),
                    ldb: d.columns,
                    beta: 1,
                    c: target,
                    ldc: d.columns
                )
            }
            addBias(target, parameters + m.biasOffset!, rows: n, columns: m.columns, relu: !isOutput)
            previous = UnsafePointer(target)
        }
    }

    /// Reads output `j` of row `r` after ``forward()``.
    public func output(row r: Int, unit j: Int) -> T {
        precondition(r < rows && j < configuration.outputCount)
        let column = kernel == .sparse ? Int(blocks!.outputPosition[j]) : j
        return output[r * configuration.outputCount + column]
    }

    // MARK: Backward

    /// Back-propagates `outputGradient` (`d loss / d out`, `rows x nout`) to the parameters.
    ///
    /// Overwrites every entry of `gradient` (layout order): masked-out weights get exactly 0.
    /// When `inputGradient` is given it receives `d loss / d x` (`rows x nin`), used to check
    /// the autoregressive property.
    /// - Complexity: two `?gemm` per hidden matrix, one for the first, one or two for direct.
    ///
    /// With `maskingGradient` false the masked-out weights' entries are left as the products
    /// give them: for a caller that reads only the active entries (``MaskPacking/pack(_:)``),
    /// this saves a pass over the weights.
    ///
    /// With `computeOrder` true (sparse kernel only) the gradient is left in the compute order of
    /// the masks, unmasked, for ``adamStep(parameters:gradient:adam:constants:prepare:)``.
    ///
    /// `layerDone(k)` is called as soon as the entries of matrix `k` of ``ParameterLayout/matrices``
    /// (its weights and bias) are final and the pass no longer reads that matrix's parameters:
    /// the output layer first, down to the first layer, then the direct connections. A caller may
    /// hand those entries on, or overwrite the matrix's parameters, from then on without changing
    /// what the pass computes for the other matrices.
    public func backward(
        into gradient: UnsafeMutableBufferPointer<T>,
        inputGradient: UnsafeMutableBufferPointer<T>? = nil,
        maskingGradient: Bool = true,
        computeOrder: Bool = false,
        layerDone: ((Int) -> Void)? = nil
    ) {
        precondition(!computeOrder || kernel == .sparse, "backward: compute order needs the sparse kernel")
        precondition(
            gradient.count == layout.count,
            "backward: gradient of \(gradient.count) for a layout of \(layout.count)"
        )
        let n = rows
        let g = gradient.baseAddress!
        let layers = layout.layers
        if n == 0 {
            gradient.update(repeating: 0)
            inputGradient?.update(repeating: 0)
            if let layerDone {
                for l in layers.indices.reversed() { layerDone(l) }
                if layout.direct != nil { layerDone(layers.count) }
            }
            return
        }
        if let ig = inputGradient {
            precondition(ig.count >= n * configuration.inputCount, "backward: input gradient buffer too small")
        }
        if kernel == .sparse {
            return sparseBackward(
                into: g,
                inputGradient: inputGradient?.baseAddress,
                layoutOrder: !computeOrder,
                layerDone: layerDone
            )
        }
        var delta = UnsafeMutablePointer(outputGradient.baseAddress!)
        var pingPong = 0
        for l in stride(from: layers.count - 1, through: 0, by: -1) {
            let m = layers[l]
            let below = l == 0 ? input.baseAddress! : hidden[l - 1].baseAddress!
            // dW_l = below^T delta, masked; db_l = column sums of delta.
            T.gemm(
                transposeA: true,
                transposeB: false,
                m: m.rows,
                n: m.columns,
                k: n,
                alpha: 1,
                a: below,
                lda: m.rows,
                b: delta,
                ldb: m.columns,
                beta: 0,
                c: g + m.offset,
                ldc: m.columns
            )
            if maskingGradient { multiply(g + m.offset, by: UnsafePointer(masks[l].baseAddress!), count: m.count) }
            columnSums(delta, rows: n, columns: m.columns, into: g + m.biasOffset!)
            if l > 0 {
                let next = deltas[pingPong].baseAddress!
                pingPong ^= 1
                T.gemm(
                    transposeA: false,
                    transposeB: true,
                    m: n,
                    n: m.rows,
                    k: m.columns,
                    alpha: 1,
                    a: delta,
                    lda: m.columns,
                    b: weights(l),
                    ldb: m.columns,
                    beta: 0,
                    c: next,
                    ldc: m.rows
                )
                reluBackward(next, hidden[l - 1].baseAddress!, count: n * m.rows)
                delta = next
            } else if let ig = inputGradient {
                T.gemm(
                    transposeA: false,
                    transposeB: true,
                    m: n,
                    n: m.rows,
                    k: m.columns,
                    alpha: 1,
                    a: delta,
                    lda: m.columns,
                    b: weights(0),
                    ldb: m.columns,
                    beta: 0,
                    c: ig.baseAddress!,
                    ldc: m.rows
                )
            }
            layerDone?(l)
        }
        if let d = layout.direct {
            let k = layers.count
            T.gemm(
                transposeA: true,
                transposeB: false,
                m: d.rows,
                n: d.columns,
                k: n,
                alpha: 1,
                a: input.baseAddress!,
                lda: d.rows,
                b: outputGradient.baseAddress!,
                ldb: d.columns,
                beta: 0,
                c: g + d.offset,
                ldc: d.columns
            )
            if maskingGradient { multiply(g + d.offset, by: UnsafePointer(masks[k].baseAddress!), count: d.count) }
            if let ig = inputGradient {
                T.gemm(
                    transposeA: false,
                    transposeB: true,
                    m: n,
                    n: d.rows,
                    k: d.columns,
                    alpha: 1,
                    a: outputGradient.baseAddress!,
                    lda: d.columns,
                    b: weights(k),
                    ldb: d.columns,
                    beta: 1,
                    c: ig.baseAddress!,
                    ldc: d.rows
                )
            }
            layerDone?(k)
        }
    }

    /// ``backward(into:inputGradient:)`` for arrays.
    public func backward(into gradient: inout [T], inputGradient: inout [T]) {
        let n = rows * configuration.inputCount
        if inputGradient.count < n { inputGradient = [T](repeating: 0, count: n) }
        gradient.withUnsafeMutableBufferPointer { g in
            inputGradient.withUnsafeMutableBufferPointer { ig in backward(into: g, inputGradient: ig) }
        }
    }

    /// Sets `d loss / d out` directly, for checks of the network alone (`rows x nout`), after
    /// ``forward()``, which may use the buffer as scratch.
    public func setOutputGradient(_ values: [T]) {
        precondition(values.count == rows * configuration.outputCount, "setOutputGradient: wrong size")
        if kernel == .sparse {
            let nout = configuration.outputCount
            let position = blocks!.outputPosition
            for r in 0..<rows {
                for j in 0..<nout { outputGradient[r * nout + Int(position[j])] = values[r * nout + j] }
            }
            return
        }
        for i in 0..<values.count { outputGradient[i] = values[i] }
    }

    // MARK: Elementwise kernels: the C kernels for Float, plain loops for Double.

    var isFloat: Bool { T.self == Float.self }

    @inline(__always)
    func float(_ p: UnsafePointer<T>) -> UnsafePointer<Float> {
        UnsafeRawPointer(p).assumingMemoryBound(to: Float.self)
    }

    @inline(__always)
    func float(_ p: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<Float> {
        UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self)
    }

    /// `out = mask ? w : +0` (+0, so the bits never depend on the sign of a dropped weight).
    private func maskSelect(
        _ w: UnsafePointer<T>,
        _ mask: UnsafePointer<UInt8>,
        _ out: UnsafeMutablePointer<T>,
        count: Int
    ) {
        if isFloat { return made_mask_select_f32(count, float(w), mask, float(out)) }
        for i in 0..<count { out[i] = mask[i] == 0 ? 0 : w[i] }
    }

    /// Zeroes (to +0) the entries of `a` where the mask is 0.
    private func multiply(_ a: UnsafeMutablePointer<T>, by mask: UnsafePointer<UInt8>, count: Int) {
        if isFloat { return made_mask_inplace_f32(count, float(a), mask) }
        for i in 0..<count { a[i] = mask[i] == 0 ? 0 : a[i] }
    }

    /// Adds the bias to every row, then applies the ReLU when `relu` is set.
    func addBias(_ h: UnsafeMutablePointer<T>, _ b: UnsafePointer<T>, rows: Int, columns: Int, relu: Bool) {
        if isFloat {
            return relu
                ? made_bias_relu_f32(rows, columns, float(h), float(b))
                : made_bias_add_f32(rows, columns, float(h), float(b))
        }
        for r in 0..<rows {
            let row = h + r * columns
            for j in 0..<columns { row[j] = relu ? Swift.max(row[j] + b[j], 0) : row[j] + b[j] }
        }
    }

    /// `d = h > 0 ? d : +0`.
    func reluBackward(_ d: UnsafeMutablePointer<T>, _ h: UnsafePointer<T>, count: Int) {
        if isFloat { return made_relu_backward_f32(count, float(d), float(h)) }
        for i in 0..<count { d[i] = h[i] > 0 ? d[i] : 0 }
    }

    /// Sums the rows of `a` into `out`, in row order.
    func columnSums(_ a: UnsafePointer<T>, rows: Int, columns: Int, into out: UnsafeMutablePointer<T>) {
        if isFloat { return made_column_sums_f32(rows, columns, float(a), float(out)) }
        out.update(from: a, count: columns)
        for r in 1..<Swift.max(rows, 1) {
            let row = a + r * columns
            for j in 0..<columns { out[j] += row[j] }
        }
    }
}
