/* Memory read bandwidth probe (see membw.h). A plain scalar loop understates what a core can stream:
 * on the Sapphire Rapids host, 15-17 GB/s on two threads against 19-23 with vector loads, and on the
 * Zen 3 development machine 17-18 against 20-22 (BENCHMARKS.md, series 11). The decode kernels read
 * with vector loads and prefetch ahead, so the floor must be set by a probe that does too. */
#include "membw.h"

#include <stdlib.h>

#include "util.h"

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2"))) static uint64_t read_avx2(const char *p, size_t n, size_t ahead) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 256) {
        if (ahead)
            for (int k = 0; k < 256; k += 64) _mm_prefetch(p + i + ahead + k, _MM_HINT_T0);
        for (int k = 0; k < 256; k += 128) {
            s0 = _mm256_xor_si256(s0, _mm256_load_si256((const __m256i *)(p + i + k)));
            s1 = _mm256_xor_si256(s1, _mm256_load_si256((const __m256i *)(p + i + k + 32)));
            s2 = _mm256_xor_si256(s2, _mm256_load_si256((const __m256i *)(p + i + k + 64)));
            s3 = _mm256_xor_si256(s3, _mm256_load_si256((const __m256i *)(p + i + k + 96)));
        }
    }
    __m256i s = _mm256_xor_si256(_mm256_xor_si256(s0, s1), _mm256_xor_si256(s2, s3));
    __m128i h = _mm_xor_si128(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return (uint64_t)_mm_cvtsi128_si64(h) ^ (uint64_t)_mm_extract_epi64(h, 1);
}

__attribute__((target("avx512f"))) static uint64_t read_avx512(const char *p, size_t n, size_t ahead) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 256) {
        if (ahead)
            for (int k = 0; k < 256; k += 64) _mm_prefetch(p + i + ahead + k, _MM_HINT_T0);
        s0 = _mm512_xor_si512(s0, _mm512_load_si512((const void *)(p + i)));
        s1 = _mm512_xor_si512(s1, _mm512_load_si512((const void *)(p + i + 64)));
        s2 = _mm512_xor_si512(s2, _mm512_load_si512((const void *)(p + i + 128)));
        s3 = _mm512_xor_si512(s3, _mm512_load_si512((const void *)(p + i + 192)));
    }
    __m512i s = _mm512_xor_si512(_mm512_xor_si512(s0, s1), _mm512_xor_si512(s2, s3));
    uint64_t w[8], r = 0;
    _mm512_storeu_si512((void *)w, s);
    for (int i = 0; i < 8; i++) r ^= w[i];
    return r;
}
#endif

static uint64_t read_scalar(const char *p, size_t n) {
    const uint64_t *q = (const uint64_t *)(const void *)p;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i < n / 8; i += 4) s0 ^= q[i], s1 ^= q[i + 1], s2 ^= q[i + 2], s3 ^= q[i + 3];
    return s0 ^ s1 ^ s2 ^ s3;
}

uint64_t membw_read(kernel_level lv, const void *p, size_t n, size_t ahead) {
#if defined(__x86_64__)
    if (lv >= KERNEL_AVX512) return read_avx512(p, n, ahead);
    if (lv == KERNEL_AVX2) return read_avx2(p, n, ahead);
#endif
    (void)ahead;
    return read_scalar(p, n);
}

typedef struct {
    const char *buf;
    size_t per, ahead; /* bytes per task, a multiple of 256 */
    kernel_level lv;
    uint64_t sums[64];
} read_job;

static void read_task(void *ctx, int t, int n_tasks) {
    (void)n_tasks;
    read_job *j = ctx;
    j->sums[t % 64] ^= membw_read(j->lv, j->buf + j->per * (size_t)t, j->per, j->ahead);
}

double membw_measure(pool *p, size_t bytes) {
    bytes = bytes / 4096 * 4096;
    char *buf = aligned_alloc(4096, bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < bytes / 8; i++) ((uint64_t *)(void *)buf)[i] = i * 0x9e3779b97f4a7c15ull;
    kernel_level lv = KERNEL_SCALAR; /* the widest loads this CPU and build have */
    for (int l = KERNEL_AVX2; l <= KERNEL_AVX512; l++)
        if (kernel_level_available((kernel_level)l)) lv = (kernel_level)l;
    int n = pool_size(p);
    read_job j = {.buf = buf, .per = bytes / (size_t)n / 256 * 256, .lv = lv};
    double read = (double)j.per * n, best = 0;
    const size_t aheads[] = {0, 4096};
    for (int a = 0; a < 2; a++) {
        j.ahead = lv == KERNEL_SCALAR ? 0 : aheads[a];
        for (int r = 0; r < 3; r++) {
            double t0 = util_now_seconds();
            pool_run(p, read_task, &j, n);
            double dt = util_now_seconds() - t0;
            if (read / dt > best) best = read / dt;
        }
    }
    free(buf);
    return best;
}
