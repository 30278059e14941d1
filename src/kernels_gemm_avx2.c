/* Matrix-matrix product for prompt chunks, Y = X W^T (AVX2 + FMA + F16C), any weight type.
 *
 * The matrix-vector kernels unpack every weight for each activation row they serve, so their cost per
 * multiply-add stays that of unpacking however many rows there are. Here each block of W is unpacked
 * once into an f32 panel that sits in L1 and then serves every activation row:
 *
 *     for each block of GEMM_NB activation rows, each block of GEMM_KC columns:
 *       for each block of 16 weight rows:
 *         P[k][i] = W[rb + i][kb + k]                  (the panel, transposed: 16 rows per k)
 *         for each tile of GEMM_NR activation rows j:   Y[j][rb..rb+15] += sum_k X[j][kb + k] * P[k][..]
 *
 * The micro-kernel keeps a 6 x 16 tile of Y in 12 registers and per k does 2 panel loads, 6 broadcasts
 * and 12 FMAs, so it runs at the FMA units' rate; unpacking costs about 5 instructions per 8 weights,
 * spread over all activation rows. Quantized rows are unpacked 8 rows at a time: one 32-bit word of each
 * row is transposed into one vector (8 x 8 word transpose), after which a shift and a mask give the
 * same value index of all 8 rows, i.e. one row of the panel. Float types go through an 8 x 8 float
 * transpose. Anything else (a partial block at the end of a row; Q3, which kernel_matmat_rows no longer
 * sends here: its row kernels are faster than this scalar unpacking) takes a scalar path.
 *
 * Rounding: a weight is formed as q * s + b in f32 (one rounding, as in the reference's terms), and
 * each output sums GEMM_KC products in one f32 accumulator before adding the block to Y, so the error
 * stays near that of the reference (tests/test_kernels.c checks the same bound as the other kernels). */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include "kernels_avx2_inline.h"
#include "kernels_impl.h"
#include "util.h"

#define AI static inline __attribute__((always_inline))
/* Loops over the tile's activation rows, unrolled so that the accumulators live in registers. */
#define FOR_J _Pragma("GCC unroll 6") for (int j = 0; j < NR; j++)
#define GEMM_NR 6   /* activation rows per micro tile: 12 accumulators */
#define PREFETCH_PANELS 2 /* how far ahead panels' weights are prefetched */

static const uint32_t zero_row[64]; /* stands in for rows past the end of the matrix */

/* Values per unpacking block of 8 words (quantized) or 8 values (float) per row. */
static int block_cols(dtype t) { return dtype_is_quant(t) ? 8 * 32 / dtype_bits(t) : 8; }

/* panel_fast for Q8, Q4, Q2 (BITS a compile-time constant). */
AI void panel_quant(const int BITS, float *P, const qmat *w, int rb, int nr, int kb, int k0, int k1) {
    const int VPW = 32 / BITS;
    const int wpr = w->cols / VPW, gpr = w->cols / w->group, gshift = __builtin_ctz((unsigned)w->group);
    const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
    const uint32_t *row[8];
    for (int i = 0; i < 8; i++) row[i] = i < nr ? (const uint32_t *)w->data + (size_t)(rb + i) * wpr : zero_row;
    /* scale and bias of the 8 rows for each group the columns [kb + k0, kb + k1) touch */
    int g0 = (kb + k0) >> gshift, ng = ((kb + k1 - 1) >> gshift) - g0 + 1;
    _Alignas(32) float sc[GEMM_KC / 32 * 8], bi[GEMM_KC / 32 * 8];
    for (int g = 0; g < ng; g++)
        for (int i = 0; i < 8; i++) {
            size_t at = (size_t)(rb + i) * gpr + g0 + g;
            sc[g * 8 + i] = i < nr ? bf16_to_f32(w->scales[at]) : 0.0f;
            bi[g * 8 + i] = i < nr ? bf16_to_f32(w->biases[at]) : 0.0f;
        }
    for (int k = k0; k < k1; k += 8 * VPW) {
        int word = (kb + k) / VPW;
        __m256 v[8];
        for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps((const float *)(row[i] + (i < nr ? word : 0)));
        transpose8(v);
#pragma GCC unroll 8
        for (int kw = 0; kw < 8; kw++) {
            int g = ((kb + k + kw * VPW) >> gshift) - g0; /* a word never straddles groups (group >= 32) */
            __m256 s = _mm256_load_ps(sc + g * 8), b = _mm256_load_ps(bi + g * 8);
            __m256i q = _mm256_castps_si256(v[kw]);
            float *out = P + (size_t)(k + kw * VPW) * GEMM_MR;
#pragma GCC unroll 16
            for (int e = 0; e < VPW; e++) {
                __m256 qf = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(q, e * BITS), mask));
                _mm256_store_ps(out + e * GEMM_MR, _mm256_fmadd_ps(qf, s, b));
            }
        }
    }
}

/* Panel rows [k0, k1) (columns kb + k) for 8 weight rows rb.. rb + 7 of which the first nr exist, at
 * P + half * 8, by 8 x 8 transposes. The type is Q8, Q4, Q2 or a float type; k0, k1 multiples of
 * block_cols, kb + k0 a multiple of it too. */
static void panel_fast(float *P, const qmat *w, int rb, int nr, int kb, int k0, int k1) {
    const dtype t = w->type;
    if (!dtype_is_quant(t)) {
        const int es = t == DTYPE_F32 ? 4 : 2;
        const char *row[8];
        for (int i = 0; i < 8; i++)
            row[i] = i < nr ? (const char *)w->data + ((size_t)(rb + i) * w->cols + kb) * es : (const char *)zero_row;
        for (int k = k0; k < k1; k += 8) {
            __m256 v[8];
            for (int i = 0; i < 8; i++) {
                const char *p = i < nr ? row[i] + (size_t)k * es : (const char *)zero_row;
                if (t == DTYPE_F32) v[i] = _mm256_loadu_ps((const float *)p);
                else {
                    __m128i h = _mm_loadu_si128((const __m128i *)p);
                    v[i] = t == DTYPE_F16 ? _mm256_cvtph_ps(h)
                                          : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
                }
            }
            transpose8(v);
            for (int c = 0; c < 8; c++) _mm256_store_ps(P + (size_t)(k + c) * GEMM_MR, v[c]);
        }
        return;
    }
    switch (dtype_bits(t)) {
    case 8: panel_quant(8, P, w, rb, nr, kb, k0, k1); break;
    case 4: panel_quant(4, P, w, rb, nr, kb, k0, k1); break;
    default: panel_quant(2, P, w, rb, nr, kb, k0, k1); break;
    }
}

/* The panel for weight rows rb.. rb + nr - 1 (nr <= 16; the rest zero) and columns [kb, kb + kc). */
static void panel_fill(float *P, const qmat *w, int rb, int nr, int kb, int kc) {
    const dtype t = w->type;
    int fast = t != DTYPE_Q3, bc = block_cols(t);
    int kf = fast && kb % bc == 0 ? kc / bc * bc : 0; /* columns [0, kf) by blocks */
    for (int half = 0; half < 2; half++) {
        int hr = nr - half * 8;
        if (kf) panel_fast(P + half * 8, w, rb + half * 8, hr < 0 ? 0 : hr, kb, 0, kf);
    }
    for (int k = kf; k < kc; k++) /* the scalar path: Q3, or a partial block */
        for (int i = 0; i < GEMM_MR; i++) P[(size_t)k * GEMM_MR + i] = i < nr ? kernel_weight(w, rb + i, kb + k) : 0.0f;
}

/* Y[j][0..15] (+)= sum_k X[k][j] * P[k][0..15] for j < NR (compile-time), X packed GEMM_NR values per k, Y
 * rows ldy apart, of which the first nr columns are stored. With fewer than 3 rows in the tile, KU partial sums over alternate k keep
 * enough FMAs in flight to hide their latency. */
AI void micro(const int NR, const float *P, int kc, const float *X, float *Y, size_t ldy, int nr, int first) {
    if (!first)
        FOR_J {
            _mm_prefetch((const char *)(Y + (size_t)j * ldy), _MM_HINT_T0);
            _mm_prefetch((const char *)(Y + (size_t)j * ldy + 15), _MM_HINT_T0);
        }
    const int KU = NR == 1 ? 4 : NR == 2 ? 3 : NR == 3 ? 2 : 1;
    __m256 a0[4][GEMM_NR], a1[4][GEMM_NR];
    for (int u = 0; u < KU; u++) FOR_J a0[u][j] = a1[u][j] = _mm256_setzero_ps();
    int k = 0;
    for (; k + KU <= kc; k += KU) {
#pragma GCC unroll 4
        for (int u = 0; u < KU; u++) {
            const float *p = P + (size_t)(k + u) * GEMM_MR;
            __m256 w0 = _mm256_load_ps(p), w1 = _mm256_load_ps(p + 8);
            FOR_J {
                __m256 x = _mm256_broadcast_ss(X + (size_t)(k + u) * GEMM_NR + j);
                a0[u][j] = _mm256_fmadd_ps(w0, x, a0[u][j]);
                a1[u][j] = _mm256_fmadd_ps(w1, x, a1[u][j]);
            }
        }
    }
    for (; k < kc; k++) {
        __m256 w0 = _mm256_load_ps(P + (size_t)k * GEMM_MR), w1 = _mm256_load_ps(P + (size_t)k * GEMM_MR + 8);
        FOR_J {
            __m256 x = _mm256_broadcast_ss(X + (size_t)k * GEMM_NR + j);
            a0[0][j] = _mm256_fmadd_ps(w0, x, a0[0][j]);
            a1[0][j] = _mm256_fmadd_ps(w1, x, a1[0][j]);
        }
    }
    for (int u = 1; u < KU; u++) FOR_J {
        a0[0][j] = _mm256_add_ps(a0[0][j], a0[u][j]);
        a1[0][j] = _mm256_add_ps(a1[0][j], a1[u][j]);
    }
    FOR_J {
        float *y = Y + (size_t)j * ldy;
        __m256 s0 = a0[0][j], s1 = a1[0][j];
        if (nr == GEMM_MR) {
            if (!first) {
                s0 = _mm256_add_ps(s0, _mm256_loadu_ps(y));
                s1 = _mm256_add_ps(s1, _mm256_loadu_ps(y + 8));
            }
            _mm256_storeu_ps(y, s0);
            _mm256_storeu_ps(y + 8, s1);
        } else {
            float t[GEMM_MR];
            _mm256_storeu_ps(t, s0);
            _mm256_storeu_ps(t + 8, s1);
            for (int i = 0; i < nr; i++) y[i] = first ? t[i] : y[i] + t[i];
        }
    }
}

/* Columns [kb, kb + kc) of X rows [j0, j1), packed for the micro-kernel: tile t (rows j0 + nrt t ..) at
 * Xp + t * kc * nrt, nrt values per k (rows past j1 zero). */
static void pack_x(float *Xp, const float *X, size_t ldx, int j0, int j1, int kb, int kc, int nrt) {
    for (int j = j0; j < j1; j += nrt) {
        float *out = Xp + (size_t)(j - j0) / nrt * kc * nrt;
        for (int jj = 0; jj < nrt; jj++) {
            const float *x = X + (size_t)(j + jj) * ldx + kb;
            if (j + jj < j1)
                for (int k = 0; k < kc; k++) out[(size_t)k * nrt + jj] = x[k];
            else
                for (int k = 0; k < kc; k++) out[(size_t)k * nrt + jj] = 0.0f;
        }
    }
}

void kernel_prefetch_panel(const qmat *w, int rb, int nr, int kb, int kc) {
    size_t row_bytes = (size_t)w->cols * dtype_bits(w->type) / 8, start = (size_t)kb * dtype_bits(w->type) / 8;
    size_t len = (size_t)kc * dtype_bits(w->type) / 8;
    for (int i = 0; i < nr; i++) {
        const char *p = (const char *)w->data + (size_t)(rb + i) * row_bytes + start;
        for (size_t o = 0; o < len; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
        if (dtype_is_quant(w->type)) { /* the row's scales and biases for these columns */
            size_t g = (size_t)(rb + i) * (w->cols / w->group) + kb / w->group;
            _mm_prefetch((const char *)(w->scales + g), _MM_HINT_T1);
            _mm_prefetch((const char *)(w->biases + g), _MM_HINT_T1);
        }
    }
}

void kernel_prefetch_panel_ahead(const qmat *w, int rb, int r0, int r1, int kb, int kcb) {
    /* the panel after next: one panel's work is shorter than a miss to memory */
    int pb = rb + PREFETCH_PANELS * GEMM_MR, pk = kb;
    if (pb >= r1) pb = r0 + (pb - r1), pk = kb + kcb;
    if (pb < r1 && pk < w->cols)
        kernel_prefetch_panel(w, pb, r1 - pb < GEMM_MR ? r1 - pb : GEMM_MR, pk, w->cols - pk < kcb ? w->cols - pk : kcb);
}

/* The AVX2 tile: micro() for the tile's rows (<= GEMM_NR). */
static void tile_avx2(int rows, const float *P, int kc, const float *X, float *Y, size_t ldy, int nr, int first) {
    switch (rows) {
    case 1: micro(1, P, kc, X, Y, ldy, nr, first); break;
    case 2: micro(2, P, kc, X, Y, ldy, nr, first); break;
    case 3: micro(3, P, kc, X, Y, ldy, nr, first); break;
    case 4: micro(4, P, kc, X, Y, ldy, nr, first); break;
    case 5: micro(5, P, kc, X, Y, ldy, nr, first); break;
    default: micro(6, P, kc, X, Y, ldy, nr, first); break;
    }
}

void kernel_gemm_avx2(float *Y, const qmat *w, const float *X, int n, int r0, int r1) {
    kernel_gemm_run(Y, w, X, n, r0, r1, GEMM_NR, tile_avx2);
}

void kernel_gemm_run(float *Y, const qmat *w, const float *X, int n, int r0, int r1, int nrt, kernel_gemm_tile tile) {
    _Alignas(64) float P[GEMM_KC * GEMM_MR];
    _Alignas(64) float Xp[GEMM_NB * GEMM_KC];
    const size_t ldx = (size_t)w->cols, ldy = (size_t)w->rows;
    for (int jb = 0; jb < n; jb += GEMM_NB) {
        int je = n - jb < GEMM_NB ? n : jb + GEMM_NB;
        for (int kb = 0; kb < w->cols; kb += GEMM_KC) {
            int kc = w->cols - kb < GEMM_KC ? w->cols - kb : GEMM_KC;
            pack_x(Xp, X, ldx, jb, je, kb, kc, nrt);
            for (int rb = r0; rb < r1; rb += GEMM_MR) {
                int nr = r1 - rb < GEMM_MR ? r1 - rb : GEMM_MR;
                kernel_prefetch_panel_ahead(w, rb, r0, r1, kb, GEMM_KC);
                panel_fill(P, w, rb, nr, kb, kc);
                for (int j = jb; j < je; j += nrt)
                    tile(je - j < nrt ? je - j : nrt, P, kc, Xp + (size_t)(j - jb) / nrt * kc * nrt,
                         Y + (size_t)j * ldy + rb, ldy, nr, kb == 0);
            }
        }
    }
}

KERNEL_FMA_RATE_FN(kernel_fma_rate_avx2, __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_cvtss_f32, 8)

#else
typedef int kernels_gemm_avx2_unused;
#endif
