import CZeroMQ

/// A libzmq context: the I/O threads and the inproc namespace that sockets share.
///
/// Lifetime: every `ZMQSocket` keeps a strong reference to its context, so the context is
/// deinitialized only after all of its sockets have been closed. Deinit then calls `zmq_ctx_term`,
/// which waits for each closed socket's linger period; because `ZMQSocket` sets `ZMQ_LINGER` to 0
/// at creation (and the context is created non-blocky), termination does not wait for unsent
/// messages unless a caller raised a socket's linger on purpose.
///
/// A libzmq context is thread-safe, so this class is `Sendable`; the sockets made from it are not.
public final class ZMQContext: @unchecked Sendable {
    /// The `void *` returned by `zmq_ctx_new`; valid until deinit.
    let handle: UnsafeMutableRawPointer

    /// Creates a context.
    ///
    /// - Parameter ioThreads: libzmq I/O threads (`ZMQ_IO_THREADS`); one is enough for a few
    ///   connections at hundreds of MB/s.
    /// - Throws: `ZMQError` when libzmq cannot create the context or set its options.
    public init(ioThreads: Int = 1) throws {
        precondition(ioThreads >= 1, "a context needs at least one I/O thread")
        guard let handle = zmq_ctx_new() else { throw ZMQError.last("zmq_ctx_new") }
        self.handle = handle
        do {
            try ZMQError.check(zmq_ctx_set(handle, ZMQ_IO_THREADS, Int32(ioThreads)), "zmq_ctx_set(ZMQ_IO_THREADS)")
            try ZMQError.check(zmq_ctx_set(handle, ZMQ_BLOCKY, 0), "zmq_ctx_set(ZMQ_BLOCKY)")
        } catch {
            zmq_ctx_term(handle)
            throw error
        }
    }

    /// Makes every blocking call on this context's sockets fail with `ETERM`, from any thread.
    ///
    /// Use it to stop a thread that is blocked in `receive` or `poll`; sockets must still be
    /// closed (or released) afterwards. Calling it more than once is harmless.
    public func shutdown() {
        zmq_ctx_shutdown(handle)
    }

    deinit {
        // All sockets are closed by now (each retains the context). Retry on EINTR as libzmq asks.
        while zmq_ctx_term(handle) == -1 && zmq_errno() == EINTR {}
    }
}
