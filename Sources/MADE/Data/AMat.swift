/// A reader of Larochelle's `.amat` text matrices.
///
/// One example per line, values separated by spaces or tabs; every line holds the same number of
/// values. Binarized MNIST ships as `binarized_mnist_{train,valid,test}.amat` with 784 values of 0
/// or 1 per line; real values are accepted too and give real storage. Blank lines at the end of the
/// file are ignored; a blank line followed by more data is an error.
enum AMat {
    /// The suffixes that name the three split files of one data set.
    static let splitSuffixes: [(split: String, suffix: String)] = [
        ("train", "_train.amat"), ("valid", "_valid.amat"), ("test", "_test.amat"),
    ]

    /// The three sibling paths `(train, valid, test)` of a path ending in `_train.amat`,
    /// `_valid.amat` or `_test.amat`; nil for any other name.
    static func siblings(of path: String) -> (train: String, valid: String, test: String)? {
        for (_, suffix) in splitSuffixes where path.hasSuffix(suffix) {
            let prefix = String(path.dropLast(suffix.count))
            return (prefix + "_train.amat", prefix + "_valid.amat", prefix + "_test.amat")
        }
        return nil
    }

    /// Parses a whole `.amat` file.
    ///
    /// - Throws: ``MADEError`` `.invalidData` naming the line for a value that is not a number, a
    ///   line whose length differs from the first one, a blank line inside the data, or an empty file.
    static func parse(_ bytes: UnsafeRawBufferPointer, path: String) throws -> DataMatrix {
        var binary: [UInt8] = []
        var real: [Float] = []
        var isBinary = true
        var dimension = -1
        var rows = 0
        var lineNumber = 0
        var firstBlankLine: Int? = nil
        var position = 0
        let n = bytes.count
        if n >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { position = 3 }  // UTF-8 byte order mark

        func fail(_ message: String) -> MADEError { MADEError(.invalidData, message, path: path) }

        while position < n {
            lineNumber += 1
            var end = position
            while end < n && bytes[end] != 0x0A { end += 1 }
            var valuesInLine = 0
            var i = position
            while i < end {
                let b = bytes[i]
                if b == 0x20 || b == 0x09 || b == 0x0D {
                    i += 1
                    continue
                }
                var tokenEnd = i
                while tokenEnd < end, bytes[tokenEnd] != 0x20, bytes[tokenEnd] != 0x09, bytes[tokenEnd] != 0x0D {
                    tokenEnd += 1
                }
                if valuesInLine == 0, let blank = firstBlankLine {
                    throw fail("line \(blank) is blank but data follows on line \(lineNumber)")
                }
                let value: Float
                if tokenEnd == i + 1 && (b == 0x30 || b == 0x31) {
                    value = b == 0x31 ? 1 : 0
                } else {
                    let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[i..<tokenEnd]), as: UTF8.self)
                    guard let parsed = Float(text), parsed.isFinite else {
                        let shown = text.count > 40 ? String(text.prefix(40)) + "..." : text
                        throw fail("line \(lineNumber), value \(valuesInLine + 1): '\(shown)' is not a finite number")
                    }
                    value = parsed
                }
                if isBinary && value != 0 && value != 1 {
                    isBinary = false
                    real = binary.map { Float($0) }
                    binary = []
                }
                if isBinary { binary.append(value == 1 ? 1 : 0) } else { real.append(value) }
                valuesInLine += 1
                if dimension >= 0 && valuesInLine > dimension {
                    break  // reported below, with the full count
                }
                i = tokenEnd
            }
            if valuesInLine == 0 {
                if firstBlankLine == nil { firstBlankLine = lineNumber }
            } else {
                if dimension < 0 {
                    dimension = valuesInLine
                    if isBinary { binary.reserveCapacity(dimension * max(1, n / max(1, end - position + 1))) }
                } else if valuesInLine != dimension {
                    let counted = countValues(bytes, from: position, to: end)
                    throw fail(
                        """
                        line \(lineNumber) has \(counted) values, but line 1 has \(dimension): every line must have \
                        the same length
                        """
                    )
                }
                rows += 1
            }
            position = end + 1
        }
        guard rows > 0 else { throw fail("no examples: the file is empty or blank") }
        if isBinary { return DataMatrix(binary: binary, count: rows, dimension: dimension) }
        return DataMatrix(real: real, count: rows, dimension: dimension)
    }

    /// Counts whitespace-separated tokens in `bytes[from..<to]`.
    private static func countValues(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int {
        var count = 0
        var inToken = false
        for i in from..<to {
            let space = bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0D
            if !space && !inToken { count += 1 }
            inToken = !space
        }
        return count
    }
}
