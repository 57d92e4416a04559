import Foundation
import Logging
import MADE

#if canImport(Glibc)
import Glibc
#endif

/// A coordinator and the worker processes it starts on this machine, for one run or job: binds,
/// starts the local workers, waits for the workers it expects, and at the end tells every worker
/// to stop, waits for the local ones and collects their exit reasons, on success, failure and
/// interruption alike, so none is left behind.
///
/// A session with local workers and no key folder is authenticated all the same: it makes a
/// CURVE key pair for the coordinator and one for its workers, accepts only that worker key, and
/// hands both keys to its children on their standard input, never on a command line (where
/// `ps` shows it): a 0600 file removed from its folder before any child starts. Each child also gets `--parent-pid` of
/// this process and exits by
/// itself if this process dies first, even by SIGKILL.
public final class ClusterSession {
    public struct Options: Sendable {
        public var coordinator: ClusterCoordinator.Options
        /// Worker processes to start on this machine.
        public var localWorkers = 0
        /// Arguments of every local worker after `worker --connect ENDPOINT --name NAME`: its data
        /// flags and the like.
        public var workerArguments: [String] = []
        /// BLAS threads of each local worker; nil leaves the worker's default.
        public var workerThreads: Int?
        /// A key folder (`made keygen`) the local workers read their keys from; nil hands them
        /// this session's own keys when it makes them.
        public var workerKeyFolder: String?
        /// Make keys for this session when the coordinator has none and local workers start.
        /// Off when other workers must be able to join without keys (an explicit `--bind`).
        public var ephemeralKeys = true
        /// Workers to wait for before the work starts.
        public var awaitedWorkers = 0
        /// Longest wait for them (ms); the work then starts with the workers that came.
        public var joinTimeout: UInt64 = 60_000
        /// Prefix of the local workers' names: `local-0`, `local-1`, ...
        public var namePrefix = "local"
        /// The program the local workers run (`made`).
        public var executable = ClusterSession.currentExecutable
        /// Start each local process as a relay (`made relay`) of this many workers of its own
        /// instead of as a worker: hosts simulated on this one, for benchmarks and tests.
        public var relayWorkers: Int?

        public init(coordinator: ClusterCoordinator.Options) {
            self.coordinator = coordinator
        }
    }

    /// How a local worker process ended.
    public struct WorkerExit: Sendable, Equatable, CustomStringConvertible {
        public var name: String
        public var pid: Int32
        /// The exit status, or the signal that ended it.
        public var status: Int32
        public var signaled: Bool
        public var description: String {
            "\(name) (pid \(pid)) \(signaled ? "was killed by signal" : "exited with status") \(status)"
        }
    }

    public let coordinator: ClusterCoordinator
    public let options: Options
    public let logger: Logger
    /// Whether this session made its own keys.
    public let usesEphemeralKeys: Bool
    private var processes: [(name: String, process: Process)] = []
    private var finished = false
    /// Local worker processes whose end the coordinator has heard of.
    private var reportedExits: Set<Int32> = []

    /// Bytes one local worker of a training run needs at least: the data it loads and what
    /// training the model takes (``TrainingConfiguration/trainingBytes``); nil when that overflows.
    /// A worker's process itself needs some more.
    public static func workerBytes(configuration: TrainingConfiguration, dataBytes: Int) -> Int? {
        guard let training = configuration.trainingBytes else { return nil }
        let (total, overflow) = training.addingReportingOverflow(dataBytes)
        return overflow ? nil : total
    }

    /// The path of the running executable (from /proc/self/exe where available).
    public static var currentExecutable: String {
        if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return path }
        return CommandLine.arguments[0]
    }

    /// Binds the coordinator and starts the local workers.
    /// - Parameter dataFingerprint: what workers' data must hash to; nil accepts any (sampling).
    public init(
        configuration: TrainingConfiguration,
        dataFingerprint: [UInt8]?,
        options: Options,
        logger: Logger
    ) throws {
        self.options = options
        self.logger = logger
        var coordinatorOptions = options.coordinator
        var workerKeys: ClusterSecurity.Client?
        if coordinatorOptions.security == nil, options.ephemeralKeys, options.localWorkers > 0 {
            let (server, client) = try ClusterSecurity.ephemeral()
            coordinatorOptions.security = server
            workerKeys = client
        }
        usesEphemeralKeys = workerKeys != nil
        coordinator = try ClusterCoordinator(
            configuration: configuration,
            dataFingerprint: dataFingerprint,
            options: coordinatorOptions,
            logger: logger
        )
        coordinator.watch = { [weak self] in try self?.watchLocalWorkers() }
        do {
            try startWorkers(keys: workerKeys)
        } catch {
            _ = finish(exitCode: 1, reason: "the local workers could not start")
            throw error
        }
    }

    deinit {
        for (_, p) in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }

    private func startWorkers(keys: ClusterSecurity.Client?) throws {
        for i in 0..<options.localWorkers {
            let name = "\(options.namePrefix)-\(i)"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: options.executable)
            let command = options.relayWorkers == nil ? "worker" : "relay"
            var arguments =
                [
                    command, "--connect", coordinator.endpoint, "--name", name, "--parent-pid", "\(getpid())",
                    "--heartbeat-timeout", "\(Double(options.coordinator.heartbeatTimeout) / 1000)",
                ]
                + options.workerArguments
            if let workers = options.relayWorkers { arguments += ["--workers", "\(workers)"] }
            if let threads = options.workerThreads { arguments += ["--threads", "\(threads)"] }
            if let folder = options.workerKeyFolder { arguments += ["--keys", folder] }
            var input: FileHandle?
            if let keys {
                arguments.append("--keys-on-stdin")
                input = try Self.unlinkedFile(holding: keys.stdinText)
                process.standardInput = input
            }
            process.arguments = arguments
            defer { try? input?.close() }
            try process.run()
            processes.append((name, process))
            logger.debug(
                "started worker process",
                metadata: ["worker": "\(name)", "pid": "\(process.processIdentifier)"]
            )
        }
    }

    /// A file holding `text`, open for reading from its start, already removed from its folder:
    /// only a process handed the open file can read it. Unlike a pipe, a child that exits before
    /// reading it does not make the writer fail.
    static func unlinkedFile(holding text: String) throws -> FileHandle {
        var template = Array((NSTemporaryDirectory() + "/made-keys-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }  // mode 0600
        guard fd >= 0 else {
            throw ClusterError(.io, "cannot make a file for the workers' keys: \(String(cString: strerror(errno)))")
        }
        unlink(template)
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, lseek(fd, 0, SEEK_SET) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw ClusterError(.io, "cannot write the workers' keys: \(reason)")
        }
        return FileHandle(fileDescriptor: fd, closeOnDealloc: true)
    }

    /// Process ids of the local workers still running.
    public var runningWorkers: [Int32] {
        processes.filter { $0.process.isRunning }.map { $0.process.processIdentifier }
    }

    /// How the local workers that have ended did.
    public var workerExits: [WorkerExit] {
        processes.filter { !$0.process.isRunning }.map { name, p in
            WorkerExit(
                name: name,
                pid: p.processIdentifier,
                status: p.terminationStatus,
                signaled: p.terminationReason == .uncaughtSignal
            )
        }
    }

    /// Reports each local worker process that has ended to the coordinator, which takes its
    /// worker out of the run at once (its shards go to the others). Called by the coordinator
    /// while work waits on the workers (``ClusterCoordinator/watch``).
    ///
    /// - Throws: ``ClusterError/Code/noWorkers`` when every local worker process has ended and no
    ///   other worker is registered: the work cannot go on, and waiting for the idle timeout
    ///   would not change that. The message names each worker and how it ended.
    public func watchLocalWorkers() throws {
        guard !processes.isEmpty, !finished else { return }
        for exit in workerExits where !reportedExits.contains(exit.pid) {
            reportedExits.insert(exit.pid)
            logger.error("a local worker process ended", metadata: ["worker": "\(exit)"])
            coordinator.workerProcessEnded(name: exit.name, processID: exit.pid, reason: "its process ended: \(exit)")
        }
        if runningWorkers.isEmpty && coordinator.workerCount == 0 {
            let exits = workerExits.map(\.description).joined(separator: "; ")
            throw ClusterError(
                .noWorkers,
                "every local worker process ended and no other worker is connected; "
                    + "the work cannot go on (\(exits))"
            )
        }
    }

    /// Waits until ``Options/awaitedWorkers`` workers have joined, or ``Options/joinTimeout``
    /// has passed, or a local worker has exited so that the count cannot be reached; the work
    /// then starts with the workers that came.
    ///
    /// - Throws: ``ClusterError/Code/noWorkers`` at once when every local worker exited and no
    ///   worker joined, with their exit reasons; ``ClusterCoordinator/Interrupted`` when the
    ///   coordinator's `shouldStop` turns true.
    public func awaitWorkers() throws {
        let awaited = options.awaitedWorkers
        guard awaited > 0 else { return }
        let deadline = ContinuousClock.now + .milliseconds(Int(clamping: options.joinTimeout))
        while try !coordinator.waitForWorkers(awaited, timeout: 200) {
            if !processes.isEmpty && runningWorkers.isEmpty && coordinator.workerCount == 0 {
                for exit in workerExits {
                    logger.error("a local worker process exited", metadata: ["worker": "\(exit)"])
                }
                throw ClusterError(
                    .noWorkers,
                    "no worker has been connected and none can come: every local worker process exited at start ("
                        + workerExits.map(\.description).joined(separator: "; ") + ")"
                )
            }
            let localLost = !processes.isEmpty && runningWorkers.count < min(awaited, processes.count)
            if localLost || ContinuousClock.now >= deadline {
                logger.warning(
                    "starting without every expected worker",
                    metadata: [
                        "joined": "\(coordinator.workerCount)", "expected": "\(awaited)",
                        "reason": "\(localLost ? "a local worker process exited" : "--join-timeout passed")",
                    ]
                )
                return
            }
        }
    }

    /// Waits for the workers, runs `body` with the coordinator, and ends the session: every
    /// worker is told to stop (exit code 0 and the reason `done` gives for the result; 1 on
    /// failure; `interruptedExitCode` on interruption) and the local ones are waited for.
    public func run<R>(
        _ body: (ClusterCoordinator) throws -> R,
        done: (R) -> String = { _ in "the work is complete" },
        interruptedExitCode: UInt8 = 1
    ) throws -> R {
        do {
            try awaitWorkers()
            let result = try body(coordinator)
            finish(exitCode: 0, reason: done(result))
            return result
        } catch let interrupted as ClusterCoordinator.Interrupted {
            finish(exitCode: interruptedExitCode, reason: "the work was interrupted")
            throw interrupted
        } catch {
            finish(exitCode: 1, reason: "the coordinator failed: \(error)", grace: 2)
            throw error
        }
    }

    /// Tells every worker to exit with `exitCode`, waits up to `grace` seconds for the local ones,
    /// then terminates (SIGTERM) and finally kills (SIGKILL) any that remain. Returns how each
    /// local worker ended. Later calls do nothing.
    @discardableResult
    public func finish(exitCode: UInt8, reason: String, grace: Double = 5) -> [WorkerExit] {
        guard !finished else { return workerExits }
        finished = true
        coordinator.shutdownWorkers(exitCode: exitCode, reason: reason)
        let deadline = Date().addingTimeInterval(grace)
        while !runningWorkers.isEmpty, Date() < deadline { usleep(20_000) }
        for (_, p) in processes where p.isRunning { kill(p.processIdentifier, SIGTERM) }
        let hard = Date().addingTimeInterval(2)
        while !runningWorkers.isEmpty, Date() < hard { usleep(20_000) }
        for (_, p) in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for (_, p) in processes { p.waitUntilExit() }
        return workerExits
    }
}
