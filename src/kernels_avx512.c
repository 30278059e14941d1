/* AVX-512 row kernels (F, BW, VL): every product here is f32 x f32, which keeps them within the
 * reference's error bound. Q4 and Q2 instead take the int16 path of kernels_avx2.c (x rounded to int16
 * per group, exact integer dot products: measured faster than unpacking to f32 at either width), with
 * vpdpwssd where the CPU has AVX512-VNNI. Compiled for AVX-512 by the pragma below; called only after
 * kernels.c saw avx512f/bw/vl in cpuid. See kernels_impl.h for the data layout. */
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#include <immintrin.h>
#include <stdatomic.h>

#include "kernels_avx512_inline.h"
#include "kernels_impl.h"
#include "util.h"

#define AI static inline __attribute__((always_inline))
#define LANES 16
/* Loops over the x vectors, fully unrolled so the accumulators live in registers. */
#define FOR_J _Pragma("GCC unroll 4") for (int j = 0; j < NB; j++)
/* With one x vector, alternate two accumulators to hide FMA latency; with more, the x vectors
 * already give independent chains (and registers are better spent on them). */
#define ALT (NB == 1)


AI void prefetch(const void *p) {
    if (KERNEL_PREFETCH) _mm_prefetch((const char *)p + KERNEL_PREFETCH, _MM_HINT_T0);
}

/* ---- float weights: F32, F16, BF16 in natural order ---------------------------------------- */

/* 16 weights from element i of a row (masked: the first n, others 0). */
AI __m512 load_w16(dtype t, const void *row, int i, __mmask16 m) {
    if (t == DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i);
    if (t == DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* BF16 */
}

AI void float_rows(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, float *out, dtype t,
                   const int NB) {
    size_t esize = t == DTYPE_F32 ? 4 : 2;
    int n = c1 - c0;
    for (int r = r0; r < r1; r++) {
        const char *row = (const char *)w->data + ((size_t)r * w->cols + c0) * esize;
        __m512 acc[KERNEL_NB][2];
        FOR_J acc[j][0] = acc[j][1] = _mm512_setzero_ps();
        int c = 0;
        for (; c + 32 <= n; c += 32) {
            prefetch(row + c * esize);
            if (esize == 4) prefetch(row + c * esize + 64);
            __m512 w0 = load_w16(t, row, c, 0xffff), w1 = load_w16(t, row, c + 16, 0xffff);
            FOR_J {
                acc[j][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xv[j].x + c), acc[j][0]);
                acc[j][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xv[j].x + c + 16), acc[j][1]);
            }
        }
        for (; c < n; c += 16) {
            __mmask16 m = mask16(n - c);
            __m512 w0 = load_w16(t, row, c, m);
            FOR_J acc[j][0] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, xv[j].x + c), acc[j][0]);
        }
        FOR_J out[(r - r0) * NB + j] = _mm512_reduce_add_ps(_mm512_add_ps(acc[j][0], acc[j][1]));
    }
}

/* ---- quantized weights ----------------------------------------------------------------------- */

/* Converts the row's bf16 scales of the chunk to f32 in sf (zero-padded by 16) and returns in bdot
 * the bias half of each dot product: sum_g b_g * xsum_g. */
AI void row_scales(const qmat *w, size_t g0, int ng, const kernel_xview *xv, float *sf, float *bdot,
                   const int NB) {
    __m512 bacc[KERNEL_NB];
    FOR_J bacc[j] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g += 16) {
        __mmask16 m = mask16(ng - g);
        __m512i s = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w->scales + g0 + g));
        __m512i b = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w->biases + g0 + g));
        _mm512_storeu_ps(sf + g, _mm512_castsi512_ps(_mm512_slli_epi32(s, 16)));
        __m512 bf = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
        FOR_J bacc[j] = _mm512_fmadd_ps(bf, _mm512_maskz_loadu_ps(m, xv[j].xsum + g), bacc[j]);
    }
    _mm512_storeu_ps(sf + ng, _mm512_setzero_ps());
    FOR_J bdot[j] = _mm512_reduce_add_ps(bacc[j]);
}

/* One block of packed values: lane i gets 32 bits holding `pack` values LSB first. A partial block
 * (lanes < 16) loads only its own bytes, so it never reads past the row. */
AI __m512i load_packed(const uint8_t *p, int lanes, const int bits) {
    if (bits == 3) { /* 8 values in 3 bytes; spread the 48 bytes to 16 dwords of 24 bits */
        __mmask64 m = lanes >= 16 ? (__mmask64)0xffffffffffffull : (((__mmask64)1 << (3 * lanes)) - 1);
        __m512i v = _mm512_maskz_loadu_epi8(m, p);
        v = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12), v);
        const __m512i spread = _mm512_broadcast_i32x4(
            _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1));
        return _mm512_shuffle_epi8(v, spread);
    }
    if (lanes >= 16) return _mm512_loadu_si512(p);
    return _mm512_maskz_loadu_epi32(mask16(lanes), p);
}

/* One block at value e of the chunk: tot[j] += s_lane * sum_k q_k * xp_j[e + 16 k]. */
AI void packed_block(const uint8_t *wb, int e, int lanes, const float *sf, int gshift, __m512i gidx,
                     __m512 table, const kernel_xview *xv, __m512 *tot, const int bits, const int NB) {
    const int pack = quant_pack(bits);
    const uint8_t *p = wb + (size_t)e * bits / 8;
    prefetch(p);
    __m512i wv = load_packed(p, lanes, bits);
    __m512 s = _mm512_permutexvar_ps(gidx, _mm512_loadu_ps(sf + (e >> gshift)));
    __m512 acc[KERNEL_NB][2];
    FOR_J acc[j][0] = acc[j][1] = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int k = 0; k < pack; k++) {
        __m512 q = _mm512_permutexvar_ps(_mm512_srli_epi32(wv, k * bits), table);
        FOR_J acc[j][k & ALT] = _mm512_fmadd_ps(q, _mm512_loadu_ps(xv[j].x + e + k * LANES), acc[j][k & ALT]);
    }
    FOR_J tot[j] = _mm512_fmadd_ps(s, _mm512_add_ps(acc[j][0], acc[j][1]), tot[j]);
}

/* Q2, Q3, Q4: values unpacked by shift + permute (vpermps reads the low 4 bits of each index, so a
 * 16-entry table of q mod 2^bits turns the shifted word straight into float q). */
AI void packed_rows(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, float *out,
                    const int bits, const int NB) {
    const int pack = quant_pack(bits), block = LANES * pack, group = w->group;
    const int gshift = __builtin_ctz((unsigned)group), n = c1 - c0, ng = n / group;
    const int full = n / block * block, tail_lanes = (n - full) / pack;
    float tab[LANES];
    int idx[LANES];
    for (int i = 0; i < LANES; i++) {
        tab[i] = (float)(i & ((1 << bits) - 1));
        idx[i] = i * pack / group; /* lane i's group, relative to the block's first */
    }
    const __m512 table = _mm512_loadu_ps(tab);
    const __m512i gidx = _mm512_loadu_si512(idx);
    float sf[KERNEL_MAX_GROUPS], bdot[KERNEL_NB];
    for (int r = r0; r < r1; r++) {
        size_t e0 = (size_t)r * w->cols + c0;
        const uint8_t *wb = (const uint8_t *)w->data + e0 * bits / 8;
        row_scales(w, e0 >> gshift, ng, xv, sf, bdot, NB);
        __m512 tot[KERNEL_NB];
        FOR_J tot[j] = _mm512_setzero_ps();
        for (int e = 0; e < full; e += block) packed_block(wb, e, LANES, sf, gshift, gidx, table, xv, tot, bits, NB);
        if (tail_lanes) packed_block(wb, full, tail_lanes, sf, gshift, gidx, table, xv, tot, bits, NB);
        FOR_J out[(r - r0) * NB + j] = _mm512_reduce_add_ps(tot[j]) + bdot[j];
    }
}

/* Q8: one byte per value, natural order; a 16-value vector never straddles a group (group >= 32). */
AI void q8_rows(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, float *out, const int NB) {
    const int group = w->group, gshift = __builtin_ctz((unsigned)group), n = c1 - c0, ng = n / group;
    float sf[KERNEL_MAX_GROUPS], bdot[KERNEL_NB];
    for (int r = r0; r < r1; r++) {
        size_t e0 = (size_t)r * w->cols + c0;
        const uint8_t *wb = (const uint8_t *)w->data + e0;
        row_scales(w, e0 >> gshift, ng, xv, sf, bdot, NB);
        __m512 tot[KERNEL_NB];
        FOR_J tot[j] = _mm512_setzero_ps();
        for (int g = 0; g < ng; g++) {
            __m512 acc[KERNEL_NB][2];
            FOR_J acc[j][0] = acc[j][1] = _mm512_setzero_ps();
            for (int e = g * group; e < (g + 1) * group; e += 32) { /* group is a multiple of 32 */
                if (e % 64 == 0) prefetch(wb + e);
                __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wb + e))));
                __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wb + e + 16))));
                FOR_J {
                    acc[j][0] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(xv[j].x + e), acc[j][0]);
                    acc[j][ALT] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xv[j].x + e + 16), acc[j][ALT]);
                }
            }
            __m512 s = _mm512_set1_ps(sf[g]);
            FOR_J tot[j] = _mm512_fmadd_ps(s, _mm512_add_ps(acc[j][0], acc[j][1]), tot[j]);
        }
        FOR_J out[(r - r0) * NB + j] = _mm512_reduce_add_ps(tot[j]) + bdot[j];
    }
}

/* ---- instantiation: one function per dtype, switching on nb so each body is unrolled for it --- */

/* fn(args..., NB) with NB a constant 1..KERNEL_NB. */
#define CALL_BY_NB(fn, ...)                                                                       \
    switch (nb) {                                                                                 \
    case 1: fn(__VA_ARGS__, 1); break;                                                            \
    case 2: fn(__VA_ARGS__, 2); break;                                                            \
    case 3: fn(__VA_ARGS__, 3); break;                                                            \
    default: fn(__VA_ARGS__, 4); break;                                                           \
    }
_Static_assert(KERNEL_NB == 4, "CALL_BY_NB covers nb = 1..4");

#define ROWS_FN(NAME, BODY, ...)                                                                  \
    static void NAME(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb, \
                     float *out) {                                                                \
        CALL_BY_NB(BODY, w, r0, r1, c0, c1, xv, out, __VA_ARGS__)                                 \
    }
ROWS_FN(rows_f32, float_rows, DTYPE_F32)
ROWS_FN(rows_f16, float_rows, DTYPE_F16)
ROWS_FN(rows_bf16, float_rows, DTYPE_BF16)
ROWS_FN(rows_q3, packed_rows, 3)
ROWS_FN(rows_q4_f32x, packed_rows, 4) /* Q4 and Q2 with f32 x (kernel_f32_x_force) */
ROWS_FN(rows_q2_f32x, packed_rows, 2)

static void rows_q8(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb, float *out) {
    CALL_BY_NB(q8_rows, w, r0, r1, c0, c1, xv, out)
}

/* ---- the panel GEMM's tile (kernel_gemm_run): one 16-float panel row is one zmm ------------------ */

#define GEMM_NR512 12 /* X rows per tile: 12 accumulators, with 2 FMAs a cycle of latency 4 in flight */

/* Y[j][0..nr) (+)= sum_k X[k * GEMM_NR512 + j] * P[k][0..15], j < NR (compile-time; X is packed
 * GEMM_NR512 values per k whatever the tile's rows). With fewer than 8 rows, KU partial sums over
 * alternate k keep 8 or more independent FMAs in flight. */
AI void micro512(const int NR, const float *P, int kc, const float *X, float *Y, size_t ldy, int nr, int first) {
    const int KU = NR >= 8 ? 1 : NR >= 4 ? 2 : NR >= 2 ? 4 : 8;
    __m512 a[8][GEMM_NR512];
    for (int u = 0; u < KU; u++)
        _Pragma("GCC unroll 12") for (int j = 0; j < NR; j++) a[u][j] = _mm512_setzero_ps();
    int k = 0;
    for (; k + KU <= kc; k += KU) {
        _Pragma("GCC unroll 8") for (int u = 0; u < KU; u++) {
            __m512 wv = _mm512_load_ps(P + (size_t)(k + u) * GEMM_MR);
            const float *x = X + (size_t)(k + u) * GEMM_NR512;
            _Pragma("GCC unroll 12") for (int j = 0; j < NR; j++)
                a[u][j] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[j]), a[u][j]);
        }
    }
    for (; k < kc; k++) {
        __m512 wv = _mm512_load_ps(P + (size_t)k * GEMM_MR);
        _Pragma("GCC unroll 12") for (int j = 0; j < NR; j++)
            a[0][j] = _mm512_fmadd_ps(wv, _mm512_set1_ps(X[(size_t)k * GEMM_NR512 + j]), a[0][j]);
    }
    for (int u = 1; u < KU; u++)
        _Pragma("GCC unroll 12") for (int j = 0; j < NR; j++) a[0][j] = _mm512_add_ps(a[0][j], a[u][j]);
    const __mmask16 m = mask16(nr);
    _Pragma("GCC unroll 12") for (int j = 0; j < NR; j++) {
        float *y = Y + (size_t)j * ldy;
        __m512 s = first ? a[0][j] : _mm512_add_ps(a[0][j], _mm512_maskz_loadu_ps(m, y));
        _mm512_mask_storeu_ps(y, m, s);
    }
}

static void tile_avx512(int rows, const float *P, int kc, const float *X, float *Y, size_t ldy, int nr, int first) {
    switch (rows) {
    case 1: micro512(1, P, kc, X, Y, ldy, nr, first); break;
    case 2: micro512(2, P, kc, X, Y, ldy, nr, first); break;
    case 3: micro512(3, P, kc, X, Y, ldy, nr, first); break;
    case 4: micro512(4, P, kc, X, Y, ldy, nr, first); break;
    case 5: micro512(5, P, kc, X, Y, ldy, nr, first); break;
    case 6: micro512(6, P, kc, X, Y, ldy, nr, first); break;
    case 7: micro512(7, P, kc, X, Y, ldy, nr, first); break;
    case 8: micro512(8, P, kc, X, Y, ldy, nr, first); break;
    case 9: micro512(9, P, kc, X, Y, ldy, nr, first); break;
    case 10: micro512(10, P, kc, X, Y, ldy, nr, first); break;
    case 11: micro512(11, P, kc, X, Y, ldy, nr, first); break;
    default: micro512(12, P, kc, X, Y, ldy, nr, first); break;
    }
}

/* The panel GEMM with 512-bit FMAs: the panels are unpacked as at the AVX2 level (kernels_gemm_avx2.c). */
void kernel_gemm_avx512(float *Y, const qmat *w, const float *X, int n, int r0, int r1) {
    _Static_assert(GEMM_MR == 16 && GEMM_NB % GEMM_NR512 == 0, "a panel row is one zmm; passes hold whole tiles");
    kernel_gemm_run(Y, w, X, n, r0, r1, GEMM_NR512, tile_avx512);
}

KERNEL_FMA_RATE_FN(kernel_fma_rate_avx512, __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_cvtss_f32, 16)

/* ---- the int16 GEMM's panels and tile (kernel_gemm_int16_run) ------------------------------------
 * The panel keeps each packed word once: P[m * 16 + i] = word m (of the column block) of weight row
 * rb + i, 16 rows transposed into one zmm. The tile unpacks step s = m H + e (H = 16 / bits code pairs
 * per word) as (P[m] >> bits e) & mask, which holds codes e and e + H of each lane as two int16: the pairs
 * the driver packs x in (kernels_gemm_int16_avx2.c). The AVX2 level stores every step unpacked instead;
 * here that was 4x the stores and the panel's L1 footprint, and a 1024 x 4096 Q4 GEMM ran at 53 G
 * multiply-adds/s at n = 8 against 73 with the words (BENCHMARKS.md, series 13). */

/* x rows per tile: 12 int32 and 12 f32 accumulators (8 or 12; -D to compare). Each unpacking step (a
 * shift and a mask) serves NR vpdpwssd. On Sapphire Rapids 512-bit integer work issues on two ports, the
 * unpacking's and the vpdpwssd's alike, so 12 rows took Q4 GEMMs at n = 32 and 128 from 96-105 to 111-120
 * G multiply-adds/s a thread; on Zen 4, whose unpacking has ports of its own, 8 and 12 measured the same (BENCHMARKS.md,
 * series 13 and 14). */
#ifndef GEMM16_NR512
#define GEMM16_NR512 12
#endif

/* acc + the sums of adjacent int16 products of w and x per int32 lane, added in place: vpdpwssd with
 * VNNI (assembly: this file is not compiled for VNNI; the caller's level checked cpuid), else vpmaddwd
 * and vpaddd as one statement (GCC otherwise adds into a copy; see kernels_gemm_int16_avx2.c). */
AI __m512i madd_acc512(__m512i acc, __m512i w, __m512i x, const int VNNI) {
    if (VNNI) {
        __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x));
        return acc;
    }
    __m512i t;
    __asm__("vpmaddwd %2, %3, %1\n\tvpaddd %1, %0, %0" : "+v"(acc), "=&v"(t) : "v"(w), "v"(x));
    return acc;
}

/* madd_acc512 with x the int32 at xp in every lane: with VNNI, vpdpwssd's embedded broadcast (one
 * instruction with its load; 0-5% faster tiles on Zen 4 than a vpbroadcastd before it, most at small n). */
AI __m512i madd_bcast512(__m512i acc, __m512i w, const int32_t *xp, const int VNNI) {
    if (VNNI) {
        __asm__("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*xp));
        return acc;
    }
    return madd_acc512(acc, w, _mm512_set1_epi32(*xp), 0);
}

/* kernel_gemm16_fill: the words of rows rb .. rb + nr - 1 (the rest zero), 16 at a time. */
static void panel_words512(int32_t *P, float *sc, float *bi, const qmat *w, int rb, int nr, int kb, int kc) {
    const int V = 32 / dtype_bits(w->type), wpr = w->cols / V, nw = kc / V;
    const int32_t *row = (const int32_t *)w->data + (size_t)rb * wpr + kb / V;
    for (int m0 = 0; m0 < nw; m0 += 16) {
        int left = nw - m0 < 16 ? nw - m0 : 16; /* a block can end on 8, 4 or 2 words */
        __m512i v[16];
        rows16_words(v, row, (size_t)wpr, nr, m0, nw);
#pragma GCC unroll 16
        for (int m = 0; m < 16; m++) {
            if (m >= left) break;
            _mm512_store_si512((void *)(P + (size_t)(m0 + m) * 16), v[m]);
        }
    }
    kernel_gemm16_panel_scales(sc, bi, w, rb, nr, kb, kc);
}

AI void micro16_512(const int NR, const int BITS, const int VNNI, const int32_t *P, const int32_t *Xp,
                    const float *xd, const float *xs, const float *sc, const float *bi, int ng, int spg, float *Y,
                    size_t ldy, int nr, int first) {
    const int H = 16 / BITS; /* steps per word */
    const __m512i mask = _mm512_set1_epi32(((1 << BITS) - 1) * 0x10001);
    __m512 f[GEMM16_NR512];
    _Pragma("GCC unroll 16") for (int j = 0; j < NR; j++) {
        f[j] = _mm512_setzero_ps();
        if (!first) _mm_prefetch((const char *)(Y + (size_t)j * ldy), _MM_HINT_T0);
    }
    for (int g = 0; g < ng; g++) {
        __m512i a[GEMM16_NR512];
        _Pragma("GCC unroll 16") for (int j = 0; j < NR; j++) a[j] = _mm512_setzero_si512();
        const int32_t *p = P + (size_t)g * (spg / H) * 16, *x = Xp + (size_t)g * spg;
        for (int m = 0; m < spg / H; m++) {
            __m512i wv = _mm512_load_si512((const void *)(p + m * 16));
            _Pragma("GCC unroll 8") for (int e = 0; e < H; e++) {
                __m512i q = e == H - 1 ? _mm512_srli_epi16(wv, BITS * e) /* the top codes: nothing above them */
                                       : _mm512_and_si512(e ? _mm512_srli_epi32(wv, BITS * e) : wv, mask);
                _Pragma("GCC unroll 16") for (int j = 0; j < NR; j++)
                    a[j] = madd_bcast512(a[j], q, x + (size_t)j * GEMM16_STEPS + m * H + e, VNNI);
            }
        }
        __m512 sv = _mm512_load_ps(sc + g * 16), bv = _mm512_load_ps(bi + g * 16);
        _Pragma("GCC unroll 16") for (int j = 0; j < NR; j++) {
            __m512 d = _mm512_set1_ps(xd[j * GEMM16_MAXG + g]), t = _mm512_set1_ps(xs[j * GEMM16_MAXG + g]);
            f[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[j]), _mm512_mul_ps(sv, d), _mm512_fmadd_ps(bv, t, f[j]));
        }
    }
    const __mmask16 m = mask16(nr);
    _Pragma("GCC unroll 16") for (int j = 0; j < NR; j++) {
        float *y = Y + (size_t)j * ldy;
        _mm512_mask_storeu_ps(y, m, first ? f[j] : _mm512_add_ps(f[j], _mm512_maskz_loadu_ps(m, y)));
    }
}

/* The switch's cases for tiles of 1 .. GEMM16_NR512 - 1 rows (a pass's last tile); default: whole tiles. */
#define TILE16_CASE(R, BITS, VNNI)                                                                              \
    case R: micro16_512(R, BITS, VNNI, P, Xp, xd, xs, sc, bi, ng, spg, Y, ldy, nr, first); break;
#define TILE16_CASES8(BITS, VNNI)                                                                               \
    TILE16_CASE(1, BITS, VNNI) TILE16_CASE(2, BITS, VNNI) TILE16_CASE(3, BITS, VNNI) TILE16_CASE(4, BITS, VNNI)  \
    TILE16_CASE(5, BITS, VNNI) TILE16_CASE(6, BITS, VNNI) TILE16_CASE(7, BITS, VNNI)
#if GEMM16_NR512 == 8
#define TILE16_CASES(BITS, VNNI) TILE16_CASES8(BITS, VNNI)
#elif GEMM16_NR512 == 12
#define TILE16_CASES(BITS, VNNI)                                                                                \
    TILE16_CASES8(BITS, VNNI) TILE16_CASE(8, BITS, VNNI) TILE16_CASE(9, BITS, VNNI) TILE16_CASE(10, BITS, VNNI) \
    TILE16_CASE(11, BITS, VNNI)
#else
#error "GEMM16_NR512: 8 or 12"
#endif

#define TILE16_512(NAME, BITS, VNNI)                                                                            \
    static void NAME(int rows, const int32_t *P, const int32_t *Xp, const float *xd, const float *xs,           \
                     const float *sc, const float *bi, int ng, int spg, float *Y, size_t ldy, int nr, int first) { \
        switch (rows) {                                                                                         \
        TILE16_CASES(BITS, VNNI)                                                                                \
        default: micro16_512(GEMM16_NR512, BITS, VNNI, P, Xp, xd, xs, sc, bi, ng, spg, Y, ldy, nr, first);      \
        }                                                                                                       \
    }
TILE16_512(tile16_q8, 8, 0)
TILE16_512(tile16_q4, 4, 0)
TILE16_512(tile16_q2, 2, 0)
TILE16_512(tile16_q8_vnni, 8, 1)
TILE16_512(tile16_q4_vnni, 4, 1)
TILE16_512(tile16_q2_vnni, 2, 1)

static void gemm16_512(float *Y, const qmat *w, const float *X, int n, int r0, int r1, int vnni) {
    _Static_assert(GEMM16_NB % GEMM16_NR512 == 0, "passes hold whole tiles");
    if (!kernel_gemm_int16_rounds_x(w->type)) {
        kernel_gemm_avx512(Y, w, X, n, r0, r1);
        return;
    }
    int bits = dtype_bits(w->type);
    kernel_gemm16_tile tile = bits == 8 ? (vnni ? tile16_q8_vnni : tile16_q8)
                              : bits == 4 ? (vnni ? tile16_q4_vnni : tile16_q4)
                                          : (vnni ? tile16_q2_vnni : tile16_q2);
    kernel_gemm_int16_run(Y, w, X, n, r0, r1, GEMM16_NR512, tile, panel_words512);
}

void kernel_gemm_int16_avx512(float *Y, const qmat *w, const float *X, int n, int r0, int r1) {
    gemm16_512(Y, w, X, n, r0, r1, 0);
}

void kernel_gemm_int16_avx512_vnni(float *Y, const qmat *w, const float *X, int n, int r0, int r1) {
    gemm16_512(Y, w, X, n, r0, r1, 1);
}

/* 4096 rounds of 10 independent chains at ctx (__m512i[10]), 32 multiply-adds per link: vpdpwssd (vnni)
 * or vpmaddwd + vpaddd (see kernel_rounds_per_second). */
#define MADD16_ROUNDS512(NAME, VNNI)                                                                      \
    static __attribute__((noinline)) void NAME(void *ctx) {                                             \
        __m512i *a = ctx;                                                                               \
        __m512i a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5], a6 = a[6], a7 = a[7]; \
        __m512i a8 = a[8], a9 = a[9];                                                                   \
        const __m512i xv = _mm512_set1_epi16(3);                                                        \
        for (int r = 0; r < 4096; r++) {                                                                \
            a0 = madd_acc512(a0, a0, xv, VNNI), a1 = madd_acc512(a1, a1, xv, VNNI);                     \
            a2 = madd_acc512(a2, a2, xv, VNNI), a3 = madd_acc512(a3, a3, xv, VNNI);                     \
            a4 = madd_acc512(a4, a4, xv, VNNI), a5 = madd_acc512(a5, a5, xv, VNNI);                     \
            a6 = madd_acc512(a6, a6, xv, VNNI), a7 = madd_acc512(a7, a7, xv, VNNI);                     \
            a8 = madd_acc512(a8, a8, xv, VNNI), a9 = madd_acc512(a9, a9, xv, VNNI);                     \
        }                                                                                               \
        a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3, a[4] = a4, a[5] = a5, a[6] = a6, a[7] = a7;         \
        a[8] = a8, a[9] = a9;                                                                           \
    }
MADD16_ROUNDS512(madd16_rounds512, 0)
MADD16_ROUNDS512(madd16_rounds512_vnni, 1)

/* int16 multiply-adds per second of this thread's 512-bit vpdpwssd (vnni) or vpmaddwd + vpaddd. */
double kernel_madd16_rate_avx512(double seconds, int vnni) {
    __m512i a[10];
    for (int i = 0; i < 10; i++) a[i] = _mm512_set1_epi32(i + 1);
    return kernel_rounds_per_second(vnni ? madd16_rounds512_vnni : madd16_rounds512, a, seconds) * 4096 * 10 * 32;
}

#define OPS_AVX512(NAME, Q4, Q2, GEMM, ROUNDS)                                                          \
    {.name = NAME,                                                                                \
     .lanes = LANES,                                                                              \
     .pack = {[DTYPE_F32] = 1, [DTYPE_F16] = 1, [DTYPE_BF16] = 1, [DTYPE_Q8] = 1, [DTYPE_Q4] = 8,  \
              [DTYPE_Q3] = 8, [DTYPE_Q2] = 16},                                                   \
     .rows = {[DTYPE_F32] = rows_f32, [DTYPE_F16] = rows_f16, [DTYPE_BF16] = rows_bf16,           \
              [DTYPE_Q8] = rows_q8, [DTYPE_Q4] = Q4, [DTYPE_Q3] = rows_q3, [DTYPE_Q2] = Q2},      \
     .qpack = {[DTYPE_Q4] = 4, [DTYPE_Q2] = 8},                                                   \
     .quant_x16 = kernel_quant_x16_avx2,                                                          \
     .gemm = GEMM,                                                                                \
     .gemm_rounds_x = ROUNDS,                                                                     \
     .rows_f32x = {[DTYPE_Q4] = rows_q4_f32x, [DTYPE_Q2] = rows_q2_f32x},                         \
     .gemm_f32x = kernel_gemm_avx512,                                                             \
     .silu_mul = kernel_silu_mul_avx2,                                                            \
     .exp_sum = kernel_exp_sum_avx2}
static const kernel_ops ops_avx512 = OPS_AVX512("avx512", kernel_rows_q4_avx2, kernel_rows_q2_avx2,
                                                kernel_gemm_int16_avx512, kernel_gemm_int16_rounds_x);
static const kernel_ops ops_avx512_vnni = OPS_AVX512("avx512", kernel_rows_q4_vnni, kernel_rows_q2_vnni,
                                                     kernel_gemm_int16_avx512_vnni, kernel_gemm_int16_rounds_x);
/* The amx level: the same row kernels (an AMX CPU has VNNI), prompt chunks on tiles. */
static const kernel_ops ops_amx = OPS_AVX512("amx", kernel_rows_q4_vnni, kernel_rows_q2_vnni, kernel_gemm_amx,
                                                kernel_gemm_amx_rounds_x);

const kernel_ops *kernel_ops_amx(void) { return &ops_amx; }

/* Called for every matrix product (kernels.c looks the level's ops up each time): cpuid is read once. */
const kernel_ops *kernel_ops_avx512(void) {
    static const kernel_ops *_Atomic chosen;
    const kernel_ops *o = atomic_load_explicit(&chosen, memory_order_relaxed);
    if (!o) { /* racing first callers store the same pointer */
        __builtin_cpu_init();
        o = __builtin_cpu_supports("avx512vnni") ? &ops_avx512_vnni : &ops_avx512;
        atomic_store_explicit(&chosen, o, memory_order_relaxed);
    }
    return o;
}

#else
#include "kernels_impl.h"
const kernel_ops *kernel_ops_avx512(void) { return 0; }
const kernel_ops *kernel_ops_amx(void) { return 0; }
#endif
