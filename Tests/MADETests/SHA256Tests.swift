import Testing

@testable import MADE

@Suite("SHA-256")
struct SHA256Tests {
    @Test("FIPS 180-4 test vectors")
    func vectors() {
        #expect(SHA256.hex(Array("".utf8)) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(
            SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        )
        #expect(
            SHA256.hex([UInt8](repeating: 0x61, count: 1_000_000))
                == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        )
    }

    @Test("incremental updates equal one update")
    func incremental() {
        let message = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var s = SHA256()
        var i = 0
        for size in [1, 63, 64, 65, 7, 200, 600] {
            s.update(message[i..<min(1000, i + size)])
            i = min(1000, i + size)
        }
        #expect(s.finalize() == SHA256.hash(message))
    }

    @Test("the SHA extensions and the portable compression give the same digests, every length and split")
    func hardwareAgainstPortable() {
        var rng = RandomStream(seed: 12, domain: .sampling)
        let message = (0..<5000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        for length in Array(0...200) + [447, 448, 512, 1000, 4096, 5000] {
            var portable = SHA256(portable: true)
            var either = SHA256()
            portable.update(message[0..<length])
            // Split where the blocks do not fall: a part block, then the rest in one call.
            let cut = min(length, 37)
            either.update(message[0..<cut])
            either.update(message[cut..<length])
            #expect(either.finalize() == portable.finalize(), "length \(length)")
        }
        var portable = SHA256(portable: true)
        portable.update([UInt8](repeating: 0x61, count: 1_000_000))
        #expect(portable.finalize().hexString == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test("floats hash as little-endian bytes")
    func floats() {
        let v: [Float] = [1, -2.5, .infinity]
        let bytes = v.flatMap { f -> [UInt8] in
            let b = f.bitPattern
            return [UInt8(b & 0xff), UInt8((b >> 8) & 0xff), UInt8((b >> 16) & 0xff), UInt8(b >> 24)]
        }
        #expect(SHA256.hex(floats: v) == SHA256.hex(bytes))
    }
}
