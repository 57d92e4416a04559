import ArgumentParser
import Foundation
import MADE
import MADECluster

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw samples from a checkpoint and write them as a PNG grid."
    )

    @Option(help: "Checkpoint to sample from.")
    var checkpoint: String
    @Option(parsing: .unconditional, help: "Number of samples.")
    var count: Int = 64
    @Option(help: "PNG file to write (its name ends in .png).")
    var out: String
    @Option(
        name: [.customShort("s"), .long],
        parsing: .unconditional,
        help:
            """
            Masks in the ensemble; each sample draws one of them (a mixture). (default: the checkpoint's number of \
            masks)
            """
    )
    var samples: Int?
    @Option(help: "Seed of the draws; the same seed gives the same images.")
    var seed: UInt64 = 0
    @Option(parsing: .unconditional, help: "Images per row of the grid. (default: about the square root of the count)")
    var columns: Int?
    @Option(help: "Image shape as ROWSxCOLUMNS. (default: square when the dimension is a square, else one row)")
    var imageShape: String?
    @Option(help: "cached (one forward pass per sample) or naive (one per dimension).")
    var method: Sampler<Float>.Method = .cached
    @Option(help: "Pixels per side of each value in the grid.")
    var scale: Int = 3
    @Flag(
        help:
            """
            Show each pixel's probability (a Bernoulli's p, a Gaussian's mean) given the pixels drawn before it, \
            instead of the 0/1 draw.
            """
    )
    var mean = false
    @OptionGroup var cluster: ClusterArguments
    @OptionGroup var runtime: RuntimeArguments

    func validate() throws {
        try checkRange("--count", count, 1...Self.maxCount)
        try checkRange("--samples", samples, 1...Evaluator<Float>.maxMasks)
        try checkRange("--columns", columns, 1...count)
        guard (1...64).contains(scale) else { throw ValidationError("--scale must be between 1 and 64, not \(scale)") }
        guard out.lowercased().hasSuffix(".png") else {
            throw ValidationError("--out \(out): sample writes PNG images; give a name ending in .png")
        }
        if mean && cluster.isDistributed {
            throw ValidationError("--mean draws in this process; leave out --workers and --bind")
        }
    }

    /// Most samples one command draws.
    static let maxCount = 1 << 24

    func run() throws {
        BLAS.setThreads(runtime.threads)
        let saved = try Checkpoint.read(from: checkpoint)
        try saved.requireFinite(path: checkpoint)
        let c = saved.configuration
        let d = c.model.inputCount
        let (rows, cols) = try shape(dimension: d)
        let sampler = Sampler<Float>(configuration: c.model, distribution: c.distribution, runSeed: c.seed)
        let masks = samples ?? c.model.maskCount
        guard masks <= Evaluator<Float>.maxMasks else {
            throw CommandFailure(
                """
                \(checkpoint): the model has \(masks) masks, more than the \(Evaluator<Float>.maxMasks) a mixture can \
                draw from; give -s K (at most \(Evaluator<Float>.maxMasks))
                """
            )
        }
        // The values, then the grid's pixels.
        try MemoryBudget.require(
            MemoryBudget.product(count, d, 4 + scale * scale),
            for: "--count \(count) samples of \(d) values at --scale \(scale)"
        )
        let start = ContinuousClock.now
        let values: [Float]
        if cluster.isDistributed {
            // Workers need no data to sample; each draws whole batches from their own streams.
            let session = try cluster.session(
                configuration: c,
                dataFingerprint: nil,
                workerArguments: ["--no-data"],
                runtime: runtime,
                logger: CommandLineSupport.bootstrap(label: "made", verbose: runtime.verbose)
            )
            do {
                values = try session.run { coordinator in
                    try coordinator.drawSamples(
                        count: count,
                        dimension: d,
                        batchSize: sampler.batchSize,
                        masks: masks,
                        seed: seed,
                        method: method,
                        parameters: saved.modelParameters
                    )
                }
            } catch is ClusterCoordinator.Interrupted {
                throw ExitCode(130)
            }
        } else {
            values = sampler.sample(
                parameters: saved.modelParameters,
                count: count,
                masks: masks,
                seed: seed,
                method: method,
                means: mean
            )
        }
        let seconds = (ContinuousClock.now - start).seconds
        let grid = ImageGrid(
            images: values,
            imageRows: rows,
            imageColumns: cols,
            gridColumns: columns ?? Int(Double(count).squareRoot().rounded(.up)),
            scale: scale
        )
        try grid.writePNG(to: out)
        print(
            String(
                format: "sampled %d images (%dx%d) in %.3f s, %.1f samples/s -> %@ (%dx%d pixels)",
                count,
                rows,
                cols,
                seconds,
                Double(count) / seconds,
                out,
                grid.width,
                grid.height
            )
        )
    }

    func shape(dimension d: Int) throws -> (Int, Int) {
        if let imageShape {
            let parts = imageShape.lowercased().split(separator: "x").compactMap { Int($0) }
            guard parts.count == 2, parts[0] > 0, parts[1] > 0, MemoryBudget.product(parts[0], parts[1]) == d else {
                throw ValidationError("--image-shape \(imageShape) does not hold \(d) values (give ROWSxCOLUMNS)")
            }
            return (parts[0], parts[1])
        }
        let side = Int(Double(d).squareRoot().rounded())
        return side * side == d ? (side, side) : (1, d)
    }
}

extension Sampler.Method: ExpressibleByArgument {}
