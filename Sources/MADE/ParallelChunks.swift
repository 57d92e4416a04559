import Dispatch

/// Splits `0..<count` into `parts` contiguous ranges and runs `body` on each, concurrently.
///
/// For elementwise kernels only: each element is computed by the same operations whichever
/// range it falls in, so the bits never depend on `parts`. With `parts <= 1` (or a small
/// `count`) everything runs on the calling thread.
@inlinable
public func forEachChunk(count: Int, parts: Int, minimumChunk: Int = 65_536, _ body: (Range<Int>) -> Void) {
    allChunks(count: count, parts: parts, minimumChunk: minimumChunk) {
        body($0)
        return true
    }
}

/// ``forEachChunk(count:parts:minimumChunk:_:)`` for a body that answers: whether it answered
/// true for every range (each range is run either way).
@inlinable
@discardableResult
public func allChunks(count: Int, parts: Int, minimumChunk: Int = 65_536, _ body: (Range<Int>) -> Bool) -> Bool {
    let n = max(1, min(parts, count / max(1, minimumChunk)))
    if n <= 1 { return body(0..<count) }
    return withUnsafeTemporaryAllocation(of: Bool.self, capacity: n) { answers in
        withoutActuallyEscaping(body) { body in
            let box = UncheckedSendable((body, answers.baseAddress!))
            DispatchQueue.concurrentPerform(iterations: n) { i in
                let (body, answers) = box.value
                (answers + i).initialize(to: body((count * i / n)..<(count * (i + 1) / n)))
            }
        }
        return answers.allSatisfy { $0 }
    }
}

/// Carries a value across a concurrency boundary the caller has made safe (disjoint ranges).
@usableFromInline
struct UncheckedSendable<Value>: @unchecked Sendable {
    @usableFromInline let value: Value
    @usableFromInline init(_ value: Value) { self.value = value }
}
