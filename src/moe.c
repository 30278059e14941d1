/* Sparse MoE block: router, top-k with renormalised weights, routed experts, gated shared expert.
 *
 * T positions at once, expert-major: every expert selected by any of the T positions is read once and
 * applied to all the rows routed to it (a prompt chunk of 512 tokens touches most experts, each read once
 * instead of once per token). Experts are asked for in ascending id, at most K at a time (the sources'
 * working set), and their outputs are summed in ascending expert order whatever order the reads complete
 * in, so that results do not depend on I/O timing. Where a batch's experts are all in memory (a mapped
 * source, or a prompt chunk's experts read ahead) the batch is computed together: two dispatches for all
 * of it instead of two per expert (a decoded token's) or four (a prompt chunk's). Otherwise each expert
 * is computed as it arrives, which overlaps its compute with the reads of the rest. */
#include <math.h>
#include <string.h>

#include "state.h"

#define GROUP_CHUNKS_MIN 2 /* shares per expert of a prompt chunk's batch, at least */

typedef struct {
    float *h;
    const qmat *gate, *up;
    const float *x;
    int rows_per_task;
} gate_up_job;

static void gate_up_task(void *ctx, int task, int n_tasks) {
    (void)n_tasks;
    const gate_up_job *j = ctx;
    long r0, r1;
    if (pool_share(task, j->rows_per_task, j->gate->rows, &r0, &r1))
        kernel_swiglu_gate_up(j->h, j->gate, j->up, j->x, (int)r0, (int)r1);
}

typedef struct {
    float *h;
    const float *u;
    size_t n, per;
} silu_job;

static void silu_task(void *ctx, int task, int n_tasks) {
    (void)n_tasks;
    const silu_job *j = ctx;
    long a, b;
    if (pool_share(task, (long)j->per, (long)j->n, &a, &b)) kernel_silu_mul(j->h + a, j->h + a, j->u + a, (size_t)(b - a));
}

/* Y = down(silu(gate X) * up X) over n rows */
static void swiglu_mlp(state *s, const qmat *gate, const qmat *up, const qmat *down, const float *X, int n, float *Y) {
    int inter = gate->rows;
    if (n == 1) { /* decoding: the fused kernel prepares x once for gate and up, one task per thread */
        int tasks;
        gate_up_job j = {s->eh, gate, up, X, (int)pool_per(inter, pool_size(s->m->pool), 1, &tasks)};
        pool_run(s->m->pool, gate_up_task, &j, tasks);
        state_matmul(s, Y, down, s->eh, 1);
        return;
    }
    state_matmul(s, s->eh, gate, X, n);
    state_matmul(s, s->eu, up, X, n);
    int tasks; /* silu(gate) * up, elementwise: split across the threads */
    size_t total = (size_t)n * inter;
    silu_job sj = {s->eh, s->eu, total, (size_t)pool_per((long)total, pool_size(s->m->pool), 8, &tasks)};
    pool_run(s->m->pool, silu_task, &sj, tasks);
    state_matmul(s, Y, down, s->eh, n);
}

/* Indices of the k largest p (ties: lower index first, as a stable sort would), in descending order: one
 * pass keeping the best k so far sorted, so that most p cost one comparison with the k-th. */
static void top_k(const float *p, int n, int k, int *ids) {
    int len = 0;
    for (int e = 0; e < n; e++) {
        int i = len; /* insertion point: after every kept p >= p[e] */
        while (i > 0 && p[ids[i - 1]] < p[e]) i--;
        if (i >= k) continue;
        for (int m = len < k ? len : k - 1; m > i; m--) ids[m] = ids[m - 1];
        ids[i] = e;
        if (len < k) len++;
    }
}

/* p = softmax(router(x)) per row; top-k; weights renormalised to sum to 1 */
static void route(state *s, const layer_weights *w, const float *xn, int T) {
    int E = s->m->cfg.n_experts, K = s->m->top_k;
    state_matmul(s, s->router, &w->router, xn, T);
    for (int t = 0; t < T; t++) {
        float *p = s->router + (size_t)t * E, maxl = -INFINITY, sum = 0.0f, wsum = 0.0f;
        int *ids = s->topk_id + (size_t)t * K;
        float *wt = s->topk_w + (size_t)t * K;
        for (int e = 0; e < E; e++) maxl = p[e] > maxl ? p[e] : maxl;
        for (int e = 0; e < E; e++) sum += (p[e] = expf(p[e] - maxl));
        for (int e = 0; e < E; e++) p[e] /= sum;
        top_k(p, E, K, ids);
        for (int j = 0; j < K; j++) wsum += p[ids[j]];
        for (int j = 0; j < K; j++) wt[j] = p[ids[j]] / wsum;
    }
}

/* Decoding (one token), after this layer's reads have started: predicts the experts of the next layer and
 * has the source read them ahead, while this layer's experts and the next layer's mixer compute. The
 * prediction is the next layer's router applied to post_attention_layernorm_{l+1}(h), h being the residual
 * stream before this layer's MoE (s->x: forward.c adds the MoE output only after moe_forward returns):
 * the input the next router will see, but for this layer's MoE output and the next layer's mixer output,
 * assumed small next to the residual in trained models. (The residual after this MoE would be closer,
 * but is known only once this layer's experts have all arrived: too late to overlap their compute.)
 * Scratch: s->xe (free until the experts compute), s->router (this token's routing is in topk_w and the
 * batch by now) and s->topk_id (one token's K experts all went into the first batch). */
static int prefetch_next_layer(state *s, int layer, char *err, size_t errlen) {
    const model *m = s->m;
    const layer_weights *next = &m->layers[layer + 1];
    int H = m->cfg.hidden_size;
    rmsnorm(s->xe, s->x, next->post_norm, H, m->cfg.norm_eps);
    state_matmul(s, s->router, &next->router, s->xe, 1);
    top_k(s->router, m->cfg.n_experts, m->top_k, s->topk_id);
    return experts_prefetch(m->experts, layer + 1, s->topk_id, m->top_k, err, errlen);
}

/* The rows of the chunk routed to expert e, and their weights, from batch row `at` on. */
static void gather_rows(state *s, int e, int T, int at) {
    int K = s->m->top_k;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < K; j++)
            if (s->topk_id[(size_t)t * K + j] == e) {
                s->expert_rows[at] = t;
                s->expert_w[at++] = s->topk_w[(size_t)t * K + j];
            }
}

/* The next batch of experts (ascending ids, from expert *next on) with their rows: at most K of them, and
 * at most state_batch_rows rows between them (one expert has at most a chunk's rows, which always fit).
 * Its size. */
static int next_batch(state *s, int T, int *next) {
    int E = s->m->cfg.n_experts, K = s->m->top_k, nb = 0, R = (int)state_batch_rows((size_t)K, (size_t)s->chunk);
    s->batch_off[0] = 0;
    for (; *next < E && nb < K; ++*next) {
        int n = s->expert_n[*next];
        if (!n) continue;
        if (s->batch_off[nb] + n > R) break;
        gather_rows(s, *next, T, s->batch_off[nb]);
        s->batch_ids[nb] = *next;
        s->batch_off[nb + 1] = s->batch_off[nb] + n;
        nb++;
    }
    return nb;
}

/* The inputs of batch rows [at, at + n), from the chunk's normed rows xn, into xe at the same rows. */
static void gather_inputs(state *s, const float *xn, int at, int n) {
    int H = s->m->cfg.hidden_size;
    for (int r = at; r < at + n; r++)
        memcpy(s->xe + (size_t)r * H, xn + (size_t)s->expert_rows[r] * H, sizeof(float) * H);
}

typedef struct {
    const state *s;
    float *out;
    int rows, H, per;
} accum_job;

/* out[expert_rows[r]][k] += expert_w[r] * expert_out[r][k] for the batch's rows r, ascending, and the
 * columns k of task i (per columns each). */
static void accum_task(void *ctx, int task, int n_tasks) {
    (void)n_tasks;
    const accum_job *j = ctx;
    long k0, k1;
    pool_share(task, j->per, j->H, &k0, &k1);
    for (int r = 0; r < j->rows; r++) {
        float wt = j->s->expert_w[r];
        const float *y = j->s->expert_out + (size_t)r * j->H;
        float *o = j->out + (size_t)j->s->expert_rows[r] * j->H;
        for (long k = k0; k < k1; k++) o[k] += wt * y[k];
    }
}

/* A batch of experts from a source whose experts are all in memory (mapped), or of a prompt chunk whose
 * experts were read ahead (experts_chunk_reads_ahead): all of them taken first, then every gate/up in one
 * dispatch and every down in another, the tasks being (expert, share of its rows), instead of two
 * dispatches per expert (a decoded token) or four (a prompt chunk: gate, up, the SwiGLU product, down,
 * each split across the threads). When decoding, the shared expert goes with them (as views[nb], into
 * s->sh). Each row is computed exactly as swiglu_mlp computes it, so the outputs are the same. */
typedef struct {
    state *s;
    const float *xn;
    int nb;              /* routed experts; views[nb] is the shared one if there are more tasks */
    int chunks;          /* shares per expert */
    long per_gu, per_dn; /* rows per share of gate/up and of down */
    int down;            /* 0: h_b = silu(gate_b x_b) * (up_b x_b); 1: out_b = down_b h_b */
} group_job;

/* task = expert b (of the batch, or the shared one) x share c of its rows. An expert with one row uses
 * the decoding kernels (fused gate/up, matrix-vector down), as swiglu_mlp does for n = 1; one with more
 * (a prompt chunk's, its inputs gathered in xe at its batch rows) the GEMM, then the SwiGLU product of
 * the task's columns. Its n rows of h and u start at its batch row times state_inter, n rows of its
 * intermediate size apart. */
static void group_task(void *ctx, int task, int n_tasks) {
    (void)n_tasks;
    const group_job *j = ctx;
    const state *s = j->s;
    int b = task / j->chunks, H = s->m->cfg.hidden_size, routed = b < j->nb;
    const expert_view *v = &s->views[b];
    int n = routed ? s->batch_off[b + 1] - s->batch_off[b] : 1, inter = v->gate.rows;
    size_t at = routed ? (size_t)s->batch_off[b] : 0, si = state_inter(&s->m->cfg);
    float *h = s->eh + (routed ? at : (size_t)j->nb) * si; /* the shared one after a decoded token's rows */
    float *y = routed ? s->expert_out + at * H : s->sh;
    const float *x = !routed ? j->xn : n > 1 ? s->xe + at * H : j->xn + (size_t)s->expert_rows[at] * H;
    long per = j->down ? j->per_dn : j->per_gu, r0, r1;
    if (!pool_share(task % j->chunks, per, j->down ? v->down.rows : v->gate.rows, &r0, &r1)) return;
    if (j->down) {
        if (n > 1) kernel_matmat_rows(y, &v->down, h, n, (int)r0, (int)r1);
        else kernel_matvec_rows(y, &v->down, h, (int)r0, (int)r1);
    } else if (n > 1) {
        float *u = s->eu + at * si;
        kernel_matmat_rows(h, &v->gate, x, n, (int)r0, (int)r1);
        kernel_matmat_rows(u, &v->up, x, n, (int)r0, (int)r1);
        for (int r = 0; r < n; r++)
            kernel_silu_mul(h + (size_t)r * inter + r0, h + (size_t)r * inter + r0, u + (size_t)r * inter + r0,
                            (size_t)(r1 - r0));
    } else
        kernel_swiglu_gate_up(h, &v->gate, &v->up, x, (int)r0, (int)r1);
}

static int compute_batch_grouped(state *s, int layer, const layer_weights *shared, const float *xn, int nb, double *t,
                                 char *err, size_t errlen) {
    const model *m = s->m;
    int i, rc, threads = pool_size(m->pool);
    expert_view v;
    while ((rc = experts_next(m->experts, &i, &v, err, errlen)) == 1) s->views[i] = v;
    state_tick(s, layer, T_IO_WAIT, t);
    if (rc == 0) {
        int n = nb, rows = s->batch_off[nb];
        if (shared) s->views[n++] = (expert_view){shared->sh_gate, shared->sh_up, shared->sh_down};
        if (rows > nb) gather_inputs(s, xn, 0, rows); /* a prompt chunk's batch */
        /* about two tasks per thread in all, so that the last one to finish is short (at least two per
         * expert of a prompt chunk); shares of the largest expert's rows (a smaller one leaves its last
         * shares empty) */
        int chunks = (2 * threads + n - 1) / n, tasks;
        if (rows > nb && chunks < GROUP_CHUNKS_MIN) chunks = GROUP_CHUNKS_MIN;
        /* a decoded token's K + 1 equal experts: a share of each per thread, so that every thread gets the
         * same work (K + 1 = 9 whole experts on 2 threads left one thread idle for an expert's time at the
         * end of each product; decode measured 1-5% faster; BENCHMARKS.md, series 14) */
        if (rows == nb && chunks < threads) chunks = threads;
        long gu = 0, dn = 0;
        for (int b = 0; b < n; b++) {
            gu = s->views[b].gate.rows > gu ? s->views[b].gate.rows : gu;
            dn = s->views[b].down.rows > dn ? s->views[b].down.rows : dn;
        }
        group_job j = {s, xn, nb, chunks, pool_per(gu, chunks, 16, &tasks), pool_per(dn, chunks, 16, &tasks), 0};
        pool_run(m->pool, group_task, &j, n * chunks);
        j.down = 1;
        pool_run(m->pool, group_task, &j, n * chunks);
        state_tick(s, layer, T_EXPERTS, t);
    }
    experts_end(m->experts);
    return rc;
}

/* Computes the batch's experts (reads started by experts_begin) on their rows, together (`together`, or
 * `shared`) or each as it arrives (see the top), then adds the weighted outputs into out in ascending
 * expert order. shared: the layer, whose shared expert is computed with the batch (decoding from a
 * mapped source), or NULL. */
static int finish_batch(state *s, int layer, const layer_weights *shared, int together, const float *xn, int nb,
                        float *out, double *t, char *err, size_t errlen) {
    const model *m = s->m;
    int H = m->cfg.hidden_size, i, rc;
    if (shared || together) {
        if (compute_batch_grouped(s, layer, shared, xn, nb, t, err, errlen)) return -1;
    } else {
        expert_view v;
        while ((rc = experts_next(m->experts, &i, &v, err, errlen)) == 1) {
            state_tick(s, layer, T_IO_WAIT, t);
            int n = s->expert_n[s->batch_ids[i]], at = s->batch_off[i];
            gather_inputs(s, xn, at, n);
            swiglu_mlp(s, &v.gate, &v.up, &v.down, s->xe + (size_t)at * H, n, s->expert_out + (size_t)at * H);
            state_tick(s, layer, T_EXPERTS, t);
        }
        experts_end(m->experts);
        state_tick(s, layer, T_IO_WAIT, t);
        if (rc) return rc;
    }
    /* the batch's rows, expert by expert, ascending; a prompt chunk's split across the threads by columns
     * (every element still gets its additions in the same order) */
    int rows = s->batch_off[nb], threads = pool_size(m->pool);
    if (rows <= m->top_k || threads < 2) { /* one position's rows: not worth a dispatch */
        accum_job aj = {s, out, rows, H, H};
        accum_task(&aj, 0, 1);
    } else {
        int tasks;
        accum_job aj = {s, out, rows, H, (int)pool_per(H, threads, 1, &tasks)};
        pool_run(m->pool, accum_task, &aj, tasks);
    }
    return 0;
}

int moe_forward(state *s, int layer, const layer_weights *w, const float *xn, int T, float *out, char *err,
                size_t errlen) {
    const model *m = s->m;
    int E = m->cfg.n_experts, K = m->top_k, H = m->cfg.hidden_size;
    double t = state_clock(s);
    route(s, w, xn, T);
    for (int e = 0; e < E; e++) s->expert_n[e] = 0;
    for (int j = 0; j < T * K; j++) s->expert_n[s->topk_id[j]]++;
    state_tick(s, layer, T_ROUTING, &t);

    /* start reading the first batch of routed experts, and compute the shared expert (gated by
     * sigmoid(shared_expert_gate(x))) while they arrive */
    int next = 0, nb = next_batch(s, T, &next);
    if (nb && experts_begin(m->experts, layer, s->batch_ids, nb, err, errlen)) return -1;
    state_tick(s, layer, T_IO_WAIT, &t);
    if (T == 1 && m->experts->prefetch && layer + 1 < m->cfg.n_layers) {
        if (prefetch_next_layer(s, layer, err, errlen)) {
            experts_end(m->experts);
            return -1;
        }
        state_tick(s, layer, T_ROUTING, &t);
    }
    /* batches taken whole: every expert in memory, or read ahead (resident, or nearly, by now); decoding
     * from a mapped source, the shared expert is computed with the routed ones (finish_batch) */
    int together = m->experts->immediate || experts_chunk_reads_ahead(m->experts, T, K, E);
    const layer_weights *shared = T == 1 && nb && m->experts->immediate ? w : NULL;
    state_matmul(s, s->sg, &w->sh_expert_gate, xn, T);
    if (!shared) swiglu_mlp(s, &w->sh_gate, &w->sh_up, &w->sh_down, xn, T, s->sh);
    state_tick(s, layer, T_EXPERTS, &t);

    /* out = sum over experts (ascending) of w * expert(x), in batches of at most K experts */
    memset(out, 0, sizeof(float) * (size_t)T * H);
    while (nb) {
        if (finish_batch(s, layer, shared, together, xn, nb, out, &t, err, errlen)) return -1;
        shared = NULL;
        if ((nb = next_batch(s, T, &next)) && experts_begin(m->experts, layer, s->batch_ids, nb, err, errlen))
            return -1;
        state_tick(s, layer, T_IO_WAIT, &t);
    }

    /* + sigmoid(shared_expert_gate(x)) * shared_expert(x) */
    for (int r = 0; r < T; r++) {
        float g = sigmoid(s->sg[r]);
        for (int k = 0; k < H; k++) out[(size_t)r * H + k] += g * s->sh[(size_t)r * H + k];
    }
    state_tick(s, layer, T_EXPERTS, &t);
    return 0;
}
