import Foundation
import Testing
import ZIPFoundation

@testable import MADE

// MARK: - Fixtures

/// A temporary directory that removes itself.
private final class TemporaryDirectory {
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("made-data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }

    /// The path of `name` inside the directory.
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    /// Writes `bytes` to `name` and returns its path.
    @discardableResult
    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        try Data(bytes).write(to: url.appendingPathComponent(name))
        return path(name)
    }

    @discardableResult
    func write(_ name: String, text: String) throws -> String {
        try write(name, Array(text.utf8))
    }
}

/// The bytes of a `.npy` file with the given header dict text (padded as NumPy pads it).
private func npy(header dict: String, version: UInt8 = 1, payload: [UInt8]) -> [UInt8] {
    let lengthSize = version == 1 ? 2 : 4
    let unpadded = 8 + lengthSize + dict.utf8.count + 1
    let text = dict + String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
    var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [version, 0]
    let length = text.utf8.count
    for i in 0..<lengthSize { out.append(UInt8((length >> (8 * i)) & 0xFF)) }
    return out + Array(text.utf8) + payload
}

private func npy(descr: String, fortran: Bool = false, shape: String, version: UInt8 = 1, payload: [UInt8]) -> [UInt8] {
    npy(
        header: "{'descr': '\(descr)', 'fortran_order': \(fortran ? "True" : "False"), 'shape': \(shape), }",
        version: version,
        payload: payload
    )
}

private func float32LE(_ values: [Float]) -> [UInt8] {
    values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }
}

private func float32BE(_ values: [Float]) -> [UInt8] {
    values.flatMap { withUnsafeBytes(of: $0.bitPattern.bigEndian, Array.init) }
}

private func float64BE(_ values: [Double]) -> [UInt8] {
    values.flatMap { withUnsafeBytes(of: $0.bitPattern.bigEndian, Array.init) }
}

private func float64LE(_ values: [Double]) -> [UInt8] {
    values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }
}

private func bigEndian32(_ value: UInt32) -> [UInt8] {
    [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
}

/// The bytes of an IDX images file.
private func idxImages(count: UInt32, rows: UInt32, columns: UInt32, pixels: [UInt8]) -> [UInt8] {
    [0, 0, 8, 3] + bigEndian32(count) + bigEndian32(rows) + bigEndian32(columns) + pixels
}

private func writeNPZ(_ path: String, _ entries: [(String, [UInt8])], compression: CompressionMethod) throws {
    let archive = try Archive(url: URL(fileURLWithPath: path), accessMode: .create)
    for (name, bytes) in entries {
        try archive.addEntry(
            with: name,
            type: .file,
            uncompressedSize: Int64(bytes.count),
            compressionMethod: compression
        ) { position, size in
            Data(bytes[Int(position)..<(Int(position) + size)])
        }
    }
}

/// Checks that `body` throws a MADEError of one of `codes` that names a file and mentions every word.
private func expectFailure(
    _ codes: Set<MADEError.Code> = [.invalidData],
    mentioning words: [String],
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Any
) {
    do {
        _ = try body()
        Issue.record("expected an error mentioning \(words)", sourceLocation: sourceLocation)
    } catch let error as MADEError {
        #expect(codes.contains(error.code), "code \(error.code) for: \(error)", sourceLocation: sourceLocation)
        #expect(error.path != nil, "no path in: \(error)", sourceLocation: sourceLocation)
        for word in words {
            #expect(error.message.contains(word), "'\(word)' not in: \(error)", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("not a MADEError: \(error)", sourceLocation: sourceLocation)
    }
}

private func binaryValues(_ matrix: DataMatrix?) -> [UInt8]? {
    guard case .binary(let v)? = matrix?.storage else { return nil }
    return v
}

private func realValues(_ matrix: DataMatrix?) -> [Float]? {
    guard case .real(let v)? = matrix?.storage else { return nil }
    return v
}

private let fashionDirectory = "/usr/share/datasets/fashion-mnist"

// MARK: - Tests

@Suite("DataLoader")
struct DataLoaderTests {
    // 3 examples of dimension 4.
    let bits: [Float] = [
        0, 1, 1, 0,
        1, 1, 0, 0,
        0, 0, 0, 1,
    ]

    // MARK: .npy

    @Test func npyVersion1Float32Binary() throws {
        let bytes = npy(descr: "<f4", shape: "(3, 4)", payload: float32LE(bits))
        let m = try bytes.withUnsafeBytes { try NPY.parse($0, path: "x.npy") }
        #expect(m.count == 3 && m.dimension == 4)
        #expect(binaryValues(m) == bits.map { UInt8($0) })
    }

    @Test func npyVersion2And3WithPython2Shape() throws {
        for version: UInt8 in [2, 3] {
            let bytes = npy(descr: "<f4", shape: "(3L, 4L)", version: version, payload: float32LE(bits))
            let m = try bytes.withUnsafeBytes { try NPY.parse($0, path: "x.npy") }
            #expect(m.count == 3 && m.dimension == 4)
            #expect(binaryValues(m) == bits.map { UInt8($0) })
        }
        // Double-quoted strings, other key order, no trailing comma.
        let header = "{\"shape\": (3L, 4L), \"fortran_order\": False, \"descr\": \"<f4\"}"
        let m = try npy(header: header, payload: float32LE(bits)).withUnsafeBytes { try NPY.parse($0, path: "x.npy") }
        #expect(binaryValues(m) == bits.map { UInt8($0) })
    }

    @Test func npyRealAndBigEndian() throws {
        let reals: [Double] = [0.25, 1, 0, -3.5, 2, 0.125]
        let f8 = try npy(descr: ">f8", shape: "(2, 3)", payload: float64BE(reals)).withUnsafeBytes {
            try NPY.parse($0, path: "x.npy")
        }
        #expect(realValues(f8) == reals.map { Float($0) })
        let f4 = try npy(descr: ">f4", shape: "(2, 3)", payload: float32BE(reals.map { Float($0) })).withUnsafeBytes {
            try NPY.parse($0, path: "x.npy")
        }
        #expect(realValues(f4) == reals.map { Float($0) })
        let f8le = try npy(descr: "<f8", shape: "(3, 4)", payload: float64LE(bits.map { Double($0) })).withUnsafeBytes {
            try NPY.parse($0, path: "x.npy")
        }
        #expect(binaryValues(f8le) == bits.map { UInt8($0) })
    }

    @Test func npyFortranOrderIsTransposed() throws {
        // Logical 2x3 matrix [[0, 1, 2], [3, 4, 5]] stored column by column.
        let m = try npy(descr: "|u1", fortran: true, shape: "(2, 3)", payload: [0, 3, 1, 4, 2, 5])
            .withUnsafeBytes { try NPY.parse($0, path: "x.npy") }
        #expect(realValues(m) == [0, 1, 2, 3, 4, 5])
        let b = try npy(descr: "|b1", fortran: true, shape: "(2, 3)", payload: [1, 0, 0, 1, 1, 1])
            .withUnsafeBytes { try NPY.parse($0, path: "x.npy") }
        #expect(binaryValues(b) == [1, 0, 1, 0, 1, 1])
        let u = try npy(descr: "<u1", shape: "(2, 2)", payload: [1, 0, 0, 1]).withUnsafeBytes {
            try NPY.parse($0, path: "x.npy")
        }
        #expect(binaryValues(u) == [1, 0, 0, 1])
    }

    @Test func npyMalformedFilesFail() throws {
        let good = npy(descr: "<f4", shape: "(3, 4)", payload: float32LE(bits))
        let parse = { (bytes: [UInt8]) in { try bytes.withUnsafeBytes { try NPY.parse($0, path: "x.npy") } } }
        expectFailure(
            mentioning: ["truncated", "header says 3x4 float32 = 48 bytes, file has 40"],
            parse(Array(good.dropLast(8)))
        )
        expectFailure(mentioning: ["bad magic"], parse(Array("PK not numpy at all".utf8)))
        expectFailure(mentioning: ["unsupported dtype '<i8'"], parse(npy(descr: "<i8", shape: "(3, 4)", payload: [])))
        expectFailure(
            mentioning: ["unsupported dtype"],
            parse(npy(header: "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }", payload: []))
        )
        expectFailure(
            mentioning: ["too large"],
            parse(npy(descr: "<f4", shape: "(4000000000000, 4000000000000)", payload: []))
        )
        expectFailure(
            mentioning: ["too large"],
            parse(npy(descr: "<f4", shape: "(99999999999999999999999999, 2)", payload: []))
        )
        expectFailure(
            mentioning: ["truncated", "header says 50000x784 float32 = 156800000 bytes, file has 0"],
            parse(npy(descr: "<f4", shape: "(50000L, 784L)", payload: []))
        )
        expectFailure(
            mentioning: ["1-D", "(784,)"],
            parse(npy(descr: "<f4", shape: "(784,)", payload: float32LE(Array(repeating: 0, count: 784))))
        )
        expectFailure(mentioning: ["4 bytes after"], parse(good + [0, 0, 0, 0]))
        expectFailure(
            mentioning: ["non-finite", "row 1, column 2"],
            parse(npy(descr: "<f4", shape: "(2, 3)", payload: float32LE([0, 0, 0, 0, 0, .nan])))
        )
        expectFailure(
            mentioning: ["malformed header"],
            parse(npy(header: "{'descr': '<f4', 'shape': (3, 4)", payload: []))
        )
        expectFailure(
            mentioning: ["no 'fortran_order'"],
            parse(npy(header: "{'descr': '<f4', 'shape': (3, 4)}", payload: []))
        )
        expectFailure(
            mentioning: ["unsupported .npy format version 9.0"],
            parse([0x93] + Array("NUMPY".utf8) + [9, 0, 0, 0])
        )
        var hugeHeader = Array(good.prefix(12))
        hugeHeader[8] = 0xFF
        hugeHeader[9] = 0xFF
        expectFailure(mentioning: ["truncated", "header length 65535"], parse(hugeHeader))
    }

    @Test func npyNeverCrashesOnPrefixesOrCorruption() throws {
        let good = npy(descr: "<f4", shape: "(3L, 4L)", version: 2, payload: float32LE(bits))
        for n in 0..<good.count {
            #expect(throws: MADEError.self) {
                try Array(good.prefix(n)).withUnsafeBytes { try NPY.parse($0, path: "x.npy") }
            }
        }
        var random = RandomStream(seed: 7, domain: .split, index: 99)
        for _ in 0..<500 {
            var bytes = good
            for _ in 0..<3 { bytes[Int(random.uniform(below: 80))] = UInt8(truncatingIfNeeded: random.next()) }
            _ = try? bytes.withUnsafeBytes { try NPY.parse($0, path: "x.npy") }
        }
    }

    // MARK: .npz

    private func splitArrays(valid validShape: String = "(2, 4)") -> [(String, [UInt8])] {
        [
            ("train_data.npy", npy(descr: "<f4", shape: "(3L, 4L)", payload: float32LE(bits))),
            (
                "valid_data.npy",
                npy(descr: "<f4", shape: validShape, version: 2, payload: float32LE([1, 1, 1, 1, 0, 0, 0, 0]))
            ),
            ("test_data.npy", npy(descr: "|u1", shape: "(1, 4)", payload: [0, 1, 0, 1])),
        ]
    }

    @Test(arguments: [false, true])
    func npzLoadsAllSplits(deflated: Bool) throws {
        let dir = try TemporaryDirectory()
        let path = dir.path("binarized_mnist.npz")
        try writeNPZ(path, splitArrays(), compression: deflated ? .deflate : .none)
        let data = try DatasetLoader.load(path: path)
        #expect(data.source == "binarized_mnist.npz")
        #expect(binaryValues(data.train) == bits.map { UInt8($0) })
        #expect(binaryValues(data.valid) == [1, 1, 1, 1, 0, 0, 0, 0])
        #expect(binaryValues(data.test) == [0, 1, 0, 1])
        #expect(data.dimension == 4)
        #expect(try DatasetLoader.loadSplit(path: path, split: "valid") == data.valid)
        #expect(try DatasetLoader.loadSplit(path: path, split: "validation") == data.valid)
        #expect(try DatasetLoader.loadSplit(path: path, split: "test") == data.test)
        // A directory holding it loads the same.
        #expect(try DatasetLoader.load(path: dir.url.path) == data)
    }

    @Test func npzAcceptsShortNames() throws {
        let dir = try TemporaryDirectory()
        let path = dir.path("data.npz")
        let arrays = splitArrays()
        try writeNPZ(
            path,
            [("train.npy", arrays[0].1), ("validation.npy", arrays[1].1), ("test.npy", arrays[2].1)],
            compression: .deflate
        )
        let data = try DatasetLoader.load(path: path)
        #expect(data.train?.count == 3 && data.valid?.count == 2 && data.test?.count == 1)
    }

    @Test func npzMalformedFilesFail() throws {
        let dir = try TemporaryDirectory()
        let notZip = try dir.write("text.npz", text: "this is not a zip file")
        expectFailure(mentioning: ["not a zip"]) { try DatasetLoader.load(path: notZip) }

        let missing = dir.path("missing.npz")
        try writeNPZ(missing, Array(splitArrays().prefix(2)), compression: .none)
        expectFailure(mentioning: ["missing array", "test", "train_data.npy"]) { try DatasetLoader.load(path: missing) }

        let mismatched = dir.path("mismatched.npz")
        try writeNPZ(mismatched, splitArrays(valid: "(1, 8)"), compression: .deflate)
        expectFailure(mentioning: ["mismatched dimensions", "valid_data.npy", "1x8"]) {
            try DatasetLoader.load(path: mismatched)
        }

        let good = dir.path("good.npz")
        try writeNPZ(good, splitArrays(), compression: .deflate)
        let whole = try Array(Data(contentsOf: URL(fileURLWithPath: good)))
        let truncated = try dir.write("truncated.npz", Array(whole.prefix(whole.count / 2)))
        expectFailure(mentioning: ["corrupt or truncated zip"]) { try DatasetLoader.load(path: truncated) }

        let badEntry = dir.path("bad-entry.npz")
        var arrays = splitArrays()
        arrays[0].1 = Array(arrays[0].1.dropLast(4))
        try writeNPZ(badEntry, arrays, compression: .deflate)
        expectFailure(mentioning: ["train_data.npy", "truncated"]) { try DatasetLoader.load(path: badEntry) }
        expectFailure([.invalidConfiguration], mentioning: ["name a split"]) {
            try DatasetLoader.loadSplit(path: good, split: nil)
        }
    }

    // MARK: .amat

    @Test func amatLoadsBinaryAndRealData() throws {
        let dir = try TemporaryDirectory()
        try dir.write("bm_train.amat", text: "0 1 1 0\n1 1 0 0\r\n0 0 0 1\n\n\n")
        try dir.write("bm_valid.amat", text: "1 1 1 1\n")
        try dir.write("bm_test.amat", text: "0.5 1 0 2.0e0\n1\t0 0 0")
        let data = try DatasetLoader.load(path: dir.path("bm_train.amat"))
        #expect(data.source == "bm_{train,valid,test}.amat")
        #expect(binaryValues(data.train) == bits.map { UInt8($0) })
        #expect(data.train?.count == 3 && data.train?.dimension == 4)
        #expect(binaryValues(data.valid) == [1, 1, 1, 1])
        #expect(realValues(data.test) == [0.5, 1, 0, 2, 1, 0, 0, 0])
        #expect(try DatasetLoader.load(path: dir.path("bm_test.amat")) == data)
        #expect(try DatasetLoader.loadSplit(path: dir.path("bm_valid.amat"), split: nil) == data.valid)
        #expect(try DatasetLoader.loadSplit(path: dir.path("bm_train.amat"), split: "test") == data.test)
        #expect(try DatasetLoader.load(path: dir.url.path) == data)
    }

    @Test func amatMalformedFilesFail() throws {
        let dir = try TemporaryDirectory()
        let uneven = try dir.write("uneven_train.amat", text: "0 1 1 0\n1 1 0 0\n0 2 1\n")
        expectFailure(mentioning: ["line 3 has 3 values", "line 1 has 4"]) {
            try DatasetLoader.loadSplit(path: uneven, split: nil)
        }
        let long = try dir.write("long.amat", text: "0 1\n1 1 0 0 1\n")
        expectFailure(mentioning: ["line 2 has 5 values"]) { try DatasetLoader.loadSplit(path: long, split: nil) }
        let word = try dir.write("word.amat", text: "0 1\n1 x\n")
        expectFailure(mentioning: ["line 2, value 2", "'x'", "not a finite number"]) {
            try DatasetLoader.loadSplit(path: word, split: nil)
        }
        let blank = try dir.write("blank.amat", text: "0 1\n\n1 1\n")
        expectFailure(mentioning: ["line 2 is blank"]) { try DatasetLoader.loadSplit(path: blank, split: nil) }
        let empty = try dir.write("empty.amat", text: "\n \n")
        expectFailure(mentioning: ["no examples"]) { try DatasetLoader.loadSplit(path: empty, split: nil) }

        try dir.write("lonely_train.amat", text: "0 1\n")
        try dir.write("lonely_test.amat", text: "0 1\n")
        expectFailure([.io], mentioning: ["missing valid split", "lonely_valid.amat"]) {
            try DatasetLoader.load(path: dir.path("lonely_train.amat"))
        }

        try dir.write("mixed_train.amat", text: "0 1 0\n")
        try dir.write("mixed_valid.amat", text: "0 1 0\n")
        try dir.write("mixed_test.amat", text: "0 1\n")
        expectFailure(mentioning: ["mismatched dimensions", "mixed_test.amat"]) {
            try DatasetLoader.load(path: dir.path("mixed_train.amat"))
        }
    }

    // MARK: IDX and gzip

    /// 6 images of 2x3 grey levels, and 2 test images.
    let trainPixels: [UInt8] = (0..<36).map { UInt8(($0 * 37) % 256) }
    let testPixels: [UInt8] = [0, 255, 128, 127, 1, 254, 255, 0, 200, 100, 50, 10]

    private func writeIDX(
        _ dir: TemporaryDirectory,
        train: String = "train-images-idx3-ubyte",
        test: String = "t10k-images-idx3-ubyte.gz"
    ) throws {
        let trainFile = idxImages(count: 6, rows: 2, columns: 3, pixels: trainPixels)
        let testFile = idxImages(count: 2, rows: 2, columns: 3, pixels: testPixels)
        try dir.write(train, train.hasSuffix(".gz") ? Gzip.compress(trainFile) : trainFile)
        try dir.write(test, test.hasSuffix(".gz") ? Gzip.compress(testFile) : testFile)
    }

    /// The stochastic rule computed independently: 1 when a uniform draw is below p/255.
    private func stochastic(_ pixels: [UInt8], seed: UInt64, index: UInt64) -> [UInt8] {
        var random = RandomStream(seed: seed, domain: .binarization, index: index)
        return pixels.map { Double(random.unitFloat()) < Double($0) / 255 ? 1 : 0 }
    }

    @Test func idxThresholdAndGreyLevels() throws {
        let dir = try TemporaryDirectory()
        try writeIDX(dir)
        let path = dir.path("train-images-idx3-ubyte")
        let options = DataOptions(binarization: .threshold(127), validationFraction: 1.0 / 6.0)
        let data = try DatasetLoader.load(path: path, options: options)
        let expected = trainPixels.map { $0 > 127 ? UInt8(1) : 0 }
        #expect(data.train?.count == 5 && data.valid?.count == 1 && data.test?.count == 2)
        #expect(data.dimension == 6)
        #expect(binaryValues(data.train) == Array(expected.prefix(30)))
        #expect(binaryValues(data.valid) == Array(expected.suffix(6)))
        #expect(binaryValues(data.test) == testPixels.map { $0 > 127 ? 1 : 0 })
        #expect(data.source.contains("IDX") && data.source.contains("threshold"))

        let grey = try DatasetLoader.load(path: path, options: DataOptions(binarization: .none, validationFraction: 0))
        #expect(grey.valid == nil && grey.train?.count == 6)
        #expect(realValues(grey.train) == trainPixels.map { Float($0) / 255 })
        #expect(realValues(grey.test) == testPixels.map { Float($0) / 255 })
    }

    @Test func idxStochasticBinarizationIsSeededAndSplitsAreConsistent() throws {
        let dir = try TemporaryDirectory()
        try writeIDX(dir, train: "train-images-idx3-ubyte.gz", test: "t10k-images-idx3-ubyte")
        let path = dir.path("train-images-idx3-ubyte.gz")
        let options = DataOptions(binarization: .stochastic(seed: 42), validationFraction: 2.0 / 6.0)
        let data = try DatasetLoader.load(path: path, options: options)
        let train = stochastic(trainPixels, seed: 42, index: 0)
        #expect(binaryValues(data.train) == Array(train.prefix(24)))
        #expect(binaryValues(data.valid) == Array(train.suffix(12)))
        #expect(binaryValues(data.test) == stochastic(testPixels, seed: 42, index: 2))
        #expect(data.source.contains("stochastic binarization seed 42"))
        #expect(try DatasetLoader.load(path: path, options: options) == data)
        #expect(try DatasetLoader.load(path: dir.url.path, options: options) == data)
        let other = try DatasetLoader.load(path: path, options: DataOptions(binarization: .stochastic(seed: 43)))
        #expect(other.test != data.test || other.train != data.train)

        #expect(try DatasetLoader.loadSplit(path: path, split: "train", options: options) == data.train)
        #expect(try DatasetLoader.loadSplit(path: path, split: "valid", options: options) == data.valid)
        #expect(try DatasetLoader.loadSplit(path: path, split: "test", options: options) == data.test)
        #expect(
            try DatasetLoader.loadSplit(path: dir.path("t10k-images-idx3-ubyte"), split: nil, options: options)
                == data.test
        )
        #expect(binaryValues(try DatasetLoader.loadSplit(path: path, split: nil, options: options)) == train)
        // A folder's split, read alone, is the split of the whole load.
        for (split, matrix) in [("train", data.train), ("valid", data.valid), ("test", data.test)] {
            #expect(try DatasetLoader.loadSplit(path: dir.url.path, split: split, options: options) == matrix)
        }
    }

    @Test func idxFindsEMNISTStyleTestFile() throws {
        let dir = try TemporaryDirectory()
        try writeIDX(
            dir,
            train: "emnist-letters-train-images-idx3-ubyte.gz",
            test: "emnist-letters-test-images-idx3-ubyte.gz"
        )
        let data = try DatasetLoader.load(path: dir.path("emnist-letters-train-images-idx3-ubyte.gz"))
        #expect(data.test?.count == 2)
        #expect(data.source == "emnist-letters IDX, stochastic binarization seed 0")
    }

    @Test func idxMalformedFilesFail() throws {
        let dir = try TemporaryDirectory()
        let good = idxImages(count: 6, rows: 2, columns: 3, pixels: trainPixels)
        let load = { (path: String) in { try DatasetLoader.loadSplit(path: path, split: nil) } }

        let labels = try dir.write("train-labels-idx1-ubyte", [0, 0, 8, 1] + bigEndian32(3) + [1, 2, 3])
        expectFailure(mentioning: ["labels file"], load(labels))
        let gzLabels = try dir.write(
            "train-labels-idx1-ubyte.gz",
            Gzip.compress([0, 0, 8, 1] + bigEndian32(3) + [1, 2, 3])
        )
        expectFailure(mentioning: ["labels file"], load(gzLabels))

        let truncated = try dir.write("short-images-idx3-ubyte", Array(good.dropLast(5)))
        expectFailure(
            mentioning: ["truncated", "header says 6x2x3 = 36 bytes of pixels, file has 31"],
            load(truncated)
        )
        let gzTruncatedPixels = try dir.write("short-images-idx3-ubyte.gz", Gzip.compress(Array(good.dropLast(5))))
        expectFailure(mentioning: ["truncated", "file has 31"], load(gzTruncatedPixels))

        let compressed = Gzip.compress(good)
        let cutGzip = try dir.write("cut-images-idx3-ubyte.gz", Array(compressed.dropLast(12)))
        expectFailure(mentioning: ["truncated gzip"], load(cutGzip))
        var badCheck = compressed
        badCheck[badCheck.count - 6] ^= 0xFF  // inside the CRC-32 of the trailer
        let corrupt = try dir.write("crc-images-idx3-ubyte.gz", badCheck)
        expectFailure(mentioning: ["corrupt gzip"], load(corrupt))
        var garbled = compressed
        for i in 12..<(garbled.count - 8) { garbled[i] = UInt8(truncatingIfNeeded: i &* 131) }
        let garbledPath = try dir.write("garbled-images-idx3-ubyte.gz", garbled)
        expectFailure(mentioning: [], load(garbledPath))

        let wrongMagic = try dir.write("wrong-images-idx3-ubyte", [0x12, 0x34, 8, 3] + Array(good.dropFirst(4)))
        expectFailure(mentioning: ["bad magic 0x12340803"], load(wrongMagic))
        let floats = try dir.write("float-images-idx3-ubyte", [0, 0, 0x0D, 3] + Array(good.dropFirst(4)))
        expectFailure(mentioning: ["unsupported IDX element type", "32-bit floats"], load(floats))
        let extra = try dir.write("extra-images-idx3-ubyte", good + [1, 2])
        expectFailure(mentioning: ["2 bytes after"], load(extra))

        // A header claiming far more than the file holds, plain and gzipped: an error, not a huge allocation.
        let giant = idxImages(count: 0xFFFF_FFFF, rows: 0xFFFF_FFFF, columns: 0xFFFF_FFFF, pixels: [1, 2, 3])
        expectFailure(mentioning: ["too large"], load(try dir.write("giant-images-idx3-ubyte", giant)))
        let big = idxImages(count: 60000, rows: 28, columns: 28, pixels: [1, 2, 3])
        expectFailure(
            mentioning: ["truncated", "60000x28x28"],
            load(try dir.write("big-images-idx3-ubyte.gz", Gzip.compress(big)))
        )

        // Missing or mismatched test files.
        let lonely = try dir.write("lonely-train-images-idx3-ubyte", good)
        expectFailure([.io], mentioning: ["missing test file", "lonely-t10k-images-idx3-ubyte"]) {
            try DatasetLoader.load(path: lonely)
        }
        try dir.write("odd-train-images-idx3-ubyte", good)
        try dir.write(
            "odd-t10k-images-idx3-ubyte",
            idxImages(count: 1, rows: 3, columns: 3, pixels: Array(repeating: 9, count: 9))
        )
        expectFailure(mentioning: ["mismatched dimensions", "2x3", "3x3"]) {
            try DatasetLoader.load(path: dir.path("odd-train-images-idx3-ubyte"))
        }

        expectFailure([.io], mentioning: ["no such file"], load(dir.path("absent-images-idx3-ubyte")))
        expectFailure([.invalidConfiguration], mentioning: ["validationFraction"]) {
            try DatasetLoader.load(
                path: dir.path("odd-train-images-idx3-ubyte"),
                options: DataOptions(validationFraction: 1.5)
            )
        }
    }

    @Test func idxNeverCrashesOnPrefixes() throws {
        let good = idxImages(count: 6, rows: 2, columns: 3, pixels: trainPixels)
        let compressed = Gzip.compress(good)
        for n in 0..<good.count {
            #expect(throws: MADEError.self) {
                try Array(good.prefix(n)).withUnsafeBytes { try IDX.parse($0, path: "x") }
            }
        }
        for n in 0..<compressed.count {
            #expect(throws: MADEError.self) {
                try Array(compressed.prefix(n)).withUnsafeBytes { try Gzip.decompress($0, path: "x.gz") }
            }
        }
    }

    @Test func gzipRoundTripsMembersAndLimits() throws {
        let payload: [UInt8] = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7 ^ ($0 >> 5)) }
        let one = Gzip.compress(payload)
        #expect(try one.withUnsafeBytes { try Gzip.decompress($0, path: "x.gz") } == payload)
        let two = one + Gzip.compress([1, 2, 3])
        #expect(try two.withUnsafeBytes { try Gzip.decompress($0, path: "x.gz") } == payload + [1, 2, 3])
        #expect(
            try one.withUnsafeBytes { try Gzip.decompressPrefix($0, count: 16, path: "x.gz") }
                == Array(payload.prefix(16))
        )
        expectFailure(mentioning: ["more than 1000 bytes"]) {
            try one.withUnsafeBytes { try Gzip.decompress($0, path: "x.gz", limit: 1000) }
        }
        expectFailure(mentioning: ["trailing garbage"]) {
            try (one + [0x42, 0x42]).withUnsafeBytes { try Gzip.decompress($0, path: "x.gz") }
        }
        expectFailure(mentioning: ["not a gzip file"]) {
            try payload.withUnsafeBytes { try Gzip.decompress($0, path: "x.gz") }
        }
    }

    @Test func unrecognizedFilesAndDirectoriesFail() throws {
        let dir = try TemporaryDirectory()
        expectFailure([.io], mentioning: ["no data set found"]) { try DatasetLoader.load(path: dir.url.path) }
        let other = try dir.write("notes.txt", text: "hello")
        expectFailure(mentioning: ["unrecognized data file"]) { try DatasetLoader.load(path: other) }
        expectFailure([.io], mentioning: ["no such file"]) { try DatasetLoader.load(path: dir.path("nothing.npz")) }
        expectFailure([.invalidConfiguration], mentioning: ["unknown split 'dev'"]) {
            try DatasetLoader.loadSplit(path: other, split: "dev")
        }
    }

    // MARK: Fashion-MNIST

    @Test(.enabled(if: FileManager.default.fileExists(atPath: fashionDirectory + "/train-images-idx3-ubyte.gz")))
    func fashionMNISTLoadsDeterministically() throws {
        let data = try DatasetLoader.load(path: fashionDirectory)
        #expect(data.train?.count == 50000 && data.valid?.count == 10000 && data.test?.count == 10000)
        #expect(data.train?.dimension == 784 && data.valid?.dimension == 784 && data.test?.dimension == 784)
        #expect(data.train?.isBinary == true && data.valid?.isBinary == true && data.test?.isBinary == true)
        #expect(data.source == "fashion-mnist IDX, stochastic binarization seed 0")
        let again = try DatasetLoader.load(path: fashionDirectory)
        #expect(again == data)
        let testFile = fashionDirectory + "/t10k-images-idx3-ubyte.gz"
        #expect(try DatasetLoader.loadSplit(path: testFile, split: nil) == data.test)
        let reseeded = try DatasetLoader.loadSplit(
            path: testFile,
            split: nil,
            options: DataOptions(binarization: .stochastic(seed: 1))
        )
        #expect(reseeded.count == 10000 && reseeded != data.test)
        // Roughly the mean grey level of Fashion-MNIST (about 0.286) is the fraction of ones.
        let ones = binaryValues(data.test).map { $0.reduce(0) { $0 + Int($1) } } ?? 0
        let fraction = Double(ones) / Double(10000 * 784)
        #expect(fraction > 0.25 && fraction < 0.32)
    }
}
