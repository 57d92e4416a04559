import CZeroMQ

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A libzmq socket, with multipart send and receive, typed options and polling.
///
/// Threading: a libzmq socket must be used by one thread at a time, so this class is not
/// `Sendable`; create each socket on the thread (or in the task) that uses it.
///
/// Defaults that differ from libzmq's: `ZMQ_LINGER` is 0, so closing a socket drops unsent
/// messages at once and context termination never waits. Raise it with `.linger(milliseconds:)`
/// only where losing queued messages on close matters more than a prompt shutdown.
///
/// The socket keeps its `ZMQContext` alive; `close()` (or deinit) releases the libzmq socket.
public final class ZMQSocket {
    /// The socket types this wrapper supports.
    public enum Kind: Sendable, CustomStringConvertible {
        case router, dealer, rep, req, pair, push, pull

        var rawValue: Int32 {
            switch self {
            case .router: return ZMQ_ROUTER
            case .dealer: return ZMQ_DEALER
            case .rep: return ZMQ_REP
            case .req: return ZMQ_REQ
            case .pair: return ZMQ_PAIR
            case .push: return ZMQ_PUSH
            case .pull: return ZMQ_PULL
            }
        }

        public var description: String {
            switch self {
            case .router: return "ROUTER"
            case .dealer: return "DEALER"
            case .rep: return "REP"
            case .req: return "REQ"
            case .pair: return "PAIR"
            case .push: return "PUSH"
            case .pull: return "PULL"
            }
        }
    }

    /// What became of a message passed to `send`.
    public enum SendResult: Sendable, Equatable {
        /// libzmq queued the whole message.
        case sent
        /// Nothing was queued: the high-water mark was reached (with `dontWait` or a send timeout),
        /// there was no peer to queue for, or a signal interrupted a blocking send. Try again later.
        case wouldBlock
        /// Nothing was queued: a ROUTER with `routerMandatory` has no peer with the routing id
        /// given in the first frame (`EHOSTUNREACH`).
        case unroutable
    }

    /// A socket option and the value to set (`zmq_setsockopt`).
    ///
    /// Durations are in milliseconds; -1 means "infinite" where libzmq allows it.
    public enum Option: Sendable {
        /// How long unsent messages are kept after close (`ZMQ_LINGER`); this wrapper's default is 0.
        case linger(milliseconds: Int)
        /// This socket's identity as seen by a peer ROUTER (`ZMQ_ROUTING_ID`), 1...255 bytes;
        /// set before `connect`.
        case routingID([UInt8])
        /// Messages queued per peer for sending before `send` blocks or drops (`ZMQ_SNDHWM`; 0 = no limit).
        case sendHighWaterMark(Int)
        /// Messages queued per peer for receiving (`ZMQ_RCVHWM`; 0 = no limit).
        case receiveHighWaterMark(Int)
        /// ROUTER: report unroutable messages instead of dropping them silently (`ZMQ_ROUTER_MANDATORY`).
        case routerMandatory(Bool)
        /// ROUTER: a new connection with a routing id already in use takes it over (`ZMQ_ROUTER_HANDOVER`).
        case routerHandover(Bool)
        /// ROUTER/DEALER: send an empty message to each peer on connect (`ZMQ_PROBE_ROUTER`).
        case probeRouter(Bool)
        /// Queue messages only to completed connections (`ZMQ_IMMEDIATE`).
        case immediate(Bool)
        /// Largest inbound frame in bytes, -1 for no limit (`ZMQ_MAXMSGSIZE`). libzmq checks each
        /// frame, not the sum of a multipart message, and drops the connection of a peer that exceeds it.
        case maxMessageSize(Int64)
        /// Delay before reconnecting a dropped connection (`ZMQ_RECONNECT_IVL`).
        case reconnectInterval(milliseconds: Int)
        /// Upper bound of the exponential reconnect back-off, 0 for none (`ZMQ_RECONNECT_IVL_MAX`).
        case reconnectIntervalMax(milliseconds: Int)
        /// Send a ZMTP PING this often, 0 to disable (`ZMQ_HEARTBEAT_IVL`).
        case heartbeatInterval(milliseconds: Int)
        /// Drop the connection if nothing arrives this long after a PING (`ZMQ_HEARTBEAT_TIMEOUT`).
        case heartbeatTimeout(milliseconds: Int)
        /// Ask the peer to drop the connection after this much silence (`ZMQ_HEARTBEAT_TTL`;
        /// libzmq rounds to tenths of a second, at most 6553599 ms).
        case heartbeatTTL(milliseconds: Int)
        /// How long a blocking send waits before returning `.wouldBlock` (`ZMQ_SNDTIMEO`; -1 forever).
        case sendTimeout(milliseconds: Int)
        /// How long a blocking receive waits before returning nil (`ZMQ_RCVTIMEO`; -1 forever).
        case receiveTimeout(milliseconds: Int)
        /// Allow IPv6 as well as IPv4 on tcp:// endpoints (`ZMQ_IPV6`).
        case ipv6(Bool)
        /// The ZAP domain sent to the authentication handler (`ZMQ_ZAP_DOMAIN`).
        case zapDomain(String)
        /// Act as the CURVE server of each connection (`ZMQ_CURVE_SERVER`).
        case curveServer(Bool)
        /// This socket's long-term CURVE public key, 40-character Z85 (`ZMQ_CURVE_PUBLICKEY`).
        case curvePublicKey(String)
        /// This socket's long-term CURVE secret key, 40-character Z85 (`ZMQ_CURVE_SECRETKEY`).
        case curveSecretKey(String)
        /// The server's CURVE public key, 40-character Z85, on a client (`ZMQ_CURVE_SERVERKEY`).
        case curveServerKey(String)
    }

    /// Readiness reported by `ZMQ_EVENTS`.
    public struct Events: OptionSet, Sendable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        /// At least one whole message can be received without blocking.
        public static let readable = Events(rawValue: ZMQ_POLLIN)
        /// At least one message can be sent without blocking.
        public static let writable = Events(rawValue: ZMQ_POLLOUT)
    }

    /// The socket type.
    public let kind: Kind
    /// The context the socket belongs to, kept alive while the socket is open.
    public let context: ZMQContext
    /// The libzmq socket, nil once closed.
    private var handle: UnsafeMutableRawPointer?

    /// Opens a socket of `kind` in `context`, with `ZMQ_LINGER` set to 0.
    ///
    /// - Throws: `ZMQError` (for example `EMFILE` when the process is out of sockets, `ETERM`
    ///   after the context was shut down).
    public init(context: ZMQContext, kind: Kind) throws {
        guard let handle = zmq_socket(context.handle, kind.rawValue) else {
            throw ZMQError.last("zmq_socket(\(kind))")
        }
        self.kind = kind
        self.context = context
        self.handle = handle
        do {
            try set(.linger(milliseconds: 0))
        } catch {
            close()
            throw error
        }
    }

    deinit {
        close()
    }

    /// True once `close()` has run.
    public var isClosed: Bool { handle == nil }

    /// Closes the socket, discarding unsent messages after the linger period. Idempotent.
    public func close() {
        guard let handle else { return }
        zmq_close(handle)
        self.handle = nil
    }

    func openHandle(_ operation: @autoclosure () -> String) throws -> UnsafeMutableRawPointer {
        guard let handle else { throw ZMQError(code: ENOTSOCK, operation: "\(operation()) on a closed \(kind) socket") }
        return handle
    }

    // MARK: Endpoints

    /// Accepts connections on `endpoint` (`tcp://127.0.0.1:*` picks a free port; read it back with `lastEndpoint`).
    public func bind(_ endpoint: String) throws {
        try ZMQError.check(zmq_bind(try openHandle("zmq_bind(\(endpoint))"), endpoint), "zmq_bind(\(endpoint))")
    }

    /// Connects to `endpoint`; libzmq connects (and reconnects) in the background.
    public func connect(_ endpoint: String) throws {
        try ZMQError.check(
            zmq_connect(try openHandle("zmq_connect(\(endpoint))"), endpoint),
            "zmq_connect(\(endpoint))"
        )
    }

    /// Stops accepting on `endpoint`, which must be spelled as `lastEndpoint` reports it for wildcard binds.
    public func unbind(_ endpoint: String) throws {
        try ZMQError.check(zmq_unbind(try openHandle("zmq_unbind(\(endpoint))"), endpoint), "zmq_unbind(\(endpoint))")
    }

    /// Drops the connection to `endpoint` made by `connect`.
    public func disconnect(_ endpoint: String) throws {
        try ZMQError.check(
            zmq_disconnect(try openHandle("zmq_disconnect(\(endpoint))"), endpoint),
            "zmq_disconnect(\(endpoint))"
        )
    }

    /// The endpoint of the last `bind` or `connect`, with a wildcard port resolved (`ZMQ_LAST_ENDPOINT`).
    ///
    /// For example `tcp://127.0.0.1:41234` after binding `tcp://127.0.0.1:*`. Empty when nothing
    /// was bound or connected yet, or when the socket is closed.
    public var lastEndpoint: String {
        guard let handle else { return "" }
        var buffer = [CChar](repeating: 0, count: 1024)
        var size = buffer.count
        guard zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else { return "" }
        let length = buffer.firstIndex(of: 0) ?? min(size, buffer.count)
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Options

    /// Sets options in order (`zmq_setsockopt`); most must be set before `bind` or `connect`.
    ///
    /// - Throws: `ZMQError` naming the first option libzmq refused (`EINVAL` for a value out of
    ///   range or a key that is not 40 characters of Z85).
    public func set(_ options: Option...) throws {
        try set(options)
    }

    /// Sets options in order, as the variadic form does.
    public func set(_ options: [Option]) throws {
        for option in options { try apply(option) }
    }

    private func apply(_ option: Option) throws {
        switch option {
        case .linger(let ms): try setInt32(ZMQ_LINGER, ms, "ZMQ_LINGER")
        case .routingID(let id):
            precondition((1...255).contains(id.count), "a routing id has 1 to 255 bytes")
            try setBytes(ZMQ_ROUTING_ID, id, "ZMQ_ROUTING_ID")
        case .sendHighWaterMark(let n): try setInt32(ZMQ_SNDHWM, n, "ZMQ_SNDHWM")
        case .receiveHighWaterMark(let n): try setInt32(ZMQ_RCVHWM, n, "ZMQ_RCVHWM")
        case .routerMandatory(let on): try setInt32(ZMQ_ROUTER_MANDATORY, on ? 1 : 0, "ZMQ_ROUTER_MANDATORY")
        case .routerHandover(let on): try setInt32(ZMQ_ROUTER_HANDOVER, on ? 1 : 0, "ZMQ_ROUTER_HANDOVER")
        case .probeRouter(let on): try setInt32(ZMQ_PROBE_ROUTER, on ? 1 : 0, "ZMQ_PROBE_ROUTER")
        case .immediate(let on): try setInt32(ZMQ_IMMEDIATE, on ? 1 : 0, "ZMQ_IMMEDIATE")
        case .maxMessageSize(let bytes):
            var value = bytes
            try setRaw(ZMQ_MAXMSGSIZE, &value, MemoryLayout<Int64>.size, "ZMQ_MAXMSGSIZE")
        case .reconnectInterval(let ms): try setInt32(ZMQ_RECONNECT_IVL, ms, "ZMQ_RECONNECT_IVL")
        case .reconnectIntervalMax(let ms): try setInt32(ZMQ_RECONNECT_IVL_MAX, ms, "ZMQ_RECONNECT_IVL_MAX")
        case .heartbeatInterval(let ms): try setInt32(ZMQ_HEARTBEAT_IVL, ms, "ZMQ_HEARTBEAT_IVL")
        case .heartbeatTimeout(let ms): try setInt32(ZMQ_HEARTBEAT_TIMEOUT, ms, "ZMQ_HEARTBEAT_TIMEOUT")
        case .heartbeatTTL(let ms): try setInt32(ZMQ_HEARTBEAT_TTL, ms, "ZMQ_HEARTBEAT_TTL")
        case .sendTimeout(let ms): try setInt32(ZMQ_SNDTIMEO, ms, "ZMQ_SNDTIMEO")
        case .receiveTimeout(let ms): try setInt32(ZMQ_RCVTIMEO, ms, "ZMQ_RCVTIMEO")
        case .ipv6(let on): try setInt32(ZMQ_IPV6, on ? 1 : 0, "ZMQ_IPV6")
        case .zapDomain(let domain): try setBytes(ZMQ_ZAP_DOMAIN, Array(domain.utf8), "ZMQ_ZAP_DOMAIN")
        case .curveServer(let on): try setInt32(ZMQ_CURVE_SERVER, on ? 1 : 0, "ZMQ_CURVE_SERVER")
        case .curvePublicKey(let key): try setCurveKey(ZMQ_CURVE_PUBLICKEY, key, "ZMQ_CURVE_PUBLICKEY")
        case .curveSecretKey(let key): try setCurveKey(ZMQ_CURVE_SECRETKEY, key, "ZMQ_CURVE_SECRETKEY")
        case .curveServerKey(let key): try setCurveKey(ZMQ_CURVE_SERVERKEY, key, "ZMQ_CURVE_SERVERKEY")
        }
    }

    private func setRaw(_ option: Int32, _ value: UnsafeRawPointer?, _ size: Int, _ name: String) throws {
        let handle = try openHandle("zmq_setsockopt(\(name))")
        try ZMQError.check(zmq_setsockopt(handle, option, value, size), "zmq_setsockopt(\(name))")
    }

    private func setInt32(_ option: Int32, _ value: Int, _ name: String) throws {
        guard let narrow = Int32(exactly: value) else {
            throw ZMQError(code: EINVAL, operation: "zmq_setsockopt(\(name), \(value))")
        }
        var int = narrow
        try setRaw(option, &int, MemoryLayout<Int32>.size, name)
    }

    private func setBytes(_ option: Int32, _ bytes: [UInt8], _ name: String) throws {
        try bytes.withUnsafeBytes { try setRaw(option, $0.baseAddress, $0.count, name) }
    }

    /// Sets a CURVE key in its 32-byte binary form, decoded from Z85 here so a bad key is an error.
    private func setCurveKey(_ option: Int32, _ z85: String, _ name: String) throws {
        guard let key = try? Z85.decodeKey(z85) else {
            throw ZMQError(code: EINVAL, operation: "zmq_setsockopt(\(name)): not a 40-character Z85 key")
        }
        try setBytes(option, key, name)
    }

    private func getInt32(_ option: Int32, _ name: String) throws -> Int32 {
        let handle = try openHandle("zmq_getsockopt(\(name))")
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        try ZMQError.check(zmq_getsockopt(handle, option, &value, &size), "zmq_getsockopt(\(name))")
        return value
    }

    /// The linger period in milliseconds (`ZMQ_LINGER`; -1 forever).
    public var linger: Int {
        get throws { Int(try getInt32(ZMQ_LINGER, "ZMQ_LINGER")) }
    }

    /// Whether a message can be received or sent now (`ZMQ_EVENTS`).
    ///
    /// Reading it also lets libzmq process pending commands, which matters when waiting on
    /// `fileDescriptor` with an external event loop (the descriptor is edge-triggered).
    public var events: Events {
        get throws { Events(rawValue: try getInt32(ZMQ_EVENTS, "ZMQ_EVENTS")) }
    }

    /// libzmq's notification descriptor for this socket (`ZMQ_FD`), for use in a foreign event loop.
    public var fileDescriptor: Int32 {
        get throws { try getInt32(ZMQ_FD, "ZMQ_FD") }
    }

    // MARK: CURVE set-up

    /// Makes this socket the CURVE server of its connections, authenticated by `authenticator`.
    ///
    /// Requiring the handler is deliberate: libzmq lets every client with a valid CURVE handshake
    /// in when no ZAP handler is bound in the socket's context. Call before `bind`.
    public func configureCurveServer(keyPair: CurveKeyPair, authenticator: ZAPHandler) throws {
        precondition(authenticator.socket.context === context, "the ZAP handler must live in this socket's context")
        precondition(!authenticator.socket.isClosed, "the ZAP handler is closed")
        try set(.curveServer(true), .curveSecretKey(keyPair.secretKey))
    }

    /// Makes this socket a CURVE client that trusts only `serverPublicKey`. Call before `connect`.
    public func configureCurveClient(keyPair: CurveKeyPair, serverPublicKey: String) throws {
        try set(
            .curveServerKey(serverPublicKey),
            .curvePublicKey(keyPair.publicKey),
            .curveSecretKey(keyPair.secretKey)
        )
    }

    // MARK: Sending

    /// Sends `frames` as one multipart message; delivery of the parts is all or nothing.
    ///
    /// Zero-copy frames (`ZMQFrame.owned`) are handed to libzmq and must not be sent again,
    /// whatever the result; copied frames are unaffected.
    ///
    /// - Parameters:
    ///   - frames: at least one frame. On a ROUTER the first frame is the peer's routing id.
    ///   - dontWait: return `.wouldBlock` instead of blocking when the message cannot be queued.
    /// - Returns: `.sent`, `.wouldBlock` (also after a send timeout or a signal), or `.unroutable`
    ///   (ROUTER with `routerMandatory` and an unknown routing id).
    /// - Throws: `ZMQError` for any other failure (`ETERM`, `ENOTSUP` for the socket type, `EFSM`
    ///   for REQ/REP out of turn, or a failure after the first frame was queued).
    @discardableResult
    public func send(_ frames: [ZMQFrame], dontWait: Bool = false) throws -> SendResult {
        precondition(!frames.isEmpty, "a message has at least one frame")
        let handle = try openHandle("zmq_msg_send")
        return try withUnsafeTemporaryAllocation(of: zmq_msg_t.self, capacity: frames.count) { storage in
            let msgs = storage.baseAddress!
            // Build every part first, so a failure here leaves no half-sent message on the socket.
            for index in frames.indices {
                do {
                    try frames[index].initialize(msgs + index)
                } catch {
                    for built in 0..<index { zmq_msg_close(msgs + built) }
                    throw error
                }
            }
            for index in frames.indices {
                let isLast = index == frames.count - 1
                let flags = (dontWait ? ZMQ_DONTWAIT : 0) | (isLast ? 0 : ZMQ_SNDMORE)
                if zmq_msg_send(msgs + index, handle, flags) != -1 { continue }
                let code = zmq_errno()
                for unsent in index..<frames.count { zmq_msg_close(msgs + unsent) }
                if index == 0 {
                    switch code {
                    case EAGAIN, EINTR: return .wouldBlock
                    case EHOSTUNREACH: return .unroutable
                    default: break
                    }
                }
                throw ZMQError(code: code, operation: "zmq_msg_send(\(kind), frame \(index + 1) of \(frames.count))")
            }
            return .sent
        }
    }

    /// Sends copies of `frames` as one multipart message. See `send(_:dontWait:)`.
    @discardableResult
    public func send(bytes frames: [[UInt8]], dontWait: Bool = false) throws -> SendResult {
        try send(frames.map(ZMQFrame.bytes), dontWait: dontWait)
    }

    // MARK: Receiving

    /// A received multipart message, possibly cut short by `receiveMessage(maxParts:)`.
    public struct Message: Sendable, Equatable {
        /// The frames kept, in order (at most `maxParts`).
        public var frames: [[UInt8]]
        /// Frames that arrived beyond `maxParts` and were read and thrown away.
        public var discardedFrameCount: Int
        /// True when the sender sent more frames than were allowed.
        public var isTruncated: Bool { discardedFrameCount > 0 }
    }

    /// Receives every frame of the next multipart message, or nil if none is ready.
    ///
    /// A peer decides how many frames a message has; prefer `receiveMessage(maxParts:)` for
    /// sockets that face untrusted peers.
    ///
    /// - Returns: nil when nothing arrived (`dontWait`, the receive timeout expired, or a signal
    ///   interrupted the wait).
    /// - Throws: `ZMQError` for other failures, such as `ETERM` or `EFSM`.
    public func receive(dontWait: Bool = false) throws -> [[UInt8]]? {
        try receiveMessage(maxParts: .max, dontWait: dontWait)?.frames
    }

    /// Receives the next multipart message, keeping at most `maxParts` frames.
    ///
    /// Frames beyond `maxParts` are still read (libzmq delivers a message whole) but are freed one
    /// by one as they are read, so memory held here is bounded by `maxParts` times the largest
    /// frame; set `.maxMessageSize` to bound a frame. The count of dropped frames is reported in
    /// `Message.discardedFrameCount`.
    ///
    /// - Complexity: one copy of each kept frame.
    /// - Returns: nil when nothing arrived (`dontWait`, the receive timeout expired, or a signal
    ///   interrupted the wait).
    public func receiveMessage(maxParts: Int, dontWait: Bool = false) throws -> Message? {
        var frames: [[UInt8]] = []
        guard
            let received = try receiveMessage(
                maxParts: maxParts,
                dontWait: dontWait,
                { _, bytes in frames.append(Array(bytes)) }
            )
        else {
            return nil
        }
        return Message(frames: frames, discardedFrameCount: received.frames - frames.count)
    }

    /// What ``receiveMessage(maxParts:dontWait:property:_:)`` read.
    public struct Received: Sendable, Equatable {
        /// The number of frames the message had.
        public var frames: Int
        /// The value of the metadata property asked for, from the first frame that carries
        /// it (`zmq_msg_gets`; a ROUTER's routing-id frame carries none), or nil.
        public var property: String?
    }

    /// Receives the next multipart message and shows each of its first `maxParts` frames to
    /// `body` (its index and its bytes, valid only during the call), without copying them;
    /// frames beyond `maxParts` are read and freed unseen.
    ///
    /// - Parameter property: a metadata property of the connection, such as `Peer-Address`
    ///   (the IP address of a TCP peer).
    /// - Returns: nil when nothing arrived (`dontWait`, the receive timeout expired, or a signal
    ///   interrupted the wait).
    public func receiveMessage(
        maxParts: Int,
        dontWait: Bool = false,
        property: String? = nil,
        _ body: (Int, UnsafeRawBufferPointer) -> Void
    ) throws -> Received? {
        precondition(maxParts >= 1, "maxParts must be at least 1")
        let handle = try openHandle("zmq_msg_recv")
        return try withUnsafeTemporaryAllocation(of: zmq_msg_t.self, capacity: 1) { storage in
            let msg = storage.baseAddress!
            var index = 0
            var value: String?
            while true {
                zmq_msg_init(msg)
                defer { zmq_msg_close(msg) }
                if zmq_msg_recv(msg, handle, index == 0 && dontWait ? ZMQ_DONTWAIT : 0) == -1 {
                    let code = zmq_errno()
                    if index == 0 && (code == EAGAIN || code == EINTR) { return nil }
                    // Later frames are already queued (messages arrive whole): retry a signal.
                    if code == EINTR { continue }
                    throw ZMQError(code: code, operation: "zmq_msg_recv(\(kind), frame \(index + 1))")
                }
                // A ROUTER's routing-id frame is made by the socket and carries none: look further.
                if value == nil, let property, let text = zmq_msg_gets(msg, property) { value = String(cString: text) }
                if index < maxParts {
                    body(index, UnsafeRawBufferPointer(start: zmq_msg_data(msg), count: zmq_msg_size(msg)))
                }
                index += 1
                if zmq_msg_more(msg) == 0 { return Received(frames: index, property: value) }
            }
        }
    }

    // MARK: Polling

    /// Waits until one of `items` is readable or `timeoutMilliseconds` passes (`zmq_poll`, `ZMQ_POLLIN`).
    ///
    /// - Parameters:
    ///   - items: sockets (readable: a whole message can be received) and raw descriptors
    ///     (readable as `poll(2)` means it, for example the read end of a signal pipe).
    ///   - timeoutMilliseconds: 0 to return at once, -1 to wait without limit.
    /// - Returns: one flag per item, in order. All false on timeout, and also when a signal
    ///   interrupted the wait (`EINTR`), so a signal handler that sets a flag does not end a loop
    ///   with an error.
    /// - Throws: `ZMQError` for other failures (`ETERM`, or `ENOTSOCK` for a closed socket).
    public static func poll(_ items: [ZMQPollItem], timeoutMilliseconds: Int) throws -> [Bool] {
        if items.isEmpty && timeoutMilliseconds < 0 {
            preconditionFailure("polling nothing without a timeout would block forever")
        }
        var raw = try items.map { item -> zmq_pollitem_t in
            switch item.target {
            case .socket(let socket):
                let handle = try socket.openHandle("zmq_poll")
                return zmq_pollitem_t(socket: handle, fd: -1, events: Int16(ZMQ_POLLIN), revents: 0)
            case .fileDescriptor(let fd):
                return zmq_pollitem_t(socket: nil, fd: fd, events: Int16(ZMQ_POLLIN), revents: 0)
            }
        }
        let rc = withExtendedLifetime(items) {
            raw.withUnsafeMutableBufferPointer { buffer in
                zmq_poll(buffer.baseAddress, Int32(buffer.count), timeoutMilliseconds)
            }
        }
        if rc == -1 {
            let code = zmq_errno()
            if code == EINTR { return Array(repeating: false, count: items.count) }
            throw ZMQError(code: code, operation: "zmq_poll(\(items.count) items)")
        }
        return raw.map { $0.revents & Int16(ZMQ_POLLIN) != 0 }
    }
}

/// Something `ZMQSocket.poll` can wait on: a socket, or a raw file descriptor.
public struct ZMQPollItem {
    enum Target {
        case socket(ZMQSocket)
        case fileDescriptor(Int32)
    }

    let target: Target

    /// Wait for `socket` to have a whole message to receive. The item keeps the socket alive.
    public static func socket(_ socket: ZMQSocket) -> ZMQPollItem {
        ZMQPollItem(target: .socket(socket))
    }

    /// Wait for `fd` to be readable, for example the read end of a pipe written by a signal handler.
    public static func fileDescriptor(_ fd: Int32) -> ZMQPollItem {
        ZMQPollItem(target: .fileDescriptor(fd))
    }
}
