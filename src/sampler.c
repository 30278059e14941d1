/* Token sampler; the order of operations is documented in sampler.h. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One candidate token: v is its (penalised) logit, w its unnormalised probability
 * exp((v - v_max) / temperature). */
typedef struct {
    float v;
    float w;
    int id;
} cand;

struct sampler {
    sampler_params p;
    int vocab;
    uint64_t rng[4]; /* xoshiro256** state */

    float *work; /* [vocab] logits after the penalties */
    cand *cands; /* [vocab] */
    int *kept_id;  /* [vocab] result of the last draw, for sampler_kept */
    float *kept_p; /* [vocab] */
    int n_kept;

    /* Penalty bookkeeping: how often each token occurs among the accepted tokens in the window,
     * and the list of distinct tokens with a non-zero count, so that a step costs O(distinct). */
    int *count;       /* [vocab] */
    int *present;     /* [vocab] distinct tokens with count > 0 */
    int *present_pos; /* [vocab] index of the token in present, or -1 */
    int n_present;
    int *ring; /* [penalty_last_n] the window, oldest at ring_head; NULL when the window is all */
    int ring_cap, ring_len, ring_head;
};

/* ---- PRNG: xoshiro256** (Blackman & Vigna), seeded through splitmix64 ---- */

static uint64_t splitmix64_next(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

void sampler_set_seed(sampler *s, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64_next(&x);
    s->p.seed = seed;
}

/* ---- candidate ordering: higher logit first, lower id first on ties (a strict total order) ---- */

static int cand_before(const cand *a, const cand *b) { return a->v > b->v || (a->v == b->v && a->id < b->id); }

static void cand_swap(cand *a, cand *b) {
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Rearranges c[0..n) so that c[0..k) hold the k best candidates (in no order); 0 < k < n.
 * Hoare quickselect with a median-of-three pivot; keys are distinct, so it terminates. */
static void cands_select(cand *c, int n, int k) {
    int lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (cand_before(&c[mid], &c[lo])) cand_swap(&c[mid], &c[lo]);
        if (cand_before(&c[hi], &c[lo])) cand_swap(&c[hi], &c[lo]);
        if (cand_before(&c[hi], &c[mid])) cand_swap(&c[hi], &c[mid]);
        cand pivot = c[mid];
        int i = lo, j = hi;
        while (i <= j) {
            while (cand_before(&c[i], &pivot)) i++;
            while (cand_before(&pivot, &c[j])) j--;
            if (i <= j) {
                cand_swap(&c[i], &c[j]);
                i++;
                j--;
            }
        }
        if (target <= j)
            hi = j;
        else if (target >= i)
            lo = i;
        else
            break; /* c[j+1..i-1] equals the pivot: target is in place */
    }
}

static void cands_sift_down(cand *c, int root, int n) {
    for (;;) {
        int child = 2 * root + 1;
        if (child >= n) return;
        /* max-heap under "after": the root is the candidate that sorts last */
        if (child + 1 < n && cand_before(&c[child], &c[child + 1])) child++;
        if (!cand_before(&c[root], &c[child])) return;
        cand_swap(&c[root], &c[child]);
        root = child;
    }
}

/* Writes the k best of x[0..n) to c[0..k) (in no order), 0 < k < n. One pass over x with a heap
 * of size k whose root is the worst kept candidate (cands_sift_down keeps the candidate that
 * sorts last on top); most tokens are rejected by one comparison. */
static void cands_top_k(cand *c, const float *x, int n, int k) {
    for (int i = 0; i < k; i++) c[i] = (cand){.v = x[i], .w = 0, .id = i};
    for (int i = k / 2 - 1; i >= 0; i--) cands_sift_down(c, i, k);
    for (int i = k; i < n; i++) {
        if (x[i] <= c[0].v) continue; /* ids grow: an equal logit sorts after the root */
        c[0] = (cand){.v = x[i], .w = 0, .id = i};
        cands_sift_down(c, 0, k);
    }
}

/* Sorts c[0..n) best first. Heapsort: in place, O(n log n) worst case, and (unlike glibc qsort)
 * never allocates. */
static void cands_sort(cand *c, int n) {
    for (int i = n / 2 - 1; i >= 0; i--) cands_sift_down(c, i, n);
    for (int end = n - 1; end > 0; end--) {
        cand_swap(&c[0], &c[end]);
        cands_sift_down(c, 0, end);
    }
}

/* ---- create / free ---- */

sampler_params sampler_params_default(void) {
    return (sampler_params){
        .temperature = 1.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repeat_penalty = 1.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .penalty_last_n = 0,
        .seed = 0,
    };
}

static int params_valid(const sampler_params *p) {
    return !isnan(p->temperature) && !isnan(p->top_p) && !isnan(p->min_p) && isfinite(p->repeat_penalty) &&
           p->repeat_penalty > 0 && isfinite(p->presence_penalty) && isfinite(p->frequency_penalty) &&
           p->penalty_last_n >= 0;
}

const char *sampler_status_string(sampler_status st) {
    switch (st) {
    case SAMPLER_OK: return "ok";
    case SAMPLER_ERR_ARG: return "invalid sampler parameter";
    case SAMPLER_ERR_NOMEM: return "out of memory";
    }
    return "unknown sampler status";
}

sampler_status sampler_create(sampler **out, int vocab_size, const sampler_params *params) {
    *out = NULL;
    if (vocab_size < 1 || !params || !params_valid(params)) return SAMPLER_ERR_ARG;
    sampler *s = calloc(1, sizeof *s);
    if (!s) return SAMPLER_ERR_NOMEM;
    size_t v = (size_t)vocab_size;
    s->vocab = vocab_size;
    s->p = *params;
    s->work = malloc(v * sizeof *s->work);
    s->cands = malloc(v * sizeof *s->cands);
    s->kept_id = malloc(v * sizeof *s->kept_id);
    s->kept_p = malloc(v * sizeof *s->kept_p);
    s->count = calloc(v, sizeof *s->count);
    s->present = malloc(v * sizeof *s->present);
    s->present_pos = malloc(v * sizeof *s->present_pos);
    s->ring_cap = params->penalty_last_n;
    if (s->ring_cap > 0) s->ring = malloc((size_t)s->ring_cap * sizeof *s->ring);
    if (!s->work || !s->cands || !s->kept_id || !s->kept_p || !s->count || !s->present || !s->present_pos ||
        (s->ring_cap > 0 && !s->ring)) {
        sampler_free(s);
        return SAMPLER_ERR_NOMEM;
    }
    for (size_t i = 0; i < v; i++) s->present_pos[i] = -1;
    sampler_set_seed(s, params->seed);
    *out = s;
    return SAMPLER_OK;
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->work);
    free(s->cands);
    free(s->kept_id);
    free(s->kept_p);
    free(s->count);
    free(s->present);
    free(s->present_pos);
    free(s->ring);
    free(s);
}

sampler_status sampler_set_params(sampler *s, const sampler_params *params) {
    if (!params_valid(params)) return SAMPLER_ERR_ARG;
    uint64_t seed = s->p.seed;
    int last_n = s->p.penalty_last_n;
    s->p = *params;
    s->p.penalty_last_n = last_n;
    if (params->seed != seed) sampler_set_seed(s, params->seed);
    return SAMPLER_OK;
}

const sampler_params *sampler_get_params(const sampler *s) { return &s->p; }

/* ---- penalty bookkeeping ---- */

static void count_add(sampler *s, int t) {
    if (s->count[t]++ == 0) {
        s->present_pos[t] = s->n_present;
        s->present[s->n_present++] = t;
    }
}

static void count_remove(sampler *s, int t) {
    if (--s->count[t] == 0) {
        int pos = s->present_pos[t], last = s->present[--s->n_present];
        s->present[pos] = last;
        s->present_pos[last] = pos;
        s->present_pos[t] = -1;
    }
}

void sampler_reset(sampler *s) {
    for (int i = 0; i < s->n_present; i++) {
        s->count[s->present[i]] = 0;
        s->present_pos[s->present[i]] = -1;
    }
    s->n_present = 0;
    s->ring_len = s->ring_head = 0;
    s->n_kept = 0;
}

void sampler_accept(sampler *s, int token) {
    if (token < 0 || token >= s->vocab) return;
    if (s->ring_cap > 0) {
        if (s->ring_len == s->ring_cap) {
            count_remove(s, s->ring[s->ring_head]);
            s->ring[s->ring_head] = token;
            s->ring_head = (s->ring_head + 1) % s->ring_cap;
        } else {
            s->ring[(s->ring_head + s->ring_len++) % s->ring_cap] = token;
        }
    }
    count_add(s, token);
}

static void penalties_apply(sampler *s) {
    const sampler_params *p = &s->p;
    if (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f) return;
    for (int i = 0; i < s->n_present; i++) {
        int t = s->present[i];
        float l = s->work[t];
        if (p->repeat_penalty != 1.0f) l = l > 0 ? l / p->repeat_penalty : l * p->repeat_penalty;
        l -= (float)s->count[t] * p->frequency_penalty + p->presence_penalty;
        s->work[t] = l;
    }
}

/* ---- sampling ---- */

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Keeps the smallest best-first prefix of c[0..n) whose weight reaches target; returns its length.
 * Sorts only as much as needed: the best m candidates, m doubling from 256. */
static int top_p_prefix(cand *c, int n, double target) {
    int m = n < 256 ? n : 256;
    for (;;) {
        if (m < n) cands_select(c, n, m);
        cands_sort(c, m);
        double cum = 0;
        for (int i = 0; i < m; i++) {
            cum += c[i].w;
            if (cum >= target) return i + 1;
        }
        if (m == n) return n;
        m = m > n / 2 ? n : 2 * m;
    }
}

int sampler_sample(sampler *s, const float *logits) {
    const sampler_params *p = &s->p;
    int n = s->vocab;
    for (int i = 0; i < n; i++) s->work[i] = isnan(logits[i]) ? -INFINITY : logits[i];
    penalties_apply(s);

    s->n_kept = 0;
    int best = argmax(s->work, n);
    float vmax = s->work[best];
    if (p->temperature <= 0 || p->top_k == 1 || vmax == -INFINITY) return best;

    cand *c = s->cands;
    if (p->top_k > 0 && p->top_k < n) {
        cands_top_k(c, s->work, n, p->top_k);
        n = p->top_k;
    } else {
        for (int i = 0; i < n; i++) c[i] = (cand){.v = s->work[i], .w = 0, .id = i};
    }

    /* temperature and unnormalised softmax, w = exp((v - v_max) / T); the maximum is the greedy
     * token, which top-k kept. v itself stays unscaled: dividing by T > 0 keeps the order. Written
     * so that a tiny T (1/T overflowing to inf) still gives w = 1 for the maximum, 0 elsewhere. */
    float inv_t = 1.0f / p->temperature;
    double total = 0;
    for (int i = 0; i < n; i++) {
        float d = c[i].v - vmax;
        c[i].w = d == 0 ? 1.0f : expf(d * inv_t);
        total += c[i].w;
    }

    /* Cheap filter before any sorting. min-p keeps w >= min_p (w is p / p_max). top-p can only keep
     * a token whose probability exceeds (1 - top_p) / n: the tokens from it onwards (in sorted
     * order) hold more than 1 - top_p of the mass, and none is more probable than it. The bound
     * is halved against rounding; it only drops tokens that top-p would drop anyway. Both filters
     * keep a best-first prefix, so filtering here and taking the top-p prefix afterwards (mass
     * measured against the whole distribution) gives exactly the intersection of the two. */
    float floor_w = p->min_p > 0 ? p->min_p : 0;
    if (p->top_p < 1) floor_w = fmaxf(floor_w, (float)(0.5 * (1 - (double)p->top_p) * total / n));
    floor_w = fminf(floor_w, 1.0f); /* min_p > 1 still keeps the most probable token */
    if (floor_w > 0) {
        int k = 0;
        for (int i = 0; i < n; i++)
            if (c[i].w >= floor_w) c[k++] = c[i];
        n = k; /* >= 1: the maximum has w == 1 >= floor_w */
    }
    if (p->top_p < 1) n = top_p_prefix(c, n, (double)p->top_p * total);

    double kept = 0;
    for (int i = 0; i < n; i++) kept += c[i].w;
    double r = rng_uniform(s->rng) * kept, cum = 0;
    int pick = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        cum += c[i].w;
        if (r < cum) {
            pick = c[i].id;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        s->kept_id[i] = c[i].id;
        s->kept_p[i] = (float)(c[i].w / kept);
    }
    s->n_kept = n;
    return pick;
}

int sampler_kept(const sampler *s, const int **ids, const float **probs) {
    if (ids) *ids = s->kept_id;
    if (probs) *probs = s->kept_p;
    return s->n_kept;
}
