/* CPU kernels behind one interface. The layer math calls only these; a CUDA backend provides the
 * same operations on device memory. Every fast variant is tested against the scalar reference.
 *
 * Levels. Each operation has a scalar reference and SIMD versions (AVX2+FMA+F16C, AVX-512 F/BW/VL;
 * amx is the AVX-512 level with prompt-chunk products of Q8/Q4/Q2 weights on AMX tiles), picked once at
 * run time from cpuid; the base build stays plain x86-64. FLASHMOE_KERNELS=scalar|avx2|avx512|amx in the
 * environment forces a level (tests, benchmarks); kernel_level_force does the same from code. All
 * levels compute the same sums in f32; they differ only in summation order, by at most ~1e-5 of
 * sum_c |w_rc x_c| (tests/test_kernels.c gives the reasoning), except that the AVX2, AVX-512 and amx
 * levels round x to int16 per group for Q4/Q2 rows, and for Q8/Q4/Q2 prompt chunks too
 * (kernel_uses_int16_x; bound in kernels_impl.h).
 *
 * Layout requirements (qmat_check): quantized matrices have group 32, 64 or 128 and cols a multiple
 * of group. Output y is indexed by absolute row: rows r0 <= r < r1 write y[r] only.
 * The SIMD kernels keep up to ~180 KB of scratch on the stack (prepared x; ~180 KB in the caller of
 * kernel_matvec_mt); no allocation. */
#ifndef FLASHMOE_KERNELS_H
#define FLASHMOE_KERNELS_H
#include "tensor.h"
#include "threadpool.h"

typedef enum { KERNEL_SCALAR, KERNEL_AVX2, KERNEL_AVX512, KERNEL_AMX, KERNEL_LEVEL_COUNT } kernel_level;

const char *kernel_level_name(kernel_level l);
/* The CPU supports the level and it was compiled in (scalar: always). */
int kernel_level_available(kernel_level l);
/* The level in use: FLASHMOE_KERNELS if set (falling back, with a message on stderr, to the best
 * available level below it), else the best available. */
kernel_level kernel_level_active(void);
/* Use level l from now on (tests, benchmarks). Returns 0, or -1 (level unchanged) when unavailable.
 * Not to be called while kernels run on other threads. */
int kernel_level_force(kernel_level l);
/* on != 0: keep x in f32 in every product at every level, as the scalar reference does (no int16
 * rounding; the f32-x kernels are slower for Q4/Q2 and prompt chunks). FLASHMOE_F32_X=1 in the
 * environment does the same from the start. Returns the previous setting. Not to be called while
 * kernels run on other threads. */
int kernel_f32_x_force(int on);

/* y[r] = sum_c W[r][c] * x[c] for rows r0 <= r < r1 (y indexed by absolute row). */
void kernel_matvec_rows(float *y, const qmat *w, const float *x, int r0, int r1);
/* The whole matrix. */
void kernel_matvec(float *y, const qmat *w, const float *x);
/* One row of W converted to f32 (embedding lookup). */
void kernel_row_f32(float *out, const qmat *w, int row);

/* kernel_matvec split across a pool in chunks of rows (multiples of 16); NULL pool: single thread. */
void kernel_matvec_mt(pool *p, float *y, const qmat *w, const float *x);

/* Y[j][r] = sum_c W[r][c] * X[j][c] for j < n, r0 <= r < r1: Y is n x rows and X is n x cols, both
 * row-major (Y = X W^T). At the AVX2 and AVX-512 levels, from a few rows of X on, W is unpacked once
 * per 96 rows of X into panels: f32 panels and an FMA micro-kernel (kernels_gemm_avx2.c), except that
 * Q8/Q4/Q2 weights go to int16 panels and vpmaddwd or vpdpwssd (kernels_gemm_int16_avx2.c, the AVX-512
 * tile in kernels_avx512.c; x rounded to int16 per group, kernel_uses_int16_x); below that, each W row
 * is unpacked once per 4 rows of X (16 on the int16 path). At the amx level, Q8/Q4/Q2 weights go to AMX
 * tiles instead (kernels_amx.c; x rounded the same way). Up to ~115 KB of stack. */
void kernel_matmat_rows(float *Y, const qmat *w, const float *X, int n, int r0, int r1);

/* Expert up-projection, SwiGLU: h[r] = silu(gate[r] . x) * (up[r] . x) for r0 <= r < r1,
 * silu(g) = g / (1 + exp(-g)). gate and up have the same shape. */
void kernel_swiglu_gate_up(float *h, const qmat *gate, const qmat *up, const float *x, int r0, int r1);
/* Expert down-projection into the running sum: y[r] += weight * (down[r] . h) for r0 <= r < r1. */
void kernel_matvec_accum_rows(float *y, const qmat *down, const float *h, float weight, int r0, int r1);

/* out[i] = silu(g[i]) * u[i] for i < n (u NULL: silu(g[i])), silu(g) = g / (1 + exp(-g)); out may be g
 * or u. At the avx2 level and above exp is a vector polynomial within 2 ulp of expf
 * (tests/test_kernels.c); below -87.3 it gives 0 instead of expf's subnormals. */
void kernel_silu_mul(float *out, const float *g, const float *u, size_t n);
/* x[i] = exp(x[i] - sub) for i < n, and their sum (softmax numerators), with kernel_silu_mul's exp. The
 * scalar level sums left to right; the others in vector lanes. */
float kernel_exp_sum(float *x, int n, float sub);

/* 1 when the active level computes products of w with n rows of x (kernel_matvec*: n = 1,
 * kernel_matmat_rows: n) with x rounded to int16 per group of w (see kernels_impl.h: adds at most
 * sum_g 0.5 * max_g|x| / 32767 * sum_{c in g} |q_c s_g| to the error), else 0. */
int kernel_uses_int16_x(const qmat *w, int n);

/* The CPU's multiply-add peak for prompt-chunk products at the active level, measured: every thread of
 * the pool runs a register-only loop for `seconds` at once; the sum of their rates (multiply-adds per
 * second). f32 FMAs at the vector width (scalar level: a scalar loop); at the AVX2 and AVX-512 levels the
 * larger of that and int16 products (vpmaddwd, or vpdpwssd with VNNI; each loop `seconds`); at the amx
 * level, byte products on tiles halved (each multiply-add at int16 precision is two of them).
 * kernel_peak_name says which. */
double kernel_peak_mac_rate(pool *p, double seconds);
const char *kernel_peak_name(void);

/* The scalar reference of kernel_matvec_rows, whatever level is active (tests, tools). */
void kernel_matvec_rows_ref(float *y, const qmat *w, const float *x, int r0, int r1);

#endif
