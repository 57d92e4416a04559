import CZeroMQ
import Foundation
import MADE

/// Z85, the ZeroMQ base-85 text form of binary keys (ZeroMQ RFC 32).
///
/// A 32-byte CURVE key is 40 characters drawn from
/// `0-9 a-z A-Z . - : + = ^ ! / * ? & < > ( ) [ ] { } @ % $ #`. `#` occurs inside keys but never
/// starts one (a 5-character group beginning with digit 84 would exceed 32 bits), so a line of a
/// key file that starts with `#` is a comment.
public enum Z85 {
    /// The 85 characters of the encoding, in digit order.
    static let alphabet = Array(
        ("0123456789" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + ".-:+=^!/*?&<>()[]{}@%$#").utf8
    )
    private static let isDigit: [Bool] = {
        var table = [Bool](repeating: false, count: 256)
        for c in alphabet { table[Int(c)] = true }
        return table
    }()

    /// Decodes a 40-character Z85 key to its 32 bytes.
    ///
    /// - Throws: ``ClusterError/Code/invalidKey`` saying whether the length, a character (and
    ///   where), or the value of a 5-character group is wrong.
    public static func decodeKey(_ text: String) throws -> [UInt8] {
        let utf8 = Array(text.utf8)
        guard utf8.count == 40 else {
            throw ClusterError(.invalidKey, "a CURVE key is 40 Z85 characters; this one has \(text.count)")
        }
        if let bad = utf8.firstIndex(where: { !isDigit[Int($0)] }) {
            let byte = utf8[bad]
            let shown =
                byte >= 0x21 && byte < 0x7F
                ? "'\(Character(UnicodeScalar(byte)))'" : String(format: "byte 0x%02X", byte)
            throw ClusterError(.invalidKey, "character \(bad + 1) of the key, \(shown), is not a Z85 character")
        }
        var key = [UInt8](repeating: 0, count: 32)
        let decoded = key.withUnsafeMutableBufferPointer { out in
            text.withCString { zmq_z85_decode(out.baseAddress, $0) }
        }
        guard decoded != nil else {
            throw ClusterError(.invalidKey, "the key is not valid Z85 (a 5-character group exceeds 32 bits)")
        }
        return key
    }

    /// Encodes 32 key bytes as 40 Z85 characters.
    public static func encodeKey(_ key: [UInt8]) -> String {
        precondition(key.count == 32, "a CURVE key has 32 bytes")
        var text = [CChar](repeating: 0, count: 41)
        _ = text.withUnsafeMutableBufferPointer { out in
            key.withUnsafeBufferPointer { zmq_z85_encode(out.baseAddress, $0.baseAddress, 32) }
        }
        return String(decoding: text.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A long-term CURVE key pair in Z85 text form (40 characters each).
///
/// On disk a key pair is two key files (``KeyFile``): the secret key alone in a file of mode
/// 0600, the public key alone in a file of mode 0644. `description` shows only the public key,
/// so logging a key pair does not leak the secret.
public struct CurveKeyPair: Sendable, Equatable, CustomStringConvertible {
    /// The public key, 40 Z85 characters; give it to peers.
    public let publicKey: String
    /// The secret key, 40 Z85 characters; keep it in a 0600 file.
    public let secretKey: String

    /// A key pair from two Z85 keys, checked to be valid and to belong together.
    ///
    /// - Throws: ``ClusterError`` (`.invalidKey`, `.mismatchedKeys`).
    public init(publicKey: String, secretKey: String) throws {
        _ = try Z85.decodeKey(publicKey)
        let derived = try Self.publicKey(fromSecret: secretKey)
        guard derived == publicKey else {
            throw ClusterError(.mismatchedKeys, "the public key \(publicKey) does not belong to the secret key")
        }
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// The key pair of a Z85 secret key, with its public key derived.
    public init(secretKey: String) throws {
        self.publicKey = try Self.publicKey(fromSecret: secretKey)
        self.secretKey = secretKey
    }

    private init(uncheckedPublic: String, secret: String) {
        self.publicKey = uncheckedPublic
        self.secretKey = secret
    }

    public var description: String { "CurveKeyPair(public: \(publicKey))" }

    /// A fresh random key pair (`zmq_curve_keypair`).
    ///
    /// - Throws: ``ClusterError/Code/curveUnavailable`` when libzmq lacks CURVE.
    public static func generate() throws -> CurveKeyPair {
        try requireCurve()
        var publicText = [CChar](repeating: 0, count: 41)
        var secretText = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&publicText, &secretText) == 0 else {
            throw ClusterError(.curveUnavailable, "zmq_curve_keypair failed: \(ZMQError.last("zmq_curve_keypair"))")
        }
        return CurveKeyPair(uncheckedPublic: string(publicText), secret: string(secretText))
    }

    /// The Z85 public key that belongs to a Z85 secret key (`zmq_curve_public`).
    ///
    /// - Throws: ``ClusterError`` (`.invalidKey`, `.curveUnavailable`).
    public static func publicKey(fromSecret secretKey: String) throws -> String {
        try requireCurve()
        _ = try Z85.decodeKey(secretKey)
        var publicText = [CChar](repeating: 0, count: 41)
        let rc = secretKey.withCString { zmq_curve_public(&publicText, $0) }
        guard rc == 0 else {
            throw ClusterError(.invalidKey, "cannot derive a public key: \(ZMQError.last("zmq_curve_public"))")
        }
        return string(publicText)
    }

    /// Writes the secret key file (mode 0600) and the public key file (mode 0644), each holding
    /// its one key and a newline, each atomically (``AtomicFile``): a reader never sees a partial
    /// key, and the secret is never readable by others, even briefly.
    ///
    /// - Throws: `MADEError.Code.io` naming the file that could not be written.
    public func write(secretPath: String, publicPath: String) throws {
        try AtomicFile.write(secretKey + "\n", to: secretPath, mode: 0o600)
        try AtomicFile.write(publicKey + "\n", to: publicPath, mode: 0o644)
    }

    /// Reads a key pair from a secret key file, which must hold one key and be closed to other
    /// users (no group or other permission bits, as `ssh` asks of its keys).
    ///
    /// - Throws: ``ClusterError`` naming the file (`.missingFile`, `.io`, `.security`,
    ///   `.invalidKey`, `.malformedKeyFile`).
    public static func read(secretPath: String) throws -> CurveKeyPair {
        let secret = try KeyFile.load(secretPath, secret: true).single(what: "secret key", path: secretPath)
        do {
            return try CurveKeyPair(secretKey: secret)
        } catch var error as ClusterError {
            error.path = secretPath
            throw error
        }
    }

    /// Reads a public key file, which must hold one key.
    ///
    /// - Throws: ``ClusterError`` naming the file.
    public static func readPublicKey(path: String) throws -> String {
        try KeyFile.load(path).single(what: "public key", path: path)
    }

    private static func requireCurve() throws {
        guard zmq_has("curve") == 1 else {
            throw ClusterError(.curveUnavailable, "this libzmq was built without CURVE security")
        }
    }

    private static func string(_ text: [CChar]) -> String {
        String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The set of client public keys a CURVE server accepts.
///
/// Read from a key file (``KeyFile``: one key a line, with comments) or from a directory whose
/// `*.pub` files are key files.
public struct AuthorizedKeys: Sendable, Equatable {
    private var keys: Set<[UInt8]>

    /// The keys given in Z85.
    ///
    /// - Throws: ``ClusterError/Code/invalidKey`` for the first bad key.
    public init(publicKeys: [String]) throws {
        keys = Set(try publicKeys.map(Z85.decodeKey))
    }

    private init(keys: Set<[UInt8]>) {
        self.keys = keys
    }

    /// The keys in a key file, or in the `*.pub` files of a directory.
    ///
    /// - Throws: ``ClusterError`` naming the file at fault; also when no key is found at all,
    ///   since a server that trusts nobody is almost certainly misconfigured.
    public static func read(path: String) throws -> AuthorizedKeys {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ClusterError(.missingFile, "no such file or directory", path: path)
        }
        var files = [path]
        if isDirectory.boolValue {
            let names: [String]
            do {
                names = try FileManager.default.contentsOfDirectory(atPath: path)
            } catch {
                throw ClusterError(.io, "cannot list the directory: \(error.localizedDescription)", path: path)
            }
            files = names.filter { $0.hasSuffix(".pub") }.sorted().map { (path as NSString).appendingPathComponent($0) }
        }
        var keys: Set<[UInt8]> = []
        for file in files {
            let found = try KeyFile.load(file).keys
            if found.isEmpty { throw ClusterError(.malformedKeyFile, "holds no public key", path: file) }
            for entry in found { keys.insert(entry.bytes) }
        }
        if keys.isEmpty {
            let what = isDirectory.boolValue ? "holds no *.pub key files" : "holds no public keys"
            throw ClusterError(.malformedKeyFile, what, path: path)
        }
        return AuthorizedKeys(keys: keys)
    }

    /// The number of distinct keys.
    public var count: Int { keys.count }

    /// True when the 32-byte binary public key is authorized.
    public func contains(_ key32Bytes: [UInt8]) -> Bool {
        keys.contains(key32Bytes)
    }

    /// True when the Z85 public key is authorized (false for a malformed key).
    public func contains(z85 key: String) -> Bool {
        guard let bytes = try? Z85.decodeKey(key) else { return false }
        return keys.contains(bytes)
    }

    /// Adds a Z85 public key.
    public mutating func insert(z85 key: String) throws {
        keys.insert(try Z85.decodeKey(key))
    }
}

/// The keys of one key file: one 40-character Z85 key a line, as `authorized_keys` holds them.
///
/// A line is blank, a comment starting with `#`, or a key optionally followed by blanks and a
/// `# comment`. A secret key file holds one key, a public key file one key, `authorized_keys`
/// any number. Certificates in CZMQ's format, which earlier versions of `made keygen` wrote, are
/// recognised and refused with a note on how to make the keys again.
struct KeyFile {
    struct Entry {
        var key: String
        var bytes: [UInt8]
        var line: Int
    }

    var keys: [Entry] = []

    /// Key files are small; anything larger is refused rather than read into memory.
    static let maximumSize = 1 << 20

    /// Reads and parses `path`, with errors that name it. A `secret` file must grant no access
    /// to its group or to others.
    static func load(_ path: String, secret: Bool = false) throws -> KeyFile {
        let text = try readText(path, secret: secret)
        do {
            return try parse(text)
        } catch var error as ClusterError {
            error.path = path
            throw error
        }
    }

    static func parse(_ text: String) throws -> KeyFile {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        if let number = lines.firstIndex(where: isCertificateLine).map({ $0 + 1 }) {
            throw ClusterError(
                .malformedKeyFile,
                """
                line \(number): a CZMQ certificate, the key format of earlier versions of made; key \
                files now hold one bare Z85 key a line: make new keys with `made keygen FOLDER` in \
                an empty folder
                """
            )
        }
        var file = KeyFile()
        for (offset, line) in lines.enumerated() where !line.isEmpty && !line.hasPrefix("#") {
            let number = offset + 1
            let tokens = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard tokens.count == 1 || tokens[1].hasPrefix("#") else {
                throw ClusterError(.malformedKeyFile, "line \(number): not a key or a `# comment`")
            }
            do {
                let key = String(tokens[0])
                file.keys.append(Entry(key: key, bytes: try Z85.decodeKey(key), line: number))
            } catch let error as ClusterError {
                throw ClusterError(error.code, "line \(number): \(error.message)")
            }
        }
        return file
    }

    /// The one key of a secret or public key file.
    func single(what: String, path: String) throws -> String {
        guard keys.count == 1 else {
            let lines = keys.map { "\($0.line)" }.joined(separator: ", ")
            let found = keys.isEmpty ? "no key" : "\(keys.count) keys (lines \(lines))"
            throw ClusterError(.malformedKeyFile, "holds \(found); a \(what) file holds one", path: path)
        }
        return keys[0].key
    }

    /// A line only a CZMQ certificate has: its section names, or a `public-key = "..."` or
    /// `secret-key = "..."` setting.
    private static func isCertificateLine(_ line: String) -> Bool {
        if line == "curve" || line == "metadata" { return true }
        for name in ["public-key", "secret-key"] where line.hasPrefix(name) {
            if line.dropFirst(name.count).drop(while: { $0 == " " || $0 == "\t" }).hasPrefix("=") { return true }
        }
        return false
    }

    private static func readText(_ path: String, secret: Bool) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { throw ClusterError(.missingFile, "no such file", path: path) }
            throw ClusterError(.io, "cannot open: \(String(cString: strerror(code)))", path: path)
        }
        defer { _ = Foundation.close(fd) }
        if secret {
            var info = stat()
            guard fstat(fd, &info) == 0 else {
                throw ClusterError(.io, "cannot stat: \(String(cString: strerror(errno)))", path: path)
            }
            let mode = info.st_mode & 0o777
            guard mode & 0o077 == 0 else {
                throw ClusterError(
                    .security,
                    """
                    a secret key open to other users (mode \(String(mode, radix: 8))) is refused; \
                    make it private with `chmod 600 \(path)`
                    """,
                    path: path
                )
            }
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { break }
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                throw ClusterError(.io, "cannot read: \(String(cString: strerror(code)))", path: path)
            }
            bytes += chunk[0..<n]
            if bytes.count > maximumSize {
                throw ClusterError(.io, "larger than \(maximumSize) bytes; not a key file", path: path)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
