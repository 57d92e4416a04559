import ArgumentParser
import Foundation
import MADE

/// The file formats `export` writes and `import` reads.
enum InterchangeFormat: String, ExpressibleByArgument, CaseIterable {
    case safetensors
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            """
            Write a checkpoint's model as the reference PyTorch MADE's state dict (net.0.weight, net.0.bias, \
            net.0.mask, ...), for one mask seed.
            """,
        usage: "made export --checkpoint <path> --out <file.safetensors> [--mask-seed <k>]",
        discussion: """
            Weights are out x in, as PyTorch holds them; the masks are those of --mask-seed, and the \
            metadata records the orderings and degrees (made.order, made.degrees) and the settings. \
            In PyTorch: model = MADE(nin, hiddens, nout, num_masks, natural_ordering); \
            model.load_state_dict(safetensors.torch.load_file(path)). A model with --direct \
            connections has no reference state dict and is refused.
            """
    )

    @Option(help: "Checkpoint to export.")
    var checkpoint: String
    @Option(help: "File format.")
    var format: InterchangeFormat = .safetensors
    @Option(help: "File to write.")
    var out: String
    @Option(help: "Mask seed whose masks the file holds (the reference's masks are those of one seed at a time).")
    var maskSeed: UInt64 = 0

    func run() throws {
        let saved = try Checkpoint.read(from: checkpoint)
        let file = try ReferenceStateDict.export(saved, maskSeed: maskSeed)
        try file.write(to: out)
        let c = saved.configuration.model
        print(
            """
            wrote \(out): \(file.tensors.count) tensors, nin \(c.inputCount), hiddens \
            \(c.hiddenSizes.map(String.init).joined(separator: ",")), 
            """
                + """
                nout \(c.outputCount), masks of seed \(maskSeed) of \(c.maskCount); \
                params_sha256=\(saved.parametersSHA256)
                """
        )
    }
}

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Make a checkpoint, for eval and sample, from a reference MADE state dict in safetensors form.",
        usage: "made import <file.safetensors> --checkpoint <path> [<options>]",
        discussion: """
            Shapes come from the tensors; the settings below default to the file's metadata, as \
            `made export` writes it. Masks are rebuilt from the run seed and the mask seed, so the \
            file's masks must be the ones this program draws for them; other masks are refused.
            """
    )

    @Argument(help: "The safetensors file.")
    var file: String
    @Option(help: "Checkpoint to write.")
    var checkpoint: String
    @Flag(help: "Replace --checkpoint when it already exists.")
    var overwrite = false
    @Option(help: "Run seed the masks derive from. (default: the metadata's made.run_seed)")
    var seed: UInt64?
    @Option(help: "Mask seed of the file's masks. (default: the metadata's made.mask_seed)")
    var maskSeed: UInt64?
    @Option(
        name: [.customShort("n"), .long],
        help: "Number of masks the model was trained with. (default: the metadata's made.num_masks)"
    )
    var numMasks: Int?
    @Flag(
        inversion: .prefixedNo,
        help: "Whether the inputs keep their natural order. (default: the metadata's made.natural_ordering)"
    )
    var naturalOrdering: Bool?
    @Option(help: "Output distribution. (default: the metadata's made.distribution, else from nout / nin)")
    var distribution: OutputDistribution?

    func run() throws {
        let tensors = try SafeTensors.read(from: file)
        let settings = ReferenceStateDict.Settings(
            runSeed: seed,
            maskSeed: maskSeed,
            maskCount: numMasks,
            naturalOrdering: naturalOrdering,
            distribution: distribution
        )
        let saved = try ReferenceStateDict.makeCheckpoint(tensors, settings: settings, path: file)
        // The same rules as a training run's checkpoint: one writer, and no run replaced unasked.
        try AtomicFile.checkWritableFolder(of: checkpoint)
        let lock = try CheckpointLock(checkpoint: checkpoint)
        guard overwrite || !FileManager.default.fileExists(atPath: checkpoint) else {
            throw CommandFailure(
                "\(checkpoint) already exists; add --overwrite to replace it, or give another --checkpoint"
            )
        }
        try saved.write(to: checkpoint)
        withExtendedLifetime(lock) {}
        var note = ""
        if let exported = tensors.metadata["made.params_sha256"] {
            note =
                exported == saved.parametersSHA256
                ? " (the parameters exported)" : " (not the parameters exported: changed since)"
        }
        print("wrote \(checkpoint)\(note)")
        print("params_sha256=\(saved.parametersSHA256)")
    }
}
