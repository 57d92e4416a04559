import CPNG
import Foundation

/// Images laid out in a grid and written as an 8-bit greyscale PNG through libpng.
public struct ImageGrid: Sendable {
    public let width: Int
    public let height: Int
    /// Grey levels, row-major, 0 black to 255 white.
    public private(set) var pixels: [UInt8]

    /// Tiles `images` (each `rows x columns` values in [0, 1], row-major) into `gridColumns`
    /// columns, with `padding` pixels of grey between tiles; values are clamped to [0, 1]. Each
    /// value becomes a `scale x scale` square of pixels, and the padding is scaled alike.
    public init(images: [Float], imageRows: Int, imageColumns: Int, gridColumns: Int, padding: Int = 1, scale: Int = 1)
    {
        precondition(scale >= 1, "ImageGrid: scale \(scale) is not positive")
        let size = imageRows * imageColumns
        precondition(
            size > 0 && images.count % size == 0,
            "ImageGrid: \(images.count) values are not whole \(imageRows)x\(imageColumns) images"
        )
        let padding = padding * scale
        let count = images.count / size
        let columns = max(1, min(gridColumns, count))
        let rows = (count + columns - 1) / columns
        width = columns * imageColumns * scale + (columns + 1) * padding
        height = rows * imageRows * scale + (rows + 1) * padding
        pixels = [UInt8](repeating: 128, count: width * height)
        for k in 0..<count {
            let top = padding + (k / columns) * (imageRows * scale + padding)
            let left = padding + (k % columns) * (imageColumns * scale + padding)
            for r in 0..<imageRows {
                for c in 0..<imageColumns {
                    let v = images[k * size + r * imageColumns + c]
                    let clamped = v.isNaN ? 0 : min(1, max(0, v))
                    let grey = UInt8((clamped * 255).rounded())
                    for dy in 0..<scale {
                        let row = (top + r * scale + dy) * width + left + c * scale
                        for dx in 0..<scale { pixels[row + dx] = grey }
                    }
                }
            }
        }
    }

    /// Writes the grid as a PNG file (atomically: a temporary file, then a rename).
    public func writePNG(to path: String) throws {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = UInt32(PNG_FORMAT_GRAY)
        var size: Int = 0
        let encoded = pixels.withUnsafeBytes { raw -> [UInt8]? in
            // First ask for the size, then encode into a buffer of that size.
            guard png_image_write_to_memory(&image, nil, &size, 0, raw.baseAddress, Int32(width), nil) != 0 else {
                return nil
            }
            var buffer = [UInt8](repeating: 0, count: size)
            let written = buffer.withUnsafeMutableBytes { out in
                png_image_write_to_memory(&image, out.baseAddress, &size, 0, raw.baseAddress, Int32(width), nil)
            }
            return written != 0 ? Array(buffer.prefix(size)) : nil
        }
        guard let encoded else {
            let message = withUnsafeBytes(of: image.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            png_image_free(&image)
            throw MADEError(.io, "cannot encode the PNG: \(message.isEmpty ? "libpng failed" : message)", path: path)
        }
        try AtomicFile.write(encoded, to: path)
    }
}
