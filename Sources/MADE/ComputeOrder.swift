import CKernels
import Dispatch

/// Parameter-sized vectors between parameter-layout order and the compute order of a mask set
/// (see ``BlockPartition``): each matrix at its layout offset with its rows and columns in
/// compute order, each bias with its columns in compute order.
///
/// The sparse kernel computes in compute order. One process keeps its parameters there while
/// the masks stay (``GradientEngine/hold(_:maskSeed:)``); a coordinator writes the step's masked
/// parameters there for the workers on its host (``gatherMasked(_:into:layout:threads:)``), which
/// read them in place and write their gradients back in the same order, masked
/// (``maskDropped(_:layout:outside:)``), so that neither moves a weight per step.
extension BlockPartition {
    /// Permutes `values` in place between layout order and compute order, every weight and bias,
    /// masked-out ones included (nothing is masked).
    ///
    /// - Complexity: O(number of parameters), each weight moved once; scratch of one row per
    ///   matrix. The matrices are permuted on up to `threads` threads; the result does not depend on it.
    public func permute(
        _ values: UnsafeMutablePointer<Float>,
        layout: ParameterLayout,
        toCompute: Bool,
        threads: Int = 1
    ) {
        let p = UncheckedSendable(values)
        forEachMatrix(layout, threads: threads) { k, matrix in
            let b = self.matrices[k]
            let (rows, columns) = toCompute ? (b.rowOrder, b.columnOrder) : (b.rowPosition, b.columnPosition)
            var scratch = [Float](repeating: 0, count: max(b.columns, 1))
            var done = [UInt8](repeating: 0, count: max(b.rows, 1))
            made_permute_matrix_inplace_f32(b.rows, b.columns, p.value + matrix.offset, rows, columns, &scratch, &done)
            if let bias = matrix.biasOffset {
                var firstRow: Int32 = 0
                made_permute_matrix_inplace_f32(1, matrix.columns, p.value + bias, &firstRow, columns, &scratch, &done)
            }
        }
    }

    /// Writes `source` (layout order) into `out` in compute order, masked: inside the bands every
    /// weight the masks keep, +0 for those they drop; every bias. Entries outside the bands are
    /// left as they are (no pass reads them): what the sparse kernel's passes read.
    public func gatherMasked(
        _ source: UnsafePointer<Float>,
        into out: UnsafeMutablePointer<Float>,
        layout: ParameterLayout,
        threads: Int = 1
    ) {
        let pointers = UncheckedSendable((source, out))
        forEachMatrix(layout, threads: threads) { k, matrix in
            let (source, out) = pointers.value
            let b = self.matrices[k]
            made_gather_staircase_f32(
                b.rows,
                b.columns,
                source + matrix.offset,
                b.rowOrder,
                b.columnOrder,
                b.activeRows,
                b.bandTable,
                b.bands.count,
                out + matrix.offset
            )
            if let bias = matrix.biasOffset {
                for j in 0..<matrix.columns { out[bias + j] = source[bias + Int(b.columnOrder[j])] }
            }
        }
    }

    /// Sets to +0, in compute order, the weights the masks drop inside the bands (what the band
    /// products compute beside the kept ones), and with `outside` every weight outside the bands
    /// too: after it, `values` is the compute order of a vector whose masked-out weights are +0.
    /// The sparse kernel's backward pass writes only inside the bands, so `outside` is needed
    /// only when the memory last held something else.
    public func maskDropped(_ values: UnsafeMutablePointer<Float>, layout: ParameterLayout, outside: Bool) {
        for k in layout.matrices.indices { maskDropped(values, layout: layout, outside: outside, matrix: k) }
    }

    /// ``maskDropped(_:layout:outside:)`` for matrix `k` of ``ParameterLayout/matrices`` alone.
    public func maskDropped(
        _ values: UnsafeMutablePointer<Float>,
        layout: ParameterLayout,
        outside: Bool,
        matrix k: Int
    ) {
        let b = matrices[k]
        made_mask_staircase_f32(
            b.rows,
            b.columns,
            values + layout.matrices[k].offset,
            b.activeRows,
            b.bandTable,
            b.bands.count,
            outside ? 1 : 0
        )
    }

    /// Turns `values` from compute order into layout order in place, masked: the inverse of
    /// ``gatherMasked(_:into:layout:threads:)`` for a vector whose weights outside the bands do
    /// not count (every masked-out weight comes out +0).
    public func toLayoutMasked(_ values: UnsafeMutablePointer<Float>, layout: ParameterLayout, threads: Int = 1) {
        let p = UncheckedSendable(values)
        forEachMatrix(layout, threads: threads) { k, matrix in
            let b = self.matrices[k]
            var scratch = [Float](repeating: 0, count: max(b.columns, 1))
            var done = [UInt8](repeating: 0, count: max(b.rows, 1))
            made_unpermute_staircase_f32(
                b.rows,
                b.columns,
                p.value + matrix.offset,
                b.rowPosition,
                b.columnPosition,
                b.activeByColumn,
                &scratch,
                &done
            )
            if let bias = matrix.biasOffset {
                var firstRow: Int32 = 0
                made_permute_matrix_inplace_f32(
                    1,
                    matrix.columns,
                    p.value + bias,
                    &firstRow,
                    b.columnPosition,
                    &scratch,
                    &done
                )
            }
        }
    }

    /// Runs `body` for every matrix of `layout` (with its index), on up to `threads` threads.
    private func forEachMatrix(_ layout: ParameterLayout, threads: Int, _ body: (Int, ParameterLayout.Matrix) -> Void) {
        let all = layout.matrices
        precondition(
            all.count == matrices.count,
            "BlockPartition: \(matrices.count) matrices for a layout of \(all.count)"
        )
        if threads <= 1 || all.count == 1 {
            for (k, matrix) in all.enumerated() { body(k, matrix) }
            return
        }
        withoutActuallyEscaping(body) { body in
            let box = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: all.count) { k in box.value(k, all[k]) }
        }
    }
}

/// How the compute order of one mask set (`other`) lies in that of another (`held`): for a
/// step of several masks whose parameters are held in one mask's compute order, each further
/// mask's masked parameters are written in that mask's own order
/// (``gatherMasked(_:into:layout:threads:)``), and gradients in that order are turned into the
/// held one (``turn(_:into:layout:threads:)``). Both move every value as it is, so the sums
/// made of them have the bits of the same sums in layout order.
public struct RelativeOrder: Sendable {
    public let held: BlockPartition
    public let other: BlockPartition
    /// Per matrix: `otherRows[k][i]` is the held compute row of `other`'s compute row `i`, and
    /// `otherColumns[k][j]` the held compute column of its compute column `j`.
    let otherRows: [[Int32]]
    let otherColumns: [[Int32]]
    /// Per matrix, the converse: `other`'s compute row (column) of each held compute row (column).
    let heldRows: [[Int32]]
    let heldColumns: [[Int32]]

    public init(held: BlockPartition, other: BlockPartition) {
        precondition(held.matrices.count == other.matrices.count, "RelativeOrder: mask sets of other models")
        self.held = held
        self.other = other
        let pairs = zip(held.matrices, other.matrices)
        otherRows = pairs.map { h, o in o.rowOrder.map { h.rowPosition[Int($0)] } }
        otherColumns = pairs.map { h, o in o.columnOrder.map { h.columnPosition[Int($0)] } }
        heldRows = pairs.map { h, o in h.rowOrder.map { o.rowPosition[Int($0)] } }
        heldColumns = pairs.map { h, o in h.columnOrder.map { o.columnPosition[Int($0)] } }
    }

    /// Writes `source` (the held compute order) into `out` in `other`'s compute order, masked by
    /// `other`'s masks as ``BlockPartition/gatherMasked(_:into:layout:threads:)`` writes it from
    /// layout order: the same values in the same places.
    public func gatherMasked(
        _ source: UnsafePointer<Float>,
        into out: UnsafeMutablePointer<Float>,
        layout: ParameterLayout,
        threads: Int = 1
    ) {
        let pointers = UncheckedSendable((source, out))
        forEachMatrix(layout, threads: threads) { k, matrix in
            let (source, out) = pointers.value
            let b = self.other.matrices[k]
            made_gather_staircase_f32(
                b.rows,
                b.columns,
                source + matrix.offset,
                self.otherRows[k],
                self.otherColumns[k],
                b.activeRows,
                b.bandTable,
                b.bands.count,
                out + matrix.offset
            )
            if let bias = matrix.biasOffset {
                let columns = self.otherColumns[k]
                for j in 0..<matrix.columns { out[bias + j] = source[bias + Int(columns[j])] }
            }
        }
    }

    /// Writes `source`, every value in `other`'s compute order, into `out` in the held compute
    /// order (a permutation, nothing masked); `source` and `out` do not overlap.
    public func turn(
        _ source: UnsafePointer<Float>,
        into out: UnsafeMutablePointer<Float>,
        layout: ParameterLayout,
        threads: Int = 1
    ) {
        let pointers = UncheckedSendable((source, out))
        forEachMatrix(layout, threads: threads) { k, matrix in
            let (source, out) = pointers.value
            let b = self.held.matrices[k]
            made_gather_matrix_f32(
                b.rows,
                b.columns,
                source + matrix.offset,
                self.heldRows[k],
                self.heldColumns[k],
                out + matrix.offset
            )
            if let bias = matrix.biasOffset {
                let columns = self.heldColumns[k]
                for j in 0..<matrix.columns { out[bias + j] = source[bias + Int(columns[j])] }
            }
        }
    }

    /// `out = a + turned(b)`: `a` in the held compute order, `b` in `other`'s, every value read
    /// as ``turn(_:into:layout:threads:)`` would place it, in one pass; `out` may be `a`, never
    /// `b`. The bits of turning `b` and then adding. Returns whether every sum is finite.
    public func add(
        _ a: UnsafePointer<Float>,
        turned b: UnsafePointer<Float>,
        into out: UnsafeMutablePointer<Float>,
        layout: ParameterLayout,
        threads: Int = 1
    ) -> Bool {
        let pointers = UncheckedSendable((a, b, out))
        var finite = [Bool](repeating: true, count: layout.matrices.count)
        finite.withUnsafeMutableBufferPointer { flags in
            let flags = UncheckedSendable(flags)
            forEachMatrix(layout, threads: threads) { k, matrix in
                let (a, b, out) = pointers.value
                let m = self.held.matrices[k]
                var ok =
                    made_add_gather_matrix_f32(
                        m.rows,
                        m.columns,
                        a + matrix.offset,
                        b + matrix.offset,
                        self.heldRows[k],
                        self.heldColumns[k],
                        out + matrix.offset
                    ) != 0
                if let bias = matrix.biasOffset {
                    let columns = self.heldColumns[k]
                    for j in 0..<matrix.columns {
                        let v = a[bias + j] + b[bias + Int(columns[j])]
                        ok = ok && v.isFinite
                        out[bias + j] = v
                    }
                }
                flags.value[k] = ok
            }
        }
        return !finite.contains(false)
    }

    private func forEachMatrix(_ layout: ParameterLayout, threads: Int, _ body: (Int, ParameterLayout.Matrix) -> Void) {
        let all = layout.matrices
        precondition(all.count == held.matrices.count, "RelativeOrder: a layout of \(all.count) matrices")
        if threads <= 1 || all.count == 1 {
            for (k, matrix) in all.enumerated() { body(k, matrix) }
            return
        }
        withoutActuallyEscaping(body) { body in
            let box = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: all.count) { k in box.value(k, all[k]) }
        }
    }
}
