import CKernels
import Foundation
import MADE

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
///
/// Another process of the user may shrink the file under a run (`truncate -s 0`). Touching a
/// mapped page past the file's new end raises SIGBUS, and no check before the access can close
/// that race, so every mapping is registered with the SIGBUS guard of `CKernels`
/// (`made_guard_register`): a fault inside it maps zero pages over the whole mapping, which from
/// then on belongs to no file, and the access goes on. Whoever reads or writes a slot checks
/// ``holds(_:)`` after the access as well as before: once the file shrank (or an access faulted)
/// the values are meaningless, and the work is thrown away rather than trusted.
public final class SharedSlots {
    public let path: String
    public let slotFloats: Int
    /// Slots, slot 0 included.
    public let slotCount: Int
    /// The slots that may hold parameters: slot 0, and the further parameter regions (one per
    /// further mask of a step of several masks) past the workers' slots.
    public private(set) var parameterSlots: [Int] = [0]
    private let base: UnsafeMutableRawPointer
    private let byteCount: Int
    private let owner: Bool
    /// The open file: the owner reserves slots through it, and both sides check its size.
    private let descriptor: Int32
    /// The mapping's entry in the SIGBUS guard.
    private let guardHandle: Int32

    /// The folder slot files live in.
    public static let folder = "/dev/shm"

    /// Whether `name` is the name of a slot file: `made-PID-NUMBER.slots`, as
    /// ``create(folder:slotFloats:workerSlots:)`` names them.
    public static func isSlotFileName<S: StringProtocol>(_ name: S) -> Bool {
        guard name.hasPrefix("made-"), name.hasSuffix(".slots") else { return false }
        let parts = name.dropFirst(5).dropLast(6).split(separator: "-", omittingEmptySubsequences: false)
        return parts.count == 2
            && parts.allSatisfy { !$0.isEmpty && $0.count <= 10 && $0.allSatisfy { $0 >= "0" && $0 <= "9" } }
    }

    private init(
        path: String,
        slotFloats: Int,
        slotCount: Int,
        base: UnsafeMutableRawPointer,
        byteCount: Int,
        owner: Bool,
        descriptor: Int32,
        guardHandle: Int32
    ) {
        self.path = path
        self.slotFloats = slotFloats
        self.slotCount = slotCount
        self.base = base
        self.byteCount = byteCount
        self.owner = owner
        self.descriptor = descriptor
        self.guardHandle = guardHandle
    }

    deinit {
        made_guard_unregister(guardHandle)
        munmap(base, byteCount)
        close(descriptor)
        if owner { unlink(path) }
    }

    /// Allocates the memory of slot `slot` now, so that a full `/dev/shm` is an answer here
    /// (false: the slot must not be used) rather than a SIGBUS when the slot is first written.
    /// Never grows the file: a slot of a file that shrank is not reserved.
    public func reserve(_ slot: Int) -> Bool {
        guard owner, holds(slot) else { return false }
        let bytes = slotFloats * 4
        return made_allocate_in_place(descriptor, Int64(slot * bytes), Int64(bytes)) == 0 && holds(slot)
    }

    /// Removes slot files left in `folder` by coordinators that died without cleaning up.
    public static func removeStale(folder: String = SharedSlots.folder) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
        for name in names where isSlotFileName(name) {
            let parts = name.dropFirst(5).split(separator: "-")
            guard let pid = parts.first.flatMap({ Int32($0) }), pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { unlink(folder + "/" + name) }
        }
    }

    /// Creates a new file of `1 + workerSlots + parameterRegions` slots in `folder` (sparse:
    /// untouched slots cost nothing): slot 0, the workers' slots, then `parameterRegions`
    /// further parameter slots (``parameterSlots``), reserved on first use.
    public static func create(
        folder: String = SharedSlots.folder,
        slotFloats: Int,
        workerSlots: Int,
        parameterRegions: Int = 0
    ) throws -> SharedSlots {
        precondition(slotFloats > 0 && workerSlots > 0 && parameterRegions >= 0)
        removeStale(folder: folder)
        let path = folder + "/made-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).slots"
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw ClusterError(.sharedMemory, "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        var keep = false
        defer { if !keep { close(fd) } }
        let count = 1 + workerSlots + parameterRegions
        let bytes = count * slotFloats * 4
        guard ftruncate(fd, off_t(bytes)) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(path)
            throw ClusterError(.sharedMemory, "cannot size \(path): \(e)")
        }
        guard let base = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            let e = String(cString: strerror(errno))
            unlink(path)
            throw ClusterError(.sharedMemory, "cannot map \(path): \(e)")
        }
        let handle = made_guard_register(base, bytes)
        guard handle >= 0 else {
            munmap(base, bytes)
            unlink(path)
            throw ClusterError(.sharedMemory, "cannot guard the mapping of \(path) against the file shrinking")
        }
        keep = true
        let slots = SharedSlots(
            path: path,
            slotFloats: slotFloats,
            slotCount: count,
            base: base,
            byteCount: bytes,
            owner: true,
            descriptor: fd,
            guardHandle: handle
        )
        guard slots.reserve(0) else {
            throw ClusterError(.sharedMemory, "no room in \(folder) for the parameters' slot")
        }
        slots.parameterSlots += (0..<parameterRegions).map { 1 + workerSlots + $0 }
        return slots
    }

    /// Maps the file a coordinator granted, once it has proved to be a slot file of this user:
    /// a file named as ``isSlotFileName(_:)`` says, directly in `folder`, opened without
    /// following a symbolic link, a regular file with one link, owned by this process's user,
    /// and holding at least slot `grant.slot`. Anything else (a rogue coordinator naming
    /// `/tmp/victim.bin`, a link planted in `/dev/shm`) is refused before a byte is mapped.
    public static func open(
        _ grant: WireMessage.SharedMemoryGrant,
        folder: String = SharedSlots.folder
    ) throws -> SharedSlots {
        func refuse(_ why: String) -> ClusterError {
            ClusterError(.security, "refusing the shared memory \(grant.path): \(why)")
        }
        let prefix = folder.hasSuffix("/") ? folder : folder + "/"
        guard grant.path.hasPrefix(prefix), case let name = grant.path.dropFirst(prefix.count), !name.contains("/"),
            isSlotFileName(name)
        else {
            throw refuse("not a slot file (\(prefix)made-PID-NUMBER.slots)")
        }
        let fd = Glibc.open(grant.path, O_RDWR | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw code == ELOOP
                ? refuse("a symbolic link")
                : ClusterError(
                    .sharedMemory,
                    "cannot open the shared memory \(grant.path): \(String(cString: strerror(code)))"
                )
        }
        var keep = false
        defer { if !keep { close(fd) } }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw ClusterError(.sharedMemory, "cannot stat \(grant.path)") }
        guard info.st_mode & S_IFMT == S_IFREG, info.st_nlink == 1 else {
            throw refuse("not a regular file with a single link")
        }
        guard info.st_uid == getuid() else {
            throw refuse("owned by uid \(info.st_uid), not by this user (\(getuid()))")
        }
        let slotBytes = Int(grant.slotFloats) * 4
        let bytes = Int(info.st_size)
        guard slotBytes > 0, bytes % slotBytes == 0, bytes / slotBytes > Int(grant.slot) else {
            throw ClusterError(
                .sharedMemory,
                "\(grant.path) holds \(bytes) bytes, too few for slot \(grant.slot) of \(slotBytes) bytes"
            )
        }
        guard let base = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            throw ClusterError(.sharedMemory, "cannot map \(grant.path): \(String(cString: strerror(errno)))")
        }
        let handle = made_guard_register(base, bytes)
        guard handle >= 0 else {
            munmap(base, bytes)
            throw ClusterError(.sharedMemory, "cannot guard the mapping of \(grant.path) against the file shrinking")
        }
        keep = true
        let slots = SharedSlots(
            path: grant.path,
            slotFloats: Int(grant.slotFloats),
            slotCount: bytes / slotBytes,
            base: base,
            byteCount: bytes,
            owner: false,
            descriptor: fd,
            guardHandle: handle
        )
        // Regions past the file's end are not taken: a task naming one is refused.
        slots.parameterSlots += grant.parameterSlots.map(Int.init).filter {
            $0 < slots.slotCount && $0 != Int(grant.slot)
        }
        return slots
    }

    /// Whether an access to this mapping faulted because the file shrank: the SIGBUS guard then
    /// put zero pages in its place, and nothing read from it or written to it since counts.
    /// Once true it stays true.
    public var faulted: Bool { made_guard_faulted(guardHandle) != 0 }

    /// Whether slot `slot` is still the file's, whole: no access to the mapping faulted and the
    /// file is long enough. Check it before touching a slot, so a shrunk file is found early,
    /// and again after reading or writing one: a file cut during the access leaves zero pages
    /// (see ``faulted``), and what was computed there is a bad result, not a crash.
    public func holds(_ slot: Int) -> Bool {
        guard slot >= 0, slot < slotCount, !faulted else { return false }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { return false }
        return Int(info.st_size) >= (slot + 1) * slotFloats * 4
    }

    /// Calls `body` with the first `count` values of slot `slot`.
    public func withSlot<R>(
        _ slot: Int,
        count: Int,
        _ body: (UnsafeMutableBufferPointer<Float>) throws -> R
    ) rethrows -> R {
        precondition(
            slot >= 0 && slot < slotCount && count >= 0 && count <= slotFloats,
            "slot \(slot) of \(slotCount), \(count) of \(slotFloats) values"
        )
        let p = (base + slot * slotFloats * 4).assumingMemoryBound(to: Float.self)
        return try body(UnsafeMutableBufferPointer(start: p, count: count))
    }

    /// The first value of slot `slot`; valid while this instance lives.
    public func pointer(_ slot: Int) -> UnsafeMutablePointer<Float> {
        precondition(slot >= 0 && slot < slotCount, "slot \(slot) of \(slotCount)")
        return (base + slot * slotFloats * 4).assumingMemoryBound(to: Float.self)
    }

    /// A copy of the first `count` values of slot `slot`, or nil if any is not finite or the
    /// slot was not the file's whole before and after the copy (``holds(_:)``).
    public func read(_ slot: Int, count: Int) -> [Float]? {
        guard holds(slot) else { return nil }
        let values: [Float]? = withSlot(slot, count: count) { buffer in
            var finite = true
            let values = [Float](unsafeUninitializedCapacity: count) { out, n in
                if count > 0 { finite = made_copy_finite_f32(count, buffer.baseAddress!, out.baseAddress!) != 0 }
                n = count
            }
            return finite ? values : nil
        }
        return holds(slot) ? values : nil
    }

    /// An id of this host and user as seen from the network, for the coordinator listening at
    /// `endpoint` (or a worker dialing it): the machine's boot id, this process's network
    /// namespace, the user, and a proof that the process can read the user's host secret.
    /// Processes with equal ids can map the same file in `/dev/shm` and reach each other over
    /// loopback; processes in other network namespaces count as other hosts. Empty when shared
    /// memory is unavailable.
    ///
    /// The proof is what keeps a peer from taking shared-memory slots by presenting an id it
    /// derived: the rest of the id is public, but only this user's processes on this host can
    /// read the secret (``hostSecret(folder:)``). The secret itself never travels: the proof is
    /// the SHA-256 of the secret and the endpoint's port (or ipc path), so what a worker tells
    /// one coordinator is worth nothing at another endpoint.
    public static func hostID(for endpoint: String) -> String {
        let boot =
            (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        let net = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")) ?? ""
        guard !boot.isEmpty, !net.isEmpty, FileManager.default.isWritableFile(atPath: folder), let secret = hostSecret()
        else { return "" }
        let place =
            endpoint.hasPrefix("tcp://")
            ? String(endpoint[endpoint.index(after: endpoint.lastIndex(of: ":") ?? endpoint.startIndex)...]) : endpoint
        let proof = Array(SHA256.hash(Array("\(secret)|\(place)".utf8)).prefix(16)).hexString
        return "\(ProcessInfo.processInfo.hostName)/\(boot)/\(net)/uid\(getuid())/\(proof)"
    }

    /// This user's host secret: 32 hex digits in `folder/made-host-UID.secret`, made on first
    /// use (mode 0600, written whole before it appears under its name) and shared by every
    /// process of the user on this host. Nil when the file there is not a regular file of this
    /// user readable by no one else: then shared memory is not offered or asked for.
    public static func hostSecret(folder: String = SharedSlots.folder) -> String? {
        let path = folder + "/made-host-\(getuid()).secret"
        for _ in 0..<3 {
            let fd = Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
            if fd >= 0 {
                defer { close(fd) }
                var info = stat()
                guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_uid == getuid(),
                    info.st_mode & 0o077 == 0, info.st_size == 32
                else { return nil }
                var bytes = [UInt8](repeating: 0, count: 32)
                guard Glibc.read(fd, &bytes, 32) == 32,
                    bytes.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) })
                else { return nil }
                return String(decoding: bytes, as: UTF8.self)
            }
            guard errno == ENOENT else { return nil }
            // Written under a private name, then linked into place: a reader never sees it partial.
            let secret = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            let temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let out = Glibc.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard out >= 0 else { return nil }
            let written = fchmod(out, 0o600) == 0 && write(out, secret, 32) == 32
            close(out)
            let linked = written && link(temporary, path) == 0
            unlink(temporary)
            if linked { return secret }
            guard errno == EEXIST else { return nil }  // another process made it first: read that one
        }
        return nil
    }
}
