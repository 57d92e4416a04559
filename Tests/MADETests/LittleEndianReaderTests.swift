import Testing

@testable import MADE

@Suite("Little-endian reader")
struct LittleEndianReaderTests {
    @Test("integers of every width read least significant byte first")
    func integers() {
        let bytes: [UInt8] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F]
        bytes.withUnsafeBytes { raw in
            var r = LittleEndianReader(raw)
            #expect(r.integer(as: UInt8.self) == 0x01)
            #expect(r.integer(as: UInt16.self) == 0x0302)
            #expect(r.integer(as: UInt32.self) == 0x0706_0504)
            #expect(r.integer(as: UInt64.self) == 0x0F0E_0D0C_0B0A_0908)
            #expect(r.remaining == 0)
        }
    }

    @Test("a read past the end returns nil and consumes nothing")
    func pastTheEnd() {
        let bytes: [UInt8] = [0xFF, 0xFE, 0xFD]
        bytes.withUnsafeBytes { raw in
            var r = LittleEndianReader(raw, position: 1)
            #expect(r.integer(as: UInt32.self) == nil)
            #expect(r.take(3) == nil)
            #expect(r.take(-1) == nil)
            #expect(r.array(count: 1, of: Float.self) == nil)
            #expect(r.array(count: -1, of: Float.self) == nil)
            #expect(r.position == 1)
            #expect(r.integer(as: Int16.self) == Int16(bitPattern: 0xFDFE))
            #expect(r.position == 3)
        }
    }

    @Test("arrays of 4-byte values keep their bits")
    func arrays() {
        let values: [Float] = [1.5, -0.0, .infinity, Float(bitPattern: 0x7FC0_0001), .leastNonzeroMagnitude]
        var bytes: [UInt8] = [0xAA]
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        bytes.withUnsafeBytes { raw in
            var r = LittleEndianReader(raw, position: 1)
            let read = r.array(count: values.count, of: Float.self)
            #expect(read?.map(\.bitPattern) == values.map(\.bitPattern))
            #expect(r.remaining == 0)
        }
    }
}
