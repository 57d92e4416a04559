import ArgumentParser
import Foundation
import MADE

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure training throughput on random binary data: examples per second and peak memory.")

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
    @Option(help: "Shards per step.")
    var shards: Int = 1
    @OptionGroup var runtime: RuntimeArguments

    func validate() throws {
        guard steps >= 1, warmup >= 0, dimension >= 1, batchSize >= 1, examples >= batchSize else {
            throw ValidationError("need --steps >= 1, --warmup >= 0, --dimension >= 1 and --examples >= --batch-size >= 1")
        }
        _ = try parseHiddens(hiddens)
    }

    func run() throws {
        BLAS.setThreads(runtime.threads)
        var rng = RandomStream(seed: 0, domain: .sampling)
        var bits = [UInt8](repeating: 0, count: examples * dimension)
        for i in bits.indices { bits[i] = UInt8(truncatingIfNeeded: rng.next() & 1) }
        let dataset = Dataset(train: DataMatrix(binary: bits, count: examples, dimension: dimension), valid: nil, test: nil, source: "random bits")
        let model = ModelConfiguration(inputCount: dimension, hiddenSizes: try parseHiddens(hiddens))
        let configuration = TrainingConfiguration(model: model, batchSize: batchSize, epochs: Int.max / 2, shards: shards)
        let trainer = try Trainer(configuration: configuration, dataset: dataset)
        _ = try trainer.run(until: { trainer.state.step >= warmup })
        let start = ContinuousClock.now
        _ = try trainer.run(until: { trainer.state.step >= warmup + steps })
        let seconds = (ContinuousClock.now - start).seconds
        let rate = Double(steps * batchSize) / seconds
        let sizes = ([dimension] + model.hiddenSizes + [dimension]).map(String.init).joined(separator: "-")
        print(String(format: "made_single examples_per_s=%.1f peak_rss_mib=%.1f", rate, CommandLineSupport.peakResidentMiB)
              + " config=\(sizes) batch=\(batchSize) shards=\(shards) threads=\(runtime.threads) steps=\(steps)")
    }
}
