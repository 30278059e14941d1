/* Matrix-matrix product for prompt chunks on AVX2 with x rounded to int16, for Q8, Q4 and Q2 weights:
 * Y = X W^T, i.e. Y[j][r] = W[r] . X[j]. Other weight types take the f32 panel GEMM (kernels_gemm_avx2.c).
 * The driver here (kernel_gemm_int16_run: x packing, the loops) also serves the AVX-512 level, whose panel
 * fill and tile (16 rows' words in one zmm, unpacked per step; vpdpwssd with VNNI) are in kernels_avx512.c.
 *
 * The math is the int16 row kernels' (kernels_impl.h): x is rounded per weight group to int16,
 * x_c ~= d_g xq_c with d_g = max_g |x| / 32767, and with w_c = q_c s_g + b_g
 *     W[r] . x = sum_g s_g d_g (sum_{c in g} q_c xq_c) + sum_g b_g xsum_g        (xsum_g from the f32 x)
 * The integer sums are exact in int32 (<= 128 * 255 * 32767 < 2^31 per group), so the error bound is
 * the row kernels'. Why: vpmaddwd does 16 multiply-adds per instruction where an FMA does 8, and the
 * codes need only a shift and a mask (no conversion to float, no q * s + b per weight). On Zen 3 the
 * integer multiplier issues about as many vpmaddwd per cycle as the FMA units issue FMAs.
 *
 *     for each block of GEMM16_NB x rows, each block of GEMM16_KC columns:
 *       x rows rounded to int16 per group, in pairs (Xp), with d_g and xsum_g per row and group
 *       for each block of 16 weight rows:
 *         P[s][i] = the codes of weight row rb + i at the two columns of step s, one int16 each
 *         for each tile of I16_NR x rows j, each group g:
 *           A[j][i] = sum_{s in g} vpmaddwd(P[s][i], Xp[j][s])               (int32, exact)
 *           F[j][i] += A[j][i] * (s_g[i] d_g[j]) + b_g[i] xsum_g[j]           (f32)
 *         Y[j][rb + i] (+)= F[j][i]
 *
 * Pairs: 8 rows' 32-bit words are transposed into one vector per word (lane i = row i), after which
 * (v >> bits * e) & (m | m << 16) holds, in each lane, the codes e and e + V/2 of that word (V = 32 / bits
 * codes per word) as two int16: step s = word * V/2 + e. So x is packed in the same pairs:
 * Xp[j][s] = xq(column V * word + e) | xq(column V * word + e + V/2) << 16. A word never straddles a
 * group (groups are >= 32 values), so the steps of group g are the contiguous range [g, g + 1) * group/2. */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include "kernels_avx2_inline.h"
#include "kernels_impl.h"
#include "util.h"

#define AI static inline __attribute__((always_inline))
#define I16_NR 4 /* x rows per AVX2 micro tile: 8 int32 accumulators (6 measured no faster) */
#define FOR_J _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++)

int kernel_gemm_int16_rounds_x(dtype t) { return t == DTYPE_Q8 || t == DTYPE_Q4 || t == DTYPE_Q2; }

/* acc + vpmaddwd(w, x), added in place: written out because GCC 12 otherwise adds into a new register
 * and copies it back, and with 8 accumulators runs out of registers (one lives on the stack). */
AI __m256i madd_acc(__m256i acc, __m256i w, __m256i x) {
    __m256i t;
    __asm__("vpmaddwd %2, %3, %1\n\tvpaddd %1, %0, %0" : "+x"(acc), "=&x"(t) : "x"(w), "x"(x));
    return acc;
}

/* X rows [j0, j1), columns [kb, kb + kc): per row j and group g, d (xd[(j - j0) * GEMM16_MAXG + g]) and the
 * f32 sum (xs, same index), and the int16 values in pairs, Xp[(j - j0) * GEMM16_STEPS + s] (see the top). */
static void pack_x(int32_t *Xp, float *xd, float *xs, const float *X, size_t ldx, int j0, int j1, int kb, int kc,
                   int group, int bits) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m128i lo16 = _mm_set1_epi32(0xffff);
    /* Q8: codes e and e + 2 of each word pair up; lanes (0 1 4 5 | 2 3 6 7) put them in the two halves */
    const __m256i q8perm = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    for (int j = j0; j < j1; j++) {
        const float *x = X + (size_t)j * ldx + kb;
        int32_t *out = Xp + (size_t)(j - j0) * GEMM16_STEPS;
        for (int g = 0; g < kc / group; g++) {
            const float *xg = x + g * group;
            __m256 m = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
            for (int c = 0; c < group; c += 8) {
                __m256 v = _mm256_loadu_ps(xg + c);
                m = _mm256_max_ps(m, _mm256_and_ps(v, absmask));
                sum = _mm256_add_ps(sum, v);
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
            s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
            float inv1;
            int16_step(_mm_cvtss_f32(m4), &xd[(j - j0) * GEMM16_MAXG + g], &inv1);
            xs[(j - j0) * GEMM16_MAXG + g] = _mm_cvtss_f32(s4);
            const __m256 inv = _mm256_set1_ps(inv1);
            int32_t *o = out + g * group / 2;
            if (bits == 2) /* 16 codes per word: pairs (e, e + 8) */
                for (int c = 0; c < group; c += 16) {
                    __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + c), inv));
                    __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + c + 8), inv));
                    __m256i p = _mm256_or_si256(_mm256_and_si256(a, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(b, 16));
                    _mm256_storeu_si256((__m256i *)(o + c / 2), p);
                }
            else /* Q4: 8 codes per word, pairs (e, e + 4); Q8: 4 codes per word, pairs (e, e + 2) */
                for (int c = 0; c < group; c += 8) {
                    __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + c), inv));
                    if (bits == 8) a = _mm256_permutevar8x32_epi32(a, q8perm);
                    __m128i p = _mm_or_si128(_mm_and_si128(_mm256_castsi256_si128(a), lo16),
                                             _mm_slli_epi32(_mm256_extracti128_si256(a, 1), 16));
                    _mm_storeu_si128((__m128i *)(o + c / 2), p);
                }
        }
    }
}

/* The scales and biases of weight rows rb .. rb + nr - 1 (the rest zero) for groups g0 .. g0 + ng - 1
 * as f32, sc[g * 16 + i], 8 groups at a time. Row i's bf16 scales of an even number of groups are whole
 * dwords; 8 rows' 4 dwords of scales and 4 of biases, transposed, give dword k of each row in one vector:
 * its low half is group 2k and its high half group 2k + 1. An odd count (a last block of one group of 64
 * or 128) takes the scalar path, as nothing past the row's groups may be read. */
static void panel_scales8(float *sc, float *bi, const qmat *w, int rb, int nr, int gpr, int g0, int ng) {
    if (ng % 2) {
        for (int g = 0; g < ng; g++)
            for (int i = 0; i < 16; i++) {
                size_t at = (size_t)(rb + i) * gpr + g0 + g;
                sc[g * 16 + i] = i < nr ? bf16_to_f32(w->scales[at]) : 0.0f;
                bi[g * 16 + i] = i < nr ? bf16_to_f32(w->biases[at]) : 0.0f;
            }
        return;
    }
    const __m128i dm = _mm_cmpgt_epi32(_mm_set1_epi32(ng / 2), _mm_setr_epi32(0, 1, 2, 3));
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    for (int half = 0; half < 2; half++) {
        __m256i v[8];
        for (int i = 0; i < 8; i++) {
            int r = half * 8 + i;
            size_t at = (size_t)(rb + r) * gpr + g0;
            __m128i a = r < nr ? _mm_maskload_epi32((const int *)(w->scales + at), dm) : _mm_setzero_si128();
            __m128i b = r < nr ? _mm_maskload_epi32((const int *)(w->biases + at), dm) : _mm_setzero_si128();
            v[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
        }
        transpose8_si(v); /* v[k]: scale dword k of the 8 rows; v[4 + k]: bias dword k */
        for (int k = 0; k < ng / 2; k++) {
            _mm256_store_si256((__m256i *)(sc + 2 * k * 16 + half * 8), _mm256_slli_epi32(v[k], 16));
            _mm256_store_si256((__m256i *)(sc + (2 * k + 1) * 16 + half * 8), _mm256_and_si256(v[k], hi));
            _mm256_store_si256((__m256i *)(bi + 2 * k * 16 + half * 8), _mm256_slli_epi32(v[4 + k], 16));
            _mm256_store_si256((__m256i *)(bi + (2 * k + 1) * 16 + half * 8), _mm256_and_si256(v[4 + k], hi));
        }
    }
}

void kernel_gemm16_panel_scales(float *sc, float *bi, const qmat *w, int rb, int nr, int kb, int kc) {
    const int gpr = w->cols / w->group, g0 = kb / w->group, ng = kc / w->group;
    for (int h = 0; h < ng; h += 8)
        panel_scales8(sc + h * 16, bi + h * 16, w, rb, nr, gpr, g0 + h, ng - h < 8 ? ng - h : 8);
}

/* The panel of weight rows rb .. rb + nr - 1 (nr <= 16; the rest zero), columns [kb, kb + kc): the code
 * pairs, P[s * 16 + i], and the rows' scales and biases per group, sc[g * 16 + i] (BITS: 8, 4 or 2). */
AI void panel_bits(const int BITS, int32_t *P, float *sc, float *bi, const qmat *w, int rb, int nr, int kb,
                   int kc) {
    const int V = 32 / BITS, H = V / 2;
    const int wpr = w->cols / V, nw = kc / V;
    const __m256i mask = _mm256_set1_epi32(((1 << BITS) - 1) * 0x10001);
    for (int half = 0; half < 2; half++) {
        int hr = nr - half * 8;
        const int32_t *row[8];
        for (int i = 0; i < 8; i++)
            row[i] = i < hr ? (const int32_t *)w->data + (size_t)(rb + half * 8 + i) * wpr + kb / V : NULL;
        for (int m0 = 0; m0 < nw; m0 += 8) {
            int left = nw - m0 < 8 ? nw - m0 : 8; /* Q4 and Q2 blocks can end on 4 or 2 words */
            __m256i lm = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            __m256i v[8];
            for (int i = 0; i < 8; i++)
                v[i] = row[i] ? (left == 8 ? _mm256_loadu_si256((const __m256i *)(row[i] + m0))
                                           : _mm256_maskload_epi32((const int *)(row[i] + m0), lm))
                              : _mm256_setzero_si256();
            transpose8_si(v);
            for (int m = 0; m < left; m++) {
                int32_t *out = P + (size_t)(m0 + m) * H * 16 + half * 8;
#pragma GCC unroll 8
                for (int e = 0; e < H; e++)
                    _mm256_store_si256((__m256i *)(out + e * 16), _mm256_and_si256(_mm256_srli_epi32(v[m], BITS * e), mask));
            }
        }
    }
    kernel_gemm16_panel_scales(sc, bi, w, rb, nr, kb, kc);
}

static void panel_fill(int32_t *P, float *sc, float *bi, const qmat *w, int rb, int nr, int kb, int kc) {
    switch (dtype_bits(w->type)) {
    case 8: panel_bits(8, P, sc, bi, w, rb, nr, kb, kc); break;
    case 4: panel_bits(4, P, sc, bi, w, rb, nr, kb, kc); break;
    default: panel_bits(2, P, sc, bi, w, rb, nr, kb, kc); break;
    }
}

/* Y[j][0 .. nr) (+ unless first)= the tile's NR x rows (Xp, xd, xs at row 0, rows GEMM16_STEPS and GEMM16_MAXG
 * apart) times the panel, over ng groups of spg steps. */
AI void micro(const int NR, const int32_t *P, const int32_t *Xp, const float *xd, const float *xs, const float *sc,
              const float *bi, int ng, int spg, float *Y, size_t ldy, int nr, int first) {
    _Alignas(32) float F[I16_NR * 16];
    FOR_J {
        _mm256_store_ps(F + j * 16, _mm256_setzero_ps());
        _mm256_store_ps(F + j * 16 + 8, _mm256_setzero_ps());
    }
    if (!first) /* the Y rows this tile adds to: in L3 or beyond for wide matrices, needed at the end */
        FOR_J {
            _mm_prefetch((const char *)(Y + (size_t)j * ldy), _MM_HINT_T0);
            _mm_prefetch((const char *)(Y + (size_t)j * ldy + 15), _MM_HINT_T0);
        }
    for (int g = 0; g < ng; g++) {
        __m256i a0[I16_NR], a1[I16_NR];
        FOR_J a0[j] = a1[j] = _mm256_setzero_si256();
        const int32_t *p = P + (size_t)g * spg * 16, *x = Xp + (size_t)g * spg;
        for (int s = 0; s < spg; s++) {
            __m256i w0 = _mm256_load_si256((const __m256i *)(p + s * 16));
            __m256i w1 = _mm256_load_si256((const __m256i *)(p + s * 16 + 8));
            FOR_J {
                __m256i xb = _mm256_set1_epi32(x[(size_t)j * GEMM16_STEPS + s]);
                a0[j] = madd_acc(a0[j], w0, xb);
                a1[j] = madd_acc(a1[j], w1, xb);
            }
        }
        __m256 s0 = _mm256_load_ps(sc + g * 16), s1 = _mm256_load_ps(sc + g * 16 + 8);
        __m256 b0 = _mm256_load_ps(bi + g * 16), b1 = _mm256_load_ps(bi + g * 16 + 8);
        FOR_J {
            __m256 d = _mm256_set1_ps(xd[j * GEMM16_MAXG + g]), t = _mm256_set1_ps(xs[j * GEMM16_MAXG + g]);
            __m256 f0 = _mm256_load_ps(F + j * 16), f1 = _mm256_load_ps(F + j * 16 + 8);
            f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0[j]), _mm256_mul_ps(s0, d), _mm256_fmadd_ps(b0, t, f0));
            f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1[j]), _mm256_mul_ps(s1, d), _mm256_fmadd_ps(b1, t, f1));
            _mm256_store_ps(F + j * 16, f0);
            _mm256_store_ps(F + j * 16 + 8, f1);
        }
    }
    FOR_J {
        float *y = Y + (size_t)j * ldy;
        if (nr == 16) {
            __m256 f0 = _mm256_load_ps(F + j * 16), f1 = _mm256_load_ps(F + j * 16 + 8);
            if (!first) {
                f0 = _mm256_add_ps(f0, _mm256_loadu_ps(y));
                f1 = _mm256_add_ps(f1, _mm256_loadu_ps(y + 8));
            }
            _mm256_storeu_ps(y, f0);
            _mm256_storeu_ps(y + 8, f1);
        } else
            for (int i = 0; i < nr; i++) y[i] = first ? F[j * 16 + i] : y[i] + F[j * 16 + i];
    }
}

static void tile_avx2(int rows, const int32_t *P, const int32_t *Xp, const float *xd, const float *xs,
                      const float *sc, const float *bi, int ng, int spg, float *Y, size_t ldy, int nr, int first) {
    switch (rows) {
    case 1: micro(1, P, Xp, xd, xs, sc, bi, ng, spg, Y, ldy, nr, first); break;
    case 2: micro(2, P, Xp, xd, xs, sc, bi, ng, spg, Y, ldy, nr, first); break;
    case 3: micro(3, P, Xp, xd, xs, sc, bi, ng, spg, Y, ldy, nr, first); break;
    default: micro(4, P, Xp, xd, xs, sc, bi, ng, spg, Y, ldy, nr, first); break;
    }
}

void kernel_gemm_int16_avx2(float *Y, const qmat *w, const float *X, int n, int r0, int r1) {
    if (!kernel_gemm_int16_rounds_x(w->type)) {
        kernel_gemm_avx2(Y, w, X, n, r0, r1);
        return;
    }
    kernel_gemm_int16_run(Y, w, X, n, r0, r1, I16_NR, tile_avx2, panel_fill);
}

void kernel_gemm_int16_run(float *Y, const qmat *w, const float *X, int n, int r0, int r1, int nrt,
                           kernel_gemm16_tile tile, kernel_gemm16_fill fill) {
    _Alignas(64) int32_t P[GEMM16_STEPS * 16];
    _Alignas(64) int32_t Xp[GEMM16_NB * GEMM16_STEPS];
    _Alignas(64) float xd[GEMM16_NB * GEMM16_MAXG], xs[GEMM16_NB * GEMM16_MAXG], sc[GEMM16_MAXG * 16], bi[GEMM16_MAXG * 16];
    const int group = w->group, bits = dtype_bits(w->type);
    const size_t ldx = (size_t)w->cols, ldy = (size_t)w->rows;
    for (int jb = 0; jb < n; jb += GEMM16_NB) {
        int je = n - jb < GEMM16_NB ? n : jb + GEMM16_NB;
        for (int kb = 0; kb < w->cols; kb += GEMM16_KC) {
            int kc = w->cols - kb < GEMM16_KC ? w->cols - kb : GEMM16_KC; /* a multiple of group */
            pack_x(Xp, xd, xs, X, ldx, jb, je, kb, kc, group, bits);
            for (int rb = r0; rb < r1; rb += 16) {
                int nr = r1 - rb < 16 ? r1 - rb : 16;
                kernel_prefetch_panel_ahead(w, rb, r0, r1, kb, GEMM16_KC);
                fill(P, sc, bi, w, rb, nr, kb, kc);
                for (int j = jb; j < je; j += nrt)
                    tile(je - j < nrt ? je - j : nrt, P, Xp + (size_t)(j - jb) * GEMM16_STEPS,
                         xd + (j - jb) * GEMM16_MAXG, xs + (j - jb) * GEMM16_MAXG, sc, bi, kc / group, group / 2,
                         Y + (size_t)j * ldy + rb, ldy, nr, kb == 0);
            }
        }
    }
}

/* int16 multiply-adds per second this thread's vpmaddwd sustains with the sums the GEMM keeps: 10
 * independent chains on registers (a = a + vpmaddwd(a, x): 16 multiply-adds per link, about 5 cycles of
 * latency, so 10 chains keep the multiplier busy), no memory traffic. The integers wrap; only the rate
 * matters. */
/* 4096 rounds of 10 independent chains at ctx (__m256i[10]; see kernel_rounds_per_second). */
static __attribute__((noinline)) void madd16_rounds(void *ctx) {
    __m256i *a = ctx;
    __m256i a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5], a6 = a[6], a7 = a[7], a8 = a[8], a9 = a[9];
    const __m256i xv = _mm256_set1_epi16(3);
#define LINK(a) a = madd_acc(a, a, xv)
    for (int r = 0; r < 4096; r++) {
        LINK(a0), LINK(a1), LINK(a2), LINK(a3), LINK(a4);
        LINK(a5), LINK(a6), LINK(a7), LINK(a8), LINK(a9);
    }
#undef LINK
    a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3, a[4] = a4, a[5] = a5, a[6] = a6, a[7] = a7, a[8] = a8, a[9] = a9;
}

double kernel_madd16_rate_avx2(double seconds) {
    __m256i a[10];
    for (int i = 0; i < 10; i++) a[i] = _mm256_set1_epi32(i + 1);
    return kernel_rounds_per_second(madd16_rounds, a, seconds) * 4096 * 10 * 16;
}

#else
typedef int kernels_gemm_int16_avx2_unused;
#endif
