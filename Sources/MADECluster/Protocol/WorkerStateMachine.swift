/// A worker's decisions, with no sockets: when to say hello, what to compute, when to give up.
///
/// The loop feeds it decoded frames, decoding failures, finished computations, the state of its
/// connection to the coordinator and clock ticks (milliseconds on a monotonic clock) and
/// carries out the returned ``Action``s.
///
/// A worker says `hello` until a `welcome` arrives (again every `helloRetry` ms, and at once
/// when its connection comes up), then computes each task it is given and answers with its
/// result, and sends a heartbeat whenever it has been quiet for the coordinator's heartbeat
/// interval; during a long computation, which calls ``stillComputing(now:)`` now and then,
/// every `busyHeartbeatInterval` ms. It exits when told to, when refused, when no coordinator
/// answers its hellos for `coordinatorTimeout` ms, or when its connection to the coordinator
/// has been gone for `coordinatorTimeout` ms (``connectionDown(now:)``). A coordinator that is
/// quiet while the connection is up (sending a large message on a slow link, or busy between
/// steps) is not gone. When the connection comes back after a break, the worker says hello
/// again: the coordinator may have let it go, and what was in flight may be lost.
///
/// A relay runs the same machine upstream: its hello says how many workers compute behind it,
/// and it says hello again (``announce(capacity:now:)``) when that number changes.
public struct WorkerStateMachine: Sendable {
    public struct Settings: Sendable {
        public var dataFingerprint: [UInt8]
        public var processID: UInt32
        public var name: String
        /// This host's id (see ``WireMessage/Hello/hostID``); empty to decline shared memory.
        public var hostID: String
        /// How long the coordinator may leave hellos unanswered, or the connection down.
        public var coordinatorTimeout: UInt64 = 60_000
        public var helloRetry: UInt64 = 250
        /// Most time between heartbeats while a task is being computed.
        public var busyHeartbeatInterval: UInt64 = 250
        /// Workers computing behind this peer, as its hello says: 1 for a worker.
        public var capacity: UInt32 = 1
        /// Most shards per task, as its hello says.
        public var maxBlockShards: UInt32 = 8

        public init(dataFingerprint: [UInt8], processID: UInt32, name: String, hostID: String = "") {
            self.dataFingerprint = dataFingerprint
            self.processID = processID
            self.name = name
            self.hostID = hostID
        }
    }

    public enum Action: Sendable, Equatable {
        case send(WireMessage)
        /// Build the model from the run's configuration (from `welcome`) before any task, and map
        /// the shared memory when offered.
        case configure(runID: UInt64, configuration: [UInt8], sharedMemory: WireMessage.SharedMemoryGrant?)
        /// Compute this task; parameters are attached when the coordinator sent them.
        case compute(WireMessage.Task)
        /// Stop the process with this exit code.
        case exit(code: Int32, reason: String)
        /// A frame was dropped; for the log.
        case dropped(reason: String)
    }

    /// Exit codes a worker ends with.
    public enum ExitCode {
        public static let shutdown: Int32 = 0
        public static let refused: Int32 = 3
        public static let coordinatorGone: Int32 = 4
        public static let badConfiguration: Int32 = 5
    }

    /// What a welcomed worker knows of its run.
    struct Session: Sendable, Equatable {
        var runID: UInt64
        var heartbeatInterval: UInt64
        /// The step whose parameters it holds, if any, and the masks that packed them (a task
        /// of the step may come packed by other masks, with its parameters).
        var parameters: (step: UInt64, packingSeeds: [UInt64])?

        static func == (a: Session, b: Session) -> Bool {
            a.runID == b.runID && a.heartbeatInterval == b.heartbeatInterval
                && a.parameters?.step == b.parameters?.step && a.parameters?.packingSeeds == b.parameters?.packingSeeds
        }
    }

    enum State: Sendable, Equatable {
        /// Saying hello until welcomed.
        case connecting
        case active(Session)
        case finished
    }

    public private(set) var settings: Settings
    private(set) var state: State = .connecting
    /// When the worker started, or started over after its connection broke.
    private var startedAt: UInt64 = 0
    private var lastHeard: UInt64?
    /// Since when the connection has been down; nil while it is up or not yet reported.
    private var disconnectedSince: UInt64?
    /// Whether the connection went down after the last welcome.
    private var brokeSinceWelcome = false
    private var lastSent: UInt64 = 0
    private var lastHello: UInt64 = 0
    private var heartbeats: UInt64 = 0

    public init(settings: Settings) {
        self.settings = settings
    }

    public var isFinished: Bool { state == .finished }

    private var hello: WireMessage {
        .hello(
            .init(
                dataFingerprint: settings.dataFingerprint,
                processID: settings.processID,
                name: settings.name,
                hostID: settings.hostID,
                capacity: settings.capacity,
                maxBlockShards: settings.maxBlockShards
            )
        )
    }

    /// The worker starts: it says hello.
    public mutating func start(now: UInt64) -> [Action] {
        startedAt = now
        return sayHello(now: now)
    }

    /// A decoded frame from the coordinator.
    public mutating func receive(runID: UInt64, message: WireMessage, now: UInt64) -> [Action] {
        guard state != .finished else { return [] }
        lastHeard = now
        switch message {
        case .welcome(let welcome):
            brokeSinceWelcome = false
            state = .active(Session(runID: runID, heartbeatInterval: UInt64(welcome.heartbeatIntervalMilliseconds)))
            return [.configure(runID: runID, configuration: welcome.configuration, sharedMemory: welcome.sharedMemory)]
        case .reject(let reason):
            state = .finished
            return [.exit(code: ExitCode.refused, reason: "the coordinator refused this worker: \(reason)")]
        case .shutdown(let code, let reason):
            state = .finished
            return [.exit(code: Int32(code), reason: reason)]
        case .who:
            state = .connecting
            return sayHello(now: now)
        case .heartbeat:
            return []
        case .task(let task):
            guard case .active(var session) = state, session.runID == runID else {
                return drop("a task before welcome, or for another run")
            }
            if task.parameters != .absent {
                session.parameters = (task.step, task.packingSeeds)
                state = .active(session)
            } else if session.parameters?.step != task.step || session.parameters?.packingSeeds != task.packingSeeds {
                // The coordinator believes this worker holds parameters it does not: start over.
                state = .connecting
                return sayHello(now: now)
            }
            return [.compute(task)]
        case .hello, .result, .failed:
            return drop("unexpected \(message.kind) from the coordinator")
        }
    }

    /// A frame that failed to decode.
    public mutating func malformed(_ error: WireError, now: UInt64) -> [Action] {
        drop("malformed frame: \(error)")
    }

    /// The connection to the coordinator is up (its handshake succeeded). A worker still
    /// saying hello says it now; one whose connection broke after its welcome starts over.
    public mutating func connectionUp(now: UInt64) -> [Action] {
        disconnectedSince = nil
        switch state {
        case .finished:
            return []
        case .connecting:
            return sayHello(now: now)
        case .active:
            guard brokeSinceWelcome else { return [] }
            state = .connecting
            startedAt = now  // the coordinator has its timeout from now to answer
            return sayHello(now: now)
        }
    }

    /// The connection to the coordinator is gone: libzmq tore it down (ZMTP heartbeats went
    /// unanswered, or the coordinator closed it) and is trying to connect again.
    public mutating func connectionDown(now: UInt64) -> [Action] {
        if disconnectedSince == nil { disconnectedSince = now }
        if case .active = state { brokeSinceWelcome = true }
        return []
    }

    /// The process that launched this worker is gone: the worker's run is over.
    public mutating func launcherGone() -> [Action] {
        guard state != .finished else { return [] }
        state = .finished
        return [.exit(code: ExitCode.coordinatorGone, reason: "the launching process is gone")]
    }

    /// The model could not be built from the configuration.
    public mutating func configurationFailed(_ reason: String) -> [Action] {
        state = .finished
        return [.exit(code: ExitCode.badConfiguration, reason: "cannot build the model: \(reason)")]
    }

    /// The shared memory offered could not be mapped: say hello again without a host id, so
    /// the coordinator sends everything over the socket.
    public mutating func declineSharedMemory(now: UInt64) -> [Action] {
        settings.hostID = ""
        state = .connecting
        return sayHello(now: now)
    }

    /// The workers behind this peer are now `capacity`: it says hello again with the new number,
    /// so the coordinator sizes its blocks for them (and, at 0, takes back a task it holds
    /// without counting it as failed). The run's parameters must come again with the next task.
    /// Nothing happens when the number is the one announced, or once finished.
    public mutating func announce(capacity: UInt32, now: UInt64) -> [Action] {
        guard state != .finished, capacity != settings.capacity else { return [] }
        settings.capacity = capacity
        guard case .active = state else { return [] }  // the next hello carries it
        state = .connecting
        return sayHello(now: now)
    }

    /// A task could not be done; the coordinator hears why and gives it to another worker.
    public mutating func taskFailed(_ task: WireMessage.Task, reason: String, now: UInt64) -> [Action] {
        guard case .active(var session) = state else { return [] }
        lastSent = now
        session.parameters = nil
        state = .active(session)
        return [.send(.failed(step: task.step, shard: task.shard, ticket: task.ticket, reason: reason))]
    }

    /// A task finished.
    public mutating func computed(_ result: WireMessage.Result, now: UInt64) -> [Action] {
        guard case .active = state else { return [] }
        lastSent = now
        return [.send(.result(result))]
    }

    /// A computation is still going on (the loop cannot read frames meanwhile): a heartbeat goes
    /// out when none has for `busyHeartbeatInterval` ms. The connection's liveness does not
    /// depend on it (libzmq answers the ZMTP heartbeats from its own thread); it keeps the
    /// coordinator hearing from the worker, as a restarted coordinator needs to ask it who it is.
    public mutating func stillComputing(now: UInt64) -> [Action] {
        guard case .active = state, now >= lastSent + settings.busyHeartbeatInterval else { return [] }
        return heartbeat(now: now)
    }

    /// Time passes.
    public mutating func tick(now: UInt64) -> [Action] {
        switch state {
        case .finished:
            return []
        case .connecting:
            if now > max(lastHeard ?? 0, startedAt) + settings.coordinatorTimeout {
                state = .finished
                return [
                    .exit(
                        code: ExitCode.coordinatorGone,
                        reason: "no coordinator answered for \(settings.coordinatorTimeout / 1000) s"
                    )
                ]
            }
            return now >= lastHello + settings.helloRetry ? sayHello(now: now) : []
        case .active(let session):
            if let since = disconnectedSince, now > since + settings.coordinatorTimeout {
                state = .finished
                let reason =
                    "the connection to the coordinator has been gone for \(settings.coordinatorTimeout / 1000) s"
                return [.exit(code: ExitCode.coordinatorGone, reason: reason)]
            }
            return now >= lastSent + session.heartbeatInterval ? heartbeat(now: now) : []
        }
    }

    private mutating func heartbeat(now: UInt64) -> [Action] {
        lastSent = now
        heartbeats += 1
        return [.send(.heartbeat(sequence: heartbeats))]
    }

    private mutating func sayHello(now: UInt64) -> [Action] {
        lastHello = now
        lastSent = now
        return [.send(hello)]
    }

    private func drop(_ reason: String) -> [Action] {
        [.dropped(reason: reason)]
    }
}
