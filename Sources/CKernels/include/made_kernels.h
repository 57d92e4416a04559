#ifndef MADE_KERNELS_H
#define MADE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Elementwise kernels of MADE's training step, in float32.
 *
 * Plain C loops the compiler vectorizes. Built with -ffp-contract=off and without fast-math, so
 * each result is the same sequence of IEEE-754 operations whatever the vector width: the bits do
 * not depend on the machine's instruction set. */

typedef struct {
    float scale, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, inverse_root_correction2, epsilon;
} made_adam_constants;

/* One Adam step in place: g' = scale g + decay p; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
 * p -= step_size m / (sqrt(v) inverse_root_correction2 + epsilon). */
void made_adam_f32(size_t n, float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                   made_adam_constants c);

/* made_adam_f32 on a rows x cols weight matrix in the sparse kernel's compute order, its gradient g
 * masked on the way (+0 where i >= active[j], as the gradient in layout order holds it); then, when
 * compute is not NULL, the updated weights copied into compute masked, inside the bands (band k is
 * bands[3k] <= j < bands[3k + 1] for i < bands[3k + 2]): what gathering them would write. */
void made_adam_masked_f32(size_t rows, size_t cols, float *restrict p, const float *restrict g, float *restrict m,
                          float *restrict v, const int *restrict active, const int *restrict bands, size_t band_count,
                          float *restrict compute, made_adam_constants c);

/* made_adam_masked_f32 with the gradient used as it is, unmasked (a sum over several masks), the updated
 * weights copied into compute masked by active inside the bands. */
void made_adam_copy_f32(size_t rows, size_t cols, float *restrict p, const float *restrict g, float *restrict m,
                        float *restrict v, const int *restrict active, const int *restrict bands, size_t band_count,
                        float *restrict compute, made_adam_constants c);

/* made_adam_copy_f32, the updated weights also written into a further mask's compute order: held row i is row
 * row_to[i] of other, read through col_from, inside the further mask's bands, +0 where row_to[i] >=
 * other_active[j] (made_gather_staircase_f32's form). The same bits as the two calls. */
void made_adam_copy_gather_f32(size_t rows, size_t cols, float *restrict p, const float *restrict g,
                               float *restrict m, float *restrict v, const int *restrict active,
                               const int *restrict bands, size_t band_count, float *restrict compute,
                               made_adam_constants c, float *restrict other, const int *restrict row_to,
                               const int *restrict col_from, const int *restrict other_active,
                               const int *restrict other_bands, size_t other_band_count);

/* dst[i * cols + j] = src[row_from[i] * cols + col_from[j]] for every entry (rows and columns permuted out
 * of place); src and dst never overlap. */
void made_gather_matrix_f32(size_t rows, size_t cols, const float *restrict src, const int *restrict row_from,
                            const int *restrict col_from, float *restrict dst);

/* out = a + b with b's rows and columns permuted on the way: out[i * cols + j] = a[i * cols + j] +
 * b[row_from[i] * cols + col_from[j]]; out may be a, never b. Returns whether every sum is finite. */
int made_add_gather_matrix_f32(size_t rows, size_t cols, const float *a, const float *restrict b,
                               const int *restrict row_from, const int *restrict col_from, float *out);

/* A matrix's rows and columns permuted in place, a[i * cols + j] <- a[row_from[i] * cols + col_from[j]],
 * with cols floats of scratch and rows bytes of flags; each row is moved once. */
void made_permute_matrix_inplace_f32(size_t rows, size_t cols, float *restrict a, const int *restrict row_from,
                                     const int *restrict col_from, float *restrict scratch,
                                     unsigned char *restrict done);

/* Stochastic binarization in place: pixel i becomes 1 when k_i * 255 < pixel_i * 2^24, k_i the top 24
 * bits of the i-th output of the xoshiro256** generator whose four state words are `state` (advanced
 * past the n outputs): RandomStream's next() >> 40, as `UInt64(unitFloat() * 0x1p24)` gives it. */
void made_binarize_stochastic_u8(size_t n, unsigned char *restrict pixels, uint64_t *restrict state);

/* Bernoulli negative log-likelihood of n binary targets x under logits z, and its gradient.
 *
 * grad[j] = sigmoid(z[j]) - x[j]; returns sum_j softplus(x[j] ? -z[j] : z[j]), summed in 8 fixed
 * lanes then pairwise. exp and log1p are polynomial approximations (Cephes single precision),
 * within 2 ulp of the exact function on the ranges used (terms below 1e-37, in the subnormal
 * range, flush to 0); logits of any size, including infinities, give exact limits. grad may be NULL to compute the loss alone. */
float made_bernoulli_f32(size_t n, const float *restrict x, const float *restrict z, float *restrict grad);

/* e^x for x <= 0, as used by the Bernoulli kernel (exposed for tests). */
float made_exp_nonpositive_f32(float x);

/* log(1 + e) for e in [0, 1], as used by the Bernoulli kernel (exposed for tests). */
float made_log1p_unit_f32(float e);

/* out[i] = mask[i] ? w[i] : +0. */
void made_mask_select_f32(size_t n, const float *restrict w, const unsigned char *restrict mask, float *restrict out);

/* a[i] = mask[i] ? a[i] : +0, in place. */
void made_mask_inplace_f32(size_t n, float *restrict a, const unsigned char *restrict mask);

/* Each of `rows` rows of h (row-major, `cols` wide): h = max(h + b, 0). */
void made_bias_relu_f32(size_t rows, size_t cols, float *restrict h, const float *restrict b);

/* Each of `rows` rows of h: h = h + b. */
void made_bias_add_f32(size_t rows, size_t cols, float *restrict h, const float *restrict b);

/* d[i] = h[i] > 0 ? d[i] : +0: the ReLU derivative applied to a back-propagated delta. */
void made_relu_backward_f32(size_t n, float *restrict d, const float *restrict h);

/* out[j] = sum over rows r, in row order, of a[r * cols + j]. rows >= 1. */
void made_column_sums_f32(size_t rows, size_t cols, const float *restrict a, float *restrict out);

/* dst[k] = src[idx[k]] for k < n. */
void made_gather_f32(size_t n, const int *restrict idx, const float *restrict src, float *restrict dst);

/* dst[idx[k]] = src[k] for k < n; returns 1 when every src[k] is finite, 0 otherwise (all are written). */
int made_scatter_f32(size_t n, const int *restrict idx, const float *restrict src, float *restrict dst);

/* dst[k] = src[k] for k < n; returns 1 when every value is finite, 0 otherwise. */
int made_copy_finite_f32(size_t n, const float *restrict src, float *restrict dst);

/* out[k] = a[k] + b[k] for k < n (out may be a); returns 1 when every sum is finite, 0 otherwise. */
int made_add_f32(size_t n, const float *a, const float *b, float *out);

/* The sparse kernel (see BlockPartition.swift). A matrix in compute order holds at compute row i,
 * column j the layout entry (row_order[i], col_order[j]); its mask keeps exactly the entries with
 * i < active[j]. */

/* A matrix's bands are band_count triples (start, end, rows): compute columns start..<end, rows 0..<rows.
 *
 * dst (rows x cols, compute order) = src (rows x cols, layout order) inside the bands: where the mask keeps
 * the entry, +0 elsewhere. Entries outside the bands are not written (no kernel reads them). */
void made_gather_staircase_f32(size_t rows, size_t cols, const float *restrict src, const int *restrict row_order,
                               const int *restrict col_order, const int *restrict active, const int *restrict bands,
                               size_t band_count, float *restrict dst);

/* The inverse, in place: a (rows x cols) holds a matrix in compute order (entries outside the mask may hold
 * anything) and leaves in layout order, +0 where the mask drops the entry. Layout row r takes compute row
 * row_position[r]; layout column c is compute column col_position[c], kept in the compute rows below
 * active_by_col[c]. The rows move along the permutation's cycles. scratch holds cols floats, done `rows`
 * bytes. */
void made_unpermute_staircase_f32(size_t rows, size_t cols, float *restrict a, const int *restrict row_position,
                                  const int *restrict col_position, const int *restrict active_by_col,
                                  float *restrict scratch, unsigned char *restrict done);

/* +0 at the entries of a rows x cols matrix in compute order that the mask drops inside the bands
 * (i >= active[j] for i < the band's rows: a prefix of the band in each row, active being sorted
 * inside a band), and with outside != 0 at every entry of a band's columns below its rows. */
void made_mask_staircase_f32(size_t rows, size_t cols, float *restrict a, const int *restrict active,
                             const int *restrict bands,
                             size_t band_count, int outside);

/* Copies the 0/1 byte rows `rows[0..<n]` (each d long) into out in compute order (out[r, p] = row[order[p]])
 * and lists each row's ones: row r's are row_index[row_start[r] ..< row_start[r + 1]], ascending. Returns
 * the number of ones. row_index needs room for n * d entries. */
int made_load_binary_rows_f32(size_t n, size_t d, const unsigned char *restrict bytes, const int *restrict rows,
                              const int *restrict order, float *restrict out, int *restrict row_start, int *restrict row_index);

/* out[r, j] (= or +=, with accumulate) sum over the selected rows i of input row r, in ascending order, of
 * w[i, j]: the product of a 0/1 matrix with w. Row r selects row_index[row_start[r] ..< row_start[r + 1]],
 * ascending. Each band's columns go in blocks of 32; a block stops at the first selected row at or beyond
 * the largest active[j] of the block (the rows past it are masked out there). */
void made_binary_rows_f32(size_t n, size_t cols, const float *restrict w, const int *restrict active,
                          const int *restrict bands, size_t band_count,
                          const int *restrict row_start, const int *restrict row_index,
                          float *restrict out, size_t ldo, int accumulate);

/* dst[i, j] = sum over the input rows r that select i, in ascending order, of delta[r, j]: the weight
 * gradient x^T delta of a 0/1 input x. input_rows[input_start[i] ..< input_start[i + 1]] are the rows
 * selecting i. Per block of 32 columns of a band only the rows below the block's largest active[j] are written. */
void made_binary_weight_gradient_f32(size_t cols, const int *restrict active, const int *restrict bands, size_t band_count,
                                     const int *restrict input_start, const int *restrict input_rows,
                                     const float *restrict delta, size_t ldd, float *restrict dst);

/* Products over a staircase in compute order, float32, for the sparse kernel's bands. Each band's
 * columns go in tiles of 16 (the last one of a band narrower); a tile's depth is the largest
 * active[j] among its columns, and w (rows x cols) is read only inside the bands. Every output
 * element is one sum that starts at +0 and adds fmaf terms in ascending order of the summed index,
 * then is stored (or added to the output): the same bits with AVX2 and FMA or without. Each takes
 * made_staircase_scratch_floats(n, rows, cols) floats of scratch.
 *
 * c (n x cols) = (c +, with accumulate) a (n x rows) w: c[r, j] = sum over k below j's tile's depth
 * of a[r, k] w[k, j]. */
void made_staircase_product_f32(size_t n, size_t rows, size_t cols, const float *a, const float *w,
                                const int *active, const int *bands, size_t band_count, float *c, int accumulate,
                                float *scratch);

/* dw (rows x cols) = a^T delta inside the staircase: for each tile, dw[i, j] = sum over the data rows r
 * of a[r, i] delta[r, j] for i below the tile's depth, +0 from there to the band's rows; entries
 * outside the bands are not written. a is n x rows, delta n x cols. */
void made_staircase_weight_gradient_f32(size_t n, size_t rows, size_t cols, const float *a, const float *delta,
                                        const int *active, const int *bands, size_t band_count, float *dw,
                                        float *scratch);

/* da (n x rows) = (da +, with accumulate) delta w^T: da[r, i] sums, over the tiles in column order whose
 * depth is beyond 16 * (i / 16) and their columns j in order, delta[r, j] times w[i, j] below the tile's
 * depth and +0 from there. tiles holds 3 * cols ints (scratch). */
void made_staircase_input_gradient_f32(size_t n, size_t rows, size_t cols, const float *delta, const float *w,
                                       const int *active, const int *bands, size_t band_count, float *da,
                                       int accumulate, float *scratch, int *tiles);

/* The scratch the staircase products take for n data rows and a rows x cols matrix: any of the three
 * (made_staircase_scratch_floats), the forward product alone, or the two gradients alone. */
size_t made_staircase_scratch_floats(size_t n, size_t rows, size_t cols);
size_t made_staircase_product_scratch_floats(size_t n, size_t rows);
size_t made_staircase_gradient_scratch_floats(size_t n, size_t rows, size_t cols);

/* With generic != 0 the staircase products take their portable path (one element at a time) even
 * where AVX2 and FMA are there: for tests, which check that both give the same bits. */
void made_staircase_force_generic(int generic);

/* A guard over shared-memory mappings whose file another process may shrink.
 *
 * Touching a page of a MAP_SHARED mapping past the end of its file raises SIGBUS, and no check
 * before the access can close the race with a `truncate` in another process. A mapping registered
 * here is covered by a SIGBUS handler (installed once, on the first registration; the disposition
 * it replaces is kept): a fault inside it maps anonymous zero pages over the whole mapping
 * (MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, the same address and length), sets the mapping's
 * faulted flag and returns, so the access resumes on memory that no longer belongs to the file.
 * Any other SIGBUS gets the disposition there was before: the faulting access runs again under it
 * (a signal sent with kill is raised again). The handler does only atomic loads and stores and
 * one mmap: async-signal-safe, lock-free.
 *
 * After a fault the mapping's contents are meaningless: whoever computed on or wrote into it must
 * throw the work away. Unregister before unmapping. At most MADE_GUARD_MAPPINGS mappings at once. */
#define MADE_GUARD_MAPPINGS 256

/* Registers [base, base + length); returns a handle >= 0, or -1 when the handler cannot be
 * installed, the arguments are empty or the table is full. */
int made_guard_register(void *base, size_t length);

/* 1 once a SIGBUS inside the mapping of `handle` replaced it with zero pages, else 0. */
int made_guard_faulted(int handle);

/* Ends the guard of `handle`; the mapping may be unmapped afterwards. */
void made_guard_unregister(int handle);

/* Allocates the file's bytes offset ..< offset + length without changing its size (fallocate with
 * FALLOC_FL_KEEP_SIZE): bytes past the file's end stay past it, so a file someone shrank is not
 * grown back under the mappings that hold it. Returns 0, or the errno (ENOSPC when full). */
int made_allocate_in_place(int fd, int64_t offset, int64_t length);

/* SHA-256 with the x86 SHA extensions: whether this CPU has them (and SSSE3, SSE4.1), and the compression of
 * `blocks` 64-byte blocks into state[0..<8] (a, b, ..., h), as FIPS 180-4 defines it. Call it only when
 * made_sha256_hardware() returned 1. */
int made_sha256_hardware(void);
void made_sha256_blocks(uint32_t state[8], const unsigned char *data, size_t blocks);

#endif
