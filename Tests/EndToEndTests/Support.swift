import Foundation
import MADE

#if canImport(Glibc)
import Glibc
#endif

/// Running the real `made` executable, with timeouts, on small data made for the test.
enum EndToEnd {
    /// The `made` built beside the test bundle, or `$MADE_BIN`.
    static var executable: String {
        if let path = ProcessInfo.processInfo.environment["MADE_BIN"] { return path }
        let folder = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        // The test runner is either the bundle itself or a helper inside it.
        for candidate in [
            folder, folder.deletingLastPathComponent(), folder.deletingLastPathComponent().deletingLastPathComponent(),
        ] {
            let path = candidate.appendingPathComponent("made").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return folder.appendingPathComponent("made").path
    }

    /// A fresh folder for one test.
    /// The repository root: this file is Tests/EndToEndTests/Support.swift.
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Whether a worker's log says it computed at least one task.
    static func computedTasks(_ log: String) -> Bool {
        log.range(of: "tasks=[1-9]", options: .regularExpression) != nil
    }

    static func folder(_ name: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("made-e2e-\(getpid())-\(name)").path
        try? FileManager.default.removeItem(atPath: path)
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A small binary data set with structure: rows repeat a random prefix. Written as .npz.
    static func writeData(to folder: String, count: Int = 600, dimension: Int = 24, seed: UInt64 = 5) throws -> String {
        var rng = RandomStream(seed: seed, domain: .sampling)
        func split(_ n: Int) -> DataMatrix {
            var bytes = [UInt8](repeating: 0, count: n * dimension)
            for r in 0..<n {
                for j in 0..<dimension {
                    bytes[r * dimension + j] =
                        j < dimension / 2 ? UInt8(rng.uniform(below: 2)) : bytes[r * dimension + j - dimension / 2]
                }
            }
            return DataMatrix(binary: bytes, count: n, dimension: dimension)
        }
        let path = folder + "/data.npz"
        try DatasetWriter.writeNPZ(
            Dataset(train: split(count), valid: split(100), test: split(100), source: "test"),
            to: path
        )
        return path
    }

    /// A process whose output goes to files, killed when the handle goes away.
    final class Child {
        let process = Process()
        let outputPath: String
        let errorPath: String

        init(_ arguments: [String], folder: String, name: String, environment: [String: String]? = nil) throws {
            outputPath = folder + "/\(name).out"
            errorPath = folder + "/\(name).err"
            _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
            _ = FileManager.default.createFile(atPath: errorPath, contents: nil)
            process.executableURL = URL(fileURLWithPath: EndToEnd.executable)
            process.arguments = arguments
            if let environment { process.environment = environment }
            process.standardOutput = FileHandle(forWritingAtPath: outputPath)
            process.standardError = FileHandle(forWritingAtPath: errorPath)
            try process.run()
        }

        var pid: Int32 { process.processIdentifier }
        var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }
        var errors: String { (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "" }

        /// Waits for the exit; kills the process and returns nil after `timeout` seconds.
        func wait(timeout: Double) -> Int32? {
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning {
                kill(pid, SIGKILL)
                process.waitUntilExit()
                return nil
            }
            return process.terminationStatus
        }

        func signal(_ s: Int32) { kill(pid, s) }

        /// Waits until `predicate` holds for the output or error text, up to `timeout` seconds.
        func waitFor(timeout: Double, _ predicate: (String) -> Bool) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if predicate(output + errors) { return true }
                if !process.isRunning { return predicate(output + errors) }
                usleep(20_000)
            }
            return false
        }

        deinit {
            if process.isRunning {
                kill(pid, SIGKILL)
                process.waitUntilExit()
            }
        }
    }

    /// Runs `made` to completion and returns (exit code, stdout, stderr); nil code on timeout.
    static func run(
        _ arguments: [String],
        folder: String,
        name: String,
        timeout: Double = 300
    ) throws -> (Int32?, String, String) {
        let child = try Child(arguments, folder: folder, name: name)
        let code = child.wait(timeout: timeout)
        return (code, child.output, child.errors)
    }

    /// Runs a script of the repository with bash; returns its exit code and its output and errors.
    static func script(
        _ path: String,
        _ arguments: [String],
        folder: String,
        name: String,
        environment extra: [String: String] = [:]
    ) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [EndToEnd.repositoryRoot.appendingPathComponent(path).path] + arguments
        var environment = ProcessInfo.processInfo.environment
        environment["MADE_BIN"] = EndToEnd.executable
        for (k, v) in extra { environment[k] = v }
        p.environment = environment
        let outputPath = folder + "/\(name).out"
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        p.standardOutput = out
        p.standardError = out
        try p.run()
        p.waitUntilExit()
        try out.close()
        return (p.terminationStatus, (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
    }

    /// Validation and test NLL a run printed, per epoch and at the end.
    static func scores(_ output: String) -> [String] {
        output.split(separator: "\n").compactMap { line in
            if line.hasPrefix("valid_nll=") || line.hasPrefix("test_nll=") { return String(line) }
            guard line.hasPrefix("epoch "), let range = line.range(of: "valid_nll ") else { return nil }
            return String(line[range.lowerBound...].prefix(20))
        }
    }

    /// The epoch lines (`epoch N/M train_nll ...`) a run has printed in `text` so far.
    static func epochLines(_ text: String) -> Int {
        text.split(separator: "\n").filter { $0.hasPrefix("epoch ") }.count
    }

    /// The `params_sha256=` value printed by a finished run.
    static func checksum(_ output: String) -> String? {
        output.split(separator: "\n").first { $0.hasPrefix("params_sha256=") }.map {
            String($0.dropFirst("params_sha256=".count))
        }
    }

    /// The `key=value` integers of the `cluster ...` line.
    static func clusterCounters(_ output: String) -> [String: Int] {
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("cluster ") }) else { return [:] }
        var out: [String: Int] = [:]
        for field in line.split(separator: " ").dropFirst() {
            let parts = field.split(separator: "=")
            if parts.count == 2, let v = Int(parts[1]) { out[String(parts[0])] = v }
        }
        return out
    }

    /// A TCP port that was free a moment ago on 127.0.0.1.
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static var isRoot: Bool { getuid() == 0 }

    static func commandExists(_ name: String) -> Bool {
        (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").contains {
            FileManager.default.isExecutableFile(atPath: "\($0)/\(name)")
        }
    }
}
