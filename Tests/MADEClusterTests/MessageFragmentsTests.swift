import Testing

@testable import MADECluster

@Suite("Message fragments")
struct MessageFragmentsTests {
    /// The bytes a frame would put on the wire (its owned buffer is taken and freed here).
    func bytes(_ frame: ZMQFrame) -> [UInt8] {
        switch frame.storage {
        case .bytes(let b): return b
        case .owned(let box):
            let buffer = box.take()
            defer { buffer.deallocate() }
            return Array(buffer)
        case .slice(let shared, let range):
            return Array(shared.bytes[range])
        }
    }

    /// An owned buffer holding `count` bytes of a pattern.
    func frame(_ count: Int, seed: UInt8 = 0) -> UnsafeMutableRawBufferPointer {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        for i in 0..<count { buffer[i] = UInt8(truncatingIfNeeded: i &* 31) &+ seed }
        return buffer
    }

    func pieces(
        _ count: Int,
        sequence: UInt32,
        fragmentBytes: Int = 1000,
        seed: UInt8 = 0
    ) -> (whole: [UInt8], pieces: [[UInt8]]) {
        let buffer = frame(count, seed: seed)
        let whole = Array(buffer)
        return (
            whole, MessageFragments.frames(for: buffer, sequence: sequence, fragmentBytes: fragmentBytes).map(bytes)
        )
    }

    @Test(
        """
        a small frame goes whole; a large one in pieces of at most the fragment size, which put back give the same \
        bytes
        """
    )
    func roundTrip() {
        let small = pieces(1000, sequence: 1)
        #expect(small.pieces == [small.whole])
        for count in [1001, 2000, 4321] {
            let large = pieces(count, sequence: 7)
            #expect(large.pieces.count == (count + 999) / 1000)
            #expect(large.pieces.allSatisfy { $0.count <= 1000 + MessageFragments.headerSize })
            #expect(large.pieces.allSatisfy { Array($0.prefix(4)) == MessageFragments.magic })
            var assembler = FragmentAssembler<Int>(maxBytes: 1 << 20)
            var delivered: [[UInt8]] = []
            for piece in large.pieces {
                let d = piece.withUnsafeBytes { assembler.receive($0, from: 1) }
                #expect(d.error == nil)
                if let f = d.frame { delivered.append(f) }
            }
            #expect(delivered == [large.whole])
            #expect(assembler.peersInProgress == 0 && assembler.dropped == 0)
        }
    }

    @Test(
        """
        a message encoded straight into its fragments gives the bytes of its encoding cut into fragments, for fragment \
        sizes that split its integers and its floats anywhere
        """
    )
    func encodedIntoFragments() throws {
        let values = (0..<777).map { Float($0) * 0.37 - 11 }
        let messages: [WireMessage] = [
            .result(
                WireMessage.Result(
                    step: 0x0102_0304_0506_0708,
                    shard: 3,
                    maskDigest: Array(0..<16),
                    lossSum: 123.25,
                    computeMicroseconds: 4567,
                    values: .inline(values),
                    ticket: 0xdead_beef
                )
            ),
            .task(
                WireMessage.Task(
                    step: 9,
                    shard: 1,
                    shardCount: 2,
                    maskSeed: 5,
                    rows: [4, 5, 6],
                    parameters: .inline(values)
                )
            ),
        ]
        for message in messages {
            let size = WireFormat.encodedSize(message)
            for fragmentBytes in [1, 3, 7, 13, 64, 1000, size - 1, size, size + 1] {
                let expected = MessageFragments.frames(
                    for: WireFormat.encodeOwned(message, runID: 42),
                    sequence: 9,
                    fragmentBytes: fragmentBytes
                ).map(bytes)
                let frames = MessageFragments.frames(
                    encoding: message,
                    runID: 42,
                    sequence: 9,
                    fragmentBytes: fragmentBytes
                ).map(bytes)
                #expect(frames == expected, "fragments of \(fragmentBytes) bytes")
                var assembler = FragmentAssembler<Int>(maxBytes: 1 << 20)
                var delivered: [UInt8]?
                for piece in frames {
                    let d = piece.withUnsafeBytes { assembler.receive($0, from: 0) }
                    #expect(d.error == nil)
                    if let f = d.frame { delivered = f }
                }
                let decoded = try #require(delivered.map { try WireFormat.decode($0) })
                #expect(decoded.runID == 42 && decoded.message == message)
            }
        }
    }

    @Test("peers' pieces interleave without mixing")
    func interleaved() {
        let x = pieces(2500, sequence: 1, seed: 1)
        let y = pieces(2500, sequence: 1, seed: 2)
        var assembler = FragmentAssembler<String>(maxBytes: 1 << 20)
        var out: [String: [UInt8]] = [:]
        for (px, py) in zip(x.pieces, y.pieces) {
            if let f = px.withUnsafeBytes({ assembler.receive($0, from: "x") }).frame { out["x"] = f }
            if let f = py.withUnsafeBytes({ assembler.receive($0, from: "y") }).frame { out["y"] = f }
        }
        #expect(out == ["x": x.whole, "y": y.whole])
    }

    @Test("a frame whose pieces stop coming is dropped when the peer's next frame begins, whole or in pieces")
    func brokenOff() {
        var assembler = FragmentAssembler<Int>(maxBytes: 1 << 20)
        let first = pieces(3000, sequence: 1)
        _ = first.pieces[0].withUnsafeBytes { assembler.receive($0, from: 1) }
        let small = [UInt8]("MADW....".utf8)
        let d = small.withUnsafeBytes { assembler.receive($0, from: 1) }
        #expect(d.frame == small && d.error != nil)
        _ = first.pieces[0].withUnsafeBytes { assembler.receive($0, from: 1) }
        let second = pieces(2500, sequence: 2)
        var frames: [[UInt8]] = []
        var errors = 0
        for piece in second.pieces {
            let d = piece.withUnsafeBytes { assembler.receive($0, from: 1) }
            if d.error != nil { errors += 1 }
            if let f = d.frame { frames.append(f) }
        }
        #expect(frames == [second.whole] && errors == 1 && assembler.dropped == 2)
    }

    @Test(
        """
        pieces out of order, of another frame, beyond the limit, of another version or with a reserved word are \
        refused and never spliced
        """
    )
    func refused() {
        let frame = pieces(3000, sequence: 5)
        func deliver(_ list: [[UInt8]], maxBytes: Int = 1 << 20) -> (frames: Int, errors: Int) {
            var assembler = FragmentAssembler<Int>(maxBytes: maxBytes)
            var result = (frames: 0, errors: 0)
            for piece in list {
                let d = piece.withUnsafeBytes { assembler.receive($0, from: 1) }
                if d.frame != nil { result.frames += 1 }
                if d.error != nil { result.errors += 1 }
            }
            return result
        }
        // The middle piece missing.
        #expect(deliver([frame.pieces[0], frame.pieces[2]]) == (0, 1))
        // A piece of another frame of the same size continuing this one.
        let other = pieces(3000, sequence: 6, seed: 9)
        #expect(deliver([frame.pieces[0], other.pieces[1], frame.pieces[2]]) == (0, 2))
        // Larger than the receiver takes.
        #expect(deliver(frame.pieces, maxBytes: 2999) == (0, 3))
        // Another version, a reserved word set, a bare header.
        var version = frame.pieces[0]
        version[4] = 99
        #expect(deliver([version]) == (0, 1))
        var reserved = frame.pieces[0]
        reserved[6] = 1
        #expect(deliver([reserved]) == (0, 1))
        #expect(deliver([Array(frame.pieces[0].prefix(MessageFragments.headerSize))]) == (0, 1))
    }

    @Test(
        """
        over real sockets, with and without CURVE, a frame of several megabytes crosses in pieces within the message \
        limit
        """,
        arguments: [false, true]
    )
    func overSockets(curve: Bool) throws {
        let context = try ZMQContext()
        let router = try ZMQSocket(context: context, kind: .router)
        let dealer = try ZMQSocket(context: context, kind: .dealer)
        var zap: ZAPHandler?
        try router.set(.maxMessageSize(Int64(MessageFragments.largestMessage)))
        try dealer.set(.maxMessageSize(Int64(MessageFragments.largestMessage)), .routingID(Array("w".utf8)))
        if curve {
            let serverKeys = try CurveKeyPair.generate()
            let clientKeys = try CurveKeyPair.generate()
            zap = try ZAPHandler(
                context: context,
                authorizedKeys: try AuthorizedKeys(publicKeys: [clientKeys.publicKey])
            )
            try router.configureCurveServer(keyPair: serverKeys, authenticator: zap!)
            try dealer.configureCurveClient(keyPair: clientKeys, serverPublicKey: serverKeys.publicKey)
        }
        try router.bind("tcp://127.0.0.1:*")
        try dealer.connect(router.lastEndpoint)
        let count = 3_000_000
        let buffer = frame(count, seed: 3)
        let whole = Array(buffer)
        for piece in MessageFragments.frames(for: buffer, sequence: 1) { #expect(try dealer.send([piece]) == .sent) }
        var assembler = FragmentAssembler<[UInt8]>(maxBytes: 4_000_000)
        var received: [UInt8]?
        var messages = 0
        let deadline = ContinuousClock.now + .seconds(20)
        while received == nil, ContinuousClock.now < deadline {
            _ = try ZMQSocket.poll(
                [.socket(router)] + (zap.map { [.socket($0.socket)] } ?? []),
                timeoutMilliseconds: 100
            )
            zap?.handlePending()
            var peer: [UInt8] = []
            while let message = try router.receiveMessage(
                maxParts: 2,
                dontWait: true,
                property: "Peer-Address",
                { index, bytes in
                    if index == 0 { peer = Array(bytes) } else { received = assembler.receive(bytes, from: peer).frame }
                }
            ) {
                #expect(message.frames == 2 && message.property == "127.0.0.1")
                messages += 1
            }
        }
        #expect(received.map { $0 == whole } == true, "the frame did not arrive whole")
        #expect(messages == (count + MessageFragments.fragmentBytes - 1) / MessageFragments.fragmentBytes)
    }
}
