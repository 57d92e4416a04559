/// The random generator behind every random choice the library makes.
///
/// It is xoshiro256** (Blackman and Vigna, 2018) seeded through SplitMix64, written out here so
/// that the same seed gives the same numbers on every platform and in every version of Swift;
/// the standard library's generators promise neither.
///
/// Independent streams are named by a `(seed, domain, index)` triple: the run seed, what the
/// numbers are for (masks, initialization, data order, ...), and an index within that purpose
/// (the mask seed, the epoch, ...). The 256-bit state is four successive SplitMix64 outputs
/// starting from `mix64(mix64(seed ^ domain.rawValue) ^ index)`, where `mix64` is SplitMix64's
/// bijective finalizer. A stream is therefore a pure function of its triple.
public struct RandomStream: Sendable, Equatable {
    /// What a stream of numbers is for. Different domains never share a stream.
    public struct Domain: Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Orders and hidden-unit degrees; the index is the mask seed.
        public static let masks = Domain(rawValue: 0x6D61_736B_7300_0001)
        /// Initial parameters; the index is 0.
        public static let initialization = Domain(rawValue: 0x696E_6974_0000_0002)
        /// The order of training examples; the index is the epoch.
        public static let dataOrder = Domain(rawValue: 0x6F72_6465_7200_0003)
        /// Stochastic binarization of grey levels; the index names the split.
        public static let binarization = Domain(rawValue: 0x6269_6E61_7200_0004)
        /// Sampling from a trained model; the index is the sample batch.
        public static let sampling = Domain(rawValue: 0x7361_6D70_6C00_0005)
        /// Carving a validation split out of a training file; the index is 0.
        public static let split = Domain(rawValue: 0x7370_6C69_7400_0006)
    }

    /// The four 64-bit words of xoshiro256** state.
    public private(set) var state: (UInt64, UInt64, UInt64, UInt64)

    public static func == (a: RandomStream, b: RandomStream) -> Bool {
        a.state == b.state
    }

    /// The stream for `(seed, domain, index)`.
    public init(seed: UInt64, domain: Domain, index: UInt64 = 0) {
        var x = RandomStream.mix64(RandomStream.mix64(seed ^ domain.rawValue) ^ index)
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            return RandomStream.mix64(x)
        }
        state = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    /// Restores a stream from a saved state.
    ///
    /// - Precondition: the state is not all zero.
    public init(state: (UInt64, UInt64, UInt64, UInt64)) {
        precondition(state != (0, 0, 0, 0), "RandomStream: the all-zero state is not allowed")
        self.state = state
    }

    /// SplitMix64's finalizer: a bijection of 64-bit words that mixes every input bit into every output bit.
    @inlinable
    public static func mix64(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        let result = rotl(state.1 &* 5, 7) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = rotl(state.3, 45)
        return result
    }

    private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// A uniform integer in `0..<bound`, without bias (Lemire's multiply-and-reject method).
    ///
    /// - Precondition: `bound > 0`.
    public mutating func uniform(below bound: UInt64) -> UInt64 {
        precondition(bound > 0, "uniform(below:) needs a positive bound")
        var product = next().multipliedFullWidth(by: bound)
        if product.low < bound {
            let threshold = (0 &- bound) % bound
            while product.low < threshold {
                product = next().multipliedFullWidth(by: bound)
            }
        }
        return product.high
    }

    /// A uniform integer in the closed range `lower...upper`.
    public mutating func uniform(in range: ClosedRange<Int>) -> Int {
        let span = UInt64(range.upperBound - range.lowerBound) &+ 1
        return range.lowerBound + Int(uniform(below: span))
    }

    /// A uniform `Double` in `[0, 1)` with 53 random bits.
    public mutating func unitDouble() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }

    /// A uniform `Float` in `[0, 1)` with 24 random bits.
    public mutating func unitFloat() -> Float {
        Float(next() >> 40) * 0x1.0p-24
    }

    /// A uniformly random permutation of `0..<n` (Fisher-Yates, drawing from the top down).
    public mutating func permutation(_ n: Int) -> [Int] {
        var p = Array(0..<n)
        shuffle(&p)
        return p
    }

    /// Shuffles `values` in place, uniformly (Fisher-Yates, drawing from the top down).
    public mutating func shuffle<T>(_ values: inout [T]) {
        var i = values.count - 1
        while i > 0 {
            let j = Int(uniform(below: UInt64(i + 1)))
            values.swapAt(i, j)
            i -= 1
        }
    }
}
