/* Group-wise affine quantization (see quant.h). */
#include "quant.h"

#include <float.h>
#include <math.h>

#include "kernels.h"

/* Refinement budget of QUANT_MSE per group: starting ranges (full, then each STEP narrower),
 * least-squares rounds per start (it stops early once q no longer changes), passes over the bf16
 * neighbours of the best scale and bias. Measured on Gaussian and t3 data, 8 starts instead of 4
 * lower the RMSE by a further 0.1-0.3% at twice the time; the neighbour passes are what helps Q8. */
#define MSE_STARTS 4
#define MSE_STEP 0.12f
#define MSE_ROUNDS 6
#define MSE_NPASS 2

static float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }

/* The bf16 value next to v: the next larger for dir > 0, the next smaller for dir < 0. */
static float bf16_step(float v, int dir) {
    uint16_t h = f32_to_bf16(v);
    if ((h & 0x7fff) == 0) return dir > 0 ? bf16_to_f32(0x0001) : bf16_to_f32(0x8001);
    int up = (dir > 0) == !(h & 0x8000); /* moving away from zero */
    h = (uint16_t)(up ? h + 1 : h - 1);
    return bf16_to_f32(h);
}

/* 1/s as the level computation uses it; 0 (every q = 0) when s is 0 or too small to invert. */
static float quant_inv(float s) { return fabsf(s) >= FLT_MIN ? 1.0f / s : 0.0f; }

/* q for value v: (v - b) / s clamped to [0, levels], rounded to nearest (ties to even, by adding and
 * subtracting 1.5 * 2^23, exact for |t| < 2^22: no libm call, so the loops vectorize). */
static inline float quant_level(float v, float inv, float b, float levels) {
    float t = (v - b) * inv;
    t = t < 0.0f ? 0.0f : t > levels ? levels : t;
    return (t + 12582912.0f) - 12582912.0f;
}

double quant_group_sse(const float *x, int n, int bits, float s, float b) {
    float levels = (float)((1 << bits) - 1), inv = quant_inv(s);
    double sse = 0;
    for (int i = 0; i < n; i++) {
        float w = quant_level(x[i], inv, b, levels) * s + b; /* as the kernels dequantize */
        double e = (double)x[i] - w;
        sse += e * e;
    }
    return sse;
}

typedef struct {
    float s, b;
    double sse;
} quant_fit;

static void fit_try(quant_fit *best, const float *x, int n, int bits, float s, float b) {
    double sse = quant_group_sse(x, n, bits, s, b);
    if (sse < best->sse) *best = (quant_fit){s, b, sse};
}

/* Least-squares s and b for fixed q (rounded to bf16: s first, then b fitted to the rounded s). */
static void fit_given_q(const float *x, const int *q, int n, float s_old, float *s_out, float *b_out) {
    double mq = 0, mx = 0;
    for (int i = 0; i < n; i++) { mq += q[i]; mx += x[i]; }
    mq /= n;
    mx /= n;
    double cov = 0, var = 0;
    for (int i = 0; i < n; i++) {
        cov += (q[i] - mq) * (x[i] - mx);
        var += (q[i] - mq) * (q[i] - mq);
    }
    float s = var > 0 ? bf16_round((float)(cov / var)) : s_old;
    double b = 0;
    for (int i = 0; i < n; i++) b += x[i] - (double)q[i] * s;
    *s_out = s;
    *b_out = bf16_round((float)(b / n));
}

static quant_fit fit_minmax(const float *x, int n, int bits) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    float s = bf16_round((hi - lo) / (float)((1 << bits) - 1)), b = bf16_round(lo);
    return (quant_fit){s, b, quant_group_sse(x, n, bits, s, b)};
}

static quant_fit fit_mse(const float *x, int n, int bits) {
    int q[128];
    float levels = (float)((1 << bits) - 1);
    quant_fit best = fit_minmax(x, n, bits);
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    if (hi == lo) return best;
    /* Starts: the full range and symmetric narrower ones (clipping the tails pays off for heavy-
     * tailed groups at low bit widths), each refined by alternating least squares. */
    for (int k = 0; k < MSE_STARTS; k++) {
        float f = 1.0f - MSE_STEP * k, range = (hi - lo) * f;
        float s = bf16_round(range / levels), b = bf16_round(lo + (hi - lo - range) / 2);
        fit_try(&best, x, n, bits, s, b);
        for (int round = 0; round < MSE_ROUNDS; round++) {
            int changed = 0;
            float inv = quant_inv(s);
            for (int i = 0; i < n; i++) {
                int qi = (int)quant_level(x[i], inv, b, levels);
                changed |= round == 0 || qi != q[i];
                q[i] = qi;
            }
            if (!changed) break;
            fit_given_q(x, q, n, s, &s, &b);
            fit_try(&best, x, n, bits, s, b);
        }
    }
    /* bf16 neighbours of the best s and b: rounding them separately is not jointly optimal. */
    for (int pass = 0; pass < MSE_NPASS; pass++) {
        quant_fit c = best;
        for (int ds = -1; ds <= 1; ds++)
            for (int db = -1; db <= 1; db++) {
                float s = ds ? bf16_step(c.s, ds) : c.s, b = db ? bf16_step(c.b, db) : c.b;
                if (ds || db) fit_try(&best, x, n, bits, s, b);
            }
    }
    return best;
}

size_t quant_words(dtype t, size_t n) { return n * dtype_bits(t) / 32; }

int quant_rows(dtype t, quant_method how, const float *x, int rows, int cols, int group, uint32_t *words,
               uint16_t *scales, uint16_t *biases) {
    if (!dtype_is_quant(t) || (group != 32 && group != 64 && group != 128) || rows < 0 || cols <= 0 ||
        cols % group)
        return -1;
    int bits = dtype_bits(t);
    float levels = (float)((1 << bits) - 1);
    size_t n = (size_t)rows * cols, ng = n / group;
    for (size_t i = 0; i < quant_words(t, n); i++) words[i] = 0;
    for (size_t g = 0; g < ng; g++) {
        const float *xg = x + g * group;
        quant_fit f = how == QUANT_MSE ? fit_mse(xg, group, bits) : fit_minmax(xg, group, bits);
        scales[g] = f32_to_bf16(f.s);
        biases[g] = f32_to_bf16(f.b);
        float inv = quant_inv(f.s);
        for (int i = 0; i < group; i++) {
            uint32_t q = (uint32_t)quant_level(xg[i], inv, f.b, levels);
            size_t bit = (g * group + i) * bits;
            words[bit / 32] |= q << (bit % 32);
            if (bit % 32 + bits > 32) words[bit / 32 + 1] |= q >> (32 - bit % 32);
        }
    }
    return 0;
}

typedef struct {
    dtype t;
    quant_method how;
    const float *x;
    int rows, cols, group, rows_per_task;
    uint32_t *words;
    uint16_t *scales, *biases;
} quant_job;

static void quant_task(void *arg, int task, int n_tasks) {
    (void)n_tasks;
    const quant_job *j = arg;
    long r0, r1;
    if (!pool_share(task, j->rows_per_task, j->rows, &r0, &r1)) return;
    int n = (int)(r1 - r0);
    size_t e0 = (size_t)r0 * j->cols; /* rows start on word and group boundaries (cols % 32 == 0) */
    quant_rows(j->t, j->how, j->x + e0, n, j->cols, j->group, j->words + quant_words(j->t, e0),
               j->scales + e0 / j->group, j->biases + e0 / j->group);
}

int quant_rows_mt(pool *p, dtype t, quant_method how, const float *x, int rows, int cols, int group,
                  uint32_t *words, uint16_t *scales, uint16_t *biases) {
    if (quant_rows(t, how, x, 0, cols, group, words, scales, biases) != 0) return -1; /* validates only */
    if (rows <= 0) return rows == 0 ? 0 : -1;
    int tasks = pool_size(p) * 8;
    if (tasks > rows) tasks = rows;
    quant_job j = {t, how, x, rows, cols, group, (rows + tasks - 1) / tasks, words, scales, biases};
    pool_run(p, quant_task, &j, (rows + j.rows_per_task - 1) / j.rows_per_task);
    return 0;
}

void quant_dequantize(const qmat *w, float *out) {
    for (int r = 0; r < w->rows; r++) kernel_row_f32(out + (size_t)r * w->cols, w, r);
}
