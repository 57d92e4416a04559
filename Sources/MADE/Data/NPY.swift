/// A reader of NumPy's `.npy` array format, for 2-D data matrices.
///
/// The format is a magic string `\x93NUMPY`, a version (1.0 with a 2-byte header length; 2.0 and
/// 3.0 with a 4-byte one), then a Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (50000, 784), }` padded to alignment, then
/// the raw array. Python 2 style long integers in the shape (`(50000L, 784L)`) are accepted.
///
/// Supported element types are `float32` and `float64` in either byte order, `uint8` and `bool`.
/// The result holds binary storage when every value is exactly 0 or 1, real storage otherwise.
/// Every length is checked before it is read, so a hostile file yields an error, never a crash.
enum NPY {
    /// The element type of an array.
    enum ElementType: Equatable {
        case float32(bigEndian: Bool)
        case float64(bigEndian: Bool)
        case uint8
        case bool

        /// Bytes per element.
        var size: Int {
            switch self {
            case .float32: return 4
            case .float64: return 8
            case .uint8, .bool: return 1
            }
        }

        /// NumPy's name of the type, for messages.
        var name: String {
            switch self {
            case .float32(let big): return big ? "float32 (big-endian)" : "float32"
            case .float64(let big): return big ? "float64 (big-endian)" : "float64"
            case .uint8: return "uint8"
            case .bool: return "bool"
            }
        }
    }

    /// The parsed header of a `.npy` file.
    struct Header: Equatable {
        var elementType: ElementType
        var fortranOrder: Bool
        var shape: [Int]
        /// Offset of the first array byte from the start of the file.
        var dataOffset: Int
    }

    static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // \x93NUMPY

    /// Whether `bytes` starts with the `.npy` magic string.
    static func hasMagic(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= magic.count && zip(bytes.prefix(magic.count), magic).allSatisfy { $0 == $1 }
    }

    /// Parses a whole `.npy` file holding a 2-D array into a data matrix.
    ///
    /// - Parameters:
    ///   - bytes: the file's contents.
    ///   - path: the file, for errors.
    ///   - entry: the array's name inside an archive, prefixed to messages when given.
    static func parse(_ bytes: UnsafeRawBufferPointer, path: String, entry: String? = nil) throws -> DataMatrix {
        let fail = { (message: String) -> MADEError in
            MADEError(.invalidData, entry.map { "\($0): \(message)" } ?? message, path: path)
        }
        let header = try parseHeader(bytes, fail: fail)
        let shape = header.shape
        let shapeText = "(" + shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? ",)" : ")")
        guard shape.count == 2 else {
            throw fail(
                "a \(shape.count)-D array of shape \(shapeText); data must be a 2-D array (examples x dimension)"
            )
        }
        let (rows, columns) = (shape[0], shape[1])
        guard rows > 0, columns > 0 else { throw fail("empty array of shape \(shapeText): no data") }
        let elements = rows.multipliedReportingOverflow(by: columns)
        let size = elements.partialValue.multipliedReportingOverflow(by: header.elementType.size)
        guard !elements.overflow, !size.overflow else {
            throw fail("shape \(shapeText) of \(header.elementType.name) is too large to exist")
        }
        let available = bytes.count - header.dataOffset
        guard available >= size.partialValue else {
            throw fail(
                """
                truncated: header says \(rows)x\(columns) \(header.elementType.name) = \(size.partialValue) bytes, \
                file has \(available)
                """
            )
        }
        guard available == size.partialValue else {
            throw fail(
                """
                \(available - size.partialValue) bytes after the \(rows)x\(columns) \(header.elementType.name) array \
                its header describes
                """
            )
        }
        let data = UnsafeRawBufferPointer(rebasing: bytes[header.dataOffset..<(header.dataOffset + size.partialValue)])
        let layout = Layout(rows: rows, columns: columns, fortranOrder: header.fortranOrder)
        switch header.elementType {
        case .float32(false): return try decode(LittleFloat32.self, data, layout, fail)
        case .float32(true): return try decode(BigFloat32.self, data, layout, fail)
        case .float64(false): return try decode(LittleFloat64.self, data, layout, fail)
        case .float64(true): return try decode(BigFloat64.self, data, layout, fail)
        case .uint8: return try decode(Byte.self, data, layout, fail)
        case .bool: return try decode(Boolean.self, data, layout, fail)
        }
    }

    /// Parses the magic, version and header dict.
    static func parseHeader(_ bytes: UnsafeRawBufferPointer, fail: (String) -> MADEError) throws -> Header {
        guard hasMagic(bytes) else {
            throw fail("bad magic: not a .npy file (it should start with \\x93NUMPY)")
        }
        guard bytes.count >= 8 else { throw fail("truncated: the file ends inside its version field") }
        let (major, minor) = (bytes[6], bytes[7])
        let lengthSize: Int
        switch major {
        case 1: lengthSize = 2
        case 2, 3: lengthSize = 4
        default: throw fail("unsupported .npy format version \(major).\(minor)")
        }
        guard bytes.count >= 8 + lengthSize else { throw fail("truncated: the file ends inside its header length") }
        var headerLength = 0
        for i in 0..<lengthSize { headerLength |= Int(bytes[8 + i]) << (8 * i) }
        let start = 8 + lengthSize
        guard bytes.count - start >= headerLength else {
            throw fail(
                "truncated: header length \(headerLength) exceeds the \(bytes.count - start) bytes left in the file"
            )
        }
        let text = UnsafeRawBufferPointer(rebasing: bytes[start..<(start + headerLength)])
        var parser = PythonLiteralParser(text: text)
        let dict: [String: PythonLiteralParser.Value]
        do {
            dict = try parser.parseHeaderDict()
        } catch let error as PythonLiteralParser.SyntaxError {
            throw fail("malformed header: \(error.message) at offset \(error.offset) of \"\(parser.excerpt())\"")
        }

        guard let descr = dict["descr"] else { throw fail("malformed header: no 'descr' key") }
        guard case .string(let descrText) = descr else {
            throw fail("unsupported dtype: structured arrays are not data matrices")
        }
        guard let elementType = elementType(descrText) else {
            throw fail("unsupported dtype '\(descrText)' (supported: float32, float64, uint8, bool)")
        }
        guard let fortranValue = dict["fortran_order"] else { throw fail("malformed header: no 'fortran_order' key") }
        guard case .bool(let fortranOrder) = fortranValue else {
            throw fail("malformed header: 'fortran_order' is not True or False")
        }
        guard let shapeValue = dict["shape"] else { throw fail("malformed header: no 'shape' key") }
        guard case .tuple(let items) = shapeValue else { throw fail("malformed header: 'shape' is not a tuple") }
        var shape: [Int] = []
        for item in items {
            switch item {
            case .integer(let n?) where n >= 0: shape.append(n)
            case .integer(nil): throw fail("shape value too large in header: the array is too large to exist")
            default: throw fail("malformed header: 'shape' holds something other than non-negative integers")
            }
        }
        return Header(
            elementType: elementType,
            fortranOrder: fortranOrder,
            shape: shape,
            dataOffset: start + headerLength
        )
    }

    /// The element type named by a `descr` string, or nil when unsupported.
    static func elementType(_ descr: String) -> ElementType? {
        let scalars = Array(descr.unicodeScalars)
        guard scalars.count >= 3, "<>|=".unicodeScalars.contains(scalars[0]) else { return nil }
        let order = scalars[0]
        switch String(String.UnicodeScalarView(scalars.dropFirst())) {
        case "f4" where order == "<": return .float32(bigEndian: false)
        case "f4" where order == ">": return .float32(bigEndian: true)
        case "f8" where order == "<": return .float64(bigEndian: false)
        case "f8" where order == ">": return .float64(bigEndian: true)
        case "u1": return .uint8
        case "b1": return .bool
        default: return nil
        }
    }

    /// Where element `(row, column)` of the logical matrix sits in the file.
    struct Layout {
        var rows: Int
        var columns: Int
        var fortranOrder: Bool

        /// The row and column of the element at flat position `index` of the file.
        func position(_ index: Int) -> (row: Int, column: Int) {
            fortranOrder ? (index % rows, index / rows) : (index / columns, index % columns)
        }
    }

    /// Converts raw elements into a row-major matrix, binary when every value is 0 or 1.
    private static func decode<E: NPYElement>(
        _: E.Type,
        _ data: UnsafeRawBufferPointer,
        _ layout: Layout,
        _ fail: (String) -> MADEError
    ) throws -> DataMatrix {
        let count = layout.rows * layout.columns
        guard let base = data.baseAddress else { throw fail("no data") }
        // Pass 1: every value finite and representable, and whether all are 0 or 1.
        var allBinary = true
        if !E.alwaysBinary {
            for i in 0..<count {
                let v = E.load(base, i)
                if v == 0 || v == 1 { continue }
                allBinary = false
                if !v.isFinite || abs(v) > Double(Float.greatestFiniteMagnitude) {
                    let (r, c) = layout.position(i)
                    let what = v.isFinite ? "value \(v) is out of float32 range" : "non-finite value \(v)"
                    throw fail("\(what) at row \(r), column \(c)")
                }
            }
        }
        // Pass 2: write row-major output.
        let (rows, columns) = (layout.rows, layout.columns)
        if allBinary {
            let values = [UInt8](unsafeUninitializedCapacity: count) { out, initialized in
                if layout.fortranOrder {
                    for c in 0..<columns {
                        for r in 0..<rows { out[r * columns + c] = E.load(base, c * rows + r) != 0 ? 1 : 0 }
                    }
                } else {
                    for i in 0..<count { out[i] = E.load(base, i) != 0 ? 1 : 0 }
                }
                initialized = count
            }
            return DataMatrix(binary: values, count: rows, dimension: columns)
        }
        let values = [Float](unsafeUninitializedCapacity: count) { out, initialized in
            if layout.fortranOrder {
                for c in 0..<columns { for r in 0..<rows { out[r * columns + c] = Float(E.load(base, c * rows + r)) } }
            } else {
                for i in 0..<count { out[i] = Float(E.load(base, i)) }
            }
            initialized = count
        }
        return DataMatrix(real: values, count: rows, dimension: columns)
    }
}

/// One element type of a `.npy` array, read from unaligned memory.
private protocol NPYElement {
    /// Whether every value of the type is 0 or 1.
    static var alwaysBinary: Bool { get }
    /// The element at index `i`.
    static func load(_ base: UnsafeRawPointer, _ i: Int) -> Double
}

private enum LittleFloat32: NPYElement {
    static var alwaysBinary: Bool { false }
    @inline(__always) static func load(_ base: UnsafeRawPointer, _ i: Int) -> Double {
        Double(Float(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self))))
    }
}

private enum BigFloat32: NPYElement {
    static var alwaysBinary: Bool { false }
    @inline(__always) static func load(_ base: UnsafeRawPointer, _ i: Int) -> Double {
        Double(Float(bitPattern: UInt32(bigEndian: base.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self))))
    }
}

private enum LittleFloat64: NPYElement {
    static var alwaysBinary: Bool { false }
    @inline(__always) static func load(_ base: UnsafeRawPointer, _ i: Int) -> Double {
        Double(bitPattern: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)))
    }
}

private enum BigFloat64: NPYElement {
    static var alwaysBinary: Bool { false }
    @inline(__always) static func load(_ base: UnsafeRawPointer, _ i: Int) -> Double {
        Double(bitPattern: UInt64(bigEndian: base.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)))
    }
}

private enum Byte: NPYElement {
    static var alwaysBinary: Bool { false }
    @inline(__always) static func load(_ base: UnsafeRawPointer, _ i: Int) -> Double {
        Double(base.load(fromByteOffset: i, as: UInt8.self))
    }
}

/// NumPy booleans: any non-zero byte is True.
private enum Boolean: NPYElement {
    static var alwaysBinary: Bool { true }
    @inline(__always) static func load(_ base: UnsafeRawPointer, _ i: Int) -> Double {
        base.load(fromByteOffset: i, as: UInt8.self) != 0 ? 1 : 0
    }
}

/// A parser of the small subset of Python literals that `.npy` headers use.
///
/// It reads a dict with string keys whose values are strings, `True`/`False`/`None`, integers
/// (with an optional Python 2 `L` suffix), and tuples or lists of those, nested to a bounded depth.
struct PythonLiteralParser {
    /// A parsed literal.
    enum Value: Equatable {
        case string(String)
        case bool(Bool)
        case none
        /// An integer; nil when it does not fit in `Int`.
        case integer(Int?)
        case tuple([Value])
        case list([Value])
    }

    /// A syntax error at a byte offset of the header.
    struct SyntaxError: Error {
        var message: String
        var offset: Int
    }

    let text: UnsafeRawBufferPointer
    private(set) var offset = 0
    private static let maxDepth = 16

    init(text: UnsafeRawBufferPointer) { self.text = text }

    /// The header text, shortened for messages, with non-printable bytes escaped.
    func excerpt(limit: Int = 120) -> String {
        var s = ""
        var end = text.count
        while end > 0, text[end - 1] == 0x20 || text[end - 1] == 0x0A { end -= 1 }
        for b in text.prefix(min(end, limit)) {
            if b >= 0x20 && b < 0x7F {
                s.unicodeScalars.append(Unicode.Scalar(b))
            } else if b == 0x0A {
                s += "\\n"
            } else {
                s += "\\x" + String(b, radix: 16)
            }
        }
        return end > limit ? s + "..." : s
    }

    /// Parses the whole header: one dict, then only whitespace.
    mutating func parseHeaderDict() throws -> [String: Value] {
        skipSpace()
        guard peek() == UInt8(ascii: "{") else { throw SyntaxError(message: "expected '{'", offset: offset) }
        offset += 1
        var dict: [String: Value] = [:]
        while true {
            skipSpace()
            if peek() == UInt8(ascii: "}") {
                offset += 1
                break
            }
            guard case .string(let key) = try parseValue(depth: 1) else {
                throw SyntaxError(message: "expected a string key", offset: offset)
            }
            skipSpace()
            guard peek() == UInt8(ascii: ":") else { throw SyntaxError(message: "expected ':'", offset: offset) }
            offset += 1
            dict[key] = try parseValue(depth: 1)
            skipSpace()
            if peek() == UInt8(ascii: ",") {
                offset += 1
                continue
            }
            guard peek() == UInt8(ascii: "}") else { throw SyntaxError(message: "expected ',' or '}'", offset: offset) }
        }
        skipSpace()
        guard offset == text.count else { throw SyntaxError(message: "unexpected text after the dict", offset: offset) }
        return dict
    }

    private func peek() -> UInt8? { offset < text.count ? text[offset] : nil }

    private mutating func skipSpace() {
        while let b = peek(), b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 || b == 0x00 { offset += 1 }
    }

    private mutating func parseValue(depth: Int) throws -> Value {
        guard depth <= Self.maxDepth else { throw SyntaxError(message: "nested too deeply", offset: offset) }
        skipSpace()
        guard let b = peek() else { throw SyntaxError(message: "unexpected end of header", offset: offset) }
        switch b {
        case UInt8(ascii: "'"), UInt8(ascii: "\""):
            return .string(try parseString(quote: b))
        case UInt8(ascii: "("), UInt8(ascii: "["):
            let close = b == UInt8(ascii: "(") ? UInt8(ascii: ")") : UInt8(ascii: "]")
            offset += 1
            var items: [Value] = []
            var sawComma = false
            while true {
                skipSpace()
                if peek() == close {
                    offset += 1
                    break
                }
                items.append(try parseValue(depth: depth + 1))
                skipSpace()
                if peek() == UInt8(ascii: ",") {
                    offset += 1
                    sawComma = true
                    continue
                }
                guard peek() == close else {
                    throw SyntaxError(message: "expected ',' or a closing bracket", offset: offset)
                }
            }
            if close == UInt8(ascii: "]") { return .list(items) }
            // `(5)` is just 5 in Python; `(5,)` is a tuple.
            if items.count == 1 && !sawComma { return items[0] }
            return .tuple(items)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .integer(try parseInteger())
        default:
            let start = offset
            while let c = peek(),
                (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z")) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z"))
            {
                offset += 1
            }
            let word = String(decoding: UnsafeRawBufferPointer(rebasing: text[start..<offset]), as: UTF8.self)
            switch word {
            case "True": return .bool(true)
            case "False": return .bool(false)
            case "None": return .none
            default:
                throw SyntaxError(
                    message: "unexpected '\(word.isEmpty ? String(UnicodeScalar(b)) : word)'",
                    offset: start
                )
            }
        }
    }

    private mutating func parseString(quote: UInt8) throws -> String {
        let start = offset
        offset += 1
        var bytes: [UInt8] = []
        while true {
            guard let c = peek() else { throw SyntaxError(message: "unterminated string", offset: start) }
            offset += 1
            if c == quote { break }
            if c == UInt8(ascii: "\\") {
                guard let escaped = peek() else { throw SyntaxError(message: "unterminated string", offset: start) }
                offset += 1
                bytes.append(escaped)
            } else {
                bytes.append(c)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// An integer literal, with an optional Python 2 `L` suffix; nil when it does not fit in `Int`.
    private mutating func parseInteger() throws -> Int? {
        let start = offset
        var negative = false
        if peek() == UInt8(ascii: "-") {
            negative = true
            offset += 1
        }
        var value: Int? = 0
        var digits = 0
        while let c = peek(), c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") {
            offset += 1
            digits += 1
            if let v = value {
                let m = v.multipliedReportingOverflow(by: 10)
                let a = m.partialValue.addingReportingOverflow(Int(c - UInt8(ascii: "0")))
                value = (m.overflow || a.overflow) ? nil : a.partialValue
            }
        }
        guard digits > 0 else { throw SyntaxError(message: "expected digits", offset: start) }
        if let c = peek(), c == UInt8(ascii: "L") || c == UInt8(ascii: "l") { offset += 1 }
        return value.map { negative ? -$0 : $0 }
    }
}
