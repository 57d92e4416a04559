import CBLAS
import RealModule

/// A floating-point type the network can compute in: `Float` for training, `Double` for
/// checking gradients and normalization against exact answers.
///
/// It adds to `Real` the general matrix multiply of BLAS for that type.
public protocol BLASScalar: Real, BinaryFloatingPoint, Sendable where Self.RawSignificand: FixedWidthInteger {
    /// `C = alpha * op(A) * op(B) + beta * C` on row-major matrices (`?gemm`).
    ///
    /// `op(A)` is `m x k`, `op(B)` is `k x n`, `C` is `m x n`; `lda`, `ldb`, `ldc` are row strides.
    static func gemm(
        transposeA: Bool,
        transposeB: Bool,
        m: Int,
        n: Int,
        k: Int,
        alpha: Self,
        a: UnsafePointer<Self>,
        lda: Int,
        b: UnsafePointer<Self>,
        ldb: Int,
        beta: Self,
        c: UnsafeMutablePointer<Self>,
        ldc: Int
    )
}

extension Float: BLASScalar {
    @inlinable
    public static func gemm(
        transposeA: Bool,
        transposeB: Bool,
        m: Int,
        n: Int,
        k: Int,
        alpha: Float,
        a: UnsafePointer<Float>,
        lda: Int,
        b: UnsafePointer<Float>,
        ldb: Int,
        beta: Float,
        c: UnsafeMutablePointer<Float>,
        ldc: Int
    ) {
        cblas_sgemm(
            CblasRowMajor,
            transposeA ? CblasTrans : CblasNoTrans,
            transposeB ? CblasTrans : CblasNoTrans,
            blasint(m),
            blasint(n),
            blasint(k),
            alpha,
            a,
            blasint(lda),
            b,
            blasint(ldb),
            beta,
            c,
            blasint(ldc)
        )
    }
}

extension Double: BLASScalar {
    @inlinable
    public static func gemm(
        transposeA: Bool,
        transposeB: Bool,
        m: Int,
        n: Int,
        k: Int,
        alpha: Double,
        a: UnsafePointer<Double>,
        lda: Int,
        b: UnsafePointer<Double>,
        ldb: Int,
        beta: Double,
        c: UnsafeMutablePointer<Double>,
        ldc: Int
    ) {
        cblas_dgemm(
            CblasRowMajor,
            transposeA ? CblasTrans : CblasNoTrans,
            transposeB ? CblasTrans : CblasNoTrans,
            blasint(m),
            blasint(n),
            blasint(k),
            alpha,
            a,
            blasint(lda),
            b,
            blasint(ldb),
            beta,
            c,
            blasint(ldc)
        )
    }
}

/// Process-wide BLAS settings.
public enum BLAS {
    /// Sets the number of threads OpenBLAS uses for one call. Workers use 1: one process per core.
    public static func setThreads(_ count: Int) {
        openblas_set_num_threads(Int32(max(1, count)))
    }

    /// The number of threads OpenBLAS uses for one call.
    public static var threads: Int { Int(openblas_get_num_threads()) }
}
