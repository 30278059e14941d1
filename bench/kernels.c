/* Kernel throughput: GB/s of weights read per dtype, SIMD level and thread count, at the shapes of
 * Qwen3.5 experts. "mem" cycles through enough copies of the matrix (>= 512 MB by default) that
 * every call reads from DRAM; "hot" repeats one matrix that stays in cache (the compute limit).
 * Built and run by bench/kernels.sh, not by the Makefile. Numbers on a shared machine are noisy.
 *
 *   kernels [-m MB] [-t SECONDS] [-l LEVEL]... [-q]
 * -q: the short table only (Q4/Q8 matvec at 1024 x 4096, 1 and 2 threads; matmat at n = 1, 2, 8, 32, 128). */
#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

typedef struct {
    qmat *m;    /* copies, each with its own buffers */
    int count;
    size_t bytes; /* of one copy: data + scales + biases */
} mat_set;

static mat_set mats_make(dtype t, int rows, int cols, int group, size_t min_total) {
    mat_set s = {0};
    qmat proto = {.type = t, .rows = rows, .cols = cols, .group = dtype_is_quant(t) ? group : 0};
    size_t db = qmat_data_bytes(&proto), ng = qmat_group_count(&proto);
    s.bytes = db + 4 * ng;
    s.count = (int)((min_total + s.bytes - 1) / s.bytes);
    if (s.count < 1) s.count = 1;
    s.m = calloc(s.count, sizeof(qmat));
    for (int i = 0; i < s.count; i++) {
        qmat m = proto;
        uint32_t *d = malloc(db);
        for (size_t k = 0; k < db / 4; k++) d[k] = rnd();
        if (t == DTYPE_F32) for (size_t k = 0; k < db / 4; k++) ((float *)d)[k] = (rnd() % 2001 - 1000) * 1e-4f;
        if (t == DTYPE_F16 || t == DTYPE_BF16)
            for (size_t k = 0; k < db / 2; k++) {
                float v = (rnd() % 2001 - 1000) * 1e-4f;
                ((uint16_t *)d)[k] = t == DTYPE_F16 ? f32_to_f16(v) : f32_to_bf16(v);
            }
        m.data = d;
        if (ng) {
            uint16_t *sc = malloc(2 * ng), *bi = malloc(2 * ng);
            for (size_t g = 0; g < ng; g++) {
                sc[g] = f32_to_bf16(0.001f);
                bi[g] = f32_to_bf16(-0.008f);
            }
            m.scales = sc;
            m.biases = bi;
        }
        s.m[i] = m;
    }
    return s;
}

static void mats_free(mat_set *s) {
    for (int i = 0; i < s->count; i++) {
        free((void *)s->m[i].data);
        free((void *)s->m[i].scales);
        free((void *)s->m[i].biases);
    }
    free(s->m);
}

/* GB/s of kernel_matvec_mt over the set (round-robin), for about `secs` seconds. */
static double bench_matvec(pool *p, const mat_set *s, int use, const float *x, float *y, double secs) {
    int calls = 0, i = 0;
    kernel_matvec_mt(p, y, &s->m[0], x); /* warm-up */
    double t0 = now_s(), t;
    do {
        for (int k = 0; k < 8; k++) {
            kernel_matvec_mt(p, y, &s->m[i], x);
            i = (i + 1) % use;
            calls++;
        }
        t = now_s() - t0;
    } while (t < secs);
    return (double)calls * s->bytes / t / 1e9;
}

/* Giga multiply-adds per second of kernel_matmat_rows with n x vectors, one thread, hot. */
static double bench_matmat(const qmat *m, int n, const float *X, float *Y, double secs) {
    int calls = 0;
    double t0 = now_s(), t;
    do {
        kernel_matmat_rows(Y, m, X, n, 0, m->rows);
        calls++;
        t = now_s() - t0;
    } while (t < secs);
    return (double)calls * n * m->rows * m->cols / t / 1e9;
}

/* Baseline: GB/s of a plain read of `bytes` (summing 64-bit words, 4 independent sums), 1 thread. */
static double bench_read(size_t bytes, double secs) {
    uint64_t *buf = malloc(bytes), sum = 0;
    size_t n = bytes / 8;
    for (size_t i = 0; i < n; i++) buf[i] = i;
    int passes = 0;
    double t0 = now_s(), t;
    do {
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t i = 0; i + 4 <= n; i += 4) s0 += buf[i], s1 += buf[i + 1], s2 += buf[i + 2], s3 += buf[i + 3];
        sum += s0 + s1 + s2 + s3;
        passes++;
        t = now_s() - t0;
    } while (t < secs);
    free(buf);
    if (sum == 42) printf(" "); /* keep the sum alive */
    return (double)passes * bytes / t / 1e9;
}

int main(int argc, char **argv) {
    size_t mem_mb = 512;
    double secs = 0.25;
    int levels[KERNEL_LEVEL_COUNT], nlevels = 0, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) mem_mb = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) secs = atof(argv[++i]);
        else if (!strcmp(argv[i], "-q")) quick = 1;
        else if (!strcmp(argv[i], "-l") && i + 1 < argc) {
            const char *name = argv[++i];
            for (int l = 0; l < KERNEL_LEVEL_COUNT; l++)
                if (!strcmp(name, kernel_level_name(l)) && nlevels < KERNEL_LEVEL_COUNT) levels[nlevels++] = l;
        } else {
            fprintf(stderr, "usage: %s [-m MB] [-t SECONDS] [-l scalar|avx2|avx512|amx]... [-q]\n", argv[0]);
            return 2;
        }
    }
    if (!nlevels)
        for (int l = 0; l < KERNEL_LEVEL_COUNT; l++)
            if (kernel_level_available(l)) levels[nlevels++] = l;

    pool *p2 = pool_create(2);
    struct { int rows, cols; const char *what; } shapes[] = {
        {512, 2048, "35B expert gate/up"},
        {2048, 512, "35B expert down"},
        {1024, 4096, "397B expert gate/up"},
    };
    dtype types[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_Q8, DTYPE_Q4, DTYPE_Q3, DTYPE_Q2};
    float *x = malloc(sizeof(float) * 8 * 4096), *y = malloc(sizeof(float) * 8 * 4096);
    for (int i = 0; i < 8 * 4096; i++) x[i] = (rnd() % 2001 - 1000) * 1e-3f;

    printf("plain read of %zu MB, one thread: %.2f GB/s\n\n", mem_mb, bench_read(mem_mb << 20, 2 * secs));
    if (quick) {
        dtype qt[] = {DTYPE_Q8, DTYPE_Q4, DTYPE_Q2};
        float *X = malloc(sizeof(float) * 128 * 4096), *Y = malloc(sizeof(float) * 128 * 1024);
        for (int i = 0; i < 128 * 4096; i++) X[i] = (rnd() % 2001 - 1000) * 1e-3f;
        printf("matvec 1024x4096 g64, GB/s of weights; matmat one thread, hot: G multiply-adds/s\n");
        printf("%-5s %-7s %7s %7s %7s %7s | %6s %6s %6s %6s %6s\n", "dtype", "level", "mem 1t", "mem 2t", "hot 1t",
               "hot 2t", "n=1", "n=2", "n=8", "n=32", "n=128");
        for (int ti = 0; ti < 3; ti++) {
            mat_set s = mats_make(qt[ti], 1024, 4096, 64, mem_mb << 20);
            for (int li = 0; li < nlevels; li++) {
                if (levels[li] == KERNEL_SCALAR) continue;
                kernel_level_force(levels[li]);
                double m1 = bench_matvec(NULL, &s, s.count, x, y, secs), m2 = bench_matvec(p2, &s, s.count, x, y, secs);
                double h1 = bench_matvec(NULL, &s, 1, x, y, secs), h2 = bench_matvec(p2, &s, 1, x, y, secs);
                double mm[5];
                int ns[5] = {1, 2, 8, 32, 128};
                for (int k = 0; k < 5; k++) mm[k] = bench_matmat(&s.m[0], ns[k], X, Y, secs);
                printf("%-5s %-7s %7.2f %7.2f %7.2f %7.2f | %6.2f %6.2f %6.2f %6.2f %6.2f\n", dtype_name(qt[ti]),
                       kernel_level_name(levels[li]), m1, m2, h1, h2, mm[0], mm[1], mm[2], mm[3], mm[4]);
                fflush(stdout);
            }
            mats_free(&s);
        }
        free(X);
        free(Y);
        pool_free(p2);
        free(x);
        free(y);
        return 0;
    }
    printf("matvec GB/s of weights (data + bf16 scales/biases, group 64); mem = from DRAM (%zu MB of "
           "copies), hot = one matrix in cache\n", mem_mb);
    printf("%-22s %-5s %-7s %8s %8s %8s %8s\n", "shape (rows x cols)", "dtype", "level", "mem 1t", "mem 2t",
           "hot 1t", "hot 2t");
    for (int si = 0; si < 3; si++) {
        for (int ti = 0; ti < 7; ti++) {
            dtype t = types[ti];
            mat_set s = mats_make(t, shapes[si].rows, shapes[si].cols, 64, mem_mb << 20);
            for (int li = 0; li < nlevels; li++) {
                kernel_level_force(levels[li]);
                double tm = levels[li] == KERNEL_SCALAR ? secs / 4 : secs;
                double m1 = bench_matvec(NULL, &s, s.count, x, y, tm);
                double m2 = bench_matvec(p2, &s, s.count, x, y, tm);
                double h1 = bench_matvec(NULL, &s, 1, x, y, tm);
                double h2 = bench_matvec(p2, &s, 1, x, y, tm);
                char shape[32];
                snprintf(shape, sizeof shape, "%dx%d", shapes[si].rows, shapes[si].cols);
                printf("%-22s %-5s %-7s %8.2f %8.2f %8.2f %8.2f\n", shape, dtype_name(t),
                       kernel_level_name(levels[li]), m1, m2, h1, h2);
                fflush(stdout);
            }
            mats_free(&s);
        }
        printf("  (%s)\n", shapes[si].what);
    }

    printf("\nmatmat (Y = X W^T), one thread, hot, 1024x4096: G multiply-adds/s for n x vectors\n");
    printf("%-5s %-7s %8s %8s %8s\n", "dtype", "level", "n=1", "n=4", "n=8");
    for (int ti = 0; ti < 7; ti++) {
        mat_set s = mats_make(types[ti], 1024, 4096, 64, 0);
        for (int li = 0; li < nlevels; li++) {
            if (levels[li] == KERNEL_SCALAR) continue;
            kernel_level_force(levels[li]);
            double a = bench_matmat(&s.m[0], 1, x, y, secs), b = bench_matmat(&s.m[0], 4, x, y, secs),
                   c = bench_matmat(&s.m[0], 8, x, y, secs);
            printf("%-5s %-7s %8.2f %8.2f %8.2f\n", dtype_name(types[ti]), kernel_level_name(levels[li]), a, b, c);
        }
        mats_free(&s);
    }

    printf("\nfused expert (35B shapes, Q4 g64, hot, one thread): swiglu_gate_up 512x2048 x2 + accum 2048x512\n");
    mat_set g = mats_make(DTYPE_Q4, 512, 2048, 64, 0), u = mats_make(DTYPE_Q4, 512, 2048, 64, 0),
            d = mats_make(DTYPE_Q4, 2048, 512, 64, 0);
    for (int li = 0; li < nlevels; li++) {
        kernel_level_force(levels[li]);
        int calls = 0;
        double t0 = now_s(), t;
        do {
            kernel_swiglu_gate_up(y, &g.m[0], &u.m[0], x, 0, 512);
            kernel_matvec_accum_rows(x + 4096, &d.m[0], y, 0.1f, 0, 2048);
            calls++;
            t = now_s() - t0;
        } while (t < secs);
        printf("%-7s %8.1f us per expert (%.2f GB/s)\n", kernel_level_name(levels[li]), t / calls * 1e6,
               calls * 3.0 * g.bytes / t / 1e9);
    }
    mats_free(&g); mats_free(&u); mats_free(&d);
    pool_free(p2);
    free(x);
    free(y);
    return 0;
}
