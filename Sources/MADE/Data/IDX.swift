import CKernels
import Foundation

/// A reader of the IDX image files of MNIST-like data sets (`*-images-idx3-ubyte`, optionally gzipped).
///
/// An images file is a big-endian header, magic `0x00000803` (unsigned bytes, 3 dimensions) then
/// the count, rows and columns as 32-bit integers, followed by `count x rows x columns` grey
/// levels. Each image becomes one example of dimension `rows x columns`, read in row-major order.
/// Labels files (magic `0x00000801`) and other element types are rejected with a clear error.
enum IDX {
    /// The grey levels of an images file.
    struct Images: Equatable {
        var count: Int
        var rows: Int
        var columns: Int
        /// `count * rows * columns` grey levels, image after image, each row-major.
        var pixels: [UInt8]

        var dimension: Int { rows * columns }
    }

    /// The dimensions an images header declares.
    struct Header: Equatable {
        var count: Int
        var rows: Int
        var columns: Int
        /// `count * rows * columns`, checked for overflow.
        var pixelBytes: Int
        static let size = 16
    }

    /// Whether `bytes` starts like an IDX file (two zero bytes then a known element type).
    static func hasMagic(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 4 && bytes[0] == 0 && bytes[1] == 0 && [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E].contains(bytes[2])
    }

    /// Parses and checks an images header from the first bytes of a file.
    static func parseHeader(_ bytes: UnsafeRawBufferPointer, path: String) throws -> Header {
        func fail(_ message: String) -> MADEError { MADEError(.invalidData, message, path: path) }
        guard bytes.count >= 4 else {
            throw fail("truncated: \(bytes.count) bytes is too short for an IDX header")
        }
        let magic = UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])
        let magicText =
            "0x" + String(repeating: "0", count: 8 - String(magic, radix: 16).count) + String(magic, radix: 16)
        guard bytes[0] == 0, bytes[1] == 0 else {
            throw fail("bad magic \(magicText): not an IDX file (an images file starts with 0x00000803)")
        }
        let typeNames: [UInt8: String] = [
            0x09: "signed bytes", 0x0B: "16-bit integers", 0x0C: "32-bit integers",
            0x0D: "32-bit floats", 0x0E: "64-bit floats",
        ]
        guard bytes[2] == 0x08 else {
            if let name = typeNames[bytes[2]] {
                throw fail("unsupported IDX element type (\(name), magic \(magicText)); images must be unsigned bytes")
            }
            throw fail("bad magic \(magicText): not an IDX file (an images file starts with 0x00000803)")
        }
        switch bytes[3] {
        case 3: break
        case 1: throw fail("this is a labels file (magic 0x00000801, 1-D), not an images file (magic 0x00000803)")
        default:
            throw fail(
                """
                IDX file has \(bytes[3]) dimensions (magic \(magicText)); an images file has 3 (count x rows x \
                columns)
                """
            )
        }
        guard bytes.count >= Header.size else {
            throw fail("truncated: \(bytes.count) bytes is too short for an IDX images header (16 bytes)")
        }
        func word(_ at: Int) -> Int {
            Int(
                UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8
                    | UInt32(bytes[at + 3])
            )
        }
        let (count, rows, columns) = (word(4), word(8), word(12))
        guard count > 0 else { throw fail("the header declares no images (count 0)") }
        guard rows > 0, columns > 0 else { throw fail("the header declares empty \(rows)x\(columns) images") }
        let dimension = rows.multipliedReportingOverflow(by: columns)
        let total = dimension.partialValue.multipliedReportingOverflow(by: count)
        guard !dimension.overflow, !total.overflow, total.partialValue <= Int.max - Header.size else {
            throw fail("the header's shape \(count)x\(rows)x\(columns) is too large to exist")
        }
        return Header(count: count, rows: rows, columns: columns, pixelBytes: total.partialValue)
    }

    /// Parses a whole uncompressed images file.
    static func parse(_ bytes: UnsafeRawBufferPointer, path: String) throws -> Images {
        let header = try parseHeader(bytes, path: path)
        let available = bytes.count - Header.size
        let shape = "\(header.count)x\(header.rows)x\(header.columns)"
        guard available >= header.pixelBytes else {
            throw MADEError(
                .invalidData,
                "truncated: header says \(shape) = \(header.pixelBytes) bytes of pixels, file has \(available)",
                path: path
            )
        }
        guard available == header.pixelBytes else {
            throw MADEError(
                .invalidData,
                "\(available - header.pixelBytes) bytes after the \(shape) pixels its header describes",
                path: path
            )
        }
        let pixels = [UInt8](UnsafeRawBufferPointer(rebasing: bytes[Header.size...]))
        return Images(count: header.count, rows: header.rows, columns: header.columns, pixels: pixels)
    }

    /// Reads an images file from disk, gunzipping it when it is gzip-compressed.
    ///
    /// A gzipped file's header is decompressed first, so that a hostile header cannot make the
    /// reader decompress more than the pixels it declares.
    static func read(path: String) throws -> Images {
        let file = try DatasetLoader.readFile(path)
        return try file.withUnsafeBytes { raw -> Images in
            guard Gzip.isGzip(raw) else { return try parse(raw, path: path) }
            let head = try Gzip.decompressPrefix(raw, count: Header.size, path: path)
            let header = try head.withUnsafeBytes { try parseHeader($0, path: path) }
            try MemoryBudget.require(
                MemoryBudget.product(header.pixelBytes, 2),
                for: "the \(header.count)x\(header.rows)x\(header.columns) images its header declares",
                path: path
            )
            let whole = try Gzip.decompress(raw, path: path, limit: Header.size + header.pixelBytes)
            return try whole.withUnsafeBytes { try parse($0, path: path) }
        }
    }

    /// Turns grey levels into a data matrix.
    ///
    /// - `.stochastic(seed)`: pixel `p` becomes 1 with probability `p/255`: one number `u` is drawn
    ///   per pixel, in file order, from `RandomStream(seed: seed, domain: .binarization, index: streamIndex)`
    ///   with `unitFloat()`, and the value is 1 when `u < p/255` (compared exactly, in integers:
    ///   `u = k/2^24`, so the test is `255 k < p 2^24`).
    /// - `.threshold(t)`: 1 when `p > t`.
    /// - `.none`: real values `p/255`.
    static func convert(_ images: consuming Images, binarization: Binarization, streamIndex: UInt64) -> DataMatrix {
        var pixels: [UInt8] = []
        swap(&pixels, &images.pixels)  // converted in place when the caller holds no other copy
        let (count, dimension) = (images.count, images.dimension)
        switch binarization {
        case .stochastic(let seed):
            // Pixel i is 1 when k * 255 < level * 2^24, k = UInt64(unitFloat() * 0x1p24) = next() >> 40
            // of the stream: one tight loop in C with the generator's state in registers.
            let random = RandomStream(seed: seed, domain: .binarization, index: streamIndex)
            var state = [random.state.0, random.state.1, random.state.2, random.state.3]
            pixels.withUnsafeMutableBufferPointer { p in
                if let base = p.baseAddress { made_binarize_stochastic_u8(p.count, base, &state) }
            }
            return DataMatrix(binary: pixels, count: count, dimension: dimension)
        case .threshold(let threshold):
            pixels.withUnsafeMutableBufferPointer { p in
                for i in 0..<p.count { p[i] = p[i] > threshold ? 1 : 0 }
            }
            return DataMatrix(binary: pixels, count: count, dimension: dimension)
        case .none:
            let values = pixels.map { Float($0) / 255 }
            return DataMatrix(real: values, count: count, dimension: dimension)
        }
    }

    /// The test file beside a training file: "train" in the file name replaced by "t10k"
    /// (MNIST, Fashion-MNIST) or "test" (EMNIST), with or without `.gz`.
    ///
    /// - Throws: ``MADEError`` when the name holds no "train" or no candidate exists.
    static func testSibling(ofTrain path: String) throws -> String {
        let directory = (path as NSString).deletingLastPathComponent
        let name = (path as NSString).lastPathComponent
        guard name.contains("train") else {
            throw MADEError(
                .invalidData,
                "cannot find the test file of an IDX file whose name holds no 'train'",
                path: path
            )
        }
        var candidates: [String] = []
        for replacement in ["t10k", "test"] {
            let base = name.replacingOccurrences(of: "train", with: replacement)
            let other = base.hasSuffix(".gz") ? String(base.dropLast(3)) : base + ".gz"
            for candidate in [base, other] {
                candidates.append(
                    directory.isEmpty ? candidate : (directory as NSString).appendingPathComponent(candidate)
                )
            }
        }
        for candidate in candidates where FileManager.default.fileExists(atPath: candidate) {
            return candidate
        }
        throw MADEError(
            .io,
            """
            missing test file: none of \
            \(candidates.map { ($0 as NSString).lastPathComponent }.joined(separator: ", ")) exists beside it
            """,
            path: path
        )
    }

    /// A short name of the data set an IDX file belongs to: the file-name prefix before "train"
    /// (`emnist-balanced`), or else the name of its folder (`fashion-mnist`).
    static func datasetName(_ path: String) -> String {
        let name = (path as NSString).lastPathComponent
        if let range = name.range(of: "train") {
            let prefix = name[..<range.lowerBound].trimmingCharacters(in: CharacterSet(charactersIn: "-_."))
            if !prefix.isEmpty { return prefix }
        }
        let folder = ((path as NSString).deletingLastPathComponent as NSString).lastPathComponent
        return folder.isEmpty || folder == "." || folder == "/" ? name : folder
    }
}
