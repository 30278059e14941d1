/* Inline helpers for the files compiled for AVX-512 (after their `#pragma GCC target("avx512f,...")` and
 * <immintrin.h>): only kernels_avx512.c and kernels_amx.c include this. */
#ifndef FLASHMOE_KERNELS_AVX512_INLINE_H
#define FLASHMOE_KERNELS_AVX512_INLINE_H

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

#endif
