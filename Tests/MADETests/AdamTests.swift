import Foundation
import Testing

@testable import MADE

@Suite("Adam and schedules")
struct AdamTests {
    /// Two steps computed by hand (in Double, then rounded) from PyTorch's update rule.
    @Test("two steps match hand-computed values")
    func handComputed() {
        let c = AdamConfiguration(learningRate: 0.1, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.01)
        var p: [Float] = [1.0, -2.0, 0.0]
        var state = AdamState(parameterCount: 3)
        let g1: [Float] = [0.5, 0.0, -4.0]
        let g2: [Float] = [0.25, 1.0, -4.0]
        // Reference in Double.
        var rp = p.map(Double.init)
        var m = [0.0, 0, 0]
        var v = [0.0, 0, 0]
        for (t, g) in [g1, g2].enumerated() {
            for i in 0..<3 {
                let gi = 2 * Double(g[i]) + 0.01 * rp[i]  // scale 2
                m[i] = 0.9 * m[i] + 0.1 * gi
                v[i] = 0.999 * v[i] + 0.001 * gi * gi
                let mhat = m[i] / (1 - pow(0.9, Double(t + 1)))
                let vhat = v[i] / (1 - pow(0.999, Double(t + 1)))
                rp[i] -= 0.1 * mhat / (sqrt(vhat) + 1e-8)
            }
            state.update(parameters: &p, gradient: g, scale: 2, learningRate: 0.1, configuration: c)
        }
        #expect(state.step == 2)
        for i in 0..<3 {
            #expect(abs(Double(p[i]) - rp[i]) <= 2e-6 * max(1, abs(rp[i])), "parameter \(i): \(p[i]) vs \(rp[i])")
        }
        // First step of Adam moves every parameter with a non-zero gradient by about lr.
        var q: [Float] = [0]
        var s = AdamState(parameterCount: 1)
        s.update(
            parameters: &q,
            gradient: [3],
            scale: 1,
            learningRate: 0.01,
            configuration: AdamConfiguration(weightDecay: 0)
        )
        #expect(abs(q[0] + 0.01) < 1e-7)
    }

    @Test("splitting Adam, packing and reduction across threads changes no bit")
    func threadsDoNotChangeResults() {
        var rng = RandomStream(seed: 4, domain: .sampling)
        let n = 300_001
        let p0 = (0..<n).map { _ in Float(rng.unitDouble() - 0.5) }
        let g = (0..<n).map { _ in Float(rng.unitDouble() - 0.5) }
        var results: [[Float]] = []
        for threads in [1, 2, 3, 8] {
            var p = p0
            var state = AdamState(parameterCount: n)
            for _ in 0..<3 {
                state.update(
                    parameters: &p,
                    gradient: g,
                    scale: 0.01,
                    learningRate: 1e-3,
                    configuration: AdamConfiguration(),
                    threads: threads
                )
            }
            results.append(p + state.firstMoment + state.secondMoment)
        }
        #expect(results.allSatisfy { $0 == results[0] })
        var a = [g, p0, g]
        var b = [g, p0, g]
        GradientReducer.reduce(&a, threads: 1)
        GradientReducer.reduce(&b, threads: 4)
        #expect(a[0] == b[0])
    }

    @Test("step schedule")
    func schedule() {
        let s = StepSchedule(baseLearningRate: 1e-3, stepEpochs: 45, gamma: 0.1)
        #expect(s.learningRate(epoch: 0) == 1e-3)
        #expect(s.learningRate(epoch: 44) == 1e-3)
        #expect(abs(s.learningRate(epoch: 45) - 1e-4) < 1e-18)
        #expect(abs(s.learningRate(epoch: 99) - 1e-5) < 1e-18)
        #expect(StepSchedule(baseLearningRate: 0.5, stepEpochs: 0, gamma: 0.1).learningRate(epoch: 1000) == 0.5)
    }

    @Test("tree reduction order is fixed by shard index")
    func treeReduction() {
        var shards: [[Float]] = [[1e8], [1], [-1e8], [1], [0.5]]
        GradientReducer.reduce(&shards)
        // ((s0 + s1) + (s2 + s3)) + s4, in Float.
        let expected = ((Float(1e8) + 1) + (Float(-1e8) + 1)) + 0.5
        #expect(shards[0][0] == expected)
        #expect(GradientReducer.reduce([1e16, 1, -1e16, 1, 0.5]) == ((1e16 + 1) + (-1e16 + 1)) + 0.5)
    }

    @Test("the tree over pointers writes the same bits as the tree over arrays", arguments: 1...9)
    func pointerReduction(shardCount: Int) {
        var rng = RandomStream(seed: UInt64(shardCount), domain: .sampling)
        let n = 70_001
        let shards = (0..<shardCount).map { _ in
            (0..<n).map { _ in Float(rng.unitDouble() - 0.5) * Float(1 << (rng.next() % 24)) }
        }
        var arrays = shards
        GradientReducer.reduce(&arrays)
        let buffers = shards.map { s in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
            p.initialize(from: s, count: n)
            return p
        }
        defer { buffers.forEach { $0.deallocate() } }
        var out = [Float](repeating: .nan, count: n)
        let finite = out.withUnsafeMutableBufferPointer {
            GradientReducer.reduce(buffers, count: n, into: $0.baseAddress!, threads: 3)
        }
        #expect(finite)
        #expect(out == arrays[0])
    }

    @Test(
        "the tree over pointers says whether its sum is finite",
        arguments: [Float.nan, .infinity, -.infinity, .greatestFiniteMagnitude]
    )
    func pointerReductionFinite(bad: Float) {
        for shardCount in 1...5 {
            for culprit in 0..<shardCount {
                let n = 200_000
                let buffers = (0..<shardCount).map { s in
                    let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
                    p.initialize(repeating: Float(s) + 0.5, count: n)
                    return p
                }
                defer { buffers.forEach { $0.deallocate() } }
                let out = UnsafeMutablePointer<Float>.allocate(capacity: n)
                defer { out.deallocate() }
                #expect(GradientReducer.reduce(buffers, count: n, into: out, threads: 2))
                for (s, p) in buffers.enumerated() { p.update(repeating: Float(s) + 0.5, count: n) }
                buffers[culprit][n - 1 - culprit] = bad
                if shardCount > 1 {
                    buffers[(culprit + 1) % shardCount][n - 1 - culprit] = bad == .greatestFiniteMagnitude ? bad : 1
                }
                let finite = GradientReducer.reduce(buffers, count: n, into: out, threads: 2)
                // Only the largest float added to itself (two shards or more) overflows; anything not finite stays so.
                #expect(
                    finite == (bad == .greatestFiniteMagnitude && shardCount == 1),
                    "\(bad) in shard \(culprit) of \(shardCount)"
                )
            }
        }
    }
}
