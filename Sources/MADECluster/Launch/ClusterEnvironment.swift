import Foundation

/// Where the coordinator is and which role this process plays, from flags and the usual
/// environment variables of cluster launchers.
///
/// Recognized, in this order of precedence:
/// - explicit flags (`--bind`, `--connect`);
/// - `MASTER_ADDR` / `MASTER_PORT` (the coordinator's host and port), with `RANK` / `WORLD_SIZE`
///   (rank 0 coordinates, the others work), as torchrun and many launchers set them;
/// - `SLURM_PROCID` / `SLURM_NTASKS` / `SLURM_JOB_NODELIST` under `srun`: task 0 coordinates,
///   the coordinator's host is the first node of the job's node list.
///
/// Where a process sits among its host's (`LOCAL_RANK` and `GROUP_RANK`, or `SLURM_LOCALID` and
/// `SLURM_NODEID`) decides who starts the host's relay (``launchRole(relays:)``).
public struct ClusterEnvironment: Sendable, Equatable {
    /// The port used when neither a flag nor `MASTER_PORT` gives one.
    public static let defaultPort = 29_500

    /// This process's rank: 0 is the coordinator.
    public var rank: Int
    /// Number of processes: one coordinator and `worldSize - 1` workers.
    public var worldSize: Int
    /// Host the coordinator listens on, as workers should dial it.
    public var coordinatorHost: String
    public var coordinatorPort: Int
    /// Where the values came from, for messages.
    public var source: String
    /// This process's rank among those of its host, when the launcher says.
    public var localRank: Int?
    /// The rank of this process's host among the job's hosts (the coordinator's is 0), when the launcher says.
    public var nodeRank: Int?
    /// The launcher's job id, when it gives one (`SLURM_JOB_ID`, `TORCHELASTIC_RUN_ID`).
    public var jobID: String?

    /// Reads the variables of `environment`; nil when none of the recognized sets is present.
    public static func detect(_ environment: [String: String]) throws -> ClusterEnvironment? {
        func integer(_ name: String) throws -> Int? {
            guard let text = environment[name] else { return nil }
            guard let value = Int(text.trimmingCharacters(in: .whitespaces)), value >= 0 else {
                throw ClusterError(.invalidEnvironment, "\(name)='\(text)' is not a non-negative integer")
            }
            return value
        }
        let port = try integer("MASTER_PORT") ?? defaultPort
        guard port > 0, port < 65536 else {
            throw ClusterError(.invalidEnvironment, "MASTER_PORT=\(port) is not a TCP port")
        }
        if let rank = try integer("RANK"), let size = try integer("WORLD_SIZE") {
            guard let host = environment["MASTER_ADDR"], !host.isEmpty else {
                throw ClusterError(.invalidEnvironment, "RANK and WORLD_SIZE are set but MASTER_ADDR is not")
            }
            var e = ClusterEnvironment(
                rank: rank,
                worldSize: size,
                coordinatorHost: host,
                coordinatorPort: port,
                source: "RANK/WORLD_SIZE"
            )
            e.localRank = try integer("LOCAL_RANK")
            e.nodeRank = try integer("GROUP_RANK") ?? integer("NODE_RANK")
            e.jobID = environment["TORCHELASTIC_RUN_ID"]
            return try checked(e)
        }
        if let rank = try integer("SLURM_PROCID"), let size = try integer("SLURM_NTASKS") {
            var host = environment["MASTER_ADDR"] ?? ""
            if host.isEmpty {
                guard let list = environment["SLURM_JOB_NODELIST"] ?? environment["SLURM_NODELIST"],
                    let first = try SlurmNodeList.expand(list).first
                else {
                    throw ClusterError(.invalidEnvironment, "SLURM_PROCID is set but SLURM_JOB_NODELIST is not")
                }
                host = first
            }
            var e = ClusterEnvironment(
                rank: rank,
                worldSize: size,
                coordinatorHost: host,
                coordinatorPort: port,
                source: "Slurm"
            )
            e.localRank = try integer("SLURM_LOCALID")
            e.nodeRank = try integer("SLURM_NODEID")
            e.jobID = environment["SLURM_JOB_ID"]
            return try checked(e)
        }
        return nil
    }

    /// Most processes in one run.
    public static let maxWorldSize = 1 << 16

    private static func checked(_ e: ClusterEnvironment) throws -> ClusterEnvironment {
        guard e.worldSize >= 2 else {
            throw ClusterError(
                .invalidEnvironment,
                "\(e.source): world size \(e.worldSize) leaves no worker (one coordinator plus at least one worker)"
            )
        }
        guard e.worldSize <= Self.maxWorldSize else {
            throw ClusterError(
                .invalidEnvironment,
                "\(e.source): world size \(e.worldSize) is more than the \(Self.maxWorldSize) processes a run may hold"
            )
        }
        guard e.rank < e.worldSize else {
            throw ClusterError(
                .invalidEnvironment,
                "\(e.source): rank \(e.rank) is not below the world size \(e.worldSize)"
            )
        }
        return e
    }

    /// Whether this process coordinates.
    public var isCoordinator: Bool { rank == 0 }

    /// What a process of `made launch` is, when each host but the coordinator's has a relay.
    public enum LaunchRole: Sendable, Equatable {
        /// Rank 0.
        case coordinator
        /// A worker dialing the coordinator: on the coordinator's host (which shares memory with
        /// it), or when relays are off or the launcher does not say where processes sit.
        case worker
        /// The first process of its host: it starts the host's relay, listening at `relayTag`
        /// (``PrivateEndpoint/shared(tag:temporaryFolder:)``), and works behind it.
        case relayAndWorker(relayTag: String)
        /// Another process of such a host: a worker behind the relay at `relayTag`.
        case workerBehindRelay(relayTag: String)
    }

    /// This process's part, with a relay per host when `relays` is on.
    public func launchRole(relays: Bool) -> LaunchRole {
        if isCoordinator { return .coordinator }
        guard relays, let localRank, let nodeRank, nodeRank > 0 else { return .worker }
        let allowed = { (c: Character) in c.isASCII && (c.isLetter || c.isNumber || c == "-" || c == "_") }
        let job = (jobID ?? "").filter(allowed).prefix(40)
        let tag = "relay-\(job.isEmpty ? "job" : String(job))-\(coordinatorPort)"
        return localRank == 0 ? .relayAndWorker(relayTag: tag) : .workerBehindRelay(relayTag: tag)
    }

    /// The endpoint workers connect to.
    public var connectEndpoint: String { "tcp://\(Endpoint.bracketed(coordinatorHost)):\(coordinatorPort)" }

    /// The endpoint the coordinator binds: every interface, at the port.
    public var bindEndpoint: String { "tcp://*:\(coordinatorPort)" }
}

/// Expands Slurm's compressed host lists: `node[01-03,7],gpu5` is `node01 node02 node03 node7 gpu5`.
public enum SlurmNodeList {
    public static func expand(_ list: String) throws -> [String] {
        var hosts: [String] = []
        var current = ""
        var depth = 0
        for ch in list {
            if ch == "[" { depth += 1 }
            if ch == "]" { depth -= 1 }
            guard depth >= 0 else { throw ClusterError(.invalidEnvironment, "unbalanced ']' in node list '\(list)'") }
            if ch == "," && depth == 0 {
                hosts += try expandOne(current, list)
                current = ""
            } else {
                current.append(ch)
            }
        }
        guard depth == 0 else { throw ClusterError(.invalidEnvironment, "unbalanced '[' in node list '\(list)'") }
        hosts += try expandOne(current, list)
        return hosts.filter { !$0.isEmpty }
    }

    private static func expandOne(_ item: String, _ list: String) throws -> [String] {
        let trimmed = item.trimmingCharacters(in: .whitespaces)
        guard let open = trimmed.firstIndex(of: "[") else { return [trimmed] }
        guard let close = trimmed[open...].firstIndex(of: "]") else {
            throw ClusterError(.invalidEnvironment, "bad node list '\(list)'")
        }
        let prefix = String(trimmed[..<open])
        let suffix = String(trimmed[trimmed.index(after: close)...])
        var out: [String] = []
        for part in trimmed[trimmed.index(after: open)..<close].split(separator: ",") {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 1 || bounds.count == 2, let low = Int(bounds[0]), let high = Int(bounds.last!),
                low <= high,
                high - low < 100_000
            else {
                throw ClusterError(.invalidEnvironment, "bad range '\(part)' in node list '\(list)'")
            }
            let width = bounds[0].count
            for n in low...high {
                let digits = String(n)
                let padded = String(repeating: "0", count: max(0, width - digits.count)) + digits
                for rest in try expandOne(suffix, list) { out.append(prefix + padded + rest) }
                guard out.count <= 100_000 else {
                    throw ClusterError(.invalidEnvironment, "node list '\(list)' names more than 100000 hosts")
                }
            }
        }
        return out
    }
}

/// ZeroMQ endpoint text.
public enum Endpoint {
    /// An IPv6 literal in brackets, other hosts as they are.
    public static func bracketed(_ host: String) -> String {
        host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
    }

    /// The host of a `tcp://host:port` endpoint, or nil for other transports.
    public static func tcpHost(_ endpoint: String) -> String? {
        guard endpoint.hasPrefix("tcp://") else { return nil }
        let rest = endpoint.dropFirst(6)
        guard let colon = rest.lastIndex(of: ":") else { return String(rest) }
        var host = String(rest[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        // The "src;dst" form names the source address first.
        if let semicolon = host.lastIndex(of: ";") { host = String(host[host.index(after: semicolon)...]) }
        return host
    }

    /// Whether binding or dialing `endpoint` stays on this machine (loopback, ipc, inproc).
    public static func isLocal(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard let host = tcpHost(endpoint) else { return false }
        return host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "lo"
    }

    /// Throws unless `endpoint` is one this program can listen on or dial: `tcp://HOST:PORT`
    /// with a port from 0 to 65535 (0 or `*`: any free port), `ipc://PATH` with a path that fits
    /// a socket address, or `inproc://NAME`. libzmq itself takes a port such as 99999 modulo
    /// 65536, so `tcp://127.0.0.1:99999` would listen on 34463.
    public static func validate(_ endpoint: String) throws {
        func fail(_ why: String) -> ClusterError { ClusterError(.invalidEndpoint, "\(endpoint): \(why)") }
        if endpoint.hasPrefix("ipc://") {
            let path = endpoint.dropFirst(6)
            guard !path.isEmpty, path.utf8.count <= 107 else { throw fail("an ipc path must hold 1 to 107 bytes") }
            return
        }
        if endpoint.hasPrefix("inproc://") { return }
        guard endpoint.hasPrefix("tcp://") else { throw fail("give tcp://HOST:PORT or ipc://PATH") }
        let rest = endpoint.dropFirst(6)
        guard let colon = rest.lastIndex(of: ":"), colon != rest.startIndex, !rest.hasSuffix("]") else {
            throw fail("no port: give tcp://HOST:PORT (port 0 picks a free one)")
        }
        let port = rest[rest.index(after: colon)...]
        guard
            port == "*"
                || (port.allSatisfy(\.isASCII) && port.allSatisfy(\.isNumber) && port.count <= 5
                    && Int(port).map { $0 <= 65535 } == true)
        else {
            throw fail("the port must be a number from 0 to 65535, not '\(port)'")
        }
    }

    /// A `tcp://host:0` endpoint in ZeroMQ's spelling for "any free port", `tcp://host:*`.
    public static func zeroMQSpelling(_ endpoint: String) -> String {
        endpoint.hasPrefix("tcp://") && endpoint.hasSuffix(":0") ? String(endpoint.dropLast()) + "*" : endpoint
    }
}

/// An error of the cluster layer: what went wrong, and where.
///
/// The code lets callers react to a class of failure; the message is for people and names the
/// peer, endpoint, line or value at fault. New codes can be added without breaking callers.
public struct ClusterError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The class of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// A launcher's environment (RANK, WORLD_SIZE, SLURM_*) that does not describe a run.
        public static let invalidEnvironment = Code(name: "invalidEnvironment")
        /// An endpoint this program cannot listen on or dial.
        public static let invalidEndpoint = Code(name: "invalidEndpoint")
        /// A refusal to do something unsafe: listening in the open without keys, a secret key
        /// file others can read, shared memory that fails its checks.
        public static let security = Code(name: "security")
        /// No worker is there and none can come.
        public static let noWorkers = Code(name: "noWorkers")
        /// A model, a result or a job's chunk larger than one message may carry.
        public static let tooLarge = Code(name: "tooLarge")
        /// Work that every worker refused: the workers cannot do it (their reason is in the message).
        public static let taskFailed = Code(name: "taskFailed")
        /// A task, or the run description before it, that does not fit the run: rows out of
        /// range, counts that do not add up, an unknown mode, parameters missing or of the
        /// wrong size, limits exceeded.
        public static let invalidTask = Code(name: "invalidTask")
        /// The work needs data this worker does not hold: another dimension, no training data,
        /// no such split.
        public static let dataMismatch = Code(name: "dataMismatch")
        /// Values that are not finite: parameters, a loss or a gradient (training diverged).
        public static let diverged = Code(name: "diverged")
        /// A shared-memory slot file that cannot be used: it cannot be made, sized, opened or
        /// mapped, or no longer holds what it must (it shrank under the run).
        public static let sharedMemory = Code(name: "sharedMemory")
        /// A file the run needs (a key file, a key folder) does not exist.
        public static let missingFile = Code(name: "missingFile")
        /// A file cannot be made, read or written (permissions, a directory, too large).
        public static let io = Code(name: "io")
        /// A key is not 40 characters of Z85 encoding 32 bytes.
        public static let invalidKey = Code(name: "invalidKey")
        /// A file that is not a key file: no key where one is needed, more than one, lines that
        /// are not keys, or a certificate in CZMQ's format.
        public static let malformedKeyFile = Code(name: "malformedKeyFile")
        /// A public key that does not belong to the secret key given with it.
        public static let mismatchedKeys = Code(name: "mismatchedKeys")
        /// A key file is already there, and replacing it was not asked for.
        public static let exists = Code(name: "exists")
        /// This libzmq was built without CURVE support.
        public static let curveUnavailable = Code(name: "curveUnavailable")
    }

    public var code: Code
    public var message: String
    /// The file the error concerns, when there is one.
    public var path: String?

    public init(_ code: Code, _ message: String, path: String? = nil) {
        self.code = code
        self.message = message
        self.path = path
    }

    public var description: String {
        if let path { return "\(path): \(message)" }
        return message
    }
}
