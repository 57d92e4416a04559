import Foundation

/// A model as the reference PyTorch implementation's `MADE` module holds it: its state dict, for
/// one mask seed, in safetensors form.
///
/// The reference builds `self.net = nn.Sequential(MaskedLinear, ReLU, MaskedLinear, ReLU, ...,
/// MaskedLinear)`, so weight layer `l` is module `net.{2l}`, with
/// - `net.{2l}.weight`: `out x in` (PyTorch's convention; ours is `in x out`, so it is transposed),
/// - `net.{2l}.bias`: `out`,
/// - `net.{2l}.mask`: `out x in`, 1 where the connection is kept (a float buffer, as the
///   reference registers it).
/// A PyTorch user loads the file into `MADE(nin, hiddens, nout, num_masks, natural_ordering)`
/// with `model.load_state_dict(safetensors.torch.load_file(path))`; calling the reference's
/// `update_masks()` afterwards would replace these masks by its own draws.
///
/// The metadata (strings) records what the state dict alone cannot say:
/// `made.nin`, `made.hiddens` (comma-separated), `made.nout`, `made.num_masks`,
/// `made.natural_ordering`, `made.distribution`, `made.run_seed`, `made.mask_seed`,
/// `made.order` (JSON: the position of each input in the order, the reference's `m[-1]`),
/// `made.degrees` (JSON: each hidden layer's unit degrees, the reference's `m[0..L-1]`),
/// `made.params_sha256` (of the parameters, as `made checksum` prints it) and `format: pt`.
///
/// The reference has no direct input-to-output connections, so a model with them has no such
/// state dict and is refused.
public enum ReferenceStateDict {
    /// The module index of weight layer `l` in `net`.
    static func module(_ l: Int) -> String { "net.\(2 * l)" }

    /// The state dict of `checkpoint`'s model under the masks of `maskSeed`.
    public static func export(_ checkpoint: Checkpoint, maskSeed: UInt64) throws -> SafeTensors {
        let c = checkpoint.configuration
        guard !c.model.directConnections else {
            throw MADEError(
                .invalidConfiguration,
                """
                the reference MADE has no direct input-to-output connections, so a model trained with --direct has no \
                state dict of its own to export
                """
            )
        }
        let parameters = checkpoint.modelParameters
        let layout = ParameterLayout(c.model)
        let maskSet = MaskSet(configuration: c.model, runSeed: c.seed, maskSeed: maskSeed)
        let masks = maskSet.layers
        var tensors: [(name: String, tensor: SafeTensors.Tensor)] = []
        for (l, m) in layout.layers.enumerated() {
            // Ours: row-major in x out. Theirs: out x in.
            var weight = [Float](repeating: 0, count: m.count)
            var mask = [Float](repeating: 0, count: m.count)
            for i in 0..<m.rows {
                for j in 0..<m.columns {
                    weight[j * m.rows + i] = parameters[m.offset + i * m.columns + j]
                    mask[j * m.rows + i] = Float(masks[l][i * m.columns + j])
                }
            }
            let bias = Array(parameters[m.biasOffset!..<(m.biasOffset! + m.columns)])
            tensors.append(("\(module(l)).weight", .init(shape: [m.columns, m.rows], values: weight)))
            tensors.append(("\(module(l)).bias", .init(shape: [m.columns], values: bias)))
            tensors.append(("\(module(l)).mask", .init(shape: [m.columns, m.rows], values: mask)))
        }
        func json(_ value: Any) -> String {
            String(decoding: (try? JSONSerialization.data(withJSONObject: value)) ?? Data("null".utf8), as: UTF8.self)
        }
        let metadata = [
            "format": "pt",
            "made.nin": "\(c.model.inputCount)",
            "made.hiddens": c.model.hiddenSizes.map(String.init).joined(separator: ","),
            "made.nout": "\(c.model.outputCount)",
            "made.num_masks": "\(c.model.maskCount)",
            "made.natural_ordering": "\(c.model.naturalOrdering)",
            "made.distribution": c.distribution.rawValue,
            "made.run_seed": "\(c.seed)",
            "made.mask_seed": "\(maskSeed)",
            "made.order": json(maskSet.order),
            "made.degrees": json(Array(maskSet.degrees.dropFirst())),
            "made.params_sha256": checkpoint.parametersSHA256,
        ]
        return SafeTensors(tensors: tensors, metadata: metadata)
    }

    /// What `import` needs beyond the tensors; nil fields come from the file's metadata.
    public struct Settings: Sendable {
        public var runSeed: UInt64?
        public var maskSeed: UInt64?
        public var maskCount: Int?
        public var naturalOrdering: Bool?
        public var distribution: OutputDistribution?
        public init(
            runSeed: UInt64? = nil,
            maskSeed: UInt64? = nil,
            maskCount: Int? = nil,
            naturalOrdering: Bool? = nil,
            distribution: OutputDistribution? = nil
        ) {
            self.runSeed = runSeed
            self.maskSeed = maskSeed
            self.maskCount = maskCount
            self.naturalOrdering = naturalOrdering
            self.distribution = distribution
        }
    }

    /// A checkpoint (for `eval` and `sample`) holding the model of a reference state dict.
    ///
    /// The shapes come from the tensors; the run seed, the mask seed of the file's masks, the
    /// number of masks, the ordering and the distribution from `settings` or else the metadata.
    /// Masks are not stored in checkpoints: they are rebuilt from `(run seed, mask seed)`. So the
    /// file's masks must be exactly those this program draws for its run seed and mask seed (as
    /// in a file `export` wrote); other masks (drawn by NumPy in the reference) are refused,
    /// since scoring the weights under different masks would give a different model.
    public static func makeCheckpoint(
        _ file: SafeTensors,
        settings: Settings,
        path: String = "safetensors"
    ) throws -> Checkpoint {
        func fail(_ message: String) -> MADEError { MADEError(.invalidData, message, path: path) }
        var layers: [(weight: SafeTensors.Tensor, bias: SafeTensors.Tensor, mask: SafeTensors.Tensor)] = []
        while let weight = file["\(module(layers.count)).weight"] {
            let name = module(layers.count)
            guard let bias = file["\(name).bias"] else { throw fail("\(name).weight has no \(name).bias") }
            guard let mask = file["\(name).mask"] else {
                throw fail("\(name).weight has no \(name).mask (the reference's MaskedLinear buffer)")
            }
            guard weight.shape.count == 2, mask.shape == weight.shape, bias.shape == [weight.shape[0]],
                weight.shape.allSatisfy({ $0 > 0 })
            else {
                throw fail(
                    """
                    \(name): weight \(weight.shape), bias \(bias.shape) and mask \(mask.shape) do not fit an out x in \
                    layer
                    """
                )
            }
            if let previous = layers.last, previous.weight.shape[0] != weight.shape[1] {
                throw fail(
                    """
                    \(name).weight takes \(weight.shape[1]) inputs, but the layer before gives \
                    \(previous.weight.shape[0])
                    """
                )
            }
            layers.append((weight, bias, mask))
        }
        guard !layers.isEmpty else { throw fail("no net.0.weight: not a state dict of the reference MADE") }
        let known = Set((0..<layers.count).flatMap { l in ["weight", "bias", "mask"].map { "\(module(l)).\($0)" } })
        if let extra = file.tensors.map(\.name).first(where: { !known.contains($0) }) {
            throw fail("unexpected tensor '\(extra)' (the reference MADE holds only net.{2l}.weight, .bias and .mask)")
        }
        let nin = layers[0].weight.shape[1]
        let nout = layers.last!.weight.shape[0]
        guard nout % nin == 0 else { throw fail("nout \(nout) is not a multiple of nin \(nin)") }
        let hiddens = layers.dropLast().map { $0.weight.shape[0] }

        func metadata<V>(_ key: String, _ flag: String, _ parse: (String) -> V?) throws -> V {
            guard let text = file.metadata[key] else { throw fail("no \(key) in the metadata: give \(flag)") }
            guard let value = parse(text) else { throw fail("metadata \(key) '\(text)' is not valid") }
            return value
        }
        let runSeed = try settings.runSeed ?? metadata("made.run_seed", "--seed") { UInt64($0) }
        let maskSeed = try settings.maskSeed ?? metadata("made.mask_seed", "--mask-seed") { UInt64($0) }
        let maskCount =
            try settings.maskCount
            ?? metadata("made.num_masks", "-n/--num-masks") { Int($0).flatMap { $0 >= 1 ? $0 : nil } }
        let natural =
            try settings.naturalOrdering ?? metadata("made.natural_ordering", "--natural-ordering or not") { Bool($0) }
        let distribution: OutputDistribution
        if let given = settings.distribution
            ?? file.metadata["made.distribution"].flatMap(OutputDistribution.init(rawValue:))
        {
            distribution = given
        } else if let guess = OutputDistribution.allCases.first(where: { $0.parametersPerDimension == nout / nin }) {
            distribution = guess
        } else {
            throw fail("nout = \(nout / nin) x nin fits no output distribution")
        }
        if let text = file.metadata["made.hiddens"], text != hiddens.map(String.init).joined(separator: ",") {
            throw fail("the metadata says hidden sizes \(text), the tensors \(hiddens)")
        }

        let model = ModelConfiguration(
            inputCount: nin,
            hiddenSizes: hiddens,
            outputMultiplier: nout / nin,
            naturalOrdering: natural,
            directConnections: false,
            maskCount: maskCount
        )
        var configuration = TrainingConfiguration(model: model, distribution: distribution, seed: runSeed, epochs: 0)
        configuration.evaluationMasks = 1
        do { try configuration.validate() } catch { throw fail("\(error)") }

        let masks = MaskSet(configuration: model, runSeed: runSeed, maskSeed: maskSeed).layers
        let layout = ParameterLayout(model)
        var parameters = [Float](repeating: 0, count: layout.count)
        for (l, m) in layout.layers.enumerated() {
            let (weight, bias, mask) = layers[l]
            var differences = 0
            for i in 0..<m.rows {
                for j in 0..<m.columns {
                    parameters[m.offset + i * m.columns + j] = weight.values[j * m.rows + i]
                    if (mask.values[j * m.rows + i] != 0) != (masks[l][i * m.columns + j] != 0) { differences += 1 }
                }
            }
            guard differences == 0 else {
                throw fail(
                    """
                    the masks of \(module(l)) differ in \(differences) places from those this program draws for run \
                    seed \(runSeed) and mask seed \(maskSeed); 
                    """
                        + """
                        masks are rebuilt from those two numbers, so only masks drawn here (as `made export` writes \
                        them) can be imported
                        """
                )
            }
            for j in 0..<m.columns { parameters[m.biasOffset! + j] = bias.values[j] }
        }
        guard parameters.allSatisfy(\.isFinite) else { throw fail("the weights hold values that are not finite") }
        var state = TrainingState(configuration: configuration)
        state.parameters = parameters
        return Checkpoint(configuration: configuration, state: state, dataFingerprint: "imported")
    }
}
