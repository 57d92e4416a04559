import ArgumentParser
import Foundation
import Logging
import MADE
import MADECluster

struct Bench: ParsableCommand {
    /// Samples per second of both methods on an untrained network of the benchmark's shape.
    func benchSampling() throws {
        let model = ModelConfiguration(
            inputCount: dimension,
            hiddenSizes: try parseHiddens(hiddens),
            naturalOrdering: false
        )
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
        print(
            String(
                format: "made_sampling cached_samples_per_s=%.1f naive_samples_per_s=%.2f speedup=%.1f",
                cached,
                naive,
                cached / naive
            )
                + " config=\(sizes) batch=32 threads=\(runtime.threads)"
        )
    }

    static let configuration = CommandConfiguration(
        abstract:
            """
            Measure training throughput on real data (-d) or random binary data: examples per second of the sparse \
            and the dense kernel side by side, peak memory, and with --workers the bytes on the wire.
            """
    )

    /// Which kernels to time.
    enum KernelChoice: String, ExpressibleByArgument, CaseIterable {
        case both, sparse, dense
        var kernels: [ComputeKernel] {
            switch self {
            case .both: return [.dense, .sparse]
            case .sparse: return [.sparse]
            case .dense: return [.dense]
            }
        }
    }

    @Option(help: "Timed steps.")
    var steps: Int = 300
    @Option(help: "Untimed steps first.")
    var warmup: Int = 20
    @Option(help: "Input dimension of random data.")
    var dimension: Int = 784
    @Option(help: "Random training examples held (bytes each).")
    var examples: Int = 50_000
    @Option(help: "Fraction of ones in random data.")
    var density: Double = 0.5
    @OptionGroup var data: DataArguments<BenchmarkData>
    @Option(help: "Kernels to time: both (dense and sparse, alternating in rounds, with their ratio), sparse or dense.")
    var kernel: KernelChoice = .both
    @Option(help: "Rounds each kernel's timed steps are split into, alternating kernels, with --kernel both.")
    var rounds: Int = 5
    @Option(
        help:
            """
            Also write the 0/1 training data the benchmark trains on to this .npz file (train_data.npy), for a peer \
            benchmark.
            """
    )
    var saveData: String?
    @Option(
        help:
            """
            Density of binary inputs up to which the sparse kernel sums selected rows in the first layer (a \
            measurement aid). (default: the built-in crossover, \(NetworkWorkspace<Float>.defaultSparseInputLimit))
            """
    )
    var sparseInputLimit: Double?
    @Option(name: [.customShort("q"), .long], help: "Hidden layer sizes, comma-separated.")
    var hiddens: String = "500"
    @Option(help: "Examples per step.")
    var batchSize: Int = 100
    @Option(help: "Shards per step. (default: 1, or the number of workers)")
    var shards: Int?
    @Option(help: "Masks trained in every step (the ensemble has as many masks).")
    var masksPerStep: Int = 1
    @Option(
        help: ArgumentHelp(
            "With --masks-per-step above 1: how a task of shards of several masks travels over "
                + "the socket, packed by the union of their masks or dense."
        )
    )
    var mixedPacking: ClusterCoordinator.MixedMaskPacking = .union
    @Option(help: "Local worker processes (0: compute in this process).")
    var workers: Int = 0
    @Flag(help: "With --workers: send parameters and gradients over the socket, as to workers on other hosts.")
    var noSharedMemory = false
    @Option(
        help: ArgumentHelp(
            "Simulate hosts on this one: for each count H of the comma-separated list, H relays (`made relay`) of "
                + """
                --workers workers each, and, side by side, H x --workers workers dialing the coordinator directly; \
                all 
                """
                + """
                over loopback sockets, as from other hosts. Prints the coordinator's bytes per step of each, and per 
                """
                + "host against one host.",
            valueName: "list"
        )
    )
    var hosts: String?
    @Flag(help: "Measure sampling instead: cached activations against one forward pass per dimension.")
    var sampling = false
    @Option(
        help: ArgumentHelp(
            "Listen here for workers started elsewhere instead of starting local ones (e.g. "
                + "tcp://10.0.0.1:29500); they run `made worker -d FILE --connect ...` on a FILE written by `made "
                + "bench --save-data FILE` with the same data flags."
        )
    )
    var bind: String?
    @Option(help: "With --bind: workers to wait for (180 s at most) before the timed steps.")
    var waitForWorkers: Int = 1
    @Option(help: "With --bind: CURVE key folder made by `made keygen`.")
    var keys: String?
    @Flag(
        help: ArgumentHelp(
            "With --bind beyond loopback: no CURVE (only on a trusted network). Without --bind: the local "
                + "workers connect without CURVE, to measure what encryption costs."
        )
    )
    var insecure = false
    @Option(
        help: ArgumentHelp(
            "A simulation, to measure the system's own overhead with more workers than cores: workers sleep "
                + "this many milliseconds per shard instead of computing and answer zero gradients; `measured` "
                + "times a shard in this process first. The output says simulated.",
            valueName: "ms|measured"
        )
    )
    var simulateComputeMs: SimulatedCompute?
    @OptionGroup var runtime: RuntimeArguments

    /// The compute time a simulated worker sleeps per shard.
    enum SimulatedCompute: ExpressibleByArgument, Equatable {
        case milliseconds(Double)
        case measured

        init?(argument: String) {
            if argument == "measured" {
                self = .measured
            } else if let ms = Double(argument), ms >= 0, ms <= 60_000 {
                self = .milliseconds(ms)
            } else {
                return nil
            }
        }
    }

    func validate() throws {
        guard steps >= 1, warmup >= 0, dimension >= 1, batchSize >= 1, examples >= batchSize, workers >= 0, rounds >= 1
        else {
            throw ValidationError(
                """
                need --steps >= 1, --warmup >= 0, --dimension >= 1, --examples >= --batch-size >= 1, --workers >= 0, \
                --rounds >= 1
                """
            )
        }
        guard density >= 0, density <= 1 else {
            throw ValidationError("--density must be between 0 and 1, not \(density)")
        }
        if let sparseInputLimit, !(sparseInputLimit >= 0 && sparseInputLimit <= 1) {
            throw ValidationError("--sparse-input-limit must be between 0 and 1")
        }
        try checkRange("--steps", steps, 1...1_000_000_000)
        try checkRange("--warmup", warmup, 0...1_000_000_000)
        try checkRange("--dimension", dimension, 1...Int(Int32.max))
        try checkRange("--batch-size", batchSize, 1...WireFormat.Limits().maxRows)
        try checkRange("--workers", workers, 0...ClusterArguments.maxWorkers)
        try checkRange("--shards", shards, 1...batchSize)
        _ = try parseHiddens(hiddens)
        guard masksPerStep >= 1 else {
            throw ValidationError("--masks-per-step must be at least 1, not \(masksPerStep)")
        }
        if hosts != nil {
            guard let counts = hostCounts, !counts.isEmpty, counts.allSatisfy({ $0 >= 1 && $0 <= 64 }), workers >= 1
            else {
                throw ValidationError(
                    "--hosts takes host counts from 1 to 64, comma-separated, such as 1,2,4, with --workers N per host"
                )
            }
            try checkRange("--workers x hosts", counts.max()! * workers, 1...ClusterArguments.maxWorkers)
        }
        if let shards, shards % masksPerStep != 0 {
            throw ValidationError(
                "--masks-per-step \(masksPerStep) must divide --shards \(shards): each mask trains on whole shards"
            )
        }
        if let bind {
            do { try Endpoint.validate(bind) } catch { throw ValidationError("--bind \(error)") }
            guard workers == 0 else {
                throw ValidationError(
                    "--bind waits for workers started elsewhere; --workers starts local ones: give one"
                )
            }
            try checkRange("--wait-for-workers", waitForWorkers, 1...ClusterArguments.maxWorkers)
            if !Endpoint.isLocal(bind) && keys == nil && !insecure {
                throw ValidationError(
                    "listening on \(bind) needs CURVE keys (--keys DIR) or --insecure on a trusted network"
                )
            }
        }
        if hosts != nil && bind != nil {
            throw ValidationError(
                "--hosts simulates hosts on this one; --bind waits for workers started elsewhere: give one"
            )
        }
        if hosts != nil && simulateComputeMs != nil {
            throw ValidationError("--simulate-compute-ms runs with --workers or --bind, not --hosts")
        }
        if simulateComputeMs != nil && workers == 0 && bind == nil {
            throw ValidationError("--simulate-compute-ms simulates workers: give --workers N or --bind")
        }
    }

    /// Whether the steps go to worker processes.
    var isCluster: Bool { workers > 0 || bind != nil }

    func run() throws {
        BLAS.setThreads(runtime.threads)
        if sampling { return try benchSampling() }
        try MemoryBudget.require(
            MemoryBudget.product(examples + 200, dimension),
            for: "--examples \(examples) of --dimension \(dimension)"
        )
        var rng = RandomStream(seed: 0, domain: .sampling)
        let dataset: Dataset
        if let path = data.dataPath {
            let loaded = try DatasetLoader.load(path: path, options: data.options)
            guard let train = loaded.train else { throw CommandFailure("\(path): no training split") }
            guard train.isBinary else {
                throw CommandFailure("\(path): the benchmark trains Bernoulli outputs on 0/1 data (choose --binarize)")
            }
            dataset = Dataset(train: train, valid: nil, test: nil, source: path)
        } else {
            var b = [UInt8](repeating: 0, count: examples * dimension)
            let threshold = UInt64((density * 0x1p53).rounded())
            for i in b.indices { b[i] = (rng.next() >> 11) < threshold ? 1 : 0 }
            dataset = Dataset(
                train: DataMatrix(binary: b, count: examples, dimension: dimension),
                valid: nil,
                test: nil,
                source: "random bits"
            )
        }
        let train = dataset.train!
        // The file form of the data (workers and peers read it) holds a token validation and test
        // split, as a data file must; the benchmark trains on the training split only.
        let few = train.rows(0..<min(100, train.count))
        let fileDataset = Dataset(train: train, valid: few, test: few, source: dataset.source)
        if let saveData { try DatasetWriter.writeNPZ(fileDataset, to: saveData) }
        guard train.count >= batchSize else {
            throw CommandFailure("\(train.count) training examples are fewer than one batch of \(batchSize)")
        }
        let ones: Int
        if case .binary(let bytes) = train.storage { ones = bytes.reduce(0) { $0 + Int($1) } } else { ones = 0 }
        let dataDensity = Double(ones) / Double(max(1, train.count * train.dimension))
        let model = ModelConfiguration(
            inputCount: train.dimension,
            hiddenSizes: try parseHiddens(hiddens),
            maskCount: masksPerStep
        )
        // With --hosts, every configuration cuts the batch alike: one block of --workers shards per host at
        // the most hosts.
        let shardCount =
            shards
            ?? TrainingConfiguration.defaultShards(
                workers: hostCounts.map { workers * ($0.max() ?? 1) } ?? workerCount,
                masksPerStep: masksPerStep
            )
        func configuration(_ kernel: ComputeKernel) -> TrainingConfiguration {
            TrainingConfiguration(
                model: model,
                batchSize: batchSize,
                epochs: TrainingConfiguration.maxEpochs,
                shards: shardCount,
                masksPerStep: masksPerStep,
                kernel: kernel
            )
        }
        try configuration(.sparse).validate()
        let sizes = ([model.inputCount] + model.hiddenSizes + [model.inputCount]).map(String.init).joined(
            separator: "-"
        )
        let settings =
            """
            config=\(sizes) batch=\(batchSize) shards=\(shardCount) \
            masks_per_step=\(masksPerStep)\(masksPerStep > 1 ? " mixed_packing=\(mixedPacking.rawValue)" : "") \
            threads=\(runtime.threads) steps=\(steps)
            """
        let limit = sparseInputLimit ?? NetworkWorkspace<Float>.defaultSparseInputLimit
        /// The data and the fraction of the dense multiply-adds the sparse kernel does (mask seed 0).
        func dataLine() -> String {
            let fraction = MaskSet(configuration: model, runSeed: 0, maskSeed: 0).blocks
                .trainingStepFraction(density: dataDensity, selectedRows: dataDensity <= limit)
            return String(
                format: "data=%@ density=%.4f sparse_flops_vs_dense=%.3f",
                dataset.source == "random bits" ? "random" : dataset.source,
                dataDensity,
                fraction
            )
        }
        let kernels = kernel.kernels
        let roundCount = kernels.count > 1 ? rounds : 1

        guard isCluster else {
            var trainers: [Trainer] = []
            for k in kernels {
                let trainer = try Trainer(configuration: configuration(k), dataset: dataset)
                if let sparseInputLimit { trainer.sparseInputLimit = sparseInputLimit }
                _ = try trainer.run(until: { trainer.step >= warmup })
                trainers.append(trainer)
            }
            var seconds = [Double](repeating: 0, count: kernels.count)
            var cpuSeconds = [Double](repeating: 0, count: kernels.count)
            var done = [Int](repeating: 0, count: kernels.count)
            for round in 0..<roundCount {
                let share = steps * (round + 1) / roundCount - steps * round / roundCount
                for (i, trainer) in trainers.enumerated() {
                    let target = trainer.step + share
                    let start = ContinuousClock.now
                    let cpuStart = CommandLineSupport.processCPUSeconds
                    _ = try trainer.run(until: { trainer.step >= target })
                    cpuSeconds[i] += CommandLineSupport.processCPUSeconds - cpuStart
                    seconds[i] += (ContinuousClock.now - start).seconds
                    done[i] += share
                }
            }
            let rates = (0..<kernels.count).map { Double(done[$0] * batchSize) / seconds[$0] }
            for (i, k) in kernels.enumerated() {
                print(
                    String(format: "made_single kernel=%@ examples_per_s=%.1f", k.rawValue, rates[i]) + " " + settings
                )
            }
            if kernels.count == 2 {
                // CPU time beside wall time: on a shared machine it moves less with the others' load.
                print(
                    String(
                        format: "made_single_sparse_vs_dense ratio=%.3f sparse=%.1f dense=%.1f rounds=%d "
                            + "cpu_ratio=%.3f",
                        rates[1] / rates[0],
                        rates[1],
                        rates[0],
                        roundCount,
                        cpuSeconds[0] / cpuSeconds[1]
                    )
                )
            }
            let peak = CommandLineSupport.peakResidentMiB
            print(String(format: "made_bench %@ peak_rss_mib=%.1f", dataLine(), peak) + " kernels=\(kernel.rawValue)")
            return
        }

        // Workers load the same bits from a file.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("made-bench-\(getpid())").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let file = folder + "/bench.npz"
        try DatasetWriter.writeNPZ(fileDataset, to: file)
        let loaded = try DatasetLoader.load(path: file)
        if let hostCounts {
            return try benchHosts(
                hostCounts,
                configuration: configuration(kernels.last!),
                dataset: dataset,
                loaded: loaded,
                file: file,
                folder: folder,
                settings: settings
            )
        }
        var rates: [Double] = []
        for k in kernels {
            let rate = try benchCluster(
                configuration: configuration(k),
                dataset: dataset,
                loaded: loaded,
                file: file,
                folder: folder,
                settings: settings
            )
            rates.append(rate)
        }
        if kernels.count == 2 {
            print(
                String(
                    format: "made_cluster_sparse_vs_dense workers=%d ratio=%.3f sparse=%.1f dense=%.1f",
                    workerCount,
                    rates[1] / rates[0],
                    rates[1],
                    rates[0]
                )
            )
        }
        print(String(format: "made_bench %@", dataLine()) + " kernels=\(kernel.rawValue)")
    }

    /// The host counts of `--hosts`.
    var hostCounts: [Int]? {
        hosts.map { $0.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) ?? 0 } }
    }

    /// One measured cluster run: examples per second and the coordinator's bytes per step.
    struct ClusterRate {
        var examplesPerSecond: Double
        var bytesPerStep: Double
        var checksum: String
    }

    /// For each host count, trains through that many relays of `--workers` workers and through
    /// as many workers dialing directly, alternating, and prints the coordinator's bytes per step
    /// of both and per host against one host.
    func benchHosts(
        _ counts: [Int],
        configuration: TrainingConfiguration,
        dataset: Dataset,
        loaded: Dataset,
        file: String,
        folder: String,
        settings: String
    ) throws {
        var perHostAtOne: Double?
        for hosts in counts {
            let relayed = try runCluster(
                configuration: configuration,
                dataset: dataset,
                loaded: loaded,
                file: file,
                processes: hosts,
                relayWorkers: workers
            )
            let direct = try runCluster(
                configuration: configuration,
                dataset: dataset,
                loaded: loaded,
                file: file,
                processes: hosts * workers,
                relayWorkers: nil
            )
            let perHost = relayed.bytesPerStep / Double(hosts)
            if perHostAtOne == nil { perHostAtOne = perHost }
            let format =
                "made_hosts hosts=%d workers_per_host=%d relay_bytes_per_step=%.0f "
                + "relay_bytes_per_step_per_host=%.0f per_host_vs_first=%.4f direct_bytes_per_step=%.0f "
                + "direct_vs_relay=%.3f relay_examples_per_s=%.1f direct_examples_per_s=%.1f same_checksum=%@"
            let same = relayed.checksum == direct.checksum ? "true" : "false"
            print(
                String(
                    format: format,
                    hosts,
                    workers,
                    relayed.bytesPerStep,
                    perHost,
                    perHost / perHostAtOne!,
                    direct.bytesPerStep,
                    direct.bytesPerStep / relayed.bytesPerStep,
                    relayed.examplesPerSecond,
                    direct.examplesPerSecond,
                    same
                ) + " " + settings
            )
        }
    }

    /// Trains `--warmup` then `--steps` steps through `processes` local processes dialing the
    /// coordinator over loopback TCP without shared memory (relays of `relayWorkers` workers, or
    /// workers), and returns what was measured over the timed steps.
    func runCluster(
        configuration: TrainingConfiguration,
        dataset: Dataset,
        loaded: Dataset,
        file: String,
        processes: Int,
        relayWorkers: Int?
    ) throws -> ClusterRate {
        let trainer = try Trainer(configuration: configuration, dataset: dataset)
        var logger = Logger(label: "made.bench")
        logger.logLevel = .warning
        var options = ClusterSession.Options(coordinator: .init(bind: "tcp://127.0.0.1:0"))
        options.coordinator.sharedMemory = false
        options.localWorkers = processes
        options.relayWorkers = relayWorkers
        options.workerArguments = ["-d", file]
        options.workerThreads = runtime.threads
        options.awaitedWorkers = processes * (relayWorkers ?? 1)
        options.namePrefix = relayWorkers == nil ? "bench" : "bench-host"
        let session = try ClusterSession(
            configuration: configuration,
            dataFingerprint: DataFingerprint.bytes(of: loaded),
            options: options,
            logger: logger
        )
        defer { session.finish(exitCode: 1, reason: "benchmark failed") }
        try session.awaitWorkers()
        let coordinator = session.coordinator
        guard coordinator.capacity == options.awaitedWorkers else {
            throw CommandFailure(
                "only \(coordinator.capacity) of \(options.awaitedWorkers) workers connected within 60 s"
            )
        }
        trainer.optimizerThreads = coordinator.threads
        let compute = { (plan: StepPlan) in try coordinator.computeStep(plan, parameters: trainer.state.parameters) }
        _ = try trainer.drive(until: { trainer.state.step >= warmup }, compute: compute)
        let bytesBefore = coordinator.bytesSent + coordinator.bytesReceived
        let start = ContinuousClock.now
        _ = try trainer.drive(until: { trainer.state.step >= warmup + steps }, compute: compute)
        let seconds = (ContinuousClock.now - start).seconds
        let bytes = Double(coordinator.bytesSent + coordinator.bytesReceived - bytesBefore) / Double(steps)
        session.finish(exitCode: 0, reason: "benchmark done")
        return ClusterRate(
            examplesPerSecond: Double(steps * batchSize) / seconds,
            bytesPerStep: bytes,
            checksum: trainer.checkpoint.parametersSHA256
        )
    }

    /// Workers the cluster benchmark runs with: local ones, or those awaited at --bind.
    var workerCount: Int { bind == nil ? workers : waitForWorkers }

    /// Milliseconds one shard of `configuration` takes in this process: the mean of 20 steps
    /// after 5 untimed ones, divided by the shards per step.
    func measuredShardMilliseconds(configuration: TrainingConfiguration, dataset: Dataset) throws -> Double {
        let trainer = try Trainer(configuration: configuration, dataset: dataset)
        _ = try trainer.run(until: { trainer.step >= 5 })
        let start = ContinuousClock.now
        _ = try trainer.run(until: { trainer.step >= 25 })
        return (ContinuousClock.now - start).seconds * 1000 / 20 / Double(configuration.shards)
    }

    /// Trains with the cluster's workers and prints the cluster line; returns examples per second.
    ///
    /// Besides examples per second it prints the bytes through the coordinator per step, in
    /// all and per host (by the workers' IP addresses), and per worker and step the time spent
    /// computing and the rest (from handing out a task to holding its result). With
    /// --simulate-compute-ms the workers sleep instead of computing: the line is
    /// `made_cluster_simulated`, and the examples per second of workers that only computed
    /// (`ideal_examples_per_s`, from the busiest worker's shards) give the share the system
    /// itself costs.
    func benchCluster(
        configuration: TrainingConfiguration,
        dataset: Dataset,
        loaded: Dataset,
        file: String,
        folder: String,
        settings: String
    ) throws -> Double {
        let model = configuration.model
        let trainer = try Trainer(configuration: configuration, dataset: dataset)
        var logger = Logger(label: "made.bench")
        logger.logLevel = .warning
        var simulatedMilliseconds: Double?
        switch simulateComputeMs {
        case .milliseconds(let ms): simulatedMilliseconds = ms
        case .measured:
            simulatedMilliseconds = try measuredShardMilliseconds(configuration: configuration, dataset: dataset)
        case nil: break
        }
        let defaultBind =
            noSharedMemory ? "tcp://127.0.0.1:0" : "ipc://\(folder)/coordinator-\(configuration.kernel).ipc"
        var options = ClusterSession.Options(coordinator: .init(bind: bind ?? defaultBind))
        options.coordinator.sharedMemory = !noSharedMemory
        options.coordinator.mixedMaskPacking = mixedPacking
        options.coordinator.simulatedMicrosecondsPerShard = simulatedMilliseconds.map { UInt32(($0 * 1000).rounded()) }
        if bind != nil {
            options.coordinator.allowInsecure = insecure
            if let keys { options.coordinator.security = try ClusterSecurity.Server.load(folder: keys) }
            options.ephemeralKeys = false  // workers started elsewhere bring their own keys, or none
            options.awaitedWorkers = waitForWorkers
            // Many workers started elsewhere on a loaded machine take a while to load their data.
            options.joinTimeout = 180_000
        } else {
            options.localWorkers = workers
            options.ephemeralKeys = !insecure
            options.workerArguments = ["-d", file]
            options.workerThreads = runtime.threads
            options.awaitedWorkers = workers
        }
        options.namePrefix = "bench"
        let session = try ClusterSession(
            configuration: configuration,
            dataFingerprint: DataFingerprint.bytes(of: loaded),
            options: options,
            logger: logger
        )
        defer { session.finish(exitCode: 1, reason: "benchmark failed") }
        if bind != nil {
            // Workers started by hand need the endpoint.
            FileHandle.standardError.write(
                Data("made bench: waiting for \(waitForWorkers) workers at \(session.coordinator.endpoint)\n".utf8)
            )
        }
        try session.awaitWorkers()
        let coordinator = session.coordinator
        let count = workerCount
        // A relay counts the workers behind it.
        guard coordinator.capacity == count else {
            throw CommandFailure(
                "only \(coordinator.capacity) of \(count) workers connected within \(options.joinTimeout / 1000) s"
            )
        }
        trainer.optimizerThreads = coordinator.threads
        // Time within the exchange (tasks out, results in and reduced); the rest of a step is the
        // coordinator's own work between exchanges (Adam, the next step's plan), which no worker overlaps.
        var exchangeSeconds = 0.0
        let compute = { (plan: StepPlan, held: Trainer.HeldParameters?) in
            let begun = ContinuousClock.now
            defer { exchangeSeconds += (ContinuousClock.now - begun).seconds }
            return try TrainingRun.step(plan, held: held, coordinator: coordinator, trainer: trainer)
        }
        let holding = { coordinator.heldOffer }
        _ = try trainer.drive(until: { trainer.step >= warmup }, offeringHeld: holding, compute: compute)
        let bytesBefore = coordinator.bytesSent + coordinator.bytesReceived
        let hostsBefore = coordinator.trafficByHost
        let timingBefore = coordinator.timingTotals
        exchangeSeconds = 0
        let start = ContinuousClock.now
        _ = try trainer.drive(until: { trainer.step >= warmup + steps }, offeringHeld: holding, compute: compute)
        let seconds = (ContinuousClock.now - start).seconds
        let betweenMs = (seconds - exchangeSeconds) * 1000 / Double(steps)
        let bytesPerStep = Double(coordinator.bytesSent + coordinator.bytesReceived - bytesBefore) / Double(steps)
        let hostBytes = coordinator.trafficByHost.map { host, traffic in
            Double(traffic.total - (hostsBefore[host]?.total ?? 0)) / Double(steps)
        }
        let timing = coordinator.timingTotals
        let perWorkerStep = Double(steps * max(1, coordinator.workerCount))  // per peer: a relay answers once
        let computeMs = (timing.computeMilliseconds - timingBefore.computeMilliseconds) / perWorkerStep
        let waitMs = (timing.waitMilliseconds - timingBefore.waitMilliseconds) / perWorkerStep
        let layout = ParameterLayout(model)
        let dense = Double(4 * layout.count)
        // The last step's tasks as they were packed: by their one mask, the union of their masks,
        // the step's union (in shared memory), or every parameter.
        let packed = 4 * coordinator.lastStepPackedValues
        let workerPeak = session.runningWorkers.compactMap { CommandLineSupport.peakResidentMiB(pid: $0) }.max() ?? .nan
        session.finish(exitCode: 0, reason: "benchmark done")
        let rate = Double(steps * batchSize) / seconds
        var line = String(
            format:
                "%@ kernel=%@ workers=%d shared_memory=\(!noSharedMemory) examples_per_s=%.1f step_ms=%.3f "
                + "bytes_per_step=%.0f hosts=%d host_bytes_per_step=%.0f compute_ms_per_step=%.3f "
                + "wait_ms_per_step=%.3f gradient_message_vs_dense=%.3f wire_per_step_vs_dense_gradient=%.3f "
                + "coordinator_peak_rss_mib=%.1f worker_peak_rss_mib=%.1f",
            simulatedMilliseconds == nil ? "made_cluster" : "made_cluster_simulated",
            configuration.kernel.rawValue,
            count,
            rate,
            seconds * 1000 / Double(steps),
            bytesPerStep,
            hostBytes.count,
            hostBytes.isEmpty ? 0 : hostBytes.reduce(0, +) / Double(hostBytes.count),
            computeMs,
            waitMs,
            (packed + 64) / dense,
            bytesPerStep / dense,
            CommandLineSupport.peakResidentMiB,
            workerPeak
        )
        if let ms = simulatedMilliseconds {
            // Each worker holds whole aligned blocks; the busiest one computes ceil(shards / workers) shards a step.
            let busiest = Double((configuration.shards + count - 1) / count)
            let ideal = Double(batchSize) / (busiest * ms / 1000)
            line += String(
                format: " simulated_compute_ms_per_shard=%.3f ideal_examples_per_s=%.1f efficiency=%.3f",
                ms,
                ideal,
                rate / ideal
            )
        }
        // The exchange split: from handing out the tasks to the last result, then the coordinator's sum.
        let gradientSteps = Double(max(1, timing.gradientSteps - timingBefore.gradientSteps))
        let resultsMs = (timing.resultsMilliseconds - timingBefore.resultsMilliseconds) / gradientSteps
        let sumMs = (timing.sumMilliseconds - timingBefore.sumMilliseconds) / gradientSteps
        line += String(
            format: " between_exchanges_ms_per_step=%.3f results_ms_per_step=%.3f sum_ms_per_step=%.3f",
            betweenMs,
            resultsMs,
            sumMs
        )
        print(line + " " + settings)
        return rate
    }
}

extension ClusterCoordinator.MixedMaskPacking: ExpressibleByArgument {}
