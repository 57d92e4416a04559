import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whole-file writes that are atomic across crashes: the one writer of every file the project
/// replaces (checkpoints, key files, `authorized_keys`, endpoint files, PNGs, per-example scores).
///
/// The bytes go to `.NAME.tmp-PID` in the target's folder, created with exactly `mode` (set by
/// `fchmod`, whatever the umask, before any byte is written) and without following a symbolic
/// link; the file is fsynced, closed, renamed over the target, and the folder is fsynced. A
/// reader sees the old file or the new one, never a mixture, even across a crash. Each failure
/// reports the reason of the call that failed (its `errno`, read at once).
///
/// A process killed mid-write leaves its temporary file behind; ``removeStaleTemporaries(of:)``
/// removes those of processes that no longer run.
public enum AtomicFile {
    /// Writes `bytes` to `path` atomically, with permissions `mode`.
    ///
    /// - Throws: ``MADEError/Code/io`` naming `path` and the call that failed.
    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o644) throws {
        let (folder, name) = split(path)
        let temporary = (folder.isEmpty ? "" : folder + "/") + temporaryName(of: name, pid: getpid())
        func failure(_ what: String, _ code: Int32) -> MADEError {
            MADEError(.io, "cannot \(what): \(String(cString: strerror(code)))", path: path)
        }
        // A file of this name is a leftover of an earlier process with this pid.
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { throw failure("create \(temporary)", errno) }
        var isOpen = true
        defer { if isOpen { close(fd) } }
        do {
            guard fchmod(fd, mode) == 0 else { throw failure("set the mode of \(temporary)", errno) }
            var written = 0
            while written < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
                if n < 0 {
                    let code = errno
                    if code == EINTR { continue }
                    throw failure("write \(temporary)", code)
                }
                written += n
            }
            guard fsync(fd) == 0 else { throw failure("flush \(temporary) to disk", errno) }
            isOpen = false
            guard close(fd) == 0 else { throw failure("close \(temporary)", errno) }
            guard rename(temporary, path) == 0 else { throw failure("rename \(temporary) to \(path)", errno) }
        } catch {
            unlink(temporary)
            throw error
        }
        // Make the rename durable; a failure here does not undo a complete write.
        let directory = Glibc.open(folder.isEmpty ? "." : folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            _ = fsync(directory)
            close(directory)
        }
    }

    /// Writes `text` as UTF-8 (see ``write(_:to:mode:)-([UInt8],_,_)``).
    public static func write(_ text: String, to path: String, mode: mode_t = 0o644) throws {
        try write(Array(text.utf8), to: path, mode: mode)
    }

    /// The temporary name a process `pid` writes `name` under.
    static func temporaryName(of name: String, pid: Int32) -> String { ".\(name).tmp-\(pid)" }

    /// Removes the temporary files of `path` (`.NAME.tmp-PID`) left by processes that no longer
    /// run, and returns their paths. Files of running processes, and of this one, stay.
    @discardableResult
    public static func removeStaleTemporaries(of path: String) -> [String] {
        let (folder, name) = split(path)
        let prefix = ".\(name).tmp-"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: folder.isEmpty ? "." : folder) else {
            return []
        }
        var removed: [String] = []
        for entry in entries where entry.hasPrefix(prefix) {
            guard let pid = Int32(entry.dropFirst(prefix.count)), pid > 0, pid != getpid() else { continue }
            guard kill(pid, 0) != 0, errno == ESRCH else { continue }
            let stale = (folder.isEmpty ? "" : folder + "/") + entry
            if unlink(stale) == 0 { removed.append(stale) }
        }
        return removed
    }

    /// Throws unless a file can be created in `path`'s folder: the folder exists, is a folder
    /// and is writable. Checked at the start of a run, rather than at its first checkpoint.
    public static func checkWritableFolder(of path: String) throws {
        let (folder, _) = split(path)
        let shown = folder.isEmpty ? "." : folder
        var info = stat()
        guard stat(shown, &info) == 0 else {
            throw MADEError(
                .io,
                """
                cannot write here: the folder \(shown) \
                \(errno == ENOENT ? "does not exist" : "cannot be read: \(String(cString: strerror(errno)))")
                """,
                path: path
            )
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw MADEError(.io, "cannot write here: \(shown) is not a folder", path: path)
        }
        guard access(shown, W_OK | X_OK) == 0 else {
            throw MADEError(
                .io,
                "cannot write here: the folder \(shown) is not writable (\(String(cString: strerror(errno))))",
                path: path
            )
        }
    }

    /// `path`'s folder (empty for the current one) and last component.
    private static func split(_ path: String) -> (folder: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return ("", path) }
        let folder = String(path[..<slash])
        return (folder.isEmpty ? "/" : folder, String(path[path.index(after: slash)...]))
    }
}
