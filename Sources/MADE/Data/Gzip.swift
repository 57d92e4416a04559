import CGzip

/// gzip decompression (and, for writing fixtures and caches, compression) over zlib.
///
/// Decompression is bounded: the caller says how many bytes it is prepared to accept, so a
/// hostile or corrupt stream can neither exhaust memory nor be silently cut short. A file of
/// several concatenated gzip members (as `cat a.gz b.gz` makes) decompresses to the
/// concatenation of their contents, as `gunzip` does.
enum Gzip {
    /// Whether `bytes` starts with the gzip magic number `1f 8b`.
    static func isGzip(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B
    }

    /// Decompresses a whole gzip file.
    ///
    /// - Parameters:
    ///   - input: the compressed bytes.
    ///   - path: the file they came from, for errors.
    ///   - limit: the most decompressed bytes accepted; a stream that holds more is an error.
    /// - Throws: ``MADEError`` `.invalidData` for a corrupt, truncated or oversized stream.
    static func decompress(_ input: UnsafeRawBufferPointer, path: String, limit: Int = Int.max) throws -> [UInt8] {
        try inflateStream(input, path: path, limit: limit, prefixOnly: false)
    }

    /// Decompresses only the first `count` bytes of a gzip file (fewer if the stream is shorter).
    ///
    /// Used to read a file header and learn the size of what follows before committing memory to it.
    static func decompressPrefix(_ input: UnsafeRawBufferPointer, count: Int, path: String) throws -> [UInt8] {
        try inflateStream(input, path: path, limit: count, prefixOnly: true)
    }

    /// Compresses `bytes` into a single gzip member.
    static func compress(_ bytes: [UInt8], level: Int32 = Z_DEFAULT_COMPRESSION) -> [UInt8] {
        var stream = z_stream()
        let status = deflateInit2_(
            &stream,
            level,
            Z_DEFLATED,
            16 + MAX_WBITS,
            8,
            Z_DEFAULT_STRATEGY,
            zlibVersion(),
            Int32(MemoryLayout<z_stream>.size)
        )
        precondition(status == Z_OK, "deflateInit2 failed: \(status)")
        defer { deflateEnd(&stream) }
        var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, uLong(bytes.count))) + 64)
        var produced = 0
        bytes.withUnsafeBufferPointer { src in
            output.withUnsafeMutableBufferPointer { dst in
                stream.next_in = UnsafeMutablePointer(mutating: src.baseAddress)
                stream.avail_in = uInt(src.count)
                stream.next_out = dst.baseAddress
                stream.avail_out = uInt(dst.count)
                let rc = deflate(&stream, Z_FINISH)
                precondition(rc == Z_STREAM_END, "deflate did not finish: \(rc)")
                produced = dst.count - Int(stream.avail_out)
            }
        }
        output.removeSubrange(produced...)
        return output
    }

    /// The size a single-member gzip stream declares in its trailer (modulo 2^32), as a capacity hint.
    private static func declaredSize(_ input: UnsafeRawBufferPointer) -> Int {
        guard input.count >= 18 else { return 0 }
        let n = input.count
        return Int(input[n - 4]) | Int(input[n - 3]) << 8 | Int(input[n - 2]) << 16 | Int(input[n - 1]) << 24
    }

    private static func inflateStream(
        _ input: UnsafeRawBufferPointer,
        path: String,
        limit: Int,
        prefixOnly: Bool
    ) throws -> [UInt8] {
        guard isGzip(input), let inputBase = input.baseAddress else {
            throw MADEError(.invalidData, "not a gzip file (bad magic)", path: path)
        }
        guard limit >= 0 else { return [] }
        // The most bytes the output buffer may ever hold: one past the limit detects an oversized stream.
        let capacityLimit = prefixOnly ? limit : (limit == Int.max ? limit : limit + 1)
        var stream = z_stream()
        guard inflateInit2_(&stream, 16 + MAX_WBITS, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw MADEError(.io, "zlib could not start inflating", path: path)
        }
        defer { inflateEnd(&stream) }

        // Deflate expands by at most 1032:1, which bounds a corrupt trailer's claim.
        let (expansion, overflow) = input.count.multipliedReportingOverflow(by: 1032)
        let bound = overflow ? Int.max : expansion
        let hint = prefixOnly ? limit : min(max(declaredSize(input), 1 << 16), bound)
        var output = [UInt8](repeating: 0, count: min(hint, capacityLimit, 1 << 30))
        var produced = 0
        var consumed = 0  // input bytes handed to zlib so far
        let input8 = inputBase.assumingMemoryBound(to: UInt8.self)

        func corrupt(_ detail: String) -> MADEError {
            MADEError(.invalidData, "corrupt gzip data: \(detail)", path: path)
        }

        while true {
            if stream.avail_in == 0 && consumed < input.count {
                let chunk = min(input.count - consumed, Int(UInt32.max))
                stream.next_in = UnsafeMutablePointer(mutating: input8 + consumed)
                stream.avail_in = uInt(chunk)
                consumed += chunk
            }
            if produced == output.count {
                if output.count >= capacityLimit {
                    if prefixOnly { return output }
                    throw MADEError(
                        .invalidData,
                        "gzip data decompresses to more than \(limit) bytes, more than expected",
                        path: path
                    )
                }
                let grown = output.count < capacityLimit / 2 ? max(output.count * 2, 1 << 16) : capacityLimit
                output.append(contentsOf: repeatElement(0, count: min(grown, capacityLimit) - output.count))
            }
            let room = min(output.count - produced, Int(UInt32.max))
            let inBefore = stream.avail_in
            let rc: Int32 = output.withUnsafeMutableBufferPointer { dst in
                // `produced < dst.count` here, so the base address exists.
                stream.next_out = dst.baseAddress.map { $0 + produced }
                stream.avail_out = uInt(room)
                return inflate(&stream, Z_NO_FLUSH)
            }
            let wrote = room - Int(stream.avail_out)
            produced += wrote
            let remainingInput = (input.count - consumed) + Int(stream.avail_in)
            switch rc {
            case Z_STREAM_END:
                if remainingInput == 0 || (prefixOnly && produced >= limit) {
                    output.removeSubrange(produced...)
                    return output
                }
                // Another gzip member may follow; anything else is garbage.
                let next = input.count - remainingInput
                guard remainingInput >= 2, input[next] == 0x1F, input[next + 1] == 0x8B else {
                    throw corrupt("\(remainingInput) bytes of trailing garbage after the gzip stream")
                }
                guard inflateReset(&stream) == Z_OK else { throw corrupt("cannot restart after a member") }
            case Z_OK, Z_BUF_ERROR:
                if prefixOnly && produced >= limit {
                    output.removeSubrange(produced...)
                    return output
                }
                if remainingInput == 0 && stream.avail_out > 0 {
                    throw MADEError(
                        .invalidData,
                        """
                        truncated gzip data: the stream ends before its end marker (after \(produced) decompressed \
                        bytes)
                        """,
                        path: path
                    )
                }
                if wrote == 0 && stream.avail_in == inBefore && stream.avail_out > 0 {
                    throw corrupt("zlib made no progress")
                }
            case Z_NEED_DICT:
                throw corrupt("the stream asks for a preset dictionary")
            case Z_MEM_ERROR:
                throw MADEError(.io, "out of memory while decompressing", path: path)
            default:
                let detail = stream.msg.map { String(cString: $0) } ?? "zlib error \(rc)"
                throw corrupt(detail)
            }
        }
    }
}
