/* Quantization: the packed layout is MLX's, min/max stays within its derived error bound, the
 * least-squares fit is never worse than min/max (per group), and the kernels read what was written. */
#include "kernels.h"
#include "quant.h"
#include "test.h"

#include <math.h>

static uint64_t rng_state = 12345;
static uint64_t rng_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_uniform(void) { return ((rng_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0); } /* (0, 1) */
static double rng_normal(void) { return sqrt(-2 * log(rng_uniform())) * cos(6.283185307179586 * rng_uniform()); }
/* Student's t with 3 degrees of freedom: heavy tails, like weight outliers. */
static double rng_student3(void) {
    double z = rng_normal(), c = 0;
    for (int i = 0; i < 3; i++) { double n = rng_normal(); c += n * n; }
    return z / sqrt(c / 3);
}

enum { DIST_GAUSS, DIST_HEAVY, DIST_OFFSET, DIST_CONST, DIST_COUNT };
static const char *DIST_NAMES[] = {"gaussian", "student-t3", "offset", "constant"};

static void fill(float *x, size_t n, int dist) {
    for (size_t i = 0; i < n; i++) {
        switch (dist) {
        case DIST_GAUSS: x[i] = (float)(0.02 * rng_normal()); break;
        case DIST_HEAVY: x[i] = (float)(0.02 * rng_student3()); break;
        case DIST_OFFSET: x[i] = (float)(3.0 + 0.01 * rng_normal()); break; /* |min| >> range: bias rounding */
        default: x[i] = 0.7f; break;
        }
    }
}

static const dtype QTYPES[] = {DTYPE_Q8, DTYPE_Q4, DTYPE_Q3, DTYPE_Q2};
static const int GROUPS[] = {32, 64, 128};

typedef struct {
    qmat m;
    uint32_t *words;
    uint16_t *scales, *biases;
} qbuf;

static qbuf quantize(dtype t, quant_method how, const float *x, int rows, int cols, int group) {
    qbuf q = {0};
    size_t n = (size_t)rows * cols;
    q.words = malloc(quant_words(t, n) * 4);
    q.scales = malloc(n / group * 2);
    q.biases = malloc(n / group * 2);
    int rc = quant_rows(t, how, x, rows, cols, group, q.words, q.scales, q.biases);
    CHECK(rc == 0, "quant_rows(%s, %d x %d, group %d) failed", dtype_name(t), rows, cols, group);
    q.m = (qmat){.type = t, .rows = rows, .cols = cols, .data = q.words, .scales = q.scales, .biases = q.biases,
                 .group = group};
    return q;
}

static void qbuf_free(qbuf *q) { free(q->words); free(q->scales); free(q->biases); }

/* Values equal to their own level (s = 1, b = 0): the words must be MLX's packing of those levels. */
static void test_layout_is_mlx(void) {
    for (int ti = 0; ti < 4; ti++) {
        dtype t = QTYPES[ti];
        int bits = dtype_bits(t), levels = (1 << bits) - 1, n = 64;
        float x[64];
        uint8_t q[64];
        for (int i = 0; i < n; i++) /* every group of 32 holds 0 and the top level, so s = 1, b = 0 */
            q[i] = (uint8_t)(i % 32 == 0 ? 0 : i % 32 == 1 ? (uint64_t)levels : rng_u64() % (uint64_t)(levels + 1));
        for (int i = 0; i < n; i++) x[i] = q[i];
        uint32_t words[16];
        uint16_t s[2], b[2];
        CHECK(quant_rows(t, QUANT_MINMAX, x, 1, n, 32, words, s, b) == 0, "quant_rows failed");
        CHECK(bf16_to_f32(s[0]) == 1.0f && bf16_to_f32(b[0]) == 0.0f && s[1] == s[0] && b[1] == b[0], "%s: s %g b %g", dtype_name(t),
              bf16_to_f32(s[0]), bf16_to_f32(b[0]));
        /* MLX: 2/4/8 bits: value k of a uint32 at bits k*bits; 3 bits: 8 values per 3 bytes, value k at
         * bit 3k of the little-endian 24-bit pack. */
        uint8_t want[64];
        if (bits == 3) {
            for (int p = 0; p < n / 8; p++) {
                uint32_t v = 0;
                for (int k = 0; k < 8; k++) v |= (uint32_t)q[8 * p + k] << (3 * k);
                want[3 * p] = v & 0xff, want[3 * p + 1] = (v >> 8) & 0xff, want[3 * p + 2] = v >> 16;
            }
        } else {
            int per = 32 / bits;
            for (int w = 0; w < n / per; w++) {
                uint32_t v = 0;
                for (int k = 0; k < per; k++) v |= (uint32_t)q[per * w + k] << (bits * k);
                memcpy(want + 4 * w, &v, 4);
            }
        }
        CHECK(!memcmp(words, want, n * bits / 8), "%s: packed bytes differ from MLX's layout", dtype_name(t));
    }
}

/* The min/max bound, per element, for a group with minimum lo, maximum hi, L = 2^bits - 1:
 * s = (hi - lo) / L, b = lo; stored s' = bf16(s), b' = bf16(b). bf16 keeps 8 significant bits, so
 * rounding to nearest is off by at most 2^-8 relative: |s' - s| <= 2^-8 s, |b' - b| <= 2^-8 |b|.
 * q = round((v - b') / s') clamped to [0, L]:
 *  - not clamped: |v - (q s' + b')| <= s'/2 <= (1 + 2^-8) s / 2;
 *  - clamped at L (v - b' > (L + 1/2) s'): v <= hi = b + L s, so the error v - L s' - b' is at most
 *    (b - b') + L (s - s') <= 2^-8 (|b| + L s);
 *  - clamped at 0: v >= lo = b, so the error b' - v <= b' - b <= 2^-8 |b|.
 * Plus f32 rounding in computing s, (v - b') / s' and q s' + b': a few ulp of |v| + |b| + |hi|.
 * So |err| <= (1 + 2^-8) s / 2 + 2^-8 (|b| + L s) + 4 * 2^-24 (|v| + |lo| + |hi|).
 * The clamp terms matter: for data far from zero (|b| >> s), bf16(b) alone moves values by up to
 * 2^-8 |b|, more than s/2 (the "offset" case below). */
static double minmax_bound(float v, float lo, float hi, int bits) {
    double L = (1 << bits) - 1, s = ((double)hi - lo) / L, u = ldexp(1, -24), e = ldexp(1, -8);
    return (1 + e) * s / 2 + e * (fabs(lo) + L * s) + 4 * u * (fabs(v) + fabs(lo) + fabs(hi));
}

static void test_minmax_within_bound(void) {
    int rows = 8, cols = 384;
    float *x = malloc(sizeof(float) * rows * cols), *y = malloc(sizeof(float) * rows * cols);
    for (int dist = 0; dist < DIST_COUNT; dist++)
        for (int ti = 0; ti < 4; ti++)
            for (int gi = 0; gi < 3; gi++) {
                int group = GROUPS[gi], bits = dtype_bits(QTYPES[ti]), bad = 0;
                fill(x, (size_t)rows * cols, dist);
                qbuf q = quantize(QTYPES[ti], QUANT_MINMAX, x, rows, cols, group);
                quant_dequantize(&q.m, y);
                double worst = 0; /* largest err / bound */
                for (int g = 0; g < rows * cols / group; g++) {
                    const float *xg = x + (size_t)g * group;
                    float lo = xg[0], hi = xg[0];
                    for (int i = 1; i < group; i++) lo = fminf(lo, xg[i]), hi = fmaxf(hi, xg[i]);
                    for (int i = 0; i < group; i++) {
                        size_t k = (size_t)g * group + i;
                        double err = fabs((double)x[k] - y[k]), bound = minmax_bound(x[k], lo, hi, bits);
                        if (err / bound > worst) worst = err / bound;
                        if (err > bound && bad++ < 3)
                            CHECK(err <= bound, "%s g%d %s: x %.9g -> %.9g, err %.3g > bound %.3g",
                                  dtype_name(QTYPES[ti]), group, DIST_NAMES[dist], x[k], y[k], err, bound);
                    }
                }
                CHECK(bad == 0, "%s g%d %s: %d values outside the bound", dtype_name(QTYPES[ti]), group,
                      DIST_NAMES[dist], bad);
                /* and the bound is not vacuous: some value comes near it (Q8's 2^-8 L s term makes it
                 * ~1.5 s where errors reach ~s/2, hence 0.2 rather than ~0.5) */
                CHECK(worst > 0.2 || dist == DIST_CONST, "%s g%d %s: bound is loose (worst err/bound %.3f)",
                      dtype_name(QTYPES[ti]), group, DIST_NAMES[dist], worst);
                qbuf_free(&q);
            }
    free(x);
    free(y);
}

static double sse(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return s;
}

/* QUANT_MSE never loses to min/max, group by group; print the RMSE of both. */
static void test_mse_not_worse(void) {
    int rows = 16, cols = 512;
    size_t n = (size_t)rows * cols;
    float *x = malloc(sizeof(float) * n), *yn = malloc(sizeof(float) * n), *yo = malloc(sizeof(float) * n);
    for (int dist = 0; dist < DIST_COUNT; dist++)
        for (int ti = 0; ti < 4; ti++)
            for (int gi = 0; gi < 3; gi++) {
                int group = GROUPS[gi], worse = 0;
                fill(x, n, dist);
                qbuf qn = quantize(QTYPES[ti], QUANT_MINMAX, x, rows, cols, group);
                qbuf qo = quantize(QTYPES[ti], QUANT_MSE, x, rows, cols, group);
                quant_dequantize(&qn.m, yn);
                quant_dequantize(&qo.m, yo);
                for (size_t g = 0; g < n / group; g++)
                    worse += sse(x + g * group, yo + g * group, group) > sse(x + g * group, yn + g * group, group);
                CHECK(worse == 0, "%s g%d %s: optimised worse than min/max in %d groups", dtype_name(QTYPES[ti]), group,
                      DIST_NAMES[dist], worse);
                double rn = sqrt(sse(x, yn, n) / n), ro = sqrt(sse(x, yo, n) / n);
                CHECK(ro <= rn, "RMSE optimised %g > min/max %g", ro, rn);
                if (group == 64 && dist <= DIST_HEAVY)
                    printf("# %-3s g64 %-10s RMSE min/max %.4e  optimised %.4e  (%.1f%% lower)\n", dtype_name(QTYPES[ti]),
                           DIST_NAMES[dist], rn, ro, 100 * (1 - ro / rn));
                qbuf_free(&qn);
                qbuf_free(&qo);
            }
    free(x); free(yn); free(yo);
}

/* The kernels compute with exactly the values quant_dequantize returns. */
static void test_kernels_read_quantized(void) {
    int rows = 37, cols = 640;
    float *w = malloc(sizeof(float) * rows * cols), *wd = malloc(sizeof(float) * rows * cols);
    float x[640], y[37], yd[37];
    fill(w, (size_t)rows * cols, DIST_HEAVY);
    for (int i = 0; i < cols; i++) x[i] = (float)rng_normal();
    for (int ti = 0; ti < 4; ti++) {
        qbuf q = quantize(QTYPES[ti], QUANT_MSE, w, rows, cols, 64);
        quant_dequantize(&q.m, wd);
        qmat f = {.type = DTYPE_F32, .rows = rows, .cols = cols, .data = wd};
        kernel_matvec_rows_ref(y, &q.m, x, 0, rows);
        kernel_matvec_rows_ref(yd, &f, x, 0, rows);
        CHECK(!memcmp(y, yd, sizeof y), "%s: reference matvec on the quantized matrix differs from the dequantized one",
              dtype_name(QTYPES[ti]));
        qbuf_free(&q);
    }
    free(w);
    free(wd);
}

/* Split across threads, the output is byte for byte that of one thread. */
static void test_mt_matches(void) {
    int rows = 37, cols = 192;
    size_t n = (size_t)rows * cols;
    float *x = malloc(sizeof(float) * n);
    fill(x, n, DIST_HEAVY);
    pool *p = pool_create(3);
    for (int ti = 0; ti < 4; ti++) {
        qbuf a = quantize(QTYPES[ti], QUANT_MSE, x, rows, cols, 64);
        uint32_t *w = malloc(quant_words(QTYPES[ti], n) * 4);
        uint16_t *s = malloc(n / 64 * 2), *b = malloc(n / 64 * 2);
        CHECK(quant_rows_mt(p, QTYPES[ti], QUANT_MSE, x, rows, cols, 64, w, s, b) == 0, "quant_rows_mt failed");
        CHECK(!memcmp(w, a.words, quant_words(QTYPES[ti], n) * 4) && !memcmp(s, a.scales, n / 64 * 2) &&
                  !memcmp(b, a.biases, n / 64 * 2),
              "%s: quant_rows_mt differs from quant_rows", dtype_name(QTYPES[ti]));
        free(w); free(s); free(b);
        qbuf_free(&a);
    }
    CHECK(quant_rows_mt(p, DTYPE_Q4, QUANT_MSE, x, rows, cols, 48, NULL, NULL, NULL) == -1, "group 48 accepted");
    pool_free(p);
    free(x);
}

static void test_rejects_bad_arguments(void) {
    float x[96] = {0};
    uint32_t words[96];
    uint16_t s[3], b[3];
    CHECK(quant_rows(DTYPE_Q4, QUANT_MSE, x, 1, 96, 48, words, s, b) == -1, "group 48 accepted");
    CHECK(quant_rows(DTYPE_Q4, QUANT_MSE, x, 1, 80, 32, words, s, b) == -1, "cols 80 with group 32 accepted");
    CHECK(quant_rows(DTYPE_BF16, QUANT_MSE, x, 1, 96, 32, words, s, b) == -1, "BF16 accepted");
    CHECK(quant_rows(DTYPE_Q3, QUANT_MINMAX, x, 1, 96, 32, words, s, b) == 0, "Q3 96 cols group 32 rejected");
}

int main(void) {
    RUN_TEST(test_layout_is_mlx);
    RUN_TEST(test_minmax_within_bound);
    RUN_TEST(test_mse_not_worse);
    RUN_TEST(test_kernels_read_quantized);
    RUN_TEST(test_mt_matches);
    RUN_TEST(test_rejects_bad_arguments);
    TEST_EXIT();
}
