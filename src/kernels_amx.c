/* Matrix-matrix product for prompt chunks on AMX (the tile unit of Sapphire Rapids and later Intel
 * cores), for Q8, Q4 and Q2 weights: Y = X W^T, i.e. Y[j][r] = W[r] . X[j]. Other weight types take the
 * AVX-512 panel GEMM.
 *
 * The math is the int16 row kernels' (kernels_impl.h): x is rounded per weight group to int16,
 * x_c ~= d_g xq_c with d_g = max_g |x| / 32767, and with w_c = q_c s_g + b_g
 *     W[r] . x = sum_g s_g d_g (sum_{c in g} q_c xq_c) + sum_g b_g xsum_g        (xsum_g from the f32 x)
 * AMX multiplies bytes and sums them in int32 exactly. The codes q are unsigned bytes (Q8 up to 255);
 * xq = 256 hi + lo with hi a signed byte and lo an unsigned one, so
 *     sum q xq = 256 sum q hi + sum q lo
 * is two tile products, TDPBSUD (signed x unsigned) for the hi bytes and TDPBUUD for the lo bytes. The
 * result is the same integer as the row kernels' vpmaddwd sums, so the error bound is theirs.
 *
 * Tiles (C = A B): C[j][r] int32 for 16 x rows and 16 weight rows; A = 16 x rows of K bytes (K = 64,
 * or 32 for group 32); B = K/4 rows of 16 weight rows x 4 bytes. B comes straight from the packed
 * words: word m of 16 weight rows, transposed into one vector (16 x 16 dword transpose), then shifted
 * by BITS*e and masked, is B row V*m + e (V = 8 / BITS codes per byte): byte i of each dword is code
 * W*m + V*i + e of that weight row (W = 32 / BITS codes per word). So the columns are summed in a
 * permuted order, and x is packed into A in the same order: a shuffle within each 16 bytes
 * (Q4: 0 2 4 6 1 3 5 7, Q2: 0 4 8 12 1 5 9 13 ..., Q8: none).
 *
 * Per group, the two C tiles are stored and scaled into f32 accumulators, one vector of 16 weight rows
 * per x row, which go to Y once per block of AMX_KC columns. That scaling (about 6 vector operations per
 * 16 outputs per group) costs about as much as the tile products themselves; it is what the per-group
 * scales of these formats cost on this unit. */
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,amx-tile,amx-int8")
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernels_avx512_inline.h"
#include "kernels_impl.h"
#include "util.h"

#ifndef AMX_NB
#define AMX_NB 128 /* x rows per pass: 8 tiles (measured: 64 was 5-20% slower at 128 rows) */
#endif
/* Columns per pass, a multiple of every group and of 256. Wider passes mean fewer tile_product calls
 * (each starts with its pipeline empty) and fewer read-backs of Y; measured on 512-token prompts of the
 * 35B geometry at q4 (BENCHMARKS.md, series 12): 1024 took 13-17% less time per prompt token than 256. */
#ifndef AMX_KC
#define AMX_KC 1024
#endif
#define AMX_MAXG (AMX_KC / 32)
/* Tile registers (the intrinsics take them as literals). */
#define T_CLO 0 /* C of the lo bytes */
#define T_CHI 1 /* C of the hi bytes */
#define T_ALO 2
#define T_AHI 3
#define T_B 4
#define T_CLO2 5 /* the second pair of C tiles */
#define T_CHI2 6

#define BARRIER() __asm__ volatile("" ::: "memory") /* tile loads read memory the compiler cannot see */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* ---- may this process use AMX? ---------------------------------------------------------------- */

static int amx_ok;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    if (!(d & (1u << 24)) || !(d & (1u << 25))) return; /* AMX-TILE, AMX-INT8 */
    if (!(b & (1u << 31)) || !(b & (1u << 17)) || !(c & (1u << 11))) return; /* AVX512 VL, DQ, VNNI */
    /* Linux hands out the 8 KB tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); the
     * permission is the whole process's. */
    amx_ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

int kernel_amx_usable(void) {
    pthread_once(&amx_once, amx_probe);
    return amx_ok;
}

static void load_config(int ks) {
    _Alignas(64) tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    c.rows[T_CLO] = c.rows[T_CHI] = c.rows[T_CLO2] = c.rows[T_CHI2] = 16; /* 16 x 16 int32 */
    c.colsb[T_CLO] = c.colsb[T_CHI] = c.colsb[T_CLO2] = c.colsb[T_CHI2] = 64;
    c.rows[T_ALO] = c.rows[T_AHI] = 16, c.colsb[T_ALO] = c.colsb[T_AHI] = (uint16_t)ks;
    c.rows[T_B] = (uint8_t)(ks / 4), c.colsb[T_B] = 64;
    BARRIER();
    _tile_loadconfig(&c);
}

/* ---- packing -------------------------------------------------------------------------------------- */

/* The column order within 16 bytes that matches B's rows for codes of `bits` bits (see the top). */
static __m128i column_shuffle(int bits) {
    if (bits == 4) return _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    if (bits == 2) return _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

/* X rows [j0, j1) (at most AMX_NB; rows up to the next tile boundary are zero), columns [kb, kb + kc):
 * d and xsum per row and group (xd[j * AMX_MAXG + g]), and the int16 values' lo and hi bytes in A-tile
 * order: x tile t, step s at A + (t * nst + s) * 16 * ks, one row of ks bytes per x row. */
static void pack_x(uint8_t *alo, uint8_t *ahi, float *xd, float *xs, const float *X, size_t ldx, int j0, int j1,
                   int kb, int kc, int group, int ks, __m128i shuf) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    int nst = kc / ks, ng = kc / group, jt = j0 + (j1 - j0 + 15) / 16 * 16;
    for (int j = j0; j < jt; j++) {
        int t = (j - j0) / 16, jj = (j - j0) % 16;
        if (j >= j1) {
            for (int s = 0; s < nst; s++) {
                size_t at = ((size_t)(t * nst + s) * 16 + jj) * ks;
                memset(alo + at, 0, (size_t)ks);
                memset(ahi + at, 0, (size_t)ks);
            }
            for (int g = 0; g < ng; g++) xd[(j - j0) * AMX_MAXG + g] = xs[(j - j0) * AMX_MAXG + g] = 0.0f;
            continue;
        }
        const float *x = X + (size_t)j * ldx + kb;
        for (int g = 0; g < ng; g++) {
            __m512 m = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
            for (int c = g * group; c < (g + 1) * group; c += 16) {
                __m512 v = _mm512_loadu_ps(x + c);
                m = _mm512_max_ps(m, _mm512_and_ps(v, absmask));
                sum = _mm512_add_ps(sum, v);
            }
            float inv1;
            int16_step(_mm512_reduce_max_ps(m), &xd[(j - j0) * AMX_MAXG + g], &inv1);
            __m512 inv = _mm512_set1_ps(inv1);
            xs[(j - j0) * AMX_MAXG + g] = _mm512_reduce_add_ps(sum);
            for (int c = g * group; c < (g + 1) * group; c += 16) {
                __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + c), inv));
                __m128i lo = _mm_shuffle_epi8(_mm512_cvtepi32_epi8(q), shuf);
                __m128i hi = _mm_shuffle_epi8(_mm512_cvtepi32_epi8(_mm512_srai_epi32(q, 8)), shuf);
                size_t at = ((size_t)(t * nst + c / ks) * 16 + jj) * ks + c % ks;
                _mm_storeu_si128((__m128i *)(alo + at), lo);
                _mm_storeu_si128((__m128i *)(ahi + at), hi);
            }
        }
    }
}

/* B rows for weight rows rb .. rb + nr - 1 (the rest zero), columns [kb, kb + kc): row V*m + e (m a word
 * of the block) at bp + (V*m + e) * 64; and the rows' scales and biases per group, sc[g * 16 + i]. */
static void pack_w(uint8_t *bp, float *sc, float *bi, const qmat *w, int rb, int nr, int kb, int kc) {
    const int bits = dtype_bits(w->type), V = 8 / bits, W = 32 / bits;
    const int wpr = w->cols / W, gpr = w->cols / w->group, nw = kc / W;
    const __m512i mask = _mm512_set1_epi8((char)((1 << bits) - 1));
    const int32_t *rows = (const int32_t *)w->data + (size_t)rb * wpr + kb / W;
    __m512i v[16];
    for (int m0 = 0; m0 < nw; m0 += 16) {
        rows16_words(v, rows, (size_t)wpr, nr, m0, nw);
        for (int m = 0; m < 16 && m0 + m < nw; m++)
            for (int e = 0; e < V; e++)
                _mm512_store_si512((__m512i *)(bp + (size_t)(V * (m0 + m) + e) * 64),
                                   _mm512_and_si512(_mm512_srli_epi32(v[m], bits * e), mask));
    }
    /* Scales and biases, 8 groups at a time: row i's 8 bf16 values of each are 4 dwords; the same
     * transpose turns them into dword k of all 16 rows = groups 2k (low half) and 2k + 1 (high half). */
    const int g0 = kb / w->group, ng = kc / w->group;
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (int h0 = 0; h0 < ng; h0 += 8) {
        const int nh = ng - h0 < 8 ? ng - h0 : 8;
        const __mmask8 gm = (__mmask8)((1u << nh) - 1);
        for (int i = 0; i < 16; i++) {
            size_t at = (size_t)(rb + i) * gpr + g0 + h0;
            __m128i s = i < nr ? _mm_maskz_loadu_epi16(gm, w->scales + at) : _mm_setzero_si128();
            __m128i b = i < nr ? _mm_maskz_loadu_epi16(gm, w->biases + at) : _mm_setzero_si128();
            v[i] = _mm512_inserti32x4(_mm512_castsi128_si512(s), b, 1);
        }
        transpose16_si(v);
        float *sh = sc + h0 * 16, *bh = bi + h0 * 16;
        for (int k = 0; k < (nh + 1) / 2; k++) {
            _mm512_store_ps(sh + 2 * k * 16, _mm512_castsi512_ps(_mm512_slli_epi32(v[k], 16)));
            _mm512_store_ps(sh + (2 * k + 1) * 16, _mm512_castsi512_ps(_mm512_and_si512(v[k], hi)));
            _mm512_store_ps(bh + 2 * k * 16, _mm512_castsi512_ps(_mm512_slli_epi32(v[4 + k], 16)));
            _mm512_store_ps(bh + (2 * k + 1) * 16, _mm512_castsi512_ps(_mm512_and_si512(v[4 + k], hi)));
        }
    }
}

/* ---- the product ---------------------------------------------------------------------------------- */

/* The tile products of group g into C tiles CLO, CHI (zeroed first). */
#define GROUP_PRODUCT(CLO, CHI, g)                                                    \
    do {                                                                              \
        _tile_zero(CLO);                                                              \
        _tile_zero(CHI);                                                              \
        for (int s_ = (g) * spg; s_ < ((g) + 1) * spg; s_++) {                        \
            _tile_loadd(T_ALO, alo + s_ * astep, ks);                                 \
            _tile_loadd(T_AHI, ahi + s_ * astep, ks);                                 \
            _tile_loadd(T_B, bp + s_ * bstep, 64);                                    \
            _tile_dpbuud(CLO, T_ALO, T_B);                                            \
            _tile_dpbsud(CHI, T_AHI, T_B);                                            \
        }                                                                             \
    } while (0)

/* acc[jj] += s_g d_g[jj] (256 C_hi + C_lo)[jj] + b_g xsum_g[jj], C of group g stored at cb. */
#define GROUP_SCALE(cb, g)                                                                            \
    do {                                                                                              \
        __m512 s_ = _mm512_load_ps(sc + (g) * 16), b_ = _mm512_load_ps(bi + (g) * 16);                \
        _Pragma("GCC unroll 16") for (int jj = 0; jj < 16; jj++) {                                    \
            __m512i v_ = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512((cb)[1] + jj * 16), 8), \
                                          _mm512_load_si512((cb)[0] + jj * 16));                      \
            __m512 sd_ = _mm512_mul_ps(s_, _mm512_set1_ps(xd[jj * AMX_MAXG + (g)]));                  \
            acc[jj] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v_), sd_, acc[jj]);                          \
            acc[jj] = _mm512_fmadd_ps(b_, _mm512_set1_ps(xs[jj * AMX_MAXG + (g)]), acc[jj]);          \
        }                                                                                             \
    } while (0)

/* Y rows j0 .. j0 + nj - 1 (nj <= 16), columns rb .. rb + nr - 1 (+ unless first) = the x tile at
 * alo/ahi times the packed weights, over the ng groups of the block. Two pairs of C tiles alternate
 * so that the next group's tile products run while this group's are scaled. */
static void tile_product(float *Y, size_t ldy, int nj, int nr, int first, const uint8_t *alo, const uint8_t *ahi,
                         const uint8_t *bp, const float *xd, const float *xs, const float *sc, const float *bi, int ng,
                         int spg, int ks) {
    _Alignas(64) int32_t c0[2][256], c1[2][256];
    __m512 acc[16];
    for (int jj = 0; jj < 16; jj++) acc[jj] = _mm512_setzero_ps();
    const size_t astep = (size_t)16 * ks, bstep = (size_t)ks / 4 * 64;
    BARRIER();
    GROUP_PRODUCT(T_CLO, T_CHI, 0);
    for (int g = 0; g < ng; g += 2) {
        if (g + 1 < ng) GROUP_PRODUCT(T_CLO2, T_CHI2, g + 1);
        _tile_stored(T_CLO, c0[0], 64);
        _tile_stored(T_CHI, c0[1], 64);
        GROUP_SCALE(c0, g);
        if (g + 1 < ng) {
            if (g + 2 < ng) GROUP_PRODUCT(T_CLO, T_CHI, g + 2);
            _tile_stored(T_CLO2, c1[0], 64);
            _tile_stored(T_CHI2, c1[1], 64);
            GROUP_SCALE(c1, g + 1);
        }
    }
    __mmask16 m = mask16(nr);
    for (int jj = 0; jj < nj; jj++) {
        float *y = Y + (size_t)jj * ldy;
        __m512 v = first ? acc[jj] : _mm512_add_ps(acc[jj], _mm512_maskz_loadu_ps(m, y));
        _mm512_mask_storeu_ps(y, m, v);
    }
}

/* The types on tiles (codes in whole bytes' lanes of a word): the ones whose x this GEMM rounds. */
int kernel_gemm_amx_rounds_x(dtype t) { return t == DTYPE_Q8 || t == DTYPE_Q4 || t == DTYPE_Q2; }

void kernel_gemm_amx(float *Y, const qmat *w, const float *X, int n, int r0, int r1) {
    if (!kernel_gemm_amx_rounds_x(w->type)) {
        kernel_gemm_avx512(Y, w, X, n, r0, r1);
        return;
    }
    /* about 300 KB of stack at AMX_KC 1024: the pool's threads have the default (8 MB) */
    _Alignas(64) uint8_t alo[AMX_NB * AMX_KC], ahi[AMX_NB * AMX_KC], bp[AMX_KC * 16];
    _Alignas(64) float xd[AMX_NB * AMX_MAXG], xs[AMX_NB * AMX_MAXG], sc[AMX_MAXG * 16], bi[AMX_MAXG * 16];
    const int group = w->group, ks = group < 64 ? group : 64, spg = group / ks;
    const size_t ldx = (size_t)w->cols, ldy = (size_t)w->rows;
    const __m128i shuf = column_shuffle(dtype_bits(w->type));
    load_config(ks);
    for (int jb = 0; jb < n; jb += AMX_NB) {
        int je = n - jb < AMX_NB ? n : jb + AMX_NB;
        for (int kb = 0; kb < w->cols; kb += AMX_KC) {
            int kc = w->cols - kb < AMX_KC ? w->cols - kb : AMX_KC, nst = kc / ks;
            pack_x(alo, ahi, xd, xs, X, ldx, jb, je, kb, kc, group, ks, shuf);
            for (int rb = r0; rb < r1; rb += 16) {
                int nr = r1 - rb < 16 ? r1 - rb : 16;
                kernel_prefetch_panel_ahead(w, rb, r0, r1, kb, AMX_KC);
                pack_w(bp, sc, bi, w, rb, nr, kb, kc);
                for (int j = jb; j < je; j += 16) {
                    size_t t = (size_t)(j - jb) / 16;
                    tile_product(Y + (size_t)j * ldy + rb, ldy, je - j < 16 ? je - j : 16, nr, kb == 0,
                                 alo + t * nst * 16 * ks, ahi + t * nst * 16 * ks, bp, xd + (j - jb) * AMX_MAXG,
                                 xs + (j - jb) * AMX_MAXG, sc, bi, kc / group, spg, ks);
                }
            }
        }
    }
    _tile_release();
}

/* Byte multiply-adds per second of TDPBUSD on tiles alone (4 independent accumulators), this thread. */
double kernel_amx_int8_rate(double seconds) {
    _Alignas(64) tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) c.rows[t] = 16, c.colsb[t] = 64;
    BARRIER();
    _tile_loadconfig(&c);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
    long iters = 0;
    double t0 = util_now_seconds(), dt;
    do {
        for (int i = 0; i < 1024; i++) {
            _tile_dpbusd(0, 4, 6);
            _tile_dpbusd(1, 4, 7);
            _tile_dpbusd(2, 5, 6);
            _tile_dpbusd(3, 5, 7);
        }
        iters += 1024;
    } while ((dt = util_now_seconds() - t0) < seconds);
    _tile_release();
    return (double)iters * 4 * 16 * 16 * 64 / dt;
}

#else
#include "kernels_impl.h"
int kernel_amx_usable(void) { return 0; }
int kernel_gemm_amx_rounds_x(dtype t) { (void)t; return 0; }
void kernel_gemm_amx(float *Y, const qmat *w, const float *X, int n, int r0, int r1) {
    (void)Y, (void)w, (void)X, (void)n, (void)r0, (void)r1;
}
double kernel_amx_int8_rate(double seconds) { (void)seconds; return 0; }
#endif
