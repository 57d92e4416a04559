import MADE
import Testing

@testable import MADECluster

@Suite("Wire format")
struct WireFormatTests {
    static let samples: [WireMessage] = [
        .hello(
            .init(
                dataFingerprint: (0..<32).map { UInt8($0) },
                processID: 4242,
                name: "node-1:4242 é",
                hostID: "host/boot/net"
            )
        ),
        .welcome(.init(heartbeatIntervalMilliseconds: 1000, configuration: Array("{\"a\":1}".utf8))),
        .welcome(
            .init(
                heartbeatIntervalMilliseconds: 250,
                configuration: [],
                sharedMemory: .init(path: "/dev/shm/x", slot: 3, slotFloats: 1000)
            )
        ),
        .reject(reason: "data mismatch"),
        .task(
            .init(
                step: 1 << 40,
                shard: 3,
                shardCount: 4,
                maskSeed: 7,
                rows: [0, 5, 49_999],
                parameters: .inline([1, -2.5, 0, .leastNonzeroMagnitude]),
                ticket: 0x0123_4567_89AB_CDEF
            )
        ),
        .task(
            .init(
                step: 3,
                shard: 1,
                shardCount: 2,
                maskSeed: 1,
                rows: [7],
                parameters: .shared(slot: 0, count: 392_000)
            )
        ),
        .task(
            .init(
                step: 4,
                shard: 0,
                shardCount: 2,
                maskSeed: 1,
                rows: [7, 8],
                parameters: .sharedCompute(slot: 0, count: 785_284)
            )
        ),
        .task(
            .init(
                step: 1 << 62,
                shard: 0,
                shardCount: 3,
                maskSeed: 0,
                rows: [0, 1, 2],
                work: .logLikelihood(split: 2, masks: 32, mode: 0),
                parameters: .inline([0.5])
            )
        ),
        .task(
            .init(
                step: 7,
                shard: 2,
                shardCount: 3,
                maskSeed: 0,
                rows: [],
                work: .sample(count: 64, masks: 4, seed: 99, method: 1),
                parameters: .absent
            )
        ),
        .task(.init(step: 2, shard: 0, shardCount: 1, maskSeed: 0, rows: [], parameters: .absent)),
        .task(
            .init(
                step: 5,
                shard: 4,
                shardCount: 7,
                maskSeed: 2,
                rows: [9, 8, 7, 6, 5],
                parameters: .absent,
                ticket: 3,
                rowsPerShard: [2, 2, 1]
            )
        ),
        .task(
            .init(
                step: 6,
                shard: 4,
                shardCount: 8,
                maskSeeds: [1, 2, 1, 2],
                packingSeeds: [1, 2, 3, 0],
                rows: [9, 8, 7, 6, 5],
                parameters: .inline([0.5, 1]),
                ticket: 4,
                rowsPerShard: [2, 1, 1, 1]
            )
        ),
        .result(
            .init(
                step: 9,
                shard: 1,
                maskDigest: Array(repeating: 0xAB, count: 16),
                lossSum: 1234.5678,
                computeMicroseconds: 777,
                values: .inline([0.25, -0.0, 3e-38]),
                ticket: .max
            )
        ),
        .result(
            .init(
                step: 9,
                shard: 0,
                maskDigest: Array(repeating: 1, count: 16),
                lossSum: 1,
                computeMicroseconds: 1,
                values: .shared(slot: 3, count: 12),
                ticket: 2
            )
        ),
        .result(
            .init(
                step: 9,
                shard: 1,
                maskDigest: Array(repeating: 2, count: 16),
                lossSum: 2,
                computeMicroseconds: 1,
                values: .sharedCompute(slot: 2, count: 12),
                ticket: 3
            )
        ),
        .heartbeat(sequence: .max),
        .shutdown(exitCode: 0, reason: "done"),
        .who,
        .failed(step: 12, shard: 2, ticket: 1 << 50, reason: "out of memory"),
        .hello(
            .init(
                dataFingerprint: Array(repeating: 9, count: 32),
                processID: 1,
                name: "relay",
                capacity: 16,
                maxBlockShards: 1024
            )
        ),
        .hello(
            .init(
                dataFingerprint: Array(repeating: 9, count: 32),
                processID: 1,
                name: "relay without workers",
                capacity: 0,
                maxBlockShards: 1
            )
        ),
        // Last: the fuzz test below takes samples by index.
        .welcome(
            .init(
                heartbeatIntervalMilliseconds: 250,
                configuration: [],
                sharedMemory: .init(path: "/dev/shm/x", slot: 1, slotFloats: 1000, parameterSlots: [4, 5, 9])
            )
        ),
    ]

    @Test("every message round-trips", arguments: samples)
    func roundTrip(message: WireMessage) throws {
        let frame = WireFormat.encode(message, runID: 0xDEAD_BEEF)
        #expect(frame.count == WireFormat.encodedSize(message))
        let (runID, decoded) = try WireFormat.decode(frame)
        #expect(runID == 0xDEAD_BEEF)
        #expect(decoded == message)
        let owned = WireFormat.encodeOwned(message, runID: 0xDEAD_BEEF)
        defer { owned.deallocate() }
        #expect(Array(owned) == frame)
    }

    @Test("strings longer than the limit are cut at a character boundary and still decode")
    func longStrings() throws {
        let name = String(repeating: "é", count: 10_000)
        let frame = WireFormat.encode(
            .hello(.init(dataFingerprint: [UInt8](repeating: 0, count: 32), processID: 1, name: name)),
            runID: 0
        )
        guard case .hello(let hello) = try WireFormat.decode(frame).message else {
            Issue.record("not a hello")
            return
        }
        #expect(hello.name.utf8.count <= WireFormat.Limits().maxStringBytes)
        #expect(hello.name.allSatisfy { $0 == "é" } && !hello.name.isEmpty)
    }

    @Test("a task's shards are a whole subtree of the reduction tree, and its row counts add up")
    func blocks() {
        // (first, count, total): aligned powers of two, and the truncated last block.
        for (first, count, total) in [
            (0, 1, 1), (3, 1, 4), (0, 4, 4), (2, 2, 4), (4, 3, 7), (8, 3, 11), (4, 2, 6), (0, 8, 100), (96, 4, 100),
        ] {
            #expect(WireFormat.isAlignedBlock(first: first, count: count, of: total), "\(first) \(count) \(total)")
        }
        for (first, count, total) in [
            (1, 2, 4), (2, 3, 7), (0, 3, 4), (4, 3, 8), (2, 2, 3), (0, 0, 4), (6, 4, 8), (-1, 1, 4),
        ] {
            #expect(!WireFormat.isAlignedBlock(first: first, count: count, of: total), "\(first) \(count) \(total)")
        }
        func refused(_ task: WireMessage.Task) -> Bool {
            (try? WireFormat.decode(WireFormat.encode(.task(task), runID: 1))) == nil
        }
        #expect(
            refused(
                .init(
                    step: 1,
                    shard: 1,
                    shardCount: 4,
                    maskSeed: 0,
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: [1, 1]
                )
            )
        )
        #expect(
            refused(
                .init(
                    step: 1,
                    shard: 0,
                    shardCount: 4,
                    maskSeed: 0,
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: [1, 2]
                )
            )
        )
        #expect(
            refused(
                .init(
                    step: 1,
                    shard: 0,
                    shardCount: 4,
                    maskSeed: 0,
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: []
                )
            )
        )
        #expect(
            !refused(
                .init(
                    step: 1,
                    shard: 2,
                    shardCount: 4,
                    maskSeed: 0,
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: [1, 1]
                )
            )
        )
        // One mask seed per shard, and packing masks named once each.
        #expect(
            refused(
                .init(
                    step: 1,
                    shard: 0,
                    shardCount: 4,
                    maskSeeds: [0],
                    packingSeeds: [0],
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: [1, 1]
                )
            )
        )
        #expect(
            refused(
                .init(
                    step: 1,
                    shard: 0,
                    shardCount: 4,
                    maskSeeds: [0, 1, 2],
                    packingSeeds: [0, 1, 2],
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: [1, 1]
                )
            )
        )
        #expect(
            !refused(
                .init(
                    step: 1,
                    shard: 0,
                    shardCount: 4,
                    maskSeeds: [0, 1],
                    packingSeeds: [],
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: [1, 1]
                )
            )
        )
        #expect(
            refused(
                .init(
                    step: 1,
                    shard: 0,
                    shardCount: 4,
                    maskSeeds: [0, 1],
                    packingSeeds: [0, 1, 0],
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: [1, 1]
                )
            )
        )
        #expect(
            refused(
                .init(
                    step: 1,
                    shard: 0,
                    shardCount: 4,
                    maskSeeds: [0, 1],
                    packingSeeds: Array(0..<65),
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: [1, 1]
                )
            )
        )
        #expect(
            !refused(
                .init(
                    step: 1,
                    shard: 0,
                    shardCount: 4,
                    maskSeeds: [0, 1],
                    packingSeeds: [1, 0],
                    rows: [1, 2],
                    parameters: .absent,
                    rowsPerShard: [1, 1]
                )
            )
        )
    }

    @Test("a hello's capacity and block limit are bounded: no task of 0 shards, no more workers than a run holds")
    func helloBounds() {
        func decoded(capacity: UInt32, limit: UInt32) -> WireError? {
            let frame = WireFormat.encode(
                .hello(
                    .init(
                        dataFingerprint: Array(repeating: 0, count: 32),
                        processID: 1,
                        name: "r",
                        capacity: capacity,
                        maxBlockShards: limit
                    )
                ),
                runID: 0
            )
            do {
                _ = try WireFormat.decode(frame)
                return nil
            } catch { return error }
        }
        #expect(decoded(capacity: 3, limit: 1) == nil)
        #expect(decoded(capacity: 3, limit: 0) == .invalidField("a peer that takes tasks of 0 shards"))
        #expect(decoded(capacity: 1 << 16, limit: 8) == nil)
        #expect(
            decoded(capacity: (1 << 16) + 1, limit: 8)
                == .limitExceeded(field: "capacity", count: (1 << 16) + 1, limit: 1 << 16)
        )
    }

    @Test("the header is laid out as documented")
    func headerLayout() {
        let frame = WireFormat.encode(.heartbeat(sequence: 1), runID: 0x0102_0304_0506_0708)
        #expect(Array(frame[0..<4]) == Array("MADW".utf8))
        #expect(frame[4] == 7 && frame[5] == 0)  // version 7, little-endian
        #expect(frame[6] == WireMessage.Kind.heartbeat.rawValue)
        #expect(frame[7] == 0)
        #expect(Array(frame[8..<16]) == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(Array(frame[16..<20]) == [8, 0, 0, 0])
        #expect(Array(frame[20..<24]) == [0, 0, 0, 0])
        #expect(frame.count == 32)
    }

    @Test("a welcome's parameter slots are bounded, distinct, and never slot 0 or the worker's own")
    func parameterSlots() {
        func decoded(_ slots: [UInt32], slot: UInt32 = 2) -> WireError? {
            let welcome = WireMessage.welcome(
                .init(
                    heartbeatIntervalMilliseconds: 100,
                    configuration: [],
                    sharedMemory: .init(path: "/dev/shm/x", slot: slot, slotFloats: 10, parameterSlots: slots)
                )
            )
            do {
                _ = try WireFormat.decode(WireFormat.encode(welcome, runID: 1))
                return nil
            } catch {
                return error
            }
        }
        #expect(decoded([3, 4, 5, 6, 7, 8, 9]) == nil)
        #expect(decoded(Array(3...10)) == .limitExceeded(field: "parameter slots", count: 8, limit: 7))
        for bad: [UInt32] in [[0], [2], [3, 3]] {
            #expect(decoded(bad) == .invalidField("parameter slots \(bad) beside slot 0 for the worker of slot 2"))
        }
    }

    @Test("each kind of damage is refused with its reason")
    func refusals() {
        let good = WireFormat.encode(.heartbeat(sequence: 5), runID: 1)
        func expectError(_ bytes: [UInt8], _ check: (WireError) -> Bool) {
            do {
                _ = try WireFormat.decode(bytes)
                Issue.record("accepted a damaged frame")
            } catch {
                #expect(check(error), "unexpected error \(error)")
            }
        }
        expectError(Array(good.prefix(10))) { if case .tooShort = $0 { true } else { false } }
        var b = good
        b[0] = 0x4E
        expectError(b) { $0 == .badMagic }
        b = good
        b[4] = 1
        expectError(b) { $0 == .unsupportedVersion(1) }
        b = good
        b[6] = 99
        expectError(b) { $0 == .unknownType(99) }
        b = good
        b[7] = 1
        expectError(b) { $0 == .nonzeroFlags(1) }
        b = good
        b[21] = 1
        expectError(b) { $0 == .nonzeroReserved }
        expectError(good + [0]) { if case .lengthMismatch = $0 { true } else { false } }
        b = good
        b[16] = 4
        b.removeLast(4)
        expectError(b) { if case .truncated = $0 { true } else { false } }
        b = good
        b[16] = 12
        b += [0, 0, 0, 0]
        expectError(b) { $0 == .trailingBytes(4) }
        // A NaN in a gradient.
        let nan = WireFormat.encode(
            .result(
                .init(
                    step: 1,
                    shard: 0,
                    maskDigest: Array(repeating: 0, count: 16),
                    lossSum: 1,
                    computeMicroseconds: 0,
                    values: .inline([.nan]),
                    ticket: 1
                )
            ),
            runID: 1
        )
        expectError(nan) { if case .invalidField = $0 { true } else { false } }
        // A shard index beyond the shard count.
        let badShard = WireFormat.encode(
            .task(.init(step: 1, shard: 4, shardCount: 4, maskSeed: 0, rows: [], parameters: .absent)),
            runID: 1
        )
        expectError(badShard) { if case .invalidField = $0 { true } else { false } }
        // A count far beyond the limit, with nothing behind it.
        var huge = WireFormat.encode(
            .task(.init(step: 1, shard: 0, shardCount: 1, maskSeed: 0, rows: [], parameters: .absent)),
            runID: 1
        )
        // The row count, after step, shard, shard count and ticket.
        huge.replaceSubrange(48..<52, with: [0xFF, 0xFF, 0xFF, 0x7F])
        expectError(huge) { if case .limitExceeded = $0 { true } else { false } }
        // Invalid UTF-8 in a string.
        var text = WireFormat.encode(.reject(reason: "ab"), runID: 1)
        text[26] = 0xFF
        expectError(text) { if case .invalidField = $0 { true } else { false } }
    }

    /// Random, truncated, bit-flipped, oversized and wrong-version frames: the decoder answers
    /// every one with a message or a `WireError`, and never crashes or allocates unboundedly.
    @Test("decoder fuzz never crashes")
    func fuzz() {
        var rng = RandomStream(seed: 99, domain: .sampling)
        let seeds = Self.samples.map { WireFormat.encode($0, runID: 3) }
        var decoded = 0
        var refused = 0
        for i in 0..<60_000 {
            var frame: [UInt8]
            switch i % 6 {
            case 0:  // random bytes
                frame = (0..<Int(rng.uniform(below: 200))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            case 1:  // truncated
                let s = seeds[Int(rng.uniform(below: UInt64(seeds.count)))]
                frame = Array(s.prefix(Int(rng.uniform(below: UInt64(s.count + 1)))))
            case 2:  // bit flips
                frame = seeds[Int(rng.uniform(below: UInt64(seeds.count)))]
                for _ in 0..<(1 + Int(rng.uniform(below: 4))) {
                    let k = Int(rng.uniform(below: UInt64(frame.count)))
                    frame[k] ^= UInt8(1 << rng.uniform(below: 8))
                }
            case 3:  // wrong version
                frame = seeds[Int(rng.uniform(below: UInt64(seeds.count)))]
                frame[4] = UInt8(truncatingIfNeeded: rng.next() | 2)
            case 4:  // valid header, random payload of the declared length
                frame = Array(seeds[Int(rng.uniform(below: UInt64(seeds.count)))].prefix(24))
                let n = Int(rng.uniform(below: 300))
                frame.replaceSubrange(16..<20, with: withUnsafeBytes(of: UInt32(n).littleEndian, Array.init))
                frame += (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            default:  // oversized counts in otherwise valid frames
                frame = seeds[4]
                let at = 24 + 8 + 4 + 4 + 8 + 8  // the row count, after step, shard, shard count, ticket and mask seed
                frame.replaceSubrange(
                    at..<(at + 4),
                    with: withUnsafeBytes(of: UInt32(truncatingIfNeeded: rng.next()).littleEndian, Array.init)
                )
            }
            do {
                let (_, message) = try WireFormat.decode(frame)
                // Whatever decodes must encode back to the same bytes (a reject in the version it came in).
                let version = UInt16(frame[4]) | UInt16(frame[5]) << 8
                #expect(
                    WireFormat.encode(message, runID: try WireFormat.decode(frame).runID, version: version) == frame
                )
                decoded += 1
            } catch {
                refused += 1
            }
        }
        #expect(refused > 40_000)
        #expect(decoded > 0)
    }
}
