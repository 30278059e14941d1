/* Gated attention (every full-attention layer): the projections for a chunk of positions at once, then
 * the query heads of each kv head together against the KV cache, in parallel over kv heads and positions
 * (or query heads, for a single position). */
#include <immintrin.h>
#include <math.h>

#include "state.h"

/* inv_freq[i] = theta^(-2i / rope_dim), i < rope_dim / 2: once per call, not per head and position. */
static void rope_freqs(float *inv_freq, int rope_dim, double theta) {
    for (int i = 0; i < rope_dim / 2; i++) inv_freq[i] = (float)(1.0 / pow(theta, (double)(2 * i) / rope_dim));
}

/* Rotate-half RoPE on the first rope_dim values of a head: pairs (i, i + rope_dim/2),
 * angle = pos * inv_freq[i]. */
static void rope(float *v, int rope_dim, int pos, const float *inv_freq) {
    int half = rope_dim / 2;
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i];
        float cs = cosf(angle), sn = sinf(angle);
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cs - x2 * sn;
        v[i + half] = x2 * cs + x1 * sn;
    }
}

AI float hsum(v8 acc) {
    float d = 0.0f;
    for (int l = 0; l < 8; l++) d += acc[l];
    return d;
}

AI float dot(const float *a, const float *b, int n) {
    int i = 0;
    float d = 0.0f;
    if (n % 8 == 0) {
        v8 acc = {0};
        for (; i < n; i += 8) acc += *(const v8 *)(a + i) * *(const v8 *)(b + i);
        d = hsum(acc);
    }
    for (; i < n; i++) d += a[i] * b[i];
    return d;
}

/* sc[p] = scale * q . k_p for p < n, key p at k + p * ks. Four keys at a time: with one key at a time
 * each dot product was a chain of dependent multiply-adds (latency-bound); four are independent. Each
 * key's sum is formed in the same order as dot(). (The generic path; qk_scores_fma below is the AVX2 one.) */
AI void qk_scores(const float *q, const float *k, size_t ks, int n, int hd, float scale, float *sc) {
    int p = 0;
    if (hd % 8 == 0)
        for (; p + 4 <= n; p += 4) {
            const float *k0 = k + (size_t)p * ks, *k1 = k0 + ks, *k2 = k1 + ks, *k3 = k2 + ks;
            v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int i = 0; i < hd; i += 8) {
                v8 qv = *(const v8 *)(q + i);
                a0 += qv * *(const v8 *)(k0 + i);
                a1 += qv * *(const v8 *)(k1 + i);
                a2 += qv * *(const v8 *)(k2 + i);
                a3 += qv * *(const v8 *)(k3 + i);
            }
            sc[p] = hsum(a0) * scale, sc[p + 1] = hsum(a1) * scale;
            sc[p + 2] = hsum(a2) * scale, sc[p + 3] = hsum(a3) * scale;
        }
    for (; p < n; p++) sc[p] = dot(q, k + (size_t)p * ks, hd) * scale;
}

/* o += sum_p w[p] v_p for p < n, in order of p, four keys per pass over o so that o is loaded and
 * stored once per four. (The generic path; pv_accumulate_fma below is the AVX2 one.) */
AI void pv_accumulate(float *o, const float *v, size_t vs, const float *w, int n, int hd) {
    int p = 0;
    if (hd % 8 == 0)
        for (; p + 4 <= n; p += 4) {
            const float *v0 = v + (size_t)p * vs, *v1 = v0 + vs, *v2 = v1 + vs, *v3 = v2 + vs;
            float w0 = w[p], w1 = w[p + 1], w2 = w[p + 2], w3 = w[p + 3];
            for (int i = 0; i < hd; i += 8) {
                v8 acc = *(v8 *)(o + i);
                acc += w0 * *(const v8 *)(v0 + i);
                acc += w1 * *(const v8 *)(v1 + i);
                acc += w2 * *(const v8 *)(v2 + i);
                acc += w3 * *(const v8 *)(v3 + i);
                *(v8 *)(o + i) = acc;
            }
        }
    for (; p < n; p++) {
        const float *vp = v + (size_t)p * vs;
        for (int i = 0; i < hd; i++) o[i] += w[p] * vp[i];
    }
}

/* The AVX2 + FMA versions: fused multiply-adds (one rounding instead of two, and one instruction of
 * latency 4 instead of a multiply and a dependent add), eight keys at a time, and the eight sums of a
 * block reduced together by horizontal adds instead of one scalar chain per key. hd % 8 == 0 (checked
 * by the caller). */
__attribute__((target("avx2,fma"))) static void qk_scores_fma(const float *q, const float *k, size_t ks, int n,
                                                              int hd, float scale, float *sc) {
    int p = 0;
    const __m256 vs = _mm256_set1_ps(scale);
    for (; p + 8 <= n; p += 8) {
        const float *kp = k + (size_t)p * ks;
        __m256 a[8];
        for (int u = 0; u < 8; u++) a[u] = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
#pragma GCC unroll 8
            for (int u = 0; u < 8; u++) a[u] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kp + (size_t)u * ks + i), a[u]);
        }
        /* lane sums: hadd pairs twice, then the two 128-bit halves */
        __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
        __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
        __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
        __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
        _mm256_storeu_ps(sc + p, _mm256_mul_ps(r, vs));
    }
    for (; p < n; p++) {
        const float *kp = k + (size_t)p * ks;
        __m256 a = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kp + i), a);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        h = _mm_hadd_ps(h, h);
        h = _mm_hadd_ps(h, h);
        sc[p] = _mm_cvtss_f32(h) * scale;
    }
}

__attribute__((target("avx2,fma"))) static void pv_accumulate_fma(float *o, const float *v, size_t vs,
                                                                  const float *w, int n, int hd) {
    int p = 0;
    for (; p + 8 <= n; p += 8) {
        const float *vp = v + (size_t)p * vs;
        __m256 wv[8];
        for (int u = 0; u < 8; u++) wv[u] = _mm256_set1_ps(w[p + u]);
        for (int i = 0; i < hd; i += 8) {
            __m256 acc = _mm256_loadu_ps(o + i);
#pragma GCC unroll 8
            for (int u = 0; u < 8; u++) acc = _mm256_fmadd_ps(wv[u], _mm256_loadu_ps(vp + (size_t)u * vs + i), acc);
            _mm256_storeu_ps(o + i, acc);
        }
    }
    for (; p < n; p++) {
        const float *vp = v + (size_t)p * vs;
        __m256 wv = _mm256_set1_ps(w[p]);
        for (int i = 0; i < hd; i += 8)
            _mm256_storeu_ps(o + i, _mm256_fmadd_ps(wv, _mm256_loadu_ps(vp + i), _mm256_loadu_ps(o + i)));
    }
}

/* Keys (or values) per block: 16 KB at head_dim 256, kept in L1 while every query head of the kv group
 * uses them, so the cache is read from memory once per kv head instead of once per query head. */
#define KEY_BLOCK 16

/* The work is split into units of (kv head, a subset of its query heads, every ntb-th position from
 * tb): a prompt chunk splits by positions (interleaved, so the causal lengths balance), a single
 * position by query heads. */
typedef struct {
    state *s;
    int layer, T, tasks, units, nsub, ntb;
    const layer_weights *w;
    const float *inv_freq; /* RoPE frequencies (rope_freqs) */
} attn_job;

/* Query heads [h0, h1) of kv head kvh, positions tb, tb + ntb, ... < T: q norm and RoPE, causal
 * softmax(q k^T / sqrt(hd)) v over positions 0..pos, times sigmoid(gate). Each score and each output
 * sum is formed in the same order whatever the split into units and however many heads share a key
 * block, so the results do not depend on the thread count. Scratch: the task's rows of s->q, s->scores. */
AI void attn_unit(const attn_job *j, int task, int kvh, int h0, int h1, int tb, const int fast) {
    state *s = j->s;
    const model_config *c = &s->m->cfg;
    int nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim, group = nh / nkv;
    size_t kv_dim = (size_t)nkv * hd, qg_dim = (size_t)nh * hd * 2, ctx = (size_t)s->max_ctx;
    const float *k_cache = s->k_cache[j->layer] + (size_t)kvh * hd, *v_cache = s->v_cache[j->layer] + (size_t)kvh * hd;
    float *qs = s->q + (size_t)task * group * hd, *scores = s->scores + (size_t)task * group * ctx;
    float scale = 1.0f / sqrtf((float)hd);
    for (int t = tb; t < j->T; t += j->ntb) {
        int pos = s->pos + t, n = pos + 1;
        const float *qg = s->qg + (size_t)t * qg_dim;
        for (int h = h0; h < h1; h++) {
            float *q = qs + (size_t)(h - h0) * hd;
            rmsnorm(q, qg + (size_t)h * 2 * hd, j->w->q_norm, hd, c->norm_eps);
            rope(q, c->rope_dim, pos, j->inv_freq);
        }
        for (int p0 = 0; p0 < n; p0 += KEY_BLOCK) {
            int nb = n - p0 < KEY_BLOCK ? n - p0 : KEY_BLOCK;
            for (int h = h0; h < h1; h++) {
                const float *q = qs + (size_t)(h - h0) * hd, *kb = k_cache + (size_t)p0 * kv_dim;
                float *sc = scores + (size_t)(h - h0) * ctx + p0;
                if (fast) qk_scores_fma(q, kb, kv_dim, nb, hd, scale, sc);
                else qk_scores(q, kb, kv_dim, nb, hd, scale, sc);
            }
        }
        for (int h = h0; h < h1; h++) {
            float *sc = scores + (size_t)(h - h0) * ctx, maxs = -INFINITY;
            for (int p = 0; p < n; p++) maxs = sc[p] > maxs ? sc[p] : maxs;
            float sum = kernel_exp_sum(sc, n, maxs);
            for (int p = 0; p < n; p++) sc[p] /= sum; /* the weights, as pr = scores / sum before */
            float *o = s->att + (size_t)t * nh * hd + (size_t)h * hd;
            for (int i = 0; i < hd; i++) o[i] = 0.0f;
        }
        float *att = s->att + (size_t)t * nh * hd;
        for (int p0 = 0; p0 < n; p0 += KEY_BLOCK) {
            int nb = n - p0 < KEY_BLOCK ? n - p0 : KEY_BLOCK;
            for (int h = h0; h < h1; h++) {
                float *o = att + (size_t)h * hd;
                const float *vb = v_cache + (size_t)p0 * kv_dim, *wt = scores + (size_t)(h - h0) * ctx + p0;
                if (fast) pv_accumulate_fma(o, vb, kv_dim, wt, nb, hd);
                else pv_accumulate(o, vb, kv_dim, wt, nb, hd);
            }
        }
        for (int h = h0; h < h1; h++) { /* attn * sigmoid(gate) */
            float *o = att + (size_t)h * hd;
            const float *gate = qg + (size_t)h * 2 * hd + hd;
            for (int i = 0; i < hd; i++) o[i] *= sigmoid(gate[i]);
        }
    }
}

/* Task i: units i, i + tasks, ...; fast: the AVX2 + FMA products. */
AI void attn_heads(const attn_job *j, int task, const int fast) {
    const model_config *c = &j->s->m->cfg;
    int nkv = c->n_kv_heads, group = c->n_heads / nkv, hs = (group + j->nsub - 1) / j->nsub;
    for (int u = task; u < j->units; u += j->tasks) {
        int kvh = u % nkv, sub = u / nkv % j->nsub, tb = u / nkv / j->nsub;
        int h0 = kvh * group + sub * hs, h1 = h0 + hs < (kvh + 1) * group ? h0 + hs : (kvh + 1) * group;
        if (h0 < h1) attn_unit(j, task, kvh, h0, h1, tb, fast);
    }
}

static void attn_task_generic(void *ctx, int task, int n) {
    (void)n;
    attn_heads(ctx, task, 0);
}

/* The same, compiled for AVX2 + FMA (taken when the kernels run at that level or above), with the FMA
 * products where head_dim is a multiple of 8. */
__attribute__((target("avx2,fma"))) static void attn_task_avx2(void *ctx, int task, int n) {
    (void)n;
    const attn_job *j = ctx;
    if (j->s->m->cfg.head_dim % 8 == 0) attn_heads(j, task, 1);
    else attn_heads(j, task, 0);
}

void attention_forward(state *s, int layer, const layer_weights *w, const float *xn, int T, float *out) {
    const model_config *c = &s->m->cfg;
    int nkv = c->n_kv_heads, hd = c->head_dim, kv_dim = nkv * hd;
    float *k_cache = s->k_cache[layer], *v_cache = s->v_cache[layer];

    /* q, gate = q_proj(x).view(heads, 2 * head_dim).chunk(2); k = k_proj(x); v = v_proj(x), for all T
     * positions at once; keys and values land in the cache rows of their positions */
    state_product qkv[] = {{s->qg, &w->q_proj},
                           {k_cache + (size_t)s->pos * kv_dim, &w->k_proj},
                           {v_cache + (size_t)s->pos * kv_dim, &w->v_proj}};
    state_matmuls(s, xn, T, qkv, 3);
    /* per-head k_norm (1 + w), then RoPE on the leading rope_dim values */
    float inv_freq[CONFIG_MAX_ROPE_DIM / 2];
    rope_freqs(inv_freq, c->rope_dim, c->rope_theta);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nkv; h++) {
            float *k = k_cache + (size_t)(s->pos + t) * kv_dim + (size_t)h * hd;
            rmsnorm(k, k, w->k_norm, hd, c->norm_eps);
            rope(k, c->rope_dim, s->pos + t, inv_freq);
        }
    /* units in parallel, at most one task per thread (each thread's scratch is its task's) */
    int threads = pool_size(s->m->pool), group = c->n_heads / nkv, nsub = 1, ntb = 1;
    if (nkv < threads) {
        int need = (threads + nkv - 1) / nkv;
        if (T >= 2 * need) ntb = need;
        else nsub = need < group ? need : group;
    }
    int units = nkv * nsub * ntb;
    attn_job j = {s, layer, T, units < threads ? units : threads, units, nsub, ntb, w, inv_freq};
    pool_run(s->m->pool, kernel_level_active() >= KERNEL_AVX2 ? attn_task_avx2 : attn_task_generic, &j, j.tasks);
    state_matmul(s, out, &w->o_proj, s->att, T); /* o_proj */
}
