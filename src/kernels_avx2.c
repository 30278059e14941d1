/* AVX2 + FMA + F16C row kernels: the same algorithm as kernels_avx512.c on 8 lanes. Compiled for
 * AVX2 by the pragma below; called only after kernels.c saw avx2/fma/f16c in cpuid. See
 * kernels_impl.h for the data layout. */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))
#define LANES 8
/* With one x vector, alternate two accumulators to hide FMA latency (see kernels_avx512.c). */
#define ALT (NB == 1)

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

AI void float_row(const qmat *w, int r, int c0, int c1, const kernel_xview *xv, float *out, dtype t,
                  const int NB) {
    size_t esize = t == DTYPE_F32 ? 4 : 2;
    const char *row = (const char *)w->data + ((size_t)r * w->cols + c0) * esize;
    int n = c1 - c0, c = 0;
    __m256 acc[KERNEL_NB][2];
    for (int j = 0; j < NB; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    for (; c + 16 <= n; c += 16) {
        __m256 w0 = load_w8(t, row, c), w1 = load_w8(t, row, c + 8);
        for (int j = 0; j < NB; j++) {
            acc[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xv[j].x + c), acc[j][0]);
            acc[j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xv[j].x + c + 8), acc[j][1]);
        }
    }
    if (c + 8 <= n) {
        __m256 w0 = load_w8(t, row, c);
        for (int j = 0; j < NB; j++) acc[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xv[j].x + c), acc[j][0]);
        c += 8;
    }
    float tail[KERNEL_NB] = {0};
    if (c < n && t == DTYPE_F32) {
        __m256i m = lane_mask(n - c);
        __m256 w0 = _mm256_maskload_ps((const float *)row + c, m);
        for (int j = 0; j < NB; j++) acc[j][0] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(xv[j].x + c, m), acc[j][0]);
    } else {
        for (; c < n; c++)
            for (int j = 0; j < NB; j++) tail[j] += load_w1(t, row, c) * xv[j].x[c];
    }
    for (int j = 0; j < NB; j++) out[j] = hsum8(_mm256_add_ps(acc[j][0], acc[j][1])) + tail[j];
}

/* ---- quantized weights ----------------------------------------------------------------------- */

/* Converts the row's bf16 scales of the chunk to f32 in sf (zero-padded by 8) and returns in bdot
 * the bias half of each dot product: sum_g b_g * xsum_g. */
AI void row_scales(const qmat *w, size_t g0, int ng, const kernel_xview *xv, float *sf, float *bdot,
                   const int NB) {
    const uint16_t *sp = w->scales + g0, *bp = w->biases + g0;
    __m256 bacc[KERNEL_NB];
    for (int j = 0; j < NB; j++) bacc[j] = _mm256_setzero_ps();
    int g = 0;
    for (; g + 8 <= ng; g += 8) {
        __m256i s = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sp + g)));
        __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(bp + g)));
        _mm256_storeu_ps(sf + g, _mm256_castsi256_ps(_mm256_slli_epi32(s, 16)));
        __m256 bf = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
        for (int j = 0; j < NB; j++) bacc[j] = _mm256_fmadd_ps(bf, _mm256_loadu_ps(xv[j].xsum + g), bacc[j]);
    }
    for (int j = 0; j < NB; j++) bdot[j] = hsum8(bacc[j]);
    for (; g < ng; g++) {
        sf[g] = bf16_to_f32(sp[g]);
        for (int j = 0; j < NB; j++) bdot[j] += bf16_to_f32(bp[g]) * xv[j].xsum[g];
    }
    _mm256_storeu_ps(sf + ng, _mm256_setzero_ps());
}

AI __m256i lane_group_index(int pack, int group) {
    int idx[LANES];
    for (int i = 0; i < LANES; i++) idx[i] = i * pack / group;
    return _mm256_loadu_si256((const __m256i *)idx);
}

/* One block: lane i gets 32 bits holding `pack` values LSB first; reads only the first `lanes`
 * lanes' bytes (rounded up to whole 32-bit words, which stay inside the row). */
AI __m256i load_packed(const uint8_t *p, int lanes, const int bits) {
    if (bits == 3) { /* 8 values in 3 bytes: 24 bytes -> 8 dwords of 24 bits */
        int dwords = lanes >= 8 ? 6 : (3 * lanes + 3) / 4;
        __m256i v = _mm256_maskload_epi32((const int *)p, lane_mask(dwords));
        v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 1, 2, 2, 3, 4, 5, 5));
        const __m256i spread = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1,
                                                0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
        return _mm256_shuffle_epi8(v, spread);
    }
    if (lanes >= 8) return _mm256_loadu_si256((const __m256i *)p);
    return _mm256_maskload_epi32((const int *)p, lane_mask(lanes));
}

/* Value k of every lane as float. Q2/Q3: vpermps reads the low 3 bits of the index, so an 8-entry
 * table of q mod 2^bits converts directly; Q4 needs the mask and a conversion. */
AI __m256 unpack_k(__m256i wv, int k, const int bits) {
    __m256i sh = _mm256_srli_epi32(wv, k * bits);
    if (bits == 4) return _mm256_cvtepi32_ps(_mm256_and_si256(sh, _mm256_set1_epi32(15)));
    const __m256 table = bits == 2 ? _mm256_setr_ps(0, 1, 2, 3, 0, 1, 2, 3) : _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_permutevar8x32_ps(table, sh);
}

AI void packed_row(const qmat *w, int r, int c0, int c1, const kernel_xview *xv, float *out, const int bits,
                   const int NB) {
    const int pack = quant_pack(bits), block = LANES * pack, group = w->group;
    size_t e0 = (size_t)r * w->cols + c0;
    const uint8_t *wb = (const uint8_t *)w->data + e0 * bits / 8;
    int n = c1 - c0, ng = n / group;
    float sf[KERNEL_MAX_GROUPS], bdot[KERNEL_NB];
    row_scales(w, e0 / group, ng, xv, sf, bdot, NB);
    const __m256i gidx = lane_group_index(pack, group);
    __m256 tot[KERNEL_NB];
    for (int j = 0; j < NB; j++) tot[j] = _mm256_setzero_ps();

    for (int e = 0; e < n; e += block) {
        __m256i wv = load_packed(wb + (size_t)e * bits / 8, (n - e) / pack, bits);
        __m256 s = _mm256_permutevar8x32_ps(_mm256_loadu_ps(sf + e / group), gidx);
        __m256 acc[KERNEL_NB][2];
        for (int j = 0; j < NB; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
#pragma GCC unroll 16
        for (int k = 0; k < pack; k++) {
            __m256 q = unpack_k(wv, k, bits);
            for (int j = 0; j < NB; j++)
                acc[j][k & ALT] = _mm256_fmadd_ps(q, _mm256_loadu_ps(xv[j].x + e + k * LANES), acc[j][k & ALT]);
        }
        for (int j = 0; j < NB; j++) tot[j] = _mm256_fmadd_ps(s, _mm256_add_ps(acc[j][0], acc[j][1]), tot[j]);
    }
    for (int j = 0; j < NB; j++) out[j] = hsum8(tot[j]) + bdot[j];
}

/* Q8: one byte per value, natural order; a group (>= 32) is a whole number of 8-value vectors. */
AI void q8_row(const qmat *w, int r, int c0, int c1, const kernel_xview *xv, float *out, const int NB) {
    const int group = w->group;
    size_t e0 = (size_t)r * w->cols + c0;
    const uint8_t *wb = (const uint8_t *)w->data + e0;
    int n = c1 - c0, ng = n / group;
    float sf[KERNEL_MAX_GROUPS], bdot[KERNEL_NB];
    row_scales(w, e0 / group, ng, xv, sf, bdot, NB);
    __m256 tot[KERNEL_NB];
    for (int j = 0; j < NB; j++) tot[j] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m256 acc[KERNEL_NB][2];
        for (int j = 0; j < NB; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
        for (int v = 0; v < group; v += 8) {
            int e = g * group + v;
            __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wb + e))));
            for (int j = 0; j < NB; j++)
                acc[j][(v >> 3) & ALT] = _mm256_fmadd_ps(q, _mm256_loadu_ps(xv[j].x + e), acc[j][(v >> 3) & ALT]);
        }
        __m256 s = _mm256_set1_ps(sf[g]);
        for (int j = 0; j < NB; j++) tot[j] = _mm256_fmadd_ps(s, _mm256_add_ps(acc[j][0], acc[j][1]), tot[j]);
    }
    for (int j = 0; j < NB; j++) out[j] = hsum8(tot[j]) + bdot[j];
}

/* ---- instantiation: one function per dtype, the body unrolled for each nb -------------------- */

#define CALL_BY_NB(fn, ...)                                                                       \
    switch (nb) {                                                                                 \
    case 1: fn(__VA_ARGS__, 1); break;                                                            \
    case 2: fn(__VA_ARGS__, 2); break;                                                            \
    case 3: fn(__VA_ARGS__, 3); break;                                                            \
    default: fn(__VA_ARGS__, 4); break;                                                           \
    }
_Static_assert(KERNEL_NB == 4, "CALL_BY_NB covers nb = 1..4");

#define ROW_FN(NAME, BODY, ...)                                                                   \
    static void NAME(const qmat *w, int r, int c0, int c1, const kernel_xview *xv, int nb, float *out) { \
        CALL_BY_NB(BODY, w, r, c0, c1, xv, out, __VA_ARGS__)                                      \
    }
ROW_FN(row_f32, float_row, DTYPE_F32)
ROW_FN(row_f16, float_row, DTYPE_F16)
ROW_FN(row_bf16, float_row, DTYPE_BF16)
ROW_FN(row_q4, packed_row, 4)
ROW_FN(row_q3, packed_row, 3)
ROW_FN(row_q2, packed_row, 2)

static void row_q8(const qmat *w, int r, int c0, int c1, const kernel_xview *xv, int nb, float *out) {
    CALL_BY_NB(q8_row, w, r, c0, c1, xv, out)
}

static const kernel_ops ops_avx2 = {
    .name = "avx2",
    .lanes = LANES,
    .pack = {[DTYPE_F32] = 1, [DTYPE_F16] = 1, [DTYPE_BF16] = 1, [DTYPE_Q8] = 1, [DTYPE_Q4] = 8,
             [DTYPE_Q3] = 8, [DTYPE_Q2] = 16},
    .row = {[DTYPE_F32] = row_f32, [DTYPE_F16] = row_f16, [DTYPE_BF16] = row_bf16, [DTYPE_Q8] = row_q8,
            [DTYPE_Q4] = row_q4, [DTYPE_Q3] = row_q3, [DTYPE_Q2] = row_q2},
};

const kernel_ops *kernel_ops_avx2(void) { return &ops_avx2; }

#else
#include "kernels_impl.h"
const kernel_ops *kernel_ops_avx2(void) { return 0; }
#endif
