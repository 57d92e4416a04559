/// An error raised by the model library: what went wrong, and where.
///
/// The code lets callers react to a class of failure; the message is for people and names the
/// file, field or value at fault. New codes can be added without breaking callers.
public struct MADEError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The class of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// A data file that is missing, truncated, of the wrong shape or holds values it must not.
        public static let invalidData = Code("invalidData")
        /// A configuration that cannot describe a model (a zero dimension, an impossible split).
        public static let invalidConfiguration = Code("invalidConfiguration")
        /// A checkpoint that is corrupt, truncated or from an incompatible version.
        public static let invalidCheckpoint = Code("invalidCheckpoint")
        /// An operating-system call on a file failed.
        public static let io = Code("io")
        /// Training left the finite numbers: a loss or a score came out infinite or NaN.
        public static let diverged = Code("diverged")
        /// A size from a flag, a file or the wire that exceeds what the run can hold (memory,
        /// the limits of a format), refused before anything is allocated for it.
        public static let tooLarge = Code("tooLarge")
        /// Another process holds a resource this one needs (a checkpoint being written by another run).
        public static let busy = Code("busy")
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
