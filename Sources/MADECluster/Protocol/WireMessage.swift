/// The messages coordinator and workers exchange, protocol version 6.
///
/// Every message is one frame: a 24-byte header followed by a type-specific payload, all
/// integers and floats little-endian. A frame up to 64 KiB travels as one ZeroMQ message; a
/// larger one as several, each carrying a piece (``MessageFragments``, new in version 6), so
/// that the bytes of a large message keep the connection's heartbeats alive.
///
///     offset  size  field
///     0       4     magic "MADW"
///     4       2     protocol version (5)
///     6       1     message type (``WireMessage/Kind``)
///     7       1     flags (0)
///     8       8     run id: the fingerprint of the run's configuration and data; 0 in `hello`
///     16      4     payload length in bytes (the rest of the frame, exactly)
///     20      4     reserved (0)
///
/// Payloads (strings are a UInt16 byte count and UTF-8; arrays a UInt32 count and values):
///
///     hello      data fingerprint (32 bytes), process id (UInt32), worker name (string),
///                host id (string), capacity (UInt32: the workers that compute behind this
///                peer, 1 for a worker, those of a relay, 0 for none now), most shards per
///                task (UInt32, at least 1)
///     welcome    heartbeat interval ms (UInt32), configuration (UInt32 count + bytes, opaque),
///                shared-memory path (string, empty for none), slot (UInt32), slot floats (UInt32)
///     reject     reason (string)
///     task       step (UInt64), shard (UInt32), shard count (UInt32), ticket (UInt64),
///                example rows (Int32 array), rows per shard (UInt32 array), mask seed of
///                each shard (UInt64 array, as long as rows per shard), packing masks (UInt64
///                array: the seeds whose union packs inline parameters and gradients; none for
///                dense values), work
///                (a kind byte and its fields, see ``WireMessage/Work``), parameters (payload)
///     result     step (UInt64), shard (UInt32), ticket (UInt64), mask digest (16 bytes),
///                loss sum (Float64), compute microseconds (UInt32), values (payload)
///     heartbeat  sequence (UInt64)
///     shutdown   exit code (UInt8), reason (string)
///     who        (empty): "I do not know you; say hello"
///     failed     step (UInt64), shard (UInt32), ticket (UInt64), reason (string): the worker
///                could not do the task
///
/// A payload is a mode byte and a UInt32 count: mode 0 (absent, count 0), 1 (inline: count
/// Float32 values follow) or 2 (shared: a UInt32 slot index follows; the count values lie in
/// that slot of a shared-memory file both processes mapped; only for a worker on the
/// coordinator's host, see ``FloatPayload``). In a gradient step, inline parameters and
/// gradients are packed by the task's packing masks (``MaskPacking``: the weights active in any
/// of them, and the biases); in shared memory they are dense, in parameter-layout order with the
/// weights outside those masks +0, so the worker computes on them where they lie. The packing
/// masks cover every mask the task's shards train: the step's one mask, or with several masks
/// per step the union of the task's own (or of the step's). A task without parameters names the
/// packing masks of those its worker received earlier in the step; one whose packing differs
/// from them carries its own parameters. In shared memory they are the step's. Mode 3 (shared,
/// compute order) is mode 2 for a step of one mask under the sparse kernel: the values lie in
/// the compute order of that mask (``BlockPartition``), masked, and a worker that took its
/// parameters so answers in the same order.
///
/// A gradient task may hold a block of consecutive shards, `shard ..< shard + n` for `n` rows
/// counts (at most ``WireFormat/Limits/maxBlockShards``, and at most what its peer's hello
/// allows): a whole aligned subtree of the step's reduction tree (`n` a power of two and `shard`
/// a multiple of it, or the tree's truncated last block). Its result is their gradients summed
/// in tree order, the bits the coordinator's own tree would have given. A relay (`made relay`)
/// is one peer standing for the workers of its host: it takes such a block, hands its shards to
/// its workers as a coordinator would, and answers once with their tree-order sum.
///
/// A ticket names one hand-out of a task. A result counts with the ticket of the task its
/// sender holds or, when it comes inline, with the ticket of an earlier hand-out of the same
/// shard to the same worker in this step while that shard has no result; a failure counts
/// only with the ticket held.
///
/// A `reject` is read in any version from 1 on (its payload, one string, never changed), so a
/// peer of another version hears why it is refused.
///
/// Decoding checks the magic, version, type, flags, reserved word, lengths, limits, UTF-8,
/// and that every float is finite, before any field is used; anything else is a ``WireError``.
public enum WireMessage: Sendable, Equatable {
    case hello(Hello)
    case welcome(Welcome)
    case reject(reason: String)
    case task(Task)
    case result(Result)
    case heartbeat(sequence: UInt64)
    case shutdown(exitCode: UInt8, reason: String)
    case who
    case failed(step: UInt64, shard: UInt32, ticket: UInt64, reason: String)

    /// The type byte of each message.
    public enum Kind: UInt8, Sendable, CaseIterable {
        case hello = 1, welcome = 2, reject = 3, task = 4, result = 5, heartbeat = 6, shutdown = 7, who = 8, failed = 9
    }

    public struct Hello: Sendable, Equatable {
        /// SHA-256 of the worker's data set (32 bytes).
        public var dataFingerprint: [UInt8]
        public var processID: UInt32
        /// A name for logs, such as `host:pid`.
        public var name: String
        /// Identifies the worker's host and boot, so the coordinator can tell a worker on its own
        /// machine (which may share memory with it); empty to decline shared memory.
        public var hostID: String
        /// The workers computing behind this peer: 1 for a worker; for a relay, the workers it
        /// has now (0: give it no task).
        public var capacity: UInt32
        /// Most shards one task to this peer may hold (at least 1).
        public var maxBlockShards: UInt32
        public init(
            dataFingerprint: [UInt8],
            processID: UInt32,
            name: String,
            hostID: String = "",
            capacity: UInt32 = 1,
            maxBlockShards: UInt32 = 8
        ) {
            self.dataFingerprint = dataFingerprint
            self.processID = processID
            self.name = name
            self.hostID = hostID
            self.capacity = capacity
            self.maxBlockShards = maxBlockShards
        }
    }

    public struct Welcome: Sendable, Equatable {
        public var heartbeatIntervalMilliseconds: UInt32
        /// The run's configuration, opaque to the protocol (the model reads it).
        public var configuration: [UInt8]
        /// Shared memory offered to a worker on the coordinator's host.
        public var sharedMemory: SharedMemoryGrant?
        public init(
            heartbeatIntervalMilliseconds: UInt32,
            configuration: [UInt8],
            sharedMemory: SharedMemoryGrant? = nil
        ) {
            self.heartbeatIntervalMilliseconds = heartbeatIntervalMilliseconds
            self.configuration = configuration
            self.sharedMemory = sharedMemory
        }
    }

    /// A file both processes map: slot 0 holds the step's parameters (written by the
    /// coordinator), slot `slot` this worker's gradients (written by the worker); each slot is
    /// `slotFloats` Float32 values.
    ///
    /// Since protocol version 7 a step of several masks may also have a parameter region per
    /// mask: `parameterSlots` are the slots besides 0 that tasks may name for parameters (at
    /// most ``WireFormat/Limits/maxParameterSlots``, none of them the worker's own).
    public struct SharedMemoryGrant: Sendable, Equatable {
        public var path: String
        public var slot: UInt32
        public var slotFloats: UInt32
        public var parameterSlots: [UInt32]
        public init(path: String, slot: UInt32, slotFloats: UInt32, parameterSlots: [UInt32] = []) {
            self.path = path
            self.slot = slot
            self.slotFloats = slotFloats
            self.parameterSlots = parameterSlots
        }
    }

    /// What a task asks for. The fields are numbers the model side interprets; the protocol
    /// only carries them.
    ///
    ///     0 gradient        (no fields) the gradient of the rows' summed loss under the mask
    ///                       seed (summed over the task's shards in tree order), packed inline
    ///                       or dense in the sender's slot
    ///     1 logLikelihood   split (UInt8), masks (UInt32), mode (UInt8): one log-likelihood per
    ///                       row of the split under an ensemble of masks, given dense parameters
    ///     2 sample          count (UInt32), masks (UInt32), seed (UInt64), method (UInt8): batch
    ///                       `shard` of a sampling run, given dense parameters
    public enum Work: Sendable, Equatable {
        case gradient
        case logLikelihood(split: UInt8, masks: UInt32, mode: UInt8)
        case sample(count: UInt32, masks: UInt32, seed: UInt64, method: UInt8)
    }

    public struct Task: Sendable, Equatable {
        public var step: UInt64
        public var shard: UInt32
        public var shardCount: UInt32
        /// The mask seed of each shard of the task, in order (as many as ``rowsPerShard``).
        public var maskSeeds: [UInt64]
        /// The mask seeds whose union packs the task's inline parameters and gradients (they
        /// include every seed of ``maskSeeds``), or masks the step's parameters in shared memory.
        /// Empty: every parameter, dense.
        public var packingSeeds: [UInt64]
        /// Rows of the data set, in order.
        public var rows: [Int32]
        /// How many of `rows` each shard of the task takes, in order: one count for one shard,
        /// `n` for a block of `n` shards starting at `shard`.
        public var rowsPerShard: [UInt32]
        public var work: Work
        /// The step's parameters: for gradients packed for its mask inline, or masked and dense
        /// in shared slot 0; dense otherwise. Absent when the worker already holds them.
        public var parameters: FloatPayload
        /// This hand-out of the task; its result must carry the same.
        public var ticket: UInt64
        public init(
            step: UInt64,
            shard: UInt32,
            shardCount: UInt32,
            maskSeeds: [UInt64],
            packingSeeds: [UInt64],
            rows: [Int32],
            work: Work = .gradient,
            parameters: FloatPayload,
            ticket: UInt64 = 0,
            rowsPerShard: [UInt32]? = nil
        ) {
            self.rowsPerShard = rowsPerShard ?? [UInt32(rows.count)]
            self.step = step
            self.shard = shard
            self.shardCount = shardCount
            self.ticket = ticket
            self.maskSeeds = maskSeeds
            self.packingSeeds = packingSeeds
            self.rows = rows
            self.work = work
            self.parameters = parameters
        }

        /// A task whose shards all train `maskSeed`, packed by it.
        public init(
            step: UInt64,
            shard: UInt32,
            shardCount: UInt32,
            maskSeed: UInt64,
            rows: [Int32],
            work: Work = .gradient,
            parameters: FloatPayload,
            ticket: UInt64 = 0,
            rowsPerShard: [UInt32]? = nil
        ) {
            let perShard = rowsPerShard ?? [UInt32(rows.count)]
            self.init(
                step: step,
                shard: shard,
                shardCount: shardCount,
                maskSeeds: Array(repeating: maskSeed, count: perShard.count),
                packingSeeds: [maskSeed],
                rows: rows,
                work: work,
                parameters: parameters,
                ticket: ticket,
                rowsPerShard: perShard
            )
        }
    }

    public struct Result: Sendable, Equatable {
        public var step: UInt64
        public var shard: UInt32
        /// Digest of the masks the worker used (16 bytes).
        public var maskDigest: [UInt8]
        /// Sum of the per-example losses of the task's shards.
        public var lossSum: Double
        public var computeMicroseconds: UInt32
        /// The task's answer: its gradient (packed inline or dense in the sender's slot), its
        /// rows' log-likelihoods, or its samples.
        public var values: FloatPayload
        /// The ticket of the task this answers.
        public var ticket: UInt64
        public init(
            step: UInt64,
            shard: UInt32,
            maskDigest: [UInt8],
            lossSum: Double,
            computeMicroseconds: UInt32,
            values: FloatPayload,
            ticket: UInt64
        ) {
            self.step = step
            self.shard = shard
            self.ticket = ticket
            self.maskDigest = maskDigest
            self.lossSum = lossSum
            self.computeMicroseconds = computeMicroseconds
            self.values = values
        }
    }

    public var kind: Kind {
        switch self {
        case .hello: return .hello
        case .welcome: return .welcome
        case .reject: return .reject
        case .task: return .task
        case .result: return .result
        case .heartbeat: return .heartbeat
        case .shutdown: return .shutdown
        case .who: return .who
        case .failed: return .failed
        }
    }
}

/// Float32 values in a message: absent, carried inline, or left in shared memory.
public enum FloatPayload: Sendable, Equatable {
    case absent
    case inline([Float])
    /// `count` values in shared-memory slot `slot` (0 for parameters, the worker's own for
    /// results), dense in parameter-layout order.
    case shared(slot: UInt32, count: UInt32)
    /// `count` values in shared-memory slot `slot`, dense in the compute order of the step's one
    /// mask under the sparse kernel (``BlockPartition/gatherMasked(_:into:layout:threads:)``):
    /// the workers read the parameters and write their gradients (masked) where they lie,
    /// without moving a weight.
    case sharedCompute(slot: UInt32, count: UInt32)

    /// Number of values.
    public var count: Int {
        switch self {
        case .absent: return 0
        case .inline(let values): return values.count
        case .shared(_, let count), .sharedCompute(_, let count): return Int(count)
        }
    }

    /// The shared-memory slot holding the values, in either order.
    public var sharedSlot: UInt32? {
        switch self {
        case .shared(let slot, _), .sharedCompute(let slot, _): return slot
        case .absent, .inline: return nil
        }
    }

    /// The values when carried inline.
    public var inlineValues: [Float]? {
        if case .inline(let v) = self { return v }
        return nil
    }
}

/// Why a frame was refused. Each case names the field at fault.
public enum WireError: Error, Sendable, Equatable, CustomStringConvertible {
    case tooShort(Int)
    case badMagic
    case unsupportedVersion(UInt16)
    case unknownType(UInt8)
    case nonzeroFlags(UInt8)
    case nonzeroReserved
    case lengthMismatch(declared: UInt32, actual: Int)
    case truncated(field: String)
    case trailingBytes(Int)
    case limitExceeded(field: String, count: Int, limit: Int)
    case invalidField(String)

    public var description: String {
        switch self {
        case .tooShort(let n): return "frame of \(n) bytes is shorter than the 24-byte header"
        case .badMagic: return "bad magic (not a MADE wire message)"
        case .unsupportedVersion(let v): return "protocol version \(v) (this program speaks \(WireFormat.version))"
        case .unknownType(let t): return "unknown message type \(t)"
        case .nonzeroFlags(let f): return "flags \(f) set (none are defined)"
        case .nonzeroReserved: return "reserved header word is not zero"
        case .lengthMismatch(let d, let a): return "header declares a \(d)-byte payload, frame holds \(a)"
        case .truncated(let field): return "payload ends inside \(field)"
        case .trailingBytes(let n): return "\(n) unexpected bytes after the payload"
        case .limitExceeded(let field, let count, let limit):
            return "\(field) holds \(count) items, more than the limit \(limit)"
        case .invalidField(let what): return what
        }
    }
}
