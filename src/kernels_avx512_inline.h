/* Inline helpers for the files compiled for AVX-512 (after their `#pragma GCC target("avx512f,...")` and
 * <immintrin.h>): only kernels_avx512.c and kernels_amx.c include this. */
#ifndef FLASHMOE_KERNELS_AVX512_INLINE_H
#define FLASHMOE_KERNELS_AVX512_INLINE_H

/* The first n of 16 lanes. */
static inline __attribute__((always_inline)) __mmask16 mask16(int n) {
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* 16 x 16 transpose of 32-bit lanes: on return v[k] holds lane k of the input vectors 0..15. Within
 * 128-bit lanes (dwords, then qwords), then the lanes themselves: 64 shuffles. Fully unrolled, so that
 * the arrays stay in registers. */
static inline __attribute__((always_inline)) void transpose16_si(__m512i v[16]) {
    __m512i t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) { /* lane L: dwords 4L, 4L + 1 (lo) or 4L + 2, 4L + 3 (hi) of inputs 2i, 2i + 1 */
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) { /* u[4k + c], lane L: dword 4L + c of inputs 4k .. 4k + 3 */
        u[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
        u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) { /* dword 4L + c: lane L of u[c], u[4 + c], u[8 + c], u[12 + c] */
        __m512i ab02 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), ab13 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
        __m512i cd02 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
        __m512i cd13 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        v[c] = _mm512_shuffle_i32x4(ab02, cd02, 0x88);
        v[4 + c] = _mm512_shuffle_i32x4(ab13, cd13, 0x88);
        v[8 + c] = _mm512_shuffle_i32x4(ab02, cd02, 0xdd);
        v[12 + c] = _mm512_shuffle_i32x4(ab13, cd13, 0xdd);
    }
}

/* Words m0 .. m0 + 15 (those below nw; the rest zero) of rows 0 .. nr - 1 (the rest zero), rows wpr words
 * apart from row: on return v[m] holds word m0 + m of the 16 rows, lane i row i. The weight panels of the
 * int16 and AMX GEMMs start from this. */
static inline __attribute__((always_inline)) void rows16_words(__m512i v[16], const int32_t *row, size_t wpr,
                                                              int nr, int m0, int nw) {
    __mmask16 lm = mask16(nw - m0);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        v[i] = i < nr ? _mm512_maskz_loadu_epi32(lm, row + (size_t)i * wpr + m0) : _mm512_setzero_si512();
    transpose16_si(v);
}

#endif
