import CZeroMQ
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The connection events of one socket (`zmq_socket_monitor`), read from an inproc PAIR socket.
///
/// libzmq reports each event as a two-frame message: 16 bits of event id and 32 bits of value (a
/// file descriptor, an errno or an interval), then the endpoint. A DEALER that connects to one
/// peer learns from `handshakeSucceeded` that its connection is up (after CURVE, if any) and from
/// `disconnected` that it is gone, whether the peer closed it or a ZMTP heartbeat timed out.
///
/// Threading: like the socket it watches, use it from one thread; close it before the context
/// is terminated. Polling ``socket`` tells when an event waits.
public final class ZMQMonitor {
    /// Which events to report (`ZMQ_EVENT_*`).
    public struct Events: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let connected = Events(rawValue: UInt16(ZMQ_EVENT_CONNECTED))
        public static let connectRetried = Events(rawValue: UInt16(ZMQ_EVENT_CONNECT_RETRIED))
        public static let accepted = Events(rawValue: UInt16(ZMQ_EVENT_ACCEPTED))
        public static let closed = Events(rawValue: UInt16(ZMQ_EVENT_CLOSED))
        public static let disconnected = Events(rawValue: UInt16(ZMQ_EVENT_DISCONNECTED))
        public static let handshakeSucceeded = Events(rawValue: UInt16(ZMQ_EVENT_HANDSHAKE_SUCCEEDED))
        public static let handshakeFailed = Events(
            rawValue: UInt16(
                ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
            )
        )
    }

    /// One reported event.
    public struct Event: Sendable, Equatable {
        /// The single event bit that happened.
        public var kind: Events
        /// Its value: a file descriptor, an errno or an interval, by event.
        public var value: UInt32
        public var endpoint: String
    }

    /// The PAIR socket the events arrive on; poll it to learn when one waits.
    public let socket: ZMQSocket
    private let watched: ZMQSocket
    private let address: String
    private static let counter = Atomic<Int>(0)

    /// Starts reporting `events` of `watched`.
    /// - Throws: `ZMQError` when libzmq cannot start the monitor or connect to it.
    public init(watching watched: ZMQSocket, events: Events) throws {
        let serial = Self.counter.add(1, ordering: .relaxed).newValue
        address = "inproc://made-monitor-\(getpid())-\(serial)"
        self.watched = watched
        let handle = try watched.openHandle("zmq_socket_monitor")
        try ZMQError.check(
            zmq_socket_monitor(handle, address, Int32(events.rawValue)),
            "zmq_socket_monitor(\(address))"
        )
        socket = try ZMQSocket(context: watched.context, kind: .pair)
        do {
            try socket.connect(address)
        } catch {
            socket.close()
            throw error
        }
    }

    deinit { close() }

    /// Stops the monitor and closes its socket. Idempotent.
    public func close() {
        guard !socket.isClosed else { return }
        if let handle = try? watched.openHandle("zmq_socket_monitor") { zmq_socket_monitor(handle, nil, 0) }
        socket.close()
    }

    /// The next event, or nil when none waits (`dontWait`) or a receive timeout passed.
    /// - Throws: `ZMQError` for a closed monitor or a terminated context.
    public func next(dontWait: Bool = true) throws -> Event? {
        guard let message = try socket.receiveMessage(maxParts: 2, dontWait: dontWait) else { return nil }
        guard message.frames.count == 2, message.frames[0].count == 6 else { return nil }
        // Native byte order, as libzmq copies the values in.
        let (id, value) = message.frames[0].withUnsafeBytes {
            ($0.loadUnaligned(as: UInt16.self), $0.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        }
        return Event(
            kind: Events(rawValue: id),
            value: value,
            endpoint: String(decoding: message.frames[1], as: UTF8.self)
        )
    }
}
