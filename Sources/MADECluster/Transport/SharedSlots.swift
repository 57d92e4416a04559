import CKernels
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A file of Float32 slots mapped by the coordinator and the workers on its host, so that the
/// bulk of a step (parameters out, gradients back) neither crosses a socket nor is copied.
///
/// Slot 0 holds the step's masked parameters, written by the coordinator before it sends the
/// step's tasks; workers compute on them in place. Slot `k >= 1` belongs to one worker, which
/// writes its dense gradient there before it sends its result. The messages that say "the
/// values are in the slot" go over ZeroMQ as usual and order the accesses: slot 0 changes only
/// once every shard of the step has its result (a worker still busy with a shard taken back
/// from it may then read changed values, but its result is late and dropped), and the
/// coordinator sums a worker's slot where it lies, or copies it out before giving that worker
/// another task. Slots are never handed to a second worker.
///
/// The file lives in `/dev/shm` (memory, not disk), is readable by its owner only, and is
/// removed when the coordinator's instance goes away.
public final class SharedSlots {
    public let path: String
    public let slotFloats: Int
    /// Slots, slot 0 included.
    public let slotCount: Int
    private let base: UnsafeMutableRawPointer
    private let byteCount: Int
    private let owner: Bool
    /// The open file, kept by the owner to reserve slots.
    private let descriptor: Int32

    private init(path: String, slotFloats: Int, slotCount: Int, base: UnsafeMutableRawPointer, byteCount: Int, owner: Bool, descriptor: Int32) {
        self.path = path
        self.slotFloats = slotFloats
        self.slotCount = slotCount
        self.base = base
        self.byteCount = byteCount
        self.owner = owner
        self.descriptor = descriptor
    }

    deinit {
        munmap(base, byteCount)
        if descriptor >= 0 { close(descriptor) }
        if owner { unlink(path) }
    }

    /// Allocates the memory of slot `slot` now, so that a full `/dev/shm` is an answer here
    /// (false: the slot must not be used) rather than a SIGBUS when the slot is first written.
    public func reserve(_ slot: Int) -> Bool {
        guard owner, slot >= 0, slot < slotCount else { return false }
        let bytes = slotFloats * 4
        return posix_fallocate(descriptor, off_t(slot * bytes), off_t(bytes)) == 0
    }

    /// Removes slot files left in `folder` by coordinators that died without cleaning up.
    public static func removeStale(folder: String = "/dev/shm") {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
        for name in names where name.hasPrefix("made-") && name.hasSuffix(".slots") {
            let parts = name.dropFirst(5).split(separator: "-")
            guard let pid = parts.first.flatMap({ Int32($0) }), pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { unlink(folder + "/" + name) }
        }
    }

    /// Creates a new file of `1 + workerSlots` slots in `folder` (sparse: untouched slots cost nothing).
    public static func create(folder: String = "/dev/shm", slotFloats: Int, workerSlots: Int) throws -> SharedSlots {
        precondition(slotFloats > 0 && workerSlots > 0)
        removeStale(folder: folder)
        let path = folder + "/made-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).slots"
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ClusterError(.protocolFailure, "cannot create \(path): \(String(cString: strerror(errno)))") }
        var keep = false
        defer { if !keep { close(fd) } }
        let count = 1 + workerSlots
        let bytes = count * slotFloats * 4
        guard ftruncate(fd, off_t(bytes)) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(path)
            throw ClusterError(.protocolFailure, "cannot size \(path): \(e)")
        }
        guard let base = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            let e = String(cString: strerror(errno))
            unlink(path)
            throw ClusterError(.protocolFailure, "cannot map \(path): \(e)")
        }
        keep = true
        let slots = SharedSlots(path: path, slotFloats: slotFloats, slotCount: count, base: base, byteCount: bytes, owner: true, descriptor: fd)
        guard slots.reserve(0) else {
            throw ClusterError(.protocolFailure, "no room in \(folder) for the parameters' slot")
        }
        return slots
    }

    /// Maps the file a coordinator granted; it must hold at least slot `grant.slot`.
    public static func open(_ grant: WireMessage.SharedMemoryGrant) throws -> SharedSlots {
        let fd = Glibc.open(grant.path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw ClusterError(.protocolFailure, "cannot open the shared memory \(grant.path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw ClusterError(.protocolFailure, "cannot stat \(grant.path)") }
        let slotBytes = Int(grant.slotFloats) * 4
        let bytes = Int(info.st_size)
        guard slotBytes > 0, bytes % slotBytes == 0, bytes / slotBytes > Int(grant.slot) else {
            throw ClusterError(.protocolFailure, "\(grant.path) holds \(bytes) bytes, too few for slot \(grant.slot) of \(slotBytes) bytes")
        }
        guard let base = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            throw ClusterError(.protocolFailure, "cannot map \(grant.path): \(String(cString: strerror(errno)))")
        }
        return SharedSlots(path: grant.path, slotFloats: Int(grant.slotFloats), slotCount: bytes / slotBytes, base: base, byteCount: bytes, owner: false, descriptor: -1)
    }

    /// Calls `body` with the first `count` values of slot `slot`.
    public func withSlot<R>(_ slot: Int, count: Int, _ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        precondition(slot >= 0 && slot < slotCount && count >= 0 && count <= slotFloats, "slot \(slot) of \(slotCount), \(count) of \(slotFloats) values")
        let p = (base + slot * slotFloats * 4).assumingMemoryBound(to: Float.self)
        return try body(UnsafeMutableBufferPointer(start: p, count: count))
    }

    /// The first value of slot `slot`; valid while this instance lives.
    public func pointer(_ slot: Int) -> UnsafeMutablePointer<Float> {
        precondition(slot >= 0 && slot < slotCount, "slot \(slot) of \(slotCount)")
        return (base + slot * slotFloats * 4).assumingMemoryBound(to: Float.self)
    }

    /// A copy of the first `count` values of slot `slot`, or nil if any is not finite.
    public func read(_ slot: Int, count: Int) -> [Float]? {
        withSlot(slot, count: count) { buffer in
            var finite = true
            let values = [Float](unsafeUninitializedCapacity: count) { out, n in
                if count > 0 { finite = made_copy_finite_f32(count, buffer.baseAddress!, out.baseAddress!) != 0 }
                n = count
            }
            return finite ? values : nil
        }
    }

    /// An id of this host as seen from the network: the machine's boot id and this process's
    /// network namespace. Processes with equal ids can map the same file in `/dev/shm` and reach
    /// each other over loopback; processes in other network namespaces count as other hosts.
    public static var hostID: String {
        let boot = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        let net = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")) ?? ""
        guard !boot.isEmpty, !net.isEmpty, FileManager.default.isWritableFile(atPath: "/dev/shm") else { return "" }
        return "\(ProcessInfo.processInfo.hostName)/\(boot)/\(net)/uid\(getuid())"
    }
}
