import CKernels
import Foundation
import Testing

@testable import MADE

/// The float staircase products (`made_staircase_*_f32`) against `Double` references, over random
/// staircases with ragged edges, and their AVX2 path against their portable one, bit for bit.
@Suite("Staircase products")
struct StaircaseKernelTests {
    /// A random staircase in compute order: bands as ``BlockPartition`` cuts them, the weights
    /// written inside the bands only (+0 past each column's prefix there) and NaN elsewhere, so a
    /// read outside the bands shows.
    struct Case {
        let n: Int
        let rows: Int
        let columns: Int
        let active: [Int32]
        let bandTable: [Int32]
        let bands: [BlockPartition.Band]
        let w: [Float]
        let a: [Float]
        let delta: [Float]

        init(n: Int, rows: Int, columns: Int, chunk: Int, random: inout RandomStream) {
            self.n = n
            self.rows = rows
            self.columns = columns
            var active: [Int32] = []
            var start = 0
            while start < columns {
                // Each chunk's prefixes ascend, from any first one.
                let end = min(columns, start + chunk)
                var prefixes = (start..<end).map { _ in Int32(random.next() % UInt64(rows + 1)) }
                prefixes.sort()
                active += prefixes
                start = end
            }
            self.active = active
            bands = BlockPartition.bands(active, chunk: chunk)
            bandTable = bands.flatMap { [Int32($0.start), Int32($0.end), Int32($0.rows)] }
            var w = [Float](repeating: .nan, count: rows * columns)
            for band in bands {
                for i in 0..<band.rows {
                    for j in band.start..<band.end {
                        w[i * columns + j] = i < Int(active[j]) ? random.unitFloat() * 2 - 1 : 0
                    }
                }
            }
            self.w = w
            // ReLU-like rows: about a third exactly zero.
            a = (0..<n * rows).map { _ in
                let u = random.unitFloat()
                return u < 0.3 ? 0 : u
            }
            delta = (0..<n * columns).map { _ in random.unitFloat() * 2 - 1 }
        }

        /// The tile of 16 columns (inside a band) holding column `j`, and its depth.
        func tileDepth(_ j: Int) -> Int {
            let band = bands.first { $0.start <= j && j < $0.end }!
            let t0 = band.start + (j - band.start) / 16 * 16
            let t1 = min(t0 + 16, band.end)
            return Int(active[t0..<t1].max()!)
        }

        var scratchCount: Int { made_staircase_scratch_floats(n, rows, columns) }
    }

    struct Results: Equatable {
        var product: [Float]
        var accumulated: [Float]
        var weightGradient: [Float]
        var inputGradient: [Float]
        var inputAccumulated: [Float]
    }

    /// The three products (and the two accumulating forms) of `c`.
    static func run(_ c: Case) -> Results {
        var scratch = [Float](repeating: .nan, count: max(c.scratchCount, 1))
        var tiles = [Int32](repeating: -1, count: max(3 * c.columns, 1))
        var product = [Float](repeating: .nan, count: c.n * c.columns)
        var accumulated = (0..<c.n * c.columns).map { Float($0 % 7) - 3 }
        // Outside the bands the weight gradient is left as it was.
        var weightGradient = [Float](repeating: 42, count: c.rows * c.columns)
        var inputGradient = [Float](repeating: .nan, count: c.n * c.rows)
        var inputAccumulated = (0..<c.n * c.rows).map { Float($0 % 5) - 2 }
        func products(into out: inout [Float], accumulate: Int32) {
            out.withUnsafeMutableBufferPointer { p in
                made_staircase_product_f32(
                    c.n,
                    c.rows,
                    c.columns,
                    c.a,
                    c.w,
                    c.active,
                    c.bandTable,
                    c.bands.count,
                    p.baseAddress,
                    accumulate,
                    &scratch
                )
            }
        }
        products(into: &product, accumulate: 0)
        products(into: &accumulated, accumulate: 1)
        weightGradient.withUnsafeMutableBufferPointer { p in
            made_staircase_weight_gradient_f32(
                c.n,
                c.rows,
                c.columns,
                c.a,
                c.delta,
                c.active,
                c.bandTable,
                c.bands.count,
                p.baseAddress,
                &scratch
            )
        }
        func inputGradients(into out: inout [Float], accumulate: Int32) {
            out.withUnsafeMutableBufferPointer { p in
                made_staircase_input_gradient_f32(
                    c.n,
                    c.rows,
                    c.columns,
                    c.delta,
                    c.w,
                    c.active,
                    c.bandTable,
                    c.bands.count,
                    p.baseAddress,
                    accumulate,
                    &scratch,
                    &tiles
                )
            }
        }
        inputGradients(into: &inputGradient, accumulate: 0)
        inputGradients(into: &inputAccumulated, accumulate: 1)
        return Results(
            product: product,
            accumulated: accumulated,
            weightGradient: weightGradient,
            inputGradient: inputGradient,
            inputAccumulated: inputAccumulated
        )
    }

    static let shapes: [(n: Int, rows: Int, columns: Int, chunk: Int)] = [
        (100, 500, 784, 784), (100, 500, 500, 500), (7, 37, 53, 53), (13, 40, 90, 30), (1, 1, 1, 1),
        (5, 3, 17, 17), (11, 19, 8, 8), (6, 64, 120, 40), (0, 9, 12, 12), (4, 0, 10, 10), (3, 16, 33, 11),
        (251, 21, 45, 45),
    ]

    @Test("agree with Double sums over the staircase, ragged tiles, row edges and empty bands")
    func againstDouble() {
        var random = RandomStream(seed: 8, domain: .initialization)
        for shape in Self.shapes {
            let c = Case(n: shape.n, rows: shape.rows, columns: shape.columns, chunk: shape.chunk, random: &random)
            let r = Self.run(c)
            let label = "\(shape)"
            // Each sum's error is within its length times the sum of its terms' magnitudes, times 2^-24.
            func close(_ value: Float, _ exact: Double, _ magnitude: Double, _ terms: Int) -> Bool {
                abs(Double(value) - exact) <= Double(terms + 2) * magnitude * 0x1p-24
            }
            let start = (0..<c.n * c.columns).map { Double($0 % 7) - 3 }
            var bad = 0
            for row in 0..<c.n {
                for j in 0..<c.columns {
                    var exact = 0.0
                    var magnitude = 0.0
                    for k in 0..<Int(c.active[j]) {
                        let t = Double(c.a[row * c.rows + k]) * Double(c.w[k * c.columns + j])
                        exact += t
                        magnitude += abs(t)
                    }
                    let index = row * c.columns + j
                    if !close(r.product[index], exact, magnitude, c.rows) { bad += 1 }
                    if !close(r.accumulated[index], exact + start[index], magnitude + abs(start[index]), c.rows) {
                        bad += 1
                    }
                }
            }
            #expect(bad == 0, "forward \(label)")
            bad = 0
            for band in c.bands {
                for i in 0..<band.rows {
                    for j in band.start..<band.end {
                        let value = r.weightGradient[i * c.columns + j]
                        guard i < c.tileDepth(j) else {
                            if value != 0 || value.sign == .minus { bad += 1 }
                            continue
                        }
                        var exact = 0.0
                        var magnitude = 0.0
                        for row in 0..<c.n {
                            let t = Double(c.a[row * c.rows + i]) * Double(c.delta[row * c.columns + j])
                            exact += t
                            magnitude += abs(t)
                        }
                        if i < Int(c.active[j]), !close(value, exact, magnitude, c.n) { bad += 1 }
                        if !value.isFinite { bad += 1 }
                    }
                }
            }
            // Outside the bands nothing is written.
            for band in c.bands {
                for i in band.rows..<c.rows {
                    for j in band.start..<band.end where r.weightGradient[i * c.columns + j] != 42 { bad += 1 }
                }
            }
            #expect(bad == 0, "weight gradient \(label)")
            bad = 0
            let startInput = (0..<c.n * c.rows).map { Double($0 % 5) - 2 }
            for row in 0..<c.n {
                for i in 0..<c.rows {
                    var exact = 0.0
                    var magnitude = 0.0
                    for j in 0..<c.columns where i < Int(c.active[j]) {
                        let t = Double(c.delta[row * c.columns + j]) * Double(c.w[i * c.columns + j])
                        exact += t
                        magnitude += abs(t)
                    }
                    let index = row * c.rows + i
                    if !close(r.inputGradient[index], exact, magnitude, c.columns) { bad += 1 }
                    let withStart = exact + startInput[index]
                    if !close(r.inputAccumulated[index], withStart, magnitude + abs(startInput[index]), c.columns) {
                        bad += 1
                    }
                }
            }
            #expect(bad == 0, "input gradient \(label)")
        }
    }

    @Test("the AVX2 path and the portable path give the same bits")
    func portableSameBits() {
        var random = RandomStream(seed: 9, domain: .initialization)
        for shape in Self.shapes {
            let c = Case(n: shape.n, rows: shape.rows, columns: shape.columns, chunk: shape.chunk, random: &random)
            let fast = Self.run(c)
            made_staircase_force_generic(1)
            let portable = Self.run(c)
            made_staircase_force_generic(0)
            func bits(_ a: [Float]) -> [UInt32] { a.map(\.bitPattern) }
            #expect(bits(fast.product) == bits(portable.product), "\(shape)")
            #expect(bits(fast.accumulated) == bits(portable.accumulated), "\(shape)")
            #expect(bits(fast.weightGradient) == bits(portable.weightGradient), "\(shape)")
            #expect(bits(fast.inputGradient) == bits(portable.inputGradient), "\(shape)")
            #expect(bits(fast.inputAccumulated) == bits(portable.inputAccumulated), "\(shape)")
        }
    }
}
