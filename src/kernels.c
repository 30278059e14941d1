/* Kernels: the scalar reference (the algorithmic definition of every weight format), the run-time
 * choice of SIMD level, and the level-independent drivers (column chunks, prepared x, fused expert
 * operations, threads) around each level's row kernels (kernels_avx2.c, kernels_avx512.c). */
#include "kernels_impl.h"
#include "util.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *dtype_name(dtype t) {
    static const char *names[DTYPE_COUNT] = {"F32", "F16", "BF16", "Q8", "Q4", "Q3", "Q2"};
    return (unsigned)t < DTYPE_COUNT ? names[t] : "?";
}

int dtype_bits(dtype t) {
    static const int bits[DTYPE_COUNT] = {32, 16, 16, 8, 4, 3, 2};
    return (unsigned)t < DTYPE_COUNT ? bits[t] : 0;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            u = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13), rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)h;
}

size_t qmat_data_bytes(const qmat *w) { return (size_t)w->rows * w->cols * dtype_bits(w->type) / 8; }

size_t qmat_group_count(const qmat *w) {
    return dtype_is_quant(w->type) && w->group > 0 ? (size_t)w->rows * w->cols / w->group : 0;
}

const char *qmat_check(const qmat *w) {
    if ((unsigned)w->type >= DTYPE_COUNT) return "unknown dtype";
    if (w->rows <= 0 || w->cols <= 0) return "rows and cols must be positive";
    if (!w->data) return "no data";
    if (!dtype_is_quant(w->type)) return NULL;
    if (w->group != 32 && w->group != 64 && w->group != 128) return "group must be 32, 64 or 128";
    if (w->cols % w->group) return "cols must be a multiple of group";
    if (!w->scales || !w->biases) return "quantized matrix without scales or biases";
    return NULL;
}

/* ---- scalar reference ------------------------------------------------------------------------ */

/* Value c of a quantized row: unpack bits from LSB-first uint32 words, then q * scale + bias. */
static float quant_value(const qmat *w, int r, int c) {
    int bits = dtype_bits(w->type);
    const uint32_t *words = w->data;
    size_t bit = ((size_t)r * w->cols + c) * bits;
    uint64_t chunk = words[bit / 32];
    if (bit % 32 + bits > 32) chunk |= (uint64_t)words[bit / 32 + 1] << 32;
    uint32_t q = (uint32_t)(chunk >> (bit % 32)) & ((1u << bits) - 1);
    size_t g = ((size_t)r * w->cols + c) / w->group;
    return (float)q * bf16_to_f32(w->scales[g]) + bf16_to_f32(w->biases[g]);
}

float kernel_weight(const qmat *w, int r, int c) {
    size_t i = (size_t)r * w->cols + c;
    switch (w->type) {
    case DTYPE_F32: return ((const float *)w->data)[i];
    case DTYPE_F16: return f16_to_f32(((const uint16_t *)w->data)[i]);
    case DTYPE_BF16: return bf16_to_f32(((const uint16_t *)w->data)[i]);
    default: return quant_value(w, r, c);
    }
}

void kernel_row_f32(float *out, const qmat *w, int row) {
    if (w->type == DTYPE_F32) {
        memcpy(out, (const float *)w->data + (size_t)row * w->cols, sizeof(float) * w->cols);
        return;
    }
    for (int c = 0; c < w->cols; c++) out[c] = kernel_weight(w, row, c);
}

/* W[r] . x, summed left to right in f32. */
static float ref_row_dot(const qmat *w, int r, const float *x) {
    float acc = 0.0f;
    for (int c = 0; c < w->cols; c++) acc += kernel_weight(w, r, c) * x[c];
    return acc;
}

void kernel_matvec_rows_ref(float *y, const qmat *w, const float *x, int r0, int r1) {
    for (int r = r0; r < r1; r++) y[r] = ref_row_dot(w, r, x);
}

static float silu(float g) { return g / (1.0f + expf(-g)); }

/* ---- run-time choice of level ------------------------------------------------------------------ */

/* The one-time dispatch state: the level in use, set once from cpuid and FLASHMOE_KERNELS. */
static struct {
    pthread_once_t once;
    _Atomic int level;
    _Atomic int f32x; /* keep x in f32 in every product (kernel_f32_x_force, FLASHMOE_F32_X=1) */
} dispatch = {PTHREAD_ONCE_INIT, KERNEL_SCALAR, 0};

/* Each level's table with the int16 path replaced by its f32-x kernels (rows_f32x, gemm_f32x). */
static kernel_ops f32x_tables[KERNEL_LEVEL_COUNT];
static pthread_once_t f32x_once = PTHREAD_ONCE_INIT;

const char *kernel_level_name(kernel_level l) {
    static const char *names[KERNEL_LEVEL_COUNT] = {"scalar", "avx2", "avx512", "amx"};
    return (unsigned)l < KERNEL_LEVEL_COUNT ? names[l] : "?";
}

static const kernel_ops *level_ops_int16(kernel_level l) {
    switch (l) {
    case KERNEL_AVX2: return kernel_ops_avx2();
    case KERNEL_AVX512: return kernel_ops_avx512();
    case KERNEL_AMX: return kernel_ops_amx();
    default: return NULL;
    }
}

static void f32x_build(void) {
    for (int l = 0; l < KERNEL_LEVEL_COUNT; l++) {
        const kernel_ops *o = level_ops_int16((kernel_level)l);
        if (!o) continue;
        kernel_ops *f = &f32x_tables[l];
        *f = *o;
        for (int t = 0; t < DTYPE_COUNT; t++)
            if (o->qpack[t] && o->rows_f32x[t]) f->rows[t] = o->rows_f32x[t], f->qpack[t] = 0;
        if (o->gemm_f32x) f->gemm = o->gemm_f32x;
        f->gemm_rounds_x = NULL;
    }
}

static const kernel_ops *level_ops(kernel_level l) {
    const kernel_ops *o = level_ops_int16(l);
    if (!o || !atomic_load_explicit(&dispatch.f32x, memory_order_relaxed)) return o;
    pthread_once(&f32x_once, f32x_build);
    return &f32x_tables[l];
}

int kernel_level_available(kernel_level l) {
    if (l == KERNEL_SCALAR) return 1;
    if ((unsigned)l >= KERNEL_LEVEL_COUNT || !level_ops(l)) return 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (l == KERNEL_AVX2) return avx2;
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    if (l == KERNEL_AVX512) return avx512;
    return avx512 && kernel_amx_usable();
#else
    return 0;
#endif
}

static void level_init(void) {
    const char *fx = getenv("FLASHMOE_F32_X");
    if (fx && *fx) {
        if (strcmp(fx, "0") && strcmp(fx, "1"))
            fprintf(stderr, "flashmoe: FLASHMOE_F32_X=%s is not 0 or 1; ignored\n", fx);
        else atomic_store(&dispatch.f32x, fx[0] == '1');
    }
    int best = KERNEL_SCALAR;
    for (int l = KERNEL_SCALAR; l < KERNEL_LEVEL_COUNT; l++)
        if (kernel_level_available((kernel_level)l)) best = l;
    const char *env = getenv("FLASHMOE_KERNELS");
    if (env && *env) {
        int want = -1;
        for (int l = 0; l < KERNEL_LEVEL_COUNT; l++)
            if (!strcmp(env, kernel_level_name((kernel_level)l))) want = l;
        if (want < 0) {
            fprintf(stderr, "flashmoe: FLASHMOE_KERNELS=%s is not scalar, avx2, avx512 or amx; using %s\n", env,
                    kernel_level_name((kernel_level)best));
        } else {
            while (!kernel_level_available((kernel_level)want)) want--;
            if (strcmp(env, kernel_level_name((kernel_level)want)))
                fprintf(stderr, "flashmoe: this CPU lacks %s kernels; using %s\n", env,
                        kernel_level_name((kernel_level)want));
            best = want;
        }
    }
    atomic_store(&dispatch.level, best);
}

kernel_level kernel_level_active(void) {
    pthread_once(&dispatch.once, level_init);
    return (kernel_level)atomic_load_explicit(&dispatch.level, memory_order_relaxed);
}

int kernel_level_force(kernel_level l) {
    pthread_once(&dispatch.once, level_init);
    if (!kernel_level_available(l)) return -1;
    atomic_store(&dispatch.level, (int)l);
    return 0;
}

int kernel_f32_x_force(int on) {
    pthread_once(&dispatch.once, level_init);
    int was = atomic_load(&dispatch.f32x);
    atomic_store(&dispatch.f32x, on != 0);
    return was;
}

/* The active level's row kernels for w; NULL means the scalar reference, which is also what a
 * quantized layout outside the SIMD kernels' assumptions (group 32/64/128 dividing cols) gets. */
static const kernel_ops *active_ops(const qmat *w) {
    if (dtype_is_quant(w->type) && ((w->group != 32 && w->group != 64 && w->group != 128) || w->cols % w->group))
        return NULL;
    return level_ops(kernel_level_active());
}

/* ---- level-independent drivers ----------------------------------------------------------------- */

/* Stack space for the prepared x of up to KERNEL_NB vectors. */
typedef struct {
    float f[KERNEL_XBUF + KERNEL_NB * KERNEL_MAX_GROUPS];
    int16_t q[KERNEL_QXBUF]; /* the int16 path's x, in up to KERNEL_QSLOTS slots */
    float qsum[KERNEL_QXBUF / 32 + KERNEL_QSLOTS * 32], qd[KERNEL_QXBUF / 32 + KERNEL_QSLOTS * 32]; /* its xsum, xd */
} xscratch;

/* Columns per chunk with nb x vectors prepared at once: all of them if they fit. */
static int chunk_cols(int cols, int nb) {
    int chunk = KERNEL_XBUF / nb / KERNEL_CHUNK_ALIGN * KERNEL_CHUNK_ALIGN;
    return cols < chunk ? cols : chunk;
}

/* Prepares columns [c0, c1) of x (a full row of cols values) for w's row kernel at this level, in
 * slot `slot` of nslots (see kernels_impl.h for the layout). */
static void xview_prepare(const kernel_ops *ops, const qmat *w, const float *x, int c0, int c1, xscratch *s,
                          int slot, int nslots, kernel_xview *xv) {
    int n = c1 - c0, pack = ops->pack[w->type], lanes = ops->lanes, qp = ops->qpack[w->type];
    float *xp = s->f + (size_t)slot * (KERNEL_XBUF / nslots);
    float *xsum = s->f + KERNEL_XBUF + (size_t)slot * KERNEL_MAX_GROUPS;
    int16_t *xq = NULL;
    float *xd = NULL;
    if (qp) { /* int16 path: slot of KERNEL_QXBUF / nslots values (nslots <= KERNEL_QSLOTS) */
        int per = KERNEL_QXBUF / nslots, gper = per / 32 + 32;
        xq = s->q + (size_t)slot * per;
        xsum = s->qsum + (size_t)slot * gper;
        xd = s->qd + (size_t)slot * gper;
    }
    const float *xc = x + c0;
    xv->xsum = NULL;
    if (dtype_is_quant(w->type)) {
        int ng = n / w->group;
        for (int g = 0; g < ng; g++) {
            float sum = 0.0f;
            for (int c = g * w->group; c < (g + 1) * w->group; c++) sum += xc[c];
            xsum[g] = sum;
        }
        memset(xsum + ng, 0, 32 * sizeof(float));
        xv->xsum = xsum;
    }
    xv->xq = NULL;
    xv->xd = NULL;
    if (qp) {
        ops->quant_x16(xc, n, w->group, qp, xq, xd);
        memset(xd + n / w->group, 0, 16 * sizeof(float));
        xv->xq = xq;
        xv->xd = xd;
        xv->x = NULL;
        return;
    }
    if (pack == 1) {
        xv->x = xc;
        return;
    }
    int block = lanes * pack;
    for (int e = 0; e < n; e += block)
        for (int k = 0; k < pack; k++)
            for (int i = 0; i < lanes; i++) {
                int c = e + i * pack + k;
                xp[e + k * lanes + i] = c < n ? xc[c] : 0.0f;
            }
    xv->x = xp;
}

/* Where results go: y[j * ldy + (r - r0)] = dot, or += weight * dot when accumulating. */
typedef struct {
    float *y;
    size_t ldy;
    float weight;
    int accumulate;
} rows_out;

/* Rows [r0, r1) of one column chunk against nb prepared x vectors. */
static void rows_compute(const kernel_ops *ops, const qmat *w, int c0, int c1, const kernel_xview *xv, int nb,
                         int r0, int r1, int rbase, rows_out out) {
    kernel_rows_fn rows = ops->rows[w->type];
    float d[KERNEL_ROWS_MAX * KERNEL_NB];
    for (int rb = r0; rb < r1; rb += KERNEL_ROWS_MAX) {
        int re = r1 - rb < KERNEL_ROWS_MAX ? r1 : rb + KERNEL_ROWS_MAX;
        rows(w, rb, re, c0, c1, xv, nb, d);
        for (int r = rb; r < re; r++)
            for (int j = 0; j < nb; j++) {
                float *yp = out.y + j * out.ldy + (r - rbase), v = d[(r - rb) * nb + j];
                if (out.accumulate) *yp += out.weight * v;
                else *yp = c0 == 0 ? v : *yp + v;
            }
    }
}

/* Rows of W a block of x vectors is run against before the next block is prepared (matmat with
 * n > KERNEL_NB): the block's W rows stay in cache while preparing x costs 1/ROWS_BLOCK of the work. */
#define ROWS_BLOCK 64

/* The int16 path of rows_run: up to KERNEL_QSLOTS x vectors prepared once per column chunk, then
 * each block of W rows is run against all of them, KERNEL_QNB at a time, while it is in cache. */
static void rows_run_q(const kernel_ops *ops, const qmat *w, const float *X, int n, int r0, int r1, rows_out out) {
    xscratch s;
    int nslots = n < KERNEL_QSLOTS ? n : KERNEL_QSLOTS;
    int chunk = KERNEL_QXBUF / nslots / KERNEL_CHUNK_ALIGN * KERNEL_CHUNK_ALIGN;
    if (chunk > KERNEL_XBUF) chunk = KERNEL_XBUF; /* the row kernels' group arrays hold KERNEL_MAX_GROUPS */
    if (w->cols < chunk) chunk = w->cols;
    int rblock = n <= KERNEL_QNB ? r1 - r0 : ROWS_BLOCK;
    for (int c0 = 0; c0 < w->cols; c0 += chunk) {
        int c1 = w->cols - c0 < chunk ? w->cols : c0 + chunk;
        for (int js = 0; js < n; js += KERNEL_QSLOTS) {
            int ns = n - js < KERNEL_QSLOTS ? n - js : KERNEL_QSLOTS;
            kernel_xview xv[KERNEL_QSLOTS];
            for (int j = 0; j < ns; j++)
                xview_prepare(ops, w, X + (size_t)(js + j) * w->cols, c0, c1, &s, j, nslots, &xv[j]);
            for (int rb = r0; rb < r1; rb += rblock) {
                int re = r1 - rb < rblock ? r1 : rb + rblock;
                for (int j0 = 0; j0 < ns; j0 += KERNEL_QNB) {
                    int nb = ns - j0 < KERNEL_QNB ? ns - j0 : KERNEL_QNB;
                    rows_out o = out;
                    o.y += (size_t)(js + j0) * out.ldy;
                    rows_compute(ops, w, c0, c1, xv + j0, nb, rb, re, r0, o);
                }
            }
        }
    }
}

/* Y[j][r] (see rows_out) for n x vectors X[j] (row-major, w->cols each), rows [r0, r1). */
static void rows_run(const kernel_ops *ops, const qmat *w, const float *X, int n, int r0, int r1, rows_out out) {
    if (ops->qpack[w->type]) {
        rows_run_q(ops, w, X, n, r0, r1, out);
        return;
    }
    xscratch s;
    int nbmax = n < KERNEL_NB ? n : KERNEL_NB;
    int chunk = chunk_cols(w->cols, nbmax);
    int rblock = n <= KERNEL_NB ? r1 - r0 : ROWS_BLOCK;
    for (int c0 = 0; c0 < w->cols; c0 += chunk) {
        int c1 = w->cols - c0 < chunk ? w->cols : c0 + chunk;
        for (int rb = r0; rb < r1; rb += rblock) {
            int re = r1 - rb < rblock ? r1 : rb + rblock;
            for (int j0 = 0; j0 < n; j0 += KERNEL_NB) {
                int nb = n - j0 < KERNEL_NB ? n - j0 : KERNEL_NB;
                kernel_xview xv[KERNEL_NB];
                for (int j = 0; j < nb; j++)
                    xview_prepare(ops, w, X + (size_t)(j0 + j) * w->cols, c0, c1, &s, j, nbmax, &xv[j]);
                rows_out o = out;
                o.y += (size_t)j0 * out.ldy;
                rows_compute(ops, w, c0, c1, xv, nb, rb, re, r0, o);
            }
        }
    }
}

void kernel_silu_mul(float *out, const float *g, const float *u, size_t n) {
    const kernel_ops *ops = level_ops(kernel_level_active());
    if (ops && ops->silu_mul) ops->silu_mul(out, g, u, n);
    else if (u)
        for (size_t i = 0; i < n; i++) out[i] = silu(g[i]) * u[i];
    else
        for (size_t i = 0; i < n; i++) out[i] = silu(g[i]);
}

float kernel_exp_sum(float *x, int n, float sub) {
    const kernel_ops *ops = level_ops(kernel_level_active());
    if (ops && ops->exp_sum) return ops->exp_sum(x, n, sub);
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - sub);
        sum += x[i];
    }
    return sum;
}

/* Whether n rows of X take the level's panel GEMM. Not Q3: the panels unpack its 3-byte packs one
 * weight at a time, which made it 20 times slower than the row kernels at 4 to 8 rows of X (Zen 4,
 * bench/kernels.c; BENCHMARKS.md, series 12). */
static int takes_gemm(const kernel_ops *ops, const qmat *w, int n) {
    return ops->gemm && n >= GEMM_MIN_N && w->type != DTYPE_Q3;
}

int kernel_uses_int16_x(const qmat *w, int n) {
    const kernel_ops *ops = active_ops(w);
    if (!ops) return 0;
    if (takes_gemm(ops, w, n)) return ops->gemm_rounds_x && ops->gemm_rounds_x(w->type);
    return ops->qpack[w->type] > 0;
}

void kernel_matvec_rows(float *y, const qmat *w, const float *x, int r0, int r1) {
    const kernel_ops *ops = active_ops(w);
    if (!ops) { kernel_matvec_rows_ref(y, w, x, r0, r1); return; }
    rows_run(ops, w, x, 1, r0, r1, (rows_out){y + r0, (size_t)w->rows, 1.0f, 0});
}

void kernel_matvec(float *y, const qmat *w, const float *x) { kernel_matvec_rows(y, w, x, 0, w->rows); }

void kernel_matmat_rows(float *Y, const qmat *w, const float *X, int n, int r0, int r1) {
    const kernel_ops *ops = active_ops(w);
    if (!ops) {
        for (int j = 0; j < n; j++)
            kernel_matvec_rows_ref(Y + (size_t)j * w->rows, w, X + (size_t)j * w->cols, r0, r1);
        return;
    }
    if (takes_gemm(ops, w, n)) ops->gemm(Y, w, X, n, r0, r1);
    else if (n > 0) rows_run(ops, w, X, n, r0, r1, (rows_out){Y + r0, (size_t)w->rows, 1.0f, 0});
}

void kernel_matvec_accum_rows(float *y, const qmat *down, const float *h, float weight, int r0, int r1) {
    const kernel_ops *ops = active_ops(down);
    if (!ops) {
        for (int r = r0; r < r1; r++) y[r] += weight * ref_row_dot(down, r, h);
        return;
    }
    rows_run(ops, down, h, 1, r0, r1, (rows_out){y + r0, (size_t)down->rows, weight, 1});
}

void kernel_swiglu_gate_up(float *h, const qmat *gate, const qmat *up, const float *x, int r0, int r1) {
    const kernel_ops *ops = active_ops(gate);
    if (ops && !active_ops(up)) ops = NULL;
    if (!ops) {
        for (int r = r0; r < r1; r++) h[r] = silu(ref_row_dot(gate, r, x)) * ref_row_dot(up, r, x);
        return;
    }
    int same = gate->type == up->type && gate->group == up->group;
    if (chunk_cols(gate->cols, 2) == gate->cols) { /* the usual case: x prepared once for all rows */
        xscratch s;
        kernel_xview xg, xu;
        xview_prepare(ops, gate, x, 0, gate->cols, &s, 0, 2, &xg);
        if (same) xu = xg;
        else xview_prepare(ops, up, x, 0, up->cols, &s, 1, 2, &xu);
        for (int rb = r0; rb < r1; rb += KERNEL_ROWS_MAX) {
            int re = r1 - rb < KERNEL_ROWS_MAX ? r1 : rb + KERNEL_ROWS_MAX;
            float g[KERNEL_ROWS_MAX], u[KERNEL_ROWS_MAX];
            ops->rows[gate->type](gate, rb, re, 0, gate->cols, &xg, 1, g);
            ops->rows[up->type](up, rb, re, 0, up->cols, &xu, 1, u);
            for (int r = rb; r < re; r++) h[r] = silu(g[r - rb]) * u[r - rb];
        }
        return;
    }
    for (int rb = r0; rb < r1; rb += ROWS_BLOCK) { /* very wide x: blocks of rows, x chunked */
        int re = r1 - rb < ROWS_BLOCK ? r1 : rb + ROWS_BLOCK;
        float u[ROWS_BLOCK];
        rows_run(ops, gate, x, 1, rb, re, (rows_out){h + rb, (size_t)gate->rows, 1.0f, 0});
        rows_run(ops, up, x, 1, rb, re, (rows_out){u, ROWS_BLOCK, 1.0f, 0});
        for (int r = rb; r < re; r++) h[r] = silu(h[r]) * u[r - rb];
    }
}

/* ---- threads ------------------------------------------------------------------------------------ */

typedef struct {
    const kernel_ops *ops; /* NULL: scalar reference */
    float *y;
    const qmat *w;
    const float *x;
    const kernel_xview *xv; /* x prepared once by the caller, or NULL */
    int rows_per_task;
} matvec_job;

static void matvec_task(void *arg, int t, int n_tasks) {
    (void)n_tasks;
    const matvec_job *j = arg;
    long a, b;
    if (!pool_share(t, j->rows_per_task, j->w->rows, &a, &b)) return;
    int r0 = (int)a, r1 = (int)b;
    if (!j->ops) kernel_matvec_rows_ref(j->y, j->w, j->x, r0, r1);
    else if (j->xv) rows_compute(j->ops, j->w, 0, j->w->cols, j->xv, 1, r0, r1, 0,
                                 (rows_out){j->y, (size_t)j->w->rows, 1.0f, 0});
    else rows_run(j->ops, j->w, j->x, 1, r0, r1, (rows_out){j->y + r0, (size_t)j->w->rows, 1.0f, 0});
}

void kernel_matvec_mt(pool *p, float *y, const qmat *w, const float *x) {
    int threads = pool_size(p);
    if (threads <= 1 || w->rows <= 16) {
        kernel_matvec_rows(y, w, x, 0, w->rows);
        return;
    }
    /* About 4 tasks per thread so a thread slowed by a neighbour does not hold up the call. */
    int tasks;
    matvec_job j = {active_ops(w), y, w, x, NULL, (int)pool_per(w->rows, threads * 4, 16, &tasks)};
    xscratch s;
    kernel_xview xv;
    if (j.ops && chunk_cols(w->cols, 1) == w->cols) { /* prepare x once, not per task */
        xview_prepare(j.ops, w, x, 0, w->cols, &s, 0, 1, &xv);
        j.xv = &xv;
    }
    pool_run(p, matvec_task, &j, tasks);
}

/* ---- the arithmetic peak ----------------------------------------------------------------------- */

double kernel_rounds_per_second(void (*round)(void *ctx), void *ctx, double seconds) {
    long calls = 0;
    double t0 = util_now_seconds(), dt;
    do {
        round(ctx);
        calls++;
    } while ((dt = util_now_seconds() - t0) < seconds);
    return (double)calls / dt;
}

typedef struct {
    double seconds, rate[256], rate2[256]; /* rate2: the int16 products (AVX2 and AVX-512 levels) */
} peak_job;

static int cpu_vnni(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

static void peak_task(void *arg, int t, int n_tasks) {
    (void)n_tasks;
    peak_job *j = arg;
    double r = 0.0, r2 = 0.0;
#if defined(__x86_64__)
    if (kernel_level_active() == KERNEL_AMX) r = kernel_amx_int8_rate(j->seconds) / 2;
    else if (kernel_level_active() == KERNEL_AVX512) {
        r = kernel_fma_rate_avx512(j->seconds);
        r2 = kernel_madd16_rate_avx512(j->seconds, cpu_vnni());
    } else if (kernel_level_active() == KERNEL_AVX2) {
        r = kernel_fma_rate_avx2(j->seconds);
        r2 = kernel_madd16_rate_avx2(j->seconds);
    }
#endif
    if (r == 0.0) { /* scalar: 8 independent chains */
        volatile float seed = 0.9999f;
        float a[8], m = seed;
        for (int i = 0; i < 8; i++) a[i] = 0.001f * (float)i;
        long iters = 0;
        double t0 = util_now_seconds(), dt;
        do {
            for (int k = 0; k < 4096; k++)
                for (int i = 0; i < 8; i++) a[i] = a[i] * m + 1e-6f;
            iters += 4096;
        } while ((dt = util_now_seconds() - t0) < j->seconds);
        seed = a[0] + a[7];
        r = (double)iters * 8 / dt;
    }
    if (t < 256) j->rate[t] = r, j->rate2[t] = r2;
}

static int peak_was_int16; /* the last kernel_peak_mac_rate measured the int16 products faster */

const char *kernel_peak_name(void) {
    switch (kernel_level_active()) {
    case KERNEL_AMX: return "AMX (int8 tile products / 2)";
    case KERNEL_AVX512:
        if (!peak_was_int16) return "f32 FMA (512-bit)";
        return cpu_vnni() ? "int16 vpdpwssd (512-bit; faster than f32 FMA here)"
                          : "int16 vpmaddwd (512-bit; faster than f32 FMA here)";
    case KERNEL_AVX2: return peak_was_int16 ? "int16 vpmaddwd (256-bit; faster than f32 FMA here)" : "f32 FMA (256-bit)";
    default: return "f32 scalar";
    }
}

double kernel_peak_mac_rate(pool *p, double seconds) {
    peak_job j = {.seconds = seconds};
    int n = pool_size(p) < 256 ? pool_size(p) : 256;
    pool_run(p, peak_task, &j, n);
    double sum = 0.0, sum2 = 0.0;
    for (int t = 0; t < n; t++) sum += j.rate[t], sum2 += j.rate2[t];
    peak_was_int16 = sum2 > sum;
    return sum2 > sum ? sum2 : sum;
}
