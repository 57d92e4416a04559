import Foundation
import Testing

@testable import MADE

@Suite("Image grids")
struct ImageGridTests {
    @Test("tiles images with padding and writes a valid PNG of that size")
    func grid() throws {
        // Two 2x3 images: one black, one white, plus values outside [0, 1] that must clamp.
        let images: [Float] = [0, 0, 0, 0, 0, -1, 1, 1, 1, 1, 1, 7]
        let grid = ImageGrid(images: images, imageRows: 2, imageColumns: 3, gridColumns: 2, padding: 1)
        #expect(grid.width == 2 * 3 + 3 && grid.height == 2 + 2)
        #expect(grid.pixels[1 * grid.width + 1] == 0)  // first image, top-left
        #expect(grid.pixels[1 * grid.width + 5] == 255)  // second image, top-left
        #expect(grid.pixels[0] == 128)  // padding
        #expect(grid.pixels[2 * grid.width + 3] == 0)  // clamped -1
        #expect(grid.pixels[2 * grid.width + 7] == 255)  // clamped 7

        let path = FileManager.default.temporaryDirectory.appendingPathComponent("grid-\(getpid()).png").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try grid.writePNG(to: path)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(Array(bytes.prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        #expect(Array(bytes[12..<16]) == Array("IHDR".utf8))
        let width = bytes[16..<20].reduce(0) { $0 << 8 | Int($1) }
        let height = bytes[20..<24].reduce(0) { $0 << 8 | Int($1) }
        #expect(width == grid.width && height == grid.height)
        #expect(bytes[24] == 8 && bytes[25] == 0)  // 8-bit greyscale
        #expect(throws: MADEError.self) { try grid.writePNG(to: "/nonexistent-folder/g.png") }
    }
}
