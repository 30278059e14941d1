/* The decoder: embedding, layers, final norm, lm_head; and the state they advance. */
#include <math.h>
#include <stdint.h>
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

/* Per layer: floats per position of the K (and of the V) cache, of the conv window, of the recurrent state. */
static void cache_sizes(const model_config *c, size_t *kv_row, size_t *conv, size_t *rec) {
    size_t key_dim = (size_t)c->lin_k_heads * c->lin_k_dim, value_dim = (size_t)c->lin_v_heads * c->lin_v_dim;
    *kv_row = (size_t)c->n_kv_heads * c->head_dim;
    *conv = (size_t)(c->conv_kernel - 1) * (2 * key_dim + value_dim);
    *rec = (size_t)c->lin_v_heads * c->lin_k_dim * c->lin_v_dim;
}

/* Layer l's two state buffers (K and V cache, or conv window and recurrent state), in floats. */
static void layer_bufs(const model_config *c, int l, size_t max_ctx, size_t *na, size_t *nb) {
    size_t kv_row, conv, rec;
    cache_sizes(c, &kv_row, &conv, &rec);
    int attn = c->layer_types[l] == LAYER_FULL_ATTENTION;
    *na = attn ? max_ctx * kv_row : conv;
    *nb = attn ? max_ctx * kv_row : rec;
}

/* Zeroed buffers that start on a 64-byte line, so that the kernels' 512-bit loads and stores of state
 * rows never straddle two lines (calloc's large blocks start 16 bytes into a page). From calloc, so
 * large ones come zeroed from the kernel, untouched until used (aligned_alloc + memset would touch them
 * all at once); never 0 bytes, so a buffer of a dimension the model lacks still gets a pointer. zfree
 * frees them. */
#define ZALIGN 64
#define ZSLACK (ZALIGN + sizeof(void *)) /* bytes a buffer takes beyond its own */
static int zcalloc(void **p, size_t n, size_t size) {
    n = n ? n : 1;
    char *raw = size && n > (SIZE_MAX - ZSLACK) / size ? NULL : calloc(1, n * size + ZSLACK);
    if (!raw) return (*p = NULL), 0;
    char *a = (char *)(((uintptr_t)raw + sizeof raw + ZALIGN - 1) & ~(uintptr_t)(ZALIGN - 1));
    memcpy(a - sizeof raw, &raw, sizeof raw); /* the block's own address, just before the aligned start */
    *p = a;
    return 1;
}

static void zfree(void *p) {
    if (!p) return;
    void *raw;
    memcpy(&raw, (char *)p - sizeof raw, sizeof raw);
    free(raw);
}

/* The state's scratch buffers: where each one's pointer lives in s, its count and element size. One list
 * serves state_bytes (with a throwaway s), state_create and state_free. */
typedef struct {
    void **at;
    size_t n, size;
} scratch_buf;
#define SCRATCH_MAX 32

static int scratch_list(state *s, const model_config *c, size_t K, size_t C, size_t P, size_t max_ctx,
                        scratch_buf *b) {
    size_t H = (size_t)c->hidden_size, heads = (size_t)c->n_heads * c->head_dim;
    size_t value_dim = (size_t)c->lin_v_heads * c->lin_v_dim;
    size_t conv_dim = 2 * (size_t)c->lin_k_heads * c->lin_k_dim + value_dim;
    size_t inter = state_inter(c);
    size_t group = (size_t)(c->n_heads / c->n_kv_heads), R = state_batch_rows(K, C), E = (size_t)c->n_experts;
    int n = 0;
#define F(field, count) b[n++] = (scratch_buf){(void **)&s->field, (count), sizeof(float)}
#define I(field, count) b[n++] = (scratch_buf){(void **)&s->field, (count), sizeof(int)}
    F(x, C * H), F(xn, C * H), F(mix, C * H);
    F(qg, C * heads * 2), F(q, P * group * c->head_dim), F(att, C * heads); /* q: a kv group's queries per thread */
    F(scores, max_ctx * P * group);                                         /* a kv group's score rows per thread */
    F(qkv, C * conv_dim), F(z, C * value_dim), F(beta, C * c->lin_v_heads), F(decay, C * c->lin_v_heads);
    F(o, C * value_dim);
    F(router, C * E), F(topk_w, C * K), I(topk_id, C * K);
    /* xe, eh, eu: a batch's rows (a prompt chunk's experts computed together), or a decoded token's K
     * experts and the shared one at once (moe.c) */
    F(sg, C), F(sh, C * H), F(xe, R * H), F(eh, (R > K + 1 ? R : K + 1) * inter), F(eu, R * inter);
    F(expert_out, R * H), F(expert_w, R), I(expert_rows, R), I(batch_off, K + 1), I(expert_n, E), I(batch_ids, K);
    I(ahead_ids, E);
    b[n++] = (scratch_buf){(void **)&s->views, K + 1, sizeof(expert_view)};
    b[n++] = (scratch_buf){(void **)&s->times, (size_t)c->n_layers * T_COUNT, sizeof(double)};
#undef F
#undef I
    return n;
}

size_t state_bytes(const model_config *c, int top_k, int chunk, int threads, int max_ctx) {
    size_t L = (size_t)c->n_layers, bytes = sizeof(state) + 4 * L * sizeof(float *);
    for (int l = 0; l < c->n_layers; l++) {
        size_t na, nb;
        layer_bufs(c, l, (size_t)max_ctx, &na, &nb);
        bytes += sizeof(float) * (na + nb) + 2 * ZSLACK;
    }
    state tmp;
    scratch_buf b[SCRATCH_MAX];
    int n = scratch_list(&tmp, c, (size_t)top_k, (size_t)(chunk > 0 ? chunk : 1), (size_t)(threads > 1 ? threads : 1),
                         (size_t)max_ctx, b);
    for (int i = 0; i < n; i++) bytes += b[i].n * b[i].size + ZSLACK;
    return bytes;
}

state *state_create(const model *m, int max_ctx, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    state *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->m = m;
    s->max_ctx = max_ctx;
    s->chunk = m->prefill_chunk > 0 ? m->prefill_chunk : 1;
    int ok = 1, L = c->n_layers;
    s->k_cache = calloc((size_t)L, sizeof(float *));
    s->v_cache = calloc((size_t)L, sizeof(float *));
    s->conv_state = calloc((size_t)L, sizeof(float *));
    s->rec_state = calloc((size_t)L, sizeof(float *));
    if (!s->k_cache || !s->v_cache || !s->conv_state || !s->rec_state) goto oom;
    for (int l = 0; l < L; l++) {
        int attn = c->layer_types[l] == LAYER_FULL_ATTENTION;
        size_t na, nb;
        layer_bufs(c, l, (size_t)max_ctx, &na, &nb);
        ok &= zcalloc((void **)(attn ? &s->k_cache[l] : &s->conv_state[l]), na, sizeof(float));
        ok &= zcalloc((void **)(attn ? &s->v_cache[l] : &s->rec_state[l]), nb, sizeof(float));
    }
    scratch_buf b[SCRATCH_MAX];
    int n = scratch_list(s, c, (size_t)m->top_k, (size_t)s->chunk, (size_t)pool_size(m->pool), (size_t)max_ctx, b);
    for (int i = 0; i < n; i++) ok &= zcalloc(b[i].at, b[i].n, b[i].size);
    if (!ok) goto oom;
    for (int e = 0; e < c->n_experts; e++) s->ahead_ids[e] = e;
    return s;
oom:
    snprintf(err, errlen, "out of memory for the model state (context %d)", max_ctx);
    state_free(s);
    return NULL;
}

void state_free(state *s) {
    if (!s) return;
    const model *m = s->m;
    int L = m->cfg.n_layers;
    for (int l = 0; s->k_cache && l < L; l++) {
        zfree(s->k_cache[l]);
        zfree(s->v_cache[l]);
        zfree(s->conv_state[l]);
        zfree(s->rec_state[l]);
    }
    free(s->k_cache);
    free(s->v_cache);
    free(s->conv_state);
    free(s->rec_state);
    scratch_buf b[SCRATCH_MAX];
    int n = scratch_list(s, &m->cfg, (size_t)m->top_k, (size_t)s->chunk, 1, 1, b); /* sizes unused */
    for (int i = 0; i < n; i++) zfree(*b[i].at);
    free(s);
}

void state_reset(state *s) {
    const model_config *c = &s->m->cfg;
    size_t kv_row, conv, rec;
    cache_sizes(c, &kv_row, &conv, &rec);
    for (int l = 0; l < c->n_layers; l++) {
        if (s->conv_state[l]) memset(s->conv_state[l], 0, sizeof(float) * conv);
        if (s->rec_state[l]) memset(s->rec_state[l], 0, sizeof(float) * rec);
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
    size_t kv_row, conv, rec;
    cache_sizes(c, &kv_row, &conv, &rec);
    size_t kv = (size_t)src->pos * kv_row;
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
    long r0, r1;
    if (pool_share(task, j->rows_per_task, j->w->rows, &r0, &r1)) kernel_matmat_rows(j->Y, j->w, j->X, j->T, (int)r0, (int)r1);
}

void state_matmul(const state *s, float *Y, const qmat *w, const float *X, int T) {
    if (T == 1) {
        kernel_matvec_mt(s->m->pool, Y, w, X);
        return;
    }
    /* one task per thread: each task prepares (quantizes, reorders) the T activation rows again */
    int tasks;
    matmul_job j = {Y, w, X, T, (int)pool_per(w->rows, pool_size(s->m->pool), 16, &tasks)};
    pool_run(s->m->pool, matmul_task, &j, tasks);
}

typedef struct {
    const state_product *p;
    const float *x;
    int n;
    long per, first[STATE_MATMULS_MAX + 1]; /* rows per task; the first task of each product */
} matvecs_job;

static void matvecs_task(void *ctx, int task, int n_tasks) {
    (void)n_tasks;
    const matvecs_job *j = ctx;
    int i = 0;
    while (task >= j->first[i + 1]) i++;
    long r0, r1;
    if (pool_share((int)(task - j->first[i]), j->per, j->p[i].w->rows, &r0, &r1))
        kernel_matvec_rows(j->p[i].Y, j->p[i].w, j->x, (int)r0, (int)r1);
}

void state_matmuls(const state *s, const float *X, int T, const state_product *p, int n) {
    if (T > 1 || n == 1 || n > STATE_MATMULS_MAX || pool_size(s->m->pool) < 2) {
        for (int i = 0; i < n; i++) state_matmul(s, p[i].Y, p[i].w, X, T);
        return;
    }
    /* about 4 tasks per thread over all the rows (as kernel_matvec_mt), each within one matrix */
    long rows = 0;
    for (int i = 0; i < n; i++) rows += p[i].w->rows;
    int tasks;
    matvecs_job j = {p, X, n, pool_per(rows, 4 * pool_size(s->m->pool), 16, &tasks), {0}};
    for (int i = 0; i < n; i++) j.first[i + 1] = j.first[i] + (p[i].w->rows + j.per - 1) / j.per;
    pool_run(s->m->pool, matvecs_task, &j, (int)j.first[n]);
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
    int ahead = experts_chunk_reads_ahead(m->experts, T, m->top_k, c->n_experts);
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *w = &m->layers[l];
        if (ahead && experts_readahead(m->experts, l, s->ahead_ids, c->n_experts, err, errlen)) return -1;
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
    if (st.read_ahead)
        fprintf(f, "read-ahead: %llu experts of prompt chunks read while their layer's mixer ran\n",
                (unsigned long long)st.read_ahead);
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
