import Foundation
import ZIPFoundation

/// Writes data sets as NumPy `.npz` archives (`train_data.npy`, `valid_data.npy`,
/// `test_data.npy`, stored uncompressed), which ``DatasetLoader`` and NumPy both read.
///
/// Binary splits are written as `|u1` (one byte per value), real ones as `<f4`.
public enum DatasetWriter {
    /// The `.npy` (version 1.0) bytes of `matrix`.
    public static func npy(_ matrix: DataMatrix) -> [UInt8] {
        let descr = matrix.isBinary ? "|u1" : "<f4"
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': (\(matrix.count), \(matrix.dimension)), }"
        // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        let length = UInt16(header.utf8.count)
        out += [UInt8(length & 0xFF), UInt8(length >> 8)]
        out += Array(header.utf8)
        switch matrix.storage {
        case .binary(let bytes):
            out += bytes
        case .real(let values):
            out.reserveCapacity(out.count + 4 * values.count)
            for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
        }
        return out
    }

    /// Writes the present splits of `dataset` to `path` (replacing it).
    public static func writeNPZ(_ dataset: Dataset, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        try? FileManager.default.removeItem(at: url)
        let archive: Archive
        do {
            archive = try Archive(url: url, accessMode: .create)
        } catch {
            throw MADEError(.io, "cannot create the archive: \(error)", path: path)
        }
        for (name, split) in [
            ("train_data.npy", dataset.train), ("valid_data.npy", dataset.valid), ("test_data.npy", dataset.test),
        ] {
            guard let split else { continue }
            let bytes = Data(npy(split))
            do {
                try archive.addEntry(
                    with: name,
                    type: .file,
                    uncompressedSize: Int64(bytes.count),
                    compressionMethod: .none
                ) { position, size in
                    bytes.subdata(in: Int(position)..<(Int(position) + size))
                }
            } catch {
                throw MADEError(.io, "cannot write \(name): \(error)", path: path)
            }
        }
    }
}
