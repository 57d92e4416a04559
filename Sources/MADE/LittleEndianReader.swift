/// Reads little-endian values from raw bytes, front to back.
///
/// Every read returns nil when it would run past the end, and then consumes nothing, so the
/// caller names what was truncated in its own error type: the checkpoint reader and the cluster's
/// wire format share this one reader.
public struct LittleEndianReader {
    /// The bytes read; they must outlive the reader.
    public let buffer: UnsafeRawBufferPointer
    /// The offset of the next byte to read.
    @inlinable
    public var position: Int { offset }
    @usableFromInline
    var offset: Int

    /// A reader of `buffer` from `position`.
    @inlinable
    public init(_ buffer: UnsafeRawBufferPointer, position: Int = 0) {
        precondition(position >= 0 && position <= buffer.count, "LittleEndianReader: position outside the buffer")
        self.buffer = buffer
        self.offset = position
    }

    /// The bytes not read yet.
    @inlinable
    public var remaining: Int { buffer.count - position }

    /// The next `count` bytes, or nil if fewer remain (or `count` is negative).
    @inlinable
    public mutating func take(_ count: Int) -> UnsafeRawBufferPointer? {
        guard count >= 0, count <= remaining else { return nil }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: buffer[position..<(position + count)])
    }

    /// The next integer, stored little-endian, or nil if too few bytes remain.
    @inlinable
    public mutating func integer<I: FixedWidthInteger>(as _: I.Type = I.self) -> I? {
        let n = MemoryLayout<I>.size
        guard remaining >= n else { return nil }
        defer { offset += n }
        return I(littleEndian: buffer.loadUnaligned(fromByteOffset: position, as: I.self))
    }

    /// The next `count` values of a 4- or 8-byte type (Float, Int32, UInt32, UInt64), stored little-endian, or
    /// nil if too few bytes remain. One copy on a little-endian host.
    @inlinable
    public mutating func array<Element>(count: Int, of _: Element.Type) -> [Element]? {
        let size = MemoryLayout<Element>.size
        precondition(
            (size == 4 || size == 8) && MemoryLayout<Element>.stride == size,
            "LittleEndianReader: arrays hold 4- or 8-byte values"
        )
        guard count >= 0, count <= remaining / size, let raw = take(size * count) else { return nil }
        return [Element](unsafeUninitializedCapacity: count) { out, n in
            let bytes = UnsafeMutableRawBufferPointer(out)
            bytes.copyMemory(from: raw)
            #if _endian(big)
            for i in stride(from: 0, to: bytes.count, by: size) {
                for k in 0..<(size / 2) { bytes.swapAt(i + k, i + size - 1 - k) }
            }
            #endif
            n = count
        }
    }
}
