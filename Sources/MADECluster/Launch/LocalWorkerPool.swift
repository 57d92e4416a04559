import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Worker processes started on this machine, shut down with the pool: on success, on failure
/// and on interruption, so none is left behind.
///
/// Each child gets `--parent-pid` of this process and exits by itself if this process dies
/// first, even by SIGKILL.
public final class LocalWorkerPool {
    public private(set) var processes: [Process] = []
    public let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    /// The path of the running executable (from /proc/self/exe where available).
    public static var currentExecutable: String {
        if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return path }
        return CommandLine.arguments[0]
    }

    /// Starts `count` processes of `executable` with `arguments(i)`.
    public func start(count: Int, executable: String = LocalWorkerPool.currentExecutable, arguments: (Int) -> [String]) throws {
        for i in 0..<count {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments(i)
            try process.run()
            processes.append(process)
            logger.debug("started worker process", metadata: ["pid": "\(process.processIdentifier)"])
        }
    }

    /// Process ids of the children still running.
    public var running: [Int32] { processes.filter(\.isRunning).map(\.processIdentifier) }

    /// Waits up to `grace` seconds for the children to exit, then terminates (SIGTERM) and
    /// finally kills (SIGKILL) any that remain. Returns the exit codes.
    @discardableResult
    public func stop(grace: Double = 5) -> [Int32] {
        let deadline = Date().addingTimeInterval(grace)
        while processes.contains(where: \.isRunning), Date() < deadline { usleep(20_000) }
        for p in processes where p.isRunning { kill(p.processIdentifier, SIGTERM) }
        let hard = Date().addingTimeInterval(2)
        while processes.contains(where: \.isRunning), Date() < hard { usleep(20_000) }
        for p in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in processes { p.waitUntilExit() }
        return processes.map(\.terminationStatus)
    }

    deinit {
        for p in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }
}
