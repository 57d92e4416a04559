import CKernels
import Dispatch

/// The sparse kernel: the passes over the bands of the masks' ``BlockPartition``.
///
/// Inside the workspace every buffer is in compute order: the inputs by their place in the order,
/// every hidden layer by degree, the outputs chunk by chunk like the inputs. So a mask's non-zeros
/// in column `j` are the rows `0..<activeRows[j]`, and a band of columns is one `?gemm` over a
/// prefix of the rows (in float, tiles of 16 columns in C, each over the rows its longest column
/// needs): the forward product, the input gradient and the weight gradient each skip what the
/// masks zero. Binary inputs with few ones enter the first layer (and the direct
/// connections) as sums of the weight rows they select, and its weight gradient as sums of the
/// delta rows that select each input, in ascending row order.
///
/// Parameters are gathered into compute order once per `prepare` (masked on the way), and
/// gradients scattered back to layout order (masked-out weights +0) once per `backward`. Every sum
/// is a fixed function of the mask set and the data, so the bits do not depend on who computes.
extension NetworkWorkspace {
    // MARK: Layout changes

    /// Gathers `source` (layout order) into ``compute``, masked, and reads the passes from there.
    func gatherCompute(from source: UnsafePointer<T>) {
        let blocks = self.blocks!
        let out = compute.baseAddress!
        for (k, matrix) in matrices.enumerated() {
            let b = blocks.matrices[k]
            gatherStaircase(b, source + matrix.offset, out + matrix.offset)
            if let bias = matrix.biasOffset {
                b.columnOrder.withUnsafeBufferPointer { order in
                    for j in 0..<matrix.columns { out[bias + j] = source[bias + Int(order[j])] }
                }
            }
        }
        parameters = UnsafePointer(out)
    }

    /// Inside the bands only: no kernel reads past them.
    private func gatherStaircase(
        _ b: BlockPartition.MatrixBlocks,
        _ src: UnsafePointer<T>,
        _ dst: UnsafeMutablePointer<T>
    ) {
        b.rowOrder.withUnsafeBufferPointer { rowOrder in
            b.columnOrder.withUnsafeBufferPointer { columnOrder in
                b.activeRows.withUnsafeBufferPointer { active in
                    if isFloat {
                        return b.bandTable.withUnsafeBufferPointer { bands in
                            made_gather_staircase_f32(
                                b.rows,
                                b.columns,
                                float(src),
                                rowOrder.baseAddress!,
                                columnOrder.baseAddress!,
                                active.baseAddress!,
                                bands.baseAddress!,
                                b.bands.count,
                                float(dst)
                            )
                        }
                    }
                    for band in b.bands {
                        for i in 0..<band.rows {
                            let s = src + Int(rowOrder[i]) * b.columns
                            for j in band.start..<band.end {
                                dst[i * b.columns + j] = i < Int(active[j]) ? s[Int(columnOrder[j])] : 0
                            }
                        }
                    }
                }
            }
        }
    }

    /// Turns the matrix at `a`, in compute order, into layout order in place, masked.
    private func unpermuteStaircase(_ b: BlockPartition.MatrixBlocks, _ a: UnsafeMutablePointer<T>) {
        let scratch = computeGradient!.baseAddress!
        b.rowOrder.withUnsafeBufferPointer { rowOrder in
            b.columnPosition.withUnsafeBufferPointer { position in
                b.activeByColumn.withUnsafeBufferPointer { active in
                    rowsDone.withUnsafeMutableBufferPointer { done in
                        if isFloat {
                            return made_unpermute_staircase_f32(
                                b.rows,
                                b.columns,
                                float(a),
                                b.rowPosition,
                                position.baseAddress!,
                                active.baseAddress!,
                                float(scratch),
                                done.baseAddress!
                            )
                        }
                        // Double: through a copy of the whole matrix.
                        let copy = Array(UnsafeBufferPointer(start: a, count: b.rows * b.columns))
                        for i in 0..<b.rows {
                            let d = a + Int(rowOrder[i]) * b.columns
                            for c in 0..<b.columns {
                                d[c] = i < Int(active[c]) ? copy[i * b.columns + Int(position[c])] : 0
                            }
                        }
                    }
                }
            }
        }
    }

    /// Copies data rows into ``input`` in compute order and, for binary data, lists their ones.
    func loadComputeRows(from data: DataMatrix, indices: UnsafeBufferPointer<Int32>) {
        precondition(blocks != nil, "loadRows: set the masks first")
        switch data.storage {
        case .binary(let bytes) where isFloat && !indices.isEmpty:
            precondition(
                indices.allSatisfy { $0 >= 0 && Int($0) < data.count },
                "loadRows: row out of 0..<\(data.count)"
            )
            let ones = bytes.withUnsafeBufferPointer { src in
                blocks!.inputOrder.withUnsafeBufferPointer { order in
                    made_load_binary_rows_f32(
                        indices.count,
                        configuration.inputCount,
                        src.baseAddress!,
                        indices.baseAddress!,
                        order.baseAddress!,
                        float(input.baseAddress!),
                        rowStart.baseAddress!,
                        rowIndex.baseAddress!
                    )
                }
            }
            rows = indices.count
            binaryInput = Double(ones) <= sparseInputLimit * Double(rows * configuration.inputCount)
        case .binary(let bytes):
            bytes.withUnsafeBufferPointer { src in
                loadComputeRows(indices: indices, rowCount: data.count, binary: true) { src[$0] == 0 ? 0 : 1 }
            }
        case .real(let values):
            values.withUnsafeBufferPointer { src in
                loadComputeRows(indices: indices, rowCount: data.count, binary: false) { T(src[$0]) }
            }
        }
    }

    /// ``loadRows(_:)`` in compute order: values that are all 0 or 1 count as binary.
    func loadComputeRows(_ values: UnsafeBufferPointer<T>, rows n: Int) {
        precondition(blocks != nil, "loadRows: set the masks first")
        let binary = values.allSatisfy { $0 == 0 || $0 == 1 }
        let identity = UnsafeMutableBufferPointer<Int32>.allocate(capacity: max(n, 1))
        defer { identity.deallocate() }
        for r in 0..<n { identity[r] = Int32(r) }
        loadComputeRows(indices: UnsafeBufferPointer(rebasing: identity[0..<n]), rowCount: n, binary: binary) {
            values[$0]
        }
    }

    @inline(__always)
    private func loadComputeRows(indices: UnsafeBufferPointer<Int32>, rowCount: Int, binary: Bool, value: (Int) -> T) {
        let d = configuration.inputCount
        let order = blocks!.inputOrder
        var ones = 0
        order.withUnsafeBufferPointer { order in
            for (i, r) in indices.enumerated() {
                let row = Int(r)
                precondition(row >= 0 && row < rowCount, "loadRows: row \(row) out of 0..<\(rowCount)")
                let base = row * d
                let t = input.baseAddress! + i * d
                if binary { rowStart[i] = Int32(ones) }
                for p in 0..<d {
                    let v = value(base + Int(order[p]))
                    t[p] = v
                    if binary && v != 0 {
                        rowIndex[ones] = Int32(p)
                        ones += 1
                    }
                }
            }
        }
        rows = indices.count
        rowStart[rows] = Int32(ones)
        binaryInput = binary && Double(ones) <= sparseInputLimit * Double(rows * d)
    }

    // MARK: Forward

    func sparseForward() {
        let n = rows
        let blocks = self.blocks!
        let layers = layout.layers
        var previous = UnsafePointer(input.baseAddress!)
        for l in 0..<layers.count {
            let m = layers[l]
            let isOutput = l == layers.count - 1
            let target = isOutput ? output.baseAddress! : hidden[l].baseAddress!
            if l == 0 && binaryInput {
                selectedRows(blocks.matrices[0], weights: parameters + m.offset, into: target, accumulate: false)
            } else {
                bandProduct(blocks.matrices[l], previous, parameters + m.offset, into: target, beta: 0)
            }
            if isOutput, let d = layout.direct {
                let b = blocks.matrices[layers.count]
                if binaryInput {
                    selectedRows(b, weights: parameters + d.offset, into: target, accumulate: true)
                } else {
                    bandProduct(b, UnsafePointer(input.baseAddress!), parameters + d.offset, into: target, beta: 1)
                }
            }
            addBias(target, parameters + m.biasOffset!, rows: n, columns: m.columns, relu: !isOutput)
            previous = UnsafePointer(target)
        }
    }

    /// The float staircase products' scratch of the workspace's own, grown to `count` floats.
    private func staircaseBuffers(_ count: Int) -> UnsafeMutablePointer<Float> {
        if let scratch = staircaseScratch, scratch.count >= count { return scratch.baseAddress! }
        staircaseScratch?.deallocate()
        staircaseScratch = .allocate(capacity: max(count, 1))
        staircaseScratch!.initialize(repeating: 0)
        return staircaseScratch!.baseAddress!
    }

    /// The two gradients' scratch.
    private func staircaseGradientBuffers() -> UnsafeMutablePointer<Float> {
        let widest = configuration.layerWidths.max() ?? 0
        return staircaseBuffers(made_staircase_gradient_scratch_floats(capacity, widest, widest))
    }

    /// The input gradient's list of tiles, `3 x` the widest layer.
    private func staircaseTileList() -> UnsafeMutablePointer<Int32> {
        if let tiles = staircaseTiles { return tiles.baseAddress! }
        let widest = configuration.layerWidths.max() ?? 0
        staircaseTiles = .allocate(capacity: 3 * max(widest, 1))
        staircaseTiles!.initialize(repeating: 0)
        return staircaseTiles!.baseAddress!
    }

    /// `c = a W (+ c with beta 1)` band by band: `c[:, band] = a[:, 0..<band.rows] W[0..<band.rows, band]`
    /// (in float, tile by tile inside the bands: `made_staircase_product_f32`).
    private func bandProduct(
        _ b: BlockPartition.MatrixBlocks,
        _ a: UnsafePointer<T>,
        _ w: UnsafePointer<T>,
        into c: UnsafeMutablePointer<T>,
        beta: T
    ) {
        let n = rows
        if isFloat {
            // The output gradient's buffer is the scratch (the loss writes it only after the forward
            // pass), for as many data rows per call as it holds; rows are summed apart, so the split
            // moves no bits.
            let whole = made_staircase_product_scratch_floats(n, b.rows)
            let room = outputGradient.count - made_staircase_product_scratch_floats(0, b.rows)
            let step = whole <= outputGradient.count ? n : room / max(b.rows, 1)
            let scratch = step >= 1
                ? float(outputGradient.baseAddress!)
                : staircaseBuffers(made_staircase_product_scratch_floats(capacity, b.rows))
            let piece = step >= 1 ? step : n
            for r0 in stride(from: 0, to: n, by: max(piece, 1)) {
                made_staircase_product_f32(
                    min(piece, n - r0),
                    b.rows,
                    b.columns,
                    float(a + r0 * b.rows),
                    float(w),
                    b.activeRows,
                    b.bandTable,
                    b.bands.count,
                    float(c + r0 * b.columns),
                    beta == 0 ? 0 : 1,
                    scratch
                )
            }
            return
        }
        for band in b.bands {
            let width = band.end - band.start
            // A block to overwrite is zeroed here and added to (beta 1), as in bandWeightGradient.
            if beta == 0 {
                for r in 0..<n { (c + r * b.columns + band.start).update(repeating: 0, count: width) }
            }
            if band.rows == 0 { continue }
            T.gemm(
                transposeA: false,
                transposeB: false,
                m: n,
                n: width,
                k: band.rows,
                alpha: 1,
                a: a,
                lda: b.rows,
                b: w + band.start,
                ldb: b.columns,
                beta: 1,
                c: c + band.start,
                ldc: b.columns
            )
        }
    }

    /// `c = x W` (or `c += x W`) for the binary loaded rows `x`: sums of the rows of `W` they select.
    private func selectedRows(
        _ b: BlockPartition.MatrixBlocks,
        weights w: UnsafePointer<T>,
        into c: UnsafeMutablePointer<T>,
        accumulate: Bool
    ) {
        let n = rows
        b.activeRows.withUnsafeBufferPointer { active in
            if isFloat {
                return b.bandTable.withUnsafeBufferPointer { bands in
                    made_binary_rows_f32(
                        n,
                        b.columns,
                        float(w),
                        active.baseAddress!,
                        bands.baseAddress!,
                        b.bands.count,
                        rowStart.baseAddress!,
                        rowIndex.baseAddress!,
                        float(c),
                        b.columns,
                        accumulate ? 1 : 0
                    )
                }
            }
            for r in 0..<n {
                let out = c + r * b.columns
                for j in 0..<b.columns {
                    var sum: T = 0
                    for k in Int(rowStart[r])..<Int(rowStart[r + 1]) {
                        let i = Int(rowIndex[k])
                        if i < Int(active[j]) { sum += w[i * b.columns + j] }
                    }
                    out[j] = accumulate ? out[j] + sum : sum
                }
            }
        }
    }

    // MARK: Backward

    func sparseBackward(
        into g: UnsafeMutablePointer<T>,
        inputGradient: UnsafeMutablePointer<T>?,
        layoutOrder: Bool,
        layerDone: ((Int) -> Void)? = nil
    ) {
        let n = rows
        let blocks = self.blocks!
        let layers = layout.layers
        let widest = max(configuration.outputCount, configuration.hiddenSizes.max() ?? 0)
        if computeGradient == nil {
            // A row for unpermuting, then one layer's bias sums.
            computeGradient = .allocate(capacity: 2 * max(widest, 1))
            computeGradient!.initialize(repeating: 0)
            rowsDone = [UInt8](repeating: 0, count: max(configuration.inputCount, widest))
        }
        let sums = computeGradient!.baseAddress! + widest
        if binaryInput { transposeSelection() }
        let nin = configuration.inputCount
        var scratch: UnsafeMutablePointer<T>?
        if inputGradient != nil {
            if inputScratch == nil {
                inputScratch = .allocate(capacity: capacity * nin)
                inputScratch!.initialize(repeating: 0)
            }
            scratch = inputScratch!.baseAddress!
        }
        var delta = UnsafeMutablePointer(outputGradient.baseAddress!)
        var pingPong = 0
        for l in stride(from: layers.count - 1, through: 0, by: -1) {
            let m = layers[l]
            let b = blocks.matrices[l]
            let below = l == 0 ? input.baseAddress! : hidden[l - 1].baseAddress!
            // The weight gradient in compute order where it belongs, then turned into layout order.
            if l == 0 && binaryInput {
                selectedGradient(b, delta: delta, into: g + m.offset)
            } else {
                bandWeightGradient(b, UnsafePointer(below), delta: delta, into: g + m.offset)
            }
            if layoutOrder {
                unpermuteStaircase(b, g + m.offset)
                columnSums(delta, rows: n, columns: m.columns, into: sums)
                b.columnOrder.withUnsafeBufferPointer { order in
                    for j in 0..<m.columns { g[m.biasOffset! + Int(order[j])] = sums[j] }
                }
            } else {
                columnSums(delta, rows: n, columns: m.columns, into: g + m.biasOffset!)
            }
            if l > 0 {
                let next = deltas[pingPong].baseAddress!
                pingPong ^= 1
                bandInputGradient(b, delta: delta, parameters + m.offset, into: next, accumulate: false)
                reluBackward(next, hidden[l - 1].baseAddress!, count: n * m.rows)
                delta = next
            } else if let scratch {
                bandInputGradient(b, delta: delta, parameters + m.offset, into: scratch, accumulate: false)
            }
            layerDone?(l)
        }
        if let d = layout.direct {
            let b = blocks.matrices[layers.count]
            let out = outputGradient.baseAddress!
            if binaryInput {
                selectedGradient(b, delta: out, into: g + d.offset)
            } else {
                bandWeightGradient(b, UnsafePointer(input.baseAddress!), delta: out, into: g + d.offset)
            }
            if layoutOrder { unpermuteStaircase(b, g + d.offset) }
            if let scratch {
                bandInputGradient(b, delta: out, parameters + d.offset, into: scratch, accumulate: true)
            }
            layerDone?(layers.count)
        }
        if let scratch, let ig = inputGradient {
            let order = blocks.inputOrder
            for r in 0..<n {
                for p in 0..<nin { ig[r * nin + Int(order[p])] = scratch[r * nin + p] }
            }
        }
    }

    /// `dW[0..<band.rows, band] = a[:, 0..<band.rows]^T delta[:, band]`, in compute order (entries
    /// outside the bands are left as they are; the scatter masks them).
    ///
    /// Each block is zeroed here and the product added to it (beta 1): the same bits as beta 0,
    /// which zeroes it in a separate pass of the BLAS that costs more than a row-by-row fill. In
    /// float, tile by tile inside the bands (`made_staircase_weight_gradient_f32`).
    private func bandWeightGradient(
        _ b: BlockPartition.MatrixBlocks,
        _ a: UnsafePointer<T>,
        delta: UnsafePointer<T>,
        into dw: UnsafeMutablePointer<T>
    ) {
        if isFloat {
            return made_staircase_weight_gradient_f32(
                rows,
                b.rows,
                b.columns,
                float(a),
                float(delta),
                b.activeRows,
                b.bandTable,
                b.bands.count,
                float(dw),
                staircaseGradientBuffers()
            )
        }
        for band in b.bands where band.rows > 0 {
            let width = band.end - band.start
            for i in 0..<band.rows { (dw + i * b.columns + band.start).update(repeating: 0, count: width) }
            T.gemm(
                transposeA: true,
                transposeB: false,
                m: band.rows,
                n: band.end - band.start,
                k: rows,
                alpha: 1,
                a: a,
                lda: b.rows,
                b: delta + band.start,
                ldb: b.columns,
                beta: 1,
                c: dw + band.start,
                ldc: b.columns
            )
        }
    }

    /// `da = delta W^T` (or `da += ...`), `rows x b.rows`: the band with the most rows first
    /// (overwriting, unless accumulating), then the others in column order, adding. In float, 16
    /// rows of `W` at a time over the tiles that reach them (`made_staircase_input_gradient_f32`).
    private func bandInputGradient(
        _ b: BlockPartition.MatrixBlocks,
        delta: UnsafePointer<T>,
        _ w: UnsafePointer<T>,
        into da: UnsafeMutablePointer<T>,
        accumulate: Bool
    ) {
        let n = rows
        if isFloat {
            return made_staircase_input_gradient_f32(
                n,
                b.rows,
                b.columns,
                float(delta),
                float(w),
                b.activeRows,
                b.bandTable,
                b.bands.count,
                float(da),
                accumulate ? 1 : 0,
                staircaseGradientBuffers(),
                staircaseTileList()
            )
        }
        guard let widest = b.bands.indices.max(by: { b.bands[$0].rows < b.bands[$1].rows }) else { return }
        let top = b.bands[widest].rows
        if !accumulate, top < b.rows {
            for r in 0..<n { (da + r * b.rows + top).update(repeating: 0, count: b.rows - top) }
        }
        guard top > 0 else {
            if !accumulate { for r in 0..<n { (da + r * b.rows).update(repeating: 0, count: b.rows) } }
            return
        }
        func add(_ band: BlockPartition.Band) {
            T.gemm(
                transposeA: false,
                transposeB: true,
                m: n,
                n: band.rows,
                k: band.end - band.start,
                alpha: 1,
                a: delta + band.start,
                lda: b.columns,
                b: w + band.start,
                ldb: b.columns,
                beta: 1,
                c: da,
                ldc: b.rows
            )
        }
        // Zeroed here and added to (beta 1), as in bandWeightGradient.
        if !accumulate { for r in 0..<n { (da + r * b.rows).update(repeating: 0, count: top) } }
        add(b.bands[widest])
        for (k, band) in b.bands.enumerated() where k != widest && band.rows > 0 { add(band) }
    }

    /// Lists, per compute input, the loaded rows that select it (ascending): the transpose of the selection.
    private func transposeSelection() {
        let d = configuration.inputCount
        if inputStart == nil {
            inputStart = .allocate(capacity: d + 1)
            inputStart!.initialize(repeating: 0)
            inputRows = .allocate(capacity: max(capacity * d, 1))
            inputRows!.initialize(repeating: 0)
        }
        let start = inputStart!
        let list = inputRows!
        start.update(repeating: 0)
        let total = Int(rowStart[rows])
        for k in 0..<total { start[Int(rowIndex[k]) + 1] += 1 }
        for i in 0..<d { start[i + 1] += start[i] }
        // Fill in row order, so each input's rows come out ascending; start[i] is the cursor.
        for r in 0..<rows {
            for k in Int(rowStart[r])..<Int(rowStart[r + 1]) {
                let i = Int(rowIndex[k])
                list[Int(start[i])] = Int32(r)
                start[i] += 1
            }
        }
        // The cursors ended at each input's end: shift back.
        for i in stride(from: d, to: 0, by: -1) { start[i] = start[i - 1] }
        start[0] = 0
    }

    /// `dW = x^T delta` for the binary loaded rows: per input, the sum of the delta rows selecting it.
    private func selectedGradient(
        _ b: BlockPartition.MatrixBlocks,
        delta: UnsafePointer<T>,
        into dw: UnsafeMutablePointer<T>
    ) {
        let start = inputStart!
        let list = inputRows!
        b.activeRows.withUnsafeBufferPointer { active in
            if isFloat {
                return b.bandTable.withUnsafeBufferPointer { bands in
                    made_binary_weight_gradient_f32(
                        b.columns,
                        active.baseAddress!,
                        bands.baseAddress!,
                        b.bands.count,
                        start.baseAddress!,
                        list.baseAddress!,
                        float(delta),
                        b.columns,
                        float(dw)
                    )
                }
            }
            for i in 0..<b.rows {
                for j in 0..<b.columns where i < Int(active[j]) {
                    var sum: T = 0
                    for k in Int(start[i])..<Int(start[i + 1]) { sum += delta[Int(list[k]) * b.columns + j] }
                    dw[i * b.columns + j] = sum
                }
            }
        }
    }
}

extension NetworkWorkspace where T == Float {
    /// One Adam step (see ``AdamState``) on parameters and moments held in the compute order of the
    /// masks set (see ``BlockPartition/permute(_:layout:toCompute:threads:)``), with the summed
    /// gradient in compute order as ``backward(into:inputGradient:maskingGradient:computeOrder:)``
    /// leaves it, masked here on the way: each element gets the operations of
    /// ``AdamState/update(parameters:gradient:scale:learningRate:configuration:threads:)``, so the
    /// same bits, and no pass changes order. The updated parameters are copied, masked, inside the
    /// bands, into `destination` (by default the workspace's own buffer), where the next step under
    /// the same masks reads them (``prepare(computeOrder:)``). With `only`, matrix `only` of
    /// ``ParameterLayout/matrices`` alone (its weights and bias): the same bits for it.
    func adamStep(
        parameters p: UnsafeMutablePointer<Float>,
        gradient g: UnsafePointer<Float>,
        firstMoment m: UnsafeMutablePointer<Float>,
        secondMoment v: UnsafeMutablePointer<Float>,
        constants: made_adam_constants,
        into destination: UnsafeMutablePointer<Float>? = nil,
        threads: Int = 1,
        only matrix: Int? = nil
    ) {
        precondition(kernel == .sparse, "adamStep: the sparse kernel's compute order")
        let blocks = self.blocks!
        let out = destination ?? compute.baseAddress!
        let all = matrices
        let pointers = UncheckedSendable((p, g, m, v, out))
        func update(_ k: Int) {
            let (p, g, m, v, out) = pointers.value
            let b = blocks.matrices[k]
            let matrix = all[k]
            let o = matrix.offset
            made_adam_masked_f32(
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
            if let bias = matrix.biasOffset {
                made_adam_f32(matrix.columns, p + bias, g + bias, m + bias, v + bias, constants)
                (out + bias).update(from: p + bias, count: matrix.columns)
            }
        }
        if let matrix {
            update(matrix)
        } else if threads > 1 && all.count > 1 {
            // Each matrix whole on one thread: elementwise, so the bits do not depend on it.
            withoutActuallyEscaping(update) { update in
                let box = UncheckedSendable(update)
                DispatchQueue.concurrentPerform(iterations: all.count) { box.value($0) }
            }
        } else {
            for k in all.indices { update(k) }
        }
        parameters = UnsafePointer(out)
    }
}
