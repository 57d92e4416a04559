#define _GNU_SOURCE
#include "made_kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <sys/mman.h>

/* Each hot kernel is built twice, for AVX2 and for the baseline; the loader picks one at run time.
 * Without FMA contraction both do the same IEEE-754 operations, so they give the same bits. */
#define MADE_CLONES __attribute__((target_clones("avx2", "default")))

static inline uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

MADE_CLONES
void made_adam_f32(size_t n, float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                   made_adam_constants c) {
    for (size_t i = 0; i < n; i++) {
        float gi = c.scale * g[i] + c.decay * p[i];
        float mi = c.beta1 * m[i] + c.one_minus_beta1 * gi;
        float vi = c.beta2 * v[i] + c.one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] - c.step_size * mi / (sqrtf(vi) * c.inverse_root_correction2 + c.epsilon);
    }
}

/* made_adam_f32 on columns j0 ..< j1 of row i of a matrix in the sparse kernel's compute order, the
 * gradient masked on the way (+0 where i >= active[j]), and with copy the updated weight stored,
 * masked, into d[j] in the same pass. The gradient is read whole and selected: a row of it is
 * allocated past the mask, and a plain load streams where a masked one does not. */
static inline __attribute__((always_inline)) void adam_span(int i, int j0, int j1, float *restrict pr,
                                                            const float *restrict gr, float *restrict mr,
                                                            float *restrict vr, const int *restrict active,
                                                            float *restrict d, made_adam_constants c, int copy) {
    for (int j = j0; j < j1; j++) {
        float loaded = gr[j];
        float gj = i < active[j] ? loaded : 0.0f;
        float gi = c.scale * gj + c.decay * pr[j];
        float mi = c.beta1 * mr[j] + c.one_minus_beta1 * gi;
        float vi = c.beta2 * vr[j] + c.one_minus_beta2 * (gi * gi);
        mr[j] = mi;
        vr[j] = vi;
        float p = pr[j] - c.step_size * mi / (sqrtf(vi) * c.inverse_root_correction2 + c.epsilon);
        pr[j] = p;
        if (copy) d[j] = i < active[j] ? p : 0.0f;
    }
}

/* made_adam_f32 on a rows x cols matrix in the sparse kernel's compute order, with the gradient
 * masked on the way (+0 where i >= active[j]), and the updated weights copied, masked, into
 * compute inside the bands (when compute is not NULL). One pass: band by band along each row,
 * copying where the row is inside the band. */
MADE_CLONES
void made_adam_masked_f32(size_t rows, size_t cols, float *restrict p, const float *restrict g, float *restrict m,
                          float *restrict v, const int *restrict active, const int *restrict bands, size_t band_count,
                          float *restrict compute, made_adam_constants c) {
    for (size_t i = 0; i < rows; i++) {
        float *pr = p + i * cols, *mr = m + i * cols, *vr = v + i * cols;
        const float *gr = g + i * cols;
        float *d = compute ? compute + i * cols : NULL;
        for (size_t b = 0; b < band_count; b++) {
            const int *band = bands + 3 * b;
            if (d && (int)i < band[2]) {
                adam_span((int)i, band[0], band[1], pr, gr, mr, vr, active, d, c, 1);
            } else {
                adam_span((int)i, band[0], band[1], pr, gr, mr, vr, active, d, c, 0);
            }
        }
    }
}

/* Row `row` of a staircase, inside its bands (the bands that reach the row): d[j] = row < active[j] ?
 * s[col_from[j]] : +0, or s[j] with no col_from; entries outside the bands are not written. */
static inline __attribute__((always_inline)) void staircase_row(int row, const float *restrict s,
                                                                const int *restrict col_from,
                                                                const int *restrict active, const int *restrict bands,
                                                                size_t band_count, float *restrict d) {
    for (size_t b = 0; b < band_count; b++) {
        const int *band = bands + 3 * b;
        if (row >= band[2]) continue;
        if (col_from) {
            for (int j = band[0]; j < band[1]; j++) {
                float x = s[col_from[j]];
                d[j] = row < active[j] ? x : 0.0f;
            }
        } else {
            for (int j = band[0]; j < band[1]; j++) d[j] = row < active[j] ? s[j] : 0.0f;
        }
    }
}

/* made_adam_f32 on row i of a rows x cols matrix, the updated row then copied, masked, into compute inside its
 * bands; returns the updated row. */
static inline __attribute__((always_inline)) const float *adam_copy_row(size_t i, size_t cols, float *restrict p,
                                                                       const float *restrict g, float *restrict m,
                                                                       float *restrict v, const int *restrict active,
                                                                       const int *restrict bands, size_t band_count,
                                                                       float *restrict compute, made_adam_constants c) {
    float *pr = p + i * cols;
    made_adam_f32(cols, pr, g + i * cols, m + i * cols, v + i * cols, c);
    staircase_row((int)i, pr, NULL, active, bands, band_count, compute + i * cols);
    return pr;
}

/* made_adam_f32 on a rows x cols matrix in the sparse kernel's compute order whose gradient is used as it
 * is (a sum over several masks, +0 outside their union), with the updated weights copied, masked by this
 * order's mask, into compute inside its bands: made_adam_masked_f32 without masking the gradient. */
MADE_CLONES
void made_adam_copy_f32(size_t rows, size_t cols, float *restrict p, const float *restrict g, float *restrict m,
                        float *restrict v, const int *restrict active, const int *restrict bands, size_t band_count,
                        float *restrict compute, made_adam_constants c) {
    for (size_t i = 0; i < rows; i++) adam_copy_row(i, cols, p, g, m, v, active, bands, band_count, compute, c);
}

/* ---- Column permutations eight rows at a time. ----
 * A row read through a column permutation costs a load per value from anywhere in the row. Eight rows at
 * once are turned into their columns (8 x 8 transposes), a column of the eight is then one 32-byte load,
 * and eight such columns transposed back are eight row segments: values are only moved, never computed,
 * so a kernel that reads them so has the bits of one that reads them one by one. Written with clang's
 * vector extensions: each clone gets its own instructions (ymm registers with AVX2, pairs of xmm without). */

typedef float made_v8f __attribute__((vector_size(32), aligned(4)));
typedef int made_v8i __attribute__((vector_size(32), aligned(4)));

/* Vectors go through memory as bytes (any alignment, no aliasing question), and never by value through a
 * function: the clone without AVX has no ABI for them. */
#define MADE_LOAD8(x, p) memcpy(&(x), (p), sizeof(made_v8f))
#define MADE_STORE8(p, x) memcpy((p), &(x), sizeof(made_v8f))

/* The 8 x 8 transpose of r[0..7] in place: afterwards r[j][k] is what r[k][j] was. */
static inline __attribute__((always_inline)) void transpose8(made_v8f r[8]) {
    made_v8f t0 = __builtin_shufflevector(r[0], r[1], 0, 8, 1, 9, 4, 12, 5, 13);
    made_v8f t1 = __builtin_shufflevector(r[0], r[1], 2, 10, 3, 11, 6, 14, 7, 15);
    made_v8f t2 = __builtin_shufflevector(r[2], r[3], 0, 8, 1, 9, 4, 12, 5, 13);
    made_v8f t3 = __builtin_shufflevector(r[2], r[3], 2, 10, 3, 11, 6, 14, 7, 15);
    made_v8f t4 = __builtin_shufflevector(r[4], r[5], 0, 8, 1, 9, 4, 12, 5, 13);
    made_v8f t5 = __builtin_shufflevector(r[4], r[5], 2, 10, 3, 11, 6, 14, 7, 15);
    made_v8f t6 = __builtin_shufflevector(r[6], r[7], 0, 8, 1, 9, 4, 12, 5, 13);
    made_v8f t7 = __builtin_shufflevector(r[6], r[7], 2, 10, 3, 11, 6, 14, 7, 15);
    made_v8f u0 = __builtin_shufflevector(t0, t2, 0, 1, 8, 9, 4, 5, 12, 13);
    made_v8f u1 = __builtin_shufflevector(t0, t2, 2, 3, 10, 11, 6, 7, 14, 15);
    made_v8f u2 = __builtin_shufflevector(t1, t3, 0, 1, 8, 9, 4, 5, 12, 13);
    made_v8f u3 = __builtin_shufflevector(t1, t3, 2, 3, 10, 11, 6, 7, 14, 15);
    made_v8f u4 = __builtin_shufflevector(t4, t6, 0, 1, 8, 9, 4, 5, 12, 13);
    made_v8f u5 = __builtin_shufflevector(t4, t6, 2, 3, 10, 11, 6, 7, 14, 15);
    made_v8f u6 = __builtin_shufflevector(t5, t7, 0, 1, 8, 9, 4, 5, 12, 13);
    made_v8f u7 = __builtin_shufflevector(t5, t7, 2, 3, 10, 11, 6, 7, 14, 15);
    r[0] = __builtin_shufflevector(u0, u4, 0, 1, 2, 3, 8, 9, 10, 11);
    r[1] = __builtin_shufflevector(u1, u5, 0, 1, 2, 3, 8, 9, 10, 11);
    r[2] = __builtin_shufflevector(u2, u6, 0, 1, 2, 3, 8, 9, 10, 11);
    r[3] = __builtin_shufflevector(u3, u7, 0, 1, 2, 3, 8, 9, 10, 11);
    r[4] = __builtin_shufflevector(u0, u4, 4, 5, 6, 7, 12, 13, 14, 15);
    r[5] = __builtin_shufflevector(u1, u5, 4, 5, 6, 7, 12, 13, 14, 15);
    r[6] = __builtin_shufflevector(u2, u6, 4, 5, 6, 7, 12, 13, 14, 15);
    r[7] = __builtin_shufflevector(u3, u7, 4, 5, 6, 7, 12, 13, 14, 15);
}

/* The columns of the eight rows s[0..7] (cols values each): t[8 c + k] = s[k][c]. */
static inline __attribute__((always_inline)) void columns8(size_t cols, const float *const s[8], float *restrict t) {
    size_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        made_v8f r[8];
        for (int k = 0; k < 8; k++) MADE_LOAD8(r[k], s[k] + c);
        transpose8(r);
        for (int j = 0; j < 8; j++) MADE_STORE8(t + 8 * (c + (size_t)j), r[j]);
    }
    for (; c < cols; c++) {
        for (int k = 0; k < 8; k++) t[8 * c + (size_t)k] = s[k][c];
    }
}

/* Columns col_from[j ..< j + 8] of the eight rows whose columns t holds (columns8), as row segments:
 * afterwards r[k][x] = t[8 col_from[j + x] + k]. */
static inline __attribute__((always_inline)) void gathered8(const float *restrict t, const int *restrict col_from,
                                                            size_t j, made_v8f r[8]) {
    for (int x = 0; x < 8; x++) MADE_LOAD8(r[x], t + 8 * (size_t)col_from[j + (size_t)x]);
    transpose8(r);
}

/* Eight rows whose columns t holds (columns8), written masked into rows to[0..<8] of dst (cols wide) through
 * col_from, inside the bands: row to[k] where a band reaches it (to[k] < its rows), +0 from active[j] down, as
 * staircase_row writes a row. */
static inline __attribute__((always_inline)) void staircase_rows8(size_t cols, const float *restrict t,
                                                                  const int to[8], const int *restrict col_from,
                                                                  const int *restrict active,
                                                                  const int *restrict bands, size_t band_count,
                                                                  float *restrict dst) {
    int lowest = INT32_MAX;
    for (int k = 0; k < 8; k++) {
        if (to[k] < lowest) lowest = to[k];
    }
    for (size_t b = 0; b < band_count; b++) {
        const int *band = bands + 3 * b;
        if (lowest >= band[2]) continue; /* none of the eight rows inside the band */
        size_t j = (size_t)band[0];
        for (; j + 8 <= (size_t)band[1]; j += 8) {
            made_v8f x[8];
            gathered8(t, col_from, j, x);
            made_v8i keep;
            memcpy(&keep, active + j, sizeof keep);
            for (int k = 0; k < 8; k++) {
                if (to[k] >= band[2]) continue;
                /* row < active[j] ? x : +0, on the bits: +0 is all zeros. */
                made_v8i bits = (made_v8i)x[k] & ((made_v8i){0} + to[k] < keep);
                MADE_STORE8(dst + (size_t)to[k] * cols + j, bits);
            }
        }
        for (; j < (size_t)band[1]; j++) {
            const float *column = t + 8 * (size_t)col_from[j];
            for (int k = 0; k < 8; k++) {
                if (to[k] < band[2]) dst[(size_t)to[k] * cols + j] = to[k] < active[j] ? column[k] : 0.0f;
            }
        }
    }
}

/* made_gather_staircase_f32 with a column order: eight rows at a time through their columns (columns8), the
 * rows left one by one. dst row i is src row row_order[i] read through col_order, masked, inside the bands that
 * reach it; the eight rows of a tile reach the same bands but for the last few rows of each. */
static inline __attribute__((always_inline)) void gather_staircase_columns(size_t rows, size_t cols,
                                                                           const float *restrict src,
                                                                           const int *restrict row_order,
                                                                           const int *restrict col_order,
                                                                           const int *restrict active,
                                                                           const int *restrict bands,
                                                                           size_t band_count, float *restrict dst) {
    size_t i = 0;
    float *t = rows >= 8 ? malloc(cols * 8 * sizeof(float)) : NULL;
    if (t) {
        for (; i + 8 <= rows; i += 8) {
            const float *s[8];
            int to[8];
            for (int k = 0; k < 8; k++) {
                s[k] = src + (size_t)row_order[i + (size_t)k] * cols;
                to[k] = (int)i + k;
            }
            columns8(cols, s, t);
            staircase_rows8(cols, t, to, col_order, active, bands, band_count, dst);
        }
        free(t);
    }
    for (; i < rows; i++) {
        staircase_row((int)i, src + (size_t)row_order[i] * cols, col_order, active, bands, band_count, dst + i * cols);
    }
}

/* Asks for the cache lines of a row of cols floats: for a row read next out of order, which the hardware does
 * not see coming. */
static inline __attribute__((always_inline)) void prefetch_row(const float *row, size_t cols) {
    const char *bytes = (const char *)row;
    for (size_t offset = 0; offset < cols * sizeof(float); offset += 64) __builtin_prefetch(bytes + offset);
}

/* Whether order[j] == j for every j < n: a permutation that keeps every column where it is (two masks of the
 * same input order keep the outputs' columns), so that rows are copied or added as they lie. */
static inline int is_identity(const int *order, size_t n) {
    for (size_t j = 0; j < n; j++) {
        if (order[j] != (int)j) return 0;
    }
    return 1;
}

/* made_adam_copy_f32, each updated row also written, masked, into a further mask's compute order as
 * made_gather_staircase_f32 would write it there: held row i is row row_to[i] of other, read through col_from,
 * inside the further mask's bands (other_bands, other_active). Eight held rows at a time, in order (Adam's four
 * arrays stream): updated, turned into their columns (columns8) while in cache, and the segments of each
 * further band written to their eight rows of other, each row where the band reaches it. */
MADE_CLONES
void made_adam_copy_gather_f32(size_t rows, size_t cols, float *restrict p, const float *restrict g,
                               float *restrict m, float *restrict v, const int *restrict active,
                               const int *restrict bands, size_t band_count, float *restrict compute,
                               made_adam_constants c, float *restrict other, const int *restrict row_to,
                               const int *restrict col_from, const int *restrict other_active,
                               const int *restrict other_bands, size_t other_band_count) {
    size_t i = 0;
    /* Columns kept where they are: each row straight from Adam's output (below). */
    int kept = is_identity(col_from, cols);
    float *t = rows >= 8 && !kept ? malloc(cols * 8 * sizeof(float)) : NULL;
    if (t) {
        for (; i + 8 <= rows; i += 8) {
            const float *s[8];
            int to[8];
            for (int k = 0; k < 8; k++) {
                s[k] = adam_copy_row(i + (size_t)k, cols, p, g, m, v, active, bands, band_count, compute, c);
                to[k] = row_to[i + (size_t)k];
            }
            columns8(cols, s, t);
            staircase_rows8(cols, t, to, col_from, other_active, other_bands, other_band_count, other);
        }
        free(t);
    }
    for (; i < rows; i++) {
        const float *pr = adam_copy_row(i, cols, p, g, m, v, active, bands, band_count, compute, c);
        staircase_row(row_to[i], pr, kept ? NULL : col_from, other_active, other_bands, other_band_count,
                      other + (size_t)row_to[i] * cols);
    }
}

/* dst[i * cols + j] = src[row_from[i] * cols + col_from[j]], every entry; src and dst never overlap. */
MADE_CLONES
void made_gather_matrix_f32(size_t rows, size_t cols, const float *restrict src, const int *restrict row_from,
                            const int *restrict col_from, float *restrict dst) {
    int kept = is_identity(col_from, cols);
    for (size_t i = 0; i < rows; i++) {
        const float *s = src + (size_t)row_from[i] * cols;
        float *d = dst + i * cols;
        if (kept) {
            memcpy(d, s, cols * sizeof(float));
        } else {
            for (size_t j = 0; j < cols; j++) d[j] = s[col_from[j]];
        }
    }
}

/* out[i * cols + j] = a[i * cols + j] + b[row_from[i] * cols + col_from[j]] for every entry (b's rows and
 * columns permuted on the way, as made_gather_matrix_f32 would); out may be a, never b. Returns whether every
 * sum is finite. */
MADE_CLONES
int made_add_gather_matrix_f32(size_t rows, size_t cols, const float *a, const float *restrict b,
                               const int *restrict row_from, const int *restrict col_from, float *out) {
    uint32_t special = 0;
    int kept = is_identity(col_from, cols);
    for (size_t i = 0; i < rows; i++) {
        const float *ar = a + i * cols, *br = b + (size_t)row_from[i] * cols;
        /* b's rows come out of order: the next one is asked for while this one is summed. */
        if (i + 1 < rows) prefetch_row(b + (size_t)row_from[i + 1] * cols, cols);
        float *o = out + i * cols;
        if (kept) {
            for (size_t j = 0; j < cols; j++) {
                float v = ar[j] + br[j];
                special |= (uint32_t)((float_bits(v) & 0x7f800000u) == 0x7f800000u);
                o[j] = v;
            }
        } else {
            for (size_t j = 0; j < cols; j++) {
                float v = ar[j] + br[col_from[j]];
                special |= (uint32_t)((float_bits(v) & 0x7f800000u) == 0x7f800000u);
                o[j] = v;
            }
        }
    }
    return special == 0;
}

/* a[i * cols + j] <- a[row_from[i] * cols + col_from[j]] in place (rows and columns permuted), row
 * cycle by row cycle (each row moved once, its columns gathered on the way), with one row of
 * scratch and a flag per row. */
MADE_CLONES
void made_permute_matrix_inplace_f32(size_t rows, size_t cols, float *restrict a, const int *restrict row_from,
                                     const int *restrict col_from, float *restrict scratch,
                                     unsigned char *restrict done) {
    memset(done, 0, rows);
    for (size_t start = 0; start < rows; start++) {
        if (done[start]) continue;
        /* Row t takes row row_from[t], still in place until its own turn; only start's is saved. */
        memcpy(scratch, a + start * cols, cols * sizeof(float));
        size_t t = start;
        for (;;) {
            done[t] = 1;
            size_t s = (size_t)row_from[t];
            const float *src = s == start ? scratch : a + s * cols;
            float *d = a + t * cols;
            for (size_t j = 0; j < cols; j++) d[j] = src[col_from[j]];
            if (s == start) break;
            t = s;
        }
    }
}

static inline float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }

/* Cephes expf on x <= 0: range reduction by n = round(x log2 e), then a degree-6 polynomial. */
static inline float exp_nonpositive(float x) {
    const float lo = -87.0f;
    int underflow = x < lo;
    x = underflow ? lo : x;
    /* Round to nearest by adding and removing 1.5 * 2^23 (exact for |t| < 2^22). */
    const float magic = 12582912.0f;
    float fx = (x * 1.44269504088896341f + magic) - magic;
    float r = x - fx * 0.693359375f;
    r = r - fx * -2.12194440e-4f;
    float z = r * r;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.0f;
    int32_t k = (int32_t)fx + 127;
    float scale = bits_to_float((uint32_t)k << 23);
    float result = y * scale;
    return underflow ? 0.0f : result;
}

/* log(1 + e) for e in [0, 1]: u = 1 + e rounded, Cephes logf of u (u = m 2^k, m in [1, sqrt 2)),
 * plus the rounding error of u, (e - (u - 1)) / u. */
static inline float log1p_unit(float e) {
    float u = 1.0f + e;
    float correction = (e - (u - 1.0f)) / u;
    int high = u >= 1.41421356237f;
    float m = high ? u * 0.5f : u;
    float k = high ? 1.0f : 0.0f;
    float f = m - 1.0f;
    float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    y = y + k * -2.12194440e-4f;
    y = y - 0.5f * z;
    float r = f + y;
    r = r + k * 0.693359375f;
    return r + correction;
}

float made_exp_nonpositive_f32(float x) { return exp_nonpositive(x); }
float made_log1p_unit_f32(float e) { return log1p_unit(e); }

static inline __attribute__((always_inline)) float bernoulli(size_t n, const float *restrict x, const float *restrict z, float *restrict grad,
                                                            int with_gradient) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t j = 0;
    /* Sixteen at a time: two independent chains of exp and log in flight, each lane's terms
     * added to acc in the order of the loop below. */
    for (; j + 16 <= n; j += 16) {
        float term[16];
        for (int l = 0; l < 16; l++) {
            float zj = z[j + l];
            float xj = x[j + l];
            float s = xj > 0.5f ? -zj : zj;
            float e = exp_nonpositive(-fabsf(zj));
            term[l] = (s > 0.0f ? s : 0.0f) + log1p_unit(e);
            if (with_gradient) {
                float numerator = zj >= 0.0f ? 1.0f : e;
                grad[j + l] = numerator / (1.0f + e) - xj;
            }
        }
        for (int l = 0; l < 8; l++) acc[l] += term[l];
        for (int l = 0; l < 8; l++) acc[l] += term[8 + l];
    }
    for (; j + 8 <= n; j += 8) {
        for (int l = 0; l < 8; l++) {
            float zj = z[j + l];
            float xj = x[j + l];
            float s = xj > 0.5f ? -zj : zj;
            float e = exp_nonpositive(-fabsf(zj));
            acc[l] += (s > 0.0f ? s : 0.0f) + log1p_unit(e);
            if (with_gradient) {
                float numerator = zj >= 0.0f ? 1.0f : e;
                grad[j + l] = numerator / (1.0f + e) - xj;
            }
        }
    }
    float tail = 0;
    for (; j < n; j++) {
        float zj = z[j];
        float xj = x[j];
        float s = xj > 0.5f ? -zj : zj;
        float e = exp_nonpositive(-fabsf(zj));
        tail += (s > 0.0f ? s : 0.0f) + log1p_unit(e);
        if (with_gradient) {
            float numerator = zj >= 0.0f ? 1.0f : e;
            grad[j] = numerator / (1.0f + e) - xj;
        }
    }
    return (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail;
}


/* The same operations in the same order either way: the loss has the same bits with or without the
 * gradient, and each loop is compiled without a branch on grad inside. */
MADE_CLONES
float made_bernoulli_f32(size_t n, const float *restrict x, const float *restrict z, float *restrict grad) {
    return grad ? bernoulli(n, x, z, grad, 1) : bernoulli(n, x, z, grad, 0);
}

MADE_CLONES
void made_mask_select_f32(size_t n, const float *restrict w, const unsigned char *restrict mask, float *restrict out) {
    for (size_t i = 0; i < n; i++) out[i] = mask[i] ? w[i] : 0.0f;
}

MADE_CLONES
void made_mask_inplace_f32(size_t n, float *restrict a, const unsigned char *restrict mask) {
    for (size_t i = 0; i < n; i++) a[i] = mask[i] ? a[i] : 0.0f;
}

MADE_CLONES
void made_bias_relu_f32(size_t rows, size_t cols, float *restrict h, const float *restrict b) {
    for (size_t r = 0; r < rows; r++) {
        float *row = h + r * cols;
        for (size_t j = 0; j < cols; j++) {
            float v = row[j] + b[j];
            row[j] = v > 0.0f ? v : 0.0f;
        }
    }
}

MADE_CLONES
void made_bias_add_f32(size_t rows, size_t cols, float *restrict h, const float *restrict b) {
    for (size_t r = 0; r < rows; r++) {
        float *row = h + r * cols;
        for (size_t j = 0; j < cols; j++) row[j] = row[j] + b[j];
    }
}

MADE_CLONES
void made_relu_backward_f32(size_t n, float *restrict d, const float *restrict h) {
    for (size_t i = 0; i < n; i++) d[i] = h[i] > 0.0f ? d[i] : 0.0f;
}

MADE_CLONES
void made_column_sums_f32(size_t rows, size_t cols, const float *restrict a, float *restrict out) {
    for (size_t j = 0; j < cols; j++) out[j] = a[j];
    for (size_t r = 1; r < rows; r++) {
        const float *row = a + r * cols;
        for (size_t j = 0; j < cols; j++) out[j] = out[j] + row[j];
    }
}

MADE_CLONES
void made_gather_f32(size_t n, const int *restrict idx, const float *restrict src, float *restrict dst) {
    for (size_t k = 0; k < n; k++) dst[k] = src[idx[k]];
}


MADE_CLONES
int made_scatter_f32(size_t n, const int *restrict idx, const float *restrict src, float *restrict dst) {
    uint32_t special = 0;
    for (size_t k = 0; k < n; k++) {
        float v = src[k];
        special |= (uint32_t)((float_bits(v) & 0x7f800000u) == 0x7f800000u);
        dst[idx[k]] = v;
    }
    return special == 0;
}

MADE_CLONES
int made_copy_finite_f32(size_t n, const float *restrict src, float *restrict dst) {
    uint32_t special = 0;
    for (size_t k = 0; k < n; k++) {
        float v = src[k];
        special |= (uint32_t)((float_bits(v) & 0x7f800000u) == 0x7f800000u);
        dst[k] = v;
    }
    return special == 0;
}

MADE_CLONES
int made_add_f32(size_t n, const float *a, const float *b, float *out) {
    uint32_t special = 0;
    for (size_t k = 0; k < n; k++) {
        float v = a[k] + b[k];
        special |= (uint32_t)((float_bits(v) & 0x7f800000u) == 0x7f800000u);
        out[k] = v;
    }
    return special == 0;
}

/* ---- The sparse kernel's layout changes and sums of selected rows. ---- */

MADE_CLONES
void made_gather_staircase_f32(size_t rows, size_t cols, const float *restrict src, const int *restrict row_order,
                               const int *restrict col_order, const int *restrict active, const int *restrict bands,
                               size_t band_count, float *restrict dst) {
    if (col_order && !is_identity(col_order, cols)) {
        gather_staircase_columns(rows, cols, src, row_order, col_order, active, bands, band_count, dst);
        return;
    }
    for (size_t i = 0; i < rows; i++) {
        staircase_row((int)i, src + (size_t)row_order[i] * cols, NULL, active, bands, band_count, dst + i * cols);
    }
}

/* d[c] = row < active_by_col[c] ? s[col_position[c]] : +0 for c < cols; s and d never overlap. */
static inline __attribute__((always_inline)) void unpermute_row(size_t cols, const float *restrict s, float *restrict d, int row,
                                                                const int *restrict col_position, const int *restrict active_by_col) {
#pragma clang loop vectorize(enable)
    for (size_t c = 0; c < cols; c++) {
        float v = s[col_position[c]];
        d[c] = row < active_by_col[c] ? v : 0.0f;
    }
}

MADE_CLONES
void made_unpermute_staircase_f32(size_t rows, size_t cols, float *restrict a, const int *restrict row_position,
                                  const int *restrict col_position, const int *restrict active_by_col,
                                  float *restrict scratch, unsigned char *restrict done) {
    memset(done, 0, rows);
    for (size_t start = 0; start < rows; start++) {
        if (done[start]) continue;
        /* Walk the cycle through layout row start backwards: layout row t takes compute row
         * row_position[t], which is still in place until its own turn; only start's row is saved. */
        memcpy(scratch, a + start * cols, cols * sizeof(float));
        size_t t = start;
        for (;;) {
            done[t] = 1;
            size_t i = (size_t)row_position[t];
            unpermute_row(cols, i == start ? scratch : a + i * cols, a + t * cols, (int)i, col_position, active_by_col);
            if (i == start) break;
            t = i;
        }
    }
}

MADE_CLONES
void made_mask_staircase_f32(size_t rows, size_t cols, float *restrict a, const int *restrict active,
                             const int *restrict bands,
                             size_t band_count, int outside) {
    for (size_t i = 0; i < rows; i++) {
        float *r = a + i * cols;
        for (size_t k = 0; k < band_count; k++) {
            const int *band = bands + 3 * k;
            int j = band[0];
            if ((int)i < band[2]) {
                for (; j < band[1] && active[j] <= (int)i; j++) r[j] = 0.0f;
            } else if (outside) {
                memset(r + j, 0, (size_t)(band[1] - j) * sizeof(float));
            }
        }
    }
}

MADE_CLONES
int made_load_binary_rows_f32(size_t n, size_t d, const unsigned char *restrict bytes, const int *restrict rows,
                              const int *restrict order, float *restrict out, int *restrict row_start, int *restrict row_index) {
    int ones = 0;
    unsigned char local[4096];
    for (size_t r = 0; r < n; r++) {
        const unsigned char *s = bytes + (size_t)rows[r] * d;
        if (r + 1 < n) {
            const unsigned char *next = bytes + (size_t)rows[r + 1] * d;
            for (size_t q = 0; q < d; q += 64) __builtin_prefetch(next + q);
        }
        if (d <= sizeof local) {
            memcpy(local, s, d);
            s = local;
        }
        float *o = out + r * d;
        row_start[r] = ones;
        for (size_t p0 = 0; p0 < d; p0 += 64) {
            size_t m = d - p0 < 64 ? d - p0 : 64;
            uint64_t bits = 0;
            for (size_t t = 0; t < m; t++) {
                unsigned char v = s[order[p0 + t]];
                o[p0 + t] = v ? 1.0f : 0.0f;
                bits |= (uint64_t)(v != 0) << t;
            }
            while (bits) {
                row_index[ones++] = (int)(p0 + (size_t)__builtin_ctzll(bits));
                bits &= bits - 1;
            }
        }
    }
    row_start[n] = ones;
    return ones;
}

#define MADE_BLOCK 32

/* The largest active[j] for j in [j0, j1). */
static inline __attribute__((always_inline)) int block_rows(const int *active, size_t j0, size_t j1) {
    int m = 0;
    for (size_t j = j0; j < j1; j++) m = active[j] > m ? active[j] : m;
    return m;
}

/* The sums of selected rows for one block of W columns (W a constant, so the accumulators stay in
 * registers): out[0..<W] = (out +) sum over k in [k0, k1) with index[k] < bound of src[index[k] * stride + t]. */
#define MADE_SUM_ROWS(W)                                                                                     \
    static inline __attribute__((always_inline)) void sum_rows_##W(const float *restrict src, size_t stride, const int *restrict index,      \
                                    int k0, int k1, int bound, float *restrict out, int accumulate) {        \
        float acc[W];                                                                                        \
        for (int t = 0; t < W; t++) acc[t] = 0.0f;                                                           \
        for (int k = k0; k < k1; k++) {                                                                      \
            int i = index[k];                                                                                \
            if (i >= bound) break;                                                                           \
            const float *row = src + (size_t)i * stride;                                                     \
            for (int t = 0; t < W; t++) acc[t] = acc[t] + row[t];                                            \
        }                                                                                                    \
        if (accumulate) {                                                                                    \
            for (int t = 0; t < W; t++) out[t] = out[t] + acc[t];                                            \
        } else {                                                                                             \
            for (int t = 0; t < W; t++) out[t] = acc[t];                                                     \
        }                                                                                                    \
    }
MADE_SUM_ROWS(32)
MADE_SUM_ROWS(16)
MADE_SUM_ROWS(8)
MADE_SUM_ROWS(4)
MADE_SUM_ROWS(1)

/* Two such sums at once, of the rows listed in [a0, a1) into oa and in [b0, b1) into ob, each in
 * its own ascending order as sum_rows_W takes it: twice the accumulators in flight. */
#define MADE_SUM_ROWS2(W)                                                                                    \
    static inline __attribute__((always_inline)) void sum_rows2_##W(const float *restrict src, size_t stride, \
                                    const int *restrict index, int a0, int a1, int b0, int b1, int bound,    \
                                    float *restrict oa, float *restrict ob, int accumulate) {                 \
        float x[W], y[W];                                                                                    \
        for (int t = 0; t < W; t++) { x[t] = 0.0f; y[t] = 0.0f; }                                            \
        int ka = a0, kb = b0;                                                                                \
        for (; ka < a1 && kb < b1; ka++, kb++) {                                                             \
            int ia = index[ka], ib = index[kb];                                                              \
            if (ia >= bound || ib >= bound) break;                                                           \
            const float *ra = src + (size_t)ia * stride, *rb = src + (size_t)ib * stride;                    \
            for (int t = 0; t < W; t++) { x[t] = x[t] + ra[t]; y[t] = y[t] + rb[t]; }                         \
        }                                                                                                    \
        for (; ka < a1; ka++) {                                                                              \
            int i = index[ka];                                                                               \
            if (i >= bound) break;                                                                           \
            const float *r = src + (size_t)i * stride;                                                       \
            for (int t = 0; t < W; t++) x[t] = x[t] + r[t];                                                  \
        }                                                                                                    \
        for (; kb < b1; kb++) {                                                                              \
            int i = index[kb];                                                                               \
            if (i >= bound) break;                                                                           \
            const float *r = src + (size_t)i * stride;                                                       \
            for (int t = 0; t < W; t++) y[t] = y[t] + r[t];                                                  \
        }                                                                                                    \
        if (accumulate) {                                                                                    \
            for (int t = 0; t < W; t++) { oa[t] = oa[t] + x[t]; ob[t] = ob[t] + y[t]; }                       \
        } else {                                                                                             \
            for (int t = 0; t < W; t++) { oa[t] = x[t]; ob[t] = y[t]; }                                      \
        }                                                                                                    \
    }
MADE_SUM_ROWS2(32)
MADE_SUM_ROWS2(16)
MADE_SUM_ROWS2(8)
MADE_SUM_ROWS2(4)
MADE_SUM_ROWS2(1)

/* sum_rows2_W for the width left (the W sum_rows would take). */
static inline __attribute__((always_inline)) void sum_rows2(size_t width, const float *restrict src, size_t stride,
                                                            const int *restrict index, int a0, int a1, int b0, int b1,
                                                            int bound, float *restrict oa, float *restrict ob,
                                                            int accumulate) {
    if (width >= 32) sum_rows2_32(src, stride, index, a0, a1, b0, b1, bound, oa, ob, accumulate);
    else if (width >= 16) sum_rows2_16(src, stride, index, a0, a1, b0, b1, bound, oa, ob, accumulate);
    else if (width >= 8) sum_rows2_8(src, stride, index, a0, a1, b0, b1, bound, oa, ob, accumulate);
    else if (width >= 4) sum_rows2_4(src, stride, index, a0, a1, b0, b1, bound, oa, ob, accumulate);
    else sum_rows2_1(src, stride, index, a0, a1, b0, b1, bound, oa, ob, accumulate);
}

/* Calls the widest sum_rows_W that fits the width left, and returns the W used. */
static inline __attribute__((always_inline)) size_t sum_rows(size_t width, const float *restrict src, size_t stride, const int *restrict index,
                              int k0, int k1, int bound, float *restrict out, int accumulate) {
    if (width >= 32) { sum_rows_32(src, stride, index, k0, k1, bound, out, accumulate); return 32; }
    if (width >= 16) { sum_rows_16(src, stride, index, k0, k1, bound, out, accumulate); return 16; }
    if (width >= 8) { sum_rows_8(src, stride, index, k0, k1, bound, out, accumulate); return 8; }
    if (width >= 4) { sum_rows_4(src, stride, index, k0, k1, bound, out, accumulate); return 4; }
    sum_rows_1(src, stride, index, k0, k1, bound, out, accumulate);
    return 1;
}

/* The width of the block starting at j0 of a band ending at end: what sum_rows will take. */
static inline size_t block_width(size_t j0, size_t end) {
    size_t left = end - j0;
    return left >= 32 ? 32 : left >= 16 ? 16 : left >= 8 ? 8 : left >= 4 ? 4 : 1;
}

MADE_CLONES
void made_binary_rows_f32(size_t n, size_t cols, const float *restrict w, const int *restrict active,
                          const int *restrict bands, size_t band_count,
                          const int *restrict row_start, const int *restrict row_index,
                          float *restrict out, size_t ldo, int accumulate) {
    for (size_t b = 0; b < band_count; b++) {
        size_t band_end = (size_t)bands[3 * b + 1];
        for (size_t j0 = (size_t)bands[3 * b]; j0 < band_end;) {
            size_t width = block_width(j0, band_end);
            int bound = block_rows(active, j0, j0 + width);
            size_t r = 0;
            for (; r + 1 < n; r += 2) {
                sum_rows2(width, w + j0, cols, row_index, row_start[r], row_start[r + 1], row_start[r + 1],
                          row_start[r + 2], bound,
                          out + r * ldo + j0, out + (r + 1) * ldo + j0, accumulate);
            }
            if (r < n) sum_rows(width, w + j0, cols, row_index, row_start[r], row_start[r + 1], bound,
                                out + r * ldo + j0, accumulate);
            j0 += width;
        }
    }
}

MADE_CLONES
void made_binary_weight_gradient_f32(size_t cols, const int *restrict active, const int *restrict bands, size_t band_count,
                                     const int *restrict input_start, const int *restrict input_rows,
                                     const float *restrict delta, size_t ldd, float *restrict dst) {
    for (size_t b = 0; b < band_count; b++) {
        size_t band_end = (size_t)bands[3 * b + 1];
        for (size_t j0 = (size_t)bands[3 * b]; j0 < band_end;) {
            size_t width = block_width(j0, band_end);
            int bound = block_rows(active, j0, j0 + width);
            /* Every listed row counts here: the bound is the number of rows of delta. */
            int i = 0;
            for (; i + 1 < bound; i += 2) {
                sum_rows2(width, delta + j0, ldd, input_rows, input_start[i], input_start[i + 1], input_start[i + 1],
                          input_start[i + 2], 0x7fffffff, dst + (size_t)i * cols + j0,
                          dst + (size_t)(i + 1) * cols + j0, 0);
            }
            if (i < bound) {
                sum_rows(width, delta + j0, ldd, input_rows, input_start[i], input_start[i + 1], 0x7fffffff,
                         dst + (size_t)i * cols + j0, 0);
            }
            j0 += width;
        }
    }
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void made_binarize_stochastic_u8(size_t n, unsigned char *restrict pixels, uint64_t *restrict state) {
    uint64_t s0 = state[0], s1 = state[1], s2 = state[2], s3 = state[3];
    for (size_t i = 0; i < n; i++) {
        uint64_t result = rotl64(s1 * 5, 7) * 9;
        uint64_t t = s1 << 17;
        s2 ^= s0;
        s3 ^= s1;
        s1 ^= s2;
        s0 ^= s3;
        s2 ^= t;
        s3 = rotl64(s3, 45);
        pixels[i] = (result >> 40) * 255 < ((uint64_t)pixels[i] << 24) ? 1 : 0;
    }
    state[0] = s0; state[1] = s1; state[2] = s2; state[3] = s3;
}

/* The SIGBUS guard over shared mappings (see made_kernels.h). An entry is free (0), being
 * filled (1) or guarded (2); only a guarded entry is read by the handler, and its base and length
 * are stored before it turns guarded. */
enum { guard_free = 0, guard_filling = 1, guard_active = 2 };

typedef struct {
    _Atomic int state;
    _Atomic uintptr_t base;
    _Atomic size_t length;
    _Atomic int faulted;
} guarded_mapping;

_Static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_POINTER_LOCK_FREE == 2,
               "the SIGBUS handler needs lock-free atomics");

static guarded_mapping guarded[MADE_GUARD_MAPPINGS];
/* The SIGBUS disposition before the guard's, for faults outside every guarded mapping. */
static struct sigaction previous_bus;
/* 0 not installed, 1 installing, 2 installed, 3 failed. */
static _Atomic int guard_installed;

static void guard_sigbus(int signal, siginfo_t *info, void *context) {
    (void)context;
    int saved_errno = errno;
    /* si_code > 0: a fault of this thread's access (not a signal another process sent). */
    if (info && info->si_code > 0) {
        uintptr_t address = (uintptr_t)info->si_addr;
        for (int i = 0; i < MADE_GUARD_MAPPINGS; i++) {
            if (atomic_load_explicit(&guarded[i].state, memory_order_acquire) != guard_active) continue;
            uintptr_t base = atomic_load_explicit(&guarded[i].base, memory_order_relaxed);
            size_t length = atomic_load_explicit(&guarded[i].length, memory_order_relaxed);
            if (address - base >= length) continue;
            void *zero = mmap((void *)base, length, PROT_READ | PROT_WRITE,
                              MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (zero == MAP_FAILED) break;
            atomic_store_explicit(&guarded[i].faulted, 1, memory_order_release);
            errno = saved_errno;
            return;
        }
    }
    /* Not a guarded mapping's: the earlier disposition takes this SIGBUS. A fault happens again
     * when the access is retried on return; a sent signal is raised again. */
    sigaction(SIGBUS, &previous_bus, NULL);
    if (!info || info->si_code <= 0) raise(signal);
    errno = saved_errno;
}

static int guard_install(void) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&guard_installed, &expected, 1)) {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = guard_sigbus;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
        sigemptyset(&action.sa_mask);
        /* The earlier disposition is read whole before the handler can run. */
        int ok = sigaction(SIGBUS, NULL, &previous_bus) == 0 && sigaction(SIGBUS, &action, NULL) == 0;
        atomic_store(&guard_installed, ok ? 2 : 3);
    }
    int state;
    while ((state = atomic_load(&guard_installed)) == 1) sched_yield();
    return state == 2;
}

int made_guard_register(void *base, size_t length) {
    if (!base || length == 0 || !guard_install()) return -1;
    for (int i = 0; i < MADE_GUARD_MAPPINGS; i++) {
        int expected = guard_free;
        if (!atomic_compare_exchange_strong(&guarded[i].state, &expected, guard_filling)) continue;
        atomic_store_explicit(&guarded[i].base, (uintptr_t)base, memory_order_relaxed);
        atomic_store_explicit(&guarded[i].length, length, memory_order_relaxed);
        atomic_store_explicit(&guarded[i].faulted, 0, memory_order_relaxed);
        atomic_store_explicit(&guarded[i].state, guard_active, memory_order_release);
        return i;
    }
    return -1;
}

int made_guard_faulted(int handle) {
    if (handle < 0 || handle >= MADE_GUARD_MAPPINGS) return 0;
    return atomic_load_explicit(&guarded[handle].faulted, memory_order_acquire);
}

void made_guard_unregister(int handle) {
    if (handle < 0 || handle >= MADE_GUARD_MAPPINGS) return;
    int expected = guard_active;
    atomic_compare_exchange_strong(&guarded[handle].state, &expected, guard_free);
}

int made_allocate_in_place(int fd, int64_t offset, int64_t length) {
    int status;
    do status = fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
    while (status != 0 && errno == EINTR);
    return status == 0 ? 0 : errno;
}
