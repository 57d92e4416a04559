import Foundation
import ZIPFoundation

/// A reader of NumPy's `.npz` archives: zip files (stored or deflated) of `.npy` arrays.
///
/// The splits are found by entry name: `train_data.npy` or `train.npy`; `valid_data.npy`,
/// `valid.npy`, `validation_data.npy` or `validation.npy`; `test_data.npy` or `test.npy`.
/// Entries are matched on their last path component, so an archive made from a folder works too.
enum NPZ {
    /// The entry names accepted for each split, in order of preference.
    static let entryNames: [(split: String, names: [String])] = [
        ("train", ["train_data.npy", "train.npy"]),
        ("valid", ["valid_data.npy", "valid.npy", "validation_data.npy", "validation.npy"]),
        ("test", ["test_data.npy", "test.npy"]),
    ]

    /// Whether `bytes` starts like a zip file (a local file header or an empty archive's end record).
    static func hasMagic(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count >= 4, bytes[0] == 0x50, bytes[1] == 0x4B else { return false }
        return (bytes[2] == 3 && bytes[3] == 4) || (bytes[2] == 5 && bytes[3] == 6)
    }

    /// Reads the train, valid and test arrays; all three must be present and of one dimension.
    static func readDataset(path: String) throws -> Dataset {
        let archive = try open(path)
        var splits: [String: DataMatrix] = [:]
        var found: [String: String] = [:]
        for (split, _) in entryNames {
            let (entry, name) = try find(split: split, in: archive, path: path)
            splits[split] = try read(entry, name: name, from: archive, path: path)
            found[split] = name
        }
        guard let train = splits["train"], let valid = splits["valid"], let test = splits["test"],
            let trainName = found["train"]
        else {
            throw MADEError(.invalidData, "missing arrays", path: path)
        }
        for (split, matrix) in [("valid", valid), ("test", test)] where matrix.dimension != train.dimension {
            throw MADEError(
                .invalidData,
                """
                mismatched dimensions between splits: \(trainName) is \(train.count)x\(train.dimension) but \
                \(found[split] ?? split) is \(matrix.count)x\(matrix.dimension)
                """,
                path: path
            )
        }
        let name = (path as NSString).lastPathComponent
        return Dataset(train: train, valid: valid, test: test, source: name)
    }

    /// Reads one split (`train`, `valid`/`validation` or `test`).
    static func readSplit(path: String, split: String) throws -> DataMatrix {
        let canonical = split == "validation" ? "valid" : split
        guard entryNames.contains(where: { $0.split == canonical }) else {
            throw MADEError(
                .invalidConfiguration,
                "unknown split '\(split)' (expected train, valid or test)",
                path: path
            )
        }
        let archive = try open(path)
        let (entry, name) = try find(split: canonical, in: archive, path: path)
        return try read(entry, name: name, from: archive, path: path)
    }

    private static func open(_ path: String) throws -> Archive {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw MADEError(.io, "no such file", path: path)
        }
        guard !isDirectory.boolValue else { throw MADEError(.io, "is a directory, not an .npz file", path: path) }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw MADEError(.io, "cannot read the file (permission denied)", path: path)
        }
        do {
            return try Archive(url: URL(fileURLWithPath: path), accessMode: .read)
        } catch {
            let head = try DatasetLoader.readFile(path, maxBytes: 4)
            if head.withUnsafeBytes(hasMagic) {
                throw MADEError(.invalidData, "corrupt or truncated zip archive: \(error)", path: path)
            }
            throw MADEError(.invalidData, "not a zip archive (an .npz is a zip of .npy files)", path: path)
        }
    }

    private static func find(split: String, in archive: Archive, path: String) throws -> (Entry, String) {
        let names = entryNames.first { $0.split == split }?.names ?? []
        var byName: [String: Entry] = [:]
        var all: [String] = []
        for entry in archive {
            let last = (entry.path as NSString).lastPathComponent
            all.append(entry.path)
            if entry.type == .file && byName[last] == nil { byName[last] = entry }
        }
        for name in names {
            if let entry = byName[name] { return (entry, name) }
        }
        let listing =
            all.isEmpty
            ? "the archive is empty"
            : "it holds " + all.prefix(10).joined(separator: ", ") + (all.count > 10 ? ", ..." : "")
        throw MADEError(
            .invalidData,
            "missing array for the \(split) split: no \(names.joined(separator: " or ")); \(listing)",
            path: path
        )
    }

    private static func read(_ entry: Entry, name: String, from archive: Archive, path: String) throws -> DataMatrix {
        let declared = entry.uncompressedSize
        guard declared <= UInt64(Int.max) else {
            throw MADEError(.invalidData, "\(name): declared size \(declared) is too large", path: path)
        }
        var bytes = [UInt8]()
        // The array's header comes first: its shape is checked against the entry and against
        // the memory available before the rest is extracted (a zip bomb stops here).
        let headerBytes = Int(min(declared, 1 << 20))
        bytes.reserveCapacity(headerBytes)
        var checked = false
        do {
            _ = try archive.extract(entry, bufferSize: 1 << 20) { chunk in
                guard UInt64(bytes.count + chunk.count) <= declared else {
                    throw MADEError(
                        .invalidData,
                        "\(name): holds more data than the \(declared) bytes its zip entry declares",
                        path: path
                    )
                }
                bytes.append(contentsOf: chunk)
                if !checked, bytes.count >= headerBytes {
                    checked = true
                    try checkShape(bytes, declared: Int(declared), name: name, path: path)
                    bytes.reserveCapacity(Int(declared))
                }
            }
        } catch let error as MADEError {
            throw error
        } catch {
            throw MADEError(
                .invalidData,
                "\(name): cannot extract from the archive (corrupt or truncated zip): \(error)",
                path: path
            )
        }
        guard UInt64(bytes.count) == declared else {
            throw MADEError(
                .invalidData,
                "\(name): truncated: zip entry declares \(declared) bytes, extracted \(bytes.count)",
                path: path
            )
        }
        return try bytes.withUnsafeBytes { try NPY.parse($0, path: path, entry: name) }
    }

    /// Throws unless the array whose first bytes are `head` fills exactly the `declared` bytes
    /// of its entry, and the entry and the matrix made from it fit in memory.
    private static func checkShape(_ head: [UInt8], declared: Int, name: String, path: String) throws {
        let fail = { (message: String) -> MADEError in MADEError(.invalidData, "\(name): \(message)", path: path) }
        let header = try head.withUnsafeBytes { try NPY.parseHeader($0, fail: fail) }
        guard header.shape.count == 2,
            let size = MemoryBudget.product(header.shape[0], header.shape[1], header.elementType.size),
            case let (total, overflow) = size.addingReportingOverflow(header.dataOffset), !overflow
        else { return }  // parse says why
        let shape = "\(header.shape[0])x\(header.shape[1]) \(header.elementType.name)"
        guard total <= declared else {
            throw fail(
                "truncated: its header says \(shape) = \(total) bytes with the header, its zip entry holds \(declared)"
            )
        }
        guard total == declared else {
            throw fail("\(declared - total) bytes after the \(shape) array its header describes")
        }
        // The extracted bytes, and the matrix (at most 4 bytes a value) made from them.
        try MemoryBudget.require(
            MemoryBudget.product(header.shape[0], header.shape[1], 4).map { $0 &+ declared },
            for: "\(name): a \(header.shape[0])x\(header.shape[1]) array",
            path: path
        )
    }
}
