import Foundation
import MADE
import MADECluster

#if canImport(Glibc)
import Glibc
#endif

/// What a person sees while training runs, and the metrics file.
///
/// On a terminal one live line is redrawn a few times a second: epoch, step, loss, examples/s,
/// time left and workers alive. Otherwise (a file, a pipe, a batch system's log) a plain line is
/// printed every `plainInterval` seconds. Each finished epoch prints a line either way. Rates
/// come from a ``ProgressMeter``: steps of this process only, start-up and pauses excluded.
final class ProgressReport {
    let stepsPerEpoch: Int
    let batchSize: Int
    let epochs: Int
    let interactive: Bool
    let plainInterval: Double
    var metrics: MetricsFile?
    /// Workers alive and the last step's per-worker timings, when training through a cluster.
    var cluster: (() -> (alive: Int, timings: [ClusterCoordinator.StepTiming]))?

    private let clockStart = ContinuousClock.now
    private var lastDrawn = ContinuousClock.now
    private var meter: ProgressMeter
    private var liveLineShown = false

    /// Seconds since this report was made.
    private var now: Double { (ContinuousClock.now - clockStart).seconds }

    init(
        stepsPerEpoch: Int,
        batchSize: Int,
        epochs: Int,
        interactive: Bool = isatty(STDOUT_FILENO) != 0,
        plainInterval: Double = 10
    ) {
        self.stepsPerEpoch = stepsPerEpoch
        self.batchSize = batchSize
        self.epochs = epochs
        self.interactive = interactive
        self.plainInterval = plainInterval
        self.meter = ProgressMeter(batchSize: batchSize, minimumSteps: min(10, max(1, stepsPerEpoch)))
    }

    func handle(_ event: TrainingEvent) {
        switch event {
        case .step(let step, let epoch, let loss, let learningRate):
            let instant = meter.stepEnded(at: now)
            let info = cluster?()
            metrics?.step(
                step: step,
                epoch: epoch,
                loss: loss,
                learningRate: learningRate,
                examplesPerSecond: instant,
                timings: info?.timings ?? []
            )
            // Nothing to show until a rate is known: ten steps measured (fewer in a short epoch).
            guard let rate = meter.examplesPerSecond else { return }
            let drawnAt = ContinuousClock.now
            guard (drawnAt - lastDrawn).seconds >= (interactive ? 0.2 : plainInterval) else { return }
            lastDrawn = drawnAt
            let total = epochs.multipliedReportingOverflow(by: stepsPerEpoch)
            let stepsLeft = total.overflow ? Int.max : max(0, total.partialValue - step)
            let remaining = meter.secondsLeft(steps: stepsLeft, epochEnds: epochs - epoch) ?? .infinity
            var line = String(
                format: "epoch %d/%d step %d loss %.4f %.0f ex/s eta %@",
                epoch + 1,
                epochs,
                step,
                loss,
                rate,
                Self.duration(remaining)
            )
            if let info { line += " workers \(info.alive)" }
            if interactive {
                Console.write("\r\u{1B}[K" + line)
                liveLineShown = true
            } else {
                Console.line(line)
            }
        case .epoch(let record, let improved):
            clearLiveLine()
            metrics?.epoch(record)
            let rate = meter.epochEnded(seconds: record.seconds)
            var line = String(format: "epoch %d/%d train_nll %.4f", record.epoch + 1, epochs, record.trainNLL)
            if let v = record.validNLL { line += String(format: " valid_nll %.4f%@", v, improved ? " *" : "") }
            line += String(format: " lr %.1e %.0f ex/s", record.learningRate, rate)
            Console.line(line)
            meter.restart(at: now)
        case .checkpoint:
            // Writing it is no step: the next step's time starts here.
            meter.restart(at: now)
        }
    }

    /// Ends the live line so that later output starts on a fresh line.
    func clearLiveLine() {
        guard liveLineShown else { return }
        Console.write("\r\u{1B}[K")
        liveLineShown = false
    }

    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds < 1e15 else { return "?" }
        let s = Int(seconds.rounded())
        if s >= 3600 { return "\(s / 3600)h\(String(format: "%02d", (s % 3600) / 60))m" }
        if s >= 60 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
        return "\(s)s"
    }
}

/// Training metrics as JSON Lines: one object when a process starts (or resumes) the run, then
/// one per step and per epoch, each with the run's id.
///
///     {"type":"start","run":"20261130-053512-4f2a9c01","step":0}
///     {"type":"step","run":"20261130-053512-4f2a9c01","step":12,"epoch":0,"loss":203.1,"lr":0.001,
///      "examples_per_s":18000.5,"workers":[{"name":"local-0","shards":1,"compute_ms":2.7,"wait_ms":0.4}]}
///     {"type":"epoch","run":"20261130-053512-4f2a9c01","epoch":0,"train_nll":240.2,"valid_nll":238.9,"lr":0.001,
///      "seconds":3.1}
///
/// `step` counts steps done over the whole run; `epoch` is 0-based; `examples_per_s` is null for
/// a step whose start is unknown (the first of a process). Appends: a run resumed from its
/// checkpoint keeps its id and continues its curves (steps redone after an interruption appear
/// twice; the later record counts), and another run in the same file has another id.
final class MetricsFile {
    let path: String
    private let descriptor: Int32
    private var buffer = ""
    /// `"run":"ID",` as every record carries it.
    private let runField: String
    /// Set after the first failed write: the file is then left alone, and training goes on.
    private(set) var failed = false

    init(path: String, runID: String, startStep: Int) throws {
        self.path = path
        runField = "\"run\":\(Self.string(runID)),"
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw MADEError(
                .io,
                "cannot open the metrics file for writing: \(String(cString: strerror(errno)))",
                path: path
            )
        }
        descriptor = fd
        buffer += "{\"type\":\"start\",\(runField)\"step\":\(startStep)}\n"
    }

    deinit {
        flush()
        close(descriptor)
    }

    func step(
        step: Int,
        epoch: Int,
        loss: Double,
        learningRate: Double,
        examplesPerSecond: Double?,
        timings: [ClusterCoordinator.StepTiming]
    ) {
        var line =
            "{\"type\":\"step\",\(runField)\"step\":\(step),\"epoch\":\(epoch),"
            + "\"loss\":\(Self.number(loss)),\"lr\":\(Self.number(learningRate)),"
            + "\"examples_per_s\":\(examplesPerSecond.map(Self.number) ?? "null")"
        if !timings.isEmpty {
            line +=
                ",\"workers\":["
                + timings.map {
                    let name = Self.string($0.worker)
                    let compute = Self.number($0.computeMilliseconds)
                    let wait = Self.number($0.waitMilliseconds)
                    return "{\"name\":\(name),\"shards\":\($0.shards),\"compute_ms\":\(compute),\"wait_ms\":\(wait)}"
                }.joined(separator: ",") + "]"
        }
        guard !failed else { return }
        buffer += line + "}\n"
        if buffer.utf8.count > 1 << 16 { flush() }
    }

    func epoch(_ record: EpochRecord) {
        guard !failed else { return }
        buffer +=
            "{\"type\":\"epoch\",\(runField)\"epoch\":\(record.epoch),\"train_nll\":\(Self.number(record.trainNLL)),"
            + "\"valid_nll\":\(record.validNLL.map(Self.number) ?? "null"),\"lr\":\(Self.number(record.learningRate)),"
            + "\"seconds\":\(Self.number(record.seconds))}\n"
        flush()
    }

    /// Appends what is buffered. A failed write (a full disk) is reported once on standard
    /// error and ends the metrics, not the training.
    func flush() {
        guard !buffer.isEmpty, !failed else { return }
        let bytes = Array(buffer.utf8)
        buffer = ""
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                failed = true
                Console.error(
                    """
                    warning: \(path): cannot write the metrics (\(String(cString: strerror(code)))); training goes on \
                    without them\n
                    """
                )
                return
            }
            written += n
        }
    }

    static func number(_ v: Double) -> String {
        v.isFinite ? "\(v)" : "null"
    }

    static func string(_ s: String) -> String {
        let data = (try? JSONEncoder().encode(s)) ?? Data("\"\"".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

/// Identities of training runs: the UTC time the run started and 32 random bits, such as
/// `20261130-053512-4f2a9c01`. Sorts by start time; kept in the checkpoint across resumes.
enum RunID {
    static func make(now: Date = Date()) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        return formatter.string(from: now) + "-" + String(format: "%08x", UInt32.random(in: .min ... .max))
    }
}
