/* CPU kernels behind one interface. The layer math calls only these; a CUDA backend provides the
 * same operations on device memory. Every fast variant is tested against the scalar reference. */
#ifndef FLASHMOE_KERNELS_H
#define FLASHMOE_KERNELS_H
#include "tensor.h"
#include "threadpool.h"

/* y[r] = sum_c W[r][c] * x[c] for rows r0 <= r < r1 (y indexed by absolute row). */
void kernel_matvec_rows(float *y, const qmat *w, const float *x, int r0, int r1);
/* The whole matrix. */
void kernel_matvec(float *y, const qmat *w, const float *x);
/* One row of W converted to f32 (embedding lookup). */
void kernel_row_f32(float *out, const qmat *w, int row);

/* kernel_matvec split across a pool in chunks of rows (multiples of 16); NULL pool: single thread. */
void kernel_matvec_mt(pool *p, float *y, const qmat *w, const float *x);

#endif
