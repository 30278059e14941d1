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

void attention_forward(state *s, int layer, const layer_weights *w, const float *xn, float *out) {
    const model_config *c = &s->m->cfg;
    int nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim, pos = s->pos;
    int kv_dim = nkv * hd, group = nh / nkv;

    /* q, gate = q_proj(x).view(heads, 2 * head_dim).chunk(2); k = k_proj(x); v = v_proj(x) */
    state_matvec(s, s->qg, &w->q_proj, xn);
    float *k = s->k_cache[layer] + (size_t)pos * kv_dim, *v = s->v_cache[layer] + (size_t)pos * kv_dim;
    state_matvec(s, k, &w->k_proj, xn);
    state_matvec(s, v, &w->v_proj, xn);

    /* per-head q_norm / k_norm (1 + w), then RoPE on the leading rope_dim values */
    for (int h = 0; h < nh; h++) {
        float *q = s->q + (size_t)h * hd;
        rmsnorm(q, s->qg + (size_t)h * 2 * hd, w->q_norm, hd, c->norm_eps);
        rope(q, c->rope_dim, pos, c->rope_theta);
    }
    for (int h = 0; h < nkv; h++) {
        rmsnorm(k + (size_t)h * hd, k + (size_t)h * hd, w->k_norm, hd, c->norm_eps);
        rope(k + (size_t)h * hd, c->rope_dim, pos, c->rope_theta);
    }

    /* causal softmax(q k^T / sqrt(hd)) v over positions 0..pos, grouped query heads */
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < nh; h++) {
        const float *q = s->q + (size_t)h * hd;
        int kvh = h / group;
        float maxs = -INFINITY;
        for (int t = 0; t <= pos; t++) {
            const float *kt = s->k_cache[layer] + (size_t)t * kv_dim + (size_t)kvh * hd;
            float dot = 0.0f;
            for (int i = 0; i < hd; i++) dot += q[i] * kt[i];
            s->scores[t] = dot * scale;
            if (s->scores[t] > maxs) maxs = s->scores[t];
        }
        float sum = 0.0f;
        for (int t = 0; t <= pos; t++) {
            s->scores[t] = expf(s->scores[t] - maxs);
            sum += s->scores[t];
        }
        float *o = s->att + (size_t)h * hd;
        for (int i = 0; i < hd; i++) o[i] = 0.0f;
        for (int t = 0; t <= pos; t++) {
            const float *vt = s->v_cache[layer] + (size_t)t * kv_dim + (size_t)kvh * hd;
            float p = s->scores[t] / sum;
            for (int i = 0; i < hd; i++) o[i] += p * vt[i];
        }
        /* attn * sigmoid(gate) */
        const float *gate = s->qg + (size_t)h * 2 * hd + hd;
        for (int i = 0; i < hd; i++) o[i] *= sigmoid(gate[i]);
    }
    state_matvec(s, out, &w->o_proj, s->att); /* o_proj */
}
