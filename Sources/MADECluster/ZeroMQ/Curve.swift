import CZeroMQ
import MADE
import Foundation

/// A problem with a CURVE key or key file: what went wrong, and in which file.
///
/// The code lets callers react to a class of failure; the message is for people and names the
/// line and value at fault. New codes can be added without breaking callers.
public struct CurveKeyError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The class of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// The key file (or directory) does not exist.
        public static let missingFile = Code("missingFile")
        /// The file exists but cannot be read or written (permissions, a directory, too large).
        public static let io = Code("io")
        /// A key is not 40 characters of Z85 encoding 32 bytes.
        public static let invalidKey = Code("invalidKey")
        /// The file is not a key file: no key where one is needed, or lines that are not keys.
        public static let malformedFile = Code("malformedFile")
        /// A file's public key does not belong to its secret key.
        public static let mismatchedKeys = Code("mismatchedKeys")
        /// A key file is already there, and replacing it was not asked for.
        public static let exists = Code("exists")
        /// This libzmq was built without CURVE support.
        public static let curveUnavailable = Code("curveUnavailable")
    }

    public var code: Code
    public var message: String
    /// The file the error concerns, when there is one.
    public var path: String?

    public init(_ code: Code, _ message: String, path: String? = nil) {
        self.code = code
        self.message = message
        self.path = path
    }

    public var description: String {
        if let path { return "\(path): \(message)" }
        return message
    }
}

/// Z85, the ZeroMQ base-85 text form of binary keys (ZeroMQ RFC 32).
///
/// A 32-byte CURVE key is 40 characters drawn from
/// `0-9 a-z A-Z . - : + = ^ ! / * ? & < > ( ) [ ] { } @ % $ #`. `#` and `=` occur inside keys,
/// which the key-file reader takes into account; `#` never starts one, since a 5-character group
/// beginning with digit 84 would exceed 32 bits.
public enum Z85 {
    /// The 85 characters of the encoding, in digit order.
    static let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#".utf8)
    private static let isDigit: [Bool] = {
        var table = [Bool](repeating: false, count: 256)
        for c in alphabet { table[Int(c)] = true }
        return table
    }()

    /// True when `text` is exactly 40 Z85 characters (it may still overflow; `decodeKey` checks that).
    static func looksLikeKey<S: StringProtocol>(_ text: S) -> Bool {
        text.utf8.count == 40 && text.utf8.allSatisfy { isDigit[Int($0)] }
    }

    /// Decodes a 40-character Z85 key to its 32 bytes.
    ///
    /// - Throws: `CurveKeyError.Code.invalidKey` saying whether the length, a character (and
    ///   where), or the value of a 5-character group is wrong.
    public static func decodeKey(_ text: String) throws -> [UInt8] {
        let utf8 = Array(text.utf8)
        guard utf8.count == 40 else {
            throw CurveKeyError(.invalidKey, "a CURVE key is 40 Z85 characters; this one has \(text.count)")
        }
        if let bad = utf8.firstIndex(where: { !isDigit[Int($0)] }) {
            let shown = utf8[bad] >= 0x21 && utf8[bad] < 0x7F ? "'\(Character(UnicodeScalar(utf8[bad])))'" : String(format: "byte 0x%02X", utf8[bad])
            throw CurveKeyError(.invalidKey, "character \(bad + 1) of the key, \(shown), is not a Z85 character")
        }
        var key = [UInt8](repeating: 0, count: 32)
        let decoded = key.withUnsafeMutableBufferPointer { out in
            text.withCString { zmq_z85_decode(out.baseAddress, $0) }
        }
        guard decoded != nil else {
            throw CurveKeyError(.invalidKey, "the key is not valid Z85 (a 5-character group exceeds 32 bits)")
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
/// `description` shows only the public key, so logging a key pair does not leak the secret.
public struct CurveKeyPair: Sendable, Equatable, CustomStringConvertible {
    /// The public key, 40 Z85 characters; give it to peers.
    public let publicKey: String
    /// The secret key, 40 Z85 characters; keep it in a 0600 file.
    public let secretKey: String

    /// A key pair from two Z85 keys, checked to be valid and to belong together.
    ///
    /// - Throws: `CurveKeyError` (`.invalidKey`, `.mismatchedKeys`).
    public init(publicKey: String, secretKey: String) throws {
        _ = try Z85.decodeKey(publicKey)
        let derived = try Self.publicKey(fromSecret: secretKey)
        guard derived == publicKey else {
            throw CurveKeyError(.mismatchedKeys, "the public key \(publicKey) does not belong to the secret key")
        }
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// The key pair of a Z85 secret key, with its public key derived.
    public init(secretKey: String) throws {
        self.publicKey = try Self.publicKey(fromSecret: secretKey)
        self.secretKey = secretKey
    }

    public var description: String { "CurveKeyPair(public: \(publicKey))" }

    /// A fresh random key pair (`zmq_curve_keypair`).
    ///
    /// - Throws: `CurveKeyError.Code.curveUnavailable` when libzmq lacks CURVE.
    public static func generate() throws -> CurveKeyPair {
        try requireCurve()
        var publicText = [CChar](repeating: 0, count: 41)
        var secretText = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&publicText, &secretText) == 0 else {
            throw CurveKeyError(.curveUnavailable, "zmq_curve_keypair failed: \(ZMQError.last("zmq_curve_keypair"))")
        }
        let pair = CurveKeyPair(uncheckedPublic: string(publicText), secret: string(secretText))
        return pair
    }

    /// The Z85 public key that belongs to a Z85 secret key (`zmq_curve_public`).
    ///
    /// - Throws: `CurveKeyError` (`.invalidKey`, `.curveUnavailable`).
    public static func publicKey(fromSecret secretKey: String) throws -> String {
        try requireCurve()
        _ = try Z85.decodeKey(secretKey)
        var publicText = [CChar](repeating: 0, count: 41)
        let rc = secretKey.withCString { zmq_curve_public(&publicText, $0) }
        guard rc == 0 else {
            throw CurveKeyError(.invalidKey, "cannot derive a public key: \(ZMQError.last("zmq_curve_public"))")
        }
        return string(publicText)
    }

    /// Writes the secret file (mode 0600) and the public file (mode 0644), each atomically.
    ///
    /// Both use the ZeroMQ certificate text format (as CZMQ's `zcert` writes it): a comment
    /// header, then `public-key = "<z85>"` and, in the secret file only, `secret-key = "<z85>"`
    /// under a `curve` section. Each file is written to a temporary name in the same directory,
    /// flushed and renamed, so a reader never sees a partial key and the secret is never readable
    /// by others, even briefly.
    ///
    /// - Throws: `CurveKeyError.Code.io` naming the file that could not be written.
    public func write(secretPath: String, publicPath: String) throws {
        let secretText = """
            #   ZeroMQ CURVE **Secret** Certificate
            #   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

            metadata
            curve
                public-key = "\(publicKey)"
                secret-key = "\(secretKey)"

            """
        let publicText = """
            #   ZeroMQ CURVE Public Certificate
            #   Give this file to the peers that must trust this key; it holds no secret.

            metadata
            curve
                public-key = "\(publicKey)"

            """
        try KeyFile.writeAtomically(secretText, to: secretPath, mode: 0o600)
        try KeyFile.writeAtomically(publicText, to: publicPath, mode: 0o644)
    }

    /// Reads a key pair from a secret file: a certificate with `secret-key` (its `public-key`, if
    /// present, must match), or a file holding just the 40-character Z85 secret key.
    ///
    /// - Throws: `CurveKeyError` naming the file (`.missingFile`, `.io`, `.invalidKey`,
    ///   `.malformedFile`, `.mismatchedKeys`).
    public static func read(secretPath: String) throws -> CurveKeyPair {
        let file = try KeyFile.load(secretPath)
        let secret: String
        if let entry = file.secretKey {
            secret = entry.key
        } else if file.bareKeys.count == 1, file.publicKey == nil {
            secret = file.bareKeys[0].key
        } else {
            throw CurveKeyError(.malformedFile, "holds no secret key (expected a `secret-key = \"...\"` line or a lone 40-character key)", path: secretPath)
        }
        let derived: String
        do {
            derived = try publicKey(fromSecret: secret)
        } catch var error as CurveKeyError {
            error.path = secretPath
            throw error
        }
        if let stated = file.publicKey, stated.key != derived {
            throw CurveKeyError(.mismatchedKeys, "line \(stated.line): the public-key does not belong to the secret-key", path: secretPath)
        }
        return CurveKeyPair(uncheckedPublic: derived, secret: secret)
    }

    /// Reads a Z85 public key from a certificate (`public-key = "..."`) or a file holding just the key.
    ///
    /// - Throws: `CurveKeyError` naming the file.
    public static func readPublicKey(path: String) throws -> String {
        let file = try KeyFile.load(path)
        if let entry = file.publicKey { return entry.key }
        if file.bareKeys.count == 1, file.secretKey == nil { return file.bareKeys[0].key }
        if file.bareKeys.count > 1 {
            throw CurveKeyError(.malformedFile, "holds \(file.bareKeys.count) keys; expected one public key", path: path)
        }
        throw CurveKeyError(.malformedFile, "holds no public key (expected a `public-key = \"...\"` line or a lone 40-character key)", path: path)
    }

    private init(uncheckedPublic: String, secret: String) {
        self.publicKey = uncheckedPublic
        self.secretKey = secret
    }

    private static func requireCurve() throws {
        guard zmq_has("curve") == 1 else {
            throw CurveKeyError(.curveUnavailable, "this libzmq was built without CURVE security")
        }
    }

    private static func string(_ text: [CChar]) -> String {
        String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The set of client public keys a CURVE server accepts.
///
/// Read from a file of keys (one Z85 key per line, or certificate files with
/// `public-key = "..."`; lines starting with `#` are comments, and a key may be followed by
/// whitespace and a `# comment`), or from a directory whose `*.pub` files are such files.
public struct AuthorizedKeys: Sendable, Equatable {
    private var keys: Set<[UInt8]>

    /// The keys given in Z85.
    ///
    /// - Throws: `CurveKeyError.Code.invalidKey` for the first bad key.
    public init(publicKeys: [String]) throws {
        keys = Set(try publicKeys.map(Z85.decodeKey))
    }

    /// The keys in a key file, or in the `*.pub` files of a directory.
    ///
    /// - Throws: `CurveKeyError` naming the file at fault; also when no key is found at all,
    ///   since a server that trusts nobody is almost certainly misconfigured.
    public static func read(path: String) throws -> AuthorizedKeys {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CurveKeyError(.missingFile, "no such file or directory", path: path)
        }
        var files = [path]
        if isDirectory.boolValue {
            let names: [String]
            do {
                names = try FileManager.default.contentsOfDirectory(atPath: path)
            } catch {
                throw CurveKeyError(.io, "cannot list the directory: \(error.localizedDescription)", path: path)
            }
            files = names.filter { $0.hasSuffix(".pub") }.sorted().map { (path as NSString).appendingPathComponent($0) }
        }
        var keys: Set<[UInt8]> = []
        for file in files {
            let parsed = try KeyFile.load(file)
            let found = (parsed.publicKey.map { [$0] } ?? []) + parsed.bareKeys
            if found.isEmpty {
                throw CurveKeyError(.malformedFile, "holds no public key", path: file)
            }
            for entry in found { keys.insert(entry.bytes) }
        }
        if keys.isEmpty {
            throw CurveKeyError(.malformedFile, isDirectory.boolValue ? "holds no *.pub key files" : "holds no public keys", path: path)
        }
        return AuthorizedKeys(keys: keys)
    }

    private init(keys: Set<[UInt8]>) {
        self.keys = keys
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

/// The keys found in one key file, with the line each came from.
struct KeyFile {
    struct Entry {
        var key: String
        var bytes: [UInt8]
        var line: Int
    }

    var publicKey: Entry?
    var secretKey: Entry?
    /// Lines holding nothing but a key.
    var bareKeys: [Entry] = []

    /// Key files are small; anything larger is refused rather than read into memory.
    static let maximumSize = 1 << 20

    /// Reads and parses `path`, with errors that name it.
    static func load(_ path: String) throws -> KeyFile {
        let text = try readText(path)
        do {
            return try parse(text)
        } catch var error as CurveKeyError {
            error.path = path
            throw error
        }
    }

    /// Parses the accepted line forms: blank, `# comment`, a bare 40-character key (optionally
    /// followed by a `# comment`), `name = "value"` (only `public-key` and `secret-key` are used),
    /// and the certificate section names `metadata` and `curve`.
    static func parse(_ text: String) throws -> KeyFile {
        var file = KeyFile()
        for (offset, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = offset + 1
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty { continue }
            let tokens = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            // Keys contain '#' and '=', so a line that is a key (and maybe a comment) is tried first.
            if Z85.looksLikeKey(tokens[0]), tokens.count == 1 || tokens[1].hasPrefix("#") {
                file.bareKeys.append(try entry(String(tokens[0]), line: number, what: "key"))
                continue
            }
            if line.hasPrefix("#") || line == "metadata" || line == "curve" { continue }
            if let (name, value) = setting(line) {
                switch name {
                case "public-key":
                    guard file.publicKey == nil else {
                        throw CurveKeyError(.malformedFile, "line \(number): a second public-key")
                    }
                    file.publicKey = try entry(value, line: number, what: "public-key")
                case "secret-key":
                    guard file.secretKey == nil else {
                        throw CurveKeyError(.malformedFile, "line \(number): a second secret-key")
                    }
                    file.secretKey = try entry(value, line: number, what: "secret-key")
                default:
                    continue  // other certificate metadata
                }
                continue
            }
            if tokens.count == 1 {
                // Most likely a truncated or padded key: say so.
                _ = try entry(String(tokens[0]), line: number, what: "key")
            }
            throw CurveKeyError(.malformedFile, "line \(number): not a key, a `# comment` or a `name = \"value\"` line")
        }
        return file
    }

    /// The name and value of a `name = "value"` or `name = value` line, as certificates write them.
    ///
    /// The value must be quoted or the `=` surrounded by blanks: a key also contains `=` and must
    /// not be mistaken for a setting.
    private static func setting(_ line: String) -> (name: String, value: String)? {
        guard let equals = line.firstIndex(of: "=") else { return nil }
        let name = line[..<equals]
        let rest = line[line.index(after: equals)...]
        let trimmedName = name.trimmingCharacters(in: .whitespaces)
        let trimmedValue = rest.trimmingCharacters(in: .whitespaces)
        let nameCharacters = trimmedName.unicodeScalars.allSatisfy {
            CharacterSet.alphanumerics.contains($0) || $0 == "-" || $0 == "_"
        }
        guard !trimmedName.isEmpty, nameCharacters else { return nil }
        let quoted = trimmedValue.count >= 2 && trimmedValue.hasPrefix("\"") && trimmedValue.hasSuffix("\"")
        if quoted { return (trimmedName, String(trimmedValue.dropFirst().dropLast())) }
        let spaced = name.last.map { $0 == " " || $0 == "\t" } == true && rest.first.map { $0 == " " || $0 == "\t" } == true
        return spaced ? (trimmedName, trimmedValue) : nil
    }

    private static func entry(_ key: String, line: Int, what: String) throws -> Entry {
        do {
            return Entry(key: key, bytes: try Z85.decodeKey(key), line: line)
        } catch let error as CurveKeyError {
            throw CurveKeyError(error.code, "line \(line): \(what): \(error.message)")
        }
    }

    private static func readText(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { throw CurveKeyError(.missingFile, "no such file", path: path) }
            throw CurveKeyError(.io, "cannot open: \(String(cString: strerror(code)))", path: path)
        }
        defer { _ = Foundation.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { break }
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                throw CurveKeyError(.io, "cannot read: \(String(cString: strerror(code)))", path: path)
            }
            bytes += chunk[0..<n]
            if bytes.count > maximumSize {
                throw CurveKeyError(.io, "larger than \(maximumSize) bytes; not a key file", path: path)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Writes `text` to `path` atomically with `mode` (``AtomicFile``).
    static func writeAtomically(_ text: String, to path: String, mode: mode_t) throws {
        do {
            try AtomicFile.write(text, to: path, mode: mode)
        } catch let error as MADEError {
            throw CurveKeyError(.io, error.message, path: path)
        }
    }
}
