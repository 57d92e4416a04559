// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "made-swift",
    // Linux only (Debian): the sources call Glibc directly and the system targets below name
    // Debian's packages, so no Apple platform is claimed.
    products: [
        .executable(name: "made", targets: ["made"]),
        .library(name: "MADE", targets: ["MADE"]),
        .library(name: "MADECluster", targets: ["MADECluster"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-numerics", from: "1.1.1"),
        .package(url: "https://github.com/weichsel/ZIPFoundation", from: "0.9.20"),
    ],
    targets: [
        .systemLibrary(
            name: "CBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        .systemLibrary(
            name: "CGzip",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        .systemLibrary(
            name: "CPNG",
            pkgConfig: "libpng",
            providers: [.apt(["libpng-dev"])]
        ),
        // No pkgConfig: libzmq.pc's cflags carry `-isystem /usr/include/mit-krb5`, which SwiftPM
        // refuses with a warning, and zmq.h and libzmq need no flags on Debian.
        .systemLibrary(
            name: "CZeroMQ",
            providers: [.apt(["libzmq3-dev"])]
        ),
        .target(
            name: "CKernels",
            cSettings: [.unsafeFlags(["-O3", "-fno-math-errno", "-ffp-contract=off"])]
        ),
        .target(
            name: "MADE",
            dependencies: [
                "CBLAS",
                "CKernels",
                "CGzip",
                "CPNG",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "RealModule", package: "swift-numerics"),
                .product(name: "ZIPFoundation", package: "ZIPFoundation"),
            ]
        ),
        .target(
            name: "MADECluster",
            dependencies: [
                "MADE",
                "CKernels",
                "CZeroMQ",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "OrderedCollections", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "made",
            dependencies: [
                "MADE",
                "MADECluster",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "MADETests",
            dependencies: ["MADE"]
        ),
        .testTarget(
            name: "MADEClusterTests",
            dependencies: ["MADECluster", "MADE"]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["MADECluster", "MADE"]
        ),
    ]
)
