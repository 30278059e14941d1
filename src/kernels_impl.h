/* Internal to the kernels: the table each SIMD level fills in, and the prepared-x view its row
 * kernels read. Only kernels*.c include this.
 *
 * How a quantized row dot product is split. With w_c = q_c * s_g + b_g (g = group of c):
 *     W[r] . x = sum_g s_g * (sum_{c in g} q_c x_c)  +  sum_g b_g * xsum_g,   xsum_g = sum_{c in g} x_c
 * The xsum_g are computed once per x (not per row), so the inner loop is one FMA per weight on the
 * integer q converted to float. To make unpacking cheap, x is stored in the order the row kernel
 * unpacks: vector lane i holds the values of one 32-bit word (or, for Q3, one 3-byte pack of 8
 * values), and the k-th value of every lane comes out of one shift. So for a block of
 * lanes * pack values starting at e, the prepared x is
 *     xp[e + k * lanes + i] = x[e + i * pack + k]        (0 <= i < lanes, 0 <= k < pack)
 * zero-padded to a whole block. Q8 and the float types read x in natural order (pack 1).
 *
 * Why not integer dot products (VNNI vpdpbusd on q and an int8 copy of x, one instruction per 64
 * weights): rounding x to int8 per group moves each product by up to 1/254 of the group's largest
 * |x|, ~1e-3 of sum |w x| in practice, a hundred times the 1e-5 bound the reference comparison
 * allows (tests/test_kernels.c). So x stays f32 and each weight costs one FMA plus its unpacking:
 * on AVX-512 the packed formats run at ~15-20 G weights/s per core, which for Q4 is close to one
 * core's share of DRAM bandwidth when two cores stream. */
#ifndef FLASHMOE_KERNELS_IMPL_H
#define FLASHMOE_KERNELS_IMPL_H
#include "kernels.h"

/* x vectors one row kernel call takes at once (matmat); the W row is unpacked once for all. */
#define KERNEL_NB 4
/* Floats of prepared x the driver keeps on its stack; columns are processed in chunks of at most
 * this many (divided by the number of x vectors), a multiple of KERNEL_CHUNK_ALIGN. */
#define KERNEL_XBUF 8192
/* Chunk granularity: a multiple of every group size (<= 128) and every block (<= 16 lanes * 16). */
#define KERNEL_CHUNK_ALIGN 512
/* Upper bound on groups in a chunk (groups are >= 32 values), plus padding for vector over-reads. */
#define KERNEL_MAX_GROUPS (KERNEL_XBUF / 32 + 32)

typedef struct {
    const float *x;    /* the chunk's x values, in the row kernel's order (see above) */
    const float *xsum; /* quantized types: sum of x over each group of the chunk, zero-padded by 16 */
} kernel_xview;

/* out[(r - r0) * nb + j] = W[r][c0, c1) . x_j for r0 <= r < r1 and j < nb (1 <= nb <= KERNEL_NB),
 * x_j given by xv[j] relative to c0. c0 is a multiple of KERNEL_CHUNK_ALIGN; c1 is c0 + chunk or
 * cols. The driver passes at most KERNEL_ROWS_MAX rows per call. */
typedef void (*kernel_rows_fn)(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb,
                               float *out);
#define KERNEL_ROWS_MAX 64

/* Bytes ahead of the current position the row kernels prefetch W from (0: no software prefetch;
 * the hardware prefetcher alone leaves quantized rows latency-bound). */
#ifndef KERNEL_PREFETCH
#define KERNEL_PREFETCH 1024
#endif

typedef struct {
    const char *name;
    int lanes;               /* floats per vector: the interleave width of prepared x */
    int pack[DTYPE_COUNT];   /* values per lane per block; 1 = natural order */
    kernel_rows_fn rows[DTYPE_COUNT];
} kernel_ops;

/* NULL when the level was not compiled in (non-x86 build). Callers check the CPU first. */
const kernel_ops *kernel_ops_avx2(void);
const kernel_ops *kernel_ops_avx512(void);

/* Helpers shared by the SIMD files. Values per lane: 32 / bits, except Q3 packs 8 values in 3 bytes. */
static inline int quant_pack(int bits) { return bits == 3 ? 8 : 32 / bits; }

#endif
