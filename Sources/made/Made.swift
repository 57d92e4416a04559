import ArgumentParser

@main
struct Made: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "made",
        abstract: "MADE: masked autoencoders for distribution estimation.",
        version: "0.1.0",
        subcommands: [Train.self, Coordinator.self, Worker.self, Launch.self, Keygen.self, Eval.self, Sample.self, Checksum.self, Bench.self]
    )
}
