/* Sparse MoE block: router, top-k with renormalised weights, routed experts, gated shared expert. */
#include <math.h>
#include <string.h>

#include "state.h"

/* y = down(silu(gate x) * up x) */
static void swiglu_mlp(state *s, const qmat *gate, const qmat *up, const qmat *down, const float *x, float *y) {
    int inter = gate->rows;
    state_matvec(s, s->eh, gate, x);
    state_matvec(s, s->eu, up, x);
    for (int i = 0; i < inter; i++) s->eh[i] = silu(s->eh[i]) * s->eu[i];
    state_matvec(s, y, down, s->eh);
}

/* Indices of the k largest p (ties: lower index first, as a stable sort would), in descending order. */
static void top_k(const float *p, int n, int k, int *ids) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < n; e++) {
            int taken = 0;
            for (int t = 0; t < j; t++) taken |= ids[t] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        ids[j] = best;
    }
}

int moe_forward(state *s, int layer, const layer_weights *w, const float *xn, float *out, char *err, size_t errlen) {
    const model *m = s->m;
    int E = m->cfg.n_experts, K = m->top_k, H = m->cfg.hidden_size;

    double t = state_clock(s);
    /* p = softmax(router(x)); top-k; weights renormalised to sum to 1 */
    float *p = s->router;
    state_matvec(s, p, &w->router, xn);
    float maxl = -INFINITY, sum = 0.0f;
    for (int e = 0; e < E; e++) maxl = p[e] > maxl ? p[e] : maxl;
    for (int e = 0; e < E; e++) sum += (p[e] = expf(p[e] - maxl));
    for (int e = 0; e < E; e++) p[e] /= sum;
    top_k(p, E, K, s->topk_id);
    float wsum = 0.0f;
    for (int j = 0; j < K; j++) wsum += p[s->topk_id[j]];
    for (int j = 0; j < K; j++) s->topk_w[j] = p[s->topk_id[j]] / wsum;

    state_tick(s, layer, T_ROUTING, &t);
    /* start reading the routed experts, then compute the shared expert while they arrive */
    if (experts_begin(m->experts, layer, s->topk_id, K, err, errlen)) return -1;
    state_tick(s, layer, T_IO_WAIT, &t);
    float sg;
    state_matvec(s, &sg, &w->sh_expert_gate, xn);
    swiglu_mlp(s, &w->sh_gate, &w->sh_up, &w->sh_down, xn, s->eo);
    state_tick(s, layer, T_EXPERTS, &t);

    /* routed experts, each computed as soon as its weights are in memory, into its own row */
    int j, rc;
    expert_view v;
    while ((rc = experts_next(m->experts, &j, &v, err, errlen)) == 1) {
        state_tick(s, layer, T_IO_WAIT, &t);
        swiglu_mlp(s, &v.gate, &v.up, &v.down, xn, s->expert_out + (size_t)j * H);
        state_tick(s, layer, T_EXPERTS, &t);
    }
    experts_end(m->experts);
    state_tick(s, layer, T_IO_WAIT, &t);
    if (rc) return rc;

    /* out = sum_j w_j * expert_j(x) + sigmoid(shared_expert_gate(x)) * shared(x), summed in ascending
     * expert order whatever order the reads completed in: results do not depend on I/O timing */
    memset(out, 0, sizeof(float) * (size_t)H);
    for (int e = 0, done = 0; done < K && e < E; e++)
        for (int jj = 0; jj < K; jj++)
            if (s->topk_id[jj] == e) {
                const float *y = s->expert_out + (size_t)jj * H;
                for (int i = 0; i < H; i++) out[i] += s->topk_w[jj] * y[i];
                done++;
            }
    float g = sigmoid(sg);
    for (int i = 0; i < H; i++) out[i] += g * s->eo[i];
    state_tick(s, layer, T_EXPERTS, &t);
    return 0;
}
