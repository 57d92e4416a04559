import Foundation
import Logging
import MADE

/// What turns a task into its result behind a ``ClusterWorker``: a ``ShardComputer`` computes
/// it in this process; a ``RelayComputer`` hands its shards to the workers of this host.
public protocol TaskComputer: AnyObject {
    /// The 32-byte fingerprint of the data the tasks read.
    var dataFingerprint: [UInt8] { get }
    /// Workers computing the tasks: 1 for this process, those of a relay now.
    var capacity: Int { get }
    /// Most shards one task may hold.
    var maxBlockShards: Int { get }
    /// Called now and then during a long computation, so heartbeats keep going out.
    var keepAlive: () -> Void { get set }
    /// Prepares for the run described by the configuration bytes of a `welcome`.
    func configure(_ bytes: [UInt8]) throws
    /// The result of `task`; `shared` and `slot` are the coordinator's shared memory, when granted.
    func compute(_ task: WireMessage.Task, shared: SharedSlots?, slot: Int?) throws -> WireMessage.Result
    /// Called between frames while no task is being computed.
    func idle()
    /// The run is over (`code` is the worker's exit code): let go of whatever was started for it.
    func finish(code: Int32, reason: String)
}

extension TaskComputer {
    public func idle() {}
    public func finish(code: Int32, reason: String) {}
}

extension ShardComputer: TaskComputer {
    public var capacity: Int { 1 }
    public var maxBlockShards: Int { Self.maxBlockShards }
}

/// A worker's socket loop: connects a DEALER to the coordinator, says hello, computes the tasks
/// it is given with a ``TaskComputer`` and sends back the results, until told to stop.
///
/// It drives a ``WorkerStateMachine``; the exit code it returns says why it stopped
/// (``WorkerStateMachine/ExitCode``). Between frames it tells the machine the computer's
/// capacity, so a relay whose workers came or went says hello again with their number.
public final class ClusterWorker {
    public struct Options: Sendable {
        /// The coordinator's endpoint, such as `tcp://10.0.0.1:29500`.
        public var connect: String
        public var name: String
        public var security: ClusterSecurity.Client?
        /// How long the connection may be down, or hellos unanswered, before the worker gives up.
        public var coordinatorTimeout: UInt64 = 60_000
        /// libzmq's heartbeats on the connection (``ConnectionHeartbeat``): a PING this often,
        /// and the connection dropped after this long without a word from the coordinator.
        public var heartbeatInterval: UInt64 = 1000
        public var heartbeatTimeout: UInt64 = 10_000
        /// Exit when this process is gone (the parent that launched the worker).
        public var parentProcess: Int32?
        /// Accept shared memory from a coordinator on this host.
        public var sharedMemory = true

        public init(connect: String, name: String) {
            self.connect = connect
            self.name = name
        }
    }

    public let options: Options
    public var logger: Logger
    /// Checked between frames; a true value ends the loop with exit code 130.
    public var shouldStop: () -> Bool = { false }
    public private(set) var tasksComputed = 0

    private let computer: any TaskComputer
    private var machine: WorkerStateMachine
    private let clock = MillisecondClock()
    private var runID: UInt64 = 0
    private var shared: SharedSlots?
    private var slot: Int?

    public init(computer: any TaskComputer, options: Options, logger: Logger) {
        self.computer = computer
        self.options = options
        self.logger = logger
        var settings = WorkerStateMachine.Settings(
            dataFingerprint: computer.dataFingerprint,
            processID: UInt32(truncatingIfNeeded: getpid()),
            name: options.name,
            hostID: options.sharedMemory ? SharedSlots.hostID(for: options.connect) : ""
        )
        settings.coordinatorTimeout = options.coordinatorTimeout
        settings.capacity = UInt32(clamping: computer.capacity)
        settings.maxBlockShards = UInt32(clamping: max(1, computer.maxBlockShards))
        machine = WorkerStateMachine(settings: settings)
    }

    private var now: UInt64 { clock.now }

    /// Runs until the coordinator ends the run, refuses this worker or goes silent; returns the exit code.
    public func run() throws -> Int32 {
        let context = try ZMQContext()
        defer { context.shutdown() }
        let socket = try ZMQSocket(context: context, kind: .dealer)
        defer { socket.close() }
        var identity = Array("\(options.name):".utf8.prefix(200))
        identity += (0..<8).map { _ in UInt8.random(in: 0...255) }
        // Immediate: nothing queues for a coordinator not yet connected, so hellos do not pile up.
        // The frame limit stays the wire's own, not the run's: libzmq (4.3) applies
        // ZMQ_MAXMSGSIZE to connections made after it is set, so a limit learned from the welcome
        // would need a new connection, which the coordinator's ROUTER refuses under the same
        // routing id unless it hands routing ids over (ZMQ_ROUTER_HANDOVER) to whoever presents one.
        try socket.set(
            .routingID(identity),
            .immediate(true),
            .linger(milliseconds: 1000),
            .reconnectInterval(milliseconds: 100),
            .reconnectIntervalMax(milliseconds: 2000),
            .maxMessageSize(Int64(MessageFragments.largestMessage))
        )
        try socket.set(
            ConnectionHeartbeat.options(interval: options.heartbeatInterval, timeout: options.heartbeatTimeout)
        )
        if let security = options.security {
            try socket.configureCurveClient(keyPair: security.keyPair, serverPublicKey: security.serverPublicKey)
        }
        // The connection's state, for the machine: up once its handshake succeeded, gone when
        // libzmq tore it down (heartbeats unanswered, or closed by the coordinator).
        let monitor = try ZMQMonitor(watching: socket, events: [.handshakeSucceeded, .disconnected])
        defer { monitor.close() }
        try socket.connect(options.connect)
        var fragments = FragmentAssembler<Int>(maxBytes: WireFormat.Limits().maxFloats * 4 + (1 << 20))
        var sequence: UInt32 = 0
        logger.info(
            "worker connecting",
            metadata: ["coordinator": "\(options.connect)", "curve": "\(options.security != nil)"]
        )

        var pendingExit: (Int32, String)?
        func perform(_ actions: [WorkerStateMachine.Action]) throws {
            for action in actions {
                switch action {
                case .send(let message):
                    sequence &+= 1
                    let pieces = MessageFragments.frames(
                        encoding: message,
                        runID: message.kind == .hello ? 0 : runID,
                        sequence: sequence
                    )
                    for piece in pieces {
                        guard try socket.send([piece], dontWait: true) == .sent else { break }
                    }
                case .configure(let id, let bytes, let grant):
                    runID = id
                    do {
                        try computer.configure(bytes)
                        shared = nil
                        slot = nil
                        if let grant, !options.sharedMemory {
                            // Never asked for: a coordinator that grants it anyway is not followed.
                            logger.warning(
                                "declining shared memory this worker did not ask for",
                                metadata: ["path": "\(grant.path)"]
                            )
                            try perform(machine.declineSharedMemory(now: now))
                            continue
                        }
                        if let grant {
                            do {
                                shared = try SharedSlots.open(grant)
                                slot = Int(grant.slot)
                            } catch {
                                logger.warning(
                                    "cannot map the shared memory; using the socket",
                                    metadata: ["reason": "\(error)"]
                                )
                                try perform(machine.declineSharedMemory(now: now))
                                continue
                            }
                        }
                        logger.info(
                            "worker welcomed",
                            metadata: ["run": "\(String(id, radix: 16))", "shared_memory": "\(grant != nil)"]
                        )
                    } catch {
                        try perform(machine.configurationFailed("\(error)"))
                    }
                case .compute(let task):
                    do {
                        let result = try computer.compute(task, shared: shared, slot: slot)
                        tasksComputed += 1
                        try perform(machine.computed(result, now: now))
                    } catch  where computer.capacity == 0 {
                        // A relay whose workers are gone gives the task back by saying so: the
                        // coordinator requeues it without counting it as failed.
                        logger.warning("no worker left for the task; giving it back", metadata: ["reason": "\(error)"])
                        try perform(machine.announce(capacity: 0, now: now))
                    } catch let error as ClusterError where error.code == .sharedMemory {
                        // The file shrank under this worker: the task fails, and the worker
                        // goes on over the socket (a hello without a host id takes back its slot).
                        logger.warning(
                            "the shared-memory file shrank; this worker uses the socket from now on",
                            metadata: ["reason": "\(error)"]
                        )
                        try perform(machine.taskFailed(task, reason: "\(error)", now: now))
                        shared = nil
                        slot = nil
                        try perform(machine.declineSharedMemory(now: now))
                    } catch {
                        logger.warning("task failed", metadata: ["reason": "\(error)"])
                        try perform(machine.taskFailed(task, reason: "\(error)", now: now))
                    }
                case .exit(let code, let reason):
                    pendingExit = (code, reason)
                case .dropped(let reason):
                    logger.warning("dropped a frame", metadata: ["reason": "\(reason)"])
                }
            }
        }

        // During long tasks the machine still sends heartbeats now and then; the connection
        // itself stays alive through libzmq's heartbeats, answered by its I/O thread.
        computer.keepAlive = { [unowned self] in
            try? perform(self.machine.stillComputing(now: self.now))
        }
        defer { computer.keepAlive = {} }
        try perform(machine.start(now: now))
        while pendingExit == nil {
            if shouldStop() {
                computer.finish(code: 130, reason: "interrupted")
                return 130
            }
            if let parent = options.parentProcess, getppid() != parent {
                try perform(machine.launcherGone())
                break
            }
            _ = try ZMQSocket.poll([.socket(socket), .socket(monitor.socket)], timeoutMilliseconds: 50)
            while pendingExit == nil, let event = try monitor.next() {
                if event.kind == .handshakeSucceeded { try perform(machine.connectionUp(now: now)) }
                if event.kind == .disconnected {
                    fragments.forget(0)
                    logger.info(
                        "connection to the coordinator lost; reconnecting",
                        metadata: ["endpoint": "\(event.endpoint)"]
                    )
                    try perform(machine.connectionDown(now: now))
                }
            }
            while pendingExit == nil {
                var delivery: FragmentAssembler<Int>.Delivery?
                guard
                    let received = try socket.receiveMessage(
                        maxParts: 1,
                        dontWait: true,
                        { _, bytes in
                            delivery = fragments.receive(bytes, from: 0)
                        }
                    )
                else { break }
                guard received.frames == 1, let delivery else {
                    fragments.forget(0)
                    try perform(machine.malformed(.invalidField("multipart frame"), now: now))
                    continue
                }
                if let error = delivery.error { try perform(machine.malformed(error, now: now)) }
                guard let frame = delivery.frame else { continue }
                do {
                    let (id, decoded) = try WireFormat.decode(frame)
                    try perform(machine.receive(runID: id, message: decoded, now: now))
                } catch let error as WireError {
                    try perform(machine.malformed(error, now: now))
                }
            }
            if pendingExit == nil {
                computer.idle()
                try perform(machine.announce(capacity: UInt32(clamping: computer.capacity), now: now))
                try perform(machine.tick(now: now))
            }
        }
        let (code, reason) = pendingExit!
        computer.finish(code: code, reason: reason)
        if code == 0 {
            logger.info("worker done", metadata: ["reason": "\(reason)", "tasks": "\(tasksComputed)"])
        } else {
            logger.error("worker stopping", metadata: ["reason": "\(reason)", "code": "\(code)"])
        }
        return code
    }
}
