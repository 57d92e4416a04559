/// libzmq's own heartbeats on a connection (ZMTP 3.1 PING and PONG), which tell whether the peer
/// at the other end is there, and tear the connection down when it is not.
///
/// Each side sends a PING every `interval` ms of the connection; the connection is dropped when
/// nothing at all (a PONG, a PING, any message) has arrived `timeout` ms after a PING, and the
/// PING asks the peer to drop it after `timeout` ms without a message from this side (the TTL,
/// which libzmq carries in tenths of a second, at most 6553.5 s). Since every fragment of a large
/// frame is a message of its own (``MessageFragments``), a connection that is moving bytes keeps
/// its heartbeats alive however long one frame takes.
public enum ConnectionHeartbeat {
    /// The socket options for heartbeats every `interval` ms and a `timeout` ms limit.
    public static func options(interval: UInt64, timeout: UInt64) -> [ZMQSocket.Option] {
        let maxTTL: UInt64 = 6_553_599
        return [
            .heartbeatInterval(milliseconds: Int(clamping: max(1, interval))),
            .heartbeatTimeout(milliseconds: Int(clamping: min(timeout, UInt64(Int32.max)))),
            .heartbeatTTL(milliseconds: Int(clamping: min(max(timeout, 100), maxTTL))),
        ]
    }
}
