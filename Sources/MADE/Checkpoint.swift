import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A training run saved to disk: configuration, parameters, Adam state, step, schedule and
/// early-stopping state, and a fingerprint of the data it trains on.
///
/// File format, version 1 (all integers little-endian):
///
///     "MADECKPT"                      8 bytes
///     version                         UInt32 (1)
///     header length H                 UInt32
///     header                          H bytes of JSON (``Checkpoint/Header``)
///     4 arrays, each:                 UInt64 count, then count IEEE-754 float32 values
///         parameters, Adam first moment, Adam second moment, best parameters (may be empty)
///     SHA-256 of all the bytes above  32 bytes
///
/// Doubles that steer the run (loss sums, the best validation NLL) are stored by bit pattern, so
/// a resumed run makes exactly the decisions the uninterrupted one would have made. The mask
/// schedule and data order are pure functions of the configuration and the step, and so need no
/// generator state of their own.
public struct Checkpoint: Sendable, Equatable {
    public static let magic = Array("MADECKPT".utf8)
    public static let version: UInt32 = 1

    public var configuration: TrainingConfiguration
    public var state: TrainingState
    /// Fingerprint of the training data (``DataFingerprint``), checked on resume.
    public var dataFingerprint: String
    /// Where the training data came from; nil in checkpoints written before it was recorded.
    public var dataSource: DataSource?
    /// The run's identity, kept across resumes; metrics records carry it. Nil in older checkpoints.
    public var runID: String?

    public init(
        configuration: TrainingConfiguration,
        state: TrainingState,
        dataFingerprint: String,
        dataSource: DataSource? = nil,
        runID: String? = nil
    ) {
        self.configuration = configuration
        self.state = state
        self.dataFingerprint = dataFingerprint
        self.dataSource = dataSource
        self.runID = runID
    }

    /// The parameters the model stands by (see ``TrainingState/modelParameters(_:)``).
    public var modelParameters: [Float] { state.modelParameters(configuration) }

    /// SHA-256 of the little-endian float32 bytes of ``modelParameters``, in layout order.
    public var parametersSHA256: String { SHA256.hex(floats: modelParameters) }

    /// The JSON header.
    struct Header: Codable {
        var configuration: TrainingConfiguration
        var dataFingerprint: String
        var step: Int
        var completedEpochs: Int
        var epochLossSumBits: UInt64
        var epochExamples: Int
        var bestValidNLLBits: UInt64?
        var bestEpoch: Int
        var epochsWithoutImprovement: Int
        var stoppedEarly: Bool
        var adamStep: Int
        var history: [EpochRecord]
        var parametersSHA256: String
        /// Absent from checkpoints written before they were recorded.
        var dataSource: DataSource?
        var runID: String?
    }

    // MARK: Encoding

    /// The file's bytes.
    public func encoded() throws -> [UInt8] {
        let header = Header(
            configuration: configuration,
            dataFingerprint: dataFingerprint,
            step: state.step,
            completedEpochs: state.completedEpochs,
            epochLossSumBits: state.epochLossSum.bitPattern,
            epochExamples: state.epochExamples,
            bestValidNLLBits: state.bestValidNLL?.bitPattern,
            bestEpoch: state.bestEpoch,
            epochsWithoutImprovement: state.epochsWithoutImprovement,
            stoppedEarly: state.stoppedEarly,
            adamStep: state.adam.step,
            history: state.history,
            parametersSHA256: parametersSHA256,
            dataSource: dataSource,
            runID: runID
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // A diverged run's history may hold infinities or NaN; they are written as strings.
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf",
            negativeInfinity: "-inf",
            nan: "nan"
        )
        let json = try encoder.encode(header)
        var out = Checkpoint.magic
        let arrays = [state.parameters, state.adam.firstMoment, state.adam.secondMoment, state.bestParameters]
        out.reserveCapacity(64 + json.count + arrays.reduce(0) { $0 + 8 + 4 * $1.count })
        append(Checkpoint.version, to: &out)
        append(UInt32(json.count), to: &out)
        out += json
        for a in arrays {
            append(UInt64(a.count), to: &out)
            for v in a { append(v.bitPattern, to: &out) }
        }
        out += SHA256.hash(out)
        return out
    }

    private func append<I: FixedWidthInteger>(_ value: I, to out: inout [UInt8]) {
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { out += $0 }
    }

    /// Writes the checkpoint atomically: a temporary file beside `path`, fsync, rename, fsync of the folder.
    /// A reader sees the old file or the new one, never a mixture, even across a crash.
    public func write(to path: String) throws {
        try AtomicFile.write(try encoded(), to: path)
    }

    /// Most steps a checkpoint may count (2^53: still exact as a Double).
    public static let maxStep = 1 << 53

    /// Throws unless every parameter the model stands by, and, for `resuming`, every value of
    /// the state a run carries on from, is finite: a checkpoint of a run that diverged cannot be
    /// evaluated, sampled or resumed.
    public func requireFinite(resuming: Bool = false, path: String = "checkpoint") throws {
        var arrays = [("parameters", modelParameters)]
        if resuming {
            arrays += [
                ("training parameters", state.parameters), ("Adam first moment", state.adam.firstMoment),
                ("Adam second moment", state.adam.secondMoment),
            ]
        }
        for (name, values) in arrays {
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                let count = values.lazy.filter { !$0.isFinite }.count
                throw MADEError(
                    .invalidCheckpoint,
                    "\(count) of its \(values.count) \(name) are not finite (the first, #\(bad), is \(values[bad])): "
                        + "the run diverged before this checkpoint was written; train again with a smaller --lr",
                    path: path
                )
            }
        }
    }

    // MARK: Decoding

    /// Reads and verifies a checkpoint file.
    public static func read(from path: String) throws -> Checkpoint {
        let bytes: [UInt8]
        do {
            bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw MADEError(.io, "cannot read the checkpoint: \(error.localizedDescription)", path: path)
        }
        return try decode(bytes, path: path)
    }

    /// Parses and verifies checkpoint bytes; `path` names the file in errors.
    public static func decode(_ bytes: [UInt8], path: String = "checkpoint") throws -> Checkpoint {
        func fail(_ message: String) -> MADEError { MADEError(.invalidCheckpoint, message, path: path) }
        guard bytes.count >= 8 + 8 + 32 else {
            throw fail("truncated: \(bytes.count) bytes is too short for a checkpoint")
        }
        guard Array(bytes[0..<8]) == magic else { throw fail("not a MADE checkpoint (bad magic)") }
        let body = bytes[0..<(bytes.count - 32)]
        guard SHA256.hash(body) == Array(bytes[(bytes.count - 32)...]) else {
            throw fail("corrupt: the SHA-256 of the contents does not match (truncated or altered file)")
        }
        let (header, arrays): (Header, [[Float]]) = try Array(body).withUnsafeBytes { raw in
            var reader = LittleEndianReader(raw, position: 8)
            guard let version = reader.integer(as: UInt32.self) else { throw fail("truncated version") }
            guard version == Checkpoint.version else {
                throw fail("unsupported checkpoint version \(version) (this program reads \(Checkpoint.version))")
            }
            guard let headerLength = reader.integer(as: UInt32.self) else { throw fail("truncated header length") }
            guard let json = reader.take(Int(headerLength)) else { throw fail("truncated header") }
            let header: Header
            do {
                let decoder = JSONDecoder()
                decoder.nonConformingFloatDecodingStrategy = .convertFromString(
                    positiveInfinity: "inf",
                    negativeInfinity: "-inf",
                    nan: "nan"
                )
                header = try decoder.decode(Header.self, from: Data(json))
            } catch {
                throw fail("unreadable header: \(error)")
            }
            var arrays: [[Float]] = []
            for name in ["parameters", "Adam first moment", "Adam second moment", "best parameters"] {
                guard let count = reader.integer(as: UInt64.self) else { throw fail("truncated before the \(name)") }
                guard count <= UInt64(reader.remaining / 4), let a = reader.array(count: Int(count), of: Float.self)
                else {
                    throw fail("truncated \(name): \(count) values announced")
                }
                arrays.append(a)
            }
            guard reader.remaining == 0 else { throw fail("\(reader.remaining) unexpected bytes after the arrays") }
            return (header, arrays)
        }
        let configuration = header.configuration
        do { try configuration.validate() } catch { throw fail("invalid configuration: \(error)") }
        let n = ParameterLayout(configuration.model).count
        guard arrays[0].count == n, arrays[1].count == n, arrays[2].count == n,
            arrays[3].isEmpty || arrays[3].count == n
        else {
            throw fail("array sizes \(arrays.map(\.count)) do not fit the model's \(n) parameters")
        }
        // The counters must describe a point the schedule can reach.
        // (validate() bounds the epochs, so the sums below cannot overflow.)
        guard header.completedEpochs >= 0, header.completedEpochs <= configuration.epochs + 1_000_000, header.step >= 0,
            header.step <= Self.maxStep, header.epochExamples <= Self.maxStep,
            header.adamStep == header.step, header.epochExamples >= 0, header.epochsWithoutImprovement >= 0,
            header.bestEpoch >= -1, header.bestEpoch < max(header.completedEpochs, 1),
            configuration.evaluationMasks <= 1_000_000
        else {
            throw fail(
                """
                inconsistent counters: step \(header.step), Adam step \(header.adamStep), epochs \
                \(header.completedEpochs)
                """
            )
        }
        var state = TrainingState(configuration: configuration)
        state.parameters = arrays[0]
        state.adam = AdamState(firstMoment: arrays[1], secondMoment: arrays[2], step: header.adamStep)
        state.step = header.step
        state.completedEpochs = header.completedEpochs
        state.epochLossSum = Double(bitPattern: header.epochLossSumBits)
        state.epochExamples = header.epochExamples
        state.bestValidNLL = header.bestValidNLLBits.map { Double(bitPattern: $0) }
        state.bestEpoch = header.bestEpoch
        state.bestParameters = arrays[3]
        state.epochsWithoutImprovement = header.epochsWithoutImprovement
        state.stoppedEarly = header.stoppedEarly
        state.history = header.history
        let checkpoint = Checkpoint(
            configuration: configuration,
            state: state,
            dataFingerprint: header.dataFingerprint,
            dataSource: header.dataSource,
            runID: header.runID
        )
        guard checkpoint.parametersSHA256 == header.parametersSHA256 else {
            throw fail("the parameters do not match the checksum in the header")
        }
        return checkpoint
    }
}
