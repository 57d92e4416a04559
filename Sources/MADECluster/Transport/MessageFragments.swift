import MADE

/// Carries a wire frame larger than ``fragmentBytes`` as several ZeroMQ messages, each holding a
/// piece of it, and puts the pieces back together on the other side.
///
/// Why: libzmq resets its ZMTP heartbeat timers (`ZMQ_HEARTBEAT_TIMEOUT` after a PING, the peer's
/// `ZMQ_HEARTBEAT_TTL`) each time it has decoded a whole ZeroMQ frame, not as bytes arrive
/// (libzmq issue #2709). A 1.6 MB frame on a 2 Mbit/s link takes 6.4 s, and a connection whose
/// heartbeat timeout is shorter is torn down halfway, again and again. Cut into messages of
/// 64 KiB, the same bytes reset the peer's timers every 0.26 s on that link, so a connection
/// that is moving bytes stays up whatever the size of the message. The pieces are separate
/// messages, not the parts of one multipart message: libzmq 4.3.4 delivers a multipart message
/// only whole, and with heartbeats going both ways a 2 MB multipart message over a 2 Mbit/s link
/// was never delivered, while the same bytes as separate messages were.
///
/// Frames up to ``fragmentBytes`` go as they are. A fragment is laid out little-endian as:
///
///     "MADF" | version u16 | 0 u16 | sequence u32 | total u32 | offset u32 | bytes
///
/// `sequence` names the frame (every fragment of one frame carries the same), `total` is the
/// frame's size and `offset` where these bytes go. One peer's fragments arrive in order on its
/// connection; a frame whose fragments stop coming (the connection broke) is dropped when the
/// peer's next frame begins.
public enum MessageFragments {
    public static let magic: [UInt8] = Array("MADF".utf8)
    public static let headerSize = 20
    /// Most bytes of a frame in one fragment.
    public static let fragmentBytes = 64 << 10
    /// The largest ZeroMQ message either side sends, as libzmq sees it on the wire
    /// (`ZMQ_MAXMSGSIZE`): a fragment, with room for what the transport wraps it in (CURVE adds
    /// a command name, a nonce and an authenticator to every message).
    public static let largestMessage = headerSize + fragmentBytes + 1024

    /// What goes on the wire for `frame`, whose buffer this takes over: the frame itself when it
    /// holds at most `fragmentBytes`, otherwise its fragments (and the buffer is freed here).
    ///
    /// - Complexity: one copy of a large frame's bytes.
    public static func frames(
        for frame: UnsafeMutableRawBufferPointer,
        sequence: UInt32,
        fragmentBytes: Int = fragmentBytes
    ) -> [ZMQFrame] {
        precondition(fragmentBytes > 0, "MessageFragments: fragments hold at least one byte")
        guard frame.count > fragmentBytes else { return [.owned(frame)] }
        defer { frame.deallocate() }
        precondition(frame.count <= Int(UInt32.max), "MessageFragments: a frame is at most 4 GiB")
        return stride(from: 0, to: frame.count, by: fragmentBytes).map { offset in
            let count = min(fragmentBytes, frame.count - offset)
            return ZMQFrame.owned(byteCount: headerSize + count) { out in
                var writer = WireWriter(buffer: out)
                writer.bytes(magic)
                writer.integer(WireFormat.version)
                writer.integer(UInt16(0))
                writer.integer(sequence)
                writer.integer(UInt32(frame.count))
                writer.integer(UInt32(offset))
                writer.raw(UnsafeRawBufferPointer(rebasing: frame[offset..<(offset + count)]))
            }
        }
    }

    /// What goes on the wire for `message`: the same messages as ``frames(for:sequence:fragmentBytes:)``
    /// of its encoding, but a large frame is encoded straight into its fragments, laid end to end in
    /// one buffer that they share and send without a copy.
    ///
    /// - Complexity: one copy of the message's bytes, one allocation.
    public static func frames(
        encoding message: WireMessage,
        runID: UInt64,
        version: UInt16 = WireFormat.version,
        sequence: UInt32,
        fragmentBytes: Int = fragmentBytes
    ) -> [ZMQFrame] {
        precondition(fragmentBytes > 0, "MessageFragments: fragments hold at least one byte")
        let size = WireFormat.encodedSize(message)
        guard size > fragmentBytes else {
            return [.owned(WireFormat.encodeOwned(message, runID: runID, version: version))]
        }
        precondition(size <= Int(UInt32.max), "MessageFragments: a frame is at most 4 GiB")
        let count = (size + fragmentBytes - 1) / fragmentBytes
        let shared = SharedBuffer(byteCount: count * headerSize + size)
        var writer = WireWriter(buffer: shared.bytes, segment: fragmentBytes, gap: headerSize)
        WireFormat.write(message, runID: runID, size: size, version: version, to: &writer)
        precondition(writer.position == size, "MessageFragments: encoded \(writer.position) of \(size) bytes")
        return (0..<count).map { index in
            let offset = index * fragmentBytes
            let start = index * (headerSize + fragmentBytes)
            var header = WireWriter(buffer: UnsafeMutableRawBufferPointer(rebasing: shared.bytes[start...]))
            header.bytes(magic)
            header.integer(WireFormat.version)
            header.integer(UInt16(0))
            header.integer(sequence)
            header.integer(UInt32(size))
            header.integer(UInt32(offset))
            return .slice(shared, start..<(start + headerSize + min(fragmentBytes, size - offset)))
        }
    }

    /// Whether `bytes` begin as a fragment does.
    static func isFragment(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 4 && zip(bytes.prefix(4), magic).allSatisfy { $0 == $1 }
    }
}

/// Puts the fragments of each peer's frames back together (see ``MessageFragments``).
///
/// A peer has at most one frame in progress, of at most ``maxBytes``, so what a peer can make
/// this side hold is bounded by that; ``forget(_:)`` drops a peer's piece when it leaves.
public struct FragmentAssembler<Peer: Hashable> {
    /// What came of one received message.
    public struct Delivery {
        /// A whole frame: the message itself, or the frame its last fragment completed.
        public var frame: [UInt8]?
        /// Why a frame of this peer was dropped unfinished, or this fragment refused, if so.
        public var error: WireError?
    }

    private struct Partial {
        var sequence: UInt32
        var total: Int
        var bytes: [UInt8]
    }

    /// Largest frame accepted, in bytes.
    public let maxBytes: Int
    private var partials: [Peer: Partial] = [:]
    /// Frames dropped unfinished or refused.
    public private(set) var dropped = 0

    public init(maxBytes: Int) {
        self.maxBytes = maxBytes
    }

    /// Peers with a frame in progress.
    public var peersInProgress: Int { partials.count }

    /// Drops whatever `peer` has in progress (it left, or its connection is gone).
    public mutating func forget(_ peer: Peer) {
        partials[peer] = nil
    }

    /// Takes one message from `peer`: a whole frame is handed back as it is; a fragment is added
    /// to the peer's frame in progress, which is handed back once complete.
    ///
    /// - Complexity: one copy of the bytes.
    public mutating func receive(_ bytes: UnsafeRawBufferPointer, from peer: Peer) -> Delivery {
        guard MessageFragments.isFragment(bytes) else {
            // A whole frame: anything this peer had in progress will not be finished.
            return Delivery(frame: Array(bytes), error: breakOff(peer))
        }
        guard bytes.count > MessageFragments.headerSize else {
            return refuse(peer, "a fragment of \(bytes.count) bytes")
        }
        var reader = LittleEndianReader(UnsafeRawBufferPointer(rebasing: bytes[4...]))
        let version = reader.integer(as: UInt16.self)!
        let reserved = reader.integer(as: UInt16.self)!
        let sequence = reader.integer(as: UInt32.self)!
        let total = Int(reader.integer(as: UInt32.self)!)
        let offset = Int(reader.integer(as: UInt32.self)!)
        let piece = UnsafeRawBufferPointer(rebasing: bytes[MessageFragments.headerSize...])
        guard version == WireFormat.version else {
            partials[peer] = nil
            dropped += 1
            return Delivery(frame: nil, error: .unsupportedVersion(version))
        }
        guard reserved == 0 else { return refuse(peer, "a fragment's reserved word is not zero") }
        guard total <= maxBytes else {
            partials[peer] = nil
            dropped += 1
            return Delivery(
                frame: nil,
                error: .limitExceeded(field: "fragmented frame bytes", count: total, limit: maxBytes)
            )
        }
        var error: WireError?
        if offset == 0 {
            error = breakOff(peer)
            var bytes: [UInt8] = []
            bytes.reserveCapacity(total)
            partials[peer] = Partial(sequence: sequence, total: total, bytes: bytes)
        }
        guard var partial = partials.removeValue(forKey: peer), partial.sequence == sequence, partial.total == total,
            partial.bytes.count == offset, offset + piece.count <= total
        else {
            dropped += 1
            return Delivery(
                frame: nil,
                error: error
                    ?? .invalidField(
                        "a fragment at byte \(offset) of a \(total)-byte frame that did not begin, or began otherwise"
                    )
            )
        }
        partial.bytes.append(contentsOf: piece)
        if partial.bytes.count == total { return Delivery(frame: partial.bytes, error: error) }
        partials[peer] = partial
        return Delivery(frame: nil, error: error)
    }

    /// Drops `peer`'s frame in progress, if any, and says why.
    private mutating func breakOff(_ peer: Peer) -> WireError? {
        guard let partial = partials.removeValue(forKey: peer) else { return nil }
        dropped += 1
        return .invalidField("a fragmented frame broke off after \(partial.bytes.count) of \(partial.total) bytes")
    }

    private mutating func refuse(_ peer: Peer, _ what: String) -> Delivery {
        partials[peer] = nil
        dropped += 1
        return Delivery(frame: nil, error: .invalidField(what))
    }
}
