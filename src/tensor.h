/* Weight types and the matrix view every kernel takes. */
#ifndef FLASHMOE_TENSOR_H
#define FLASHMOE_TENSOR_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    DTYPE_F32,
    DTYPE_F16,
    DTYPE_BF16,
    DTYPE_Q8, /* group-wise affine, MLX layout: uint32 words, LSB first; bf16 scale+bias per group */
    DTYPE_Q4,
    DTYPE_Q3,
    DTYPE_Q2,
    DTYPE_COUNT
} dtype;

const char *dtype_name(dtype t);
/* Bits per stored weight value (32, 16, 16, 8, 4, 3, 2). */
int dtype_bits(dtype t);
/* Group-wise affine quantized (Q8, Q4, Q3, Q2). */
static inline int dtype_is_quant(dtype t) { return t >= DTYPE_Q8 && t < DTYPE_COUNT; }

/* A row-major matrix W [rows x cols] as it lies in memory (mmapped file, expert buffer, ...).
 * For quantized types, data holds rows * cols * bits / 32 uint32 words, and scales/biases hold
 * rows * cols / group bf16 values; value = q * scale + bias. */
typedef struct {
    dtype type;
    int rows, cols;
    const void *data;
    const uint16_t *scales;
    const uint16_t *biases;
    int group;
} qmat;

/* NULL when the kernels accept w's layout, else a short reason: known dtype, rows/cols > 0, data
 * present, and for quantized types group 32, 64 or 128, cols a multiple of group, scales and biases
 * present. (MLX packs 3-bit values 8 to 3 bytes, which is the same LSB-first bit stream.) */
const char *qmat_check(const qmat *w);
/* Bytes of w->data: rows * cols * bits / 8. */
size_t qmat_data_bytes(const qmat *w);
/* Number of scales (and of biases): rows * cols / group; 0 for float types. */
size_t qmat_group_count(const qmat *w);

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even; NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

#endif
