import CKernels

/// The parameters a mask keeps, in a compact order: what travels over the socket between
/// coordinator and workers (workers on the coordinator's host read ``mask(_:into:threads:)``'s
/// dense output in shared memory instead).
///
/// The active parameters of a mask set are, in parameter-layout order, every weight whose mask
/// entry is 1 and every bias. Packing gathers them; unpacking scatters them back over zeros.
/// For 784-500-784 about half of each weight matrix is active, so a packed vector is about half
/// the dense size.
public struct MaskPacking: Sendable {
    /// Indices into the dense parameter vector, ascending.
    public let activeIndices: [Int32]
    /// Length of the dense vector.
    public let denseCount: Int
    /// First 16 bytes of the SHA-256 of the masks' bytes, matrix after matrix: two processes
    /// with equal digests built the same masks.
    public let digest: [UInt8]

    public init(maskSet: MaskSet, layout: ParameterLayout) {
        self.init(union: [maskSet], layout: layout)
    }

    /// The packing that keeps every parameter (no mask drops any): the dense vector itself.
    /// Its digest is 16 zero bytes.
    public init(everything layout: ParameterLayout) {
        activeIndices = (0..<layout.count).map { Int32($0) }
        denseCount = layout.count
        activeMask = [UInt8](repeating: 1, count: layout.count)
        digest = [UInt8](repeating: 0, count: 16)
    }

    /// The packing of the parameters any of `maskSets` keeps: a weight is active when its entry
    /// is 1 in at least one of them. It carries a step whose shards train different masks (every
    /// shard's gradient is +0 outside its own mask, so their sum is +0 outside the union). The
    /// digest covers every mask set, in the order given; for one it is that mask set's digest.
    ///
    /// - Complexity: O(parameters x mask sets).
    public init(union maskSets: [MaskSet], layout: ParameterLayout) {
        precondition(!maskSets.isEmpty, "MaskPacking: no masks")
        // Each matrix's weights, then its bias, in layout order: the indices come out ascending.
        var indices: [Int32] = []
        var active = [UInt8](repeating: 0, count: layout.count)
        var hash = SHA256()
        let masks = maskSets.map(\.matrices)
        for matrices in masks {
            for (matrix, bits) in zip(layout.matrices, matrices) {
                precondition(bits.count == matrix.count, "MaskPacking: masks do not fit the layout")
                hash.update(bits)
            }
        }
        for (k, matrix) in layout.matrices.enumerated() {
            let all = masks.map { $0[k] }
            for i in 0..<matrix.count where all.contains(where: { $0[i] != 0 }) {
                indices.append(Int32(matrix.offset + i))
            }
            if let b = matrix.biasOffset { indices.append(contentsOf: (b..<(b + matrix.columns)).map { Int32($0) }) }
        }
        for i in indices { active[Int(i)] = 1 }
        activeIndices = indices
        denseCount = layout.count
        activeMask = active
        digest = Array(hash.finalize().prefix(16))
    }

    /// Per dense parameter, 1 when it is active, 0 when a mask drops it.
    public let activeMask: [UInt8]

    /// Number of packed values.
    public var count: Int { activeIndices.count }

    /// The active entries of `dense`, in order.
    ///
    /// - Complexity: O(``count``).
    public func pack(_ dense: [Float]) -> [Float] {
        precondition(dense.count == denseCount, "pack: \(dense.count) values for a layout of \(denseCount)")
        return [Float](unsafeUninitializedCapacity: count) { out, n in
            pack(dense, into: out)
            n = count
        }
    }

    /// Writes the active entries of `dense`, in order, into `out` (``count`` values).
    public func pack(_ dense: [Float], into out: UnsafeMutableBufferPointer<Float>, threads: Int = 1) {
        precondition(dense.count == denseCount && out.count >= count, "pack: wrong sizes")
        dense.withUnsafeBufferPointer { d in
            activeIndices.withUnsafeBufferPointer { idx in
                let pointers = UncheckedSendable((idx.baseAddress!, d.baseAddress!, out.baseAddress!))
                forEachChunk(count: idx.count, parts: threads) { r in
                    let (i, d, o) = pointers.value
                    made_gather_f32(r.count, i + r.lowerBound, d, o + r.lowerBound)
                }
            }
        }
    }

    /// Writes `dense` with every masked-out weight set to +0 into `out` (``denseCount`` values):
    /// the parameters as a step reads them, ready for ``GradientEngine/begin(inPlace:maskSeed:)``.
    public func mask(_ dense: [Float], into out: UnsafeMutableBufferPointer<Float>, threads: Int = 1) {
        precondition(dense.count == denseCount && out.count >= denseCount, "mask: wrong sizes")
        dense.withUnsafeBufferPointer { d in
            activeMask.withUnsafeBufferPointer { m in
                let pointers = UncheckedSendable((d.baseAddress!, m.baseAddress!, out.baseAddress!))
                forEachChunk(count: denseCount, parts: threads) { r in
                    let (d, m, o) = pointers.value
                    made_mask_select_f32(r.count, d + r.lowerBound, m + r.lowerBound, o + r.lowerBound)
                }
            }
        }
    }

    /// Writes `packed` into the active entries of `dense` and +0 everywhere else.
    ///
    /// With `zeroing` false the other entries are left as they are: pass it only when `dense`
    /// last received an unpack of this same packing, so they are still 0.
    public func unpack(
        _ packed: UnsafeBufferPointer<Float>,
        into dense: inout [Float],
        zeroing: Bool = true,
        threads: Int = 1
    ) {
        if dense.count != denseCount { dense = [Float](repeating: 0, count: denseCount) }
        dense.withUnsafeMutableBufferPointer { unpack(packed, into: $0, zeroing: zeroing, threads: threads) }
    }

    /// ``unpack(_:into:zeroing:threads:)`` into ``denseCount`` values at `dense`.
    public func unpack(
        _ packed: UnsafeBufferPointer<Float>,
        into dense: UnsafeMutableBufferPointer<Float>,
        zeroing: Bool = true,
        threads: Int = 1
    ) {
        precondition(packed.count == count, "unpack: \(packed.count) values for \(count) active parameters")
        precondition(dense.count == denseCount, "unpack: \(dense.count) dense values for a layout of \(denseCount)")
        if zeroing { dense.update(repeating: 0) }
        activeIndices.withUnsafeBufferPointer { idx in
            let pointers = UncheckedSendable((idx.baseAddress!, packed.baseAddress!, dense.baseAddress!))
            forEachChunk(count: idx.count, parts: threads) { r in
                let (i, p, d) = pointers.value
                _ = made_scatter_f32(r.count, i + r.lowerBound, p + r.lowerBound, d)
            }
        }
    }

    /// Writes `packed` into the active entries of `dense` and +0 everywhere else.
    ///
    /// - Complexity: O(dense count).
    public func unpack(_ packed: [Float], into dense: inout [Float], zeroing: Bool = true, threads: Int = 1) {
        packed.withUnsafeBufferPointer { unpack($0, into: &dense, zeroing: zeroing, threads: threads) }
    }

    /// Where each of this packing's values lies among those of `wider`, a packing that keeps
    /// every parameter this one keeps (such as the union of masks that include this one's);
    /// nil when `wider` drops one of them.
    ///
    /// - Complexity: O(``count`` + `wider.count`).
    public func positions(in wider: MaskPacking) -> [Int32]? {
        guard wider.denseCount == denseCount, wider.count >= count else { return nil }
        var positions = [Int32](repeating: 0, count: count)
        var j = 0
        for (k, index) in activeIndices.enumerated() {
            while j < wider.activeIndices.count && wider.activeIndices[j] < index { j += 1 }
            guard j < wider.activeIndices.count, wider.activeIndices[j] == index else { return nil }
            positions[k] = Int32(j)
            j += 1
        }
        return positions
    }

    /// `packed`, values of a narrower packing, as `count` values of a wider one: each at its
    /// position (``positions(in:)``), +0 everywhere else. A gradient that is +0 where the narrower
    /// packing drops a parameter comes out as the wider packing would have packed it.
    public static func spread(_ packed: [Float], positions: [Int32], count: Int) -> [Float] {
        precondition(packed.count == positions.count, "spread: \(packed.count) values for \(positions.count) positions")
        var out = [Float](repeating: 0, count: count)
        guard !packed.isEmpty else { return out }
        packed.withUnsafeBufferPointer { p in
            positions.withUnsafeBufferPointer { i in
                out.withUnsafeMutableBufferPointer { o in
                    _ = made_scatter_f32(p.count, i.baseAddress!, p.baseAddress!, o.baseAddress!)
                }
            }
        }
        return out
    }
}

extension MaskPacking {
    /// The masks and packings of a model's mask seeds, built on first use and kept: the one
    /// cache of them, for the trainer's engine, the coordinator and the workers.
    ///
    /// Training cycles through `maskCount` seeds, evaluation and sampling through a few more;
    /// past ``capacity`` seeds the cache starts over, so a long list of seeds cannot grow it
    /// without bound. Not thread-safe: each owner keeps its own.
    public final class Cache {
        /// Most seeds held at once.
        public static let capacity = 64

        public let configuration: ModelConfiguration
        public let runSeed: UInt64
        public let layout: ParameterLayout
        private var maskSets: [UInt64: MaskSet] = [:]
        private var packings: [UInt64: MaskPacking] = [:]

        public init(configuration: ModelConfiguration, runSeed: UInt64) {
            self.configuration = configuration
            self.runSeed = runSeed
            self.layout = ParameterLayout(configuration)
        }

        /// Seeds whose masks are held.
        public var count: Int { maskSets.count }

        /// The masks of `maskSeed`.
        public func maskSet(_ maskSeed: UInt64) -> MaskSet {
            if let m = maskSets[maskSeed] { return m }
            if maskSets.count >= Self.capacity { maskSets.removeAll() }
            let m = MaskSet(configuration: configuration, runSeed: runSeed, maskSeed: maskSeed)
            maskSets[maskSeed] = m
            return m
        }

        /// The packing of `maskSeed`'s masks.
        public func packing(_ maskSeed: UInt64) -> MaskPacking {
            if let p = packings[maskSeed] { return p }
            if packings.count >= Self.capacity { packings.removeAll() }
            let p = MaskPacking(maskSet: maskSet(maskSeed), layout: layout)
            packings[maskSeed] = p
            return p
        }

        /// The packing of the union of `maskSeeds`' masks (see ``MaskPacking/init(union:layout:)``);
        /// for one seed, ``packing(_:)``; for none, every parameter (``MaskPacking/init(everything:)``).
        /// The last few unions asked for are kept.
        public func packing(union maskSeeds: [UInt64]) -> MaskPacking {
            if maskSeeds.count == 1 { return packing(maskSeeds[0]) }
            if maskSeeds.isEmpty {
                if everything == nil { everything = MaskPacking(everything: layout) }
                return everything!
            }
            if let i = unions.firstIndex(where: { $0.seeds == maskSeeds }) { return unions[i].packing }
            if unions.count >= 8 { unions.removeFirst() }
            let p = MaskPacking(union: maskSeeds.map(maskSet), layout: layout)
            unions.append((maskSeeds, p))
            return p
        }
        private var unions: [(seeds: [UInt64], packing: MaskPacking)] = []
        private var everything: MaskPacking?
    }
}
