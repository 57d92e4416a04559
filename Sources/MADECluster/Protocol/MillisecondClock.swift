/// Milliseconds since the clock was made, on the monotonic clock: the time the state machines
/// are fed.
public struct MillisecondClock: Sendable {
    private let clock = ContinuousClock()
    private let origin: ContinuousClock.Instant

    public init() { origin = clock.now }

    /// Whole milliseconds since ``init()``.
    public var now: UInt64 {
        let d = clock.now - origin
        return UInt64(d.components.seconds) * 1000 + UInt64(d.components.attoseconds / 1_000_000_000_000_000)
    }
}

/// The range every timeout given in seconds must lie in: above 0, at most a million seconds
/// (about 11 days), so its milliseconds fit every deadline sum.
public enum TimeoutRange {
    public static let maxSeconds = 1_000_000.0

    /// Nil when `seconds` is a valid timeout, else the reason, naming `name`.
    public static func problem(_ name: String, seconds: Double) -> String? {
        seconds > 0 && seconds <= maxSeconds
            ? nil : "\(name) must be between 0 and \(Int(maxSeconds)) seconds, not \(seconds)"
    }

    /// `seconds` in whole milliseconds.
    public static func milliseconds(_ seconds: Double) -> UInt64 { UInt64(seconds * 1000) }
}
