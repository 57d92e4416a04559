/// Which layers of a step's gradient are in, task by task, for a coordinator that sums a layer
/// (a matrix of the parameter layout, with its bias) as soon as every task of the step has
/// reported that layer's piece final in its shared-memory slot, while the workers still compute
/// the layers below it. The gradient engine reports the output layer first (see
/// `GradientEngine.gradient(data:indices:into:maskingGradient:computeOrder:layerDone:)`).
///
/// The step's shards are cut into blocks, whole aligned subtrees of the reduction tree, one per
/// task; a piece names its block by the block's first shard. A layer is complete when every
/// block has its piece; it is then summed over the blocks in the tree's order, which the order
/// of arrival does not touch, so the bits are those of the sum of the whole results. A summed
/// layer stays summed: a block computed again (its worker was lost, the step was re-planned)
/// gives the same bits, so its later pieces and result add nothing to it.
///
/// A pure state machine: no sockets, no memory. The caller passes only pieces of tasks it
/// handed out (the coordinator's state machine knows which peer holds which task) and sums
/// the layers this returns.
public struct LayerPieces: Sendable, Equatable {
    /// Why a piece was not taken.
    public enum Refusal: Error, Sendable, Equatable {
        /// A piece of another step (late, from a step already summed, or not begun).
        case otherStep(UInt64)
        /// No block of the step's cut begins at this shard.
        case noSuchBlock(UInt32)
        /// A matrix the layout does not have.
        case noSuchMatrix(Int)
    }

    /// What a piece did.
    public enum Outcome: Sendable, Equatable {
        /// Taken; these layers are complete with it (every block in) and to be summed now.
        case accepted(complete: [Int])
        /// The block's piece of that layer was in already, or the layer was summed already.
        case duplicate
        case refused(Refusal)
    }

    public let step: UInt64
    public let matrixCount: Int
    /// The first shard of each block of the step's cut, ascending.
    public private(set) var blockStarts: [UInt32]
    /// Per block: which layers' pieces are in (bit k for matrix k).
    private var ready: [UInt64]
    /// Layers summed already (bit k).
    public private(set) var summed: UInt64 = 0
    /// Pieces refused, and pieces that were in already.
    public private(set) var refusedCount = 0
    public private(set) var duplicateCount = 0

    /// - Parameter blockStarts: the first shard of each block of the step's cut.
    /// - Precondition: 1 to 64 matrices; at least one block, starts ascending.
    public init(step: UInt64, blockStarts: [UInt32], matrixCount: Int) {
        precondition(matrixCount > 0 && matrixCount <= 64, "LayerPieces: 1 to 64 matrices")
        precondition(!blockStarts.isEmpty && zip(blockStarts, blockStarts.dropFirst()).allSatisfy { $0 < $1 })
        self.step = step
        self.matrixCount = matrixCount
        self.blockStarts = blockStarts
        self.ready = Array(repeating: 0, count: blockStarts.count)
    }

    private var all: UInt64 { matrixCount == 64 ? ~0 : (1 << UInt64(matrixCount)) - 1 }

    /// Whether layer `k` has been summed.
    public func isSummed(_ k: Int) -> Bool { k >= 0 && k < matrixCount && summed & (1 << UInt64(k)) != 0 }

    /// The layers not summed yet, which the whole results must supply, ascending.
    public var unsummed: [Int] { (0..<matrixCount).filter { !isSummed($0) } }

    /// The piece of layer `matrix` of the block beginning at shard `firstShard`, for `step`.
    public mutating func receive(step: UInt64, firstShard: UInt32, matrix: Int) -> Outcome {
        guard step == self.step else { return refuse(.otherStep(step)) }
        guard matrix >= 0 && matrix < matrixCount else { return refuse(.noSuchMatrix(matrix)) }
        guard let block = blockStarts.firstIndex(of: firstShard) else { return refuse(.noSuchBlock(firstShard)) }
        let bit = UInt64(1) << UInt64(matrix)
        if summed & bit != 0 || ready[block] & bit != 0 {
            duplicateCount += 1
            return .duplicate
        }
        ready[block] |= bit
        guard ready.allSatisfy({ $0 & bit != 0 }) else { return .accepted(complete: []) }
        summed |= bit
        return .accepted(complete: [matrix])
    }

    /// The block beginning at `firstShard` is no longer where its pieces said it was (its worker
    /// was lost or given other work before the layers were summed): its pieces of the layers not
    /// summed yet are forgotten, to come again from whoever computes the block next.
    public mutating func forget(firstShard: UInt32) {
        guard let block = blockStarts.firstIndex(of: firstShard) else { return }
        ready[block] &= summed
    }

    /// The step was cut anew (a worker left or joined): the pieces of the layers not summed yet
    /// are forgotten, since they were cut otherwise; the summed ones stay summed (the tree over
    /// whole aligned blocks gives the same bits however it is cut).
    public mutating func replan(blockStarts starts: [UInt32]) {
        precondition(!starts.isEmpty && zip(starts, starts.dropFirst()).allSatisfy { $0 < $1 })
        if starts == blockStarts { return }
        blockStarts = starts
        ready = Array(repeating: summed, count: starts.count)
    }

    /// Whether every layer has been summed from pieces.
    public var isComplete: Bool { summed == all }

    private mutating func refuse(_ why: Refusal) -> Outcome {
        refusedCount += 1
        return .refused(why)
    }
}
