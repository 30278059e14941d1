/* The decoder: embedding, layers, final norm, lm_head; and the state they advance. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "state.h"

void rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

static float *zalloc(size_t n, int *ok) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) *ok = 0;
    return p;
}

state *state_create(const model *m, int max_ctx, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    state *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->m = m;
    s->max_ctx = max_ctx;
    int ok = 1, L = c->n_layers, H = c->hidden_size;
    size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    size_t key_dim = (size_t)c->lin_k_heads * c->lin_k_dim, value_dim = (size_t)c->lin_v_heads * c->lin_v_dim;
    size_t conv_dim = 2 * key_dim + value_dim;
    s->k_cache = calloc((size_t)L, sizeof(float *));
    s->v_cache = calloc((size_t)L, sizeof(float *));
    s->conv_state = calloc((size_t)L, sizeof(float *));
    s->rec_state = calloc((size_t)L, sizeof(float *));
    if (!s->k_cache || !s->v_cache || !s->conv_state || !s->rec_state) goto oom;
    for (int l = 0; l < L; l++) {
        if (c->layer_types[l] == LAYER_FULL_ATTENTION) {
            s->k_cache[l] = zalloc((size_t)max_ctx * kv_dim, &ok);
            s->v_cache[l] = zalloc((size_t)max_ctx * kv_dim, &ok);
        } else {
            s->conv_state[l] = zalloc((size_t)(c->conv_kernel - 1) * conv_dim, &ok);
            s->rec_state[l] = zalloc((size_t)c->lin_v_heads * c->lin_k_dim * c->lin_v_dim, &ok);
        }
    }
    int inter = c->expert_inter > c->shared_inter ? c->expert_inter : c->shared_inter;
    s->x = zalloc((size_t)H, &ok);
    s->xn = zalloc((size_t)H, &ok);
    s->mix = zalloc((size_t)H, &ok);
    s->qg = zalloc((size_t)c->n_heads * c->head_dim * 2, &ok);
    s->q = zalloc((size_t)c->n_heads * c->head_dim, &ok);
    s->k = zalloc(kv_dim, &ok);
    s->v = zalloc(kv_dim, &ok);
    s->att = zalloc((size_t)c->n_heads * c->head_dim, &ok);
    s->scores = zalloc((size_t)max_ctx, &ok);
    s->qkv = zalloc(conv_dim, &ok);
    s->z = zalloc(value_dim, &ok);
    s->beta = zalloc((size_t)c->lin_v_heads, &ok);
    s->decay = zalloc((size_t)c->lin_v_heads, &ok);
    s->o = zalloc(value_dim, &ok);
    s->router = zalloc((size_t)c->n_experts, &ok);
    s->topk_w = zalloc((size_t)c->n_experts, &ok);
    s->eh = zalloc((size_t)inter, &ok);
    s->eu = zalloc((size_t)inter, &ok);
    s->eo = zalloc((size_t)H, &ok);
    s->expert_out = zalloc((size_t)c->n_experts * H, &ok);
    s->topk_id = calloc((size_t)c->n_experts, sizeof(int));
    s->times = calloc((size_t)L * T_COUNT, sizeof(double));
    if (!s->times) ok = 0;
    if (!ok || !s->topk_id) goto oom;
    return s;
oom:
    snprintf(err, errlen, "out of memory for the model state (context %d)", max_ctx);
    state_free(s);
    return NULL;
}

void state_free(state *s) {
    if (!s) return;
    int L = s->m->cfg.n_layers;
    for (int l = 0; s->k_cache && l < L; l++) {
        free(s->k_cache[l]);
        free(s->v_cache[l]);
        free(s->conv_state[l]);
        free(s->rec_state[l]);
    }
    free(s->k_cache);
    free(s->v_cache);
    free(s->conv_state);
    free(s->rec_state);
    float *bufs[] = {s->x,  s->xn,   s->mix,  s->qg,     s->q,  s->k,  s->v,  s->att,
                     s->scores, s->qkv, s->z, s->beta, s->decay, s->o, s->router, s->topk_w,
                     s->eh, s->eu, s->eo, s->expert_out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->topk_id);
    free(s->times);
    free(s);
}

void state_reset(state *s) {
    const model_config *c = &s->m->cfg;
    size_t key_dim = (size_t)c->lin_k_heads * c->lin_k_dim, value_dim = (size_t)c->lin_v_heads * c->lin_v_dim;
    for (int l = 0; l < c->n_layers; l++) {
        if (s->conv_state[l]) memset(s->conv_state[l], 0, sizeof(float) * (size_t)(c->conv_kernel - 1) * (2 * key_dim + value_dim));
        if (s->rec_state[l]) memset(s->rec_state[l], 0, sizeof(float) * (size_t)c->lin_v_heads * c->lin_k_dim * c->lin_v_dim);
    }
    s->pos = 0; /* the KV cache beyond pos is never read */
}

int state_pos(const state *s) { return s->pos; }

int state_copy(state *dst, const state *src, char *err, size_t errlen) {
    const model_config *c = &src->m->cfg;
    if (dst->m != src->m || dst->max_ctx < src->pos) {
        snprintf(err, errlen, "cannot copy a state of %d positions into one of another model or of context %d",
                 src->pos, dst->max_ctx);
        return -1;
    }
    size_t kv = (size_t)src->pos * c->n_kv_heads * c->head_dim;
    size_t key_dim = (size_t)c->lin_k_heads * c->lin_k_dim, value_dim = (size_t)c->lin_v_heads * c->lin_v_dim;
    size_t conv = (size_t)(c->conv_kernel - 1) * (2 * key_dim + value_dim);
    size_t rec = (size_t)c->lin_v_heads * c->lin_k_dim * c->lin_v_dim;
    for (int l = 0; l < c->n_layers; l++) {
        if (src->k_cache[l]) {
            memcpy(dst->k_cache[l], src->k_cache[l], sizeof(float) * kv);
            memcpy(dst->v_cache[l], src->v_cache[l], sizeof(float) * kv);
        } else {
            memcpy(dst->conv_state[l], src->conv_state[l], sizeof(float) * conv);
            memcpy(dst->rec_state[l], src->rec_state[l], sizeof(float) * rec);
        }
    }
    dst->pos = src->pos;
    return 0;
}

/* One token through every layer; logits (if non-NULL) receive its [vocab] scores. */
static int forward_token(model *m, state *s, int32_t token, float *logits, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    int H = c->hidden_size;
    float *x = s->x;
    double t = state_clock(s), t0 = t;
    kernel_row_f32(x, &m->embed, token); /* x = embed_tokens(token) */
    if (s->timing) s->t_head += util_now_seconds() - t0;
    t = state_clock(s);
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *w = &m->layers[l];
        /* h = x + mixer(input_layernorm(x)) */
        rmsnorm(s->xn, x, w->input_norm, H, c->norm_eps);
        state_tick(s, l, T_OTHER, &t);
        if (w->type == LAYER_FULL_ATTENTION)
            attention_forward(s, l, w, s->xn, s->mix);
        else
            delta_net_forward(s, l, w, s->xn, s->mix);
        state_tick(s, l, T_MIXER, &t);
        for (int i = 0; i < H; i++) x[i] += s->mix[i];
        /* out = h + moe(post_attention_layernorm(h)) */
        rmsnorm(s->xn, x, w->post_norm, H, c->norm_eps);
        state_tick(s, l, T_OTHER, &t);
        if (moe_forward(s, l, w, s->xn, s->mix, err, errlen)) return -1; /* ticks its own buckets */
        for (int i = 0; i < H; i++) x[i] += s->mix[i];
        state_tick(s, l, T_OTHER, &t);
    }
    s->pos++;
    s->timed_tokens += s->timing;
    if (logits) {
        rmsnorm(s->xn, x, m->final_norm, H, c->norm_eps);
        state_matvec(s, logits, &m->lm_head, s->xn);
        if (s->timing) s->t_head += util_now_seconds() - t;
    }
    return 0;
}

void state_set_timing(state *s, int on) { s->timing = on; }

void state_timing_report(const state *s, double wall, FILE *f) {
    const model_config *c = &s->m->cfg;
    static const char *names[T_COUNT] = {"mixer", "routing", "io wait", "experts", "other"};
    double total[T_COUNT] = {0}, all = s->t_head;
    long n = s->timed_tokens ? s->timed_tokens : 1;
    fprintf(f, "\ntiming over %ld tokens, per token (ms):\n%5s %-6s", s->timed_tokens, "layer", "type");
    for (int b = 0; b < T_COUNT; b++) fprintf(f, " %9s", names[b]);
    fprintf(f, " %9s\n", "total");
    for (int l = 0; l < c->n_layers; l++) {
        double sum = 0;
        fprintf(f, "%5d %-6s", l, c->layer_types[l] == LAYER_FULL_ATTENTION ? "attn" : "delta");
        for (int b = 0; b < T_COUNT; b++) {
            double v = s->times[l * T_COUNT + b];
            total[b] += v;
            sum += v;
            fprintf(f, " %9.3f", 1e3 * v / n);
        }
        all += sum;
        fprintf(f, " %9.3f\n", 1e3 * sum / n);
    }
    fprintf(f, "%5s %-6s", "all", "");
    for (int b = 0; b < T_COUNT; b++) fprintf(f, " %9.3f", 1e3 * total[b] / n);
    fprintf(f, " %9.3f   (+ embedding and lm_head %.3f)\n", 1e3 * (all - s->t_head) / n, 1e3 * s->t_head / n);
    experts_stats st;
    experts_stats_get(s->m->experts, &st);
    uint64_t asked = st.hits + st.misses;
    fprintf(f, "experts: --io %s%s%s: %.3f GB read in %llu requests (%.1f MB/token), %.2f GB/s over the run, "
            "%.2f GB/s while waiting; cache hits %llu of %llu (%.1f%%), cache memory %.1f MB\n",
            st.mode, st.backend[0] ? ", " : "", st.backend, st.bytes_read / 1e9, (unsigned long long)st.requests,
            st.bytes_read / 1e6 / n, wall > 0 ? st.bytes_read / wall / 1e9 : 0.0,
            st.wait_ns ? st.bytes_read / (st.wait_ns * 1e-9) / 1e9 : 0.0, (unsigned long long)st.hits,
            (unsigned long long)asked, asked ? 100.0 * st.hits / asked : 0.0, st.memory_bytes / 1e6);
}

int model_forward(model *m, state *s, const int32_t *tokens, int n, float *logits, int all_logits, char *err,
                  size_t errlen) {
    const model_config *c = &m->cfg;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size) {
            snprintf(err, errlen, "token id %d is out of range (vocabulary of %d)", tokens[i], c->vocab_size);
            return -1;
        }
    if (s->pos + n > s->max_ctx) {
        snprintf(err, errlen, "context full: %d positions cached + %d new exceed the context of %d", s->pos, n,
                 s->max_ctx);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        float *out = NULL;
        if (logits && all_logits) out = logits + (size_t)i * c->vocab_size;
        else if (logits && i == n - 1) out = logits;
        if (forward_token(m, s, tokens[i], out, err, errlen)) return -1;
    }
    return 0;
}
