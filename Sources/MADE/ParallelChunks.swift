import Dispatch

/// Splits `0..<count` into `parts` contiguous ranges and runs `body` on each, concurrently.
///
/// For elementwise kernels only: each element is computed by the same operations whichever
/// range it falls in, so the bits never depend on `parts`. With `parts <= 1` (or a small
/// `count`) everything runs on the calling thread.
@inlinable
public func forEachChunk(count: Int, parts: Int, minimumChunk: Int = 65_536, _ body: (Range<Int>) -> Void) {
    let n = max(1, min(parts, count / max(1, minimumChunk)))
    if n <= 1 {
        body(0..<count)
        return
    }
    withoutActuallyEscaping(body) { body in
        let box = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: n) { i in
            let start = count * i / n
            let end = count * (i + 1) / n
            box.value(start..<end)
        }
    }
}

/// Carries a value across a concurrency boundary the caller has made safe (disjoint ranges).
@usableFromInline
struct UncheckedSendable<Value>: @unchecked Sendable {
    @usableFromInline let value: Value
    @usableFromInline init(_ value: Value) { self.value = value }
}
