import ArgumentParser
import Foundation
import Logging
import MADE
import MADECluster

struct Bench: ParsableCommand {
    /// Samples per second of both methods on an untrained network of the benchmark's shape.
    func benchSampling() throws {
        let model = ModelConfiguration(inputCount: dimension, hiddenSizes: try parseHiddens(hiddens), naturalOrdering: false)
        let parameters = ParameterLayout(model).initialParameters(seed: 1, as: Float.self)
        var sampler = Sampler<Float>(configuration: model, distribution: .bernoulli, runSeed: 0)
        sampler.batchSize = 32
        func rate(_ method: Sampler<Float>.Method, count: Int) -> Double {
            let start = ContinuousClock.now
            _ = sampler.sample(parameters: parameters, count: count, seed: 7, method: method)
            return Double(count) / (ContinuousClock.now - start).seconds
        }
        _ = rate(.cached, count: 32)
        let cached = rate(.cached, count: 512)
        let naive = rate(.naive, count: 32)
        let sizes = ([dimension] + model.hiddenSizes + [dimension]).map(String.init).joined(separator: "-")
        print(String(format: "made_sampling cached_samples_per_s=%.1f naive_samples_per_s=%.2f speedup=%.1f", cached, naive, cached / naive)
              + " config=\(sizes) batch=32 threads=\(runtime.threads)")
    }

    static let configuration = CommandConfiguration(
        abstract: "Measure training throughput on random binary data: examples per second, peak memory, and with --workers the bytes on the wire.")

    @Option(help: "Timed steps.")
    var steps: Int = 300
    @Option(help: "Untimed steps first.")
    var warmup: Int = 20
    @Option(help: "Input dimension.")
    var dimension: Int = 784
    @Option(help: "Training examples held (bytes each).")
    var examples: Int = 50_000
    @Option(name: [.customShort("q"), .long], help: "Hidden layer sizes, comma-separated.")
    var hiddens: String = "500"
    @Option(help: "Examples per step.")
    var batchSize: Int = 100
    @Option(help: "Shards per step. (default: 1, or the number of workers)")
    var shards: Int?
    @Option(help: "Local worker processes (0: compute in this process).")
    var workers: Int = 0
    @Flag(help: "With --workers: send parameters and gradients over the socket, as to workers on other hosts.")
    var noSharedMemory = false
    @Flag(help: "Measure sampling instead: cached activations against one forward pass per dimension.")
    var sampling = false
    @OptionGroup var runtime: RuntimeArguments

    func validate() throws {
        guard steps >= 1, warmup >= 0, dimension >= 1, batchSize >= 1, examples >= batchSize, workers >= 0 else {
            throw ValidationError("need --steps >= 1, --warmup >= 0, --dimension >= 1, --examples >= --batch-size >= 1, --workers >= 0")
        }
        _ = try parseHiddens(hiddens)
    }

    func run() throws {
        BLAS.setThreads(runtime.threads)
        if sampling { return try benchSampling() }
        var rng = RandomStream(seed: 0, domain: .sampling)
        func bits(_ n: Int) -> DataMatrix {
            var b = [UInt8](repeating: 0, count: n * dimension)
            for i in b.indices { b[i] = UInt8(truncatingIfNeeded: rng.next() & 1) }
            return DataMatrix(binary: b, count: n, dimension: dimension)
        }
        let dataset = Dataset(train: bits(examples), valid: bits(100), test: bits(100), source: "random bits")
        let model = ModelConfiguration(inputCount: dimension, hiddenSizes: try parseHiddens(hiddens))
        let shardCount = shards ?? max(1, workers)
        let configuration = TrainingConfiguration(model: model, batchSize: batchSize, epochs: Int.max / 2, shards: shardCount)
        let trainer = try Trainer(configuration: configuration, dataset: Dataset(train: dataset.train, valid: nil, test: nil, source: dataset.source))
        let sizes = ([dimension] + model.hiddenSizes + [dimension]).map(String.init).joined(separator: "-")
        let settings = "config=\(sizes) batch=\(batchSize) shards=\(shardCount) threads=\(runtime.threads) steps=\(steps)"

        guard workers > 0 else {
            _ = try trainer.run(until: { trainer.state.step >= warmup })
            let start = ContinuousClock.now
            _ = try trainer.run(until: { trainer.state.step >= warmup + steps })
            let rate = Double(steps * batchSize) / (ContinuousClock.now - start).seconds
            print(String(format: "made_single examples_per_s=%.1f peak_rss_mib=%.1f", rate, CommandLineSupport.peakResidentMiB) + " " + settings)
            return
        }

        // Workers load the same bits from a file.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("made-bench-\(getpid())").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let file = folder + "/random.npz"
        try DatasetWriter.writeNPZ(dataset, to: file)
        let loaded = try DatasetLoader.load(path: file)
        var logger = Logger(label: "made.bench")
        logger.logLevel = .warning
        var options = ClusterCoordinator.Options(bind: noSharedMemory ? "tcp://127.0.0.1:0" : "ipc://\(folder)/coordinator.ipc")
        options.sharedMemory = !noSharedMemory
        let coordinator = try ClusterCoordinator(configuration: configuration, dataFingerprint: DataFingerprint.bytes(of: loaded),
                                                 options: options, logger: logger)
        let pool = LocalWorkerPool(logger: logger)
        try pool.start(count: workers) { i in
            ["worker", "--connect", coordinator.endpoint, "-d", file, "--name", "bench-\(i)", "--parent-pid", "\(getpid())", "--threads", "\(runtime.threads)"]
        }
        var stopped = false
        defer {
            if !stopped {
                coordinator.shutdownWorkers(reason: "benchmark failed")
                pool.stop()
            }
        }
        guard try coordinator.waitForWorkers(workers, timeout: 60_000) else {
            throw ValidationError("only \(coordinator.workerCount) of \(workers) workers connected within 60 s")
        }
        trainer.optimizerThreads = coordinator.threads
        let compute = { (plan: StepPlan) in try coordinator.computeStep(plan, parameters: trainer.state.parameters) }
        _ = try trainer.drive(until: { trainer.state.step >= warmup }, compute: compute)
        let bytesBefore = coordinator.bytesSent + coordinator.bytesReceived
        let start = ContinuousClock.now
        _ = try trainer.drive(until: { trainer.state.step >= warmup + steps }, compute: compute)
        let seconds = (ContinuousClock.now - start).seconds
        let bytesPerStep = Double(coordinator.bytesSent + coordinator.bytesReceived - bytesBefore) / Double(steps)
        let layout = ParameterLayout(model)
        let dense = Double(4 * layout.count)
        let packed = Double(4 * MaskPacking(maskSet: MaskSet(configuration: model, runSeed: 0, maskSeed: 0), layout: layout).count)
        let workerPeak = pool.running.compactMap { CommandLineSupport.peakResidentMiB(pid: $0) }.max() ?? .nan
        coordinator.shutdownWorkers(reason: "benchmark done")
        pool.stop()
        stopped = true
        print(String(format: "made_cluster workers=%d shared_memory=\(!noSharedMemory) examples_per_s=%.1f bytes_per_step=%.0f gradient_message_vs_dense=%.3f wire_per_step_vs_dense_gradient=%.3f coordinator_peak_rss_mib=%.1f worker_peak_rss_mib=%.1f",
                     workers, Double(steps * batchSize) / seconds, bytesPerStep, (packed + 64) / dense, bytesPerStep / dense,
                     CommandLineSupport.peakResidentMiB, workerPeak) + " " + settings)
    }
}
