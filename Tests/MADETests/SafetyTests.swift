import Foundation
import Testing

@testable import MADE

#if canImport(Glibc)
import Glibc
#endif

/// Bad input to the model library: a clear error, never a trap, and nothing lost.
@Suite("Safety of the model library")
struct SafetyTests {
    static func folder(_ name: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("made-safety-\(getpid())-\(name)").path
        try? FileManager.default.removeItem(atPath: path)
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// The pid of a process that has exited.
    static func deadPID() throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        return p.processIdentifier
    }

    // MARK: AtomicFile

    @Test("AtomicFile gives the file exactly its mode, bits the umask would clear included, and replaces it whole")
    func atomicFileMode() throws {
        let folder = Self.folder("mode")
        // The process umask is left alone (tests run in parallel); a group- and world-writable
        // mode is one that any usual umask (022, 002, 077) would change.
        for mode in [mode_t(0o600), mode_t(0o644), mode_t(0o666)] {
            let path = folder + "/file-\(mode)"
            try AtomicFile.write("first", to: path, mode: mode)
            try AtomicFile.write("second", to: path, mode: mode)
            var info = stat()
            #expect(stat(path, &info) == 0)
            #expect(info.st_mode & 0o777 == mode)
            #expect(try String(contentsOfFile: path, encoding: .utf8) == "second")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder).allSatisfy { !$0.contains(".tmp-") })
    }

    @Test(
        "AtomicFile's errors give the failing call's own reason; a link planted at its temporary name is not followed"
    )
    func atomicFileErrors() throws {
        let missing = #expect(throws: MADEError.self) { try AtomicFile.write([1], to: "/nonexistent-folder/x.bin") }
        #expect(missing?.message.contains("No such file or directory") == true, "\(String(describing: missing))")
        let folder = Self.folder("full")
        let target = folder + "/full"
        try FileManager.default.createSymbolicLink(
            atPath: folder + "/.full.tmp-\(getpid())",
            withDestinationPath: "/dev/full"
        )
        // The temporary name is not followed when it is a link: the link is replaced by a file of its own.
        try AtomicFile.write([7, 7], to: target)
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: target))) == [7, 7])
        #expect(FileManager.default.fileExists(atPath: "/dev/full"))
    }

    @Test("stale temporary files of dead processes are removed; those of running processes stay")
    func staleTemporaries() throws {
        let folder = Self.folder("stale")
        let path = folder + "/run.ckpt"
        let dead = try Self.deadPID()
        let deadFile = folder + "/.run.ckpt.tmp-\(dead)"
        let liveFile = folder + "/.run.ckpt.tmp-\(getppid())"
        let ownFile = folder + "/.run.ckpt.tmp-\(getpid())"
        let otherFile = folder + "/.other.ckpt.tmp-\(dead)"
        for file in [deadFile, liveFile, ownFile, otherFile] { try AtomicFile.write([1, 2, 3], to: file) }
        let removed = AtomicFile.removeStaleTemporaries(of: path)
        #expect(removed == [deadFile])
        #expect(!FileManager.default.fileExists(atPath: deadFile))
        for kept in [liveFile, ownFile, otherFile] { #expect(FileManager.default.fileExists(atPath: kept)) }
    }

    @Test("a folder that is missing, not a folder, or not writable is refused at once, with the reason")
    func writableFolder() throws {
        let folder = Self.folder("writable")
        try AtomicFile.checkWritableFolder(of: folder + "/run.ckpt")
        try AtomicFile.checkWritableFolder(of: "relative.ckpt")
        let missing = #expect(throws: MADEError.self) {
            try AtomicFile.checkWritableFolder(of: folder + "/none/run.ckpt")
        }
        #expect(missing?.message.contains("does not exist") == true)
        try AtomicFile.write("x", to: folder + "/file")
        let notFolder = #expect(throws: MADEError.self) {
            try AtomicFile.checkWritableFolder(of: folder + "/file/run.ckpt")
        }
        #expect(notFolder?.message.contains("not a folder") == true)
        if getuid() != 0 {
            try FileManager.default.createDirectory(atPath: folder + "/locked", withIntermediateDirectories: true)
            chmod(folder + "/locked", 0o500)
            defer { chmod(folder + "/locked", 0o700) }
            let locked = #expect(throws: MADEError.self) {
                try AtomicFile.checkWritableFolder(of: folder + "/locked/run.ckpt")
            }
            #expect(locked?.message.contains("not writable") == true)
        }
    }

    // MARK: Checkpoints

    @Test(
        "one writer per checkpoint: a second lock is refused and names the holder's pid; it is free again once released"
    )
    func checkpointLock() throws {
        let path = Self.folder("lock") + "/run.ckpt"
        var first: CheckpointLock? = try CheckpointLock(checkpoint: path)
        let refused = #expect(throws: MADEError.self) { _ = try CheckpointLock(checkpoint: path) }
        #expect(refused?.code == .busy)
        #expect(refused?.message.contains("pid \(getpid())") == true, "\(String(describing: refused))")
        #expect(first != nil)
        first = nil
        _ = try CheckpointLock(checkpoint: path)
    }

    static func smallCheckpoint() throws -> Checkpoint {
        let trainer = try Trainer(configuration: TrainerTests.configuration(epochs: 1), dataset: TrainerTests.dataset())
        _ = try trainer.run()
        return trainer.checkpoint
    }

    @Test("a checkpoint whose parameters are not finite is refused with the reason; a finite one passes")
    func nonFiniteCheckpoint() throws {
        let good = try Self.smallCheckpoint()
        try good.requireFinite(resuming: true)
        var bad = good
        bad.state.parameters[3] = .nan
        let error = #expect(throws: MADEError.self) { try bad.requireFinite(path: "bad.ckpt") }
        #expect(error?.code == .invalidCheckpoint)
        #expect(error?.message.contains("not finite") == true && error?.message.contains("#3") == true)
        var badMoment = good
        badMoment.state.adam.secondMoment[0] = .infinity
        try badMoment.requireFinite()
        #expect(throws: MADEError.self) { try badMoment.requireFinite(resuming: true) }
    }

    @Test("a checkpoint claiming 2^63 - 1 epochs, or a step beyond 2^53, is refused as invalid rather than overflowing")
    func hugeCountersInCheckpoint() throws {
        let good = try Self.smallCheckpoint()
        var epochs = good
        epochs.configuration.epochs = Int.max
        let e1 = #expect(throws: MADEError.self) { try Checkpoint.decode(try epochs.encoded()) }
        #expect(e1?.code == .invalidCheckpoint)
        var step = good
        step.state.step = Int.max
        step.state.adam.step = Int.max
        #expect(throws: MADEError.self) { try Checkpoint.decode(try step.encoded()) }
    }

    // MARK: Sizes and values

    @Test(
        "configurations with a negative or non-finite weight decay, decay factor or epochs are refused",
        arguments: [
            { (c: inout TrainingConfiguration) in c.adam.weightDecay = -1 },
            { (c: inout TrainingConfiguration) in c.adam.weightDecay = .nan },
            { (c: inout TrainingConfiguration) in c.schedule.gamma = -1 },
            { (c: inout TrainingConfiguration) in c.schedule.gamma = 1e300 },
            { (c: inout TrainingConfiguration) in c.schedule.gamma = .nan },
            { (c: inout TrainingConfiguration) in c.schedule.stepEpochs = -5 },
            { (c: inout TrainingConfiguration) in c.epochs = Int.max },
            { (c: inout TrainingConfiguration) in c.evaluationMasks = 100_000 },
            { (c: inout TrainingConfiguration) in c.model.maskCount = 4_611_686_018_427_387_904 },
            { (c: inout TrainingConfiguration) in c.model.hiddenSizes = [Int](repeating: 2, count: 5000) },
            { (c: inout TrainingConfiguration) in c.model.hiddenSizes = [Int.max / 2] },
        ] as [@Sendable (inout TrainingConfiguration) -> Void]
    )
    func invalidConfigurations(mutate: @Sendable (inout TrainingConfiguration) -> Void) throws {
        var c = TrainerTests.configuration()
        try c.validate()
        mutate(&c)
        #expect(throws: MADEError.self) { try c.validate() }
    }

    @Test("the memory budget refuses what cannot be held, and overflowing sizes, with a clear error")
    func memoryBudget() throws {
        #expect(MemoryBudget.availableBytes > 0)
        try MemoryBudget.require(1 << 20, for: "a small buffer")
        let huge = #expect(throws: MADEError.self) { try MemoryBudget.require(Int.max, for: "everything") }
        #expect(huge?.code == .tooLarge && huge?.message.contains("everything needs") == true)
        #expect(MemoryBudget.product(3_000_000, 784, 4) == 9_408_000_000)
        #expect(MemoryBudget.product(Int.max, 2) == nil)
        #expect(throws: MADEError.self) {
            try MemoryBudget.require(MemoryBudget.product(Int.max, 2), for: "an overflow")
        }
        // A model too large to train here is refused before anything is allocated.
        var c = TrainerTests.configuration()
        c.model = ModelConfiguration(inputCount: 16, hiddenSizes: [40_000, 40_000])
        c.batchSize = 12
        #expect(c.trainingBytes.map { $0 > 30_000_000_000 } == true)
        let error = #expect(throws: MADEError.self) { try Trainer(configuration: c, dataset: TrainerTests.dataset()) }
        #expect(error?.code == .tooLarge || error?.code == .invalidConfiguration)
    }

    /// A zip file of one deflated entry whose sizes are declared in a zip64 extra field.
    static func zip64(name: String, declaredSize: UInt64, deflated: [UInt8], crc: UInt32 = 0) -> [UInt8] {
        var out: [UInt8] = []
        func le<I: FixedWidthInteger>(_ v: I) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        let nameBytes = Array(name.utf8)
        func extra() {
            le(UInt16(1))
            le(UInt16(16))
            le(declaredSize)
            le(UInt64(deflated.count))
        }
        le(UInt32(0x0403_4b50))
        le(UInt16(45))
        le(UInt16(0))
        le(UInt16(8))
        le(UInt16(0))
        le(UInt16(0x21))
        le(crc)
        le(UInt32.max)
        le(UInt32.max)
        le(UInt16(nameBytes.count))
        le(UInt16(20))
        out += nameBytes
        extra()
        out += deflated
        let central = out.count
        le(UInt32(0x0201_4b50))
        le(UInt16(45))
        le(UInt16(45))
        le(UInt16(0))
        le(UInt16(8))
        le(UInt16(0))
        le(UInt16(0x21))
        le(crc)
        le(UInt32.max)
        le(UInt32.max)
        le(UInt16(nameBytes.count))
        le(UInt16(20))
        le(UInt16(0))
        le(UInt16(0))
        le(UInt16(0))
        le(UInt32(0))
        le(UInt32(0))
        out += nameBytes
        extra()
        let centralSize = out.count - central
        le(UInt32(0x0605_4b50))
        le(UInt16(0))
        le(UInt16(0))
        le(UInt16(1))
        le(UInt16(1))
        le(UInt32(centralSize))
        le(UInt32(central))
        le(UInt16(0))
        return out
    }

    /// A version-1 `.npy` header for an array of `shape` of `descr`.
    static func npyHeader(descr: String, rows: Int, columns: Int) -> [UInt8] {
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': (\(rows), \(columns)), }"
        header += String(repeating: " ", count: (64 - (10 + header.utf8.count + 1) % 64) % 64) + "\n"
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)]
            + Array(header.utf8)
    }

    @Test("a zip bomb: an .npz entry that declares a 30,000,000 x 784 array is refused before it is extracted")
    func npzBomb() throws {
        let folder = Self.folder("bomb")
        let header = Self.npyHeader(descr: "<f4", rows: 30_000_000, columns: 784)
        // The stream holds the header and 2 MiB of zeros; the entry declares the whole array.
        let gzip = Gzip.compress(header + [UInt8](repeating: 0, count: 2 << 20))
        let raw = Array(gzip[10..<(gzip.count - 8)])
        let path = folder + "/bomb.npz"
        try Data(
            Self.zip64(name: "train_data.npy", declaredSize: UInt64(header.count) + 30_000_000 * 784 * 4, deflated: raw)
        )
        .write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: MADEError.self) { try DatasetLoader.load(path: path) }
        #expect(error?.code == .tooLarge, "\(String(describing: error))")
        #expect(error?.message.contains("30000000x784") == true, "\(String(describing: error))")
        // The same header in an entry that declares fewer bytes than it describes: truncated.
        let small = folder + "/short.npz"
        try Data(Self.zip64(name: "train_data.npy", declaredSize: UInt64(header.count) + (2 << 20), deflated: raw))
            .write(to: URL(fileURLWithPath: small))
        let short = #expect(throws: MADEError.self) { try DatasetLoader.load(path: small) }
        #expect(short?.message.contains("truncated") == true, "\(String(describing: short))")
    }
}
