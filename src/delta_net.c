/* Gated DeltaNet (linear-attention layers), recurrent form: a chunk of positions at a time, the conv
 * parallel over channels and the recurrence parallel over value heads. */
#include <math.h>
#include <string.h>

#include "state.h"

#define DELTA_MAX_DV 1024 /* value head dims up to this (Qwen3.5: 128) */

/* torch.nn.functional.softplus (beta 1, threshold 20) */
static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* x * rsqrt(sum(x^2) + eps), as the FLA-compatible l2norm */
static void l2norm(float *x, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss + eps);
    for (int i = 0; i < n; i++) x[i] *= r;
}


/* ---- the causal conv over a chunk ---------------------------------------------------------------- */

typedef struct {
    state *s;
    int layer, T;
    const layer_weights *w;
    float *qkv; /* [T][conv_dim]: replaced by the conv output, q and k l2-normalised, q scaled */
} conv_job;

/* Depthwise causal conv1d (no bias) then SiLU over the T positions of channels [c0, c1), in place: each
 * output takes the current and the last kernel-1 inputs (from the conv state before position 0). The
 * conv state then holds the last kernel-1 inputs. Positions run backwards so that inputs are read before
 * they are overwritten. Each tap is one pass over the channels (the weights copied tap-major first), so
 * the passes are vector loops; every channel's sum is formed in the same order as one channel at a time. */
AI void conv_channels(conv_job *j, int c0, int c1) {
    const model_config *c = &j->s->m->cfg;
    int K = c->conv_kernel, hist = K - 1, T = j->T, nc = c1 - c0;
    int conv_dim = 2 * c->lin_k_heads * c->lin_k_dim + c->lin_v_heads * c->lin_v_dim;
    float *st = j->s->conv_state[j->layer], *x = j->qkv;
    /* hist <= 8 and nc <= DELTA_MAX_DV (config.c): the new conv state of these channels, the weights
     * tap-major, one position's sums */
    float keep[8][DELTA_MAX_DV], wt[9][DELTA_MAX_DV], acc[DELTA_MAX_DV];
    for (int ch = 0; ch < nc; ch++)
        for (int h = 0; h < K; h++) wt[h][ch] = j->w->conv_w[(size_t)(c0 + ch) * K + h];
    for (int h = 0; h < hist; h++) { /* input h of the last hist: position T - hist + h */
        int t = T - hist + h;
        const float *in = t >= 0 ? x + (size_t)t * conv_dim + c0 : st + (size_t)(t + hist) * conv_dim + c0;
        memcpy(keep[h], in, sizeof(float) * nc);
    }
    for (int t = T - 1; t >= 0; t--) {
        float *xt = x + (size_t)t * conv_dim + c0;
        for (int ch = 0; ch < nc; ch++) acc[ch] = wt[hist][ch] * xt[ch];
        for (int h = 0; h < hist; h++) { /* input t - hist + h */
            int u = t - hist + h;
            const float *in = u >= 0 ? x + (size_t)u * conv_dim + c0 : st + (size_t)(u + hist) * conv_dim + c0;
            const float *w = wt[h];
            for (int ch = 0; ch < nc; ch++) acc[ch] += w[ch] * in[ch];
        }
        kernel_silu_mul(xt, acc, NULL, (size_t)nc);
    }
    for (int h = 0; h < hist; h++) memcpy(st + (size_t)h * conv_dim + c0, keep[h], sizeof(float) * nc);
}

/* Task i: the conv of one head's channels: q heads, then k heads (both l2-normalised per position
 * afterwards, q also scaled by 1/sqrt(dk)), then v heads. */
AI void conv_head(conv_job *j, int i) {
    const model_config *c = &j->s->m->cfg;
    int Hk = c->lin_k_heads, dk = c->lin_k_dim, dv = c->lin_v_dim;
    int conv_dim = 2 * Hk * dk + c->lin_v_heads * dv;
    int c0 = i < 2 * Hk ? i * dk : 2 * Hk * dk + (i - 2 * Hk) * dv, c1 = c0 + (i < 2 * Hk ? dk : dv);
    conv_channels(j, c0, c1);
    if (i >= 2 * Hk) return;
    float qscale = 1.0f / sqrtf((float)dk);
    for (int t = 0; t < j->T; t++) {
        float *h = j->qkv + (size_t)t * conv_dim + c0;
        l2norm(h, dk, 1e-6f);
        if (i < Hk)
            for (int d = 0; d < dk; d++) h[d] *= qscale;
    }
}

static void conv_task_generic(void *ctx, int i, int n_tasks) {
    (void)n_tasks;
    conv_head(ctx, i);
}

/* The same compiled for AVX2 (the tap passes in 8 lanes), taken at that kernel level and above. */
__attribute__((target("avx2"))) static void conv_task_avx2(void *ctx, int i, int n_tasks) {
    (void)n_tasks;
    conv_head(ctx, i);
}

/* ---- the recurrence -------------------------------------------------------------------------------- */

typedef struct {
    state *s;
    int layer, T;
    const layer_weights *w;
    const float *qkv, *z, *b, *a; /* [T][conv_dim] (conv output), [T][value_dim], [T][Hv] x2 */
    float *o;                     /* [T][value_dim] */
} delta_heads;

/* Columns [jb, jb + 2 lanes of V) of S (V: v8 or v16), in registers: S = d S + k delta^T, and the new
 * S^T kn, S^T qn of those columns into sk, sq. */
#define STATE_BLOCK_FN(NAME, V)                                                                       \
    AI void NAME(float *restrict S, int dk, int dv, int jb, float d, const float *kh, const float *kn,    \
                 const float *qn, const float *delta, float *sk, float *sq) {                          \
        const int L = sizeof(V) / sizeof(float);                                                      \
        V d0 = *(const V *)(delta + jb), d1 = *(const V *)(delta + jb + L);                           \
        V k0 = {0}, k1 = {0}, q0 = {0}, q1 = {0};                                                     \
        for (int i = 0; i < dk; i++) {                                                                \
            V *p = (V *)(S + (size_t)i * dv + jb);                                                    \
            V s0 = p[0] * d + kh[i] * d0, s1 = p[1] * d + kh[i] * d1;                                 \
            p[0] = s0;                                                                                \
            p[1] = s1;                                                                                \
            k0 += kn[i] * s0;                                                                         \
            k1 += kn[i] * s1;                                                                         \
            q0 += qn[i] * s0;                                                                         \
            q1 += qn[i] * s1;                                                                         \
        }                                                                                             \
        *(V *)(sk + jb) = k0;                                                                         \
        *(V *)(sk + jb + L) = k1;                                                                     \
        *(V *)(sq + jb) = q0;                                                                         \
        *(V *)(sq + jb + L) = q1;                                                                     \
    }
STATE_BLOCK_FN(state_block8, v8)
STATE_BLOCK_FN(state_block16, v16)

/* For each position t, with S the state [dk][dv] before it, decay d = exp(g_t) and beta_t:
 *     S' = d S + k delta^T,  delta = beta (v - d S^T k),  o = S'^T q = d S^T q + delta (k . q)
 * so one pass over S per position updates it and, at the same time, accumulates S'^T k_{t+1} and
 * S'^T q_{t+1} for the next position (a pass over S before position 0 starts it). Columns of S are taken
 * 16 at a time in registers, or 32 with W16 (the AVX-512 build: two 16-float vectors); dv not a multiple
 * of that: the rest one at a time. */
AI void head_positions(const delta_heads *j, int h, const int W16) {
    const model_config *c = &j->s->m->cfg;
    int dk = c->lin_k_dim, dv = c->lin_v_dim, Hk = c->lin_k_heads, Hv = c->lin_v_heads, r = Hv / Hk;
    size_t conv_dim = (size_t)2 * Hk * dk + (size_t)Hv * dv, value_dim = (size_t)Hv * dv;
    float *restrict S = j->s->rec_state[j->layer] + (size_t)h * dk * dv; /* [dk][dv], row i: key dim i */
    float sk[DELTA_MAX_DV], sq[DELTA_MAX_DV], delta[DELTA_MAX_DV]; /* S^T k_t, S^T q_t; delta */
    const int vb = W16 ? dv / 32 * 32 : dv / 16 * 16;
    for (int t = 0; t < j->T; t++) {
        const float *row = j->qkv + (size_t)t * conv_dim;
        const float *qh = row + (size_t)(h / r) * dk, *kh = row + (size_t)(Hk + h / r) * dk;
        const float *vh = row + (size_t)2 * Hk * dk + (size_t)h * dv;
        if (t == 0) { /* S^T k_0, S^T q_0 */
            for (int jj = 0; jj < dv; jj++) sk[jj] = sq[jj] = 0.0f;
            for (int i = 0; i < dk; i++)
                for (int jj = 0; jj < dv; jj++) {
                    sk[jj] += kh[i] * S[(size_t)i * dv + jj];
                    sq[jj] += qh[i] * S[(size_t)i * dv + jj];
                }
        }
        /* beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias); decay = exp(g) */
        float beta = sigmoid(j->b[(size_t)t * Hv + h]);
        float d = expf(j->w->neg_A[h] * softplus(j->a[(size_t)t * Hv + h] + j->w->dt_bias[h]));
        float kq = 0.0f;
        for (int i = 0; i < dk; i++) kq += kh[i] * qh[i];
        float *oh = j->o + (size_t)t * value_dim + (size_t)h * dv;
        for (int jj = 0; jj < dv; jj++) {
            delta[jj] = beta * (vh[jj] - d * sk[jj]);
            oh[jj] = d * sq[jj] + delta[jj] * kq;
        }
        /* S = d S + k delta^T, and S^T k_{t+1}, S^T q_{t+1} of the new S */
        int next = t + 1 < j->T;
        const float *rn = row + conv_dim;
        const float *qn = next ? rn + (size_t)(h / r) * dk : qh, *kn = next ? rn + (size_t)(Hk + h / r) * dk : kh;
        for (int jb = 0; W16 && jb < vb; jb += 32) state_block16(S, dk, dv, jb, d, kh, kn, qn, delta, sk, sq);
        for (int jb = 0; !W16 && jb < vb; jb += 16) state_block8(S, dk, dv, jb, d, kh, kn, qn, delta, sk, sq);
        for (int jj = vb; jj < dv; jj++) {
            float k0 = 0.0f, q0 = 0.0f;
            for (int i = 0; i < dk; i++) {
                float *p = S + (size_t)i * dv + jj;
                *p = *p * d + kh[i] * delta[jj];
                k0 += kn[i] * *p;
                q0 += qn[i] * *p;
            }
            sk[jj] = k0;
            sq[jj] = q0;
        }
        /* gated norm: w * rmsnorm(o) * silu(z), plain weight */
        const float *zh = j->z + (size_t)t * value_dim + (size_t)h * dv;
        rmsnorm(oh, oh, j->w->gdn_norm, dv, c->norm_eps);
        kernel_silu_mul(oh, zh, oh, (size_t)dv);
    }
}

static void head_task_generic(void *ctx, int h, int n) {
    (void)n;
    head_positions(ctx, h, 0);
}

/* The same, compiled for AVX2 + FMA and for AVX-512 (taken when the kernels run at that level). */
__attribute__((target("avx2,fma"))) static void head_task_avx2(void *ctx, int h, int n) {
    (void)n;
    head_positions(ctx, h, 0);
}

__attribute__((target("avx512f,avx2,fma"))) static void head_task_avx512(void *ctx, int h, int n) {
    (void)n;
    head_positions(ctx, h, 1);
}

void delta_net_forward(state *s, int layer, const layer_weights *w, const float *xn, int T, float *out) {
    const model_config *c = &s->m->cfg;
    int Hv = c->lin_v_heads;

    /* in_proj_qkv(x), in_proj_z(x), in_proj_b(x), in_proj_a(x) for all T positions at once */
    state_product in[] = {{s->qkv, &w->in_qkv}, {s->z, &w->in_z}, {s->beta, &w->in_b}, {s->decay, &w->in_a}};
    state_matmuls(s, xn, T, in, 4);
    /* the conv, one task per head's channels; then the recurrence, one task per value head over all T
     * positions (sequential in position) */
    conv_job cj = {s, layer, T, w, s->qkv};
    pool_run(s->m->pool, kernel_level_active() >= KERNEL_AVX2 ? conv_task_avx2 : conv_task_generic, &cj,
             2 * c->lin_k_heads + Hv);
    delta_heads job = {s, layer, T, w, s->qkv, s->z, s->beta, s->decay, s->o};
    kernel_level lv = kernel_level_active();
    pool_run(s->m->pool, lv >= KERNEL_AVX512 ? head_task_avx512 : lv == KERNEL_AVX2 ? head_task_avx2 : head_task_generic,
             &job, Hv);
    state_matmul(s, out, &w->out_proj, s->o, T); /* out_proj */
}
