import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// An ipc endpoint in a folder only this user can enter: whoever dials it runs as this user on
/// this host, so a relay and the workers of its host need no keys between them.
public enum PrivateEndpoint {
    /// An endpoint in a new folder of its own (`/tmp/made-relay-XXXXXX`, mode 0700), for a relay
    /// that starts its workers itself; remove the folder when done.
    public static func fresh(
        temporaryFolder: String = NSTemporaryDirectory()
    ) throws -> (endpoint: String, folder: String) {
        var template = Array(((temporaryFolder as NSString).appendingPathComponent("made-relay-XXXXXX")).utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw ClusterError(
                .security,
                "cannot make a private folder for the relay's socket: \(String(cString: strerror(errno)))"
            )
        }
        let folder = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return try ("ipc://" + checkedSocketPath(folder: folder, name: "relay.ipc"), folder)
    }

    /// The endpoint named `tag` in this user's folder `made-UID` of `temporaryFolder` (made with
    /// mode 0700 if missing), for processes of one job on one host that must find the same socket:
    /// a relay started by one task of the host and the workers started by the others.
    ///
    /// - Throws: when the folder is a link, not a folder, someone else's, or open to others (a
    ///   folder planted by another user is never used), or the path is too long for a socket.
    public static func shared(tag: String, temporaryFolder: String = "/tmp") throws -> String {
        guard !tag.isEmpty,
            tag.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") })
        else {
            throw ClusterError(.invalidEndpoint, "'\(tag)' is not a socket name (letters, digits, '-', '_', '.')")
        }
        let folder = (temporaryFolder as NSString).appendingPathComponent("made-\(getuid())")
        if mkdir(folder, 0o700) != 0 && errno != EEXIST {
            throw ClusterError(.security, "cannot make \(folder): \(String(cString: strerror(errno)))")
        }
        return "ipc://" + (try checkedSocketPath(folder: folder, name: tag + ".ipc"))
    }

    /// `folder/name`, once `folder` has proved to be a folder of this user that no one else may enter.
    static func checkedSocketPath(folder: String, name: String) throws -> String {
        var info = stat()
        guard lstat(folder, &info) == 0 else {
            throw ClusterError(.security, "cannot inspect \(folder): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw ClusterError(.security, "\(folder) is not a folder (a link?): refusing it for a socket")
        }
        guard info.st_uid == getuid() else {
            throw ClusterError(
                .security,
                "\(folder) belongs to uid \(info.st_uid), not to this user: refusing it for a socket"
            )
        }
        guard info.st_mode & 0o077 == 0 else {
            let mode = String(info.st_mode & 0o777, radix: 8)
            throw ClusterError(.security, "\(folder) is open to other users (mode \(mode)): refusing it for a socket")
        }
        let path = (folder as NSString).appendingPathComponent(name)
        try Endpoint.validate("ipc://" + path)
        return path
    }
}
