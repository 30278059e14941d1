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
 * Integer dot products. int8 activations (llama.cpp's q8, VNNI vpdpbusd) move each product by up
 * to 1/254 of the group's largest |x|, ~1e-3 of sum |w x| in practice, too coarse next to the f32
 * path. The int16 path instead writes x per weight group as one int16, x_c ~= d_g * xq_c,
 * d_g = max_g |x| / 32767 (|x_c - that| <= d_g / 2 + 2^-22 |x_c|: 1.5e-5 of the group's largest |x|,
 * far below a q4 or q2 weight's own step), sums q_c * xq_c exactly in int32 with vpmaddwd (vpdpwssd
 * with VNNI; one instruction per 16 weights, the codes unpacked by shift+and in 16-bit lanes), then
 * applies s_g * d_g per group; the bias half b_g * xsum_g still uses the f32 x. tests/test_kernels.c
 * checks the bound. (Until series 4 x was split into two int16 parts, f32-grade, at twice the
 * multiply-adds; one part made decoding 15-50% faster, and 400 greedy tokens of the tiny-a fixture
 * converted with --experts q4 --dense q4 came out identical with one part, two parts and the scalar
 * kernels.)
 * Q4 and Q2 take this path at the AVX2 and AVX-512 levels; Q8 (slower this way: its f32 unpacking is a
 * single convert) and Q3 (8 values in 24 bits do not fit 16-bit lanes) keep f32 x and one FMA per
 * weight. The prompt-chunk GEMMs of the AVX2 and AVX-512 levels (kernels_gemm_int16_avx2.c) and the amx
 * level (kernels_amx.c) round x this way for Q8, Q4 and Q2. */
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
    /* The int16 path (kernel_ops.qpack[type] > 0; x is then not prepared as floats, x is NULL):
     * x_c ~= xd_g * xq_c with xd_g = max_{c in g} |x_c| / 32767 and xq_c = round(x_c / xd_g) (so
     * |x_c - xd_g xq_c| <= xd_g / 2, 1.5e-5 of the group's largest |x|), in the order
     * xq[e + k * KERNEL_QLANES + i] = xq_(e + i * qpack + k) over blocks of KERNEL_QLANES * qpack
     * values, zero-padded to a whole block; xd zero-padded by 16 groups. */
    const int16_t *xq;
    const float *xd;
} kernel_xview;

/* int16 lanes of one 256-bit vector: the interleave width of the int16 path's prepared x. */
#define KERNEL_QLANES 16
/* The int16 path's prepared x on the driver's stack (int16 values), and how many x vectors of a
 * matmat it prepares at once (each W row block is then run against all of them: W is read from
 * memory once per KERNEL_QSLOTS x vectors, and x is prepared once per call, not per row block). */
#define KERNEL_QXBUF 32768
#define KERNEL_QSLOTS 16
/* x vectors per int16 row kernel call. */
#define KERNEL_QNB 2

/* Rows of X from which kernel_matmat_rows takes the panel GEMM instead of the row kernels (measured:
 * bench/kernels.c), for every type but Q3 (see takes_gemm in kernels.c). */
#ifndef GEMM_MIN_N
#define GEMM_MIN_N 3
#endif

/* out[(r - r0) * nb + j] = W[r][c0, c1) . x_j for r0 <= r < r1 and j < nb (1 <= nb <= KERNEL_NB),
 * x_j given by xv[j] relative to c0. c0 is a multiple of KERNEL_CHUNK_ALIGN; c1 is c0 + chunk or
 * cols. The driver passes at most KERNEL_ROWS_MAX rows per call. */
typedef void (*kernel_rows_fn)(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb,
                               float *out);
#define KERNEL_ROWS_MAX 64

/* Bytes ahead of the current position the row kernels prefetch W from (0: no software prefetch;
 * the hardware prefetcher alone leaves quantized rows latency-bound). 4 KB: decoding the 35B q4 in RAM
 * on 2 threads, the Sapphire Rapids host went from 6.7-7.6 tok/s at 1 KB to 8.6-9.6, with 2 and 3 KB
 * in between; the Zen 3 machine moved within its noise, never slower (BENCHMARKS.md, series 11). */
#ifndef KERNEL_PREFETCH
#define KERNEL_PREFETCH 4096
#endif

typedef struct {
    const char *name;
    int lanes;               /* floats per vector: the interleave width of prepared x */
    int pack[DTYPE_COUNT];   /* values per lane per block; 1 = natural order */
    kernel_rows_fn rows[DTYPE_COUNT];
    /* > 0: the row kernel for this type takes x quantized to int16 per group (see kernel_xview),
     * with this many values per 16-bit lane; 0: the f32 path. */
    int qpack[DTYPE_COUNT];
    /* The int16 path's x preparation (see kernel_xview): xq and xd of x[0, n), n a multiple of
     * group; xd gets ng = n / group scales. */
    void (*quant_x16)(const float *x, int n, int group, int qp, int16_t *xq, float *xd);
    /* Y = X W^T for rows [r0, r1) when n >= GEMM_MIN_N and w is not Q3 (kernel_matmat_rows' contract):
     * W unpacked once into panels that serve all n rows of X; NULL: the row kernels serve matmat too. */
    void (*gemm)(float *Y, const qmat *w, const float *X, int n, int r0, int r1);
    /* 1 when gemm rounds x to int16 per group for weights of type t (every SIMD level: Q8, Q4,
     * Q2); NULL: never. */
    int (*gemm_rounds_x)(dtype t);
    /* What replaces the int16 path when x must stay f32 (kernel_f32_x_force, FLASHMOE_F32_X): row
     * kernels for the types with qpack > 0, and a GEMM that keeps x in f32 for every type. */
    kernel_rows_fn rows_f32x[DTYPE_COUNT];
    void (*gemm_f32x)(float *Y, const qmat *w, const float *X, int n, int r0, int r1);
    /* kernel_silu_mul and kernel_exp_sum; NULL: the scalar reference. */
    void (*silu_mul)(float *out, const float *g, const float *u, size_t n);
    float (*exp_sum)(float *x, int n, float sub);
} kernel_ops;

/* The panel GEMM (kernels_gemm_avx2.c): W is unpacked into f32 panels of GEMM_MR rows x GEMM_KC columns,
 * P[k * GEMM_MR + i] = W[rb + i][kb + k], each run against tiles of X rows by a level's tile function. */
#define GEMM_MR 16  /* weight rows per panel */
#define GEMM_KC 256 /* columns per panel: 16 KB of f32, in L1 */
#ifndef GEMM_NB
#define GEMM_NB 96  /* activation rows per pass (a multiple of every tile height): their GEMM_KC columns stay in L2 */
#endif
/* Y[j][0..nr) (+ if !first)= sum_k X[k * rows + j] * P[k * GEMM_MR + 0..nr) for the tile's rows j < rows
 * (X packed `rows` values per k), Y rows ldy apart. */
typedef void (*kernel_gemm_tile)(int rows, const float *P, int kc, const float *X, float *Y, size_t ldy, int nr,
                                 int first);
/* Prefetches the weight bytes of rows rb.. rb + nr - 1, columns [kb, kb + kc), with their scales and
 * biases: a later panel's, so that unpacking does not wait for memory (its rows are a stride apart,
 * which the hardware prefetchers miss). Into L2 (_MM_HINT_T1): a panel is up to 100 lines issued at
 * once, more than L1 has fill buffers for; into L2 the expert GEMMs of a 512-token prompt took 16% less
 * time than into L1 on Zen 4 (BENCHMARKS.md, series 12). */
void kernel_prefetch_panel(const qmat *w, int rb, int nr, int kb, int kc);
/* The panel after next (rows rb + 2 GEMM_MR, or the next column block's first rows) for a driver that
 * walks rows [r0, r1) in panels of GEMM_MR within column blocks of kcb: prefetched if it exists. */
void kernel_prefetch_panel_ahead(const qmat *w, int rb, int r0, int r1, int kb, int kcb);
/* Y = X W^T for W rows [r0, r1), with tiles of nrt X rows. */
void kernel_gemm_run(float *Y, const qmat *w, const float *X, int n, int r0, int r1, int nrt, kernel_gemm_tile tile);
void kernel_gemm_avx2(float *Y, const qmat *w, const float *X, int n, int r0, int r1);
/* The AVX2 level's GEMM (kernels_gemm_int16_avx2.c): Q8/Q4/Q2 with x rounded to int16 per group and
 * vpmaddwd, other types through kernel_gemm_avx2. kernel_gemm_int16_rounds_x: the types it rounds x for.
 * Its blocks: GEMM16_NB x rows per pass, GEMM16_KC columns, 16 weight rows per panel; x packed as int16
 * pairs, Xp[j * GEMM16_STEPS + s], and per row and group d and the f32 sum at [j * GEMM16_MAXG + g]; the
 * panel P[s * 16 + i] (int16 code pairs of weight row i), its scales and biases sc/bi[g * 16 + i]. */
#ifndef GEMM16_KC /* 512: 5% faster prompts than 256 on Zen 4, the panel (16 KB) still in L1 (series 12) */
#define GEMM16_KC 512
#endif
#define GEMM16_NB 96 /* a multiple of every tile height */
#define GEMM16_MAXG (GEMM16_KC / 32)
#define GEMM16_STEPS (GEMM16_KC / 2)
void kernel_gemm_int16_avx2(float *Y, const qmat *w, const float *X, int n, int r0, int r1);
int kernel_gemm_int16_rounds_x(dtype t);
/* A tile of the int16 GEMM: Y[j][0 .. nr) (+ unless first)= x rows j < rows (Xp, xd, xs at the tile's first)
 * times the panel, over ng groups of spg steps. */
typedef void (*kernel_gemm16_tile)(int rows, const int32_t *P, const int32_t *Xp, const float *xd, const float *xs,
                                   const float *sc, const float *bi, int ng, int spg, float *Y, size_t ldy, int nr,
                                   int first);
/* Fills the panel of weight rows rb .. rb + nr - 1 (nr <= 16; the rest zero), columns [kb, kb + kc): P, in
 * the layout its level's tile reads (AVX2: the code pairs P[s * 16 + i]; AVX-512: the packed words
 * P[m * 16 + i]), and the scales and biases sc/bi[g * 16 + i] (kernel_gemm16_panel_scales). */
typedef void (*kernel_gemm16_fill)(int32_t *P, float *sc, float *bi, const qmat *w, int rb, int nr, int kb, int kc);
void kernel_gemm16_panel_scales(float *sc, float *bi, const qmat *w, int rb, int nr, int kb, int kc);
/* The int16 GEMM's driver (Q8/Q4/Q2 only), with tiles of nrt x rows and panels from fill: the AVX2 level's
 * and the AVX-512 level's. */
void kernel_gemm_int16_run(float *Y, const qmat *w, const float *X, int n, int r0, int r1, int nrt,
                           kernel_gemm16_tile tile, kernel_gemm16_fill fill);
/* The AVX-512 level's (kernels_avx512.c): the same driver and x, its own panels (16 weight rows' packed
 * words, transposed, unpacked by the tile), tiles of 12 x rows (GEMM16_NR512), vpdpwssd where the CPU
 * has AVX512-VNNI; other types through kernel_gemm_avx512. */
void kernel_gemm_int16_avx512(float *Y, const qmat *w, const float *X, int n, int r0, int r1);
void kernel_gemm_int16_avx512_vnni(float *Y, const qmat *w, const float *X, int n, int r0, int r1);
double kernel_madd16_rate_avx512(double seconds, int vnni);
/* int16 multiply-adds per second of this thread's vpmaddwd (register-only loop): the AVX2 level's
 * arithmetic peak for those products. */
double kernel_madd16_rate_avx2(double seconds);
/* Calls round(ctx) again and again for at least `seconds`; how many calls per second. The loop of the
 * int16 peaks: each round runs its chains on registers and stores them back into ctx, so that they
 * stay live and no call inside the round makes the compiler keep them in memory. */
double kernel_rounds_per_second(void (*round)(void *ctx), void *ctx, double seconds);
void kernel_gemm_avx512(float *Y, const qmat *w, const float *X, int n, int r0, int r1);
/* The AMX GEMM (kernels_amx.c): Q8/Q4/Q2 on tiles, other types through kernel_gemm_avx512. Needs
 * kernel_amx_usable() (cpuid, and the kernel's permission for the tile state, asked for once). */
void kernel_gemm_amx(float *Y, const qmat *w, const float *X, int n, int r0, int r1);
int kernel_gemm_amx_rounds_x(dtype t);
int kernel_amx_usable(void);
/* Byte multiply-adds per second of this thread's tile unit (register-only TDPBUSD loop). */
double kernel_amx_int8_rate(double seconds);
/* Multiply-adds per second this thread's FMA units sustain at a level's vector width, over at least
 * `seconds`: 12 independent chains of FMAs on registers (no memory traffic). The hardware's f32
 * arithmetic peak, against which `flashmoe bench` sets the prefill floor. kernel_fma_rate_avx2 is in
 * kernels_gemm_avx2.c, kernel_fma_rate_avx512 in kernels_avx512.c, both from KERNEL_FMA_RATE_FN (which
 * needs util.h and the level's target pragma). */
double kernel_fma_rate_avx512(double seconds);
double kernel_fma_rate_avx2(double seconds);
#define KERNEL_FMA_RATE_FN(NAME, VEC, SET1, FMADD, CVTSS, LANES)                            \
    double NAME(double seconds) {                                                          \
        VEC a[12];                                                                         \
        for (int i = 0; i < 12; i++) a[i] = SET1(0.001f * (float)i);                       \
        const VEC m = SET1(0.9999f), c = SET1(1e-6f);                                      \
        long iters = 0;                                                                    \
        double t0 = util_now_seconds(), dt;                                                \
        do {                                                                               \
            for (int r = 0; r < 4096; r++) {                                               \
                _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = FMADD(a[i], m, c); \
            }                                                                              \
            iters += 4096;                                                                 \
        } while ((dt = util_now_seconds() - t0) < seconds);                                \
        float sink = 0.0f;                                                                 \
        for (int i = 0; i < 12; i++) sink += CVTSS(a[i]);                                  \
        __asm__ volatile("" : : "x"(sink)); /* keep the chains */                          \
        return (double)iters * 12 * (LANES) / dt;                                          \
    }
/* The int16 path's row kernels for Q4 and Q2 and its x preparation (kernels_avx2.c, 256-bit), for the
 * AVX2 and AVX-512 levels; the _vnni kernels sum with vpdpwssd and need AVX512-VNNI + VL. */
void kernel_rows_q4_avx2(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb, float *out);
void kernel_rows_q2_avx2(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb, float *out);
void kernel_rows_q4_vnni(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb, float *out);
void kernel_rows_q2_vnni(const qmat *w, int r0, int r1, int c0, int c1, const kernel_xview *xv, int nb, float *out);
void kernel_quant_x16_avx2(const float *x, int n, int group, int qp, int16_t *xq, float *xd);
/* kernel_silu_mul and kernel_exp_sum with a 256-bit exp (kernels_avx2.c), for every SIMD level. */
void kernel_silu_mul_avx2(float *out, const float *g, const float *u, size_t n);
float kernel_exp_sum_avx2(float *x, int n, float sub);
/* Value c of row r of w as f32 (the scalar reference's unpacking). */
float kernel_weight(const qmat *w, int r, int c);

/* NULL when the level was not compiled in (non-x86 build). Callers check the CPU first. */
const kernel_ops *kernel_ops_avx2(void);
const kernel_ops *kernel_ops_avx512(void);
const kernel_ops *kernel_ops_amx(void);

/* Helpers shared by the SIMD files. Values per lane: 32 / bits, except Q3 packs 8 values in 3 bytes. */
static inline int quant_pack(int bits) { return bits == 3 ? 8 : 32 / bits; }

/* The int16 path's rounding of one group of x whose largest |x| is mx (see the top): its step d, and the
 * factor inv with xq = round(x * inv). Every kernel that rounds x this way (kernel_uses_int16_x) takes it
 * from here, so that the tests' bound holds for all of them. */
static inline void int16_step(float mx, float *d, float *inv) {
    *d = mx / 32767.0f;
    *inv = mx > 0.0f ? 32767.0f / mx : 0.0f;
}

#endif
