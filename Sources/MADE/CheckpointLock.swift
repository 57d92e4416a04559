import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One writer per checkpoint: an exclusive `flock` on `.NAME.lock` beside the checkpoint,
/// held for as long as this value lives.
///
/// The lock file holds the holder's pid, so a second run on the same checkpoint (a requeued
/// job while the first still runs) refuses at its start and names the process in the way,
/// instead of alternating its writes with the first's. The lock goes with its process, however
/// that ends; the file stays and is reused. A lock on the checkpoint itself would not do: every
/// atomic write replaces the checkpoint's inode.
public final class CheckpointLock {
    public let path: String
    private let descriptor: Int32

    /// The lock file of `checkpoint`.
    public static func lockPath(of checkpoint: String) -> String {
        guard let slash = checkpoint.lastIndex(of: "/") else { return ".\(checkpoint).lock" }
        return String(checkpoint[...slash]) + "." + checkpoint[checkpoint.index(after: slash)...] + ".lock"
    }

    /// Takes the lock of `checkpoint`.
    ///
    /// - Throws: ``MADEError/Code/busy`` naming the pid of the process that holds it, or
    ///   ``MADEError/Code/io`` when the lock file cannot be made.
    public init(checkpoint: String) throws {
        path = Self.lockPath(of: checkpoint)
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw MADEError(
                .io,
                "cannot make the lock file \(path): \(String(cString: strerror(errno)))",
                path: checkpoint
            )
        }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EINTR { continue }
            var holder = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &holder, holder.count, 0)
            close(fd)
            guard code == EWOULDBLOCK else {
                throw MADEError(.io, "cannot lock \(path): \(String(cString: strerror(code)))", path: checkpoint)
            }
            let pid = String(decoding: holder.prefix(max(0, n)), as: UTF8.self).trimmingCharacters(
                in: .whitespacesAndNewlines
            )
            throw MADEError(
                .busy,
                "another run (pid \(pid.isEmpty ? "unknown" : pid)) is writing this checkpoint (lock \(path)); "
                    + "wait for it to end or stop it, or give another --checkpoint",
                path: checkpoint
            )
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, text, text.count, 0)
        descriptor = fd
    }

    deinit {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }
}
