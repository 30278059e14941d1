/* Group-wise affine quantization into MLX's layout (the format the kernels read; see tensor.h):
 * each group of `group` consecutive values of a row gets a bf16 scale s and bias b, and each value a
 * bits-wide integer q in [0, 2^bits - 1], value ~ q * s + b; q are packed LSB first as a contiguous
 * bit stream in uint32 words (for 3 bits, MLX's 8-values-in-3-bytes packing is that same stream).
 *
 * Two ways to choose s and b:
 *   QUANT_MINMAX  s = (max - min) / (2^bits - 1), b = min, then rounded to bf16; q is computed from
 *                 the rounded s and b. Every value is within s/2 (+ bf16 rounding, see test_quant.c).
 *   QUANT_MSE     minimises the group's squared error: starts from min/max and from a few narrower
 *                 (clipping) ranges, alternates least squares (fix q: fit s and b, round them to
 *                 bf16; fix s and b: round q), then tries the bf16 neighbours of the best s and b.
 *                 Keeps the best candidate, min/max included, so its error is never larger.
 * Inputs must be finite. */
#ifndef FLASHMOE_QUANT_H
#define FLASHMOE_QUANT_H
#include "tensor.h"
#include "threadpool.h"

typedef enum { QUANT_MINMAX, QUANT_MSE } quant_method;

/* uint32 words holding n values of type t (n a multiple of 32). */
size_t quant_words(dtype t, size_t n);

/* Quantizes x, rows x cols row-major, into type t (Q8, Q4, Q3 or Q2) with the given group (32, 64 or
 * 128, dividing cols): words gets quant_words(t, rows * cols) words, scales and biases
 * rows * cols / group bf16 values each. Returns 0, or -1 (nothing written) for arguments the format
 * does not allow. */
int quant_rows(dtype t, quant_method how, const float *x, int rows, int cols, int group, uint32_t *words,
               uint16_t *scales, uint16_t *biases);

/* quant_rows with the rows split across a pool (NULL: this thread). QUANT_MSE costs ~0.2-0.5 us per
 * value on one core of the development machine, so converting a model wants all cores. */
int quant_rows_mt(pool *p, dtype t, quant_method how, const float *x, int rows, int cols, int group,
                  uint32_t *words, uint16_t *scales, uint16_t *biases);

/* The values a quantized matrix stands for, rows x cols into out (the kernels' reference reading). */
void quant_dequantize(const qmat *w, float *out);

/* Squared error of one group quantized with scale s and bias b (already bf16 values), q rounded
 * and clamped as quant_rows does; the candidates quant_rows compares are scored by this. */
double quant_group_sse(const float *x, int n, int bits, float s, float b);

#endif
