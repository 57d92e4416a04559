import ArgumentParser
import Foundation

@main
struct Made: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "made",
        abstract: "MADE: masked autoencoders for distribution estimation.",
        version: "0.1.0",
        subcommands: [
            Train.self, Coordinator.self, Worker.self, Relay.self, Launch.self, Keygen.self, Eval.self, Sample.self,
            Checksum.self, Export.self, Import.self, Bench.self,
        ]
    )

    /// Parses and runs the command. An error goes to standard error in one write, so that the
    /// messages of processes sharing the stream (a coordinator and its local workers) do not
    /// interleave; help and version go to standard output.
    static func main() {
        Console.ignoreBrokenPipe()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            let text = fullMessage(for: error)
            if !text.isEmpty {
                if code == .success {
                    Console.line(text)
                } else {
                    Console.error(text + "\n")
                }
            }
            Foundation.exit(code.rawValue)
        }
    }
}
