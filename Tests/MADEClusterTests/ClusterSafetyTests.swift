import Foundation
import Logging
import MADE
import Testing

@testable import MADECluster

#if canImport(Glibc)
import Glibc
#endif

/// What a hostile or broken peer, or a damaged shared-memory file, can cost: a refusal or a
/// counted rejection, never a write to a file that is not the run's, a trap, or unbounded memory.
@Suite("Cluster safety")
struct ClusterSafetyTests {
    static func folder(_ name: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(
            "made-cluster-safety-\(getpid())-\(name)"
        ).path
        try? FileManager.default.removeItem(atPath: path)
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func bytes(_ path: String) -> [UInt8]? {
        (try? Data(contentsOf: URL(fileURLWithPath: path))).map(Array.init)
    }

    @Test(
        """
        a worker maps only a slot file of this user in /dev/shm: other paths, names, links and foreign files are \
        refused untouched
        """
    )
    func slotFileProof() throws {
        let folder = Self.folder("proof")
        let victim = folder + "/victim.bin"
        let original = [UInt8](repeating: 0xAB, count: 4096)
        try Data(original).write(to: URL(fileURLWithPath: victim))
        let tag = "\(getpid())\(UInt16.random(in: 1000...9999))"
        let link = "/dev/shm/made-\(tag)-1.slots"
        let hardLinked = "/dev/shm/made-\(tag)-2.slots"
        let plain = "/dev/shm/made-test-\(tag).bin"
        defer { for f in [link, hardLinked, plain] { unlink(f) } }
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: victim)
        try Data(original).write(to: URL(fileURLWithPath: plain))
        #expect(Glibc.link(plain, hardLinked) == 0)
        for path in [
            victim, "/dev/shm/victim.bin", "/dev/shm/../\(victim)", "/dev/shm/x/made-1-2.slots", link, hardLinked,
            plain,
            "/dev/shm/made-1-2.slots.bak", "/dev/shm/made--2.slots",
        ] {
            let error = #expect(throws: ClusterError.self, "\(path)") {
                _ = try SharedSlots.open(.init(path: path, slot: 1, slotFloats: 16))
            }
            #expect(
                error?.message.contains("refusing") == true || error?.message.contains("cannot open") == true,
                "\(String(describing: error))"
            )
            #expect(error?.code == .security || error?.code == .sharedMemory, "\(String(describing: error))")
        }
        #expect(Self.bytes(victim) == original)
        #expect(Self.bytes(plain) == original)
        if getuid() == 0 {
            // A slot file of another user is refused too.
            let foreign = "/dev/shm/made-\(tag)-3.slots"
            defer { unlink(foreign) }
            try Data(original).write(to: URL(fileURLWithPath: foreign))
            #expect(chown(foreign, 65534, 65534) == 0)
            let error = #expect(throws: ClusterError.self) {
                _ = try SharedSlots.open(.init(path: foreign, slot: 1, slotFloats: 16))
            }
            #expect(error?.message.contains("owned by uid 65534") == true)
            #expect(Self.bytes(foreign) == original)
        }
        // The coordinator's own file is accepted.
        let slots = try SharedSlots.create(slotFloats: 16, workerSlots: 2)
        let mapped = try SharedSlots.open(.init(path: slots.path, slot: 2, slotFloats: 16))
        #expect(mapped.slotCount == 3 && SharedSlots.isSlotFileName((slots.path as NSString).lastPathComponent))
        // A slot past the file's end, and a file that is gone, are unusable shared memory, not a security refusal.
        let beyond = #expect(throws: ClusterError.self) {
            _ = try SharedSlots.open(.init(path: slots.path, slot: 3, slotFloats: 16))
        }
        #expect(beyond?.code == .sharedMemory && beyond?.message.contains("too few for slot 3") == true)
        let gone = "/dev/shm/made-\(tag)-4.slots"
        let missing = #expect(throws: ClusterError.self) {
            _ = try SharedSlots.open(.init(path: gone, slot: 1, slotFloats: 16))
        }
        #expect(missing?.code == .sharedMemory && missing?.message.contains("cannot open") == true)
        // A folder that cannot hold a slot file.
        let noFolder = #expect(throws: ClusterError.self) {
            _ = try SharedSlots.create(folder: folder + "/absent", slotFloats: 16, workerSlots: 1)
        }
        #expect(noFolder?.code == .sharedMemory)
    }

    @Test("a slot file shrunk by truncate is noticed by both sides before any access; nothing is read or written")
    func shrunkSlotFile() throws {
        let slots = try SharedSlots.create(slotFloats: 1024, workerSlots: 3)
        #expect(slots.reserve(2))
        let worker = try SharedSlots.open(.init(path: slots.path, slot: 2, slotFloats: 1024))
        #expect(slots.holds(0) && slots.holds(3) && worker.holds(2))
        #expect(truncate(slots.path, 1024 * 4 * 2) == 0)
        #expect(slots.holds(1) && !slots.holds(2) && !worker.holds(2))
        #expect(truncate(slots.path, 0) == 0)
        #expect(!slots.holds(0) && !worker.holds(0))
        #expect(!slots.holds(-1) && !slots.holds(99))
    }

    @Test("a slot file cut under its mappings: touching them reads zero pages and flags them, not a SIGBUS")
    func accessAfterTruncate() throws {
        let slots = try SharedSlots.create(slotFloats: 1024, workerSlots: 2)
        #expect(slots.reserve(1))
        let worker = try SharedSlots.open(.init(path: slots.path, slot: 1, slotFloats: 1024))
        let other = try SharedSlots.create(slotFloats: 1024, workerSlots: 1)
        #expect(other.reserve(1))
        worker.withSlot(1, count: 1024) { $0.update(repeating: 2.5) }
        #expect(slots.read(1, count: 1024) == [Float](repeating: 2.5, count: 1024))
        #expect(!slots.faulted && !worker.faulted && slots.holds(1) && worker.holds(1))
        #expect(truncate(slots.path, 0) == 0)
        // As in a step: the worker writes its slot, then the coordinator reads it, both past the file's end now.
        worker.withSlot(1, count: 1024) { $0.update(repeating: 7) }
        #expect(worker.faulted && !worker.holds(0) && !worker.holds(1))
        let seen = slots.withSlot(1, count: 1024) { Array($0) }
        #expect(seen == [Float](repeating: 0, count: 1024))
        #expect(slots.faulted && !slots.holds(0) && !slots.holds(1))
        #expect(slots.read(1, count: 1024) == nil)
        // Every later access goes to the zero pages, without another fault.
        slots.withSlot(0, count: 4) { $0.update(repeating: 1) }
        #expect(slots.withSlot(0, count: 4) { Array($0) } == [1, 1, 1, 1])
        // The file grown back to its size is not trusted again, nor grown by a reservation.
        #expect(truncate(slots.path, 3 * 1024 * 4) == 0)
        #expect(!slots.holds(0) && !worker.holds(1) && !slots.reserve(2))
        // Another mapping is untouched by this one's fault.
        other.withSlot(1, count: 4) { $0.update(repeating: 3) }
        #expect(!other.faulted && other.holds(1) && other.read(1, count: 4) == [3, 3, 3, 3])
    }

    @Test("reserving a slot never grows a file cut short: the slot is refused and the file keeps its length")
    func reserveKeepsSize() throws {
        let slots = try SharedSlots.create(slotFloats: 1024, workerSlots: 3)
        #expect(truncate(slots.path, 1024 * 4 * 2) == 0)
        #expect(slots.reserve(1) && !slots.reserve(3))
        var info = stat()
        #expect(stat(slots.path, &info) == 0 && info.st_size == 1024 * 4 * 2)
    }

    @Test("the host secret is this user's, 0600, the same in every call, and refused when the file is not private")
    func hostSecret() throws {
        let folder = Self.folder("secret")
        let first = try #require(SharedSlots.hostSecret(folder: folder))
        #expect(first.count == 32 && first.allSatisfy(\.isHexDigit))
        #expect(SharedSlots.hostSecret(folder: folder) == first)
        var info = stat()
        #expect(stat(folder + "/made-host-\(getuid()).secret", &info) == 0 && info.st_mode & 0o777 == 0o600)
        // Readable by others, or a link: no secret, so no shared memory.
        chmod(folder + "/made-host-\(getuid()).secret", 0o644)
        #expect(SharedSlots.hostSecret(folder: folder) == nil)
        let linked = Self.folder("secret-link")
        try FileManager.default.createSymbolicLink(
            atPath: linked + "/made-host-\(getuid()).secret",
            withDestinationPath: folder + "/x"
        )
        #expect(SharedSlots.hostSecret(folder: linked) == nil)
        // The id a worker presents proves it knows the secret of /dev/shm without showing it,
        // and differs from one endpoint to another.
        let id = SharedSlots.hostID(for: "tcp://127.0.0.1:4000")
        if let secret = SharedSlots.hostSecret(), !id.isEmpty {
            #expect(!id.contains(secret))
            #expect(id == SharedSlots.hostID(for: "tcp://localhost:4000"))
            #expect(id != SharedSlots.hostID(for: "tcp://127.0.0.1:4001"))
        }
    }

    @Test(
        "endpoints: ports beyond 65535 and unknown transports are refused, not wrapped",
        arguments: [
            ("tcp://127.0.0.1:99999", false), ("tcp://127.0.0.1:65536", false), ("tcp://127.0.0.1:-1", false),
            ("tcp://127.0.0.1", false),
            ("tcp://127.0.0.1:", false), ("udp://127.0.0.1:5", false), ("tcp://[::1]", false), ("ipc://", false),
            ("tcp://127.0.0.1:65535", true), ("tcp://127.0.0.1:0", true), ("tcp://*:29500", true),
            ("tcp://[::1]:5", true),
            ("ipc:///tmp/made.ipc", true), ("tcp://eth0;10.0.0.1:5555", true),
        ]
    )
    func endpoints(endpoint: String, valid: Bool) {
        if valid {
            #expect(throws: Never.self) { try Endpoint.validate(endpoint) }
        } else {
            #expect(throws: ClusterError.self) { try Endpoint.validate(endpoint) }
        }
    }

    static func coordinator() throws -> ClusterCoordinator {
        let configuration = TrainingConfiguration(
            model: ModelConfiguration(inputCount: 8, hiddenSizes: [8]),
            batchSize: 4
        )
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try ClusterCoordinator(
            configuration: configuration,
            dataFingerprint: [UInt8](repeating: 7, count: 32),
            options: .init(bind: "tcp://127.0.0.1:0"),
            logger: logger
        )
    }

    static func welcome(_ socket: ZMQSocket) throws -> WireMessage.Welcome? {
        try socket.set(.receiveTimeout(milliseconds: 5000))
        guard let frames = try socket.receive(), let frame = frames.first,
            case .welcome(let w) = try WireFormat.decode(frame).1
        else { return nil }
        return w
    }

    @Test("a peer presenting a host id anyone can derive gets no shared-memory slot; one with the user's secret does")
    func noSlotWithoutSecret() throws {
        let coordinator = try Self.coordinator()
        let context = try ZMQContext()
        defer { context.shutdown() }
        let real = SharedSlots.hostID(for: coordinator.endpoint)
        try #require(!real.isEmpty, "no shared memory on this machine")
        let derivable = String(real[..<real.lastIndex(of: "/")!])
        var welcomes: [WireMessage.Welcome] = []
        let elsewhere = SharedSlots.hostID(for: "tcp://127.0.0.1:1")  // a proof given to another coordinator
        for (i, id) in [derivable, elsewhere, real].enumerated() {
            let dealer = try ZMQSocket(context: context, kind: .dealer)
            defer { dealer.close() }
            try dealer.set(.routingID(Array("peer-\(i)".utf8)), .linger(milliseconds: 0))
            try dealer.connect(coordinator.endpoint)
            try dealer.send(bytes: [
                WireFormat.encode(
                    .hello(
                        .init(
                            dataFingerprint: [UInt8](repeating: 7, count: 32),
                            processID: 1,
                            name: "peer-\(i)",
                            hostID: id
                        )
                    ),
                    runID: 0
                )
            ])
            #expect(try coordinator.waitForWorkers(i + 1, timeout: 5000))
            welcomes.append(try #require(try Self.welcome(dealer)))
        }
        #expect(welcomes[0].sharedMemory == nil)
        #expect(welcomes[1].sharedMemory == nil)
        #expect(welcomes[2].sharedMemory?.path.hasPrefix("/dev/shm/made-") == true)
    }

    @Test("the coordinator's frame limit comes from the run: a frame beyond it from an unregistered peer is never held")
    func frameLimit() throws {
        let coordinator = try Self.coordinator()
        let parameters = ParameterLayout(coordinator.configuration.model).count
        #expect(coordinator.largestResult == max(parameters, 1000, 64 * 8))
        let limit = ClusterCoordinator.frameBytes(values: coordinator.largestResult)
        #expect(limit < 1 << 20)
        let context = try ZMQContext()
        defer { context.shutdown() }
        let dealer = try ZMQSocket(context: context, kind: .dealer)
        defer { dealer.close() }
        try dealer.set(.linger(milliseconds: 0))
        try dealer.connect(coordinator.endpoint)
        try dealer.send(bytes: [[UInt8](repeating: 1, count: 8 << 20)])
        #expect(try !coordinator.waitForWorkers(1, timeout: 1000))
        #expect(coordinator.bytesReceived < limit)
        // A frame within the limit still arrives (and is refused as malformed, counted).
        let small = try ZMQSocket(context: context, kind: .dealer)
        defer { small.close() }
        try small.connect(coordinator.endpoint)
        try small.send(bytes: [[UInt8](repeating: 1, count: 1000)])
        _ = try coordinator.waitForWorkers(1, timeout: 1000)
        #expect(coordinator.bytesReceived == 1000)
        #expect(coordinator.counters.malformed == 1)
    }
}
