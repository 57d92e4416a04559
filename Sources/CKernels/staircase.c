#include "made_kernels.h"

#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

/* The sparse kernel's products over a staircase, tile by tile (see made_kernels.h).
 *
 * Each band's columns go in tiles of MADE_TILE (the last one of a band narrower), and a tile takes
 * the rows below its largest active[j]: its `depth`. Every output element is one accumulator that
 * starts at +0 and takes fmaf(x, y, acc) over the summed index in ascending order, then is stored
 * (or added to the output, out + acc). So an element's bits depend only on the shapes, the mask and
 * the data: the AVX2 path (eight lanes per register, a register block of rows by tile columns) and
 * the portable path (one element at a time, fmaf from the C library) do the same operations. */

#define MADE_TILE 16

static _Atomic int staircase_generic_only;

void made_staircase_force_generic(int generic) {
    atomic_store_explicit(&staircase_generic_only, generic, memory_order_relaxed);
}

static int use_avx2(void) {
    static _Atomic int supported = -1;
    int s = atomic_load_explicit(&supported, memory_order_relaxed);
    if (s < 0) {
        __builtin_cpu_init();
        s = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        atomic_store_explicit(&supported, s, memory_order_relaxed);
    }
    return s && !atomic_load_explicit(&staircase_generic_only, memory_order_relaxed);
}

/* The largest active[j] for j in [j0, j1). */
static inline int tile_depth(const int *active, int j0, int j1) {
    int m = 0;
    for (int j = j0; j < j1; j++) m = active[j] > m ? active[j] : m;
    return m;
}

/* ---- The portable path: one element at a time. ---- */

/* c[r, j] for rows r0 ..< r1 and columns j0 ..< j1, over k < depth. */
static inline __attribute__((always_inline)) void product_elements(size_t r0, size_t r1, int j0, int j1, int depth,
                                                                   const float *a, size_t lda, const float *w,
                                                                   size_t cols, float *c, int accumulate) {
    for (size_t r = r0; r < r1; r++) {
        const float *ar = a + r * lda;
        for (int j = j0; j < j1; j++) {
            float acc = 0.0f;
            for (int k = 0; k < depth; k++) acc = fmaf(ar[k], w[(size_t)k * cols + (size_t)j], acc);
            float *o = c + r * cols + (size_t)j;
            *o = accumulate ? *o + acc : acc;
        }
    }
}

/* dw[i, j] for rows i0 ..< i1 and columns j0 ..< j1, over the n data rows. */
static inline __attribute__((always_inline)) void weight_gradient_elements(int i0, int i1, int j0, int j1, size_t n,
                                                                           const float *a, size_t lda,
                                                                           const float *delta, size_t cols,
                                                                           float *dw) {
    for (int i = i0; i < i1; i++) {
        for (int j = j0; j < j1; j++) {
            float acc = 0.0f;
            for (size_t r = 0; r < n; r++) acc = fmaf(a[r * lda + (size_t)i], delta[r * cols + (size_t)j], acc);
            dw[(size_t)i * cols + (size_t)j] = acc;
        }
    }
}

/* ---- The AVX2 path: register blocks of R rows by V vectors of 8 columns, R * V <= 12. ---- */

#define MADE_AVX2 __attribute__((target("avx2,fma")))

/* How many blocks of R - 1 rows to take before blocks of R so that m rows need no smaller block
 * (a smaller one keeps too few sums in flight): 0 when that cannot be done. */
static inline int shorter_blocks(size_t m, int R) {
    int k = (int)((size_t)R - m % (size_t)R) % R;
    return (size_t)k * (size_t)(R - 1) <= m ? k : 0;
}

/* The lanes below count (0 ... 8) set. */
MADE_AVX2 static inline __m256i lanes_below(int count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* o[0 ..< count] = acc (or o + acc), count <= 8; nothing past count is read or written. */
MADE_AVX2 static inline __attribute__((always_inline)) void store_lanes(float *o, __m256 acc, int count,
                                                                       int accumulate) {
    if (count >= 8) {
        _mm256_storeu_ps(o, accumulate ? _mm256_add_ps(_mm256_loadu_ps(o), acc) : acc);
    } else if (count > 0) {
        __m256i m = lanes_below(count);
        _mm256_maskstore_ps(o, m, accumulate ? _mm256_add_ps(_mm256_maskload_ps(o, m), acc) : acc);
    }
}

/* Rows 0 ..< count of a tile of columns j ..< j + width (width <= 8 V) copied into 8 V floats a row, +0
 * past width: what the blocks read. */
MADE_AVX2 static inline __attribute__((always_inline)) void pack_tile(int V, size_t count, const float *s, size_t ld,
                                                                     int width, float *d) {
    if (width == 8 * V) {
        for (size_t k = 0; k < count; k++)
            for (int v = 0; v < V; v++) _mm256_storeu_ps(d + 8 * V * k + 8 * v, _mm256_loadu_ps(s + k * ld + 8 * v));
    } else {
        __m256i m[2];
        for (int v = 0; v < V; v++) m[v] = lanes_below(width - 8 * v < 0 ? 0 : width - 8 * v);
        for (size_t k = 0; k < count; k++)
            for (int v = 0; v < V; v++)
                _mm256_storeu_ps(d + 8 * V * k + 8 * v, _mm256_maskload_ps(s + k * ld + 8 * v, m[v]));
    }
}

/* acc[r][v] = sum over k < depth of a[r * lda + k] * w[k * ldw + 8 v ..], then stored into c (or added),
 * columns below width. With lda 0, a is packed: a[k * R + r]. */
MADE_AVX2 static inline __attribute__((always_inline)) void product_block(int R, int V, int depth, const float *a,
                                                                         size_t lda, const float *w, size_t ldw,
                                                                         float *c, size_t ldc, int accumulate,
                                                                         int width) {
    __m256 acc[12][2];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) acc[r][v] = _mm256_setzero_ps();
    const float *ar[12];
    for (int r = 0; r < R; r++) ar[r] = a + (size_t)r * lda;
    const float *wk = w;
    const float *ak = a;
    for (int k = 0; k < depth; k++, wk += ldw, ak += R) {
        __m256 b[2];
        for (int v = 0; v < V; v++) b[v] = _mm256_loadu_ps(wk + 8 * v);
        for (int r = 0; r < R; r++) {
            __m256 x = _mm256_broadcast_ss(lda ? ar[r] + k : ak + r);
            for (int v = 0; v < V; v++) acc[r][v] = _mm256_fmadd_ps(x, b[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) store_lanes(c + (size_t)r * ldc + 8 * v, acc[r][v], width - 8 * v, accumulate);
}

/* Rows 0 ..< n of c, columns of width 8 V, R rows at a time. */
MADE_AVX2 static inline __attribute__((always_inline)) void product_columns(int R, int V, size_t n, int depth,
                                                                           const float *a, size_t lda,
                                                                           const float *w, size_t ldw, float *c,
                                                                           size_t ldc, int accumulate, int width) {
    size_t r = 0;
    if (R == 6) {
        for (int s = shorter_blocks(n, 6); s > 0; s--, r += 5)
            product_block(5, V, depth, a + r * lda, lda, w, ldw, c + r * ldc, ldc, accumulate, width);
    }
    for (; r + (size_t)R <= n; r += (size_t)R)
        product_block(R, V, depth, a + r * lda, lda, w, ldw, c + r * ldc, ldc, accumulate, width);
    int left = (int)(n - r);
    const float *ar = a + r * lda;
    float *cr = c + r * ldc;
    switch (left) {
    case 11: product_block(11, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 10: product_block(10, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 9: product_block(9, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 8: product_block(8, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 7: product_block(7, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 6: product_block(6, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 5: product_block(5, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 4: product_block(4, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 3: product_block(3, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 2: product_block(2, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    case 1: product_block(1, V, depth, ar, lda, w, ldw, cr, ldc, accumulate, width); break;
    default: break;
    }
}

/* The row blocks of a product 16 columns wide: blocks of 5 rows, then of 6, then what is left. */
#define MADE_ROW_BLOCKS(n, BLOCK)                                                                              \
    do {                                                                                                       \
        size_t r_ = 0;                                                                                         \
        for (int s_ = shorter_blocks((n), 6); s_ > 0; s_--, r_ += 5) BLOCK(5, r_);                            \
        for (; r_ + 6 <= (n); r_ += 6) BLOCK(6, r_);                                                           \
        switch ((n) - r_) {                                                                                    \
        case 5: BLOCK(5, r_); break;                                                                           \
        case 4: BLOCK(4, r_); break;                                                                           \
        case 3: BLOCK(3, r_); break;                                                                           \
        case 2: BLOCK(2, r_); break;                                                                           \
        case 1: BLOCK(1, r_); break;                                                                           \
        default: break;                                                                                        \
        }                                                                                                      \
    } while (0)

/* a (n x rows) packed by row blocks: the block of R rows at r holds a[r + t, k] at packed[r * rows + k R + t]. */
MADE_AVX2 static void pack_rows(size_t n, size_t rows, const float *a, float *packed) {
#define MADE_PACK_BLOCK(R, r)                                                                                  \
    for (size_t k = 0; k < rows; k++)                                                                          \
        for (int t = 0; t < (R); t++) packed[(r) * rows + k * (R) + (size_t)t] = a[((r) + (size_t)t) * rows + k]
    MADE_ROW_BLOCKS(n, MADE_PACK_BLOCK);
#undef MADE_PACK_BLOCK
}

/* The forward product takes the data rows MADE_PANEL at a time: their rows packed stay in L2 while
 * every tile passes over them, and the scratch does not grow with the batch. */
#define MADE_PANEL 120

MADE_AVX2 static void product_avx2(size_t n, size_t rows, size_t cols, const float *a, const float *w,
                                   const int *active, const int *bands, size_t band_count, float *c,
                                   int accumulate, float *scratch) {
    size_t panel_rows = n < MADE_PANEL ? n : MADE_PANEL;
    float *packed = scratch, *tile = scratch + panel_rows * rows;
    for (size_t p0 = 0; p0 < n; p0 += MADE_PANEL) {
        size_t m = n - p0 < MADE_PANEL ? n - p0 : MADE_PANEL;
        const float *ap = a + p0 * rows;
        float *cp = c + p0 * cols;
        pack_rows(m, rows, ap, packed);
        for (size_t b = 0; b < band_count; b++) {
            int end = bands[3 * b + 1];
            for (int j0 = bands[3 * b]; j0 < end; j0 += MADE_TILE) {
                int j1 = j0 + MADE_TILE < end ? j0 + MADE_TILE : end;
                int depth = tile_depth(active, j0, j1);
                int width = j1 - j0;
                if (width > 8) {
                    pack_tile(2, (size_t)depth, w + j0, cols, width, tile);
                    float *cj = cp + j0;
#define MADE_PRODUCT_BLOCK(R, r)                                                                                \
    product_block((R), 2, depth, packed + (r) * rows, 0, tile, 16, cj + (r) * cols, cols, accumulate, width)
                    MADE_ROW_BLOCKS(m, MADE_PRODUCT_BLOCK);
#undef MADE_PRODUCT_BLOCK
                } else {
                    pack_tile(1, (size_t)depth, w + j0, cols, width, tile);
                    product_columns(12, 1, m, depth, ap, rows, tile, 8, cp + j0, cols, accumulate, width);
                }
            }
        }
    }
}

/* acc[i][v] = sum over data rows r < n of a[r * lda + i] * delta[r * ldd + 8 v ..], stored into dw. */
MADE_AVX2 static inline __attribute__((always_inline)) void weight_gradient_block(int R, int V, size_t n,
                                                                                 const float *a, size_t lda,
                                                                                 const float *delta, size_t ldd,
                                                                                 float *dw, size_t ldw, int width) {
    __m256 acc[12][2];
    for (int i = 0; i < R; i++)
        for (int v = 0; v < V; v++) acc[i][v] = _mm256_setzero_ps();
    for (size_t r = 0; r < n; r++) {
        __m256 b[2];
        for (int v = 0; v < V; v++) b[v] = _mm256_loadu_ps(delta + r * ldd + 8 * v);
        for (int i = 0; i < R; i++) {
            __m256 x = _mm256_broadcast_ss(a + r * lda + (size_t)i);
            for (int v = 0; v < V; v++) acc[i][v] = _mm256_fmadd_ps(x, b[v], acc[i][v]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int v = 0; v < V; v++) store_lanes(dw + (size_t)i * ldw + 8 * v, acc[i][v], width - 8 * v, 0);
}

/* Rows 0 ..< depth of dw, columns of width 8 V, R rows at a time. */
MADE_AVX2 static inline __attribute__((always_inline)) void weight_gradient_columns(int R, int V, int depth, size_t n,
                                                                                   const float *a, size_t lda,
                                                                                   const float *delta, size_t ldd,
                                                                                   float *dw, size_t ldw, int width) {
    int i = 0;
    if (R == 6) {
        for (int s = shorter_blocks((size_t)depth, 6); s > 0; s--, i += 5)
            weight_gradient_block(5, V, n, a + i, lda, delta, ldd, dw + (size_t)i * ldw, ldw, width);
    }
    for (; i + R <= depth; i += R)
        weight_gradient_block(R, V, n, a + i, lda, delta, ldd, dw + (size_t)i * ldw, ldw, width);
    const float *ai = a + i;
    float *di = dw + (size_t)i * ldw;
    switch (depth - i) {
    case 11: weight_gradient_block(11, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 10: weight_gradient_block(10, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 9: weight_gradient_block(9, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 8: weight_gradient_block(8, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 7: weight_gradient_block(7, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 6: weight_gradient_block(6, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 5: weight_gradient_block(5, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 4: weight_gradient_block(4, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 3: weight_gradient_block(3, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 2: weight_gradient_block(2, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    case 1: weight_gradient_block(1, V, n, ai, lda, delta, ldd, di, ldw, width); break;
    default: break;
    }
}

MADE_AVX2 static void weight_gradient_avx2(size_t n, size_t rows, size_t cols, const float *a, const float *delta,
                                           const int *active, const int *bands, size_t band_count, float *dw,
                                           float *scratch) {
    for (size_t b = 0; b < band_count; b++) {
        int end = bands[3 * b + 1];
        int band_rows = bands[3 * b + 2];
        for (int j0 = bands[3 * b]; j0 < end; j0 += MADE_TILE) {
            int j1 = j0 + MADE_TILE < end ? j0 + MADE_TILE : end;
            int depth = tile_depth(active, j0, j1);
            int width = j1 - j0;
            if (width > 8) {
                pack_tile(2, n, delta + j0, cols, width, scratch);
                weight_gradient_columns(6, 2, depth, n, a, rows, scratch, 16, dw + j0, cols, width);
            } else {
                pack_tile(1, n, delta + j0, cols, width, scratch);
                weight_gradient_columns(12, 1, depth, n, a, rows, scratch, 8, dw + j0, cols, width);
            }
            for (int i = depth; i < band_rows; i++)
                memset(dw + (size_t)i * cols + j0, 0, (size_t)(j1 - j0) * sizeof(float));
        }
    }
}

/* ---- Entry points. ---- */

void made_staircase_product_f32(size_t n, size_t rows, size_t cols, const float *a, const float *w,
                                const int *active, const int *bands, size_t band_count, float *c, int accumulate,
                                float *scratch) {
    if (use_avx2()) {
        product_avx2(n, rows, cols, a, w, active, bands, band_count, c, accumulate, scratch);
        return;
    }
    for (size_t b = 0; b < band_count; b++) {
        int end = bands[3 * b + 1];
        for (int j0 = bands[3 * b]; j0 < end; j0 += MADE_TILE) {
            int j1 = j0 + MADE_TILE < end ? j0 + MADE_TILE : end;
            product_elements(0, n, j0, j1, tile_depth(active, j0, j1), a, rows, w, cols, c, accumulate);
        }
    }
}

void made_staircase_weight_gradient_f32(size_t n, size_t rows, size_t cols, const float *a, const float *delta,
                                        const int *active, const int *bands, size_t band_count, float *dw,
                                        float *scratch) {
    if (use_avx2()) {
        weight_gradient_avx2(n, rows, cols, a, delta, active, bands, band_count, dw, scratch);
        return;
    }
    for (size_t b = 0; b < band_count; b++) {
        int end = bands[3 * b + 1];
        int band_rows = bands[3 * b + 2];
        for (int j0 = bands[3 * b]; j0 < end; j0 += MADE_TILE) {
            int j1 = j0 + MADE_TILE < end ? j0 + MADE_TILE : end;
            int depth = tile_depth(active, j0, j1);
            weight_gradient_elements(0, depth, j0, j1, n, a, rows, delta, cols, dw);
            for (int i = depth; i < band_rows; i++)
                memset(dw + (size_t)i * cols + j0, 0, (size_t)(j1 - j0) * sizeof(float));
        }
    }
}

/* ---- The input gradient: da = delta w^T, a tile of 16 of w's rows at a time. ----
 *
 * Rows i0 ..< i0 + 16 of w take the tiles of columns whose depth is beyond i0, in column order;
 * inside such a tile, row i contributes w[i, j] below the tile's depth and +0 from there on. */

/* The tiles of every band: (j0, j1, depth) triples; returns their count. */
static size_t list_tiles(const int *active, const int *bands, size_t band_count, int *tiles) {
    size_t count = 0;
    for (size_t b = 0; b < band_count; b++) {
        int end = bands[3 * b + 1];
        for (int j0 = bands[3 * b]; j0 < end; j0 += MADE_TILE) {
            int j1 = j0 + MADE_TILE < end ? j0 + MADE_TILE : end;
            tiles[3 * count] = j0;
            tiles[3 * count + 1] = j1;
            tiles[3 * count + 2] = tile_depth(active, j0, j1);
            count++;
        }
    }
    return count;
}

/* The coefficient of delta[r, j] in da[r, i] for a column j of a tile of the given depth. */
static inline float input_coefficient(const float *w, size_t cols, int i, int j, int depth) {
    return i < depth ? w[(size_t)i * cols + (size_t)j] : 0.0f;
}

/* da[r, i] for every row r and i in i0 ..< i1 (inside one tile of 16 rows starting at i0). */
static void input_gradient_elements(size_t n, size_t rows, size_t cols, const float *delta, const float *w,
                                    const int *tiles, size_t tile_count, int i0, int i1, float *da, int accumulate) {
    for (size_t r = 0; r < n; r++) {
        for (int i = i0; i < i1; i++) {
            float acc = 0.0f;
            for (size_t t = 0; t < tile_count; t++) {
                int depth = tiles[3 * t + 2];
                if (depth <= i0) continue;
                for (int j = tiles[3 * t]; j < tiles[3 * t + 1]; j++)
                    acc = fmaf(delta[r * cols + (size_t)j], input_coefficient(w, cols, i, j, depth), acc);
            }
            float *o = da + r * rows + (size_t)i;
            *o = accumulate ? *o + acc : acc;
        }
    }
}

/* d[16 c + k] = s[k * ld + c] for k, c < 8: an 8 x 8 block transposed into a panel's columns. */
MADE_AVX2 static inline __attribute__((always_inline)) void transpose8(const float *s, size_t ld, float *d) {
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ld), r2 = _mm256_loadu_ps(s + 2 * ld);
    __m256 r3 = _mm256_loadu_ps(s + 3 * ld), r4 = _mm256_loadu_ps(s + 4 * ld), r5 = _mm256_loadu_ps(s + 5 * ld);
    __m256 r6 = _mm256_loadu_ps(s + 6 * ld), r7 = _mm256_loadu_ps(s + 7 * ld);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + 16, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 32, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 48, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 64, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 80, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 96, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 112, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* The panel of rows i0 ..< i0 + 16: for each column j of the tiles taking part, in order, 16 floats,
 * input_coefficient(i0 + t, j) (+0 past the matrix's rows). Returns the number of columns. */
MADE_AVX2 static size_t pack_panel(size_t rows, size_t cols, const float *w, const int *tiles, size_t tile_count,
                                   int i0, float *panel) {
    size_t q = 0;
    int i_end = i0 + 16 < (int)rows ? i0 + 16 : (int)rows;
    for (size_t t = 0; t < tile_count; t++) {
        int depth = tiles[3 * t + 2];
        if (depth <= i0) continue;
        int below = depth < i_end ? depth : i_end;
        int j0 = tiles[3 * t], j1 = tiles[3 * t + 1];
        int j = j0;
        if (below - i0 >= 8) {
            /* Whole 8 x 8 blocks of the first 8 rows (and of the next 8 when they are all there). */
            for (; j + 8 <= j1; j += 8) {
                float *p = panel + 16 * (q + (size_t)(j - j0));
                transpose8(w + (size_t)i0 * cols + (size_t)j, cols, p);
                if (below - i0 == 16) {
                    transpose8(w + (size_t)(i0 + 8) * cols + (size_t)j, cols, p + 8);
                } else {
                    for (int c = 0; c < 8; c++) {
                        for (int k = 8; k < 16; k++) {
                            p[16 * c + k] = i0 + k < below ? w[(size_t)(i0 + k) * cols + (size_t)(j + c)] : 0.0f;
                        }
                    }
                }
            }
        }
        for (; j < j1; j++) {
            float *p = panel + 16 * (q + (size_t)(j - j0));
            for (int k = 0; k < 16; k++) p[k] = i0 + k < below ? w[(size_t)(i0 + k) * cols + (size_t)j] : 0.0f;
        }
        q += (size_t)(j1 - j0);
    }
    return q;
}

MADE_AVX2 static inline __attribute__((always_inline)) void input_gradient_block(int R, const int *tiles,
                                                                                size_t tile_count, int i0,
                                                                                const float *delta, size_t cols,
                                                                                const float *panel, float *out,
                                                                                size_t ldo, int width,
                                                                                int accumulate) {
    __m256 acc[6][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float *p = panel;
    for (size_t t = 0; t < tile_count; t++) {
        if (tiles[3 * t + 2] <= i0) continue;
        for (int j = tiles[3 * t]; j < tiles[3 * t + 1]; j++) {
            __m256 b0 = _mm256_loadu_ps(p), b1 = _mm256_loadu_ps(p + 8);
            p += 16;
            for (int r = 0; r < R; r++) {
                __m256 x = _mm256_broadcast_ss(delta + (size_t)r * cols + (size_t)j);
                acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        float *o = out + (size_t)r * ldo;
        if (width == 16) {
            __m256 s0 = accumulate ? _mm256_add_ps(_mm256_loadu_ps(o), acc[r][0]) : acc[r][0];
            __m256 s1 = accumulate ? _mm256_add_ps(_mm256_loadu_ps(o + 8), acc[r][1]) : acc[r][1];
            _mm256_storeu_ps(o, s0);
            _mm256_storeu_ps(o + 8, s1);
        } else {
            float s[16];
            _mm256_storeu_ps(s, acc[r][0]);
            _mm256_storeu_ps(s + 8, acc[r][1]);
            for (int k = 0; k < width; k++) o[k] = accumulate ? o[k] + s[k] : s[k];
        }
    }
}

MADE_AVX2 static void input_gradient_avx2(size_t n, size_t rows, size_t cols, const float *delta, const float *w,
                                          const int *tiles, size_t tile_count, float *da, int accumulate,
                                          float *panel) {
    for (int i0 = 0; i0 < (int)rows; i0 += 16) {
        int width = (int)rows - i0 < 16 ? (int)rows - i0 : 16;
        pack_panel(rows, cols, w, tiles, tile_count, i0, panel);
        size_t r = 0;
        for (int s = shorter_blocks(n, 6); s > 0; s--, r += 5)
            input_gradient_block(5, tiles, tile_count, i0, delta + r * cols, cols, panel, da + r * rows + i0, rows,
                                 width, accumulate);
        for (; r + 6 <= n; r += 6)
            input_gradient_block(6, tiles, tile_count, i0, delta + r * cols, cols, panel, da + r * rows + i0, rows,
                                 width, accumulate);
        const float *dr = delta + r * cols;
        float *o = da + r * rows + i0;
        switch (n - r) {
        case 5: input_gradient_block(5, tiles, tile_count, i0, dr, cols, panel, o, rows, width, accumulate); break;
        case 4: input_gradient_block(4, tiles, tile_count, i0, dr, cols, panel, o, rows, width, accumulate); break;
        case 3: input_gradient_block(3, tiles, tile_count, i0, dr, cols, panel, o, rows, width, accumulate); break;
        case 2: input_gradient_block(2, tiles, tile_count, i0, dr, cols, panel, o, rows, width, accumulate); break;
        case 1: input_gradient_block(1, tiles, tile_count, i0, dr, cols, panel, o, rows, width, accumulate); break;
        default: break;
        }
    }
}

void made_staircase_input_gradient_f32(size_t n, size_t rows, size_t cols, const float *delta, const float *w,
                                       const int *active, const int *bands, size_t band_count, float *da,
                                       int accumulate, float *scratch, int *tiles) {
    float *panel = scratch;
    size_t tile_count = list_tiles(active, bands, band_count, tiles);
    if (use_avx2()) {
        input_gradient_avx2(n, rows, cols, delta, w, tiles, tile_count, da, accumulate, panel);
        return;
    }
    for (int i0 = 0; i0 < (int)rows; i0 += 16) {
        int i1 = i0 + 16 < (int)rows ? i0 + 16 : (int)rows;
        input_gradient_elements(n, rows, cols, delta, w, tiles, tile_count, i0, i1, da, accumulate);
    }
}

size_t made_staircase_product_scratch_floats(size_t n, size_t rows) {
    return (n < MADE_PANEL ? n : MADE_PANEL) * rows + 16 * rows;
}

size_t made_staircase_gradient_scratch_floats(size_t n, size_t rows, size_t cols) {
    size_t widest = rows > cols ? rows : cols;
    return 16 * (widest > n ? widest : n);
}

size_t made_staircase_scratch_floats(size_t n, size_t rows, size_t cols) {
    size_t product = made_staircase_product_scratch_floats(n, rows);
    size_t gradient = made_staircase_gradient_scratch_floats(n, rows, cols);
    return product > gradient ? product : gradient;
}
