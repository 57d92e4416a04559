/// A dense matrix of examples, one row per example, held as compactly as its values allow.
///
/// Binary data (every value 0 or 1) is held as one byte per value; real-valued data as `Float`.
/// Rows are copied out into the scalar type a network computes in with ``copyRows(_:into:)``.
public struct DataMatrix: Sendable, Equatable {
    /// How the values are held.
    public enum Storage: Sendable, Equatable {
        /// Values 0 or 1, one byte each.
        case binary([UInt8])
        /// Arbitrary real values.
        case real([Float])
    }

    /// Number of examples (rows).
    public let count: Int
    /// Number of values per example (columns).
    public let dimension: Int
    public let storage: Storage

    /// Binary data from bytes that are each 0 or 1.
    ///
    /// - Precondition: `values.count == count * dimension` and every value is 0 or 1.
    public init(binary values: [UInt8], count: Int, dimension: Int) {
        precondition(values.count == count * dimension, "DataMatrix: \(values.count) values for \(count)x\(dimension)")
        precondition(values.allSatisfy { $0 <= 1 }, "DataMatrix: binary values must be 0 or 1")
        self.count = count
        self.dimension = dimension
        self.storage = .binary(values)
    }

    /// Real-valued data.
    ///
    /// - Precondition: `values.count == count * dimension`.
    public init(real values: [Float], count: Int, dimension: Int) {
        precondition(values.count == count * dimension, "DataMatrix: \(values.count) values for \(count)x\(dimension)")
        self.count = count
        self.dimension = dimension
        self.storage = .real(values)
    }

    /// Bytes its values take in memory: one per value when binary, four when real.
    public var byteCount: Int {
        switch storage {
        case .binary(let bytes): bytes.count
        case .real(let values): values.count * 4
        }
    }

    /// Whether every value is 0 or 1.
    public var isBinary: Bool {
        if case .binary = storage { return true }
        return false
    }

    /// The value at row `row`, column `column`, as a `Float`.
    public subscript(row: Int, column: Int) -> Float {
        precondition(row >= 0 && row < count && column >= 0 && column < dimension)
        switch storage {
        case .binary(let bytes): return Float(bytes[row * dimension + column])
        case .real(let values): return values[row * dimension + column]
        }
    }

    /// The rows `rows[0..<n]` of this matrix, in that order.
    public func rows<S: Sequence>(_ rows: S) -> DataMatrix where S.Element == Int {
        let indices = Array(rows)
        switch storage {
        case .binary(let bytes):
            var out = [UInt8]()
            out.reserveCapacity(indices.count * dimension)
            for r in indices { out.append(contentsOf: bytes[(r * dimension)..<((r + 1) * dimension)]) }
            return DataMatrix(binary: out, count: indices.count, dimension: dimension)
        case .real(let values):
            var out = [Float]()
            out.reserveCapacity(indices.count * dimension)
            for r in indices { out.append(contentsOf: values[(r * dimension)..<((r + 1) * dimension)]) }
            return DataMatrix(real: out, count: indices.count, dimension: dimension)
        }
    }

    /// Copies the given rows, in order, into `destination` as a row-major `indices.count x dimension` block.
    ///
    /// - Complexity: O(`indices.count * dimension`); allocates nothing.
    public func copyRows<T: BinaryFloatingPoint>(
        _ indices: UnsafeBufferPointer<Int32>,
        into destination: UnsafeMutableBufferPointer<T>
    ) {
        precondition(destination.count >= indices.count * dimension, "copyRows: destination too small")
        let d = dimension
        switch storage {
        case .binary(let bytes):
            bytes.withUnsafeBufferPointer { src in
                for (i, r) in indices.enumerated() {
                    let row = Int(r)
                    precondition(row >= 0 && row < count, "copyRows: row \(row) out of 0..<\(count)")
                    let s = src.baseAddress! + row * d
                    let t = destination.baseAddress! + i * d
                    for j in 0..<d { t[j] = T(s[j]) }
                }
            }
        case .real(let values):
            values.withUnsafeBufferPointer { src in
                for (i, r) in indices.enumerated() {
                    let row = Int(r)
                    precondition(row >= 0 && row < count, "copyRows: row \(row) out of 0..<\(count)")
                    let s = src.baseAddress! + row * d
                    let t = destination.baseAddress! + i * d
                    for j in 0..<d { t[j] = T(s[j]) }
                }
            }
        }
    }
}

/// The splits of a data set. Any split may be absent in a file that holds only some of them.
public struct Dataset: Sendable, Equatable {
    public var train: DataMatrix?
    public var valid: DataMatrix?
    public var test: DataMatrix?
    /// Where the data came from, for messages and fingerprints.
    public var source: String

    public init(train: DataMatrix?, valid: DataMatrix?, test: DataMatrix?, source: String) {
        self.train = train
        self.valid = valid
        self.test = test
        self.source = source
    }

    /// The dimension shared by every present split.
    public var dimension: Int? { (train ?? valid ?? test)?.dimension }

    /// Bytes the splits' values take in memory.
    public var byteCount: Int { [train, valid, test].reduce(0) { $0 + ($1?.byteCount ?? 0) } }
}
