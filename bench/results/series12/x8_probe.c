/* Experiment (series 12, not part of the product): how fast a Q4 matrix-vector row kernel runs when x is
 * rounded to int8 per group (vpdpbusd, 32 multiply-adds per 256-bit instruction) instead of int16 (the
 * product's path: vpdpwssd, 16), and how much larger its error is. One thread; Q4, group 64.
 *
 *   cc -O2 -std=c11 -D_GNU_SOURCE -pthread -Isrc bench/results/series12/x8_probe.c src/kernels*.c \
 *      src/threadpool.c src/quant.c src/util.c -o /tmp/x8_probe -lm && /tmp/x8_probe
 *
 * int8 x per group g of 64 values: d = max|x| / 127, xq = round(x / d). The Q4 word m of a row holds
 * values 8m..8m+7 as nibbles, LSB first, so byte b of it holds 8m+2b (low nibble) and 8m+2b+1 (high).
 * vpdpbusd sums the 4 byte products of each dword, so x is stored per group as two 32-byte vectors:
 * dword m of the first holds x at 8m, 8m+2, 8m+4, 8m+6, of the second x at 8m+1, 8m+3, 8m+5, 8m+7. */
#pragma GCC target("avx2,fma,avx512f,avx512vl,avx512vnni")
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kernels_impl.h"
#include "util.h"

#define G 64
#ifndef PF
#define PF 8192 /* bytes ahead the int8 kernel prefetches (0: none) */
#endif

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}
static float frand(void) { return (float)((rnd() % 2000001) - 1000000) * 1e-6f; }

typedef struct {
    int8_t *xq;   /* per group: 32 bytes of even values, 32 of odd ones (see the top) */
    float *sd;    /* per group d (times the row's scale in the kernel) */
    float *xsum;  /* per group sum of the f32 x */
} x8;

static void x8_prepare(x8 *p, const float *x, int n) {
    for (int g = 0; g < n / G; g++) {
        const float *xg = x + g * G;
        float m = 0, s = 0;
        for (int c = 0; c < G; c++) m = fmaxf(m, fabsf(xg[c])), s += xg[c];
        float d = m / 127.0f, inv = m > 0 ? 127.0f / m : 0.0f;
        p->sd[g] = d;
        p->xsum[g] = s;
        int8_t *o = p->xq + g * 64;
        for (int w = 0; w < 8; w++)
            for (int b = 0; b < 4; b++) {
                o[w * 4 + b] = (int8_t)lrintf(xg[8 * w + 2 * b] * inv);
                o[32 + w * 4 + b] = (int8_t)lrintf(xg[8 * w + 2 * b + 1] * inv);
            }
    }
}

/* y[r] = W[r] . x for rows [r0, r1), int8 x. */
static void rows_q4_x8(const qmat *w, const x8 *p, int r0, int r1, float *y) {
    const int ng = w->cols / G;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int r = r0; r < r1; r++) {
        const uint8_t *wb = (const uint8_t *)w->data + (size_t)r * w->cols / 2;
        const uint16_t *sc = w->scales + (size_t)r * ng, *bi = w->biases + (size_t)r * ng;
        __m256 tot0 = _mm256_setzero_ps(), tot1 = _mm256_setzero_ps(), bv = _mm256_setzero_ps();
        _Alignas(32) float sdr[64];
        for (int g = 0; g < ng; g += 8) { /* s_g d_g and the bias term, 8 groups at a time */
            __m256 s8 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sc + g))), 16));
            __m256 b8 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(bi + g))), 16));
            _mm256_store_ps(sdr + g, _mm256_mul_ps(s8, _mm256_loadu_ps(p->sd + g)));
            bv = _mm256_fmadd_ps(b8, _mm256_loadu_ps(p->xsum + g), bv);
        }
        for (int g = 0; g < ng; g += 2) {
            if (PF) _mm_prefetch((const char *)(wb + g * 32 + PF), _MM_HINT_T0);
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(wb + g * 32));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(wb + g * 32 + 32));
            __m256i a0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(w0, m4),
                                             _mm256_load_si256((const __m256i *)(p->xq + g * 64)));
            a0 = _mm256_dpbusd_epi32(a0, _mm256_and_si256(_mm256_srli_epi16(w0, 4), m4),
                                     _mm256_load_si256((const __m256i *)(p->xq + g * 64 + 32)));
            __m256i a1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(w1, m4),
                                             _mm256_load_si256((const __m256i *)(p->xq + g * 64 + 64)));
            a1 = _mm256_dpbusd_epi32(a1, _mm256_and_si256(_mm256_srli_epi16(w1, 4), m4),
                                     _mm256_load_si256((const __m256i *)(p->xq + g * 64 + 96)));
            tot0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), _mm256_set1_ps(sdr[g]), tot0);
            tot1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_set1_ps(sdr[g + 1]), tot1);
        }
        __m256 t = _mm256_add_ps(_mm256_add_ps(tot0, tot1), bv);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        y[r] = _mm_cvtss_f32(h);
    }
}

static qmat make_q4(int rows, int cols) {
    qmat m = {.type = DTYPE_Q4, .rows = rows, .cols = cols, .group = G};
    uint32_t *d = malloc((size_t)rows * cols / 2);
    for (size_t k = 0; k < (size_t)rows * cols / 8; k++) d[k] = rnd();
    size_t ng = (size_t)rows * cols / G;
    uint16_t *sc = malloc(2 * ng), *bi = malloc(2 * ng);
    for (size_t g = 0; g < ng; g++) {
        float s = 0.002f + 0.01f * (rnd() % 1000) / 1000.0f;
        sc[g] = f32_to_bf16(s);
        bi[g] = f32_to_bf16(-7.5f * s + 0.001f * frand());
    }
    m.data = d, m.scales = sc, m.biases = bi;
    return m;
}

int main(void) {
    const int R = 512, C = 2048, copies = 1024; /* 512 MB of copies for the DRAM rate */
    float *x = malloc(sizeof(float) * C), *y16 = malloc(sizeof(float) * R), *y8 = malloc(sizeof(float) * R);
    for (int c = 0; c < C; c++) x[c] = frand() * (c % 97 == 0 ? 8.0f : 1.0f); /* a few outliers, as in activations */
    x8 p = {aligned_alloc(64, C), malloc(sizeof(float) * C / G), malloc(sizeof(float) * C / G)};
    qmat *ms = malloc(sizeof(qmat) * copies);
    for (int i = 0; i < copies; i++) ms[i] = make_q4(R, C);
    size_t bytes = (size_t)R * C / 2 + (size_t)R * C / G * 4;

    /* error against a double reference, relative to sum |w x| per row */
    x8_prepare(&p, x, C);
    kernel_matvec(y16, &ms[0], x);
    rows_q4_x8(&ms[0], &p, 0, R, y8);
    double e16 = 0, e8 = 0, rms16 = 0, rms8 = 0, rmsy = 0;
    for (int r = 0; r < R; r++) {
        double ref = 0, mag = 0;
        for (int c = 0; c < C; c++) {
            double wv = kernel_weight(&ms[0], r, c);
            ref += wv * x[c], mag += fabs(wv * x[c]);
        }
        e16 = fmax(e16, fabs(y16[r] - ref) / mag), e8 = fmax(e8, fabs(y8[r] - ref) / mag);
        rms16 += (y16[r] - ref) * (y16[r] - ref), rms8 += (y8[r] - ref) * (y8[r] - ref), rmsy += ref * ref;
    }
    printf("level %s; Q4 %dx%d g%d\n", kernel_level_name(kernel_level_active()), R, C, G);
    printf("error / sum|w x|, largest over rows: int16 x %.2e, int8 x %.2e\n", e16, e8);
    printf("rms error / rms y: int16 x %.2e, int8 x %.2e\n", sqrt(rms16 / rmsy), sqrt(rms8 / rmsy));

    for (int round = 0; round < 3; round++)
        for (int mem = 0; mem < 2; mem++) {
            int use = mem ? copies : 1;
            for (int v = 0; v < 3; v++) {
                int calls = 0, i = 0;
                double t0 = util_now_seconds(), t;
                do {
                    for (int k = 0; k < 16; k++) {
                        if (v) {
                            if (v == 2) x8_prepare(&p, x, C); /* per call (scalar here; decode would vectorize it) */
                            rows_q4_x8(&ms[i], &p, 0, R, y8);
                        } else
                            kernel_matvec(y16, &ms[i], x);
                        i = (i + 1) % use;
                        calls++;
                    }
                    t = util_now_seconds() - t0;
                } while (t < 0.5);
                printf("round %d %s %s x: %.2f GB/s\n", round, mem ? "DRAM" : "hot (L2)", v == 2 ? "int8 (+ scalar x prep per call)" : v ? "int8" : "int16",
                       (double)calls * bytes / t / 1e9);
            }
        }
    return 0;
}
