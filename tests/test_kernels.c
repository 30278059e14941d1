/* Kernels: the scalar reference reads the MLX layout, and every SIMD level available on this CPU
 * matches the reference on random matrices of awkward sizes, for every dtype and group size.
 *
 * The error bound, |y - y_ref| <= 1e-5 * sum_c |w_rc x_c| (+ tiny absolute floor):
 * both sides compute the same products in f32 and differ only in how they sum them (the reference
 * left to right; SIMD in 8/16 lanes, per group, with the bias split off as b_g * sum_g x, and column
 * chunks). A float sum of n terms is off by at most gamma_n * sum|terms| (Higham), gamma_n ~ n * u,
 * u = 2^-24 = 6e-8; that worst case needs every rounding to go the same way. Rounding errors of
 * random data behave like a random walk: the error is ~ u * sqrt(n) times the typical partial sum, and
 * normalised by sum|terms| that is a few u for random signs and ~ u * sqrt(n / 3) when all terms share
 * a sign (2e-6 at n = 4096). The bias split adds terms up to ~4x larger than |w_c x_c| (q * s can be
 * larger than q * s + b), so a few-fold more. 1e-5 (~170 u) leaves margin over all of that for the
 * sizes here (n <= 21k) while catching any real fault: one element unpacked wrong, a wrong scale or
 * bias, or a dropped tail moves the result by ~|w_c x_c| / sum|w x| >= 1/n, i.e. >= 5e-5.
 *
 * The int16 path (kernel_uses_int16_x: AVX2/AVX-512 rows for Q4/Q2; the prompt-chunk GEMMs of every SIMD
 * level for Q8/Q4/Q2) also rounds x to 16 bits per group, and only this path gets an extra term, qerr =
 * sum_g 0.5 * 1.01 * (m_g / 32767) * sum_{c in g} |q_c s_g|, m_g = max_{c in g} |x_c|. Derivation: x_c is
 * replaced by d_g * xq_c with d_g = fl(m_g / 32767), f_c = fl(x_c * fl(32767 / m_g)) and xq_c = round(f_c).
 * f_c is within 2^-23 relative of x_c / d_g (two roundings plus d_g's own) and |f_c - xq_c| <= 0.5, hence
 * |x_c - d_g xq_c| <= d_g / 2 + 2^-22 |x_c|. The bias half sum_g b_g xsum_g uses the exact f32 x, so the
 * dot product moves by at most sum_c |q_c s_g| times that; the 2^-22 |x_c| part is at most 2^-22 * sum |q_c
 * s_g x_c| <= ~4 * 2^-22 sum|w x| (q s vs q s + b, as above), inside REL_TOL's margin, and qerr covers the
 * rest (1.01: slack for the f32 roundings of d_g and m_g). That is at most 1.5e-5 of the group's largest
 * |x| per unit of |q s|: far below the weights' own quantization error (a q4 step is 1/15 of the group's
 * range). The integer sums q . xq are exact in int32 (<= 128 * 255 * 32767 < 2^31 per group); their
 * conversion to f32 and the scaling by s_g d_g are f32 roundings of the same kind as the f32 path's. A
 * wrong code, scale or tail still moves the result by ~|w_c x_c|: the tests' data keep |x_c| within a small
 * factor of m_g, so that is thousands of times qerr's share per weight. */
#include "kernels.h"
#include "kernels_impl.h" /* the AVX-512 int16 GEMM's two tiles, called directly */
#include "test.h"

#include <math.h>
#include <stdint.h>

#define REL_TOL 1e-5

/* ---- random data ---------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_uniform(void) { return (float)((rng_u64() >> 40) * (1.0 / (1 << 24))); } /* [0, 1) */
static float rng_normal(void) {
    float u = rng_uniform() + 1e-7f, v = rng_uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* A random matrix of any dtype; owns its buffers. Quantized: random bits, scales ~ 0.02, biases
 * around -scale * 2^(bits-1) as real quantized weights have. */
typedef struct {
    qmat m;
    void *data;
    uint16_t *scales, *biases;
} test_mat;

static test_mat mat_random(dtype t, int rows, int cols, int group) {
    test_mat tm = {0};
    qmat *m = &tm.m;
    *m = (qmat){.type = t, .rows = rows, .cols = cols, .group = group};
    size_t n = (size_t)rows * cols;
    size_t bytes = (n * dtype_bits(t) + 31) / 32 * 4;
    tm.data = malloc(bytes);
    if (t == DTYPE_F32) {
        for (size_t i = 0; i < n; i++) ((float *)tm.data)[i] = rng_normal() * 0.05f;
    } else if (t == DTYPE_F16) {
        for (size_t i = 0; i < n; i++) ((uint16_t *)tm.data)[i] = f32_to_f16(rng_normal() * 0.05f);
    } else if (t == DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) ((uint16_t *)tm.data)[i] = f32_to_bf16(rng_normal() * 0.05f);
    } else {
        for (size_t i = 0; i < bytes / 4; i++) ((uint32_t *)tm.data)[i] = (uint32_t)rng_u64();
        size_t ng = n / group;
        tm.scales = malloc(ng * sizeof(uint16_t));
        tm.biases = malloc(ng * sizeof(uint16_t));
        int half = 1 << (dtype_bits(t) - 1);
        for (size_t g = 0; g < ng; g++) {
            float s = 0.02f * (0.5f + rng_uniform()) / half;
            tm.scales[g] = f32_to_bf16(s);
            tm.biases[g] = f32_to_bf16(-s * half * (0.8f + 0.4f * rng_uniform()));
        }
        m->scales = tm.scales;
        m->biases = tm.biases;
    }
    m->data = tm.data;
    return tm;
}

static void mat_free(test_mat *tm) {
    free(tm->data);
    free(tm->scales);
    free(tm->biases);
}

/* x ~ N(0, 1) with a few large outliers, as activations have. */
static void vec_random(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = rng_normal();
    for (int i = 0; i < n / 64; i++) x[rng_u64() % n] *= 20.0f;
}

/* sum_c |w_rc x_c| per row, from the reference dequantization, in double. */
static void abs_dots(double *out, const qmat *w, const float *x, int r0, int r1) {
    float *row = malloc(sizeof(float) * w->cols);
    for (int r = r0; r < r1; r++) {
        kernel_row_f32(row, w, r);
        double s = 0;
        for (int c = 0; c < w->cols; c++) s += fabs((double)row[c] * x[c]);
        out[r] = s;
    }
    free(row);
}

/* The int16 path's extra bound per row (derivation at the top): sum_g 0.5 1.01 m_g / 32767 sum |q_c s_g|,
 * with |q_c s_g| = |w_c - b_g|; 0 when the active level keeps x in f32 for w in a product with n rows of x. */
static void int16_bounds(double *out, const qmat *w, const float *x, int r0, int r1, int n) {
    for (int r = r0; r < r1; r++) out[r] = 0;
    if (!kernel_uses_int16_x(w, n)) return;
    float *row = malloc(sizeof(float) * w->cols);
    for (int r = r0; r < r1; r++) {
        kernel_row_f32(row, w, r);
        double s = 0;
        for (int g = 0; g < w->cols / w->group; g++) {
            double m = 0, qs = 0, b = bf16_to_f32(w->biases[((size_t)r * w->cols) / w->group + g]);
            for (int c = g * w->group; c < (g + 1) * w->group; c++) {
                m = fabs(x[c]) > m ? fabs(x[c]) : m;
                qs += fabs(row[c] - b);
            }
            s += 0.5 * 1.01 * m / 32767.0 * qs;
        }
        out[r] = s;
    }
    free(row);
}

static double worst_ratio; /* largest |y - ref| / sum|wx| seen, printed at the end */
static double worst_q;     /* the int16 path: largest |y - ref| / (REL_TOL sum|wx| + qerr) */

static int within_q(double y, double ref, double absdot, double qerr) {
    if (qerr > 0) {
        double b = REL_TOL * absdot + qerr;
        if (fabs(y - ref) / b > worst_q) worst_q = fabs(y - ref) / b;
    } else if (absdot > 0 && fabs(y - ref) / absdot > worst_ratio) {
        worst_ratio = fabs(y - ref) / absdot;
    }
    return fabs(y - ref) <= REL_TOL * absdot + qerr + 1e-30;
}

static const int GROUPS[] = {32, 64, 128};

/* ---- the reference reads the MLX layout ----------------------------------------------------- */

/* Packs q (cols values in [0, 2^bits)) the way MLX does, per its CPU source: for 2/4/8 bits, 32/bits
 * values per uint32, value k at bits k*bits; for 3 bits, 8 values per 3 bytes, value k at bit 3k of
 * the little-endian 24-bit pack. Written independently of the reference's bit-stream arithmetic. */
static void mlx_pack(uint8_t *out, const uint8_t *q, int n, int bits) {
    if (bits == 3) {
        for (int p = 0; p < n / 8; p++) {
            uint32_t v = 0;
            for (int k = 0; k < 8; k++) v |= (uint32_t)q[8 * p + k] << (3 * k);
            out[3 * p] = v & 0xff;
            out[3 * p + 1] = (v >> 8) & 0xff;
            out[3 * p + 2] = (v >> 16) & 0xff;
        }
        return;
    }
    int per = 32 / bits;
    for (int i = 0; i < n / per; i++) {
        uint32_t v = 0;
        for (int k = 0; k < per; k++) v |= (uint32_t)q[per * i + k] << (bits * k);
        memcpy(out + 4 * i, &v, 4); /* little-endian uint32, as MLX stores it on x86/ARM */
    }
}

static void test_reference_reads_mlx_layout(void) {
    dtype types[] = {DTYPE_Q8, DTYPE_Q4, DTYPE_Q3, DTYPE_Q2};
    for (int ti = 0; ti < 4; ti++) {
        int bits = dtype_bits(types[ti]), rows = 3, cols = 96, group = 32, n = rows * cols;
        uint8_t q[3 * 96];
        uint32_t words[3 * 96 * 8 / 32];
        uint16_t scales[9], biases[9];
        for (int i = 0; i < n; i++) q[i] = (uint8_t)(rng_u64() & ((1u << bits) - 1));
        mlx_pack((uint8_t *)words, q, n, bits);
        for (int g = 0; g < n / group; g++) {
            scales[g] = f32_to_bf16(0.25f * (g + 1));
            biases[g] = f32_to_bf16(-1.0f * g);
        }
        qmat m = {.type = types[ti], .rows = rows, .cols = cols, .data = words, .scales = scales,
                  .biases = biases, .group = group};
        CHECK(qmat_check(&m) == NULL, "qmat_check: %s", qmat_check(&m));
        float row[96];
        int bad = 0;
        for (int r = 0; r < rows; r++) {
            kernel_row_f32(row, &m, r);
            for (int c = 0; c < cols; c++) {
                int i = r * cols + c, g = i / group;
                float want = q[i] * (0.25f * (g + 1)) - 1.0f * g; /* exact in f32 */
                if (row[c] != want && bad++ < 3)
                    CHECK(row[c] == want, "%s r%d c%d: %g, want %g", dtype_name(types[ti]), r, c, row[c], want);
            }
        }
        CHECK(bad == 0, "%s: %d values differ", dtype_name(types[ti]), bad);
    }
}

static void test_qmat_check(void) {
    uint32_t d[64] = {0};
    uint16_t s[8] = {0};
    qmat ok = {.type = DTYPE_Q4, .rows = 2, .cols = 64, .data = d, .scales = s, .biases = s, .group = 32};
    CHECK(qmat_check(&ok) == NULL, "valid Q4 rejected: %s", qmat_check(&ok));
    CHECK(qmat_data_bytes(&ok) == 64, "data bytes %zu", qmat_data_bytes(&ok));
    CHECK(qmat_group_count(&ok) == 4, "groups %zu", qmat_group_count(&ok));
    qmat bad = ok;
    bad.group = 48;
    CHECK(qmat_check(&bad) != NULL, "group 48 accepted");
    bad = ok;
    bad.cols = 48;
    CHECK(qmat_check(&bad) != NULL, "cols not a multiple of group accepted");
    bad = ok;
    bad.scales = NULL;
    CHECK(qmat_check(&bad) != NULL, "missing scales accepted");
    qmat f = {.type = DTYPE_F32, .rows = 1, .cols = 7, .data = d};
    CHECK(qmat_check(&f) == NULL, "valid F32 rejected");
}

/* ---- every level against the reference ---------------------------------------------------------- */

static int level_count_tested;

/* Runs the body with each available level forced, lowest first (so the best is left in force). */
#define FOR_EACH_LEVEL(lv)                                                                       \
    for (kernel_level lv = KERNEL_SCALAR; lv < KERNEL_LEVEL_COUNT; lv++)                         \
        if (kernel_level_force(lv) == 0)

static const float SENTINEL = 12345.0f;

/* kernel_matvec_rows on rows [r0, r1) against the reference; rows outside untouched. */
static void check_matvec(const qmat *w, const float *x, int r0, int r1, kernel_level lv) {
    float *ref = malloc(sizeof(float) * w->rows), *y = malloc(sizeof(float) * w->rows);
    double *ad = malloc(sizeof(double) * w->rows), *qe = malloc(sizeof(double) * w->rows);
    kernel_matvec_rows_ref(ref, w, x, r0, r1);
    abs_dots(ad, w, x, r0, r1);
    int16_bounds(qe, w, x, r0, r1, 1);
    for (int r = 0; r < w->rows; r++) y[r] = SENTINEL;
    kernel_matvec_rows(y, w, x, r0, r1);
    int bad = 0;
    for (int r = 0; r < w->rows; r++) {
        int inside = r >= r0 && r < r1;
        int ok = inside ? within_q(y[r], ref[r], ad[r], qe[r]) : y[r] == SENTINEL;
        if (!ok && bad++ < 3)
            CHECK(ok, "%s %s %dx%d g%d rows [%d,%d): row %d: %.9g, ref %.9g, sum|wx| %.4g (err/sum %.3g)",
                  kernel_level_name(lv), dtype_name(w->type), w->rows, w->cols, w->group, r0, r1, r, y[r],
                  inside ? ref[r] : SENTINEL, inside ? ad[r] : 0, inside ? fabs(y[r] - ref[r]) / ad[r] : 0);
    }
    free(ref); free(y); free(ad); free(qe);
}

static void test_matvec_all_levels(void) {
    dtype types[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_Q8, DTYPE_Q4, DTYPE_Q3, DTYPE_Q2};
    int float_cols[] = {1, 7, 8, 15, 17, 33, 100, 257, 1000, 4099};
    int quant_mult[] = {1, 3, 5, 17, 40}; /* cols = group * m: not multiples of the 128/256 blocks */
    FOR_EACH_LEVEL(lv) {
        level_count_tested++;
        for (int ti = 0; ti < 7; ti++) {
            dtype t = types[ti];
            for (int ci = 0; ci < 10; ci++) {
                for (int gi = 0; gi < 3; gi++) {
                    int group = dtype_is_quant(t) ? GROUPS[gi] : 0;
                    if (!dtype_is_quant(t) && gi > 0) break;
                    if (dtype_is_quant(t) && ci >= 5) break;
                    int cols = dtype_is_quant(t) ? group * quant_mult[ci] : float_cols[ci];
                    int rows = 1 + (int)(rng_u64() % 37);
                    test_mat tm = mat_random(t, rows, cols, group);
                    float *x = malloc(sizeof(float) * cols);
                    vec_random(x, cols);
                    check_matvec(&tm.m, x, 0, rows, lv);
                    int a = (int)(rng_u64() % rows), b = a + (int)(rng_u64() % (rows - a + 1));
                    check_matvec(&tm.m, x, a, b, lv);
                    free(x);
                    mat_free(&tm);
                }
            }
        }
    }
}

/* Columns beyond one chunk of prepared x (8192 for one vector): the column-chunk loop. */
static void test_matvec_wide(void) {
    dtype types[] = {DTYPE_F16, DTYPE_Q4, DTYPE_Q3, DTYPE_Q2, DTYPE_Q8};
    FOR_EACH_LEVEL(lv) {
        for (int ti = 0; ti < 5; ti++) {
            int cols = dtype_is_quant(types[ti]) ? 20480 + 64 : 17000;
            test_mat tm = mat_random(types[ti], 5, cols, 64);
            float *x = malloc(sizeof(float) * cols);
            vec_random(x, cols);
            check_matvec(&tm.m, x, 0, 5, lv);
            free(x);
            mat_free(&tm);
        }
    }
}

/* kernel_matmat_rows(Y, w, X, n, r0, r1) against the reference row by row: within the f32 bound (plus the
 * int16 path's, when the level takes that path for n rows), and rows outside [r0, r1) untouched. */
static void check_matmat(const qmat *w, const float *X, int n, int r0, int r1, kernel_level lv) {
    int rows = w->rows, cols = w->cols, bad = 0;
    float *Y = malloc(sizeof(float) * n * rows), *ref = malloc(sizeof(float) * rows);
    double *ad = malloc(sizeof(double) * rows), *qe = calloc((size_t)rows, sizeof(double));
    for (int i = 0; i < n * rows; i++) Y[i] = SENTINEL;
    kernel_matmat_rows(Y, w, X, n, r0, r1);
    for (int j = 0; j < n; j++) {
        kernel_matvec_rows_ref(ref, w, X + (size_t)j * cols, r0, r1);
        abs_dots(ad, w, X + (size_t)j * cols, r0, r1);
        int16_bounds(qe, w, X + (size_t)j * cols, r0, r1, n);
        for (int r = 0; r < rows; r++) {
            float y = Y[(size_t)j * rows + r];
            int ok = r >= r0 && r < r1 ? within_q(y, ref[r], ad[r], qe[r]) : y == SENTINEL;
            if (!ok && bad++ < 3)
                CHECK(ok, "%s %s n=%d %dx%d g%d: Y[%d][%d] = %.9g, ref %.9g", kernel_level_name(lv),
                      dtype_name(w->type), n, rows, cols, w->group, j, r, y, r >= r0 && r < r1 ? ref[r] : SENTINEL);
        }
    }
    free(Y); free(ref); free(ad); free(qe);
}

/* The panel GEMMs' own edges: more rows of X than one pass (96; the amx GEMM's: 128), a last panel narrower
 * than 256 columns, a partial unpacking block (Q2: 128 values per block), a row range not starting on a
 * panel boundary. The f32 GEMMs are held to the f32 bound; the int16 and amx GEMMs round x to int16 for
 * Q8/Q4/Q2 and are held to that path's bound (kernel_uses_int16_x(w, n)); with kernel_f32_x_force
 * (test_f32_x_all_levels) every level's f32 GEMM runs these too. The int16 and amx GEMMs' edges are the
 * same kind: passes of 96 or 128 rows, blocks of 512 or (amx) 1024 columns, the last one part-filled and
 * ending part-way through a block of 8 words (1344 = 2 x 512 + 320 = 1024 + 320 columns of Q4 or Q2),
 * tiles of 4, 12 or 16 rows. */
static void test_matmat_panels(void) {
    dtype types[] = {DTYPE_F32, DTYPE_BF16, DTYPE_F16, DTYPE_Q8, DTYPE_Q4, DTYPE_Q3, DTYPE_Q2};
    /* 22 and 35: last tiles of 10 and 11 rows at the avx512 level's 12; 133: more than one pass of the
     * amx GEMM (128 rows) */
    int ns[] = {13, 22, 35, 97, 133};
    FOR_EACH_LEVEL(lv) {
        for (int ti = 0; ti < 7; ti++)
            for (int ni = 0; ni < 5; ni++) {
                dtype t = types[ti];
                int n = ns[ni], cols = dtype_is_quant(t) ? 1344 : 263;
                test_mat tm = mat_random(t, 37, cols, 64);
                float *X = malloc(sizeof(float) * n * cols);
                vec_random(X, n * cols);
                check_matmat(&tm.m, X, n, 5, 35, lv); /* rows 5..34 of 37 */
                free(X);
                mat_free(&tm);
            }
    }
}

/* Y = X W^T for n = 1..20 (several passes of 4 x vectors, row blocks) on row subranges. */
static void test_matmat_all_levels(void) {
    dtype types[] = {DTYPE_F32, DTYPE_BF16, DTYPE_F16, DTYPE_Q8, DTYPE_Q4, DTYPE_Q3, DTYPE_Q2};
    int ns[] = {1, 2, 3, 4, 5, 9, 20}; /* 20: more than the int16 path's 16 x vectors prepared at once */
    FOR_EACH_LEVEL(lv) {
        for (int ti = 0; ti < 7; ti++) {
            for (int ni = 0; ni < 7; ni++) {
                dtype t = types[ti];
                int n = ns[ni], group = GROUPS[ni % 3];
                int cols = dtype_is_quant(t) ? group * (1 + ni * 7) : 3 + 61 * ni;
                if (ni == 5) cols = dtype_is_quant(t) ? 4096 + group : 4101; /* > the 4-vector chunk */
                if (ni == 6) cols = dtype_is_quant(t) ? 2048 + 3 * group : 2100; /* > the 16-vector chunk */
                int rows = 70 + ni; /* more than one 64-row block */
                test_mat tm = mat_random(t, rows, cols, group);
                float *X = malloc(sizeof(float) * n * cols);
                vec_random(X, n * cols);
                check_matmat(&tm.m, X, n, ni % 2 ? 3 : 0, rows - (ni % 3), lv);
                free(X);
                mat_free(&tm);
            }
        }
    }
}

/* h = silu(gate x) * up x. Error: dh = silu'(g) u dg + silu(g) du with |silu'| <= 1.1, dg and du
 * within the matvec bound; plus a few ulp of h for expf and the product. */
static void test_swiglu_all_levels(void) {
    dtype types[] = {DTYPE_Q4, DTYPE_Q2, DTYPE_BF16, DTYPE_Q8};
    FOR_EACH_LEVEL(lv) {
        for (int ti = 0; ti < 4; ti++) {
            int rows = 45, cols = ti == 2 ? 333 : 512;
            for (int wide = 0; wide < 2; wide++) {
                if (wide) cols = dtype_is_quant(types[ti]) ? 8192 + 128 : 8200; /* x in chunks */
                test_mat g = mat_random(types[ti], rows, cols, 64), u = mat_random(types[ti], rows, cols, 64);
                /* also a mixed pair: up in another format, so x is prepared twice */
                test_mat u2 = mat_random(ti == 2 ? DTYPE_F32 : DTYPE_Q3, rows, cols, 32);
                float *x = malloc(sizeof(float) * cols), gr[45], ur[45], h[45];
                double gd[45], ud[45], gq[45], uq[45];
                vec_random(x, cols);
                for (int pair = 0; pair < 2; pair++) {
                    const qmat *up = pair ? &u2.m : &u.m;
                    kernel_matvec_rows_ref(gr, &g.m, x, 0, rows);
                    kernel_matvec_rows_ref(ur, up, x, 0, rows);
                    abs_dots(gd, &g.m, x, 0, rows);
                    abs_dots(ud, up, x, 0, rows);
                    int16_bounds(gq, &g.m, x, 0, rows, 1);
                    int16_bounds(uq, up, x, 0, rows, 1);
                    for (int r = 0; r < rows; r++) h[r] = SENTINEL;
                    kernel_swiglu_gate_up(h, &g.m, up, x, 2, rows - 1);
                    int bad = 0;
                    for (int r = 0; r < rows; r++) {
                        int ok;
                        double want = 0;
                        if (r < 2 || r == rows - 1) {
                            ok = h[r] == SENTINEL;
                        } else {
                            double sg = gr[r] / (1 + exp(-(double)gr[r]));
                            want = sg * ur[r];
                            double tol = 1.1 * fabs(ur[r]) * (REL_TOL * gd[r] + gq[r]) + fabs(sg) * (REL_TOL * ud[r] + uq[r]) +
                                         4e-7 * fabs(want) + 1e-30;
                            ok = fabs(h[r] - want) <= tol;
                        }
                        if (!ok && bad++ < 3)
                            CHECK(ok, "%s %s/%s cols %d: h[%d] = %.9g, want %.9g", kernel_level_name(lv),
                                  dtype_name(g.m.type), dtype_name(up->type), cols, r, h[r], want);
                    }
                }
                free(x);
                mat_free(&g); mat_free(&u); mat_free(&u2);
            }
        }
    }
}

/* y += weight * down h. Error: |weight| times the matvec bound, plus an ulp of the sum. */
static void test_accum_all_levels(void) {
    dtype types[] = {DTYPE_Q4, DTYPE_Q3, DTYPE_F16, DTYPE_Q8};
    FOR_EACH_LEVEL(lv) {
        for (int ti = 0; ti < 4; ti++) {
            int rows = 130, cols = dtype_is_quant(types[ti]) ? 384 : 301;
            test_mat d = mat_random(types[ti], rows, cols, 128);
            float *h = malloc(sizeof(float) * cols), y[130], y0[130], ref[130], weight = 0.37f;
            double ad[130], qe[130];
            vec_random(h, cols);
            for (int r = 0; r < rows; r++) y[r] = y0[r] = rng_normal();
            kernel_matvec_rows_ref(ref, &d.m, h, 0, rows);
            abs_dots(ad, &d.m, h, 0, rows);
            int16_bounds(qe, &d.m, h, 0, rows, 1);
            kernel_matvec_accum_rows(y, &d.m, h, weight, 5, rows - 7);
            int bad = 0;
            for (int r = 0; r < rows; r++) {
                int inside = r >= 5 && r < rows - 7;
                double want = inside ? (double)y0[r] + (double)weight * ref[r] : y0[r];
                double tol = inside ? weight * (REL_TOL * ad[r] + qe[r]) + 2.4e-7 * fabs(want) + 1e-30 : 0;
                int ok = fabs(y[r] - want) <= tol;
                if (!ok && bad++ < 3)
                    CHECK(ok, "%s %s: y[%d] = %.9g, want %.9g", kernel_level_name(lv), dtype_name(types[ti]), r, y[r],
                          want);
            }
            free(h);
            mat_free(&d);
        }
    }
}

/* kernel_exp_sum and kernel_silu_mul at every level against expf: every value within 2.5e-7 relative (2 ulp;
 * the vector exp's polynomial is good to about 1e-7, its range reduction to a few ulp of r) or, below
 * e^-87.33 where the vector exp gives 0 instead of subnormals, 1.2e-38 absolute; the f32 sum within 1e-5
 * relative of the double one (a thousand f32 additions; a dropped tail or lane is off by far more). silu adds a division and the product with u: 4e-7 relative, and
 * 1e-35 absolute for g < -88.37, where exp(-g) is clamped (expf overflows and silu is -0). 1003 values: a
 * tail that is not a whole vector. */
static void test_exp_all_levels(void) {
    enum { N = 1003 };
    static float x[N], e[N], g[N], u[N], h[N];
    for (int i = 0; i < N; i++) {
        x[i] = i < 600 ? -98.0f + 120.0f * (float)i / 599.0f : 40.0f * rng_normal(); /* x - 2 up to 20 */
        if (x[i] > 22.0f) x[i] = 22.0f;
        g[i] = i < 500 ? -92.0f + 184.0f * (float)i / 499.0f : 6.0f * rng_normal();
        u[i] = rng_normal();
    }
    FOR_EACH_LEVEL(lv) {
        memcpy(e, x, sizeof x);
        float sum = kernel_exp_sum(e, N, 2.0f);
        double ref_sum = 0;
        int bad = 0;
        for (int i = 0; i < N; i++) {
            double r = expf(x[i] - 2.0f);
            ref_sum += r;
            int ok = fabs(e[i] - r) <= 2.5e-7 * r + 1.2e-38;
            if (!ok && bad++ < 3) CHECK(ok, "%s: exp(%.9g) = %.9g, expf %.9g", kernel_level_name(lv), x[i] - 2.0f, e[i], r);
        }
        CHECK(fabs(sum - ref_sum) <= 1e-5 * ref_sum, "%s: sum %.9g, want %.9g", kernel_level_name(lv), sum, ref_sum);
        for (int with_u = 0; with_u < 2; with_u++) {
            kernel_silu_mul(h, g, with_u ? u : NULL, N);
            bad = 0;
            for (int i = 0; i < N; i++) {
                double r = g[i] / (1.0f + expf(-g[i])) * (with_u ? u[i] : 1.0f);
                int ok = fabs(h[i] - r) <= 4e-7 * fabs(r) + 1e-35;
                if (!ok && bad++ < 3)
                    CHECK(ok, "%s: silu(%.9g) * %.9g = %.9g, want %.9g", kernel_level_name(lv), g[i],
                          with_u ? u[i] : 1.0f, h[i], r);
            }
        }
        memcpy(h, g, sizeof g); /* in place, as the callers use it */
        kernel_silu_mul(h, h, u, N);
        for (int i = 0; i < N; i++) {
            double r = g[i] / (1.0f + expf(-g[i])) * u[i];
            if (fabs(h[i] - r) > 4e-7 * fabs(r) + 1e-35) {
                CHECK(0, "%s: in place: silu(%.9g) * %.9g = %.9g, want %.9g", kernel_level_name(lv), g[i], u[i], h[i], r);
                break;
            }
        }
    }
}

/* kernel_matvec_mt only splits rows: identical to kernel_matvec at the same level. */
static void test_matvec_mt_all_levels(void) {
    pool *p = pool_create(3);
    FOR_EACH_LEVEL(lv) {
        dtype types[] = {DTYPE_Q4, DTYPE_Q3, DTYPE_BF16};
        for (int ti = 0; ti < 3; ti++) {
            int rows = 333, cols = ti == 2 ? 777 : 640;
            test_mat tm = mat_random(types[ti], rows, cols, 64);
            float *x = malloc(sizeof(float) * cols), *y1 = malloc(sizeof(float) * rows), *y2 = malloc(sizeof(float) * rows);
            vec_random(x, cols);
            kernel_matvec(y1, &tm.m, x);
            kernel_matvec_mt(p, y2, &tm.m, x);
            int bad = 0;
            for (int r = 0; r < rows; r++) bad += y1[r] != y2[r];
            CHECK(bad == 0, "%s %s: %d rows differ between matvec and matvec_mt", kernel_level_name(lv),
                  dtype_name(types[ti]), bad);
            free(x); free(y1); free(y2);
            mat_free(&tm);
        }
    }
    pool_free(p);
}

/* A quantized layout the SIMD kernels do not take (group 16) still gives the reference result. */
static void test_unsupported_group_falls_back(void) {
    FOR_EACH_LEVEL(lv) {
        test_mat tm = mat_random(DTYPE_Q4, 9, 48, 16);
        float x[48], y[9], ref[9];
        vec_random(x, 48);
        kernel_matvec_rows_ref(ref, &tm.m, x, 0, 9);
        kernel_matvec(y, &tm.m, x);
        CHECK(!memcmp(y, ref, sizeof y), "%s: group 16 differs from the reference", kernel_level_name(lv));
        mat_free(&tm);
    }
}

/* The AVX-512 int16 GEMM's two tiles, vpmaddwd + vpaddd (CPUs without VNNI) and vpdpwssd, give the same
 * bits: the integer sums are exact either way and the float steps are the same. On a CPU with VNNI the
 * avx512 level runs the vpdpwssd tile, so this is where the other one is checked; on one without, it is
 * the level's own and test_matmat_* check it against the reference. */
static void test_gemm16_avx512_tiles(void) {
    if (!kernel_level_available(KERNEL_AVX512) || !__builtin_cpu_supports("avx512vnni")) {
        printf("# no AVX512-VNNI here: the avx512 level's int16 tile is checked against the reference instead\n");
        return;
    }
    dtype types[] = {DTYPE_Q8, DTYPE_Q4, DTYPE_Q2};
    for (int ti = 0; ti < 3; ti++)
        for (int gi = 0; gi < 3; gi++) {
            int n = gi == 1 ? 97 : 13, rows = 37, cols = 1344 / GROUPS[gi] * GROUPS[gi];
            test_mat tm = mat_random(types[ti], rows, cols, GROUPS[gi]);
            float *X = malloc(sizeof(float) * n * cols), *a = malloc(sizeof(float) * n * rows),
                  *b = malloc(sizeof(float) * n * rows);
            vec_random(X, n * cols);
            for (int i = 0; i < n * rows; i++) a[i] = b[i] = SENTINEL;
            kernel_gemm_int16_avx512(a, &tm.m, X, n, 5, 35);
            kernel_gemm_int16_avx512_vnni(b, &tm.m, X, n, 5, 35);
            CHECK(!memcmp(a, b, sizeof(float) * n * rows), "%s g%d n=%d: the vpmaddwd and vpdpwssd tiles differ",
                  dtype_name(types[ti]), GROUPS[gi], n);
            free(X); free(a); free(b);
            mat_free(&tm);
        }
}

/* kernel_f32_x_force(1): every level keeps x in f32 (no int16 path anywhere), so the same products meet
 * the f32 bound alone: int16_bounds is 0 once kernel_uses_int16_x says so, which is checked first. */
static void test_f32_x_all_levels(void) {
    test_mat tm = mat_random(DTYPE_Q4, 20, 256, 64);
    int levels = level_count_tested, was = kernel_f32_x_force(1);
    CHECK(was == 0, "f32 x was already forced");
    FOR_EACH_LEVEL(lv) {
        CHECK(!kernel_uses_int16_x(&tm.m, 1) && !kernel_uses_int16_x(&tm.m, 20), "%s: int16 x with f32 x forced",
              kernel_level_name(lv));
    }
    test_matvec_all_levels();
    test_matmat_all_levels();
    test_matmat_panels();
    test_swiglu_all_levels();
    test_accum_all_levels();
    level_count_tested = levels;
    kernel_f32_x_force(0);
    /* and back: the avx2 level rounds Q4 x again (when the CPU has it) */
    if (kernel_level_force(KERNEL_AVX2) == 0) CHECK(kernel_uses_int16_x(&tm.m, 1), "avx2 Q4: no int16 x after reset");
    FOR_EACH_LEVEL(lv) {} /* leave the best level in force */
    mat_free(&tm);
}

int main(void) {
    printf("# levels available:");
    for (kernel_level l = KERNEL_SCALAR; l < KERNEL_LEVEL_COUNT; l++)
        if (kernel_level_available(l)) printf(" %s", kernel_level_name(l));
    printf("; active by default: %s\n", kernel_level_name(kernel_level_active()));
    RUN_TEST(test_reference_reads_mlx_layout);
    RUN_TEST(test_qmat_check);
    RUN_TEST(test_matvec_all_levels);
    RUN_TEST(test_matvec_wide);
    RUN_TEST(test_matmat_all_levels);
    RUN_TEST(test_matmat_panels);
    RUN_TEST(test_gemm16_avx512_tiles);
    RUN_TEST(test_swiglu_all_levels);
    RUN_TEST(test_accum_all_levels);
    RUN_TEST(test_matvec_mt_all_levels);
    RUN_TEST(test_exp_all_levels);
    RUN_TEST(test_unsupported_group_falls_back);
    RUN_TEST(test_f32_x_all_levels);
    printf("# levels tested: %d; largest |y - ref| / sum|w x| in matvec/matmat: %.3g (bound %g); int16 path: "
           "largest |y - ref| / (its bound) %.3g\n", level_count_tested, worst_ratio, REL_TOL, worst_q);
    TEST_EXIT();
}
