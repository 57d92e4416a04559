import Foundation
import Logging
import MADE
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A failure while a command runs (a full disk, a dead worker, data that does not fit the
/// model): printed as one line, `Error: ...`, with exit status 1. ArgumentParser's
/// `ValidationError` is kept for flag validation, since it prints the usage text under it.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

/// Standard output that survives its reader going away: `made train ... | head -1` keeps
/// training and checkpointing after `head` exits. SIGPIPE is ignored (``ignoreBrokenPipe()``),
/// and the first write that fails with EPIPE stops all later output.
enum Console {
    private static let closed = Atomic<Bool>(false)

    /// Ignores SIGPIPE for the whole process: a write to a closed pipe then fails with EPIPE.
    static func ignoreBrokenPipe() {
        signal(SIGPIPE, SIG_IGN)
    }

    /// Writes `text` to standard output and flushes it, unless the reader has gone.
    static func write(_ text: String) {
        guard !closed.load(ordering: .relaxed) else { return }
        print(text, terminator: "")
        if fflush(nil) != 0, errno == EPIPE { closed.store(true, ordering: .relaxed) }
    }

    /// Writes `line` and a newline (see ``write(_:)``).
    static func line(_ line: String) { write(line + "\n") }

    /// Writes `text` to standard error in one call, whatever became of its reader.
    static func error(_ text: String) {
        _ = text.withCString { Glibc.write(STDERR_FILENO, $0, strlen($0)) }
    }
}

enum CommandLineSupport {
    /// Sends log lines to standard error and returns a logger for the command.
    ///
    /// Warnings and notices always show; the info lines of the cluster's comings and goings
    /// (a worker connecting, welcomed, joined, done) only with `verbose` (`-v`).
    static func bootstrap(label: String, verbose: Bool) -> Logger {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = verbose ? .info : .notice
            return handler
        }
        return Logger(label: label)
    }

    /// One line that says what is about to be trained.
    static func describe(_ c: TrainingConfiguration, dataset: Dataset, parameters: Int) -> String {
        let sizes = ([c.model.inputCount] + c.model.hiddenSizes + [c.model.outputCount]).map(String.init).joined(
            separator: "-"
        )
        let counts = [("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test)]
            .compactMap { name, split in split.map { "\(name) \($0.count)" } }.joined(separator: ", ")
        return
            "MADE \(sizes)\(c.model.directConnections ? " +direct" : ""), \(c.distribution), \(parameters) parameters, "
            + """
            \(c.model.maskCount) mask(s)\(c.masksPerStep > 1 ? " (\(c.masksPerStep) per step)" : ""), \
            \(c.model.naturalOrdering ? "natural" : "random") order; 
            """
            + "data \(dataset.source) (\(counts)); batch \(c.batchSize), \(c.shards) shard(s), seed \(c.seed)"
    }

    /// Peak resident memory of the running process `pid` (its `VmHWM`), in MiB. Unlike the
    /// children's `ru_maxrss`, it does not count what a spawned child saw of its parent before exec.
    static func peakResidentMiB(pid: Int32) -> Double? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
            let kib = line.split(separator: " ").dropFirst().first.flatMap({ Double($0) })
        else { return nil }
        return kib / 1024
    }

    /// CPU seconds this process has used so far, every thread counted.
    static var processCPUSeconds: Double {
        var t = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }

    /// Peak resident memory of this process, in MiB.
    static var peakResidentMiB: Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) / 1024
    }
}

/// Set by SIGINT or SIGTERM; the trainer checks it between steps and checkpoints before exiting.
///
/// An atomic, not a plain variable: the handler may run while the main thread is reading it.
enum SignalFlag {
    static let raised = Atomic<Int32>(0)

    static func install() {
        _ = raised.load(ordering: .relaxed)  // initialized before any handler can run
        signal(SIGINT) { _ in SignalFlag.raised.store(1, ordering: .relaxed) }
        signal(SIGTERM) { _ in SignalFlag.raised.store(1, ordering: .relaxed) }
        // A launcher may have started this process with these signals blocked; take them back.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    static var isSet: Bool { raised.load(ordering: .relaxed) != 0 }
}
