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
    /* scratch for up to `chunk` positions at once (prompts run in chunks; decoding is a chunk of 1),
     * sized once: row-major [chunk][...] */
    int chunk;
    float *x, *xn, *mix;    /* [chunk][H]: residual stream, normed input, mixer / MoE output */
    float *qg, *q, *att;    /* [chunk][heads * head_dim * 2], [threads][group * head_dim], [chunk][heads * head_dim] */
    float *scores;          /* [threads][group][max_ctx] (group: query heads per kv head) */
    float *qkv, *z, *beta, *decay, *o; /* [chunk][conv_dim], [chunk][value_dim], [chunk][Hv] x2, [chunk][value_dim] */
    float *router, *topk_w; /* [chunk][E], [chunk][K] */
    int *topk_id;           /* [chunk][K] */
    float *sg, *sh;         /* shared expert: [chunk] gate logits, [chunk][H] output */
    float *xe, *eh, *eu;    /* a batch's rows (below): [R][H] gathered inputs, [R][inter] x2 */
    /* A batch of experts (at most K, and at most R = state_batch_rows(K, chunk) rows between them):
     * expert b of the batch has rows [batch_off[b], batch_off[b + 1]) of these */
    float *expert_out;      /* [R][H]: outputs of the batch, summed in ascending expert order */
    int *expert_rows;       /* [R]: which row of the chunk each of them is */
    float *expert_w;        /* [R]: its routing weight */
    int *batch_off;         /* [K + 1] */
    int *expert_n;          /* [E]: rows routed to each expert in this chunk */
    int *batch_ids;         /* [K] */
    int *ahead_ids;         /* [E]: 0 .. E - 1, the experts a prompt chunk reads ahead (forward.c) */
    expert_view *views;     /* [K + 1]: a batch's experts (and a decoded token's shared one), computed together (moe.c) */
};

/* The wider of an expert's and the shared expert's intermediate size: a row of eh and eu. */
static inline size_t state_inter(const model_config *c) {
    return (size_t)(c->expert_inter > c->shared_inter ? c->expert_inter : c->shared_inter);
}

/* Rows a batch of experts may hold, in chunks: a batch averages K * K / E chunks' worth with uniform routing
 * (a quarter of a chunk for the 35B geometry), so two chunks' worth cut a batch short only when routing
 * concentrates on few experts. (Before: K chunks' worth, 29% of the state per position.) */
#define STATE_BATCH_CHUNKS 2
/* ... and never fewer than K, so that one token's K experts are always one batch (decoding reads them in
 * one round, and moe.c's prefetch reuses topk_id once they are in it). */
static inline size_t state_batch_rows(size_t K, size_t chunk) {
    size_t r = (K < STATE_BATCH_CHUNKS ? K : STATE_BATCH_CHUNKS) * chunk;
    return r > K ? r : K;
}

static inline double state_clock(const state *s) { return s->timing ? util_now_seconds() : 0.0; }
/* adds the time since *t to bucket b of layer l, and restarts *t */
static inline void state_tick(state *s, int l, int b, double *t) {
    if (!s->timing) return;
    double now = util_now_seconds();
    s->times[l * T_COUNT + b] += now - *t;
    *t = now;
}

/* Y[T][rows] = X[T][cols] W^T on the model's thread pool (T = 1: a matrix-vector product) */
void state_matmul(const state *s, float *Y, const qmat *w, const float *X, int T);

/* Several products of the same X, Y_i = X W_i^T for i < n. For one position and n <= STATE_MATMULS_MAX, one
 * dispatch for all of them, its tasks shares of every matrix's rows (a decoded token's projections: a
 * dispatch costs most where there are many threads); each row computed as state_matmul computes it. */
#define STATE_MATMULS_MAX 4
typedef struct {
    float *Y;
    const qmat *w;
} state_product;
void state_matmuls(const state *s, const float *X, int T, const state_product *p, int n);

/* y = x * rsqrt(mean(x^2) + eps) * w, over n values (w already holds (1 + w) for zero-centred norms) */
void rmsnorm(float *y, const float *x, const float *w, int n, float eps);
static inline float silu(float x) { return x / (1.0f + expf(-x)); }
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* The layer files' per-chunk loops (delta net, attention) are written once as always-inline bodies over
 * 8-float vectors, and instantiated twice: generic, and under target("avx2,fma") when the kernels run at
 * that level or above. */
typedef float v8 __attribute__((vector_size(32), aligned(4)));  /* 8 floats, any alignment */
typedef float v16 __attribute__((vector_size(64), aligned(4))); /* 16 floats, any alignment */
#define AI static inline __attribute__((always_inline))

/* The layer functions take T consecutive positions starting at s->pos: xn and out are [T][H]. */
void attention_forward(state *s, int layer, const layer_weights *w, const float *xn, int T, float *out);
void delta_net_forward(state *s, int layer, const layer_weights *w, const float *xn, int T, float *out);
int moe_forward(state *s, int layer, const layer_weights *w, const float *xn, int T, float *out, char *err,
                size_t errlen);

#endif
