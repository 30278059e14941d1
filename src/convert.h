/* Converting a checkpoint into the packed directory format (packed.h), streaming tensor by tensor so
 * that memory stays bounded by one expert's worth of buffers whatever the model's size. */
#ifndef FLASHMOE_CONVERT_H
#define FLASHMOE_CONVERT_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

typedef struct {
    const char *src, *out;
    dtype experts; /* BF16, Q8, Q4, Q3, Q2 */
    dtype dense;   /* BF16, Q8, Q4 */
    int group;     /* 32, 64, 128 */
    int force;     /* overwrite an existing OUT */
    int quiet;     /* no progress output */
} convert_opts;

int convert_run(const convert_opts *o, char *err, size_t errlen);

/* Shared by convert.c and convert_mlx.c. */
/* How a non-expert tensor of this shape and name is stored: F32 (not a matrix), BF16 (one row, or
 * --dense bf16, or columns that do not divide into groups: *kept_bf16 = 1), else dense's type, at least
 * Q8 for routers (mlp.gate). */
dtype convert_plan_dtype(int ndim, const int64_t *shape, const char *name, dtype dense, int group, int *kept_bf16);
/* The progress line: a bar on a terminal, the final summary only in a log. */
void convert_progress(const convert_opts *o, int layer, int n_layers, double t0, double bytes);

#endif
