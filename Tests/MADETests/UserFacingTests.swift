import Foundation
import Testing

@testable import MADE

@Suite("Progress rates")
struct ProgressMeterTests {
    @Test("the live rate leaves out the time before the first step ends and the pauses after restarts")
    func liveRate() throws {
        var meter = ProgressMeter(batchSize: 100)
        // Start-up (loading, workers joining) takes 60 s before the first step ends.
        #expect(meter.stepEnded(at: 60) == nil)
        #expect(meter.examplesPerSecond == nil)
        // Then a step every 10 ms: 10000 examples/s, not 100 / 60 s.
        for k in 1...50 { meter.stepEnded(at: 60 + 0.01 * Double(k)) }
        let rate = try #require(meter.examplesPerSecond)
        #expect(abs(rate - 10_000) < 1e-6 * 10_000)
        #expect(abs(try #require(meter.secondsLeft(steps: 1000)) - 10) < 1e-6)
        // A 30 s validation pause, then a restart: the next step counts from the restart.
        meter.restart(at: 90.5)
        let first = meter.stepEnded(at: 90.52)
        #expect(abs(try #require(first) - 5000) < 1e-6)
        #expect(abs(try #require(meter.examplesPerSecond) - 5000) < 1e-6)
        // The time left counts the epoch ends to come at the pause of the last one.
        _ = meter.epochEnded(seconds: 1)
        let left = try #require(meter.secondsLeft(steps: 100, epochEnds: 2))
        let expected: Double = 100.0 * 100.0 / 5000.0 + 2.0 * 30.0
        #expect(abs(left - expected) < 1e-6)
    }

    @Test("no rate is given before the minimum number of steps is measured")
    func minimumSteps() {
        var meter = ProgressMeter(batchSize: 10, minimumSteps: 3)
        meter.restart(at: 0)
        meter.stepEnded(at: 1)
        meter.stepEnded(at: 2)
        #expect(meter.examplesPerSecond == nil)
        meter.stepEnded(at: 3)
        #expect(meter.examplesPerSecond == 10)
    }

    @Test("the rate is measured over the last steps only")
    func window() throws {
        var meter = ProgressMeter(batchSize: 10, window: 4)
        var t = 0.0
        for _ in 0..<100 {
            t += 1
            meter.stepEnded(at: t)
        }  // 10 examples/s
        for _ in 0..<4 {
            t += 0.1
            meter.stepEnded(at: t)
        }  // then 100 examples/s
        #expect(abs(try #require(meter.examplesPerSecond) - 100) < 1e-9)
    }

    @Test("an epoch's rate counts only the steps this process ran in it (a resume mid-epoch)")
    func epochAfterResume() {
        var meter = ProgressMeter(batchSize: 100)
        // Resumed at step 480 of a 500-step epoch: 20 steps here, in 0.1 s.
        for k in 1...20 { meter.stepEnded(at: 0.005 * Double(k)) }
        #expect(abs(meter.epochEnded(seconds: 0.1) - 20_000) < 1e-6)  // not 500 x 100 / 0.1
        // The next, whole epoch counts from zero again.
        for k in 1...500 { meter.stepEnded(at: 1 + 0.005 * Double(k)) }
        #expect(abs(meter.epochEnded(seconds: 2.5) - 20_000) < 1e-6)
        #expect(meter.epochEnded(seconds: 0) == 0)
    }
}

@Suite("Pictures of samples")
struct SamplePictureTests {
    @Test("--scale makes every value a square of pixels, padding included")
    func scaledGrid() {
        let images: [Float] = [0, 1, 1, 0]  // one 2x2 image
        let grid = ImageGrid(images: images, imageRows: 2, imageColumns: 2, gridColumns: 1, padding: 1, scale: 3)
        #expect(grid.width == 2 * 3 + 2 * 3 && grid.height == grid.width)
        func pixel(_ r: Int, _ c: Int) -> UInt8 { grid.pixels[r * grid.width + c] }
        #expect((0..<3).allSatisfy { pixel($0, $0) == 128 })  // padding, 3 pixels wide
        #expect((3..<6).allSatisfy { r in (3..<6).allSatisfy { pixel(r, $0) == 0 } })
        #expect((3..<6).allSatisfy { r in (6..<9).allSatisfy { pixel(r, $0) == 255 } })
        #expect((6..<9).allSatisfy { r in (3..<6).allSatisfy { pixel(r, $0) == 255 } })
    }

    @Test(
        "means are the probabilities of the same chain the draws follow, in both methods",
        arguments: [OutputDistribution.bernoulli, .gaussian]
    )
    func means(distribution: OutputDistribution) throws {
        let c = ModelConfiguration(
            inputCount: 9,
            hiddenSizes: [14, 11],
            outputMultiplier: distribution.parametersPerDimension,
            naturalOrdering: false,
            maskCount: 2
        )
        let parameters = ParameterLayout(c).initialParameters(seed: 4, as: Double.self).map { $0 * 3 }
        var sampler = Sampler<Double>(configuration: c, distribution: distribution, runSeed: 2)
        sampler.batchSize = 5
        let draws = sampler.sample(parameters: parameters, count: 12, masks: 2, seed: 8)
        let cached = sampler.sample(parameters: parameters, count: 12, masks: 2, seed: 8, means: true)
        let naive = sampler.sample(parameters: parameters, count: 12, masks: 2, seed: 8, method: .naive, means: true)
        #expect(zip(cached, naive).allSatisfy { abs($0 - $1) < 1e-9 })
        // Recompute each mean from the draws: one forward pass of the draws' own mask and prefix.
        let maskSeeds = (0..<12).map { i -> UInt64 in
            var rng = RandomStream(seed: 8, domain: .sampling, index: UInt64(i / 5))
            let picks = (0..<min(5, 12 - 5 * (i / 5))).map { _ in rng.uniform(below: 2) }
            return picks[i % 5]
        }
        for i in 0..<12 {
            let masks = MaskSet(configuration: c, runSeed: 2, maskSeed: maskSeeds[i])
            let workspace = NetworkWorkspace<Double>(configuration: c, capacity: 1)
            workspace.setMasks(masks)
            workspace.prepare(parameters: parameters)
            workspace.loadRows(Array(draws[(9 * i)..<(9 * i + 9)]))
            workspace.forward()
            for d in 0..<9 {
                let z = workspace.output(row: 0, unit: d)
                let expected = distribution == .bernoulli ? 1 / (1 + exp(-z)) : z
                #expect(abs(cached[9 * i + d] - expected) < 1e-9, "sample \(i) dimension \(d)")
            }
        }
        if distribution == .bernoulli {
            #expect(cached.allSatisfy { $0 > 0 && $0 < 1 })
            #expect(draws.allSatisfy { $0 == 0 || $0 == 1 })
        }
    }
}

@Suite("Safetensors and the reference state dict")
struct SafeTensorsTests {
    @Test("a file written here reads back the same, with the layout the format prescribes")
    func roundTrip() throws {
        let file = SafeTensors(
            tensors: [
                ("a.weight", .init(shape: [2, 3], values: [1, -2, 3.5, 0, .leastNonzeroMagnitude, -0.0])),
                ("a.bias", .init(shape: [2], values: [7, 8])),
            ],
            metadata: ["format": "pt", "note": "x"]
        )
        let bytes = try file.encoded()
        let length = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        #expect(length % 8 == 0 && bytes[8] == UInt8(ascii: "{"))
        #expect(bytes.count == 8 + length + 4 * 8)
        let header = try #require(
            try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + length)])) as? [String: Any]
        )
        let weight = try #require(header["a.weight"] as? [String: Any])
        #expect(
            weight["dtype"] as? String == "F32" && weight["shape"] as? [Int] == [2, 3]
                && weight["data_offsets"] as? [Int] == [0, 24]
        )
        #expect(Array(bytes[(8 + length)..<(8 + length + 4)]) == [0, 0, 0x80, 0x3F])  // 1.0f, little-endian
        let back = try SafeTensors.decode(bytes)
        #expect(back == file)
    }

    @Test(
        "damaged files get a clear error",
        arguments: ["short", "length", "json", "offsets", "gap", "dtype", "huge", "fraction", "metadata"]
    )
    func damaged(kind: String) throws {
        let good = try SafeTensors(tensors: [("t", .init(shape: [2], values: [1, 2]))]).encoded()
        var bytes = good
        func header(_ text: String, data: Int) -> [UInt8] {
            var json = Array(text.utf8)
            while json.count % 8 != 0 { json.append(0x20) }
            var out: [UInt8] = []
            withUnsafeBytes(of: UInt64(json.count).littleEndian) { out += $0 }
            return out + json + [UInt8](repeating: 0, count: data)
        }
        switch kind {
        case "short": bytes = Array(good.prefix(5))
        case "length": bytes[7] = 0x7F
        case "json": bytes = header("[1, 2]", data: 0)
        case "offsets": bytes = header(#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: 8)
        case "gap": bytes = header(#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: 8)
        case "huge": bytes = header(#"{"t":{"dtype":"F32","shape":[1e300, 1e300],"data_offsets":[0,8]}}"#, data: 8)
        case "fraction": bytes = header(#"{"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}}"#, data: 8)
        case "metadata":
            bytes = header(#"{"__metadata__":{"a":1},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: 8)
        default: bytes = header(#"{"t":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#, data: 4)
        }
        #expect(throws: MADEError.self) { try SafeTensors.decode(bytes, path: "bad.safetensors") }
    }

    @Test("export then import gives the same parameters; foreign masks and direct connections are refused")
    func referenceStateDict() throws {
        let model = ModelConfiguration(inputCount: 6, hiddenSizes: [8, 5], naturalOrdering: false, maskCount: 3)
        var state = TrainingState(configuration: TrainingConfiguration(model: model, seed: 4))
        state.parameters = state.parameters.map { $0 * 1.5 }
        let checkpoint = Checkpoint(
            configuration: TrainingConfiguration(model: model, seed: 4),
            state: state,
            dataFingerprint: "x"
        )
        let file = try ReferenceStateDict.export(checkpoint, maskSeed: 2)
        #expect(
            file.tensors.map(\.name) == [
                "net.0.weight", "net.0.bias", "net.0.mask", "net.2.weight", "net.2.bias", "net.2.mask",
                "net.4.weight", "net.4.bias", "net.4.mask",
            ]
        )
        #expect(file["net.0.weight"]?.shape == [8, 6] && file["net.4.mask"]?.shape == [6, 5])
        // PyTorch's out x in: weight[j][i] is our W[i][j].
        let layout = ParameterLayout(model)
        #expect(
            file["net.2.weight"]!.values[3 * 8 + 7] == checkpoint.modelParameters[layout.layers[1].offset + 7 * 5 + 3]
        )
        let masks = MaskSet(configuration: model, runSeed: 4, maskSeed: 2)
        #expect(file.metadata["made.order"] == "[" + masks.order.map(String.init).joined(separator: ",") + "]")
        let back = try ReferenceStateDict.makeCheckpoint(try SafeTensors.decode(try file.encoded()), settings: .init())
        #expect(back.parametersSHA256 == checkpoint.parametersSHA256)
        #expect(back.configuration.model == model && back.configuration.seed == 4)
        #expect(try Checkpoint.decode(try back.encoded()).parametersSHA256 == checkpoint.parametersSHA256)

        // Masks drawn elsewhere cannot be rebuilt here.
        var foreign = file
        let index = foreign.tensors.firstIndex { $0.name == "net.2.mask" }!
        foreign.tensors[index].tensor.values[0] = 1 - foreign.tensors[index].tensor.values[0]
        #expect(throws: MADEError.self) { try ReferenceStateDict.makeCheckpoint(foreign, settings: .init()) }
        // The wrong mask seed is the same mistake.
        #expect(throws: MADEError.self) { try ReferenceStateDict.makeCheckpoint(file, settings: .init(maskSeed: 0)) }
        // Without metadata the settings must be given.
        let bare = SafeTensors(tensors: file.tensors)
        #expect(throws: MADEError.self) { try ReferenceStateDict.makeCheckpoint(bare, settings: .init()) }
        let given = try ReferenceStateDict.makeCheckpoint(
            bare,
            settings: .init(runSeed: 4, maskSeed: 2, maskCount: 3, naturalOrdering: false)
        )
        #expect(given.parametersSHA256 == checkpoint.parametersSHA256)

        var direct = model
        direct.directConnections = true
        let withDirect = Checkpoint(
            configuration: TrainingConfiguration(model: direct),
            state: TrainingState(configuration: TrainingConfiguration(model: direct)),
            dataFingerprint: "x"
        )
        #expect(throws: MADEError.self) { try ReferenceStateDict.export(withDirect, maskSeed: 0) }
    }

    @Test("checkpoints record their data source and run id, and checkpoints without them still read")
    func checkpointFields() throws {
        let configuration = TrainingConfiguration(model: ModelConfiguration(inputCount: 4, hiddenSizes: [3]))
        let old = Checkpoint(
            configuration: configuration,
            state: TrainingState(configuration: configuration),
            dataFingerprint: "f"
        )
        let oldBytes = try old.encoded()
        #expect(!String(decoding: oldBytes, as: UTF8.self).contains("dataSource"))  // the old header, field for field
        let readOld = try Checkpoint.decode(oldBytes)
        #expect(readOld.dataSource == nil && readOld.runID == nil)
        var new = old
        new.dataSource = DataSource(
            path: "data/../data/x.npz",
            options: DataOptions(binarization: .threshold(100), validationFraction: 0.25)
        )
        new.runID = "20261130-000000-00000000"
        let readNew = try Checkpoint.decode(try new.encoded())
        #expect(readNew.dataSource == new.dataSource && readNew.runID == new.runID)
        #expect(
            readNew.dataSource?.path.hasPrefix("/") == true && readNew.dataSource?.path.hasSuffix("/data/x.npz") == true
        )
    }
}
