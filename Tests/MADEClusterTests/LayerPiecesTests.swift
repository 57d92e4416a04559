import Testing

@testable import MADECluster

/// The state machine of per-layer pieces of a step's gradient, without sockets or memory.
@Suite("Layer pieces")
struct LayerPiecesTests {
    /// Every arrival order of the pieces of 3 blocks and 2 layers completes each layer exactly
    /// once, on its last block's piece.
    @Test("pieces in any order complete each layer once, when its last block is in")
    func anyOrder() {
        let pieces = [(UInt32(0), 0), (0, 1), (2, 0), (2, 1), (4, 0), (4, 1)]
        var orders: [[Int]] = [[]]
        for _ in pieces.indices {
            orders = orders.flatMap { order in pieces.indices.filter { !order.contains($0) }.map { order + [$0] } }
        }
        #expect(orders.count == 720)
        for order in orders {
            var machine = LayerPieces(step: 7, blockStarts: [0, 2, 4], matrixCount: 2)
            var completed: [Int] = []
            var seen: [UInt32: Set<Int>] = [:]
            for i in order {
                let (block, matrix) = pieces[i]
                seen[block, default: []].insert(matrix)
                let last = [UInt32(0), 2, 4].allSatisfy { seen[$0]?.contains(matrix) == true }
                let outcome = machine.receive(step: 7, firstShard: block, matrix: matrix)
                #expect(outcome == .accepted(complete: last ? [matrix] : []))
                if case .accepted(let done) = outcome { completed += done }
            }
            #expect(completed.sorted() == [0, 1])
            #expect(machine.isComplete && machine.unsummed.isEmpty)
            #expect(machine.refusedCount == 0 && machine.duplicateCount == 0)
        }
    }

    @Test("a piece that came before, or of a layer summed already, is a duplicate and changes nothing")
    func twice() {
        var machine = LayerPieces(step: 1, blockStarts: [0, 1], matrixCount: 2)
        #expect(machine.receive(step: 1, firstShard: 0, matrix: 1) == .accepted(complete: []))
        #expect(machine.receive(step: 1, firstShard: 0, matrix: 1) == .duplicate)
        #expect(machine.receive(step: 1, firstShard: 1, matrix: 1) == .accepted(complete: [1]))
        #expect(machine.receive(step: 1, firstShard: 1, matrix: 1) == .duplicate)
        #expect(machine.receive(step: 1, firstShard: 0, matrix: 1) == .duplicate)
        #expect(machine.duplicateCount == 3)
        #expect(machine.unsummed == [0] && !machine.isComplete)
    }

    @Test("pieces of another step, block or matrix are refused and counted")
    func refused() {
        var machine = LayerPieces(step: 5, blockStarts: [0, 2], matrixCount: 3)
        #expect(machine.receive(step: 4, firstShard: 0, matrix: 0) == .refused(.otherStep(4)))
        #expect(machine.receive(step: 6, firstShard: 0, matrix: 0) == .refused(.otherStep(6)))
        #expect(machine.receive(step: 5, firstShard: 1, matrix: 0) == .refused(.noSuchBlock(1)))
        #expect(machine.receive(step: 5, firstShard: 9, matrix: 0) == .refused(.noSuchBlock(9)))
        #expect(machine.receive(step: 5, firstShard: 0, matrix: 3) == .refused(.noSuchMatrix(3)))
        #expect(machine.receive(step: 5, firstShard: 0, matrix: -1) == .refused(.noSuchMatrix(-1)))
        #expect(machine.refusedCount == 6)
        #expect(machine.unsummed == [0, 1, 2])
        // Refusals leave the step as it was.
        #expect(machine.receive(step: 5, firstShard: 0, matrix: 2) == .accepted(complete: []))
        #expect(machine.receive(step: 5, firstShard: 2, matrix: 2) == .accepted(complete: [2]))
    }

    @Test("a dropped worker's pieces of unsummed layers are forgotten and must come again; summed layers stay")
    func droppedWorker() {
        var machine = LayerPieces(step: 3, blockStarts: [0, 1], matrixCount: 2)
        // Block 0's worker reports both layers, block 1's the output layer, then block 0's worker is lost.
        #expect(machine.receive(step: 3, firstShard: 0, matrix: 1) == .accepted(complete: []))
        #expect(machine.receive(step: 3, firstShard: 0, matrix: 0) == .accepted(complete: []))
        #expect(machine.receive(step: 3, firstShard: 1, matrix: 1) == .accepted(complete: [1]))
        machine.forget(firstShard: 0)
        // Layer 0 no longer completes on block 1's piece: block 0's piece is gone.
        #expect(machine.receive(step: 3, firstShard: 1, matrix: 0) == .accepted(complete: []))
        // The worker that takes block 0 over reports both again: layer 1 was summed, layer 0 completes.
        #expect(machine.receive(step: 3, firstShard: 0, matrix: 1) == .duplicate)
        #expect(machine.receive(step: 3, firstShard: 0, matrix: 0) == .accepted(complete: [0]))
        #expect(machine.isComplete)
        // Forgetting a block the cut does not have changes nothing.
        var other = machine
        other.forget(firstShard: 7)
        #expect(other == machine)
    }

    @Test("a step cut anew keeps its summed layers and forgets the other pieces")
    func replanned() {
        var machine = LayerPieces(step: 2, blockStarts: [0, 2], matrixCount: 3)
        #expect(machine.receive(step: 2, firstShard: 0, matrix: 2) == .accepted(complete: []))
        #expect(machine.receive(step: 2, firstShard: 2, matrix: 2) == .accepted(complete: [2]))
        #expect(machine.receive(step: 2, firstShard: 0, matrix: 1) == .accepted(complete: []))
        // The same cut again: nothing is lost.
        machine.replan(blockStarts: [0, 2])
        #expect(machine.receive(step: 2, firstShard: 0, matrix: 1) == .duplicate)
        // A worker left: blocks of one shard each.
        machine.replan(blockStarts: [0, 1, 2, 3])
        #expect(machine.unsummed == [0, 1])
        #expect(machine.receive(step: 2, firstShard: 0, matrix: 2) == .duplicate)
        for shard: UInt32 in 0..<3 {
            #expect(machine.receive(step: 2, firstShard: shard, matrix: 1) == .accepted(complete: []))
        }
        #expect(machine.receive(step: 2, firstShard: 3, matrix: 1) == .accepted(complete: [1]))
        #expect(machine.receive(step: 2, firstShard: 2, matrix: 0) == .accepted(complete: []))
        // Cut back into two blocks: layer 0's pieces of the finer cut are forgotten, and a block of
        // that cut is refused now.
        machine.replan(blockStarts: [0, 2])
        #expect(machine.receive(step: 2, firstShard: 0, matrix: 0) == .accepted(complete: []))
        #expect(machine.receive(step: 2, firstShard: 1, matrix: 0) == .refused(.noSuchBlock(1)))
        #expect(machine.receive(step: 2, firstShard: 2, matrix: 0) == .accepted(complete: [0]))
        #expect(machine.isComplete)
    }

    @Test("a model of 64 matrices completes; one block completes a layer on its own piece")
    func edges() {
        var machine = LayerPieces(step: 0, blockStarts: [0], matrixCount: 64)
        for k in (0..<64).reversed() {
            #expect(machine.receive(step: 0, firstShard: 0, matrix: k) == .accepted(complete: [k]))
        }
        #expect(machine.isComplete && machine.unsummed.isEmpty)
    }
}
