/// A short digest that identifies a data set's contents: the SHA-256 of each split's shape and values.
public enum DataFingerprint {
    /// The fingerprint as 64 hex digits.
    public static func of(_ dataset: Dataset) -> String {
        bytes(of: dataset).hexString
    }

    /// The fingerprint as 32 bytes.
    public static func bytes(of dataset: Dataset) -> [UInt8] {
        var h = SHA256()
        for (name, split) in [("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test)] {
            guard let split else {
                h.update(Array("\(name):none;".utf8))
                continue
            }
            h.update(Array("\(name):\(split.count)x\(split.dimension):".utf8))
            switch split.storage {
            case .binary(let bytes):
                h.update(Array("u8;".utf8))
                h.update(bytes)
            case .real(let values):
                h.update(Array("f32;".utf8))
                h.update(floats: values)
            }
        }
        return h.finalize()
    }
}
