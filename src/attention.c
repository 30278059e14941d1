/* Gated attention (every full-attention layer): the projections for a chunk of positions at once, then
 * each query head against the KV cache, heads in parallel. */
#include <math.h>

#include "state.h"

/* Rotate-half RoPE on the first rope_dim values of a head: pairs (i, i + rope_dim/2),
 * angle = pos * theta^(-2i / rope_dim). */
static void rope(float *v, int rope_dim, int pos, double theta) {
    int half = rope_dim / 2;
    for (int i = 0; i < half; i++) {
        float inv_freq = (float)(1.0 / pow(theta, (double)(2 * i) / rope_dim));
        float angle = (float)pos * inv_freq;
        float cs = cosf(angle), sn = sinf(angle);
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cs - x2 * sn;
        v[i + half] = x2 * cs + x1 * sn;
    }
}


AI float dot(const float *a, const float *b, int n) {
    int i = 0;
    float d = 0.0f;
    if (n % 8 == 0) {
        v8 acc = {0};
        for (; i < n; i += 8) acc += *(const v8 *)(a + i) * *(const v8 *)(b + i);
        for (int l = 0; l < 8; l++) d += acc[l];
    }
    for (; i < n; i++) d += a[i] * b[i];
    return d;
}

typedef struct {
    state *s;
    int layer, T, tasks;
    const layer_weights *w;
} attn_job;

/* Task i: query heads i, i + tasks, ... for all T positions: q norm and RoPE, causal softmax(q k^T /
 * sqrt(hd)) v over positions 0..pos with the head's kv group, times sigmoid(gate). Scores in row i of
 * s->scores. */
AI void attn_heads(const attn_job *j, int task) {
    state *s = j->s;
    const model_config *c = &s->m->cfg;
    int nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    int kv_dim = nkv * hd, group = nh / nkv, qg_dim = nh * hd * 2;
    const float *k_cache = s->k_cache[j->layer], *v_cache = s->v_cache[j->layer];
    float *scores = s->scores + (size_t)task * s->max_ctx, scale = 1.0f / sqrtf((float)hd);
    for (int h = task; h < nh; h += j->tasks) {
        int kvh = h / group;
        for (int t = 0; t < j->T; t++) {
            int pos = s->pos + t;
            const float *qg = s->qg + (size_t)t * qg_dim;
            float *q = s->q + (size_t)h * hd;
            rmsnorm(q, qg + (size_t)h * 2 * hd, j->w->q_norm, hd, c->norm_eps);
            rope(q, c->rope_dim, pos, c->rope_theta);
            float maxs = -INFINITY;
            for (int p = 0; p <= pos; p++) {
                scores[p] = dot(q, k_cache + (size_t)p * kv_dim + (size_t)kvh * hd, hd) * scale;
                if (scores[p] > maxs) maxs = scores[p];
            }
            float sum = 0.0f;
            for (int p = 0; p <= pos; p++) {
                scores[p] = expf(scores[p] - maxs);
                sum += scores[p];
            }
            float *o = s->att + (size_t)t * nh * hd + (size_t)h * hd;
            for (int i = 0; i < hd; i++) o[i] = 0.0f;
            for (int p = 0; p <= pos; p++) {
                const float *vp = v_cache + (size_t)p * kv_dim + (size_t)kvh * hd;
                float pr = scores[p] / sum;
                for (int i = 0; i < hd; i++) o[i] += pr * vp[i];
            }
            /* attn * sigmoid(gate) */
            const float *gate = qg + (size_t)h * 2 * hd + hd;
            for (int i = 0; i < hd; i++) o[i] *= sigmoid(gate[i]);
        }
    }
}

static void attn_task_generic(void *ctx, int task, int n) {
    (void)n;
    attn_heads(ctx, task);
}

/* The same, compiled for AVX2 + FMA (taken when the kernels run at that level or above). */
__attribute__((target("avx2,fma"))) static void attn_task_avx2(void *ctx, int task, int n) {
    (void)n;
    attn_heads(ctx, task);
}

void attention_forward(state *s, int layer, const layer_weights *w, const float *xn, int T, float *out) {
    const model_config *c = &s->m->cfg;
    int nkv = c->n_kv_heads, hd = c->head_dim, kv_dim = nkv * hd;
    float *k_cache = s->k_cache[layer], *v_cache = s->v_cache[layer];

    /* q, gate = q_proj(x).view(heads, 2 * head_dim).chunk(2); k = k_proj(x); v = v_proj(x), for all T
     * positions at once; keys and values land in the cache rows of their positions */
    state_matmul(s, s->qg, &w->q_proj, xn, T);
    state_matmul(s, k_cache + (size_t)s->pos * kv_dim, &w->k_proj, xn, T);
    state_matmul(s, v_cache + (size_t)s->pos * kv_dim, &w->v_proj, xn, T);
    /* per-head k_norm (1 + w), then RoPE on the leading rope_dim values */
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nkv; h++) {
            float *k = k_cache + (size_t)(s->pos + t) * kv_dim + (size_t)h * hd;
            rmsnorm(k, k, w->k_norm, hd, c->norm_eps);
            rope(k, c->rope_dim, s->pos + t, c->rope_theta);
        }
    /* the query heads in parallel, one task per thread */
    int tasks = pool_size(s->m->pool);
    if (tasks > c->n_heads) tasks = c->n_heads;
    attn_job j = {s, layer, T, tasks, w};
    pool_run(s->m->pool, kernel_level_active() >= KERNEL_AVX2 ? attn_task_avx2 : attn_task_generic, &j, tasks);
    state_matmul(s, out, &w->o_proj, s->att, T); /* o_proj */
}
