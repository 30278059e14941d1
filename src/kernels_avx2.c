/* AVX2 + FMA + F16C row kernels: the same algorithm as kernels_avx512.c on 8 lanes. Compiled for
 * AVX2 by the pragma below; called only after kernels.c saw avx2/fma/f16c in cpuid. See
 * kernels_impl.h for the data layout. */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <string.h>

#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))
#define LANES 8
/* Loops over the x vectors, fully unrolled so the accumulators live in registers. */
#define FOR_J _Pragma("GCC unroll 4") for (int j = 0; j < NB; j++)
/* With one x vector, alternate two accumulators to hide FMA latency (see kernels_avx512.c). */
#define ALT (NB == 1)

AI void prefetch(const void *p) {
    if (KERNEL_PREFETCH) _mm_prefetch((const char *)p + KERNEL_PREFETCH, _MM_HINT_T0);
}

AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* All-ones in the first n lanes (n < 8), for maskload. */
AI __m256i lane_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ---- float weights: F32, F16, BF16 in natural order ---------------------------------------- */

AI __m256 load_w8(dtype t, const void *row, int i) {
    if (t == DTYPE_F32) return _mm256_loadu_ps((const float *)row + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
    if (t == DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* BF16 */
}

AI float load_w1(dtype t, const void *row, int i) {
    if (t == DTYPE_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return t == DTYPE_F16 ? _cvtsh_ss(h) : bf16_to_f32(h);
}

AI void float_rows(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, float *out, dtype t,
                   const int NB) {
    size_t esize = t == DTYPE_F32 ? 4 : 2;
    int n = c1 - c0;
    for (int r = r0; r < r1; r++) {
        const char *row = (const char *)w->data + ((size_t)r * w->cols + c0) * esize;
        __m256 acc[KERNEL_NB][2];
        FOR_J acc[j][0] = acc[j][1] = _mm256_setzero_ps();
        int c = 0;
        for (; c + 16 <= n; c += 16) {
            if (esize == 4 || c % 32 == 0) prefetch(row + c * esize);
            __m256 w0 = load_w8(t, row, c), w1 = load_w8(t, row, c + 8);
            FOR_J {
                acc[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xv[j].x + c), acc[j][0]);
                acc[j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xv[j].x + c + 8), acc[j][1]);
            }
        }
        if (c + 8 <= n) {
            __m256 w0 = load_w8(t, row, c);
            FOR_J acc[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xv[j].x + c), acc[j][0]);
            c += 8;
        }
        float tail[KERNEL_NB] = {0};
        if (c < n && t == DTYPE_F32) {
            __m256i m = lane_mask(n - c);
            __m256 w0 = _mm256_maskload_ps((const float *)row + c, m);
            FOR_J acc[j][0] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(xv[j].x + c, m), acc[j][0]);
        } else {
            for (; c < n; c++)
                FOR_J tail[j] += load_w1(t, row, c) * xv[j].x[c];
        }
        FOR_J out[(r - r0) * NB + j] = hsum8(_mm256_add_ps(acc[j][0], acc[j][1])) + tail[j];
    }
}

/* ---- quantized weights ----------------------------------------------------------------------- */

/* Converts the row's bf16 scales of the chunk to f32 in sf (zero-padded by 8) and returns in bdot
 * the bias half of each dot product: sum_g b_g * xsum_g. */
AI void row_scales(const qmat *w, size_t g0, int ng, const kernel_xview *xv, float *sf, float *bdot,
                   const int NB) {
    const uint16_t *sp = w->scales + g0, *bp = w->biases + g0;
    __m256 bacc[KERNEL_NB];
    FOR_J bacc[j] = _mm256_setzero_ps();
    int g = 0;
    for (; g + 8 <= ng; g += 8) {
        __m256i s = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sp + g)));
        __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(bp + g)));
        _mm256_storeu_ps(sf + g, _mm256_castsi256_ps(_mm256_slli_epi32(s, 16)));
        __m256 bf = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
        FOR_J bacc[j] = _mm256_fmadd_ps(bf, _mm256_loadu_ps(xv[j].xsum + g), bacc[j]);
    }
    FOR_J bdot[j] = hsum8(bacc[j]);
    for (; g < ng; g++) {
        sf[g] = bf16_to_f32(sp[g]);
        FOR_J bdot[j] += bf16_to_f32(bp[g]) * xv[j].xsum[g];
    }
    _mm256_storeu_ps(sf + ng, _mm256_setzero_ps());
}

/* One block: lane i gets 32 bits holding `pack` values LSB first; a partial block reads only its
 * lanes' bytes (rounded up to whole 32-bit words, which stay inside the row). */
AI __m256i load_packed(const uint8_t *p, int lanes, const int bits) {
    if (bits == 3) { /* 8 values in 3 bytes: 24 bytes -> 8 dwords of 24 bits */
        __m256i v;
        if (lanes >= 8) { /* bytes 0..15 in the low half, 8..23 in the high half */
            v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                        _mm_loadu_si128((const __m128i *)(p + 8)), 1);
        } else {
            v = _mm256_maskload_epi32((const int *)p, lane_mask((3 * lanes + 3) / 4));
            v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 1, 2, 3, 2, 3, 4, 5)); /* same halves */
        }
        const __m256i spread = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1,
                                                4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15, -1);
        return _mm256_shuffle_epi8(v, spread);
    }
    if (lanes >= 8) return _mm256_loadu_si256((const __m256i *)p);
    return _mm256_maskload_epi32((const int *)p, lane_mask(lanes));
}

/* Value k of every lane as float: shift, mask, convert. (vpermps with a table, as the AVX-512
 * kernels do, measured slower here for Q2/Q3 on Zen 3, and Q4 would need a 16-entry table.) */
AI __m256 unpack_k(__m256i wv, int k, const int bits) {
    __m256i q = _mm256_and_si256(_mm256_srli_epi32(wv, k * bits), _mm256_set1_epi32((1 << bits) - 1));
    return _mm256_cvtepi32_ps(q);
}

/* One block at value e of the chunk: tot[j] += s_lane * sum_k q_k * xp_j[e + 8 k]. */
AI void packed_block(const uint8_t *wb, int e, int lanes, const float *sf, int gshift, __m256i gidx,
                     const kernel_xview *xv, __m256 *tot, const int bits, const int NB) {
    const int pack = quant_pack(bits);
    const uint8_t *p = wb + (size_t)e * bits / 8;
    if (bits != 3 || e % (2 * LANES * pack) == 0) prefetch(p); /* about once per 64 bytes */
    __m256i wv = load_packed(p, lanes, bits);
    __m256 s = _mm256_permutevar8x32_ps(_mm256_loadu_ps(sf + (e >> gshift)), gidx);
    __m256 acc[KERNEL_NB][2];
    FOR_J acc[j][0] = acc[j][1] = _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int k = 0; k < pack; k++) {
        __m256 q = unpack_k(wv, k, bits);
        FOR_J acc[j][k & ALT] = _mm256_fmadd_ps(q, _mm256_loadu_ps(xv[j].x + e + k * LANES), acc[j][k & ALT]);
    }
    FOR_J tot[j] = _mm256_fmadd_ps(s, _mm256_add_ps(acc[j][0], acc[j][1]), tot[j]);
}

AI void packed_rows(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, float *out,
                    const int bits, const int NB) {
    const int pack = quant_pack(bits), block = LANES * pack, group = w->group;
    const int gshift = __builtin_ctz((unsigned)group), n = c1 - c0, ng = n / group;
    const int full = n / block * block, tail_lanes = (n - full) / pack;
    int idx[LANES];
    for (int i = 0; i < LANES; i++) idx[i] = i * pack / group; /* lane i's group, relative to the block's */
    const __m256i gidx = _mm256_loadu_si256((const __m256i *)idx);
    float sf[KERNEL_MAX_GROUPS], bdot[KERNEL_NB];
    for (int r = r0; r < r1; r++) {
        size_t e0 = (size_t)r * w->cols + c0;
        const uint8_t *wb = (const uint8_t *)w->data + e0 * bits / 8;
        row_scales(w, e0 >> gshift, ng, xv, sf, bdot, NB);
        __m256 tot[KERNEL_NB];
        FOR_J tot[j] = _mm256_setzero_ps();
        for (int e = 0; e < full; e += block) packed_block(wb, e, LANES, sf, gshift, gidx, xv, tot, bits, NB);
        if (tail_lanes) packed_block(wb, full, tail_lanes, sf, gshift, gidx, xv, tot, bits, NB);
        FOR_J out[(r - r0) * NB + j] = hsum8(tot[j]) + bdot[j];
    }
}

/* Q8: one byte per value, natural order; a group (>= 32) is a whole number of 8-value vectors. */
AI void q8_rows(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, float *out, const int NB) {
    const int group = w->group, gshift = __builtin_ctz((unsigned)group), n = c1 - c0, ng = n / group;
    float sf[KERNEL_MAX_GROUPS], bdot[KERNEL_NB];
    for (int r = r0; r < r1; r++) {
        size_t e0 = (size_t)r * w->cols + c0;
        const uint8_t *wb = (const uint8_t *)w->data + e0;
        row_scales(w, e0 >> gshift, ng, xv, sf, bdot, NB);
        __m256 tot[KERNEL_NB];
        FOR_J tot[j] = _mm256_setzero_ps();
        for (int g = 0; g < ng; g++) {
            __m256 acc[KERNEL_NB][2];
            FOR_J acc[j][0] = acc[j][1] = _mm256_setzero_ps();
            for (int e = g * group; e < (g + 1) * group; e += 32) { /* group is a multiple of 32 */
                if (e % 64 == 0) prefetch(wb + e);
#pragma GCC unroll 4
                for (int v = 0; v < 32; v += 8) {
                    __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wb + e + v))));
                    FOR_J acc[j][(v >> 3) & ALT] =
                        _mm256_fmadd_ps(q, _mm256_loadu_ps(xv[j].x + e + v), acc[j][(v >> 3) & ALT]);
                }
            }
            __m256 s = _mm256_set1_ps(sf[g]);
            FOR_J tot[j] = _mm256_fmadd_ps(s, _mm256_add_ps(acc[j][0], acc[j][1]), tot[j]);
        }
        FOR_J out[(r - r0) * NB + j] = hsum8(tot[j]) + bdot[j];
    }
}

/* ---- quantized weights, int16 path (Q8, Q4, Q2): see kernels_impl.h --------------------------- */

/* Value k of every 16-bit lane (qp = 16 / bits values per lane, LSB first). */
AI __m256i unpack16_k(__m256i wv, int k, const int bits) {
    __m256i v = k ? _mm256_srli_epi16(wv, k * bits) : wv;
    if ((k + 1) * bits == 16) return v; /* the top value: the shift alone clears the rest */
    return _mm256_and_si256(v, _mm256_set1_epi16((short)((1 << bits) - 1)));
}

/* acc + the sums of adjacent int16 products of q and x in each int32 lane: vpmaddwd + vpaddd, or with
 * VNNI (AVX512-VNNI + VL, checked by the caller's level) the one instruction vpdpwssd. Written as
 * assembly so that this file stays compiled for AVX2 (the instruction runs only where cpuid has it). */
AI __m256i dot_pairs(__m256i acc, __m256i q, const int16_t *x, const int VNNI) {
    __m256i xv = _mm256_loadu_si256((const __m256i *)x);
    if (VNNI) {
        __asm__("%{evex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(q), "x"(xv));
        return acc;
    }
    return _mm256_add_epi32(acc, _mm256_madd_epi16(q, xv));
}

/* One block of 16 * qp values at e (dwords of it present: 8, or fewer at a row's tail):
 * acc[j] += q . xq_j, int32 lane i summing values [2 qp i, 2 qp (i + 1)) of the block. Exact:
 * |q xq| <= 255 * 32767, and a lane sums at most group / 8 <= 16 of them per group (< 2^31). */
AI void int16_block(const uint8_t *wb, int e, int dwords, const kernel_xview *xv, __m256i *acc, const int bits,
                    const int NB, const int VNNI) {
    const int qp = 16 / bits;
    const uint8_t *p = wb + (size_t)e * bits / 8;
    if (((size_t)e * bits / 8) % 64 == 0) prefetch(p);
    __m256i wv = dwords >= 8 ? _mm256_loadu_si256((const __m256i *)p)
                             : _mm256_maskload_epi32((const int *)p, lane_mask(dwords));
#pragma GCC unroll 8
    for (int k = 0; k < qp; k++) {
        __m256i q = unpack16_k(wv, k, bits);
        FOR_J acc[j] = dot_pairs(acc[j], q, xv[j].xq + e + k * KERNEL_QLANES, VNNI);
    }
}

AI void int16_rows(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, float *out, const int bits,
                   const int VNNI, const int NB) {
    const int qp = 16 / bits, block = KERNEL_QLANES * qp, group = w->group;
    const int gshift = __builtin_ctz((unsigned)group), n = c1 - c0, ng = n / group;
    const int full = n / block * block, tail_dwords = (n - full) * bits / 32;
    int idx[LANES];
    for (int i = 0; i < LANES; i++) idx[i] = 2 * qp * i / group; /* int32 lane i's group, relative to the block's */
    const __m256i gidx = _mm256_loadu_si256((const __m256i *)idx);
    float sf[KERNEL_MAX_GROUPS], bdot[KERNEL_NB], sd[KERNEL_NB][KERNEL_MAX_GROUPS];
    for (int r = r0; r < r1; r++) {
        size_t e0 = (size_t)r * w->cols + c0;
        const uint8_t *wb = (const uint8_t *)w->data + e0 * bits / 8;
        row_scales(w, e0 >> gshift, ng, xv, sf, bdot, NB);
        for (int g = 0; g < ng; g += 8) /* sd = s_g * d_g, zero-padded by 8 (sf and xd are) */
            FOR_J _mm256_storeu_ps(sd[j] + g, _mm256_mul_ps(_mm256_loadu_ps(sf + g), _mm256_loadu_ps(xv[j].xd + g)));
        FOR_J _mm256_storeu_ps(sd[j] + (ng + 7) / 8 * 8, _mm256_setzero_ps());
        __m256 tot[KERNEL_NB];
        FOR_J tot[j] = _mm256_setzero_ps();
        if (group == block) { /* one block per group (Q4 g64, Q8 g32, Q2 g128) */
#pragma GCC unroll 2
            for (int g = 0; g < ng; g++) {
                __m256i acc[KERNEL_NB];
                FOR_J acc[j] = _mm256_setzero_si256();
                int16_block(wb, g * block, 8, xv, acc, bits, NB, VNNI);
                FOR_J tot[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[j]), _mm256_set1_ps(sd[j][g]), tot[j]);
            }
        } else if (group > block) { /* whole blocks per group: sum the group in int32, scale once */
            for (int g = 0; g < ng; g++) {
                __m256i acc[KERNEL_NB];
                FOR_J acc[j] = _mm256_setzero_si256();
                for (int e = g * group; e < (g + 1) * group; e += block) int16_block(wb, e, 8, xv, acc, bits, NB, VNNI);
                FOR_J tot[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[j]), _mm256_set1_ps(sd[j][g]), tot[j]);
            }
        } else { /* groups within a block: each int32 lane scaled by its group's s * d */
            for (int e = 0; e < n; e += block) {
                __m256i acc[KERNEL_NB];
                FOR_J acc[j] = _mm256_setzero_si256();
                int16_block(wb, e, e < full ? 8 : tail_dwords, xv, acc, bits, NB, VNNI);
                FOR_J tot[j] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(acc[j]),
                    _mm256_permutevar8x32_ps(_mm256_loadu_ps(sd[j] + (e >> gshift)), gidx), tot[j]);
            }
        }
        FOR_J out[(r - r0) * NB + j] = hsum8(tot[j]) + bdot[j];
    }
}

/* The int16 path's x (kernel_xview): per group, d = max|x| / 32767 and xq = round(x * 32767 / max|x|)
 * (round to nearest even: |x * inv - xq| <= 0.5; |x| * inv <= 32767 (1 + 2^-23) rounds to <= 32767),
 * then each block of 16 * qp values interleaved so lane i of vector k holds value i * qp + k. */
void kernel_quant_x16_avx2(const float *x, int n, int group, int qp, int16_t *xq, float *xd) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    float inv[KERNEL_MAX_GROUPS];
    int ng = n / group, gshift = __builtin_ctz((unsigned)group), block = KERNEL_QLANES * qp;
    for (int g = 0; g < ng; g++) {
        __m256 m = _mm256_setzero_ps();
        for (int c = g * group; c < (g + 1) * group; c += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + c), absmask));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        int16_step(_mm_cvtss_f32(h), &xd[g], &inv[g]);
    }
    int16_t tb[KERNEL_QLANES * 8];
    for (int e = 0; e < n; e += block) {
        for (int c = 0; c < block; c += 8) {
            __m128i v = _mm_setzero_si128();
            if (e + c < n) {
                __m256i q = _mm256_cvtps_epi32(
                    _mm256_mul_ps(_mm256_loadu_ps(x + e + c), _mm256_set1_ps(inv[(e + c) >> gshift])));
                v = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            }
            _mm_storeu_si128((__m128i *)(tb + c), v);
        }
        for (int k = 0; k < qp; k++)
            for (int i = 0; i < KERNEL_QLANES; i++) xq[e + k * KERNEL_QLANES + i] = tb[i * qp + k];
    }
}

/* ---- exp: SwiGLU and softmax ------------------------------------------------------------------- */

/* e^x, 8 lanes: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so r is exact to a few ulp), e^r by
 * the minimax polynomial of Cephes' expf (relative error about 1e-7), times 2^n built in the exponent
 * field. x is clamped to 88.37 (e^x stays finite); below -87.33 the result is 0 (expf gives subnormals
 * there). NaN stays NaN. */
static inline __m256 exp256(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33f);
    x = _mm256_min_ps(_mm256_set1_ps(88.37f), x); /* min/max return their second operand for a NaN */
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(lo, x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

void kernel_silu_mul_avx2(float *out, const float *g, const float *u, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, exp256(_mm256_xor_ps(x, neg))));
        _mm256_storeu_ps(out + i, u ? _mm256_mul_ps(s, _mm256_loadu_ps(u + i)) : s);
    }
    if (i < n) { /* the tail through a padded block, so that it gets the same exp */
        float gg[8] = {0}, uu[8] = {0};
        memcpy(gg, g + i, sizeof(float) * (n - i));
        if (u) memcpy(uu, u + i, sizeof(float) * (n - i));
        kernel_silu_mul_avx2(gg, gg, u ? uu : NULL, 8);
        memcpy(out + i, gg, sizeof(float) * (n - i));
    }
}

float kernel_exp_sum_avx2(float *x, int n, float sub) {
    const __m256 vs = _mm256_set1_ps(sub);
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (i < n) {
        __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        __m256 m = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n - i), idx));
        __m256 e = _mm256_and_ps(m, exp256(_mm256_sub_ps(_mm256_maskload_ps(x + i, _mm256_castps_si256(m)), vs)));
        _mm256_maskstore_ps(x + i, _mm256_castps_si256(m), e);
        acc = _mm256_add_ps(acc, e);
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* ---- instantiation: one function per dtype, switching on nb so each body is unrolled for it --- */

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

/* The int16 path's row kernels, also the AVX-512 level's (see kernels_impl.h). */
#define INT16_FN(NAME, ...)                                                                       \
    void NAME(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb, float *out) { \
        CALL_BY_NB(int16_rows, w, r0, r1, c0, c1, xv, out, __VA_ARGS__)                           \
    }
INT16_FN(kernel_rows_q4_avx2, 4, 0)
INT16_FN(kernel_rows_q2_avx2, 2, 0)
INT16_FN(kernel_rows_q4_vnni, 4, 1)
INT16_FN(kernel_rows_q2_vnni, 2, 1)

/* Q8 keeps f32 x: int16_rows handles bits = 8 too (set qpack[DTYPE_Q8] = 2 to use it), but it measured
 * no faster for matvec and ~20% slower for matmat than q8_rows, whose unpacking is one cvt. */
static void rows_q8(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb, float *out) {
    CALL_BY_NB(q8_rows, w, r0, r1, c0, c1, xv, out)
}

static const kernel_ops ops_avx2 = {
    .name = "avx2",
    .lanes = LANES,
    .pack = {[DTYPE_F32] = 1, [DTYPE_F16] = 1, [DTYPE_BF16] = 1, [DTYPE_Q8] = 1, [DTYPE_Q4] = 8,
             [DTYPE_Q3] = 8, [DTYPE_Q2] = 16},
    .rows = {[DTYPE_F32] = rows_f32, [DTYPE_F16] = rows_f16, [DTYPE_BF16] = rows_bf16, [DTYPE_Q8] = rows_q8,
             [DTYPE_Q4] = kernel_rows_q4_avx2, [DTYPE_Q3] = rows_q3, [DTYPE_Q2] = kernel_rows_q2_avx2},
    .qpack = {[DTYPE_Q4] = 4, [DTYPE_Q2] = 8}, /* Q8: f32 path (see rows_q8) */
    .quant_x16 = kernel_quant_x16_avx2,
    .gemm = kernel_gemm_int16_avx2,
    .gemm_rounds_x = kernel_gemm_int16_rounds_x,
    .rows_f32x = {[DTYPE_Q4] = rows_q4_f32x, [DTYPE_Q2] = rows_q2_f32x},
    .gemm_f32x = kernel_gemm_avx2,
    .silu_mul = kernel_silu_mul_avx2,
    .exp_sum = kernel_exp_sum_avx2,
};

const kernel_ops *kernel_ops_avx2(void) { return &ops_avx2; }

#else
#include "kernels_impl.h"
const kernel_ops *kernel_ops_avx2(void) { return 0; }
#endif
