/* Scalar reference kernels: the algorithmic definition of every weight format. */
#include "kernels.h"

#include <math.h>

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

void kernel_row_f32(float *out, const qmat *w, int row) {
    size_t base = (size_t)row * w->cols;
    switch (w->type) {
    case DTYPE_F32:
        memcpy(out, (const float *)w->data + base, sizeof(float) * w->cols);
        break;
    case DTYPE_F16:
        for (int c = 0; c < w->cols; c++) out[c] = f16_to_f32(((const uint16_t *)w->data)[base + c]);
        break;
    case DTYPE_BF16:
        for (int c = 0; c < w->cols; c++) out[c] = bf16_to_f32(((const uint16_t *)w->data)[base + c]);
        break;
    default:
        for (int c = 0; c < w->cols; c++) out[c] = quant_value(w, row, c);
        break;
    }
}

void kernel_matvec_rows(float *y, const qmat *w, const float *x, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        size_t base = (size_t)r * w->cols;
        float acc = 0.0f;
        switch (w->type) {
        case DTYPE_F32: {
            const float *row = (const float *)w->data + base;
            for (int c = 0; c < w->cols; c++) acc += row[c] * x[c];
            break;
        }
        case DTYPE_F16: {
            const uint16_t *row = (const uint16_t *)w->data + base;
            for (int c = 0; c < w->cols; c++) acc += f16_to_f32(row[c]) * x[c];
            break;
        }
        case DTYPE_BF16: {
            const uint16_t *row = (const uint16_t *)w->data + base;
            for (int c = 0; c < w->cols; c++) acc += bf16_to_f32(row[c]) * x[c];
            break;
        }
        default:
            for (int c = 0; c < w->cols; c++) acc += quant_value(w, r, c) * x[c];
            break;
        }
        y[r] = acc;
    }
}

void kernel_matvec(float *y, const qmat *w, const float *x) { kernel_matvec_rows(y, w, x, 0, w->rows); }

typedef struct {
    float *y;
    const qmat *w;
    const float *x;
    int rows_per_task;
} matvec_job;

static void matvec_task(void *arg, int t, int n_tasks) {
    (void)n_tasks;
    const matvec_job *j = arg;
    int r0 = t * j->rows_per_task, r1 = r0 + j->rows_per_task;
    if (r1 > j->w->rows) r1 = j->w->rows;
    if (r0 < r1) kernel_matvec_rows(j->y, j->w, j->x, r0, r1);
}

void kernel_matvec_mt(pool *p, float *y, const qmat *w, const float *x) {
    int threads = pool_size(p);
    if (threads <= 1 || w->rows <= 16) {
        kernel_matvec_rows(y, w, x, 0, w->rows);
        return;
    }
    /* About 4 tasks per thread so a thread slowed by a neighbour does not hold up the call. */
    int chunks = threads * 4;
    int per = (w->rows + chunks - 1) / chunks;
    per = (per + 15) / 16 * 16;
    matvec_job j = {y, w, x, per};
    pool_run(p, matvec_task, &j, (w->rows + per - 1) / per);
}
