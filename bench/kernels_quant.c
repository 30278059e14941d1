/* Quantization error: RMSE of min/max against MSE-optimised scales and biases, per format and group,
 * on Gaussian and on heavy-tailed (Student's t, 3 degrees of freedom) data, and the cost of the
 * optimisation. Built and run by bench/kernels.sh. */
#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t rng_state = 42;
static uint64_t rng_u64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uniform(void) { return ((rng_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static double normal(void) { return sqrt(-2 * log(uniform())) * cos(6.283185307179586 * uniform()); }
static double student3(void) {
    double c = 0;
    for (int i = 0; i < 3; i++) { double n = normal(); c += n * n; }
    return normal() / sqrt(c / 3);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(void) {
    const int rows = 256, cols = 1024;
    size_t n = (size_t)rows * cols;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    uint32_t *words = malloc(n);
    uint16_t *s = malloc(n / 32 * 2), *b = malloc(n / 32 * 2);
    dtype types[] = {DTYPE_Q8, DTYPE_Q4, DTYPE_Q3, DTYPE_Q2};
    int groups[] = {32, 64, 128};
    printf("RMSE of round trip, %d x %d values, std 0.02 (t3 scaled by 0.02)\n", rows, cols);
    printf("%-11s %-4s %5s %12s %12s %8s %10s\n", "data", "fmt", "group", "min/max", "optimised", "lower",
           "opt ms/Mv");
    for (int dist = 0; dist < 2; dist++) {
        for (size_t i = 0; i < n; i++) x[i] = (float)(0.02 * (dist ? student3() : normal()));
        for (int ti = 0; ti < 4; ti++)
            for (int gi = 0; gi < 3; gi++) {
                double rmse[2], secs = 0;
                for (int how = 0; how < 2; how++) {
                    double t0 = now_s();
                    quant_rows(types[ti], how ? QUANT_MSE : QUANT_MINMAX, x, rows, cols, groups[gi], words, s, b);
                    if (how) secs = now_s() - t0;
                    qmat m = {.type = types[ti], .rows = rows, .cols = cols, .data = words, .scales = s,
                              .biases = b, .group = groups[gi]};
                    quant_dequantize(&m, y);
                    double e = 0;
                    for (size_t i = 0; i < n; i++) e += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
                    rmse[how] = sqrt(e / n);
                }
                printf("%-11s %-4s %5d %12.4e %12.4e %7.1f%% %10.0f\n", dist ? "student-t3" : "gaussian",
                       dtype_name(types[ti]), groups[gi], rmse[0], rmse[1], 100 * (1 - rmse[1] / rmse[0]),
                       secs * 1e3 / (n / 1e6));
            }
    }
    free(x); free(y); free(words); free(s); free(b);
    return 0;
}
