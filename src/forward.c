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

size_t state_bytes(const model_config *c, int top_k, int chunk, int threads, int max_ctx) {
    /* the allocations of state_create below, in the same order */
    size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    size_t key_dim = (size_t)c->lin_k_heads * c->lin_k_dim, value_dim = (size_t)c->lin_v_heads * c->lin_v_dim;
    size_t conv_dim = 2 * key_dim + value_dim, floats = 0, ints = 0, L = (size_t)c->n_layers, H = (size_t)c->hidden_size;
    for (size_t l = 0; l < L; l++)
        floats += c->layer_types[l] == LAYER_FULL_ATTENTION
                      ? 2 * (size_t)max_ctx * kv_dim
                      : (size_t)(c->conv_kernel - 1) * conv_dim + (size_t)c->lin_v_heads * c->lin_k_dim * c->lin_v_dim;
    size_t inter = (size_t)(c->expert_inter > c->shared_inter ? c->expert_inter : c->shared_inter);
    size_t C = (size_t)(chunk > 0 ? chunk : 1), K = (size_t)top_k, heads = (size_t)c->n_heads * c->head_dim;
    size_t R = state_batch_rows(K, C);
    size_t P = (size_t)(threads > 1 ? threads : 1), group = (size_t)(c->n_heads / c->n_kv_heads);
    floats += C * H * 5 + C * heads * 3 + P * group * (size_t)c->head_dim + (size_t)max_ctx * P * group +
              C * (conv_dim + 2 * value_dim + 2 * (size_t)c->lin_v_heads + (size_t)c->n_experts + K + 1 + 2 * inter) +
              R * H + R;
    ints = C * K + R + (K + 1) + (size_t)c->n_experts + K;
    return floats * sizeof(float) + ints * sizeof(int) + 4 * L * sizeof(float *) + L * T_COUNT * sizeof(double) +
           sizeof(state);
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
    size_t C = (size_t)(s->chunk = m->prefill_chunk > 0 ? m->prefill_chunk : 1), K = (size_t)m->top_k;
    s->x = zalloc(C * H, &ok);
    s->xn = zalloc(C * H, &ok);
    s->mix = zalloc(C * H, &ok);
    s->qg = zalloc(C * c->n_heads * c->head_dim * 2, &ok);
    size_t P = (size_t)pool_size(m->pool), group = (size_t)(c->n_heads / c->n_kv_heads);
    s->q = zalloc(P * group * c->head_dim, &ok);            /* a kv group's queries per thread */
    s->att = zalloc(C * c->n_heads * c->head_dim, &ok);
    s->scores = zalloc((size_t)max_ctx * P * group, &ok); /* a kv group's score rows per thread */
    s->qkv = zalloc(C * conv_dim, &ok);
    s->z = zalloc(C * value_dim, &ok);
    s->beta = zalloc(C * c->lin_v_heads, &ok);
    s->decay = zalloc(C * c->lin_v_heads, &ok);
    s->o = zalloc(C * value_dim, &ok);
    s->router = zalloc(C * c->n_experts, &ok);
    s->topk_w = zalloc(C * K, &ok);
    s->sg = zalloc(C, &ok);
    s->sh = zalloc(C * H, &ok);
    s->xe = zalloc(C * H, &ok);
    s->eh = zalloc(C * inter, &ok);
    s->eu = zalloc(C * inter, &ok);
    size_t R = state_batch_rows(K, C);
    s->expert_out = zalloc(R * H, &ok);
    s->expert_w = zalloc(R, &ok);
    s->topk_id = calloc(C * K, sizeof(int));
    s->expert_rows = calloc(R, sizeof(int));
    s->batch_off = calloc(K + 1, sizeof(int));
    s->expert_n = calloc((size_t)c->n_experts, sizeof(int));
    s->batch_ids = calloc(K, sizeof(int));
    if (!s->topk_id || !s->expert_rows || !s->batch_off || !s->expert_n || !s->batch_ids) ok = 0;
    s->times = calloc((size_t)L * T_COUNT, sizeof(double));
    if (!s->times) ok = 0;
    if (!ok) goto oom;
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
    float *bufs[] = {s->x,  s->xn,     s->mix,    s->qg, s->q,  s->att, s->scores, s->qkv,       s->z,
                     s->beta, s->decay, s->o,   s->router, s->topk_w, s->sg, s->sh, s->xe, s->eh, s->eu,
                     s->expert_out, s->expert_w};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->expert_rows);
    free(s->batch_off);
    free(s->expert_n);
    free(s->batch_ids);
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

typedef struct {
    float *Y;
    const qmat *w;
    const float *X;
    int T, rows_per_task;
} matmul_job;

static void matmul_task(void *ctx, int task, int n_tasks) {
    (void)n_tasks;
    matmul_job *j = ctx;
    int r0 = task * j->rows_per_task, r1 = r0 + j->rows_per_task;
    kernel_matmat_rows(j->Y, j->w, j->X, j->T, r0, r1 < j->w->rows ? r1 : j->w->rows);
}

void state_matmul(const state *s, float *Y, const qmat *w, const float *X, int T) {
    if (T == 1) {
        kernel_matvec_mt(s->m->pool, Y, w, X);
        return;
    }
    /* one task per thread: each task prepares (quantizes, reorders) the T activation rows again */
    int threads = pool_size(s->m->pool), per = (w->rows + threads - 1) / threads;
    per = (per + 15) / 16 * 16;
    matmul_job j = {Y, w, X, T, per};
    pool_run(s->m->pool, matmul_task, &j, (w->rows + per - 1) / per);
}

/* T consecutive positions (T <= chunk) through every layer; logits (if non-NULL) receive the scores of
 * every position ([T][vocab]) or, if !all, of the last one only. */
static int forward_chunk(model *m, state *s, const int32_t *tokens, int T, float *logits, int all, char *err,
                         size_t errlen) {
    const model_config *c = &m->cfg;
    int H = c->hidden_size;
    float *x = s->x, *xn = s->xn, *mix = s->mix;
    double t = state_clock(s), t0 = t;
    for (int r = 0; r < T; r++) kernel_row_f32(x + (size_t)r * H, &m->embed, tokens[r]); /* embed_tokens */
    if (s->timing) s->t_head += util_now_seconds() - t0;
    t = state_clock(s);
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *w = &m->layers[l];
        /* h = x + mixer(input_layernorm(x)) */
        for (int r = 0; r < T; r++) rmsnorm(xn + (size_t)r * H, x + (size_t)r * H, w->input_norm, H, c->norm_eps);
        state_tick(s, l, T_OTHER, &t);
        if (w->type == LAYER_FULL_ATTENTION)
            attention_forward(s, l, w, xn, T, mix);
        else
            delta_net_forward(s, l, w, xn, T, mix);
        state_tick(s, l, T_MIXER, &t);
        for (size_t i = 0; i < (size_t)T * H; i++) x[i] += mix[i];
        /* out = h + moe(post_attention_layernorm(h)) */
        for (int r = 0; r < T; r++) rmsnorm(xn + (size_t)r * H, x + (size_t)r * H, w->post_norm, H, c->norm_eps);
        state_tick(s, l, T_OTHER, &t);
        if (moe_forward(s, l, w, xn, T, mix, err, errlen)) return -1; /* ticks its own buckets */
        t = state_clock(s);
        for (size_t i = 0; i < (size_t)T * H; i++) x[i] += mix[i];
        state_tick(s, l, T_OTHER, &t);
    }
    s->pos += T;
    if (s->timing) s->timed_tokens += T;
    if (logits) { /* norm(x) then lm_head, for the rows asked for */
        int first = all ? 0 : T - 1;
        for (int r = first; r < T; r++) rmsnorm(xn + (size_t)r * H, x + (size_t)r * H, m->final_norm, H, c->norm_eps);
        state_matmul(s, logits, &m->lm_head, xn + (size_t)first * H, T - first);
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
    if (st.predicted_asked)
        fprintf(f, "prefetch: next-layer prediction hit rate %.1f%% (%llu of %llu experts predicted); top %.1f of "
                "each read (%llu of %llu predictions skipped); %llu experts read ahead, %llu of them used (%.1f%%)\n",
                100.0 * st.predicted_right / st.predicted_asked, (unsigned long long)st.predicted_right,
                (unsigned long long)st.predicted_asked,
                st.predictions ? (double)st.prediction_top / st.predictions : 0.0,
                (unsigned long long)st.predictions_skipped, (unsigned long long)st.predictions,
                (unsigned long long)st.prefetched, (unsigned long long)st.prefetch_used,
                st.prefetched ? 100.0 * st.prefetch_used / st.prefetched : 0.0);
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
    for (int i = 0; i < n; i += s->chunk) {
        int T = n - i < s->chunk ? n - i : s->chunk;
        float *out = NULL;
        if (logits && all_logits) out = logits + (size_t)i * c->vocab_size;
        else if (logits && i + T == n) out = logits;
        if (forward_chunk(m, s, tokens + i, T, out, all_logits, err, errlen)) return -1;
    }
    return 0;
}
