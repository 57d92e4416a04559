import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How grey levels (IDX images) become model inputs.
///
/// Sources that already hold 0/1 or real values (`.npz`, `.npy`, `.amat`) are loaded as they are;
/// this applies only to grey-level sources.
public enum Binarization: Sendable, Equatable, Codable, CustomStringConvertible {
    /// Pixel `p` becomes 1 with probability `p/255`, drawn from a seeded stream in file order:
    /// the same on every machine. The training file (and the validation split carved from it) uses
    /// stream index 0 of domain `.binarization`, a separate validation file 1, the test file 2.
    case stochastic(seed: UInt64)
    /// Pixel `p` becomes 1 when `p > threshold`.
    case threshold(UInt8)
    /// Real values `p/255` in `[0, 1]`.
    case none

    /// The usual threshold, halfway between black and white.
    public static let defaultThreshold: UInt8 = 127

    public var description: String {
        switch self {
        case .stochastic(let seed): return "stochastic binarization seed \(seed)"
        case .threshold(let t): return "threshold binarization (pixel > \(t))"
        case .none: return "grey levels scaled to [0, 1]"
        }
    }
}

/// Choices that shape a loaded data set.
public struct DataOptions: Sendable, Equatable, Codable {
    /// How grey-level images are turned into inputs.
    public var binarization: Binarization = .stochastic(seed: 0)
    /// The fraction of a training file carved out as the validation split when a source has no
    /// validation split of its own (IDX): the last `round(N * validationFraction)` rows, in `[0, 1)`.
    public var validationFraction: Double = 1.0 / 6.0

    public init(binarization: Binarization = .stochastic(seed: 0), validationFraction: Double = 1.0 / 6.0) {
        self.binarization = binarization
        self.validationFraction = validationFraction
    }
}

/// The entry points that read data sets from disk.
///
/// Formats are recognized by their content (zip, `.npy`, gzip or IDX magic), then by their file
/// name (`.npz`, `.npy`, `.amat`). Every failure is a ``MADEError`` (`.invalidData` for a bad
/// file, `.io` for a missing or unreadable one, `.invalidConfiguration` for bad options) whose
/// `path` names the file at fault.
public enum DatasetLoader {
    /// Loads all splits from an .npz, a *_train.amat (with siblings), a train IDX file (with its test sibling), or a
    /// directory holding one of those (binarized_mnist.npz, binarized_mnist_train.amat, train-images-idx3-ubyte[.gz]).
    ///
    /// - An `.npz` must hold train, valid and test arrays (see ``NPZ``).
    /// - An `.amat` path may name any of the three files `P_train.amat`, `P_valid.amat`,
    ///   `P_test.amat`; all three must exist.
    /// - An IDX training file finds its test file by replacing "train" with "t10k" or "test" in its
    ///   name; the validation split is the last `round(N * validationFraction)` training rows, so it
    ///   is the same on every machine (60000 rows give 50000 train and 10000 valid).
    /// Every split must have the same dimension.
    public static func load(path: String, options: DataOptions = .init()) throws -> Dataset {
        switch try classify(path) {
        case .directory:
            return try load(path: findDataset(inDirectory: path), options: options)
        case .npz:
            return try NPZ.readDataset(path: path)
        case .npy:
            throw MADEError(
                .invalidConfiguration,
                """
                a single .npy file holds one split; load it with loadSplit, or use an .npz with train, valid and test \
                arrays
                """,
                path: path
            )
        case .amat:
            return try loadAMat(path)
        case .idx:
            return try loadIDX(path, options: options)
        }
    }

    /// Loads one split-file whole (one .amat or IDX file), or one named split ("train"/"valid"/"test") of an .npz.
    ///
    /// With `split == nil` the file is read whole (an `.npz` or a directory then needs a split).
    /// With a split named, the result is that split of the data set `path` belongs to, exactly as
    /// ``load(path:options:)`` would give it, reading only the files it needs: a sibling `.amat`,
    /// the test IDX file beside a training one, or the training IDX file cut at the validation
    /// boundary. A whole IDX file is binarized with the stream of the split its name suggests
    /// ("t10k" or "test": the test stream; otherwise the training stream). "validation" is
    /// accepted for "valid".
    public static func loadSplit(path: String, split: String?, options: DataOptions = .init()) throws -> DataMatrix {
        let wanted: String?
        switch split {
        case nil: wanted = nil
        case "train", "test", "valid": wanted = split
        case "validation": wanted = "valid"
        case let other?:
            throw MADEError(
                .invalidConfiguration,
                "unknown split '\(other)' (expected train, valid or test)",
                path: path
            )
        }
        let kind = try classify(path)
        switch kind {
        case .directory, .npz:
            guard let wanted else {
                throw MADEError(
                    .invalidConfiguration,
                    kind == .npz
                        ? "an .npz holds several arrays: name a split (train, valid or test)"
                        : "a directory holds several splits: name one (train, valid or test)",
                    path: path
                )
            }
            if kind == .npz { return try NPZ.readSplit(path: path, split: wanted) }
            // The data set file of the directory, read for this split alone (an IDX test split
            // never decompresses or binarizes the training file): the same bits as `load` gives it.
            return try loadSplit(path: findDataset(inDirectory: path), split: wanted, options: options)
        case .npy:
            let bytes = try readFile(path)
            return try bytes.withUnsafeBytes { try NPY.parse($0, path: path) }
        case .amat:
            var file = path
            if let wanted, let siblings = AMat.siblings(of: path) {
                file = wanted == "train" ? siblings.train : wanted == "valid" ? siblings.valid : siblings.test
            }
            let bytes = try readFile(file)
            return try bytes.withUnsafeBytes { try AMat.parse($0, path: file) }
        case .idx:
            return try loadIDXSplit(path, split: wanted, options: options)
        }
    }

    // MARK: - Formats

    /// What a path holds.
    enum Kind: Equatable { case directory, npz, npy, amat, idx }

    /// Recognizes a path's format by its first bytes, then by its name.
    static func classify(_ path: String) throws -> Kind {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw MADEError(.io, "no such file or directory", path: path)
        }
        if isDirectory.boolValue { return .directory }
        let head = try readFile(path, maxBytes: 8)
        let byContent: Kind? = head.withUnsafeBytes { raw in
            if NPZ.hasMagic(raw) { return .npz }
            if NPY.hasMagic(raw) { return .npy }
            if Gzip.isGzip(raw) || IDX.hasMagic(raw) { return .idx }
            return nil
        }
        if let byContent { return byContent }
        let name = (path as NSString).lastPathComponent.lowercased()
        if name.hasSuffix(".npz") { return .npz }  // the zip reader will say what is wrong with it
        if name.hasSuffix(".npy") { return .npy }
        if name.hasSuffix(".amat") { return .amat }
        if name.contains("idx") && name.contains("ubyte") { return .idx }
        throw MADEError(
            .invalidData,
            "unrecognized data file: expected an .npz, .npy, .amat or IDX (*-images-idx3-ubyte[.gz]) file",
            path: path
        )
    }

    /// The data set file inside a directory: a well-known name first, else the only file of a known kind.
    static func findDataset(inDirectory directory: String) throws -> String {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw MADEError(.io, "cannot list the directory: \(error.localizedDescription)", path: directory)
        }
        let join = { (name: String) in (directory as NSString).appendingPathComponent(name) }
        let wellKnown = [
            "binarized_mnist.npz", "binarized_mnist_train.amat",
            "train-images-idx3-ubyte", "train-images-idx3-ubyte.gz",
        ]
        if let name = wellKnown.first(where: names.contains) { return join(name) }
        let patterns: [(String) -> Bool] = [
            { $0.hasSuffix(".npz") }, { $0.hasSuffix("_train.amat") },
            { $0.hasSuffix("train-images-idx3-ubyte") }, { $0.hasSuffix("train-images-idx3-ubyte.gz") },
        ]
        for pattern in patterns {
            let matches = names.filter(pattern).sorted()
            if matches.count == 1 { return join(matches[0]) }
            if matches.count > 1 {
                throw MADEError(
                    .invalidData,
                    "several data sets in this directory (\(matches.joined(separator: ", "))): name one",
                    path: directory
                )
            }
        }
        throw MADEError(
            .io,
            """
            no data set found in this directory: expected binarized_mnist.npz, *_train.amat or \
            train-images-idx3-ubyte[.gz]
            """,
            path: directory
        )
    }

    private static func loadAMat(_ path: String) throws -> Dataset {
        guard let siblings = AMat.siblings(of: path) else {
            throw MADEError(
                .invalidData,
                "an .amat data set is named *_train.amat, *_valid.amat and *_test.amat; this name is none of those",
                path: path
            )
        }
        let files = [("train", siblings.train), ("valid", siblings.valid), ("test", siblings.test)]
        for (split, file) in files where !FileManager.default.fileExists(atPath: file) {
            throw MADEError(
                .io,
                """
                missing \(split) split: \((file as NSString).lastPathComponent) does not exist beside \
                \((path as NSString).lastPathComponent)
                """,
                path: file
            )
        }
        var matrices: [DataMatrix] = []
        for (_, file) in files {
            let bytes = try readFile(file)
            matrices.append(try bytes.withUnsafeBytes { try AMat.parse($0, path: file) })
        }
        try checkDimensions(
            zip(files, matrices).map { (name: ($0.0.1 as NSString).lastPathComponent, path: $0.0.1, matrix: $0.1) }
        )
        let prefix = (String(siblings.train.dropLast("_train.amat".count)) as NSString).lastPathComponent
        return Dataset(
            train: matrices[0],
            valid: matrices[1],
            test: matrices[2],
            source: "\(prefix)_{train,valid,test}.amat"
        )
    }

    private static func loadIDX(_ path: String, options: DataOptions) throws -> Dataset {
        try checkFraction(options.validationFraction, path: path)
        let testPath = try IDX.testSibling(ofTrain: path)
        let train = try IDX.read(path: path)
        let test = try IDX.read(path: testPath)
        guard train.rows == test.rows, train.columns == test.columns else {
            throw MADEError(
                .invalidData,
                """
                mismatched dimensions between splits: \((path as NSString).lastPathComponent) holds \
                \(train.rows)x\(train.columns) images but this file holds \(test.rows)x\(test.columns)
                """,
                path: testPath
            )
        }
        let testMatrix = IDX.convert(test, binarization: options.binarization, streamIndex: 2)
        let (trainMatrix, validMatrix) = try carve(
            IDX.convert(train, binarization: options.binarization, streamIndex: 0),
            fraction: options.validationFraction,
            path: path
        )
        return Dataset(
            train: trainMatrix,
            valid: validMatrix,
            test: testMatrix,
            source: "\(IDX.datasetName(path)) IDX, \(options.binarization)"
        )
    }

    private static func loadIDXSplit(_ path: String, split: String?, options: DataOptions) throws -> DataMatrix {
        let name = (path as NSString).lastPathComponent
        switch split {
        case nil:
            let isTest = name.contains("t10k") || name.contains("test")
            return IDX.convert(
                try IDX.read(path: path),
                binarization: options.binarization,
                streamIndex: isTest ? 2 : 0
            )
        case "test":
            let file = name.contains("train") ? try IDX.testSibling(ofTrain: path) : path
            return IDX.convert(try IDX.read(path: file), binarization: options.binarization, streamIndex: 2)
        default:
            guard name.contains("train") else {
                throw MADEError(
                    .invalidConfiguration,
                    "the \(split ?? "") split is cut from a training file, and this name holds no 'train'",
                    path: path
                )
            }
            try checkFraction(options.validationFraction, path: path)
            let all = IDX.convert(try IDX.read(path: path), binarization: options.binarization, streamIndex: 0)
            let (train, valid) = try carve(all, fraction: options.validationFraction, path: path)
            if split == "train" { return train }
            guard let valid else {
                throw MADEError(
                    .invalidConfiguration,
                    "no validation split: validationFraction \(options.validationFraction) carves no rows",
                    path: path
                )
            }
            return valid
        }
    }

    // MARK: - Helpers

    private static func checkFraction(_ fraction: Double, path: String) throws {
        guard fraction.isFinite, fraction >= 0, fraction < 1 else {
            throw MADEError(.invalidConfiguration, "validationFraction must be in [0, 1), not \(fraction)", path: path)
        }
    }

    /// Splits off the last `round(count * fraction)` rows as the validation split (nil when none).
    static func carve(
        _ matrix: DataMatrix,
        fraction: Double,
        path: String
    ) throws -> (train: DataMatrix, valid: DataMatrix?) {
        try checkFraction(fraction, path: path)
        let validCount = Int((Double(matrix.count) * fraction).rounded(.toNearestOrAwayFromZero))
        guard validCount > 0 else { return (matrix, nil) }
        let trainCount = matrix.count - validCount
        guard trainCount > 0 else {
            throw MADEError(
                .invalidConfiguration,
                "carving \(validCount) of \(matrix.count) rows for validation leaves no training examples",
                path: path
            )
        }
        let d = matrix.dimension
        let cut = trainCount * d
        switch matrix.storage {
        case .binary(let bytes):
            return (
                DataMatrix(binary: Array(bytes[..<cut]), count: trainCount, dimension: d),
                DataMatrix(binary: Array(bytes[cut...]), count: validCount, dimension: d)
            )
        case .real(let values):
            return (
                DataMatrix(real: Array(values[..<cut]), count: trainCount, dimension: d),
                DataMatrix(real: Array(values[cut...]), count: validCount, dimension: d)
            )
        }
    }

    /// Throws when the splits do not all have the dimension of the first.
    static func checkDimensions(_ splits: [(name: String, path: String, matrix: DataMatrix)]) throws {
        guard let first = splits.first else { return }
        for split in splits.dropFirst() where split.matrix.dimension != first.matrix.dimension {
            throw MADEError(
                .invalidData,
                """
                mismatched dimensions between splits: \(first.name) is \
                \(first.matrix.count)x\(first.matrix.dimension) but \(split.name) is \
                \(split.matrix.count)x\(split.matrix.dimension)
                """,
                path: split.path
            )
        }
    }

    /// Reads a file's bytes (at most `maxBytes` of them).
    ///
    /// - Throws: ``MADEError`` `.io` naming the operating system's reason.
    static func readFile(_ path: String, maxBytes: Int = Int.max) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            let reason = errno == ENOENT ? "no such file" : "cannot open: \(String(cString: strerror(errno)))"
            throw MADEError(.io, reason, path: path)
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw MADEError(.io, "cannot stat: \(String(cString: strerror(errno)))", path: path)
        }
        guard (info.st_mode & S_IFMT) != S_IFDIR else { throw MADEError(.io, "is a directory, not a file", path: path) }
        let size = min(max(Int(info.st_size), 0), maxBytes)
        var failure: Int32 = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            var done = 0
            while done < size, let base = buffer.baseAddress {
                let n = read(fd, base + done, size - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    break
                }
                if n == 0 { break }  // the file shrank while being read
                done += n
            }
            initialized = done
        }
        if failure != 0 { throw MADEError(.io, "cannot read: \(String(cString: strerror(failure)))", path: path) }
        return bytes
    }
}
