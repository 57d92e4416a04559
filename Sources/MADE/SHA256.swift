import CKernels

/// SHA-256 (FIPS 180-4), for parameter checksums, data fingerprints and checkpoint integrity.
///
/// On a CPU with the x86 SHA extensions the blocks go through them (`made_sha256_blocks`), else
/// through the portable compression below: the same digest either way.
public struct SHA256: Sendable {
    /// Whether this CPU has the SHA extensions.
    static let hardwareAvailable = made_sha256_hardware() != 0
    private let hardware: Bool
    private var h: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) =
        (0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19)
    private var block = [UInt8](repeating: 0, count: 64)
    private var schedule = [UInt32](repeating: 0, count: 64)
    private var blockCount = 0
    private var length: UInt64 = 0

    private static let k: [UInt32] = [
        0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
        0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
        0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
        0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7, 0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
        0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
        0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
        0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
        0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
    ]

    public init() { hardware = SHA256.hardwareAvailable }

    /// With `portable`, the portable compression whatever the CPU (to check one against the other).
    init(portable: Bool) { hardware = !portable && SHA256.hardwareAvailable }

    /// The digest of `bytes`.
    public static func hash<C: Collection>(_ bytes: C) -> [UInt8] where C.Element == UInt8 {
        var s = SHA256()
        s.update(bytes)
        return s.finalize()
    }

    /// The lowercase hex digest of `bytes`.
    public static func hex<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        hash(bytes).hexString
    }

    /// The digest of the little-endian IEEE-754 bytes of `values`.
    public static func hex(floats values: [Float]) -> String {
        var s = SHA256()
        s.update(floats: values)
        return s.finalize().hexString
    }

    /// Adds the little-endian bytes of `values`.
    public mutating func update(floats values: [Float]) {
        values.withUnsafeBufferPointer { buffer in
            var chunk = [UInt8](repeating: 0, count: 4096)
            var i = 0
            while i < buffer.count {
                let n = min(1024, buffer.count - i)
                for j in 0..<n {
                    let bits = buffer[i + j].bitPattern.littleEndian
                    chunk[4 * j] = UInt8(truncatingIfNeeded: bits)
                    chunk[4 * j + 1] = UInt8(truncatingIfNeeded: bits >> 8)
                    chunk[4 * j + 2] = UInt8(truncatingIfNeeded: bits >> 16)
                    chunk[4 * j + 3] = UInt8(truncatingIfNeeded: bits >> 24)
                }
                update(chunk[0..<(4 * n)])
                i += n
            }
        }
    }

    /// Adds `bytes` to the message.
    public mutating func update<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        let handled = bytes.withContiguousStorageIfAvailable { buffer -> Bool in
            update(UnsafeRawBufferPointer(buffer))
            return true
        }
        if handled == nil {
            let copy = Array(bytes)
            copy.withUnsafeBytes { update($0) }
        }
    }

    /// Adds raw bytes to the message.
    public mutating func update(_ raw: UnsafeRawBufferPointer) {
        length &+= UInt64(raw.count)
        var index = 0
        if blockCount > 0 {
            while blockCount < 64 && index < raw.count {
                block[blockCount] = raw[index]
                blockCount += 1
                index += 1
            }
            if blockCount == 64 {
                let b = block
                b.withUnsafeBytes { compress($0.baseAddress!) }
                blockCount = 0
            }
        }
        if hardware, raw.count - index >= 64 {
            let blocks = (raw.count - index) / 64
            compressInHardware(raw.baseAddress! + index, blocks: blocks)
            index += 64 * blocks
        }
        while raw.count - index >= 64 {
            compress(raw.baseAddress! + index)
            index += 64
        }
        while index < raw.count {
            block[blockCount] = raw[index]
            blockCount += 1
            index += 1
        }
    }

    /// Finishes the message and returns the 32-byte digest.
    public mutating func finalize() -> [UInt8] {
        let bitLength = length &* 8
        var padding: [UInt8] = [0x80]
        let used = (blockCount + 1) % 64
        padding += [UInt8](repeating: 0, count: used <= 56 ? 56 - used : 120 - used)
        for shift in stride(from: 56, through: 0, by: -8) {
            padding.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift)))
        }
        let savedLength = length
        update(padding)
        length = savedLength
        var out: [UInt8] = []
        for word in [h.0, h.1, h.2, h.3, h.4, h.5, h.6, h.7] {
            out += [
                UInt8(word >> 24), UInt8(truncatingIfNeeded: word >> 16), UInt8(truncatingIfNeeded: word >> 8),
                UInt8(truncatingIfNeeded: word),
            ]
        }
        return out
    }

    private mutating func compressInHardware(_ p: UnsafeRawPointer, blocks: Int) {
        var state: [UInt32] = [h.0, h.1, h.2, h.3, h.4, h.5, h.6, h.7]
        state.withUnsafeMutableBufferPointer { s in
            made_sha256_blocks(s.baseAddress!, p.assumingMemoryBound(to: UInt8.self), blocks)
        }
        h = (state[0], state[1], state[2], state[3], state[4], state[5], state[6], state[7])
    }

    private mutating func compress(_ p: UnsafeRawPointer) {
        if hardware { return compressInHardware(p, blocks: 1) }
        var state = h
        schedule.withUnsafeMutableBufferPointer { w in
            SHA256.k.withUnsafeBufferPointer { k in
                for i in 0..<16 {
                    w[i] = UInt32(bigEndian: p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
                }
                for i in 16..<64 {
                    let s0 = SHA256.rotr(w[i - 15], 7) ^ SHA256.rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
                    let s1 = SHA256.rotr(w[i - 2], 17) ^ SHA256.rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
                    w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
                }
                var (a, b, c, d, e, f, g, hh) = state
                for i in 0..<64 {
                    let s1 = SHA256.rotr(e, 6) ^ SHA256.rotr(e, 11) ^ SHA256.rotr(e, 25)
                    let ch = (e & f) ^ (~e & g)
                    let t1 = hh &+ s1 &+ ch &+ k[i] &+ w[i]
                    let s0 = SHA256.rotr(a, 2) ^ SHA256.rotr(a, 13) ^ SHA256.rotr(a, 22)
                    let maj = (a & b) ^ (a & c) ^ (b & c)
                    let t2 = s0 &+ maj
                    hh = g
                    g = f
                    f = e
                    e = d &+ t1
                    d = c
                    c = b
                    b = a
                    a = t1 &+ t2
                }
                state = (
                    state.0 &+ a, state.1 &+ b, state.2 &+ c, state.3 &+ d, state.4 &+ e, state.5 &+ f, state.6 &+ g,
                    state.7 &+ hh
                )
            }
        }
        h = state
    }

    @inline(__always) private static func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
}

extension Array where Element == UInt8 {
    /// Lowercase hexadecimal.
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(count * 2)
        for b in self {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
