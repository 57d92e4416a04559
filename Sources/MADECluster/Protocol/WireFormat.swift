import MADE

/// Encodes and decodes ``WireMessage`` frames (the layout is documented there).
public enum WireFormat {
    public static let magic: [UInt8] = Array("MADW".utf8)
    public static let version: UInt16 = 7
    public static let headerSize = 24

    /// Upper bounds on what a decoder accepts, so that a hostile frame cannot make it allocate much.
    public struct Limits: Sendable, Equatable {
        public var maxRows: Int = 1 << 20
        public var maxFloats: Int = 1 << 26
        public var maxStringBytes: Int = 4096
        /// Most shards in one task (a block of the reduction tree). A worker takes fewer (its
        /// hello says how many: each shard beyond the first costs it a dense gradient buffer);
        /// a relay hands the shards on to its workers.
        public var maxBlockShards: Int = 1024
        /// Most workers one peer may stand for.
        public var maxCapacity: Int = 1 << 16
        /// Most masks whose union packs a task (the masks its shards, or its step's, train).
        public var maxPackingMasks: Int = 64
        /// Most shared-memory parameter slots besides slot 0 a welcome grants: one per further
        /// mask of a step of several masks (up to 8 masks in all).
        public var maxParameterSlots: Int = 7
        public var maxConfigurationBytes: Int = 1 << 20
        public init() {}
    }

    // MARK: Encoding

    /// The frame for `message` in run `runID`. `version` other than ``version`` is only for a
    /// `reject` to a peer of that version (a reject's payload, one string, is the same in all).
    public static func encode(_ message: WireMessage, runID: UInt64, version: UInt16 = version) -> [UInt8] {
        let size = encodedSize(message)
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            var writer = WireWriter(buffer: UnsafeMutableRawBufferPointer(buffer))
            write(message, runID: runID, size: size, version: version, to: &writer)
            precondition(writer.position == size, "WireFormat: encoded \(writer.position) of \(size) bytes")
            count = size
        }
    }

    /// The frame for `message` in a freshly allocated buffer that the caller owns (for zero-copy sends).
    public static func encodeOwned(
        _ message: WireMessage,
        runID: UInt64,
        version: UInt16 = version
    ) -> UnsafeMutableRawBufferPointer {
        let size = encodedSize(message)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        var writer = WireWriter(buffer: buffer)
        write(message, runID: runID, size: size, version: version, to: &writer)
        precondition(writer.position == size)
        return buffer
    }

    /// Whether shards `first ..< first + count` of `total` are a whole subtree of the reduction
    /// tree over `total` shards: `count` a power of two and `first` a multiple of it, or the
    /// truncated last block (`first` a multiple of the next power of two, ending at `total`).
    public static func isAlignedBlock(first: Int, count: Int, of total: Int) -> Bool {
        guard count >= 1, first >= 0, first + count <= total else { return false }
        var size = 1
        while size < count { size *= 2 }
        return first % size == 0 && (count == size || first + count == total)
    }

    /// The mask digest a task's result carries, from the digests of its shards' masks (16 bytes
    /// each, in shard order): when every shard trains the same masks, their digest; otherwise
    /// the first 16 bytes of the SHA-256 of all of them in order, so it covers every mask of
    /// the block and where each one trains.
    public static func blockDigest<C: Collection>(_ shardDigests: C) -> [UInt8] where C.Element == [UInt8] {
        guard let first = shardDigests.first else { return [UInt8](repeating: 0, count: 16) }
        if shardDigests.allSatisfy({ $0 == first }) { return first }
        var hash = SHA256()
        for d in shardDigests { hash.update(d) }
        return Array(hash.finalize().prefix(16))
    }

    /// Bytes of the encoded frame.
    public static func encodedSize(_ message: WireMessage) -> Int {
        headerSize + payloadSize(message)
    }

    private static func payloadSize(_ message: WireMessage) -> Int {
        switch message {
        case .hello(let h): return 32 + 4 + 2 + stringBytes(h.name).count + 2 + stringBytes(h.hostID).count + 4 + 4
        case .welcome(let w):
            return 4 + 4 + w.configuration.count + 2 + stringBytes(w.sharedMemory?.path ?? "").count + 4 + 4 + 1
                + 4 * min(Int(UInt8.max), w.sharedMemory?.parameterSlots.count ?? 0)
        case .reject(let reason): return 2 + stringBytes(reason).count
        case .task(let t):
            return 8 + 4 + 4 + 8 + 4 + 4 * t.rows.count + 4 + 4 * t.rowsPerShard.count + 4 + 8 * t.maskSeeds.count + 4
                + 8 * t.packingSeeds.count
                + workSize(t.work) + payloadSize(t.parameters)
        case .result(let r): return 8 + 4 + 8 + 16 + 8 + 4 + payloadSize(r.values)
        case .heartbeat: return 8
        case .shutdown(_, let reason): return 1 + 2 + stringBytes(reason).count
        case .who: return 0
        case .failed(_, _, _, let reason): return 8 + 4 + 8 + 2 + stringBytes(reason).count
        }
    }

    /// A string's UTF-8 bytes as sent: cut at a character boundary to fit `Limits().maxStringBytes`,
    /// so that every string this side sends, the other side accepts.
    static func stringBytes(_ s: String) -> [UInt8] {
        let limit = Limits().maxStringBytes
        guard s.utf8.count > limit else { return Array(s.utf8) }
        var out: [UInt8] = []
        for ch in s {
            let bytes = Array(String(ch).utf8)
            if out.count + bytes.count > limit { break }
            out += bytes
        }
        return out
    }

    private static func workSize(_ work: WireMessage.Work) -> Int {
        switch work {
        case .gradient: return 1
        case .logLikelihood: return 1 + 1 + 4 + 1
        case .sample: return 1 + 4 + 4 + 8 + 1
        }
    }

    private static func payloadSize(_ p: FloatPayload) -> Int {
        switch p {
        case .absent: return 1 + 4
        case .inline(let v): return 1 + 4 + 4 * v.count
        case .shared, .sharedCompute: return 1 + 4 + 4
        }
    }

    static func write(_ message: WireMessage, runID: UInt64, size: Int, version: UInt16, to w: inout WireWriter) {
        precondition(
            version == WireFormat.version || message.kind == .reject,
            "only a reject goes out in another protocol version"
        )
        w.bytes(magic)
        w.integer(version)
        w.integer(message.kind.rawValue)
        w.integer(UInt8(0))
        w.integer(runID)
        w.integer(UInt32(size - headerSize))
        w.integer(UInt32(0))
        switch message {
        case .hello(let h):
            precondition(h.dataFingerprint.count == 32, "hello: the data fingerprint is 32 bytes")
            w.bytes(h.dataFingerprint)
            w.integer(h.processID)
            w.string(h.name)
            w.string(h.hostID)
            w.integer(h.capacity)
            w.integer(h.maxBlockShards)
        case .welcome(let welcome):
            w.integer(welcome.heartbeatIntervalMilliseconds)
            w.integer(UInt32(welcome.configuration.count))
            w.bytes(welcome.configuration)
            w.string(welcome.sharedMemory?.path ?? "")
            w.integer(welcome.sharedMemory?.slot ?? 0)
            w.integer(welcome.sharedMemory?.slotFloats ?? 0)
            let parameterSlots = welcome.sharedMemory?.parameterSlots ?? []
            w.integer(UInt8(clamping: parameterSlots.count))
            for slot in parameterSlots.prefix(Int(UInt8.max)) { w.integer(slot) }
        case .reject(let reason):
            w.string(reason)
        case .task(let t):
            w.integer(t.step)
            w.integer(t.shard)
            w.integer(t.shardCount)
            w.integer(t.ticket)
            w.integer(UInt32(t.rows.count))
            t.rows.withUnsafeBytes { w.raw($0) }
            w.integer(UInt32(t.rowsPerShard.count))
            t.rowsPerShard.withUnsafeBytes { w.raw($0) }
            w.integer(UInt32(t.maskSeeds.count))
            t.maskSeeds.withUnsafeBytes { w.raw($0) }
            w.integer(UInt32(t.packingSeeds.count))
            t.packingSeeds.withUnsafeBytes { w.raw($0) }
            switch t.work {
            case .gradient:
                w.integer(UInt8(0))
            case .logLikelihood(let split, let masks, let mode):
                w.integer(UInt8(1))
                w.integer(split)
                w.integer(masks)
                w.integer(mode)
            case .sample(let count, let masks, let seed, let method):
                w.integer(UInt8(2))
                w.integer(count)
                w.integer(masks)
                w.integer(seed)
                w.integer(method)
            }
            w.payload(t.parameters)
        case .result(let r):
            precondition(r.maskDigest.count == 16, "result: the mask digest is 16 bytes")
            w.integer(r.step)
            w.integer(r.shard)
            w.integer(r.ticket)
            w.bytes(r.maskDigest)
            w.integer(r.lossSum.bitPattern)
            w.integer(r.computeMicroseconds)
            w.payload(r.values)
        case .heartbeat(let sequence):
            w.integer(sequence)
        case .shutdown(let code, let reason):
            w.integer(code)
            w.string(reason)
        case .who:
            break
        case .failed(let step, let shard, let ticket, let reason):
            w.integer(step)
            w.integer(shard)
            w.integer(ticket)
            w.string(reason)
        }
    }

    // MARK: Decoding

    /// Parses and validates one frame. Returns the run id of the header and the message.
    public static func decode(
        _ frame: [UInt8],
        limits: Limits = Limits()
    ) throws(WireError) -> (runID: UInt64, message: WireMessage) {
        let result = frame.withUnsafeBytes { raw in
            Result { () throws(WireError) in try decode(raw, limits: limits) }
        }
        return try result.get()
    }

    /// ``decode(_:limits:)`` over raw bytes.
    public static func decode(
        _ raw: UnsafeRawBufferPointer,
        limits: Limits = Limits()
    ) throws(WireError) -> (runID: UInt64, message: WireMessage) {
        guard raw.count >= headerSize else { throw .tooShort(raw.count) }
        var r = WireReader(buffer: raw)
        guard try r.bytes(4, "magic") == magic else { throw .badMagic }
        let v: UInt16 = try r.integer("version")
        let typeByte: UInt8 = try r.integer("type")
        // A reject is read in any version, so a peer of another version hears why it is refused.
        guard v == version || (v >= 1 && typeByte == WireMessage.Kind.reject.rawValue) else {
            throw .unsupportedVersion(v)
        }
        guard let kind = WireMessage.Kind(rawValue: typeByte) else { throw .unknownType(typeByte) }
        let flags: UInt8 = try r.integer("flags")
        guard flags == 0 else { throw .nonzeroFlags(flags) }
        let runID: UInt64 = try r.integer("run id")
        let length: UInt32 = try r.integer("payload length")
        let reserved: UInt32 = try r.integer("reserved")
        guard reserved == 0 else { throw .nonzeroReserved }
        guard Int(length) == raw.count - headerSize else {
            throw .lengthMismatch(declared: length, actual: raw.count - headerSize)
        }

        let message: WireMessage
        switch kind {
        case .hello:
            let fingerprint = try r.bytes(32, "data fingerprint")
            let pid: UInt32 = try r.integer("process id")
            let name = try r.string("worker name", limit: limits.maxStringBytes)
            let hostID = try r.string("host id", limit: limits.maxStringBytes)
            let capacity: UInt32 = try r.integer("capacity")
            guard Int(capacity) <= limits.maxCapacity else {
                throw .limitExceeded(field: "capacity", count: Int(capacity), limit: limits.maxCapacity)
            }
            let blockLimit: UInt32 = try r.integer("most shards per task")
            guard blockLimit >= 1 else { throw .invalidField("a peer that takes tasks of 0 shards") }
            message = .hello(
                .init(
                    dataFingerprint: fingerprint,
                    processID: pid,
                    name: name,
                    hostID: hostID,
                    capacity: capacity,
                    maxBlockShards: blockLimit
                )
            )
        case .welcome:
            let interval: UInt32 = try r.integer("heartbeat interval")
            guard interval > 0 else { throw .invalidField("heartbeat interval is zero") }
            let count: UInt32 = try r.integer("configuration length")
            guard Int(count) <= limits.maxConfigurationBytes else {
                throw .limitExceeded(field: "configuration", count: Int(count), limit: limits.maxConfigurationBytes)
            }
            let configuration = try r.bytes(Int(count), "configuration")
            let path = try r.string("shared-memory path", limit: limits.maxStringBytes)
            let slot: UInt32 = try r.integer("shared-memory slot")
            let slotFloats: UInt32 = try r.integer("shared-memory slot size")
            let regions: UInt8 = try r.integer("parameter slot count")
            guard Int(regions) <= limits.maxParameterSlots else {
                throw .limitExceeded(field: "parameter slots", count: Int(regions), limit: limits.maxParameterSlots)
            }
            var parameterSlots: [UInt32] = []
            for _ in 0..<regions { parameterSlots.append(try r.integer("parameter slot")) }
            var grant: WireMessage.SharedMemoryGrant?
            if !path.isEmpty {
                guard slot > 0, slotFloats > 0 else {
                    throw .invalidField("shared memory with slot \(slot) of \(slotFloats) floats")
                }
                let distinct = Set(parameterSlots).count == parameterSlots.count
                guard distinct, parameterSlots.allSatisfy({ $0 > 0 && $0 != slot }) else {
                    throw .invalidField(
                        "parameter slots \(parameterSlots) beside slot 0 for the worker of slot \(slot)"
                    )
                }
                grant = .init(path: path, slot: slot, slotFloats: slotFloats, parameterSlots: parameterSlots)
            } else if slot != 0 || slotFloats != 0 || !parameterSlots.isEmpty {
                throw .invalidField("a shared-memory slot without a path")
            }
            message = .welcome(
                .init(heartbeatIntervalMilliseconds: interval, configuration: configuration, sharedMemory: grant)
            )
        case .reject:
            message = .reject(reason: try r.string("reason", limit: limits.maxStringBytes))
        case .task:
            let step: UInt64 = try r.integer("step")
            let shard: UInt32 = try r.integer("shard")
            let shardCount: UInt32 = try r.integer("shard count")
            guard shardCount > 0, shard < shardCount else { throw .invalidField("shard \(shard) of \(shardCount)") }
            let ticket: UInt64 = try r.integer("ticket")
            let rows = try r.int32Array("rows", limit: limits.maxRows)
            guard rows.allSatisfy({ $0 >= 0 }) else { throw .invalidField("negative row index") }
            let rowsPerShard = try r.array("rows per shard", limit: limits.maxBlockShards, of: UInt32.self)
            guard !rowsPerShard.isEmpty, rowsPerShard.reduce(0, { $0 + Int($1) }) == rows.count else {
                throw .invalidField("rows per shard \(rowsPerShard) do not add up to the \(rows.count) rows")
            }
            guard WireFormat.isAlignedBlock(first: Int(shard), count: rowsPerShard.count, of: Int(shardCount)) else {
                throw .invalidField(
                    """
                    shards \(shard)..<\(Int(shard) + rowsPerShard.count) of \(shardCount) are not a whole subtree of \
                    the reduction tree
                    """
                )
            }
            let maskSeeds = try r.array("mask seeds", limit: limits.maxBlockShards, of: UInt64.self)
            guard maskSeeds.count == rowsPerShard.count else {
                throw .invalidField("\(maskSeeds.count) mask seeds for \(rowsPerShard.count) shards")
            }
            let packingSeeds = try r.array("packing masks", limit: limits.maxPackingMasks, of: UInt64.self)
            guard Set(packingSeeds).count == packingSeeds.count else {
                throw .invalidField("packing masks \(packingSeeds): one named twice")
            }
            let kind: UInt8 = try r.integer("work kind")
            let work: WireMessage.Work
            switch kind {
            case 0:
                work = .gradient
            case 1:
                let split: UInt8 = try r.integer("split")
                let masks: UInt32 = try r.integer("masks")
                let mode: UInt8 = try r.integer("ensemble mode")
                guard masks > 0 else { throw .invalidField("an ensemble of 0 masks") }
                work = .logLikelihood(split: split, masks: masks, mode: mode)
            case 2:
                let count: UInt32 = try r.integer("sample count")
                let masks: UInt32 = try r.integer("masks")
                let seed: UInt64 = try r.integer("sample seed")
                let method: UInt8 = try r.integer("sampling method")
                guard masks > 0, count > 0, Int(count) <= limits.maxRows else {
                    throw .invalidField("sampling \(count) values with \(masks) masks")
                }
                work = .sample(count: count, masks: masks, seed: seed, method: method)
            default:
                throw .invalidField("work kind \(kind) (0 gradient, 1 log-likelihood, 2 sample)")
            }
            let parameters = try r.payload("parameters", limit: limits.maxFloats)
            message = .task(
                .init(
                    step: step,
                    shard: shard,
                    shardCount: shardCount,
                    maskSeeds: maskSeeds,
                    packingSeeds: packingSeeds,
                    rows: rows,
                    work: work,
                    parameters: parameters,
                    ticket: ticket,
                    rowsPerShard: rowsPerShard
                )
            )
        case .result:
            let step: UInt64 = try r.integer("step")
            let shard: UInt32 = try r.integer("shard")
            let ticket: UInt64 = try r.integer("ticket")
            let digest = try r.bytes(16, "mask digest")
            let lossBits: UInt64 = try r.integer("loss sum")
            let loss = Double(bitPattern: lossBits)
            guard loss.isFinite else { throw .invalidField("loss sum is not finite") }
            let micros: UInt32 = try r.integer("compute time")
            let values = try r.payload("values", limit: limits.maxFloats)
            guard values != .absent else { throw .invalidField("a result without values") }
            message = .result(
                .init(
                    step: step,
                    shard: shard,
                    maskDigest: digest,
                    lossSum: loss,
                    computeMicroseconds: micros,
                    values: values,
                    ticket: ticket
                )
            )
        case .heartbeat:
            message = .heartbeat(sequence: try r.integer("sequence"))
        case .shutdown:
            let code: UInt8 = try r.integer("exit code")
            message = .shutdown(exitCode: code, reason: try r.string("reason", limit: limits.maxStringBytes))
        case .who:
            message = .who
        case .failed:
            let step: UInt64 = try r.integer("step")
            let shard: UInt32 = try r.integer("shard")
            let ticket: UInt64 = try r.integer("ticket")
            message = .failed(
                step: step,
                shard: shard,
                ticket: ticket,
                reason: try r.string("reason", limit: limits.maxStringBytes)
            )
        }
        guard r.remaining == 0 else { throw .trailingBytes(r.remaining) }
        return (runID, message)
    }
}

/// Writes little-endian fields into a buffer sized in advance.
struct WireWriter {
    let buffer: UnsafeMutableRawBufferPointer
    var position = 0
    /// Logical bytes between gaps: the frame goes into the buffer in segments of this many
    /// bytes, each after a gap of `gap` bytes left for a header (see
    /// ``MessageFragments/frames(encoding:runID:version:sequence:fragmentBytes:)``); without
    /// gaps the frame is contiguous.
    let segment: Int
    let gap: Int

    init(buffer: UnsafeMutableRawBufferPointer) {
        self.buffer = buffer
        segment = .max
        gap = 0
    }

    /// A writer whose logical byte `p` lands at `(p / segment + 1) * gap + p`.
    init(buffer: UnsafeMutableRawBufferPointer, segment: Int, gap: Int) {
        precondition(segment > 0 && gap >= 0, "WireWriter: segments hold at least one byte")
        self.buffer = buffer
        self.segment = segment
        self.gap = gap
    }

    private func physical(_ logical: Int) -> Int {
        gap == 0 ? logical : (logical / segment + 1) * gap + logical
    }

    mutating func integer<I: FixedWidthInteger>(_ value: I) {
        let size = MemoryLayout<I>.size
        if gap == 0 || position / segment == (position + size - 1) / segment {
            buffer.storeBytes(of: value.littleEndian, toByteOffset: physical(position), as: I.self)
            position += size
        } else {
            withUnsafeBytes(of: value.littleEndian) { raw($0) }
        }
    }

    mutating func bytes(_ values: [UInt8]) {
        values.withUnsafeBytes { raw($0) }
    }

    /// Copies host-order bytes; floats and integers are little-endian on every platform this runs on.
    mutating func raw(_ source: UnsafeRawBufferPointer) {
        #if _endian(big)
        #error("the wire format stores arrays little-endian; add byte swapping for big-endian hosts")
        #endif
        guard source.count > 0 else { return }
        var done = 0
        while done < source.count {
            let count = min(source.count - done, segment - position % segment)
            (buffer.baseAddress! + physical(position)).copyMemory(
                from: source.baseAddress! + done,
                byteCount: count
            )
            position += count
            done += count
        }
    }

    mutating func payload(_ p: FloatPayload) {
        switch p {
        case .absent:
            integer(UInt8(0))
            integer(UInt32(0))
        case .inline(let values):
            integer(UInt8(1))
            integer(UInt32(values.count))
            values.withUnsafeBytes { raw($0) }
        case .shared(let slot, let count):
            integer(UInt8(2))
            integer(count)
            integer(slot)
        case .sharedCompute(let slot, let count):
            integer(UInt8(3))
            integer(count)
            integer(slot)
        }
    }

    mutating func string(_ s: String) {
        let utf8 = WireFormat.stringBytes(s)
        integer(UInt16(utf8.count))
        bytes(utf8)
    }
}

/// Reads little-endian fields, failing with the name of the field that runs past the end.
struct WireReader {
    private var reader: LittleEndianReader

    init(buffer: UnsafeRawBufferPointer) {
        reader = LittleEndianReader(buffer)
    }

    var remaining: Int { reader.remaining }

    mutating func integer<I: FixedWidthInteger>(_ field: String) throws(WireError) -> I {
        guard let value = reader.integer(as: I.self) else { throw .truncated(field: field) }
        return value
    }

    mutating func bytes(_ count: Int, _ field: String) throws(WireError) -> [UInt8] {
        guard let raw = reader.take(count) else { throw .truncated(field: field) }
        return Array(raw)
    }

    mutating func string(_ field: String, limit: Int) throws(WireError) -> String {
        let count: UInt16 = try integer(field + " length")
        guard Int(count) <= limit else { throw .limitExceeded(field: field, count: Int(count), limit: limit) }
        let raw = try bytes(Int(count), field)
        guard let s = String(validating: raw, as: UTF8.self) else { throw .invalidField("\(field) is not valid UTF-8") }
        return s
    }

    /// A UInt32 count, then that many 4- or 8-byte little-endian values copied as they are.
    mutating func array<Element>(_ field: String, limit: Int, of _: Element.Type) throws(WireError) -> [Element] {
        let size = MemoryLayout<Element>.size
        precondition(size == 4 || size == 8)
        let count = Int(try integer(field + " count") as UInt32)
        guard count <= limit else { throw .limitExceeded(field: field, count: count, limit: limit) }
        guard let values = reader.array(count: count, of: Element.self) else { throw .truncated(field: field) }
        return values
    }

    mutating func int32Array(_ field: String, limit: Int) throws(WireError) -> [Int32] {
        try array(field, limit: limit, of: Int32.self)
    }

    mutating func payload(_ field: String, limit: Int) throws(WireError) -> FloatPayload {
        let mode: UInt8 = try integer(field + " mode")
        switch mode {
        case 0:
            let count: UInt32 = try integer(field + " count")
            guard count == 0 else { throw .invalidField("\(field) is absent but counts \(count) values") }
            return .absent
        case 1:
            return .inline(try floatArray(field, limit: limit))
        case 2, 3:
            let count: UInt32 = try integer(field + " count")
            guard Int(count) <= limit else { throw .limitExceeded(field: field, count: Int(count), limit: limit) }
            let slot: UInt32 = try integer(field + " slot")
            return mode == 2 ? .shared(slot: slot, count: count) : .sharedCompute(slot: slot, count: count)
        default:
            throw .invalidField("\(field) mode \(mode) (0 absent, 1 inline, 2 shared, 3 shared in compute order)")
        }
    }

    mutating func floatArray(_ field: String, limit: Int) throws(WireError) -> [Float] {
        let values = try array(field, limit: limit, of: Float.self)
        guard values.allSatisfy({ $0.isFinite }) else {
            throw .invalidField("\(field) holds a value that is not finite")
        }
        return values
    }
}
