import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What this process can still allocate, to refuse a size from a flag, a file or the wire
/// before allocating it, rather than abort when the allocation fails.
///
/// The budget is the memory the kernel reports as available (`MemAvailable` in
/// `/proc/meminfo`, else the physical memory), capped by the address-space and data-segment
/// limits of the process (`ulimit -v`, `ulimit -d`).
public enum MemoryBudget {
    /// Bytes the machine can still give its processes together: `MemAvailable`, else the
    /// physical memory. Not capped by this process's limits, which each process has its own of.
    public static var hostAvailableBytes: Int {
        if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
            let kib = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        {
            return kib.multipliedReportingOverflow(by: 1024).overflow ? Int.max : kib * 1024
        }
        let pages = sysconf(Int32(_SC_PHYS_PAGES))
        let size = sysconf(Int32(_SC_PAGESIZE))
        if pages > 0, size > 0, !pages.multipliedReportingOverflow(by: size).overflow { return pages * size }
        return Int.max
    }

    /// Bytes this process may still allocate, as far as the system tells.
    public static var availableBytes: Int {
        var budget = hostAvailableBytes
        for resource in [RLIMIT_AS, RLIMIT_DATA] {
            var limit = rlimit()
            #if canImport(Glibc)
            let got = getrlimit(__rlimit_resource_t(resource.rawValue), &limit) == 0
            #else
            let got = getrlimit(resource, &limit) == 0
            #endif
            if got, limit.rlim_cur != rlim_t.max, limit.rlim_cur < UInt64(Int.max) {
                budget = min(budget, Int(limit.rlim_cur))
            }
        }
        return budget
    }

    /// Throws ``MADEError/Code/tooLarge`` unless `bytes` fit in ``availableBytes``.
    ///
    /// - Parameters:
    ///   - bytes: the size asked for; nil stands for a size that overflowed while computing it.
    ///   - what: names the thing and where its size came from, for the message.
    ///   - available: the budget; this process's (``availableBytes``) unless given.
    public static func require(
        _ bytes: Int?,
        for what: String,
        path: String? = nil,
        available: Int = availableBytes
    ) throws {
        guard let bytes, bytes >= 0 else {
            throw MADEError(.tooLarge, "\(what) is too large to hold (its size overflows)", path: path)
        }
        guard bytes <= available else {
            throw MADEError(
                .tooLarge,
                "\(what) needs \(describe(bytes)), more than the \(describe(available)) of memory available",
                path: path
            )
        }
    }

    /// The product of `factors`, or nil when it overflows or a factor is negative.
    public static func product(_ factors: Int...) -> Int? {
        var total = 1
        for f in factors {
            guard f >= 0 else { return nil }
            let (p, overflow) = total.multipliedReportingOverflow(by: f)
            if overflow { return nil }
            total = p
        }
        return total
    }

    /// A byte count for people: `3.2 GiB`.
    public static func describe(_ bytes: Int) -> String {
        let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(bytes) bytes" : String(format: "%.1f %@", value, units[unit])
    }
}
