/// Which arithmetic the network's passes do.
public enum ComputeKernel: String, Sendable, Codable, CaseIterable {
    /// One `?gemm` per matrix over the whole masked matrix, zeros included.
    case dense
    /// Only the blocks a mask leaves non-zero (see ``BlockPartition``), and sums of selected rows
    /// for sparse binary inputs.
    case sparse
}

/// The staircase of every masked matrix of one mask set: what the sparse kernel computes.
///
/// Sort the units of every layer by degree (ties by index; the inputs by their place in the
/// order) and a mask's non-zeros in column `j` of that *compute order* are a prefix of the rows:
/// row `i` below connects to unit `j` when its degree is `<=` (hidden layers) or `<` (outputs,
/// direct connections) that of `j`, and the rows are sorted by degree. ``MatrixBlocks/activeRows``
/// holds the length of that prefix per column. The columns are then cut into a few *bands*: a band
/// `[start, end)` is one product over the rows `0..<rows`, `rows` the longest prefix in the band,
/// so the small zero triangle inside a band is computed and everything above it skipped. The cut
/// minimizes ``bandCost`` per band (the multiply-adds of the band plus a fixed cost per call) by
/// dynamic programming over candidate boundaries.
///
/// Outputs keep their chunks: compute column `c * D + p` is output `c * D + d` of the input `d`
/// at place `p`, so chunk `c` of the outputs lines up with the inputs in compute order.
///
/// A partition is a pure function of the mask set (degrees and configuration): every process
/// computes the same blocks, so the same sums in the same order.
public struct BlockPartition: Sendable, Equatable {
    /// A run of columns computed by one product over a prefix of the rows.
    public struct Band: Sendable, Equatable {
        /// Compute columns `start..<end`.
        public let start: Int
        public let end: Int
        /// Rows `0..<rows` take part (0: the band is all zero).
        public let rows: Int
    }

    /// One weight matrix in compute order.
    public struct MatrixBlocks: Sendable, Equatable {
        public let rows: Int
        public let columns: Int
        /// `rowOrder[i]` is the layout row held at compute row `i`.
        public let rowOrder: [Int32]
        /// `columnOrder[j]` is the layout column held at compute column `j`.
        public let columnOrder: [Int32]
        /// Per compute column, the number of leading compute rows the mask keeps.
        public let activeRows: [Int32]
        /// `rowPosition[r]` is the compute row of layout row `r`.
        public let rowPosition: [Int32]
        /// `columnPosition[c]` is the compute column of layout column `c`.
        public let columnPosition: [Int32]
        /// `activeRows` by layout column: `activeRows[columnPosition[c]]`.
        public let activeByColumn: [Int32]
        /// The column bands, in column order, covering `0..<columns`.
        public let bands: [Band]
        /// The bands as `(start, end, rows)` triples, for the C kernels.
        public let bandTable: [Int32]

        init(rows: Int, columns: Int, rowOrder: [Int32], columnOrder: [Int32], activeRows: [Int32], bands: [Band]) {
            self.rows = rows
            self.columns = columns
            self.rowOrder = rowOrder
            self.columnOrder = columnOrder
            self.activeRows = activeRows
            self.bands = bands
            var rowPosition = [Int32](repeating: 0, count: rowOrder.count)
            for (i, r) in rowOrder.enumerated() { rowPosition[Int(r)] = Int32(i) }
            self.rowPosition = rowPosition
            var position = [Int32](repeating: 0, count: columnOrder.count)
            for (j, c) in columnOrder.enumerated() { position[Int(c)] = Int32(j) }
            columnPosition = position
            activeByColumn = position.map { activeRows[Int($0)] }
            bandTable = bands.flatMap { [Int32($0.start), Int32($0.end), Int32($0.rows)] }
            // Masking in compute order takes a row's dropped columns in a band as a prefix of it.
            let sorted = bands.allSatisfy { band in
                (band.start + 1..<band.end).allSatisfy { activeRows[$0 - 1] <= activeRows[$0] }
            }
            precondition(sorted, "BlockPartition: prefixes not sorted inside a band")
        }
        /// The longest prefix over all columns: rows beyond it connect to nothing.
        public var usedRows: Int { bands.map(\.rows).max() ?? 0 }
        /// Weights the mask keeps.
        public var activeCount: Int { activeRows.reduce(0) { $0 + Int($1) } }
        /// Weights the bands compute (the kept ones and the triangles inside bands).
        public var computedCount: Int { bands.reduce(0) { $0 + $1.rows * ($1.end - $1.start) } }
    }

    /// The matrices in parameter-layout order: the layers, then the direct connections.
    public let matrices: [MatrixBlocks]
    /// `inputOrder[p]` is the input at place `p` of the order (compute column `p` of the input).
    public let inputOrder: [Int32]
    /// `outputOrder[j]` is the layout output held at compute column `j`.
    public let outputOrder: [Int32]
    /// `outputPosition[j]` is the compute column of layout output `j`.
    public let outputPosition: [Int32]

    /// The fixed cost of one band, in multiply-adds per batch row: about what a small `sgemm`
    /// call costs beyond its arithmetic.
    public static let bandCost = 2048
    /// Band boundaries fall on multiples of this many columns (and on chunk boundaries).
    public static let bandGranularity = 8

    public init(configuration: ModelConfiguration, degrees: [[Int]]) {
        let d = configuration.inputCount
        func sortedByDegree(_ degree: [Int]) -> [Int32] {
            degree.indices.sorted { (degree[$0], $0) < (degree[$1], $1) }.map { Int32($0) }
        }
        let inputOrder = sortedByDegree(degrees[0])
        var outputOrder: [Int32] = []
        for c in 0..<configuration.outputMultiplier {
            outputOrder += inputOrder.map { Int32(c * d) + $0 }
        }
        var position = [Int32](repeating: 0, count: outputOrder.count)
        for (j, o) in outputOrder.enumerated() { position[Int(o)] = Int32(j) }

        func blocks(
            from below: [Int],
            rowOrder: [Int32],
            to above: [Int],
            columnOrder: [Int32],
            strict: Bool,
            chunk: Int
        ) -> MatrixBlocks {
            let sortedBelow = rowOrder.map { below[Int($0)] }
            // Count of sorted degrees below `<=` (or `<`) each column's degree: a binary search.
            func prefix(_ degree: Int) -> Int32 {
                var low = 0
                var high = sortedBelow.count
                while low < high {
                    let mid = (low + high) / 2
                    if strict ? sortedBelow[mid] < degree : sortedBelow[mid] <= degree {
                        low = mid + 1
                    } else {
                        high = mid
                    }
                }
                return Int32(low)
            }
            let active = columnOrder.map { prefix(above[Int($0)]) }
            return MatrixBlocks(
                rows: below.count,
                columns: above.count,
                rowOrder: rowOrder,
                columnOrder: columnOrder,
                activeRows: active,
                bands: Self.bands(active, chunk: chunk)
            )
        }

        var matrices: [MatrixBlocks] = []
        var belowDegrees = degrees[0]
        var belowOrder = inputOrder
        for l in 1..<degrees.count {
            let order = sortedByDegree(degrees[l])
            matrices.append(
                blocks(
                    from: belowDegrees,
                    rowOrder: belowOrder,
                    to: degrees[l],
                    columnOrder: order,
                    strict: false,
                    chunk: degrees[l].count
                )
            )
            belowDegrees = degrees[l]
            belowOrder = order
        }
        let canonicalOutputDegrees = (0..<configuration.outputCount).map { degrees[0][$0 % d] }
        matrices.append(
            blocks(
                from: belowDegrees,
                rowOrder: belowOrder,
                to: canonicalOutputDegrees,
                columnOrder: outputOrder,
                strict: true,
                chunk: d
            )
        )
        if configuration.directConnections {
            matrices.append(
                blocks(
                    from: degrees[0],
                    rowOrder: inputOrder,
                    to: canonicalOutputDegrees,
                    columnOrder: outputOrder,
                    strict: true,
                    chunk: d
                )
            )
        }
        self.matrices = matrices
        self.inputOrder = inputOrder
        self.outputOrder = outputOrder
        self.outputPosition = position
        self.hasDirect = configuration.directConnections
    }

    /// The cheapest cut of columns with prefixes `active` into bands, boundaries on multiples of
    /// ``bandGranularity`` within each chunk of `chunk` columns.
    ///
    /// - Complexity: O(c^2 / g^2) for c columns.
    static func bands(_ active: [Int32], chunk: Int) -> [Band] {
        let n = active.count
        guard n > 0 else { return [] }
        var candidates: [Int] = [0]
        var start = 0
        while start < n {
            let end = min(n, start + chunk)
            var b = start + bandGranularity
            while b < end {
                candidates.append(b)
                b += bandGranularity
            }
            candidates.append(end)
            start = end
        }
        // best[e]: the cheapest cut of columns 0..<candidates[e]; a band never crosses a chunk.
        let chunkOf = { (column: Int) in column / chunk }
        var best = [Int](repeating: .max, count: candidates.count)
        var from = [Int](repeating: 0, count: candidates.count)
        best[0] = 0
        for e in 1..<candidates.count {
            var rows = 0
            var s = e - 1
            let last = candidates[e] - 1
            while s >= 0 {
                for j in candidates[s]..<candidates[s + 1] { rows = max(rows, Int(active[j])) }
                if chunkOf(candidates[s]) != chunkOf(last) { break }
                let cost = best[s] + rows * (candidates[e] - candidates[s]) + (rows > 0 ? bandCost : 0)
                if cost < best[e] {
                    best[e] = cost
                    from[e] = s
                }
                s -= 1
            }
        }
        var bands: [Band] = []
        var e = candidates.count - 1
        while e > 0 {
            let s = from[e]
            let rows = (candidates[s]..<candidates[e]).reduce(0) { max($0, Int(active[$1])) }
            bands.append(Band(start: candidates[s], end: candidates[e], rows: rows))
            e = s
        }
        return bands.reversed()
    }

    /// The fraction of a training step's dense multiply-adds that the sparse kernel does: per
    /// matrix the forward product and the weight gradient, and the input gradient of every layer
    /// but the first (the step needs none for the inputs). With `selectedRows` the first layer and
    /// the direct connections take binary inputs with `density` ones as sums of selected rows:
    /// `density` times the rows below each 32-column block's longest prefix.
    public func trainingStepFraction(density: Double, selectedRows: Bool) -> Double {
        var dense = 0.0
        var done = 0.0
        let direct = hasDirect
        for (k, m) in matrices.enumerated() {
            let full = Double(m.rows * m.columns)
            let takesInput = k == 0 || (direct && k == matrices.count - 1)
            let passes = takesInput ? 2.0 : 3.0
            dense += passes * full
            if takesInput && selectedRows {
                var blocked = 0
                var j0 = 0
                while j0 < m.columns {
                    let j1 = min(m.columns, j0 + 32)
                    blocked += Int(m.activeRows[j0..<j1].max() ?? 0) * (j1 - j0)
                    j0 = j1
                }
                done += passes * density * Double(blocked)
            } else {
                done += passes * Double(m.computedCount)
            }
        }
        return done / max(dense, 1)
    }

    /// Whether the last matrix is the direct connections.
    public let hasDirect: Bool
}
