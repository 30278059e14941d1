/* Gated DeltaNet (linear-attention layers), recurrent form: one position at a time. */
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

/* Depthwise causal conv1d (no bias) over the new input and the last kernel-1 inputs, then SiLU; shifts
 * the new input into the conv state. */
static void causal_conv_silu(float *x, float *conv_state, const float *weight, int channels, int kernel) {
    int hist = kernel - 1;
    for (int ch = 0; ch < channels; ch++) {
        const float *wk = weight + (size_t)ch * kernel;
        float acc = wk[hist] * x[ch];
        for (int j = 0; j < hist; j++) acc += wk[j] * conv_state[(size_t)j * channels + ch];
        for (int j = 0; j + 1 < hist; j++)
            conv_state[(size_t)j * channels + ch] = conv_state[(size_t)(j + 1) * channels + ch];
        if (hist > 0) conv_state[(size_t)(hist - 1) * channels + ch] = x[ch];
        x[ch] = silu(acc);
    }
}

typedef struct {
    state *s;
    int layer;
    const layer_weights *w;
    const float *q, *k, *v, *z, *b, *a;
    float *o;
} delta_heads;

/* The recurrence of value head h for one position, then its gated norm. */
static void delta_head_task(void *ctx, int h, int n_heads) {
    (void)n_heads;
    const delta_heads *j = ctx;
    const model_config *c = &j->s->m->cfg;
    int dk = c->lin_k_dim, dv = c->lin_v_dim, r = c->lin_v_heads / c->lin_k_heads;
    /* beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias); decay = exp(g) */
    float beta = sigmoid(j->b[h]);
    float decay = expf(j->w->neg_A[h] * softplus(j->a[h] + j->w->dt_bias[h]));
    const float *qh = j->q + (size_t)(h / r) * dk, *kh = j->k + (size_t)(h / r) * dk, *vh = j->v + (size_t)h * dv;
    float *restrict S = j->s->rec_state[j->layer] + (size_t)h * dk * dv; /* [dk][dv], row i: key dim i */
    float *restrict oh = j->o + (size_t)h * dv;
    float u[DELTA_MAX_DV];
    /* S = decay * S and u = S^T k, in one pass over the rows of S */
    for (int jj = 0; jj < dv; jj++) u[jj] = 0.0f;
    for (int i = 0; i < dk; i++) {
        float *restrict Si = S + (size_t)i * dv, ki = kh[i];
        for (int jj = 0; jj < dv; jj++) {
            Si[jj] *= decay;
            u[jj] += ki * Si[jj];
        }
    }
    /* delta = beta (v - u); S += k delta^T and o = S^T q, in a second pass */
    for (int jj = 0; jj < dv; jj++) {
        u[jj] = beta * (vh[jj] - u[jj]);
        oh[jj] = 0.0f;
    }
    for (int i = 0; i < dk; i++) {
        float *restrict Si = S + (size_t)i * dv, ki = kh[i], qi = qh[i];
        for (int jj = 0; jj < dv; jj++) {
            Si[jj] += ki * u[jj];
            oh[jj] += qi * Si[jj];
        }
    }
    /* gated norm: w * rmsnorm(o) * silu(z), plain weight */
    const float *zh = j->z + (size_t)h * dv;
    rmsnorm(oh, oh, j->w->gdn_norm, dv, c->norm_eps);
    for (int jj = 0; jj < dv; jj++) oh[jj] *= silu(zh[jj]);
}

/* One position: conv, normalisation, gates and the recurrence for every value head, then the gated
 * norm; qkv [conv_dim] is replaced by the conv output, o [value_dim] receives the result. */
static void delta_net_step(state *s, int layer, const layer_weights *w, float *qkv, const float *z,
                           const float *b, const float *a, float *o) {
    const model_config *c = &s->m->cfg;
    int Hk = c->lin_k_heads, Hv = c->lin_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim;
    int key_dim = Hk * dk, conv_dim = 2 * key_dim + Hv * dv;

    causal_conv_silu(qkv, s->conv_state[layer], w->conv_w, conv_dim, c->conv_kernel);
    float *q = qkv, *k = qkv + key_dim, *v = qkv + 2 * key_dim;

    /* q, k: l2-normalised per head; q scaled by 1/sqrt(dk) */
    float qscale = 1.0f / sqrtf((float)dk);
    for (int h = 0; h < Hk; h++) {
        l2norm(q + (size_t)h * dk, dk, 1e-6f);
        l2norm(k + (size_t)h * dk, dk, 1e-6f);
        for (int i = 0; i < dk; i++) q[(size_t)h * dk + i] *= qscale;
    }

    delta_heads job = {s, layer, w, q, k, v, z, b, a, o};
    pool_run(s->m->pool, delta_head_task, &job, Hv);
}

void delta_net_forward(state *s, int layer, const layer_weights *w, const float *xn, int T, float *out) {
    const model_config *c = &s->m->cfg;
    int Hv = c->lin_v_heads, value_dim = Hv * c->lin_v_dim;
    int conv_dim = 2 * c->lin_k_heads * c->lin_k_dim + value_dim;

    /* in_proj_qkv(x), in_proj_z(x), in_proj_b(x), in_proj_a(x) for all T positions at once */
    state_matmul(s, s->qkv, &w->in_qkv, xn, T);
    state_matmul(s, s->z, &w->in_z, xn, T);
    state_matmul(s, s->beta, &w->in_b, xn, T);
    state_matmul(s, s->decay, &w->in_a, xn, T);
    /* the conv and the recurrence are sequential in position */
    for (int t = 0; t < T; t++)
        delta_net_step(s, layer, w, s->qkv + (size_t)t * conv_dim, s->z + (size_t)t * value_dim,
                       s->beta + (size_t)t * Hv, s->decay + (size_t)t * Hv, s->o + (size_t)t * value_dim);
    state_matmul(s, out, &w->out_proj, s->o, T); /* out_proj */
}
