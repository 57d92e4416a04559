import CZeroMQ

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One frame of an outgoing multipart message: bytes to copy, or a buffer handed over to libzmq.
///
/// - `.bytes(_:)` copies the array into a fresh libzmq message (`zmq_msg_init_size` + `memcpy`)
///   when the frame is sent; the array stays the caller's.
/// - `.owned(_:)` and `.owned(byteCount:initializingWith:)` send without copying
///   (`zmq_msg_init_data`): the buffer is given to libzmq, which frees it from its I/O thread once
///   the bytes are on the wire.
///
/// Ownership of an owned buffer passes to the frame when the frame is made. The buffer is freed
/// exactly once: by libzmq after a send (whatever the send's result), or by the frame when the last
/// copy of it is dropped unsent. A frame holding an owned buffer can therefore be sent only once;
/// sending it a second time is a programming error and stops the process.
public struct ZMQFrame {
    enum Storage {
        case bytes([UInt8])
        case owned(OwnedBuffer)
        case slice(SharedBuffer, Range<Int>)
    }

    let storage: Storage

    /// A frame whose bytes are copied into libzmq when it is sent.
    public static func bytes(_ bytes: [UInt8]) -> ZMQFrame {
        ZMQFrame(storage: .bytes(bytes))
    }

    /// A zero-length frame (for example the empty delimiter of a REQ/REP envelope).
    public static var empty: ZMQFrame { .bytes([]) }

    /// A zero-copy frame that takes ownership of `buffer`.
    ///
    /// `buffer` must come from `UnsafeMutableRawBufferPointer.allocate(byteCount:alignment:)` and
    /// must not be used, freed or handed elsewhere by the caller after this call: the frame (or
    /// libzmq, once sent) deallocates it.
    public static func owned(_ buffer: UnsafeMutableRawBufferPointer) -> ZMQFrame {
        ZMQFrame(storage: .owned(OwnedBuffer(buffer)))
    }

    /// A zero-copy frame of `byteCount` bytes, filled by `body`, whose buffer never leaves the frame.
    ///
    /// The pointer passed to `body` is valid only during the call. The bytes are uninitialized
    /// before `body` runs; `body` should write all of them.
    ///
    /// - Complexity: one allocation; no copy of the bytes is made afterwards.
    public static func owned(
        byteCount: Int,
        initializingWith body: (UnsafeMutableRawBufferPointer) throws -> Void
    ) rethrows -> ZMQFrame {
        precondition(byteCount >= 0, "a frame cannot have a negative size")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: byteCount, alignment: 16)
        let box = OwnedBuffer(buffer)
        try body(buffer)
        return ZMQFrame(storage: .owned(box))
    }

    /// A zero-copy frame of `range` of `buffer`, which several frames may share: the buffer is
    /// freed once no frame and no libzmq message holds it any more. Such a frame may be sent more
    /// than once.
    static func slice(_ buffer: SharedBuffer, _ range: Range<Int>) -> ZMQFrame {
        precondition(range.lowerBound >= 0 && range.upperBound <= buffer.bytes.count, "a slice lies in its buffer")
        return ZMQFrame(storage: .slice(buffer, range))
    }

    /// The frame's length in bytes.
    public var count: Int {
        switch storage {
        case .bytes(let bytes): return bytes.count
        case .owned(let box): return box.count
        case .slice(_, let range): return range.count
        }
    }

    /// Initializes the libzmq message `msg` with this frame's content, transferring an owned buffer.
    ///
    /// On success the message must later be sent or closed by the caller; on failure nothing
    /// needs closing (an owned buffer is then freed here).
    func initialize(_ msg: UnsafeMutablePointer<zmq_msg_t>) throws {
        switch storage {
        case .bytes(let bytes):
            try ZMQError.check(zmq_msg_init_size(msg, bytes.count), "zmq_msg_init_size(\(bytes.count))")
            if !bytes.isEmpty {
                bytes.withUnsafeBytes { source in
                    _ = memcpy(zmq_msg_data(msg), source.baseAddress!, source.count)
                }
            }
        case .owned(let box):
            let buffer = box.take()
            let rc = zmq_msg_init_data(
                msg,
                buffer.baseAddress,
                buffer.count,
                { data, _ in
                    data?.deallocate()
                },
                nil
            )
            if rc == -1 {
                let error = ZMQError.last("zmq_msg_init_data(\(buffer.count))")
                buffer.deallocate()
                throw error
            }
        case .slice(let shared, let range):
            // libzmq's message holds a reference of its own, released from its I/O thread.
            let hint = Unmanaged.passRetained(shared).toOpaque()
            let rc = zmq_msg_init_data(
                msg,
                shared.bytes.baseAddress! + range.lowerBound,
                range.count,
                { _, hint in
                    Unmanaged<SharedBuffer>.fromOpaque(hint!).release()
                },
                hint
            )
            if rc == -1 {
                Unmanaged<SharedBuffer>.fromOpaque(hint).release()
                throw ZMQError.last("zmq_msg_init_data(\(range.count))")
            }
        }
    }
}

/// A heap buffer that several zero-copy frames send pieces of; freed with the last reference.
final class SharedBuffer: @unchecked Sendable {
    /// Written only before the first frame of it is sent; read-only afterwards.
    let bytes: UnsafeMutableRawBufferPointer

    init(byteCount: Int) {
        bytes = .allocate(byteCount: max(1, byteCount), alignment: 16)
    }

    deinit {
        bytes.deallocate()
    }
}

/// A heap buffer owned by exactly one party at a time: this box until `take()`, then libzmq.
final class OwnedBuffer {
    private var buffer: UnsafeMutableRawBufferPointer?
    let count: Int

    init(_ buffer: UnsafeMutableRawBufferPointer) {
        self.buffer = buffer
        self.count = buffer.count
    }

    /// Hands the buffer over; the box will no longer free it.
    func take() -> UnsafeMutableRawBufferPointer {
        guard let buffer else {
            preconditionFailure("a zero-copy ZMQFrame was sent twice; its buffer already belongs to libzmq")
        }
        self.buffer = nil
        return buffer
    }

    deinit {
        buffer?.deallocate()
    }
}
