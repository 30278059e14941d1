/* Sampler tests: every test checks what the sampler does to the drawn tokens (effects), using
 * constructed logits and fixed seeds so that each run is the same. */
#include <math.h>
#include <stdint.h>

#include "sampler.h"
#include "test.h"

/* Test-side generator for logits (independent of the sampler's PRNG). */
static uint64_t lcg_state;
static float lcg_float(void) { /* uniform in [-4, 4) */
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg_state >> 40) * (1.0 / (1 << 24))) * 8.0f - 4.0f;
}

static sampler *make(int vocab, sampler_params p) {
    sampler *s = NULL;
    sampler_status st = sampler_create(&s, vocab, &p);
    CHECK(st == SAMPLER_OK, "sampler_create: %s", sampler_status_string(st));
    return s;
}

static int ref_argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* rank of token t: how many tokens come before it (higher logit, or equal logit and lower id) */
static int ref_rank(const float *x, int n, int t) {
    int r = 0;
    for (int i = 0; i < n; i++) r += x[i] > x[t] || (x[i] == x[t] && i < t);
    return r;
}

static void test_greedy_picks_argmax(void) {
    enum { V = 1000 };
    static float logits[V];
    sampler_params p = sampler_params_default();
    p.temperature = 0;
    sampler *s = make(V, p);
    lcg_state = 1;
    for (int trial = 0; trial < 50; trial++) {
        for (int i = 0; i < V; i++) logits[i] = lcg_float();
        int want = ref_argmax(logits, V);
        for (int rep = 0; rep < 3; rep++) {
            int got = sampler_sample(s, logits);
            CHECK(got == want, "trial %d: greedy %d, argmax %d", trial, got, want);
        }
    }
    /* ties: the lowest id wins */
    for (int i = 0; i < V; i++) logits[i] = 0;
    logits[700] = logits[300] = 5;
    CHECK(sampler_sample(s, logits) == 300, "tie not broken to the lower id");
    sampler_free(s);
}

static void test_top_k1_equals_greedy(void) {
    enum { V = 500 };
    static float logits[V];
    sampler_params p = sampler_params_default();
    p.temperature = 1.5f;
    p.top_k = 1;
    p.seed = 7;
    sampler *s = make(V, p);
    lcg_state = 2;
    for (int trial = 0; trial < 200; trial++) {
        for (int i = 0; i < V; i++) logits[i] = lcg_float();
        int got = sampler_sample(s, logits), want = ref_argmax(logits, V);
        CHECK(got == want, "trial %d: top-k 1 drew %d, argmax is %d", trial, got, want);
    }
    sampler_free(s);
}

static void test_top_k_stays_in_k_best(void) {
    enum { V = 1000, K = 5, DRAWS = 5000 };
    static float logits[V];
    sampler_params p = sampler_params_default();
    p.temperature = 3.0f; /* flat enough that all K are drawn often */
    p.top_k = K;
    p.seed = 11;
    sampler *s = make(V, p);
    lcg_state = 3;
    for (int i = 0; i < V; i++) logits[i] = lcg_float();
    int hits[K] = {0}, outside = 0;
    for (int d = 0; d < DRAWS; d++) {
        int t = sampler_sample(s, logits), r = ref_rank(logits, V, t);
        if (r < K)
            hits[r]++;
        else
            outside++;
    }
    CHECK(outside == 0, "%d of %d draws outside the %d best", outside, DRAWS, K);
    for (int r = 0; r < K; r++) CHECK(hits[r] > 0, "rank %d never drawn", r);
    /* the kept set reported for the last draw is exactly the K best */
    const int *ids;
    int n = sampler_kept(s, &ids, NULL);
    CHECK(n == K, "kept %d tokens, want %d", n, K);
    for (int i = 0; i < n; i++) CHECK(ref_rank(logits, V, ids[i]) < K, "kept token %d is not among the best", ids[i]);
    sampler_free(s);

    /* a large k, and ties (equal logits: the lower ids are the better ones) */
    p.top_k = 700;
    s = make(V, p);
    sampler_sample(s, logits);
    n = sampler_kept(s, &ids, NULL);
    CHECK(n == 700, "kept %d tokens, want 700", n);
    for (int i = 0; i < n; i++) CHECK(ref_rank(logits, V, ids[i]) < 700, "kept token %d is not among the best", ids[i]);
    for (int i = 0; i < V; i++) logits[i] = 1.0f;
    p.top_k = 3;
    sampler_free(s);
    s = make(V, p);
    uint32_t mask = 0;
    for (int d = 0; d < 1000; d++) {
        int t = sampler_sample(s, logits);
        mask |= t < 3 ? 1u << t : 1u << 31;
    }
    CHECK(mask == 0x7, "equal logits, top-k 3: drew set 0x%x, want ids 0, 1, 2", mask);
    sampler_free(s);
}

/* Draws many tokens and returns a bit mask of the ids that appeared (vocab <= 32). */
static uint32_t drawn_set(sampler *s, const float *logits, int draws, int *counts) {
    uint32_t mask = 0;
    for (int d = 0; d < draws; d++) {
        int t = sampler_sample(s, logits);
        mask |= 1u << t;
        if (counts) counts[t]++;
    }
    return mask;
}

static void log_probs(float *logits, const double *probs, int n) {
    for (int i = 0; i < n; i++) logits[i] = (float)log(probs[i]);
}

static void test_top_p_smallest_prefix(void) {
    const double probs[5] = {0.35, 0.25, 0.20, 0.12, 0.08};
    float logits[5];
    log_probs(logits, probs, 5);
    /* top_p -> expected prefix: cumulative masses are 0.35, 0.60, 0.80, 0.92, 1.0 */
    const struct {
        float top_p;
        uint32_t want;
    } cases[] = {{0.30f, 0x1}, {0.55f, 0x3}, {0.595f, 0x3}, {0.605f, 0x7}, {0.75f, 0x7}, {0.85f, 0xf}, {0.95f, 0x1f}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sampler_params p = sampler_params_default();
        p.top_p = cases[c].top_p;
        p.seed = 5;
        sampler *s = make(5, p);
        int counts[5] = {0};
        uint32_t got = drawn_set(s, logits, 4000, counts);
        CHECK(got == cases[c].want, "top_p %.3f: drew set 0x%x, want 0x%x", cases[c].top_p, got, cases[c].want);
        sampler_free(s);
    }
    /* with top-p 0.55 the two kept tokens are drawn 0.35:0.25 (renormalised 0.583); 4000 draws
     * give a standard deviation of 0.0078, and 0.04 is five of them */
    sampler_params p = sampler_params_default();
    p.top_p = 0.55f;
    p.seed = 6;
    sampler *s = make(5, p);
    int counts[5] = {0};
    drawn_set(s, logits, 4000, counts);
    double f0 = counts[0] / 4000.0;
    CHECK(fabs(f0 - 0.35 / 0.60) < 0.04, "frequency of token 0 %.3f, want %.3f", f0, 0.35 / 0.60);
    sampler_free(s);
}

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* A large, nearly flat vocabulary, where the nucleus has thousands of tokens (the partial sort
 * must grow past its first 256): the kept set must be exactly the reference prefix. */
static void test_top_p_large_vocab(void) {
    enum { V = 5000 };
    static float logits[V];
    static double sorted[V];
    lcg_state = 4;
    for (int i = 0; i < V; i++) logits[i] = lcg_float() * 0.25f;
    const float top_p = 0.9f;
    double total = 0;
    for (int i = 0; i < V; i++) total += exp(logits[i]);
    for (int i = 0; i < V; i++) sorted[i] = exp(logits[i]) / total;
    qsort(sorted, V, sizeof sorted[0], cmp_desc);
    int want = 0;
    double cum = 0;
    while (cum < top_p) cum += sorted[want++];
    sampler_params p = sampler_params_default();
    p.top_p = top_p;
    sampler *s = make(V, p);
    sampler_sample(s, logits);
    const int *ids;
    int n = sampler_kept(s, &ids, NULL);
    CHECK(n == want, "kept %d tokens, reference prefix has %d", n, want);
    for (int i = 0; i < n; i++) CHECK(ref_rank(logits, V, ids[i]) < want, "kept token %d outside the prefix", ids[i]);
    CHECK(want > 1000, "the case should need a long prefix (%d)", want);
    sampler_free(s);
}

static void test_min_p_excludes_below_threshold(void) {
    const double probs[5] = {0.50, 0.30, 0.10, 0.06, 0.04};
    float logits[5];
    log_probs(logits, probs, 5);
    /* min_p 0.15 -> threshold 0.075: keeps 0.5, 0.3, 0.1; min_p 0.5 -> 0.25: keeps 0.5, 0.3 */
    const struct {
        float min_p;
        uint32_t want;
    } cases[] = {{0.15f, 0x7}, {0.5f, 0x3}, {0.7f, 0x1}, {0.05f, 0x1f}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sampler_params p = sampler_params_default();
        p.min_p = cases[c].min_p;
        p.seed = 9;
        sampler *s = make(5, p);
        uint32_t got = drawn_set(s, logits, 4000, NULL);
        CHECK(got == cases[c].want, "min_p %.2f: drew set 0x%x, want 0x%x", cases[c].min_p, got, cases[c].want);
        sampler_free(s);
    }
}

/* Order of the filters, seen in their effect: top-p measures mass after top-k renormalised, and
 * after the temperature. */
static void test_filter_order(void) {
    const double probs[4] = {0.4, 0.3, 0.2, 0.1};
    float logits[4];
    log_probs(logits, probs, 4);
    sampler_params p = sampler_params_default();
    p.top_p = 0.5f;
    p.seed = 3;
    sampler *s = make(4, p);
    CHECK(drawn_set(s, logits, 2000, NULL) == 0x3, "top-p 0.5 alone keeps 0.4 + 0.3");
    sampler_free(s);
    p.top_k = 2; /* renormalised: 0.571, 0.429 -> top-p 0.5 keeps the first only */
    s = make(4, p);
    CHECK(drawn_set(s, logits, 2000, NULL) == 0x1, "top-k 2 then top-p 0.5 keeps one token");
    sampler_free(s);

    const float l3[3] = {2, 1, 0}; /* T=1: 0.665 0.245 0.090; T=5: 0.402 0.329 0.269 */
    p = sampler_params_default();
    p.top_p = 0.6f;
    s = make(3, p);
    CHECK(drawn_set(s, l3, 2000, NULL) == 0x1, "T=1, top-p 0.6 keeps one token");
    sampler_free(s);
    p.temperature = 5;
    s = make(3, p);
    CHECK(drawn_set(s, l3, 2000, NULL) == 0x3, "T=5, top-p 0.6 keeps two tokens");
    sampler_free(s);
}

/* Pearson chi-square of observed counts against probabilities. */
static double chi_square(const int *counts, const double *probs, int n, int draws) {
    double x2 = 0;
    for (int i = 0; i < n; i++) {
        double e = probs[i] * draws;
        x2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    return x2;
}

static void softmax_t(double *out, const float *logits, int n, double t) {
    double m = logits[0], sum = 0;
    for (int i = 1; i < n; i++) m = fmax(m, logits[i]);
    for (int i = 0; i < n; i++) sum += out[i] = exp((logits[i] - m) / t);
    for (int i = 0; i < n; i++) out[i] /= sum;
}

/* Temperature: the empirical frequencies over N draws must fit softmax(logits / T).
 * With 6 categories the Pearson statistic of a correct sampler follows chi-square with 5 degrees
 * of freedom; P(X > 20.52) = 0.001, so a correct sampler would fail this for 1 seed in 1000 (the
 * seed is fixed, so the test is deterministic). The same counts are also checked against the
 * neighbouring temperatures, which the test must reject: that shows it has the power to notice
 * a temperature applied wrongly (ignored, inverted, or squared). Every expected count is > 400. */
static void test_temperature_matches_softmax(void) {
    enum { N = 6, DRAWS = 20000 };
    const float logits[N] = {2.0f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f};
    const double crit = 20.52; /* chi-square, 5 dof, upper 0.001 */
    const double temps[] = {0.7, 1.0, 2.0};
    for (size_t k = 0; k < sizeof temps / sizeof temps[0]; k++) {
        double t = temps[k];
        sampler_params p = sampler_params_default();
        p.temperature = (float)t;
        p.seed = 1234 + k;
        sampler *s = make(N, p);
        int counts[N] = {0};
        for (int d = 0; d < DRAWS; d++) counts[sampler_sample(s, logits)]++;
        double probs[N];
        softmax_t(probs, logits, N, t);
        double x2 = chi_square(counts, probs, N, DRAWS);
        CHECK(x2 < crit, "T=%.1f: chi-square %.2f >= %.2f", t, x2, crit);
        const double wrong[] = {1.0, 1 / t, t * t, t * 1.25, t * 0.8};
        for (size_t w = 0; w < sizeof wrong / sizeof wrong[0]; w++) {
            if (fabs(wrong[w] - t) < 1e-9) continue;
            softmax_t(probs, logits, N, wrong[w]);
            double xw = chi_square(counts, probs, N, DRAWS);
            CHECK(xw > crit, "T=%.1f: counts also fit T=%.3f (chi-square %.2f): the test has no power", t,
                  wrong[w], xw);
        }
        sampler_free(s);
    }
}

static int greedy_after(sampler_params p, const float *logits, int n, const int *seen, int n_seen) {
    p.temperature = 0;
    sampler *s = make(n, p);
    for (int i = 0; i < n_seen; i++) sampler_accept(s, seen[i]);
    int t = sampler_sample(s, logits);
    sampler_free(s);
    return t;
}

static void test_penalties_change_choice(void) {
    sampler_params p = sampler_params_default();
    const int seen0[] = {0}, seen000[] = {0, 0, 0};

    /* repetition, positive logit divided: 2.0 / 1.1 = 1.82 < 1.9 */
    const float pos[3] = {2.0f, 1.9f, 0.0f};
    CHECK(greedy_after(p, pos, 3, seen0, 1) == 0, "no penalty: 0");
    p.repeat_penalty = 1.1f;
    CHECK(greedy_after(p, pos, 3, seen0, 1) == 1, "repeat penalty on a positive logit");
    CHECK(greedy_after(p, pos, 3, seen000, 3) == 1, "repeat penalty does not depend on the count");
    /* negative logit multiplied: -1.0 * 1.1 = -1.1 < -1.05 (dividing would raise it to -0.91) */
    const float neg[3] = {-1.0f, -1.05f, -3.0f};
    CHECK(greedy_after(p, neg, 3, seen0, 1) == 1, "repeat penalty on a negative logit");
    p.repeat_penalty = 1.0f;

    /* presence: once is enough, 1.0 - 0.3 = 0.7 < 0.8 */
    const float pres[3] = {1.0f, 0.8f, 0.0f};
    p.presence_penalty = 0.3f;
    CHECK(greedy_after(p, pres, 3, seen0, 1) == 1, "presence penalty");
    p.presence_penalty = 0;
    /* frequency: scales with the count, 1.0 - 0.1 = 0.9 (keeps 0), 1.0 - 3 * 0.1 = 0.7 (loses) */
    p.frequency_penalty = 0.1f;
    CHECK(greedy_after(p, pres, 3, seen0, 1) == 0, "frequency penalty, count 1");
    CHECK(greedy_after(p, pres, 3, seen000, 3) == 1, "frequency penalty, count 3");
    /* negative penalties encourage repetition */
    const float enc[3] = {0.5f, 1.0f, 0.0f};
    p.frequency_penalty = 0;
    p.presence_penalty = -0.6f;
    CHECK(greedy_after(p, enc, 3, seen0, 1) == 0, "negative presence penalty");
    p.presence_penalty = 0;

    /* window: with penalty_last_n = 2, token 0 leaves the window after two other tokens */
    p.repeat_penalty = 1.1f;
    p.penalty_last_n = 2;
    const int seen_0_2[] = {0, 2}, seen_0_2_2[] = {0, 2, 2};
    CHECK(greedy_after(p, pos, 3, seen_0_2, 2) == 1, "token 0 in the window");
    CHECK(greedy_after(p, pos, 3, seen_0_2_2, 3) == 0, "token 0 out of the window");

    /* reset forgets the history */
    p = sampler_params_default();
    p.temperature = 0;
    p.repeat_penalty = 1.1f;
    sampler *s = make(3, p);
    sampler_accept(s, 0);
    CHECK(sampler_sample(s, pos) == 1, "penalised before reset");
    sampler_reset(s);
    CHECK(sampler_sample(s, pos) == 0, "not penalised after reset");
    sampler_free(s);
}

static void draw_sequence(int *out, int n, uint64_t seed, const float *logits, int vocab) {
    sampler_params p = sampler_params_default();
    p.seed = seed;
    p.top_k = 50;
    p.top_p = 0.95f;
    sampler *s = make(vocab, p);
    for (int i = 0; i < n; i++) out[i] = sampler_sample(s, logits);
    sampler_free(s);
}

static void test_seed_reproducible(void) {
    enum { V = 300, N = 200 };
    static float logits[V];
    lcg_state = 5;
    for (int i = 0; i < V; i++) logits[i] = lcg_float() * 0.5f;
    int a[N], b[N], c[N];
    draw_sequence(a, N, 42, logits, V);
    draw_sequence(b, N, 42, logits, V);
    draw_sequence(c, N, 43, logits, V);
    CHECK(!memcmp(a, b, sizeof a), "same seed gave different sequences");
    int differ = 0;
    for (int i = 0; i < N; i++) differ += a[i] != c[i];
    CHECK(differ > N / 2, "seeds 42 and 43 agree on %d of %d draws", N - differ, N);

    /* set_seed restarts the stream */
    sampler_params p = sampler_params_default();
    p.seed = 42;
    p.top_k = 50;
    p.top_p = 0.95f;
    sampler *s = make(V, p);
    for (int i = 0; i < 17; i++) sampler_sample(s, logits);
    sampler_set_seed(s, 42);
    for (int i = 0; i < N; i++) b[i] = sampler_sample(s, logits);
    CHECK(!memcmp(a, b, sizeof a), "set_seed did not restart the stream");
    sampler_free(s);
}

static void test_bad_params_rejected(void) {
    sampler *s = (sampler *)1;
    sampler_params p = sampler_params_default();
    CHECK(sampler_create(&s, 0, &p) == SAMPLER_ERR_ARG && !s, "vocab 0 accepted");
    p.repeat_penalty = 0;
    CHECK(sampler_create(&s, 10, &p) == SAMPLER_ERR_ARG, "repeat penalty 0 accepted");
    p = sampler_params_default();
    p.temperature = NAN;
    CHECK(sampler_create(&s, 10, &p) == SAMPLER_ERR_ARG, "NaN temperature accepted");
    /* NaN logits never win */
    p = sampler_params_default();
    s = make(3, p);
    const float l[3] = {NAN, 1.0f, NAN};
    for (int i = 0; i < 100; i++) CHECK(sampler_sample(s, l) == 1, "drew a NaN logit");
    sampler_free(s);
}

int main(void) {
    RUN_TEST(test_greedy_picks_argmax);
    RUN_TEST(test_top_k1_equals_greedy);
    RUN_TEST(test_top_k_stays_in_k_best);
    RUN_TEST(test_top_p_smallest_prefix);
    RUN_TEST(test_top_p_large_vocab);
    RUN_TEST(test_min_p_excludes_below_threshold);
    RUN_TEST(test_filter_order);
    RUN_TEST(test_temperature_matches_softmax);
    RUN_TEST(test_penalties_change_choice);
    RUN_TEST(test_seed_reproducible);
    RUN_TEST(test_bad_params_rejected);
    TEST_EXIT();
}
