import Foundation
import MADE

/// CURVE keys for one side of the coordinator-worker connection, read from a key folder.
///
/// A key folder (made by `made keygen DIR`) holds `coordinator.key` and `coordinator.pub`, one
/// key pair per worker identity (`worker.key`, `worker.pub`, ...), and `authorized_keys`: the
/// public keys the coordinator accepts, one per line. Each file holds bare Z85 keys, one a line
/// (``KeyFile``); a `.key` file holds its secret key alone and has mode 0600. The coordinator
/// reads its secret key and `authorized_keys`; a worker reads its own secret key and
/// `coordinator.pub`.
public enum ClusterSecurity {
    /// What a coordinator needs.
    public struct Server: Sendable {
        public var keyPair: CurveKeyPair
        public var authorized: AuthorizedKeys
        public init(keyPair: CurveKeyPair, authorized: AuthorizedKeys) {
            self.keyPair = keyPair
            self.authorized = authorized
        }

        /// Reads `DIR/coordinator.key` and `DIR/authorized_keys`.
        public static func load(folder: String) throws -> Server {
            Server(
                keyPair: try CurveKeyPair.read(secretPath: folder + "/coordinator.key"),
                authorized: try AuthorizedKeys.read(path: folder + "/authorized_keys")
            )
        }
    }

    /// What a worker needs.
    public struct Client: Sendable {
        public var keyPair: CurveKeyPair
        public var serverPublicKey: String
        public init(keyPair: CurveKeyPair, serverPublicKey: String) {
            self.keyPair = keyPair
            self.serverPublicKey = serverPublicKey
        }

        /// Reads `DIR/<name>.key` and `DIR/coordinator.pub`.
        public static func load(folder: String, name: String = "worker") throws -> Client {
            Client(
                keyPair: try CurveKeyPair.read(secretPath: folder + "/\(name).key"),
                serverPublicKey: try CurveKeyPair.readPublicKey(path: folder + "/coordinator.pub")
            )
        }

        /// The keys as a coordinator hands them to its own workers on their standard input:
        /// `coordinator-public-key KEY` and `worker-secret-key KEY`, one a line.
        public var stdinText: String {
            "coordinator-public-key \(serverPublicKey)\nworker-secret-key \(keyPair.secretKey)\n"
        }

        /// Parses ``stdinText``.
        /// - Throws: ``ClusterError`` when a line is missing or a key is invalid.
        public static func parse(stdinText text: String) throws -> Client {
            var fields: [String: String] = [:]
            for line in text.split(whereSeparator: \.isNewline) {
                let parts = line.split(separator: " ", maxSplits: 1)
                if parts.count == 2 { fields[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces) }
            }
            guard let server = fields["coordinator-public-key"], let secret = fields["worker-secret-key"] else {
                throw ClusterError(
                    .malformedKeyFile,
                    "standard input holds no coordinator-public-key and worker-secret-key lines"
                )
            }
            _ = try Z85.decodeKey(server)
            return Client(keyPair: try CurveKeyPair(secretKey: secret), serverPublicKey: server)
        }
    }

    /// Keys for one run with its own workers: a fresh pair for the coordinator, which accepts
    /// only the fresh worker pair given to its workers. Nothing is written to disk.
    public static func ephemeral() throws -> (server: Server, client: Client) {
        let server = try CurveKeyPair.generate()
        let worker = try CurveKeyPair.generate()
        return (
            Server(keyPair: server, authorized: try AuthorizedKeys(publicKeys: [worker.publicKey])),
            Client(keyPair: worker, serverPublicKey: server.publicKey)
        )
    }

    /// Creates a key folder: the coordinator's pair if missing, the named worker's pair, and the
    /// worker's public key appended to `authorized_keys`.
    ///
    /// A worker pair of that name that already exists is kept, and this throws `.exists`,
    /// unless `replace` is set: then the new pair replaces it and the old public key leaves
    /// `authorized_keys`, so the replaced secret key no longer gets in. A coordinator key that is
    /// there must be readable (not, say, a certificate of an earlier version), or nothing is
    /// written: keys for a coordinator that cannot start would be of no use.
    public static func generate(folder: String, workerName: String = "worker", replace: Bool = false) throws -> [String]
    {
        try makeFolder(folder)
        let coordinatorExists = FileManager.default.fileExists(atPath: folder + "/coordinator.key")
        if coordinatorExists { _ = try CurveKeyPair.read(secretPath: folder + "/coordinator.key") }
        let secretPath = folder + "/\(workerName).key"
        let publicPath = folder + "/\(workerName).pub"
        var stale: Set<String> = []
        for path in [secretPath, publicPath] where FileManager.default.fileExists(atPath: path) {
            guard replace else {
                throw ClusterError(
                    .exists,
                    """
                    the worker key pair '\(workerName)' exists; give --force to replace it (its public key then \
                    leaves authorized_keys), or --name NAME for another pair
                    """,
                    path: path
                )
            }
            if path == publicPath, let key = try? CurveKeyPair.readPublicKey(path: path) { stale.insert(key) }
            if path == secretPath, let pair = try? CurveKeyPair.read(secretPath: path) { stale.insert(pair.publicKey) }
        }
        var written: [String] = []
        if !coordinatorExists {
            try CurveKeyPair.generate().write(
                secretPath: folder + "/coordinator.key",
                publicPath: folder + "/coordinator.pub"
            )
            written += [folder + "/coordinator.key", folder + "/coordinator.pub"]
        }
        let worker = try CurveKeyPair.generate()
        try worker.write(secretPath: folder + "/\(workerName).key", publicPath: folder + "/\(workerName).pub")
        written += [folder + "/\(workerName).key", folder + "/\(workerName).pub"]
        let authorized = folder + "/authorized_keys"
        var text =
            (try? String(contentsOfFile: authorized, encoding: .utf8))
            ?? "# Public keys of the workers this coordinator accepts, one per line.\n"
        if !stale.isEmpty {
            // Drop the lines that grant the replaced key.
            let kept = text.split(separator: "\n", omittingEmptySubsequences: false).filter { line in
                let key = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).first.map(String.init) ?? ""
                return !stale.contains(key)
            }
            text = kept.joined(separator: "\n")
        }
        if !text.hasSuffix("\n") { text += "\n" }
        text += "\(worker.publicKey)  # \(workerName)\n"
        try AtomicFile.write(text, to: authorized, mode: 0o644)
        written.append(authorized)
        return written
    }

    /// Makes `folder` and its missing parents, as `mkdir -p` does.
    ///
    /// - Throws: ``ClusterError/Code/io`` naming the part that could not be made, and why.
    private static func makeFolder(_ folder: String) throws {
        var path = folder.hasPrefix("/") ? "" : "."
        for component in folder.split(separator: "/") {
            path += "/" + component
            guard mkdir(path, 0o777) == 0 || errno == EEXIST else {
                throw ClusterError(.io, "cannot make the key folder: \(String(cString: strerror(errno)))", path: path)
            }
        }
        var info = stat()
        guard stat(folder, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw ClusterError(.io, "cannot make the key folder: something else of that name is there", path: folder)
        }
    }
}
