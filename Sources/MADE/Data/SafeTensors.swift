import Foundation

/// Named tensors in the safetensors format, the one PyTorch users load with
/// `safetensors.torch.load_file`.
///
/// File layout (all integers little-endian):
///
///     N                       UInt64: length of the header
///     header                  N bytes of UTF-8 JSON, padded with spaces to a multiple of 8:
///                             {"__metadata__": {"key": "value", ...},
///                              "name": {"dtype": "F32", "shape": [rows, cols],
///                                       "data_offsets": [begin, end]}, ...}
///     data                    the tensors' raw little-endian bytes; `data_offsets` count from
///                             the first byte after the header, and the tensors cover the data
///                             exactly, without gaps or overlaps
///
/// Metadata values are strings. This type reads and writes `F32` tensors (and reads `F64`, `F16`
/// is refused); that is all a MADE state dict holds.
public struct SafeTensors: Sendable, Equatable {
    /// A float32 tensor, row-major.
    public struct Tensor: Sendable, Equatable {
        public var shape: [Int]
        public var values: [Float]

        public init(shape: [Int], values: [Float]) {
            precondition(
                shape.reduce(1, *) == values.count,
                "SafeTensors.Tensor: shape \(shape) does not hold \(values.count) values"
            )
            self.shape = shape
            self.values = values
        }
    }

    /// Tensors in file order.
    public var tensors: [(name: String, tensor: Tensor)]
    public var metadata: [String: String]

    public init(tensors: [(name: String, tensor: Tensor)] = [], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    public static func == (a: SafeTensors, b: SafeTensors) -> Bool {
        a.metadata == b.metadata && a.tensors.map(\.name) == b.tensors.map(\.name)
            && a.tensors.map(\.tensor) == b.tensors.map(\.tensor)
    }

    public subscript(name: String) -> Tensor? {
        tensors.first { $0.name == name }?.tensor
    }

    /// The largest header this reader accepts (the reference implementation's bound).
    public static let maximumHeaderLength = 100 << 20

    // MARK: Writing

    /// The file's bytes.
    public func encoded() throws -> [UInt8] {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for (name, tensor) in tensors {
            guard name != "__metadata__", header[name] == nil else {
                throw MADEError(.invalidData, "safetensors: the tensor name '\(name)' is reserved or repeated")
            }
            let end = offset + 4 * tensor.values.count
            header[name] = ["dtype": "F32", "shape": tensor.shape, "data_offsets": [offset, end]] as [String: Any]
            offset = end
        }
        var json = [UInt8](try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        while json.count % 8 != 0 { json.append(0x20) }
        var out = [UInt8]()
        out.reserveCapacity(8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out += $0 }
        out += json
        for (_, tensor) in tensors {
            for v in tensor.values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
        }
        return out
    }

    /// Writes the file atomically.
    public func write(to path: String) throws {
        try AtomicFile.write(try encoded(), to: path)
    }

    // MARK: Reading

    /// Reads and checks a safetensors file.
    public static func read(from path: String) throws -> SafeTensors {
        let bytes: [UInt8]
        do {
            bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw MADEError(.io, "cannot read the file: \(error.localizedDescription)", path: path)
        }
        return try decode(bytes, path: path)
    }

    /// Parses safetensors bytes; `path` names the file in errors. Every length, shape and offset
    /// is checked against the bytes before use.
    public static func decode(_ bytes: [UInt8], path: String = "safetensors") throws -> SafeTensors {
        func fail(_ message: String) -> MADEError {
            MADEError(.invalidData, "not a valid safetensors file: \(message)", path: path)
        }
        guard bytes.count >= 8 else { throw fail("\(bytes.count) bytes is too short") }
        var length: UInt64 = 0
        for k in 0..<8 { length |= UInt64(bytes[k]) << (8 * UInt64(k)) }
        guard length <= UInt64(maximumHeaderLength), Int(length) <= bytes.count - 8 else {
            throw fail("a header of \(length) bytes does not fit in \(bytes.count) bytes")
        }
        let headerEnd = 8 + Int(length)
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes[8..<headerEnd])),
            let header = object as? [String: Any]
        else {
            throw fail("the header is not a JSON object")
        }
        let dataCount = bytes.count - headerEnd
        var metadata: [String: String] = [:]
        if let raw = header["__metadata__"] {
            guard let map = raw as? [String: Any] else { throw fail("__metadata__ is not an object") }
            for (key, value) in map {
                guard let text = value as? String else { throw fail("metadata '\(key)' is not a string") }
                metadata[key] = text
            }
        }
        var entries: [(name: String, begin: Int, end: Int, shape: [Int], dtype: String)] = []
        for (name, raw) in header where name != "__metadata__" {
            guard let info = raw as? [String: Any], let dtype = info["dtype"] as? String,
                let shapeValues = info["shape"] as? [Any], let offsetValues = info["data_offsets"] as? [Any],
                offsetValues.count == 2
            else {
                throw fail("tensor '\(name)' lacks dtype, shape or data_offsets")
            }
            /// A JSON number that is a whole number in `0...limit`, else nil (no rounding, no overflow).
            func whole(_ value: Any, limit: Int) -> Int? {
                guard let number = value as? NSNumber, let n = Int(exactly: number.doubleValue), n >= 0, n <= limit
                else { return nil }
                return n
            }
            let shape = try shapeValues.map { value -> Int in
                guard let n = whole(value, limit: Int(Int32.max)) else {
                    throw fail("tensor '\(name)' has a bad shape")
                }
                return n
            }
            let offsets = try offsetValues.map { value -> Int in
                guard let n = whole(value, limit: dataCount) else {
                    throw fail("tensor '\(name)' has data offsets beyond the \(dataCount) data bytes")
                }
                return n
            }
            let (count, overflow) = shape.reduce((1, false)) { acc, n in
                let (p, o) = acc.0.multipliedReportingOverflow(by: n)
                return (p, acc.1 || o)
            }
            let width: Int
            switch dtype {
            case "F32": width = 4
            case "F64": width = 8
            default: throw fail("tensor '\(name)' has dtype \(dtype); F32 or F64 is needed")
            }
            guard !overflow, offsets[0] <= offsets[1], offsets[1] - offsets[0] == count * width else {
                throw fail("tensor '\(name)': shape \(shape) of \(dtype) does not match data offsets \(offsets)")
            }
            entries.append((name, offsets[0], offsets[1], shape, dtype))
        }
        entries.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var expected = 0
        for entry in entries {
            guard entry.begin == expected else {
                throw fail("the tensors do not cover the data exactly (gap or overlap at byte \(entry.begin))")
            }
            expected = entry.end
        }
        guard expected == dataCount else { throw fail("\(dataCount - expected) data bytes belong to no tensor") }
        var tensors: [(name: String, tensor: Tensor)] = []
        for entry in entries {
            let base = headerEnd + entry.begin
            let count = entry.shape.reduce(1, *)
            var values = [Float](repeating: 0, count: count)
            if entry.dtype == "F32" {
                for i in 0..<count {
                    let p = base + 4 * i
                    let bits =
                        UInt32(bytes[p]) | UInt32(bytes[p + 1]) << 8 | UInt32(bytes[p + 2]) << 16 | UInt32(bytes[p + 3])
                        << 24
                    values[i] = Float(bitPattern: bits)
                }
            } else {
                for i in 0..<count {
                    var bits: UInt64 = 0
                    for k in 0..<8 { bits |= UInt64(bytes[base + 8 * i + k]) << (8 * UInt64(k)) }
                    values[i] = Float(Double(bitPattern: bits))
                }
            }
            tensors.append((entry.name, Tensor(shape: entry.shape, values: values)))
        }
        return SafeTensors(tensors: tensors, metadata: metadata)
    }
}
