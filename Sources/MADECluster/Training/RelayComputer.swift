import Foundation
import Logging
import MADE

/// The compute of a relay (`made relay`): one peer of the coordinator standing for the workers
/// of its host.
///
/// Upstream it runs behind a ``ClusterWorker``: its hello says how many workers it has
/// (``capacity``) and that it takes blocks of any size, so the coordinator hands it one aligned
/// block of the reduction tree per step and sends the step's parameters once. Downstream it is
/// a coordinator of its own (a ``ClusterSession``, with the worker processes it starts, if
/// any): it writes the parameters into its own shared-memory file once, hands the block's shards
/// to its workers, sums their gradients in the tree order the coordinator would, and answers
/// the block once (``ClusterCoordinator/computeTask(_:)``). So the coordinator's traffic grows
/// with hosts, not workers, and the bits do not change.
///
/// Its coordinator is made when the run's configuration comes (the first `welcome`), and made
/// again only for another run. When its last worker is gone mid-block, the block is given back
/// (the relay says hello with capacity 0: the coordinator requeues it without counting a
/// failure) rather than waited on.
public final class RelayComputer: TaskComputer {
    public struct Options: Sendable {
        /// Its coordinator's options: where this host's workers dial it, timeouts.
        public var coordinator: ClusterCoordinator.Options
        /// Worker processes to start on this host.
        public var localWorkers = 0
        /// Their arguments after `worker --connect ENDPOINT --name NAME`: the data flags.
        public var workerArguments: [String] = []
        public var workerThreads: Int?
        /// Prefix of their names.
        public var namePrefix = "relay"
        public var executable = ClusterSession.currentExecutable

        public init(coordinator: ClusterCoordinator.Options) {
            self.coordinator = coordinator
        }
    }

    public let options: Options
    public let dataFingerprint: [UInt8]
    public var logger: Logger
    public var keepAlive: () -> Void = {}
    /// Checked while a block is computed (an interruption of the relay process).
    public var shouldStop: () -> Bool = { false }
    public private(set) var session: ClusterSession?
    private var configurationBytes: [UInt8]?

    /// - Parameter dataFingerprint: the fingerprint of this host's data (its workers must match it).
    public init(dataFingerprint: [UInt8], options: Options, logger: Logger) {
        self.dataFingerprint = dataFingerprint
        self.options = options
        self.logger = logger
    }

    deinit {
        session?.finish(exitCode: 1, reason: "the relay is gone", grace: 1)
    }

    /// The workers registered with this relay now.
    public var capacity: Int { session?.coordinator.capacity ?? 0 }

    /// A relay hands the shards on: any block the wire carries.
    public var maxBlockShards: Int { WireFormat.Limits().maxBlockShards }

    /// The endpoint this host's workers dial, once the run is known.
    public var endpoint: String? { session?.coordinator.endpoint }

    public func configure(_ bytes: [UInt8]) throws {
        if bytes == configurationBytes { return }
        let configuration: TrainingConfiguration
        do {
            configuration = try JSONDecoder().decode(TrainingConfiguration.self, from: Data(bytes))
        } catch {
            throw ClusterError(.invalidTask, "unreadable run configuration: \(error)")
        }
        try configuration.validate()
        session?.finish(exitCode: 0, reason: "the relay serves another run now")
        session = nil
        var sessionOptions = ClusterSession.Options(coordinator: options.coordinator)
        // A simulation goes on to the workers: they sleep as told instead of computing.
        sessionOptions.coordinator.simulatedMicrosecondsPerShard = try ShardComputer.simulatedMicroseconds(in: bytes)
        // Results of scoring and sampling jobs of any size the upstream coordinator asks for.
        sessionOptions.coordinator.largestJobResult = WireFormat.Limits().maxFloats
        sessionOptions.localWorkers = options.localWorkers
        sessionOptions.workerArguments = options.workerArguments
        sessionOptions.workerThreads = options.workerThreads
        sessionOptions.namePrefix = options.namePrefix
        sessionOptions.executable = options.executable
        // The workers dial a private endpoint (an ipc socket in a folder only this user reaches),
        // or bring keys of their own.
        sessionOptions.ephemeralKeys = false
        let made = try ClusterSession(
            configuration: configuration,
            dataFingerprint: dataFingerprint,
            options: sessionOptions,
            logger: logger
        )
        let coordinator = made.coordinator
        // While a block is computed: the session's watch on its worker processes, then a heartbeat upstream.
        let watchWorkers = coordinator.watch
        coordinator.watch = { [unowned self] in
            try watchWorkers()
            self.keepAlive()
        }
        coordinator.shouldStop = { [unowned self, unowned coordinator] in
            self.shouldStop() || coordinator.capacity == 0
        }
        session = made
        configurationBytes = bytes
        logger.info(
            "relay ready for its workers",
            metadata: ["endpoint": "\(coordinator.endpoint)", "workers": "\(options.localWorkers)"]
        )
    }

    public func compute(_ task: WireMessage.Task, shared: SharedSlots?, slot: Int?) throws -> WireMessage.Result {
        guard let session else { throw ClusterError(.invalidTask, "a task arrived before the run's configuration") }
        do {
            return try session.coordinator.computeTask(task)
        } catch is ClusterCoordinator.Interrupted {
            throw ClusterError(.noWorkers, capacity == 0 ? "the relay's workers are gone" : "the relay was interrupted")
        }
    }

    /// Between tasks its workers are still heard and answered (they join, send heartbeats), and
    /// those whose process ended leave at once.
    public func idle() {
        try? session?.watchLocalWorkers()
        session?.coordinator.keepAlive()
    }

    public func finish(code: Int32, reason: String) {
        session?.finish(exitCode: UInt8(clamping: code), reason: reason)
    }
}
