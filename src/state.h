/* The per-conversation state (caches and scratch) and the layer functions that advance it. Private to
 * the forward pass: forward.c, attention.c, delta_net.c, moe.c. */
#ifndef FLASHMOE_STATE_H
#define FLASHMOE_STATE_H
#include "kernels.h"
#include "model.h"
#include "util.h"

/* --timing: where each layer's time goes */
enum { T_MIXER, T_ROUTING, T_IO_WAIT, T_EXPERTS, T_OTHER, T_COUNT };

struct state {
    const model *m;
    int timing;      /* collect per-layer times */
    double *times;   /* [n_layers][T_COUNT] seconds */
    double t_head;   /* embedding, final norm, lm_head */
    long timed_tokens;
    int pos, max_ctx;
    /* full-attention layers: keys and values of every position, [max_ctx][n_kv_heads * head_dim] */
    float **k_cache, **v_cache;
    /* linear-attention layers: the last (kernel - 1) conv inputs [kernel - 1][conv_dim], and the recurrent
     * state S [Hv][dk][dv] */
    float **conv_state, **rec_state;
    /* scratch, sized once */
    float *x, *xn, *mix; /* [H]: residual stream, normed input, mixer / MoE output */
    float *qg, *q, *k, *v, *att, *scores;
    float *qkv, *z, *beta, *decay, *o;
    float *router, *topk_w, *eh, *eu, *eo;
    float *expert_out; /* [n_experts][H]: each selected expert's output, summed in a fixed order */
    int *topk_id;
};

static inline double state_clock(const state *s) { return s->timing ? util_now_seconds() : 0.0; }
/* adds the time since *t to bucket b of layer l, and restarts *t */
static inline void state_tick(state *s, int l, int b, double *t) {
    if (!s->timing) return;
    double now = util_now_seconds();
    s->times[l * T_COUNT + b] += now - *t;
    *t = now;
}

/* y = W x on the model's thread pool */
static inline void state_matvec(const state *s, float *y, const qmat *w, const float *x) {
    kernel_matvec_mt(s->m->pool, y, w, x);
}

/* y = x * rsqrt(mean(x^2) + eps) * w, over n values (w already holds (1 + w) for zero-centred norms) */
void rmsnorm(float *y, const float *x, const float *w, int n, float eps);
static inline float silu(float x) { return x / (1.0f + expf(-x)); }
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

void attention_forward(state *s, int layer, const layer_weights *w, const float *xn, float *out);
void delta_net_forward(state *s, int layer, const layer_weights *w, const float *xn, float *out);
int moe_forward(state *s, int layer, const layer_weights *w, const float *xn, float *out, char *err, size_t errlen);

#endif
