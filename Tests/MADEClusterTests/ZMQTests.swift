import Foundation
import Testing

@testable import MADECluster

// Every test uses real libzmq sockets on inproc:// or tcp://127.0.0.1:* only, and every wait is
// bounded by a receive or poll timeout, so no test can hang.

private func utf8(_ text: String) -> [UInt8] { Array(text.utf8) }

/// The port of a `tcp://127.0.0.1:<port>` endpoint.
private func tcpPort(_ endpoint: String) -> Int? {
    let prefix = "tcp://127.0.0.1:"
    guard endpoint.hasPrefix(prefix), let port = Int(endpoint.dropFirst(prefix.count)), (1...65535).contains(port)
    else { return nil }
    return port
}

/// Receives one message, waiting at most `milliseconds`.
private func receive(_ socket: ZMQSocket, within milliseconds: Int = 5000) throws -> [[UInt8]]? {
    try socket.set(.receiveTimeout(milliseconds: milliseconds))
    return try socket.receive()
}

/// A socket bound to a fresh wildcard TCP port on the loopback interface.
private func boundSocket(
    _ context: ZMQContext,
    _ kind: ZMQSocket.Kind,
    _ options: ZMQSocket.Option...
) throws -> ZMQSocket {
    let socket = try ZMQSocket(context: context, kind: kind)
    for option in options { try socket.set(option) }
    try socket.bind("tcp://127.0.0.1:*")
    return socket
}

/// A scratch directory, removed by the caller.
private func temporaryDirectory() throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("zmq-tests-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

@Suite("ZMQ sockets")
struct ZMQSocketTests {
    @Test("ROUTER/DEALER multipart round trip over a wildcard TCP port")
    func routerDealerRoundTrip() throws {
        let context = try ZMQContext()
        let router = try boundSocket(context, .router)
        let endpoint = router.lastEndpoint
        let port = try #require(tcpPort(endpoint), "lastEndpoint was \(endpoint)")
        #expect(endpoint == "tcp://127.0.0.1:\(port)")

        let dealer = try ZMQSocket(context: context, kind: .dealer)
        try dealer.set(.routingID(utf8("worker-1")))
        try dealer.connect(endpoint)
        #expect(dealer.lastEndpoint == endpoint)

        #expect(try dealer.send(bytes: [utf8("hello"), [], utf8("world")]) == .sent)
        let request = try #require(try receive(router))
        #expect(request == [utf8("worker-1"), utf8("hello"), [], utf8("world")])

        #expect(try router.send([.bytes(utf8("worker-1")), .bytes(utf8("reply")), .empty]) == .sent)
        #expect(try receive(dealer) == [utf8("reply"), []])
    }

    @Test("PAIR over inproc keeps frame boundaries, including empty frames")
    func inprocPair() throws {
        let context = try ZMQContext()
        let a = try ZMQSocket(context: context, kind: .pair)
        let b = try ZMQSocket(context: context, kind: .pair)
        try a.bind("inproc://pair-test")
        try b.connect("inproc://pair-test")
        let frames: [[UInt8]] = [[], [0], utf8("two"), [UInt8](repeating: 7, count: 1000), []]
        #expect(try a.send(bytes: frames) == .sent)
        #expect(try receive(b) == frames)
        #expect(try b.receive(dontWait: true) == nil)
    }

    @Test("a zero-copy owned frame of 4 MB arrives intact")
    func zeroCopyLargeFrame() throws {
        let context = try ZMQContext()
        let pull = try boundSocket(context, .pull)
        let push = try ZMQSocket(context: context, kind: .push)
        try push.connect(pull.lastEndpoint)

        let count = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        for i in 0..<count { buffer[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 13) }
        let filled = ZMQFrame.owned(byteCount: 64 << 10) { bytes in
            for i in 0..<bytes.count { bytes[i] = UInt8(truncatingIfNeeded: i) }
        }
        #expect(try push.send([.bytes(utf8("head")), .owned(buffer), filled]) == .sent)

        let message = try #require(try receive(pull))
        try #require(message.count == 3)
        #expect(message[0] == utf8("head"))
        #expect(message[1].count == count)
        #expect(message[1].indices.allSatisfy { message[1][$0] == UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 13) })
        #expect(message[2] == (0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0) })
    }

    @Test("MAXMSGSIZE: small frames pass, an oversized one is never delivered and drops the sender")
    func maxMessageSize() throws {
        let context = try ZMQContext()
        let pull = try boundSocket(context, .pull, .maxMessageSize(1024))
        let push = try ZMQSocket(context: context, kind: .push)
        try push.set(.reconnectInterval(milliseconds: 50))
        try push.connect(pull.lastEndpoint)

        #expect(try push.send(bytes: [utf8("small")]) == .sent)
        #expect(try receive(pull) == [utf8("small")])

        // The limit applies to each frame, not to the sum of a multipart message.
        let frame = [UInt8](repeating: 1, count: 1000)
        #expect(try push.send(bytes: [frame, frame, frame]) == .sent)
        #expect(try receive(pull) == [frame, frame, frame])

        #expect(try push.send(bytes: [[UInt8](repeating: 2, count: 4096)]) == .sent)
        #expect(try receive(pull, within: 400) == nil)

        // The sender reconnects; later small messages flow again, the oversized one never arrives.
        #expect(try push.send(bytes: [utf8("after")]) == .sent)
        #expect(try receive(pull) == [utf8("after")])
        #expect(try receive(pull, within: 200) == nil)
    }

    @Test("poll reports readable sockets and descriptors, and times out")
    func poll() throws {
        let context = try ZMQContext()
        let first = try ZMQSocket(context: context, kind: .pair)
        let second = try ZMQSocket(context: context, kind: .pair)
        let peer = try ZMQSocket(context: context, kind: .pair)
        try first.bind("inproc://poll-first")
        try second.bind("inproc://poll-second")
        try peer.connect("inproc://poll-second")
        let pipe = Pipe()
        let fd = pipe.fileHandleForReading.fileDescriptor
        let items: [ZMQPollItem] = [.socket(first), .socket(second), .fileDescriptor(fd)]

        #expect(try ZMQSocket.poll(items, timeoutMilliseconds: 0) == [false, false, false])
        let start = ContinuousClock.now
        #expect(try ZMQSocket.poll(items, timeoutMilliseconds: 50) == [false, false, false])
        #expect(ContinuousClock.now - start >= .milliseconds(40))

        try peer.send(bytes: [utf8("ping")])
        #expect(try ZMQSocket.poll(items, timeoutMilliseconds: 5000) == [false, true, false])
        #expect(try second.receive(dontWait: true) == [utf8("ping")])
        #expect(try ZMQSocket.poll(items, timeoutMilliseconds: 0) == [false, false, false])

        pipe.fileHandleForWriting.write(Data([1]))
        #expect(try ZMQSocket.poll(items, timeoutMilliseconds: 5000) == [false, false, true])
    }

    @Test("send reports unroutable ids with ROUTER_MANDATORY, and would-block without peers")
    func sendResults() throws {
        let context = try ZMQContext()
        let mandatory = try boundSocket(context, .router, .routerMandatory(true))
        #expect(try mandatory.send(bytes: [utf8("nobody"), utf8("x")]) == .unroutable)
        #expect(try mandatory.send(bytes: [utf8("nobody"), utf8("x")], dontWait: true) == .unroutable)

        let lenient = try boundSocket(context, .router)
        #expect(try lenient.send(bytes: [utf8("nobody"), utf8("x")]) == .sent)  // silently dropped

        let lonely = try ZMQSocket(context: context, kind: .dealer)
        #expect(try lonely.send(bytes: [utf8("x")], dontWait: true) == .wouldBlock)
        try lonely.set(.sendTimeout(milliseconds: 20))
        #expect(try lonely.send(bytes: [utf8("x")]) == .wouldBlock)
        // An owned frame is freed by libzmq even when the send did not happen.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)
        #expect(try lonely.send([.owned(buffer)], dontWait: true) == .wouldBlock)
    }

    @Test("a monitor reports a connection's handshake and its loss")
    func monitor() throws {
        let context = try ZMQContext()
        let router = try ZMQSocket(context: context, kind: .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context: context, kind: .dealer)
        try dealer.set(ConnectionHeartbeat.options(interval: 50, timeout: 1000))
        let monitor = try ZMQMonitor(watching: dealer, events: [.handshakeSucceeded, .disconnected])
        defer { monitor.close() }
        try monitor.socket.set(.receiveTimeout(milliseconds: 5000))
        try dealer.connect(router.lastEndpoint)
        #expect(try monitor.next(dontWait: false)?.kind == .handshakeSucceeded)
        router.close()
        let lost = try monitor.next(dontWait: false)
        #expect(lost?.kind == .disconnected)
        #expect(lost?.endpoint.hasPrefix("tcp://127.0.0.1:") == true)
    }

    @Test("receiveMessage(maxParts:) keeps the first frames and drains the rest")
    func boundedReceive() throws {
        let context = try ZMQContext()
        let a = try ZMQSocket(context: context, kind: .pair)
        let b = try ZMQSocket(context: context, kind: .pair)
        try a.bind("inproc://bounded")
        try b.connect("inproc://bounded")
        try a.send(bytes: (0..<10).map { [UInt8($0)] })
        try a.send(bytes: [utf8("next")])
        try b.set(.receiveTimeout(milliseconds: 5000))

        let first = try #require(try b.receiveMessage(maxParts: 3))
        #expect(first.frames == [[0], [1], [2]])
        #expect(first.discardedFrameCount == 7)
        #expect(first.isTruncated)

        let second = try #require(try b.receiveMessage(maxParts: 3))
        #expect(second.frames == [utf8("next")])
        #expect(!second.isTruncated)
        #expect(try b.receiveMessage(maxParts: 3, dontWait: true) == nil)
    }

    @Test("every option can be set; bad values are errors; a closed socket refuses work")
    func optionsAndClose() throws {
        let context = try ZMQContext()
        let socket = try ZMQSocket(context: context, kind: .router)
        #expect(try socket.linger == 0)
        let keys = try CurveKeyPair.generate()
        try socket.set(
            .linger(milliseconds: 10),
            .routingID(utf8("id")),
            .sendHighWaterMark(10),
            .receiveHighWaterMark(0),
            .routerMandatory(true),
            .routerHandover(true),
            .probeRouter(false),
            .immediate(true),
            .maxMessageSize(1 << 20),
            .reconnectInterval(milliseconds: 100),
            .reconnectIntervalMax(milliseconds: 1000),
            .heartbeatInterval(milliseconds: 1000),
            .heartbeatTimeout(milliseconds: 3000),
            .heartbeatTTL(milliseconds: 5000),
            .sendTimeout(milliseconds: 100),
            .receiveTimeout(milliseconds: 100),
            .ipv6(false),
            .zapDomain("made"),
            .curveServer(true),
            .curvePublicKey(keys.publicKey),
            .curveSecretKey(keys.secretKey),
            .curveServerKey(keys.publicKey)
        )
        #expect(try socket.linger == 10)
        #expect(try !socket.events.contains(.readable))
        #expect(try socket.fileDescriptor >= 0)

        let badKey = #expect(throws: ZMQError.self) { try socket.set(.curveSecretKey("short")) }
        #expect(badKey?.code == EINVAL)
        #expect(throws: ZMQError.self) { try socket.set(.linger(milliseconds: Int(Int32.max) + 1)) }
        #expect(throws: ZMQError.self) { try socket.bind("tcp://127.0.0.1:not-a-port") }

        try socket.bind("tcp://127.0.0.1:*")
        let endpoint = socket.lastEndpoint
        try socket.unbind(endpoint)
        socket.close()
        socket.close()
        #expect(socket.isClosed)
        #expect(socket.lastEndpoint == "")
        let closed = #expect(throws: ZMQError.self) { try socket.send(bytes: [[1]]) }
        #expect(closed?.code == ENOTSOCK)
        #expect(throws: ZMQError.self) { try ZMQSocket.poll([.socket(socket)], timeoutMilliseconds: 0) }
    }

    @Test("a signal during poll or a blocking receive means \"nothing yet\", not an error")
    func interruptedBySignal() throws {
        let context = try ZMQContext()
        let socket = try ZMQSocket(context: context, kind: .pull)
        try socket.bind("inproc://interrupted")
        try socket.set(.receiveTimeout(milliseconds: 5000))

        // A no-op handler without SA_RESTART, and a thread that signals this one until told to stop.
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        var previous = sigaction()
        sigaction(SIGUSR1, &action, &previous)
        defer { sigaction(SIGUSR1, &previous, nil) }
        // Test bodies run on pool threads that block most signals; let SIGUSR1 through here.
        var unblock = sigset_t()
        var previousMask = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, SIGUSR1)
        pthread_sigmask(SIG_UNBLOCK, &unblock, &previousMask)
        defer { pthread_sigmask(SIG_SETMASK, &previousMask, nil) }
        let signaller = Signaller(target: pthread_self())
        defer { signaller.stop() }

        let start = ContinuousClock.now
        #expect(try ZMQSocket.poll([.socket(socket)], timeoutMilliseconds: 5000) == [false])
        #expect(try socket.receive() == nil)
        #expect(ContinuousClock.now - start < .seconds(4), "the waits should end at the first signal")
    }

    @Test("a shut-down context makes blocking calls fail with ETERM")
    func contextShutdown() throws {
        let context = try ZMQContext()
        let socket = try ZMQSocket(context: context, kind: .pull)
        try socket.bind("inproc://shutdown")
        context.shutdown()
        let error = #expect(throws: ZMQError.self) { try socket.receive() }
        #expect(error?.isContextTerminated == true)
    }
}

/// Runs a CURVE server's poll loop (server socket plus ZAP handler) until `done` or `milliseconds`.
///
/// - Returns: the messages the server received.
private func serve(
    _ server: ZMQSocket,
    zap: ZAPHandler?,
    milliseconds: Int,
    until done: ([[[UInt8]]]) -> Bool = { _ in false }
) throws -> [[[UInt8]]] {
    var received: [[[UInt8]]] = []
    let deadline = ContinuousClock.now + .milliseconds(milliseconds)
    while ContinuousClock.now < deadline, !done(received) {
        var items: [ZMQPollItem] = [.socket(server)]
        if let zap { items.append(.socket(zap.socket)) }
        _ = try ZMQSocket.poll(items, timeoutMilliseconds: 20)
        zap?.handlePending()
        while let message = try server.receive(dontWait: true) { received.append(message) }
    }
    return received
}

@Suite("ZMQ CURVE security")
struct ZMQCurveTests {
    @Test("key pairs: generation, derivation, Z85 round trip, secret hidden from description")
    func keyPairs() throws {
        let pair = try CurveKeyPair.generate()
        #expect(pair.publicKey.utf8.count == 40)
        #expect(pair.secretKey.utf8.count == 40)
        #expect(try CurveKeyPair.publicKey(fromSecret: pair.secretKey) == pair.publicKey)
        #expect(try CurveKeyPair(secretKey: pair.secretKey) == pair)
        #expect(try CurveKeyPair(publicKey: pair.publicKey, secretKey: pair.secretKey) == pair)
        #expect(try CurveKeyPair.generate() != pair)
        #expect(!"\(pair)".contains(pair.secretKey))
        #expect(Z85.encodeKey(try Z85.decodeKey(pair.publicKey)) == pair.publicKey)

        let other = try CurveKeyPair.generate()
        let mismatch = #expect(throws: ClusterError.self) {
            try CurveKeyPair(publicKey: other.publicKey, secretKey: pair.secretKey)
        }
        #expect(mismatch?.code == .mismatchedKeys)
        // RFC 32's test vector.
        #expect(
            Z85.encodeKey(Array(repeating: [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B], count: 4).flatMap { $0 })
                == String(repeating: "HelloWorld", count: 4)
        )
    }

    @Test("key files: write and read back, modes 0600 and 0644, one bare key each, comments allowed")
    func keyFiles() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pair = try CurveKeyPair.generate()
        let secretPath = directory + "/node.key"
        let publicPath = directory + "/node.pub"
        try pair.write(secretPath: secretPath, publicPath: publicPath)

        let secretMode = try FileManager.default.attributesOfItem(atPath: secretPath)[.posixPermissions] as? Int
        let publicMode = try FileManager.default.attributesOfItem(atPath: publicPath)[.posixPermissions] as? Int
        #expect(secretMode == 0o600)
        #expect(publicMode == 0o644)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == ["node.key", "node.pub"])
        #expect(try String(contentsOfFile: publicPath, encoding: .utf8) == pair.publicKey + "\n")
        #expect(try String(contentsOfFile: secretPath, encoding: .utf8) == pair.secretKey + "\n")

        #expect(try CurveKeyPair.read(secretPath: secretPath) == pair)
        #expect(try CurveKeyPair.readPublicKey(path: publicPath) == pair.publicKey)

        // Overwriting keeps the mode exact.
        let next = try CurveKeyPair.generate()
        try next.write(secretPath: secretPath, publicPath: publicPath)
        #expect(try CurveKeyPair.read(secretPath: secretPath) == next)
        #expect(try FileManager.default.attributesOfItem(atPath: secretPath)[.posixPermissions] as? Int == 0o600)

        // Written by hand: comments, blank lines, no final newline, a comment after the key.
        let commented = directory + "/commented.key"
        try "# the worker on host 7\n\n  \(pair.secretKey)   # made 2026-12-01".write(
            toFile: commented,
            atomically: true,
            encoding: .utf8
        )
        try FileManager.default.setAttributes([.posixPermissions: 0o400], ofItemAtPath: commented)
        #expect(try CurveKeyPair.read(secretPath: commented) == pair)
        try "\(pair.publicKey)".write(toFile: directory + "/bare.pub", atomically: true, encoding: .utf8)
        #expect(try CurveKeyPair.readPublicKey(path: directory + "/bare.pub") == pair.publicKey)
    }

    @Test("authorized keys from a list with comments and from a directory of *.pub files")
    func authorizedKeys() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let a = try CurveKeyPair.generate()
        let b = try CurveKeyPair.generate()
        let c = try CurveKeyPair.generate()
        // '#' and '=' are Z85 characters: a key holding them is still a key, not a comment or a setting.
        let hashKey = "0##=#" + String(a.publicKey.dropFirst(5))
        let list = """
            # workers of this run
            \(a.publicKey)
              \(b.publicKey)   # worker-b

            \(hashKey) # the '#' inside the key is not a comment
            """
        try list.write(toFile: directory + "/authorized_keys", atomically: true, encoding: .utf8)
        let keys = try AuthorizedKeys.read(path: directory + "/authorized_keys")
        #expect(keys.count == 3)
        #expect(keys.contains(try Z85.decodeKey(a.publicKey)))
        #expect(keys.contains(z85: b.publicKey))
        #expect(keys.contains(z85: hashKey))
        #expect(!keys.contains(z85: c.publicKey))
        #expect(!keys.contains([UInt8](repeating: 0, count: 32)))

        let folder = directory + "/clients"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try a.write(secretPath: folder + "/a.key", publicPath: folder + "/a.pub")
        try b.write(secretPath: folder + "/b.key", publicPath: folder + "/b.pub")
        try "not a key file".write(toFile: folder + "/README", atomically: true, encoding: .utf8)
        let fromFolder = try AuthorizedKeys.read(path: folder)
        #expect(fromFolder == (try AuthorizedKeys(publicKeys: [a.publicKey, b.publicKey])))
    }

    @Test("an authorized CURVE client is accepted and its messages flow")
    func authorizedClient() throws {
        let context = try ZMQContext()
        let serverKeys = try CurveKeyPair.generate()
        let clientKeys = try CurveKeyPair.generate()
        let zap = try ZAPHandler(
            context: context,
            authorizedKeys: try AuthorizedKeys(publicKeys: [clientKeys.publicKey])
        )
        let server = try ZMQSocket(context: context, kind: .router)
        try server.configureCurveServer(keyPair: serverKeys, authenticator: zap)
        try server.bind("tcp://127.0.0.1:*")

        let client = try ZMQSocket(context: context, kind: .dealer)
        try client.configureCurveClient(keyPair: clientKeys, serverPublicKey: serverKeys.publicKey)
        try client.set(.routingID(utf8("good")))
        try client.connect(server.lastEndpoint)
        try client.send(bytes: [utf8("hello")])

        let received = try serve(server, zap: zap, milliseconds: 5000) { !$0.isEmpty }
        #expect(received == [[utf8("good"), utf8("hello")]])
        #expect(zap.accepted == 1)
        #expect(zap.rejected == 0)

        try server.send(bytes: [utf8("good"), utf8("welcome")])
        #expect(try receive(client) == [utf8("welcome")])
    }

    @Test("an unauthorized CURVE client is rejected and its messages never arrive")
    func unauthorizedClient() throws {
        let context = try ZMQContext()
        let serverKeys = try CurveKeyPair.generate()
        let known = try CurveKeyPair.generate()
        let stranger = try CurveKeyPair.generate()
        let zap = try ZAPHandler(context: context, authorizedKeys: try AuthorizedKeys(publicKeys: [known.publicKey]))
        let server = try ZMQSocket(context: context, kind: .router)
        try server.configureCurveServer(keyPair: serverKeys, authenticator: zap)
        try server.bind("tcp://127.0.0.1:*")

        let client = try ZMQSocket(context: context, kind: .dealer)
        try client.configureCurveClient(keyPair: stranger, serverPublicKey: serverKeys.publicKey)
        try client.connect(server.lastEndpoint)
        try client.send(bytes: [utf8("let me in")])

        var received = try serve(server, zap: zap, milliseconds: 5000) { _ in zap.rejected >= 1 }
        received += try serve(server, zap: zap, milliseconds: 300)
        #expect(received.isEmpty)
        #expect(zap.rejected >= 1)
        #expect(zap.accepted == 0)
        #expect(zap.lastRejectedAddress == "127.0.0.1")
    }

    @Test("a plain client never reaches a CURVE server")
    func plainClientToCurveServer() throws {
        let context = try ZMQContext()
        let serverKeys = try CurveKeyPair.generate()
        let zap = try ZAPHandler(
            context: context,
            authorizedKeys: try AuthorizedKeys(publicKeys: [serverKeys.publicKey])
        )
        let server = try ZMQSocket(context: context, kind: .router)
        try server.configureCurveServer(keyPair: serverKeys, authenticator: zap)
        try server.bind("tcp://127.0.0.1:*")

        let client = try ZMQSocket(context: context, kind: .dealer)
        try client.connect(server.lastEndpoint)
        try client.send(bytes: [utf8("plain text")])
        let received = try serve(server, zap: zap, milliseconds: 500)
        #expect(received.isEmpty)
        #expect(zap.accepted == 0)
    }

    @Test("without a ZAP handler, libzmq admits any CURVE client")
    func noHandlerAdmitsEveryone() throws {
        let context = try ZMQContext()
        let serverKeys = try CurveKeyPair.generate()
        let server = try ZMQSocket(context: context, kind: .router)
        try server.set(.curveServer(true), .curveSecretKey(serverKeys.secretKey))
        try server.bind("tcp://127.0.0.1:*")
        let client = try ZMQSocket(context: context, kind: .dealer)
        try client.configureCurveClient(keyPair: try CurveKeyPair.generate(), serverPublicKey: serverKeys.publicKey)
        try client.connect(server.lastEndpoint)
        try client.send(bytes: [utf8("anyone")])
        #expect(try receive(server)?.last == utf8("anyone"))
    }

    @Test("a handler bound after the server but before clients connect still guards it")
    func handlerAfterBind() throws {
        let context = try ZMQContext()
        let serverKeys = try CurveKeyPair.generate()
        let server = try ZMQSocket(context: context, kind: .router)
        try server.set(.curveServer(true), .curveSecretKey(serverKeys.secretKey))
        try server.bind("tcp://127.0.0.1:*")
        let zap = try ZAPHandler(
            context: context,
            authorizedKeys: try AuthorizedKeys(publicKeys: [serverKeys.publicKey])
        )
        let client = try ZMQSocket(context: context, kind: .dealer)
        try client.configureCurveClient(keyPair: try CurveKeyPair.generate(), serverPublicKey: serverKeys.publicKey)
        try client.connect(server.lastEndpoint)
        try client.send(bytes: [utf8("early")])
        var received = try serve(server, zap: zap, milliseconds: 5000) { _ in zap.rejected >= 1 }
        received += try serve(server, zap: zap, milliseconds: 200)
        #expect(received.isEmpty)
        #expect(zap.rejected >= 1)
    }

    @Test("malformed ZAP requests are answered, counted and survived")
    func malformedZAPRequests() throws {
        let context = try ZMQContext()
        let zap = try ZAPHandler(
            context: context,
            authorizedKeys: try AuthorizedKeys(publicKeys: [try CurveKeyPair.generate().publicKey])
        )
        let requester = try ZMQSocket(context: context, kind: .req)
        try requester.connect(ZAPHandler.endpoint)
        try requester.set(.receiveTimeout(milliseconds: 5000))
        let requests: [[[UInt8]]] = [
            [utf8("junk")],
            [utf8("2.0"), utf8("7"), [], utf8("1.2.3.4"), [], utf8("CURVE"), [UInt8](repeating: 0, count: 32)],
            [utf8("1.0"), utf8("8"), [], utf8("1.2.3.4"), [], utf8("CURVE"), [1, 2, 3]],
            [utf8("1.0"), utf8("9"), [], utf8("1.2.3.4"), [], utf8("PLAIN"), utf8("user"), utf8("password")],
            [utf8("1.0"), utf8("10"), [], utf8("1.2.3.4"), []] + Array(repeating: [UInt8](), count: 40),
        ]
        let expected = ["500", "500", "500", "400", "500"]
        for (request, status) in zip(requests, expected) {
            try requester.send(bytes: request)
            #expect(try ZMQSocket.poll([.socket(zap.socket)], timeoutMilliseconds: 5000) == [true])
            #expect(zap.handlePending() == 1)
            let reply = try #require(try requester.receive())
            #expect(reply.count == 6)
            #expect(reply.first == utf8("1.0"))
            #expect(reply.count > 2 && reply[2] == utf8(status))
            if request.count > 1 { #expect(reply[1] == request[1]) }
        }
        #expect(zap.rejected == 5)
        #expect(zap.malformed == 4)
        #expect(zap.accepted == 0)
        #expect(zap.lastRejectedAddress == "1.2.3.4")
    }
}

@Suite("ZMQ key file errors")
struct ZMQKeyFileErrorTests {
    /// Writes `text` to a file in a fresh directory and returns the path; `mode` 0600 unless given.
    private func file(_ name: String, _ text: String, in directory: String, mode: Int = 0o600) throws -> String {
        let path = directory + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        return path
    }

    @Test("missing, empty, truncated, non-Z85, doubled and open key files are errors that name the file")
    func badFiles() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pair = try CurveKeyPair.generate()

        let missing = directory + "/absent.key"
        let e1 = #expect(throws: ClusterError.self) { try CurveKeyPair.read(secretPath: missing) }
        #expect(e1?.code == .missingFile)
        #expect(e1?.description.contains(missing) == true)

        let empty = try file("empty.key", "# nothing yet\n", in: directory)
        let e2 = #expect(throws: ClusterError.self) { try CurveKeyPair.read(secretPath: empty) }
        #expect(e2?.code == .malformedKeyFile)
        #expect(e2?.description.contains(empty) == true)
        #expect(e2?.description.contains("no key") == true)

        let short = try file("short.pub", String(pair.publicKey.dropLast()) + "\n", in: directory)
        let e3 = #expect(throws: ClusterError.self) { try CurveKeyPair.readPublicKey(path: short) }
        #expect(e3?.code == .invalidKey)
        #expect(e3?.description.contains(short) == true)
        #expect(e3?.description.contains("39") == true)

        let invalid = try file("invalid.key", "# the key\n\(String(pair.secretKey.dropLast()))~\n", in: directory)
        let e4 = #expect(throws: ClusterError.self) { try CurveKeyPair.read(secretPath: invalid) }
        #expect(e4?.code == .invalidKey)
        #expect(e4?.description.contains(invalid) == true)
        #expect(e4?.description.contains("line 2") == true)
        #expect(e4?.description.contains("'~'") == true)

        let overflow = try file("overflow.pub", String(repeating: "0", count: 35) + "#####", in: directory)
        let e5 = #expect(throws: ClusterError.self) { try CurveKeyPair.readPublicKey(path: overflow) }
        #expect(e5?.code == .invalidKey)
        #expect(e5?.description.contains(overflow) == true)

        let other = try CurveKeyPair.generate()
        let two = try file("two.key", "\(pair.secretKey)\n\(other.secretKey)\n", in: directory)
        let e6 = #expect(throws: ClusterError.self) { try CurveKeyPair.read(secretPath: two) }
        #expect(e6?.code == .malformedKeyFile)
        #expect(e6?.description.contains(two) == true)
        #expect(e6?.description.contains("2 keys") == true)

        let open = try file("open.key", pair.secretKey + "\n", in: directory, mode: 0o644)
        let e7 = #expect(throws: ClusterError.self) { try CurveKeyPair.read(secretPath: open) }
        #expect(e7?.code == .security)
        #expect(e7?.description.contains("chmod 600 \(open)") == true)
        let groupOnly = try file("group.key", pair.secretKey + "\n", in: directory, mode: 0o640)
        #expect(throws: ClusterError.self) { try CurveKeyPair.read(secretPath: groupOnly) }
        // A public key file may be read by anyone.
        let openPublic = try file("open.pub", pair.publicKey + "\n", in: directory, mode: 0o644)
        #expect(try CurveKeyPair.readPublicKey(path: openPublic) == pair.publicKey)

        let prose = try file("prose.pub", "this is not a key\n", in: directory)
        let e8 = #expect(throws: ClusterError.self) { try CurveKeyPair.readPublicKey(path: prose) }
        #expect(e8?.code == .malformedKeyFile)
        #expect(e8?.description.contains(prose) == true)
    }

    @Test("a CZMQ certificate of an earlier version is refused with how to make the keys again")
    func certificates() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pair = try CurveKeyPair.generate()
        let secret = try file(
            "coordinator.key",
            """
            #   ZeroMQ CURVE **Secret** Certificate
            #   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

            metadata
            curve
                public-key = "\(pair.publicKey)"
                secret-key = "\(pair.secretKey)"

            """,
            in: directory
        )
        let e1 = #expect(throws: ClusterError.self) { try CurveKeyPair.read(secretPath: secret) }
        #expect(e1?.code == .malformedKeyFile)
        #expect(e1?.description.contains(secret) == true)
        #expect(e1?.description.contains("CZMQ certificate") == true)
        #expect(e1?.description.contains("made keygen") == true)
        let publicOnly = try file("coordinator.pub", "public-key = \"\(pair.publicKey)\"\n", in: directory)
        let e2 = #expect(throws: ClusterError.self) { try CurveKeyPair.readPublicKey(path: publicOnly) }
        #expect(e2?.description.contains("CZMQ certificate") == true)
        #expect(e2?.description.contains("line 1") == true)
        let folder = directory + "/clients"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let old = try file("w.pub", "curve\n    public-key=\"\(pair.publicKey)\"\n", in: folder)
        let e3 = #expect(throws: ClusterError.self) { try AuthorizedKeys.read(path: folder) }
        #expect(e3?.description.contains(old) == true && e3?.description.contains("CZMQ certificate") == true)

        // keygen on a folder of an earlier version writes nothing and says the same.
        let e4 = #expect(throws: ClusterError.self) { try ClusterSecurity.generate(folder: directory) }
        #expect(e4?.description.contains("CZMQ certificate") == true)
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
                == ["clients", "coordinator.key", "coordinator.pub"]
        )
    }

    @Test("a key folder that cannot be made is an error with the reason, naming the part at fault")
    func unmakeableFolder() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let plain = try file("plain", "not a folder\n", in: directory)
        let under = #expect(throws: ClusterError.self) { try ClusterSecurity.generate(folder: plain + "/keys") }
        #expect(under?.code == .io)
        #expect(
            under?.description.contains(plain + "/keys") == true
                && under?.description.contains("Not a directory") == true
        )
        let itself = #expect(throws: ClusterError.self) { try ClusterSecurity.generate(folder: plain) }
        #expect(itself?.code == .io && itself?.description.contains(plain) == true)
        let written = try ClusterSecurity.generate(folder: directory + "/a/b")
        #expect(written.count == 5 && FileManager.default.fileExists(atPath: directory + "/a/b/authorized_keys"))
    }

    @Test("authorized-key errors name the file at fault")
    func badAuthorizedKeys() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let good = try CurveKeyPair.generate().publicKey

        let list = try file("authorized_keys", "\(good)\n\(good.dropLast(3))\n", in: directory)
        let e1 = #expect(throws: ClusterError.self) { try AuthorizedKeys.read(path: list) }
        #expect(e1?.description.contains(list) == true)
        #expect(e1?.description.contains("line 2") == true)

        let onlyComments = try file("comments", "# nobody yet\n\n", in: directory)
        let e2 = #expect(throws: ClusterError.self) { try AuthorizedKeys.read(path: onlyComments) }
        #expect(e2?.description.contains(onlyComments) == true)

        let folder = directory + "/keys"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        _ = try file("a.pub", good, in: folder)
        let bad = try file("b.pub", "nonsense\n", in: folder)
        let e3 = #expect(throws: ClusterError.self) { try AuthorizedKeys.read(path: folder) }
        #expect(e3?.description.contains(bad) == true)

        let emptyFolder = directory + "/none"
        try FileManager.default.createDirectory(atPath: emptyFolder, withIntermediateDirectories: true)
        let e4 = #expect(throws: ClusterError.self) { try AuthorizedKeys.read(path: emptyFolder) }
        #expect(e4?.description.contains(emptyFolder) == true)

        let e5 = #expect(throws: ClusterError.self) { try AuthorizedKeys.read(path: directory + "/absent") }
        #expect(e5?.code == .missingFile)
        #expect(e5?.description.contains(directory + "/absent") == true)

        #expect(throws: ClusterError.self) { try AuthorizedKeys(publicKeys: ["too short"]) }
    }
}

/// Sends SIGUSR1 to one thread every 20 ms until stopped; `stop()` returns once it has finished.
private final class Signaller: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private let finished = DispatchSemaphore(value: 0)

    init(target: pthread_t) {
        let thread = Thread { [self] in
            while lock.withLock({ running }) {
                pthread_kill(target, SIGUSR1)
                usleep(20_000)
            }
            finished.signal()
        }
        thread.start()
    }

    func stop() {
        lock.withLock { running = false }
        finished.wait()
    }
}
