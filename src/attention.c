/* Gated attention (every full-attention layer), one position at a time against the KV cache. */
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

void attention_forward(state *s, int layer, const layer_weights *w, const float *xn, int T, float *out) {
    const model_config *c = &s->m->cfg;
    int nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    int kv_dim = nkv * hd, group = nh / nkv, qg_dim = nh * hd * 2;
    float *k_cache = s->k_cache[layer], *v_cache = s->v_cache[layer];

    /* q, gate = q_proj(x).view(heads, 2 * head_dim).chunk(2); k = k_proj(x); v = v_proj(x), for all T
     * positions at once; keys and values land in the cache rows of their positions */
    state_matmul(s, s->qg, &w->q_proj, xn, T);
    state_matmul(s, k_cache + (size_t)s->pos * kv_dim, &w->k_proj, xn, T);
    state_matmul(s, v_cache + (size_t)s->pos * kv_dim, &w->v_proj, xn, T);

    float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t < T; t++) {
        int pos = s->pos + t;
        const float *qg = s->qg + (size_t)t * qg_dim;
        float *k = k_cache + (size_t)pos * kv_dim, *att = s->att + (size_t)t * nh * hd;
        /* per-head q_norm / k_norm (1 + w), then RoPE on the leading rope_dim values */
        for (int h = 0; h < nh; h++) {
            float *q = s->q + (size_t)h * hd;
            rmsnorm(q, qg + (size_t)h * 2 * hd, w->q_norm, hd, c->norm_eps);
            rope(q, c->rope_dim, pos, c->rope_theta);
        }
        for (int h = 0; h < nkv; h++) {
            rmsnorm(k + (size_t)h * hd, k + (size_t)h * hd, w->k_norm, hd, c->norm_eps);
            rope(k + (size_t)h * hd, c->rope_dim, pos, c->rope_theta);
        }
        /* causal softmax(q k^T / sqrt(hd)) v over positions 0..pos, grouped query heads */
        for (int h = 0; h < nh; h++) {
            const float *q = s->q + (size_t)h * hd;
            int kvh = h / group;
            float maxs = -INFINITY;
            for (int p = 0; p <= pos; p++) {
                const float *kp = k_cache + (size_t)p * kv_dim + (size_t)kvh * hd;
                float dot = 0.0f;
                for (int i = 0; i < hd; i++) dot += q[i] * kp[i];
                s->scores[p] = dot * scale;
                if (s->scores[p] > maxs) maxs = s->scores[p];
            }
            float sum = 0.0f;
            for (int p = 0; p <= pos; p++) {
                s->scores[p] = expf(s->scores[p] - maxs);
                sum += s->scores[p];
            }
            float *o = att + (size_t)h * hd;
            for (int i = 0; i < hd; i++) o[i] = 0.0f;
            for (int p = 0; p <= pos; p++) {
                const float *vp = v_cache + (size_t)p * kv_dim + (size_t)kvh * hd;
                float pr = s->scores[p] / sum;
                for (int i = 0; i < hd; i++) o[i] += pr * vp[i];
            }
            /* attn * sigmoid(gate) */
            const float *gate = qg + (size_t)h * 2 * hd + hd;
            for (int i = 0; i < hd; i++) o[i] *= sigmoid(gate[i]);
        }
    }
    state_matmul(s, out, &w->o_proj, s->att, T); /* o_proj */
}
