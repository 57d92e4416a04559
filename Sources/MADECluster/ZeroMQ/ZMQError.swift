import CZeroMQ

/// A failed libzmq call: the errno it reported and the operation that failed.
///
/// `code` is the errno value from `zmq_errno()` (for example `EAGAIN`, `EINVAL`, `ETERM`, or one of
/// libzmq's own codes such as `EFSM`); `description` adds libzmq's `zmq_strerror` text so a log line
/// says both what was attempted and why it failed.
public struct ZMQError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The errno value reported by libzmq.
    public let code: Int32
    /// The call that failed, with enough detail to find it (for example `zmq_bind(tcp://127.0.0.1:*)`).
    public let operation: String

    public init(code: Int32, operation: String) {
        self.code = code
        self.operation = operation
    }

    /// libzmq's text for `code`.
    public var message: String { String(cString: zmq_strerror(code)) }

    public var description: String { "\(operation): \(message) (errno \(code))" }

    /// True when the context was terminated or shut down (`ETERM`): a loop should stop.
    public var isContextTerminated: Bool { code == ETERM }

    /// The error for the call that just failed, read from `zmq_errno()`.
    static func last(_ operation: @autoclosure () -> String) -> ZMQError {
        ZMQError(code: zmq_errno(), operation: operation())
    }

    /// Returns `result` unchanged, or throws the current libzmq error when it is -1.
    ///
    /// - Throws: `ZMQError` carrying `zmq_errno()` and `operation`.
    @discardableResult
    static func check(_ result: Int32, _ operation: @autoclosure () -> String) throws -> Int32 {
        if result == -1 { throw last(operation()) }
        return result
    }
}
