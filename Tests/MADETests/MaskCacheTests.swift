import Testing

@testable import MADE

@Suite("Mask cache")
struct MaskCacheTests {
    @Test("the cache gives the masks and packing a seed builds afresh, and holds at most its capacity")
    func cache() {
        let model = ModelConfiguration(inputCount: 6, hiddenSizes: [5])
        let cache = MaskPacking.Cache(configuration: model, runSeed: 4)
        for seed in UInt64(0)..<UInt64(MaskPacking.Cache.capacity + 3) {
            let fresh = MaskSet(configuration: model, runSeed: 4, maskSeed: seed)
            #expect(cache.maskSet(seed) == fresh)
            #expect(
                cache.packing(seed).activeIndices
                    == MaskPacking(maskSet: fresh, layout: ParameterLayout(model)).activeIndices
            )
            #expect(cache.count <= MaskPacking.Cache.capacity)
        }
    }
}
