/* The forward pass against transformers: every fixture in tests/fixtures was written by
 * tools/make_fixtures.py on the GPU machine, with logits of every prompt position and a greedy
 * continuation generated with transformers' cache.
 *
 * Tolerance: max |logit - ref| <= 1e-4 * max |ref|. Both sides compute in float32 from the same weights;
 * what differs is summation order (about 1e-7 relative per operation, growing with depth and dot length to
 * around 1e-6 here), so 1e-4 leaves two orders of magnitude of margin while any real mistake (a wrong
 * norm, a missed gate, a mis-routed expert) moves logits by 1e-2 or more. */
#include <cjson/cJSON.h>
#include <malloc.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"
#include "model.h"
#include "state.h" /* the state's buffers, for their alignment */
#include "test.h"
#include "util.h"

static const char *fixtures[] = {
    "tests/fixtures/tiny-a-f32",      "tests/fixtures/tiny-a-f32-other-experts",
    "tests/fixtures/tiny-b-bf16-vl",  "tests/fixtures/tiny-c-f16-sharded",
};

typedef struct {
    int32_t prompt[64], greedy[64];
    int n_prompt, n_greedy, vocab;
    float *logits; /* [n_prompt x vocab] */
} reference;

static int ids_from_json(const cJSON *a, int32_t *out, int cap) {
    int n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, a) if (n < cap) out[n++] = (int32_t)v->valuedouble;
    return n;
}

static int reference_load(reference *r, const char *dir) {
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/ref/ref.json", dir);
    char *text = util_read_file(path, NULL, err, sizeof err);
    CHECK(text != NULL, "%s", err);
    if (!text) return -1;
    cJSON *j = cJSON_Parse(text);
    free(text);
    r->n_prompt = ids_from_json(cJSON_GetObjectItem(j, "prompt_ids"), r->prompt, 64);
    r->n_greedy = ids_from_json(cJSON_GetObjectItem(j, "greedy_ids"), r->greedy, 64);
    r->vocab = cJSON_GetObjectItem(j, "vocab_size")->valueint;
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s/ref/logits.f32", dir);
    size_t len;
    r->logits = (float *)util_read_file(path, &len, err, sizeof err);
    CHECK(r->logits && len == sizeof(float) * (size_t)r->n_prompt * r->vocab, "%s: %zu bytes", path, len);
    return r->logits ? 0 : -1;
}

/* Logits of every prompt position, one token per call, against transformers' full-sequence forward. */
static void check_logits(const char *dir, int threads, int chunk) {
    reference r;
    if (reference_load(&r, dir)) return;
    char err[1024];
    model_opts o = {.threads = threads, .prefill_chunk = chunk};
    model *m = model_load(dir, &o, err, sizeof err);
    CHECK(m != NULL, "%s", err);
    if (!m) return;
    state *s = state_create(m, 256, err, sizeof err);
    float *logits = malloc(sizeof(float) * (size_t)r.n_prompt * r.vocab);
    CHECK(model_forward(m, s, r.prompt, r.n_prompt, logits, 1, err, sizeof err) == 0, "%s", err);
    float max_ref = 0, max_diff = 0;
    int worst = 0;
    for (size_t i = 0; i < (size_t)r.n_prompt * r.vocab; i++) {
        max_ref = fmaxf(max_ref, fabsf(r.logits[i]));
        float d = fabsf(logits[i] - r.logits[i]);
        if (!(d <= max_diff)) {
            max_diff = d;
            worst = (int)i;
        }
    }
    CHECK(max_diff <= 1e-4f * max_ref, "%s: max |logit - ref| = %g at position %d token %d (ours %g, ref %g), "
          "bound %g", dir, max_diff, worst / r.vocab, worst % r.vocab, logits[worst], r.logits[worst],
          1e-4 * max_ref);
    printf("  %s (threads %d, prompt chunk %d): max |diff| %.3g, max |ref| %.3g\n", dir, threads, chunk, max_diff,
           max_ref);
    free(logits);
    free(r.logits);
    state_free(s);
    model_free(m);
}

/* Greedy continuation with the cache: prompt at once, then one token at a time. */
static void check_greedy(const char *dir) {
    reference r;
    if (reference_load(&r, dir)) return;
    char err[1024];
    model *m = model_load(dir, NULL, err, sizeof err);
    CHECK(m != NULL, "%s", err);
    if (!m) return;
    state *s = state_create(m, 256, err, sizeof err);
    float *logits = malloc(sizeof(float) * (size_t)r.vocab);
    int ok = model_forward(m, s, r.prompt, r.n_prompt, logits, 0, err, sizeof err) == 0;
    for (int t = 0; ok && t < r.n_greedy; t++) {
        int32_t best = 0;
        for (int v = 1; v < r.vocab; v++)
            if (logits[v] > logits[best]) best = v;
        CHECK(best == r.greedy[t], "%s: greedy token %d is %d, transformers gave %d", dir, t, best, r.greedy[t]);
        if (best != r.greedy[t]) break;
        ok = model_forward(m, s, &best, 1, logits, 0, err, sizeof err) == 0;
    }
    CHECK(ok, "%s", err);
    /* the state resets to a fresh conversation */
    state_reset(s);
    float *again = malloc(sizeof(float) * (size_t)r.vocab);
    model_forward(m, s, r.prompt, r.n_prompt, again, 0, err, sizeof err);
    for (int t = 0; t < r.n_greedy; t++) model_forward(m, s, &r.greedy[t], 1, logits, 0, err, sizeof err);
    state_reset(s);
    model_forward(m, s, r.prompt, r.n_prompt, logits, 0, err, sizeof err);
    CHECK(memcmp(again, logits, sizeof(float) * (size_t)r.vocab) == 0, "%s: state_reset did not reset", dir);
    free(again);
    free(logits);
    free(r.logits);
    state_free(s);
    model_free(m);
}

static void test_logits_match_transformers(void) {
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) check_logits(fixtures[i], 1, 0);
}

static void test_logits_match_transformers_threaded(void) {
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) check_logits(fixtures[i], 2, 0);
}

/* The prompt in chunks of 1 (token by token), 7 (chunks that do not divide it) and 64 (one chunk). */
static void test_logits_any_prompt_chunk(void) {
    int chunks[] = {1, 7, 64};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        for (int c = 0; c < 3; c++) check_logits(fixtures[i], 1, chunks[c]);
}

/* Token by token on 3 threads: a mapped source's decode path takes a token's experts together, tasks split
 * across experts and shares of their rows (moe.c); the logits still match transformers. */
static void test_logits_token_by_token_threaded(void) {
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) check_logits(fixtures[i], 3, 1);
}

/* Logits of every prompt position, with the experts read one by one from disk (--io direct: each expert
 * computed as it arrives) and mapped (a batch's experts at once, in two dispatches): the same rows
 * computed the same way, so the same bits, on 1 and 3 threads, one token per call (a decoded token's
 * experts and the shared one together) and the prompt in one chunk (each expert on its rows of it). */
static void test_grouped_experts_same_bits(void) {
    reference r;
    if (reference_load(&r, fixtures[0])) return;
    for (int threads = 1; threads <= 3; threads += 2)
        for (int chunk = 1; chunk <= r.n_prompt; chunk = chunk < r.n_prompt ? r.n_prompt : chunk + 1) {
            float *out[2];
            for (int k = 0; k < 2; k++) {
                char err[1024];
                model_opts o = {.threads = threads, .prefill_chunk = chunk,
                                .io = k ? EXPERTS_IO_DIRECT : EXPERTS_IO_MMAP, .cache_bytes = (size_t)1 << 20,
                                .prefetch = MODEL_PREFETCH_OFF};
                model *m = model_load(fixtures[0], &o, err, sizeof err);
                CHECK(m != NULL, "%s", err);
                out[k] = calloc((size_t)r.n_prompt * r.vocab, sizeof(float));
                if (!m) continue;
                CHECK(m->experts->immediate == !k, "mapped source immediate, streaming not");
                state *s = state_create(m, 256, err, sizeof err);
                CHECK(model_forward(m, s, r.prompt, r.n_prompt, out[k], 1, err, sizeof err) == 0, "%s", err);
                experts_stats st;
                experts_stats_get(m->experts, &st);
                CHECK(st.read_ahead == 0, "read ahead %llu: not each expert as it arrived", (unsigned long long)st.read_ahead);
                state_free(s);
                model_free(m);
            }
            CHECK(memcmp(out[0], out[1], sizeof(float) * (size_t)r.n_prompt * r.vocab) == 0,
                  "threads %d, chunk %d: mapped and streamed logits differ", threads, chunk);
            free(out[0]);
            free(out[1]);
        }
    free(r.logits);
}

/* A prompt in one chunk, experts streamed with read-ahead (each layer's experts read while its mixer
 * runs: the prompt routes to nearly all of them) against mapped: the same bits, and every expert the
 * layers asked for was read ahead, none missed. */
static void test_readahead_same_bits(void) {
    reference r;
    if (reference_load(&r, fixtures[0])) return;
    float *out[2];
    for (int k = 0; k < 2; k++) {
        char err[1024];
        model_opts o = {.threads = 2, .io = k ? EXPERTS_IO_DIRECT : EXPERTS_IO_MMAP, .cache_bytes = (size_t)4 << 20,
                        .prefetch = k ? MODEL_PREFETCH_ON : MODEL_PREFETCH_AUTO};
        model *m = model_load(fixtures[0], &o, err, sizeof err);
        CHECK(m != NULL, "%s", err);
        out[k] = calloc((size_t)r.n_prompt * r.vocab, sizeof(float));
        if (!m) continue;
        CHECK(r.n_prompt * m->top_k >= 3 * m->cfg.n_experts, "the prompt (%d) is too short to read ahead", r.n_prompt);
        state *s = state_create(m, 256, err, sizeof err);
        CHECK(model_forward(m, s, r.prompt, r.n_prompt, out[k], 1, err, sizeof err) == 0, "%s", err);
        experts_stats st;
        experts_stats_get(m->experts, &st);
        if (k)
            CHECK(st.read_ahead > 0 && st.misses == 0 && st.hits > 0, "read ahead %llu, hits %llu, misses %llu",
                  (unsigned long long)st.read_ahead, (unsigned long long)st.hits, (unsigned long long)st.misses);
        state_free(s);
        model_free(m);
    }
    CHECK(memcmp(out[0], out[1], sizeof(float) * (size_t)r.n_prompt * r.vocab) == 0, "mapped and read-ahead logits differ");
    free(out[0]);
    free(out[1]);
    free(r.logits);
}

static void test_greedy_matches_transformers(void) {
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) check_greedy(fixtures[i]);
}

/* Experts per token below the native value still routes, renormalises and runs (the speed knob). */
/* Every SIMD level this CPU has (each forced in turn), not only the default one: a fault in one level's
 * GEMM or layer code shows here even when the kernel tests' shapes miss it. */
static void test_every_kernel_level(void) {
    kernel_level was = kernel_level_active();
    for (int l = 0; l < KERNEL_LEVEL_COUNT; l++) {
        if (!kernel_level_available((kernel_level)l)) continue;
        CHECK(kernel_level_force((kernel_level)l) == 0, "cannot force level %s", kernel_level_name((kernel_level)l));
        printf("  level %s:\n", kernel_level_name((kernel_level)l));
        for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
            check_logits(fixtures[f], 2, 0);
            check_logits(fixtures[f], 2, 7);
            check_greedy(fixtures[f]);
        }
    }
    kernel_level_force(was);
}

static void test_fewer_experts_per_token(void) {
    char err[1024];
    model_opts o = {.top_k = 2};
    model *m = model_load(fixtures[0], &o, err, sizeof err);
    CHECK(m && m->top_k == 2, "%s", err);
    if (!m) return;
    state *s = state_create(m, 64, err, sizeof err);
    int32_t ids[3] = {5, 6, 7};
    float *l = malloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    CHECK(model_forward(m, s, ids, 3, l, 0, err, sizeof err) == 0, "%s", err);
    int finite = 1;
    for (int v = 0; v < m->cfg.vocab_size; v++) finite &= isfinite(l[v]);
    CHECK(finite, "non-finite logits with 2 experts per token");
    free(l);
    state_free(s);
    model_free(m);
    o.top_k = 9; /* more than the 8 experts */
    CHECK(model_load(fixtures[0], &o, err, sizeof err) == NULL && strstr(err, "exceeds"), "%s", err);
}

/* state_bytes (what --io auto keeps free for each state) against what state_create really allocates
 * (glibc's count of bytes in use, heap and mapped), for a few chunk sizes, thread counts and contexts. */
static void test_state_bytes(void) {
    struct { int chunk, threads, ctx; } cases[] = {{0, 1, 4096}, {7, 2, 300}, {512, 2, 20000}, {64, 1, 64}, {4096, 2, 4096}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[1024];
        model_opts o = {.prefill_chunk = cases[i].chunk, .threads = cases[i].threads};
        model *m = model_load(fixtures[2], &o, err, sizeof err);
        CHECK(m, "%s", err);
        if (!m) return;
        struct mallinfo2 before = mallinfo2();
        state *s = state_create(m, cases[i].ctx, err, sizeof err);
        struct mallinfo2 after = mallinfo2();
        CHECK(s, "%s", err);
        /* every buffer on a 64-byte line (the recurrence's 512-bit rows of S; forward.c's zcalloc) */
        for (int l = 0; s && l < m->cfg.n_layers; l++) {
            const void *p[] = {s->k_cache[l], s->v_cache[l], s->conv_state[l], s->rec_state[l]};
            for (int k = 0; k < 4; k++)
                CHECK((uintptr_t)p[k] % 64 == 0, "layer %d buffer %d at %p: not 64-byte aligned", l, k, p[k]);
        }
        CHECK(!s || ((uintptr_t)s->x % 64 == 0 && (uintptr_t)s->qkv % 64 == 0 && (uintptr_t)s->o % 64 == 0),
              "scratch not 64-byte aligned");
        double used = (double)(after.uordblks + after.hblkhd) - (double)(before.uordblks + before.hblkhd);
        double want = (double)state_bytes(&m->cfg, m->top_k, m->prefill_chunk, cases[i].threads, cases[i].ctx);
        /* allocator overhead: 16 bytes a block, and mapped blocks (about 40) rounded up to pages */
        CHECK(fabs(used - want) <= 0.002 * want + 40 * 4096, "chunk %d threads %d ctx %d: allocated %.0f, state_bytes %.0f",
              cases[i].chunk, cases[i].threads, cases[i].ctx, used, want);
        state_free(s);
        model_free(m);
    }
}

/* A batch of experts holds at most two chunks' rows (state_batch_rows): with 6 of the 8 experts per token
 * and chunks of 7 positions, every expert of a chunk takes about 5 of its rows, so batches of 6 experts
 * (~31 rows) are cut at 14. The logits must still be those of one position at a time (chunks of 1, where
 * one token's 6 experts always make one batch). */
static void test_batch_row_budget(void) {
    char err[1024];
    int32_t ids[12] = {5, 17, 3, 99, 42, 7, 250, 11, 64, 8, 301, 2};
    float *l[2] = {NULL, NULL};
    int vocab = 0;
    for (int v = 0; v < 2; v++) {
        model_opts o = {.top_k = 6, .prefill_chunk = v ? 7 : 1};
        model *m = model_load(fixtures[0], &o, err, sizeof err);
        CHECK(m, "%s", err);
        if (!m) return;
        vocab = m->cfg.vocab_size;
        state *s = state_create(m, 64, err, sizeof err);
        l[v] = malloc(sizeof(float) * 12 * (size_t)vocab);
        CHECK(s && model_forward(m, s, ids, 12, l[v], 1, err, sizeof err) == 0, "%s", err);
        state_free(s);
        model_free(m);
    }
    double max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < 12 * (size_t)vocab; i++) {
        max_ref = fmax(max_ref, fabs(l[0][i]));
        max_diff = fmax(max_diff, fabs(l[0][i] - l[1][i]));
    }
    CHECK(max_diff <= 1e-4 * max_ref, "chunks of 7 vs 1 with 6 experts per token: max |diff| %g (max |logit| %g)",
          max_diff, max_ref);
    free(l[0]);
    free(l[1]);
}

/* A copied state continues exactly as the original would. */
static void test_state_copy(void) {
    char err[1024];
    model *m = model_load(fixtures[2], NULL, err, sizeof err);
    if (!m) return;
    state *a = state_create(m, 64, err, sizeof err), *b = state_create(m, 64, err, sizeof err);
    int V = m->cfg.vocab_size;
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    int32_t ids[6] = {3, 14, 15, 92, 65, 35};
    model_forward(m, a, ids, 4, la, 0, err, sizeof err);
    CHECK(state_copy(b, a, err, sizeof err) == 0 && state_pos(b) == 4, "%s", err);
    model_forward(m, a, ids + 4, 2, la, 0, err, sizeof err);
    model_forward(m, b, ids + 4, 2, lb, 0, err, sizeof err);
    CHECK(memcmp(la, lb, sizeof(float) * V) == 0, "copied state diverged");
    state *small = state_create(m, 3, err, sizeof err);
    CHECK(state_copy(small, a, err, sizeof err) != 0, "copy into a too-small context must fail");
    state_free(small);
    free(la);
    free(lb);
    state_free(a);
    state_free(b);
    model_free(m);
}

static void test_context_full_and_bad_token(void) {
    char err[1024];
    model *m = model_load(fixtures[0], NULL, err, sizeof err);
    if (!m) return;
    state *s = state_create(m, 4, err, sizeof err);
    int32_t ids[5] = {1, 2, 3, 4, 5};
    CHECK(model_forward(m, s, ids, 5, NULL, 0, err, sizeof err) != 0 && strstr(err, "context full"), "%s", err);
    int32_t bad = m->cfg.vocab_size;
    CHECK(model_forward(m, s, &bad, 1, NULL, 0, err, sizeof err) != 0 && strstr(err, "out of range"), "%s", err);
    state_free(s);
    model_free(m);
}

int main(void) {
    RUN_TEST(test_logits_match_transformers);
    RUN_TEST(test_logits_match_transformers_threaded);
    RUN_TEST(test_logits_any_prompt_chunk);
    RUN_TEST(test_logits_token_by_token_threaded);
    RUN_TEST(test_grouped_experts_same_bits);
    RUN_TEST(test_readahead_same_bits);
    RUN_TEST(test_greedy_matches_transformers);
    RUN_TEST(test_every_kernel_level);
    RUN_TEST(test_fewer_experts_per_token);
    RUN_TEST(test_context_full_and_bad_token);
    RUN_TEST(test_state_copy);
    RUN_TEST(test_state_bytes);
    RUN_TEST(test_batch_row_budget);
    TEST_EXIT();
}
