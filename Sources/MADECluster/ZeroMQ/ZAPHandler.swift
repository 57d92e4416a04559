import CZeroMQ
import Logging

/// Authenticates CURVE clients of every socket in one context (ZeroMQ RFC 27, ZAP 1.0).
///
/// libzmq asks the REP socket bound at `inproc://zeromq.zap.01` of a context whether to accept
/// each new connection to a CURVE server socket of that context, and holds the handshake until
/// the answer comes. This handler answers `200` when the client's long-term public key is in
/// `authorizedKeys`, and `400` otherwise; the server then never delivers a message from a
/// rejected client.
///
/// Order and lifetime matter. libzmq looks for a handler at each handshake and admits *every*
/// CURVE client when none is bound at that moment, so create the handler before any client can
/// connect to a CURVE server socket of the context (creating it before the server binds is the
/// simple rule), and keep it open as long as those sockets run: once it is closed, new clients
/// are let in unchecked. `handlePending()` must be called whenever `socket` is readable (include
/// it in the poll loop), or handshakes stall until libzmq's handshake timeout drops them.
///
/// A rejected client is not retried by libzmq 4.3: its connection ends with a protocol error,
/// its queued messages are dropped, and it stays disconnected, so a client with the wrong key
/// notices only through its own timeouts.
///
/// Request frames: version `1.0`, request id, domain, peer address, routing id, mechanism, then
/// the mechanism's credentials (for CURVE, one 32-byte public key). Reply frames: version,
/// request id, status code, status text, user id (here the client key in Z85, visible to the
/// application as the message property `User-Id`), metadata (empty).
///
/// Threading: like every socket, the handler is used from one thread.
public final class ZAPHandler {
    /// The fixed endpoint libzmq sends ZAP requests to.
    public static let endpoint = "inproc://zeromq.zap.01"

    /// The REP socket answering ZAP requests; poll it for readability.
    public let socket: ZMQSocket
    /// The client keys accepted; may be replaced at any time (applies to later handshakes).
    public var authorizedKeys: AuthorizedKeys
    /// Requests answered with 200.
    public private(set) var accepted = 0
    /// Requests answered with 400 or 500 (unknown key, other mechanism, malformed request).
    public private(set) var rejected = 0
    /// Requests that did not follow ZAP 1.0 (also counted in `rejected`).
    public private(set) var malformed = 0
    /// The network address (for example `127.0.0.1`) of the last rejected peer, for logs.
    public private(set) var lastRejectedAddress: String?

    private let logger: Logger

    /// The most frames a request may carry; ZAP requests from libzmq carry 7 for CURVE.
    private static let maximumFrames = 16

    /// Binds the handler in `context`.
    ///
    /// - Throws: `ZMQError` (`EADDRINUSE` when the context already has a handler).
    public init(context: ZMQContext, authorizedKeys: AuthorizedKeys, logger: Logger = Logger(label: "made.zap")) throws
    {
        self.socket = try ZMQSocket(context: context, kind: .rep)
        self.authorizedKeys = authorizedKeys
        self.logger = logger
        try socket.bind(Self.endpoint)
    }

    /// Closes the handler's socket. Close the CURVE servers of the context first: a server
    /// left running without its handler admits any client.
    public func close() {
        socket.close()
    }

    /// Answers every request that is waiting, without blocking.
    ///
    /// A bad request is answered (400 or 500) and counted, never thrown. A failure of the
    /// handler's own socket (the context was shut down, the handler was closed) is logged and
    /// ends the call; the poll loop around it sees the same failure on its next `poll`.
    ///
    /// - Returns: the number of requests answered.
    @discardableResult
    public func handlePending() -> Int {
        var answered = 0
        do {
            while let request = try socket.receiveMessage(maxParts: Self.maximumFrames, dontWait: true) {
                let reply = decide(request)
                if reply.status == "200" {
                    accepted += 1
                } else {
                    rejected += 1
                    lastRejectedAddress = reply.address ?? lastRejectedAddress
                    logger.warning(
                        "CURVE client rejected",
                        metadata: [
                            "status": "\(reply.status)", "reason": "\(reply.text)",
                            "address": "\(reply.address ?? "unknown")",
                        ]
                    )
                }
                let frames: [[UInt8]] = [
                    Array("1.0".utf8), reply.requestID, Array(reply.status.utf8), Array(reply.text.utf8),
                    Array(reply.userID.utf8), [],
                ]
                // A REP socket must reply before it receives again; an inproc reply does not block.
                try socket.send(bytes: frames)
                answered += 1
            }
        } catch {
            if !socket.isClosed {
                logger.error("ZAP handler socket failed", metadata: ["error": "\(error)"])
            }
        }
        return answered
    }

    private struct Reply {
        var requestID: [UInt8]
        var status: String
        var text: String
        var userID = ""
        var address: String?
    }

    /// The reply to one request: 200 for an authorized CURVE key, 400 for a refusal, 500 for a
    /// request that does not follow ZAP 1.0.
    private func decide(_ request: ZMQSocket.Message) -> Reply {
        let frames = request.frames
        let requestID = frames.count > 1 ? frames[1] : []
        guard !request.isTruncated, frames.count >= 6, frames[0] == Array("1.0".utf8) else {
            malformed += 1
            return Reply(requestID: requestID, status: "500", text: "Malformed ZAP request")
        }
        let address = String(decoding: frames[3], as: UTF8.self)
        let mechanism = String(decoding: frames[5], as: UTF8.self)
        guard mechanism == "CURVE" else {
            return Reply(
                requestID: requestID,
                status: "400",
                text: "Mechanism \(mechanism) not allowed",
                address: address
            )
        }
        guard frames.count == 7, frames[6].count == 32 else {
            malformed += 1
            return Reply(requestID: requestID, status: "500", text: "Malformed CURVE credentials", address: address)
        }
        let key = frames[6]
        guard authorizedKeys.contains(key) else {
            return Reply(requestID: requestID, status: "400", text: "Unknown client key", address: address)
        }
        return Reply(requestID: requestID, status: "200", text: "OK", userID: Z85.encodeKey(key), address: address)
    }
}
