/* flashmoe perplexity: the statistics against closed forms, the command against an independent computation
 * from model_forward's logits, the log-probability file byte by byte, and bad input.
 *
 * The independent computation (reference_run below) runs each chunk in one model_forward call with every
 * position's logits and takes log-softmax in long double; the command runs the context half without logits,
 * the scored half in batches, and rounds each log-probability to float (as it stores them). Tolerances follow
 * from that rounding: a stored log-probability is off by at most 2^-24 |logp| (about 1e-6 here, |logp| < 20),
 * so means of NLL, KL and delta p agree to about 1e-6 absolute; the bounds below are 1e-5, ten times that. */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "perplexity.h"
#include "test.h"
#include "tokenizer.h"
#include "util.h"

/* not commands.h: its weak declaration would not make the linker take cmd_perplexity from the archive */
int cmd_perplexity(int argc, char **argv);

#define FX_A "tests/fixtures/tiny-a-f32"
#define FX_A_OTHER "tests/fixtures/tiny-a-f32-other-experts"
#define SAMPLE_TEXT "tests/data/perplexity/sample.txt"
#define TOL 1e-5 /* see the header comment */

static char tmpdir[64];

static const char *tmp_path(char *buf, size_t len, const char *name) {
    snprintf(buf, len, "%s/%s", tmpdir, name);
    return buf;
}

static void file_write(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(data, 1, len, f) == len, "cannot write %s", path);
    if (f) fclose(f);
}

/* n pseudo-random ids below vocab (xorshift32), written as an .ids file with mixed separators. */
static void ids_make(int32_t *ids, int n, uint32_t seed, int vocab) {
    for (int i = 0; i < n; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        ids[i] = (int32_t)(seed % (uint32_t)vocab);
    }
}

static void ids_write(const char *path, const int32_t *ids, int n) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return;
    for (int i = 0; i < n; i++) fprintf(f, "%d%s", ids[i], i % 10 == 9 ? "\n" : i % 3 ? ", " : " ");
    fclose(f);
}

/* ---- running the command with stdout and stderr captured ---- */

typedef struct {
    int rc;
    char *out, *err; /* whole captured streams (free with cli_free) */
    int err_lines;
    cJSON *json; /* stdout parsed, when it is JSON */
} cli_result;

static char *fd_slurp(int fd) {
    off_t len = lseek(fd, 0, SEEK_END);
    char *s = malloc((size_t)len + 1);
    if (!s) return NULL;
    ssize_t got = pread(fd, s, (size_t)len, 0);
    s[got > 0 ? got : 0] = 0;
    return s;
}

/* Runs `flashmoe perplexity ARGS...` (NULL-terminated) in this process. */
static void cli_run(cli_result *r, ...) {
    char *argv[64] = {"perplexity"};
    int argc = 1;
    va_list ap;
    va_start(ap, r);
    for (char *a; (a = va_arg(ap, char *)) && argc < 63;) argv[argc++] = a;
    va_end(ap);
    char po[96], pe[96];
    int fo = open(tmp_path(po, sizeof po, "stdout"), O_RDWR | O_CREAT | O_TRUNC, 0600);
    int fe = open(tmp_path(pe, sizeof pe, "stderr"), O_RDWR | O_CREAT | O_TRUNC, 0600);
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    dup2(fo, 1);
    dup2(fe, 2);
    r->rc = cmd_perplexity(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    r->out = fd_slurp(fo);
    r->err = fd_slurp(fe);
    close(fo);
    close(fe);
    r->err_lines = 0;
    for (const char *p = r->err; p && *p; p++) r->err_lines += *p == '\n';
    r->json = r->out ? cJSON_Parse(r->out) : NULL;
}

static void cli_free(cli_result *r) {
    free(r->out);
    free(r->err);
    cJSON_Delete(r->json);
}

static double json_num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    CHECK(cJSON_IsNumber(v), "JSON lacks number '%s'", key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static int close_rel(double a, double b, double tol) {
    return fabs(a - b) <= tol * fmax(1.0, fabs(b));
}

/* ---- the independent computation ---- */

typedef struct {
    int n;             /* scored positions */
    int vocab;
    double *logp;      /* [n x vocab], long-double log-softmax rounded to double */
    int32_t *target;   /* [n] */
} reference;

/* Chunks of ctx tokens (the whole stream if shorter), each from an empty state, logits of every position in
 * one call; positions ctx/2 .. ctx-2 are scored against the following token. */
static int reference_run(reference *ref, const char *dir, int top_k, const int32_t *t, int n_tokens, int ctx) {
    char err[512];
    model_opts o = {.top_k = top_k};
    model *m = model_load(dir, &o, err, sizeof err);
    CHECK(m != NULL, "%s", err);
    if (!m) return -1;
    int V = m->cfg.vocab_size;
    if (n_tokens < ctx) ctx = n_tokens;
    int chunks = n_tokens / ctx, first = ctx / 2;
    ref->vocab = V;
    ref->n = 0;
    ref->logp = malloc(sizeof(double) * (size_t)chunks * ctx * V);
    ref->target = malloc(sizeof(int32_t) * (size_t)chunks * ctx);
    float *logits = malloc(sizeof(float) * (size_t)ctx * V);
    state *s = state_create(m, ctx, err, sizeof err);
    CHECK(s != NULL, "%s", err);
    for (int c = 0; s && c < chunks; c++) {
        state_reset(s);
        int frc = model_forward(m, s, t + c * ctx, ctx, logits, 1, err, sizeof err);
        CHECK(frc == 0, "%s", err);
        if (frc) break;
        for (int j = first; j < ctx - 1; j++) {
            const float *x = logits + (size_t)j * V;
            long double mx = x[0], sum = 0;
            for (int v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
            for (int v = 0; v < V; v++) sum += expl(x[v] - mx);
            long double lse = mx + logl(sum);
            for (int v = 0; v < V; v++) ref->logp[(size_t)ref->n * V + v] = (double)(x[v] - lse);
            ref->target[ref->n++] = t[c * ctx + j + 1];
        }
    }
    free(logits);
    state_free(s);
    model_free(m);
    return 0;
}

static void reference_free(reference *r) {
    free(r->logp);
    free(r->target);
}

static double reference_mean_nll(const reference *r, double *sem) {
    double sum = 0, sum2 = 0;
    for (int i = 0; i < r->n; i++) {
        double nll = -r->logp[(size_t)i * r->vocab + r->target[i]];
        sum += nll;
        sum2 += nll * nll;
    }
    double mean = sum / r->n;
    *sem = sqrt((sum2 / r->n - mean * mean) / (r->n - 1)); /* llama.cpp's formula */
    return mean;
}

static int argmax_d(const double *x, int n) {
    int t = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[t]) t = i;
    return t;
}

static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- tests ---- */

static void test_statistics(void) {
    float x[3] = {1, 2, 3}, lp[3];
    double lse = log(exp(1.0) + exp(2.0) + exp(3.0));
    CHECK(ppl_log_softmax(x, 3, lp) == 2, "argmax");
    for (int i = 0; i < 3; i++) CHECK(fabs(lp[i] - (x[i] - lse)) < 1e-6, "logp[%d] %g vs %g", i, lp[i], x[i] - lse);
    float bad[2] = {1, NAN}, inf[2] = {INFINITY, 0};
    CHECK(ppl_log_softmax(bad, 2, lp) == -1 && ppl_log_softmax(inf, 2, lp) == -1, "non-finite logits rejected");

    /* 2,4,4,4,5,5,7,9: mean 5, squared deviations sum to 32 */
    ppl_moments mo = {0};
    const double v[] = {2, 4, 4, 4, 5, 5, 7, 9};
    for (int i = 0; i < 8; i++) ppl_moments_add(&mo, v[i]);
    CHECK(mo.n == 8 && fabs(mo.mean - 5) < 1e-12, "mean %g", mo.mean);
    CHECK(fabs(ppl_moments_sd(&mo) - sqrt(32.0 / 7)) < 1e-12, "sd %g", ppl_moments_sd(&mo));
    CHECK(fabs(ppl_moments_sem(&mo) - sqrt(32.0 / 7) / sqrt(8)) < 1e-12, "sem %g", ppl_moments_sem(&mo));
    ppl_moments one = {0};
    ppl_moments_add(&one, 3);
    CHECK(ppl_moments_sem(&one) == 0, "sem of one value");

    float q[5] = {5, 1, 4, 2, 3};
    ppl_sort(q, 5);
    CHECK(q[0] == 1 && q[4] == 5, "sorted");
    CHECK(ppl_percentile(q, 5, 0.5) == 3 && ppl_percentile(q, 5, 0) == 1 && ppl_percentile(q, 5, 1) == 5,
          "median and ends");
    CHECK(fabs(ppl_percentile(q, 5, 0.9) - 4.6) < 1e-12, "p90 %g (numpy: 4.6)", ppl_percentile(q, 5, 0.9));
    CHECK(ppl_percentile(q, 1, 0.99) == 1, "one value");

    /* KL((.5,.5) || (.25,.75)) = .5 ln 2 + .5 ln(2/3) */
    float r2[2] = {logf(0.5f), logf(0.5f)}, c2[2] = {logf(0.25f), logf(0.75f)};
    ppl_compare_row row;
    CHECK(ppl_compare(r2, c2, 2, 1, &row) == 0, "compare");
    double want = 0.5 * log(2.0) + 0.5 * log(2.0 / 3);
    CHECK(fabs(row.kl - want) < 1e-7, "KL %.9g, want %.9g", row.kl, want);
    CHECK(row.ref_top == 0 && row.cur_top == 1, "argmax with a tie takes the lowest index: %d %d", row.ref_top,
          row.cur_top);
    CHECK(fabs(row.ref_p - 0.5) < 1e-7 && fabs(row.cur_p - 0.75) < 1e-7, "p %g %g", row.ref_p, row.cur_p);
    CHECK(fabs(row.cur_nll - -log(0.75)) < 1e-7, "nll %g", row.cur_nll);
    /* a zero reference probability contributes nothing: KL((1,0) || (.5,.5)) = ln 2 */
    float r3[2] = {0, -INFINITY}, c3[2] = {logf(0.5f), logf(0.5f)};
    CHECK(ppl_compare(r3, c3, 2, 0, &row) == 0 && fabs(row.kl - log(2.0)) < 1e-7, "KL %g", row.kl);
    float r4[2] = {0, NAN};
    CHECK(ppl_compare(r4, c3, 2, 0, &row) == -1, "NaN rejected");
    CHECK(ppl_compare(c3, c3, 2, 0, &row) == 0 && row.kl == 0, "identical rows: KL exactly 0, got %g", row.kl);
}

static void test_parse_ids(void) {
    int32_t *ids;
    size_t n;
    char err[256];
    CHECK(ppl_parse_ids("f", " 1, 2,3\n4\t5\r\n,", &ids, &n, err, sizeof err) == 0 && n == 5, "%s", err);
    if (n == 5) CHECK(ids[0] == 1 && ids[3] == 4 && ids[4] == 5, "values");
    free(ids);
    CHECK(ppl_parse_ids("f", "  \n", &ids, &n, err, sizeof err) == 0 && n == 0 && !ids, "empty");
    CHECK(ppl_parse_ids("f.ids", "1,x2,3", &ids, &n, err, sizeof err) == -1 && strstr(err, "f.ids: bad token id 'x2'"),
          "%s", err);
    CHECK(ppl_parse_ids("f", "1 -2", &ids, &n, err, sizeof err) == -1 && strstr(err, "'-2' at byte 2"), "%s", err);
    CHECK(ppl_parse_ids("f", "2147483648", &ids, &n, err, sizeof err) == -1, "overflow");
    CHECK(ppl_parse_ids("f", "12a", &ids, &n, err, sizeof err) == -1, "trailing letter");
}

static void test_plan(void) {
    ppl_plan p;
    char err[256];
    CHECK(ppl_plan_make(&p, 130, 40, 0, err, sizeof err) == 0, "%s", err);
    CHECK(p.ctx == 40 && p.n_chunks == 3 && p.first == 20 && p.n_scored == 57 && p.n_used == 120,
          "130 tokens by 40: ctx %d chunks %d first %d scored %lld", p.ctx, p.n_chunks, p.first, (long long)p.n_scored);
    CHECK(ppl_plan_make(&p, 130, 40, 2, err, sizeof err) == 0 && p.n_chunks == 2 && p.n_scored == 38, "max chunks");
    CHECK(ppl_plan_make(&p, 25, 512, 0, err, sizeof err) == 0 && p.ctx == 25 && p.n_chunks == 1 && p.n_scored == 12,
          "short text: one chunk of all tokens");
    CHECK(ppl_plan_make(&p, 3, 512, 0, err, sizeof err) == 0 && p.n_scored == 1, "3 tokens score one");
    CHECK(ppl_plan_make(&p, 2, 512, 0, err, sizeof err) == -1 && strstr(err, "at least 3"), "%s", err);
    CHECK(ppl_plan_make(&p, 100, 2, 0, err, sizeof err) == -1 && strstr(err, "ctx must be at least 3"), "%s", err);
}

/* Perplexity of token ids through the command equals exp(mean NLL) computed independently. */
static void test_ppl_matches_reference(void) {
    int32_t t[130];
    ids_make(t, 130, 12345, 384);
    char ids[96];
    ids_write(tmp_path(ids, sizeof ids, "a.ids"), t, 130);
    cli_result r;
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "40", "--json", NULL);
    CHECK(r.rc == 0 && r.json, "rc %d, stderr: %s", r.rc, r.err);
    reference ref;
    if (r.json && reference_run(&ref, FX_A, 0, t, 130, 40) == 0) {
        double sem, nll = reference_mean_nll(&ref, &sem);
        CHECK(json_num(r.json, "ctx") == 40 && json_num(r.json, "chunks") == 3 && json_num(r.json, "tokens") == 130,
              "geometry");
        CHECK(json_num(r.json, "scored") == 57 && ref.n == 57, "scored %g", json_num(r.json, "scored"));
        CHECK(json_num(r.json, "evaluated") == 3 * 39, "evaluated %g", json_num(r.json, "evaluated"));
        double ppl = json_num(r.json, "ppl");
        CHECK(close_rel(ppl, exp(nll), TOL), "ppl %.9g, independent exp(mean NLL) %.9g", ppl, exp(nll));
        CHECK(close_rel(json_num(r.json, "nll_mean"), nll, TOL), "nll %.9g vs %.9g", json_num(r.json, "nll_mean"), nll);
        CHECK(close_rel(json_num(r.json, "nll_se"), sem, TOL), "nll se %.9g vs %.9g", json_num(r.json, "nll_se"), sem);
        CHECK(close_rel(json_num(r.json, "ppl_se"), exp(nll) * sem, TOL), "ppl se (delta method)");
        CHECK(json_num(r.json, "tokens_per_second") > 0, "speed");
        printf("  ppl %.4f +/- %.4f over %d tokens (independent: %.4f)\n", ppl, json_num(r.json, "ppl_se"), ref.n,
               exp(nll));
        reference_free(&ref);
    }
    cli_free(&r);

    /* the human summary carries the same numbers; threads do not change them */
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "40", "--threads", "2", "--max-chunks", "2", NULL);
    CHECK(r.rc == 0 && strstr(r.out, "perplexity ") && strstr(r.out, "38 tokens scored") && strstr(r.out, "tokens/s"),
          "summary:\n%s%s", r.out, r.err);
    cli_free(&r);
}

/* Text through the model's tokenizer; a text shorter than --ctx is one chunk. */
static void test_ppl_text(void) {
    char err[512];
    size_t len, n = 0;
    char *text = util_read_file(SAMPLE_TEXT, &len, err, sizeof err);
    tokenizer *tok = tokenizer_load(FX_A "/tokenizer.json", err, sizeof err);
    CHECK(text && tok, "%s", err);
    int32_t *t = NULL;
    if (text && tok) CHECK(tokenizer_encode(tok, text, len, 0, &t, &n) == 0 && n > 100, "encode: %zu", n);
    tokenizer_free(tok);
    free(text);
    if (!t) return;
    char ctx[16];
    snprintf(ctx, sizeof ctx, "%zu", n + 50);
    cli_result r;
    cli_run(&r, "-m", FX_A, "-f", SAMPLE_TEXT, "--ctx", ctx, "--json", NULL);
    CHECK(r.rc == 0 && r.json, "rc %d, stderr: %s", r.rc, r.err);
    reference ref;
    if (r.json && reference_run(&ref, FX_A, 0, t, (int)n, (int)n) == 0) {
        double sem, nll = reference_mean_nll(&ref, &sem);
        CHECK(json_num(r.json, "tokens") == (double)n && json_num(r.json, "ctx") == (double)n &&
                  json_num(r.json, "chunks") == 1 && json_num(r.json, "scored") == (double)(n - 1 - n / 2),
              "one chunk of all %zu tokens", n);
        CHECK(close_rel(json_num(r.json, "ppl"), exp(nll), TOL), "ppl %.9g vs %.9g", json_num(r.json, "ppl"),
              exp(nll));
        reference_free(&ref);
    }
    cli_free(&r);
    free(t);
}

static uint32_t u32_at(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The model against its own saved log-probabilities: KL exactly 0, agreement 1; the file byte by byte. */
static void test_kld_self(void) {
    int32_t t[130];
    ids_make(t, 130, 777, 384);
    char ids[96], out[96];
    ids_write(tmp_path(ids, sizeof ids, "b.ids"), t, 130);
    tmp_path(out, sizeof out, "b.logp");
    cli_result r;
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "40", "--save-logits", out, "--json", NULL);
    CHECK(r.rc == 0 && r.json, "save: rc %d, %s", r.rc, r.err);
    double saved_ppl = r.json ? json_num(r.json, "ppl") : NAN;
    cli_free(&r);

    /* the file: header, size, first record against the independent log-softmax */
    size_t len;
    char err[512];
    unsigned char *f = (unsigned char *)util_read_file(out, &len, err, sizeof err);
    CHECK(f != NULL, "%s", err);
    const size_t rec = 4 + 4 * 384;
    if (f && len >= 40) {
        uint64_t npos = u32_at(f + 24) | (uint64_t)u32_at(f + 28) << 32;
        uint64_t hash = u32_at(f + 32) | (uint64_t)u32_at(f + 36) << 32, fnv = 14695981039346656037u;
        for (int i = 0; i < 120; i++) /* FNV-1a over the 3 x 40 tokens used, 4 little-endian bytes each */
            for (int b = 0; b < 4; b++) fnv = (fnv ^ (((uint32_t)t[i] >> (8 * b)) & 0xff)) * 1099511628211u;
        CHECK(hash == fnv, "tokens hash %016llx, want %016llx", (unsigned long long)hash, (unsigned long long)fnv);
        CHECK(!memcmp(f, "FMOELOGP", 8) && u32_at(f + 8) == 1 && u32_at(f + 12) == 384 && u32_at(f + 16) == 40 &&
                  u32_at(f + 20) == 3 && npos == 57,
              "header: version %u vocab %u ctx %u chunks %u positions %llu", u32_at(f + 8), u32_at(f + 12),
              u32_at(f + 16), u32_at(f + 20), (unsigned long long)npos);
        CHECK(len == 40 + 57 * rec, "size %zu, want %zu", len, 40 + 57 * rec);
        reference ref;
        if (len == 40 + 57 * rec && reference_run(&ref, FX_A, 0, t, 130, 40) == 0) {
            double worst = 0, mass = 0;
            int tokens_ok = 1;
            for (int i = 0; i < 57; i++) {
                const unsigned char *p = f + 40 + i * rec;
                tokens_ok &= (int32_t)u32_at(p) == ref.target[i];
                for (int v = 0; v < 384; v++) {
                    float lp;
                    memcpy(&lp, p + 4 + 4 * v, 4);
                    worst = fmax(worst, fabs(lp - ref.logp[(size_t)i * 384 + v]));
                    if (i == 0) mass += exp(lp);
                }
            }
            CHECK(tokens_ok, "record tokens are the targets (position j+1 of each chunk)");
            CHECK(worst < TOL, "stored log-probabilities off by %g", worst);
            CHECK(fabs(mass - 1) < TOL, "record 0 sums to %.9g", mass);
            reference_free(&ref);
        }
    }
    free(f);

    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "40", "--kld", out, "--json", NULL);
    CHECK(r.rc == 0 && r.json, "kld: rc %d, %s", r.rc, r.err);
    const cJSON *k = r.json ? cJSON_GetObjectItem(r.json, "kld") : NULL;
    CHECK(k != NULL, "no kld object: %s", r.out);
    if (k) {
        CHECK(json_num(k, "kl_mean") == 0 && json_num(k, "kl_max") == 0 && json_num(k, "kl_median") == 0,
              "KL of a model against itself: mean %g max %g", json_num(k, "kl_mean"), json_num(k, "kl_max"));
        CHECK(json_num(k, "top1_agreement") == 1 && json_num(k, "top1_agreement_se") == 0, "top-1 %g",
              json_num(k, "top1_agreement"));
        CHECK(json_num(k, "delta_p_mean") == 0 && json_num(k, "ln_ppl_ratio") == 0, "delta p %g",
              json_num(k, "delta_p_mean"));
        CHECK(json_num(k, "ref_ppl") == saved_ppl && json_num(r.json, "ppl") == saved_ppl,
              "both perplexities equal the saved run's: %.17g %.17g %.17g", json_num(k, "ref_ppl"),
              json_num(r.json, "ppl"), saved_ppl);
    }
    cli_free(&r);

    /* the same weights in the other expert layout: only summation order differs, so logits agree to about
     * 1e-7 relative and KL, second order in the difference, stays below 1e-9 */
    cli_run(&r, "-m", FX_A_OTHER, "-f", ids, "--ctx", "40", "--kld", out, "--json", NULL);
    k = r.json ? cJSON_GetObjectItem(r.json, "kld") : NULL;
    CHECK(r.rc == 0 && k, "kld other layout: rc %d, %s", r.rc, r.err);
    if (k)
        CHECK(json_num(k, "kl_max") < 1e-9 && json_num(k, "kl_mean") >= 0 && json_num(k, "top1_agreement") == 1,
              "other layout: KL max %g, top-1 %g", json_num(k, "kl_max"), json_num(k, "top1_agreement"));
    cli_free(&r);

    /* and the human summary of a comparison */
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "40", "--kld", out, NULL);
    CHECK(r.rc == 0 && strstr(r.out, "KL(ref||this) mean 0.000000") && strstr(r.out, "top-1 agreement 100.000%"),
          "summary:\n%s%s", r.out, r.err);
    cli_free(&r);
}

/* One expert per token against the native three: KL > 0, agreement < 1, every number as computed here. */
static void test_kld_fewer_experts(void) {
    int32_t t[100];
    ids_make(t, 100, 4242, 384);
    char ids[96], out[96];
    ids_write(tmp_path(ids, sizeof ids, "c.ids"), t, 100);
    tmp_path(out, sizeof out, "c.logp");
    cli_result r;
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "50", "--save-logits", out, NULL);
    CHECK(r.rc == 0, "save: %s", r.err);
    cli_free(&r);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "50", "--kld", out, "--experts-per-token", "1", "--json", NULL);
    CHECK(r.rc == 0 && r.json, "kld: rc %d, %s", r.rc, r.err);
    const cJSON *k = r.json ? cJSON_GetObjectItem(r.json, "kld") : NULL;
    reference a, b;
    if (k && reference_run(&a, FX_A, 0, t, 100, 50) == 0) {
        if (reference_run(&b, FX_A, 1, t, 100, 50) == 0 && a.n == b.n && a.n == 48) {
            int n = a.n, V = a.vocab, agree = 0;
            double kl_sum = 0, dp_sum = 0, kls[48];
            for (int i = 0; i < n; i++) {
                const double *p = a.logp + (size_t)i * V, *q = b.logp + (size_t)i * V;
                double kl = 0;
                for (int v = 0; v < V; v++) kl += exp(p[v]) * (p[v] - q[v]);
                kls[i] = kl;
                kl_sum += kl;
                agree += argmax_d(p, V) == argmax_d(q, V);
                dp_sum += exp(q[a.target[i]]) - exp(p[a.target[i]]);
            }
            qsort(kls, (size_t)n, sizeof *kls, dbl_cmp);
            double sem_a, sem_b, nll_a = reference_mean_nll(&a, &sem_a), nll_b = reference_mean_nll(&b, &sem_b);
            CHECK(json_num(k, "kl_mean") > 0.01 && json_num(k, "top1_agreement") < 1, "fewer experts must differ");
            CHECK(fabs(json_num(k, "kl_mean") - kl_sum / n) < TOL, "KL mean %.9g, independent %.9g",
                  json_num(k, "kl_mean"), kl_sum / n);
            CHECK(fabs(json_num(k, "kl_median") - 0.5 * (kls[23] + kls[24])) < TOL, "median %.9g vs %.9g",
                  json_num(k, "kl_median"), 0.5 * (kls[23] + kls[24]));
            CHECK(fabs(json_num(k, "kl_max") - kls[47]) < TOL, "max %.9g vs %.9g", json_num(k, "kl_max"), kls[47]);
            CHECK(fabs(json_num(k, "top1_agreement") * n - agree) < 1e-6, "top-1 %.9g, independent %d/%d",
                  json_num(k, "top1_agreement"), agree, n);
            double p1 = (double)agree / n;
            CHECK(close_rel(json_num(k, "top1_agreement_se"), sqrt(p1 * (1 - p1) / (n - 1)), 1e-9), "top-1 se");
            CHECK(fabs(json_num(k, "delta_p_mean") - dp_sum / n) < TOL, "delta p %.9g vs %.9g",
                  json_num(k, "delta_p_mean"), dp_sum / n);
            CHECK(close_rel(json_num(k, "ref_ppl"), exp(nll_a), TOL), "ref ppl %.9g vs %.9g", json_num(k, "ref_ppl"),
                  exp(nll_a));
            CHECK(close_rel(json_num(r.json, "ppl"), exp(nll_b), TOL), "ppl %.9g vs %.9g", json_num(r.json, "ppl"),
                  exp(nll_b));
            CHECK(fabs(json_num(k, "ln_ppl_ratio") - (nll_b - nll_a)) < TOL, "ln ratio");
            printf("  1 expert vs 3: KL %.4f +/- %.4f (p99 %.4f), top-1 %.1f%%, ppl %.2f vs %.2f\n",
                   json_num(k, "kl_mean"), json_num(k, "kl_se"), json_num(k, "kl_p99"),
                   100 * json_num(k, "top1_agreement"), json_num(r.json, "ppl"), json_num(k, "ref_ppl"));
            reference_free(&b);
        }
        reference_free(&a);
    }
    cli_free(&r);
}

/* A model directory without tokenizer.json is measured on token ids and refuses text. */
static void test_no_tokenizer(void) {
    char dir[96], src[4200], link[160], ids[96];
    tmp_path(dir, sizeof dir, "notok");
    mkdir(dir, 0700);
    char *fx = realpath(FX_A, NULL);
    CHECK(fx != NULL, "realpath %s", FX_A);
    const char *files[] = {"config.json", "generation_config.json", "model.safetensors"};
    for (int i = 0; fx && i < 3; i++) {
        snprintf(src, sizeof src, "%s/%s", fx, files[i]);
        snprintf(link, sizeof link, "%s/%s", dir, files[i]);
        CHECK(symlink(src, link) == 0, "symlink %s", link);
    }
    free(fx);
    int32_t t[20];
    ids_make(t, 20, 99, 384);
    ids_write(tmp_path(ids, sizeof ids, "d.txt"), t, 20);
    cli_result r;
    cli_run(&r, "-m", dir, "-f", ids, "--ids-file", "--json", NULL);
    CHECK(r.rc == 0 && r.json && json_num(r.json, "scored") == 9, "ids without a tokenizer: rc %d %s", r.rc, r.err);
    cli_free(&r);
    cli_run(&r, "-m", dir, "-f", SAMPLE_TEXT, NULL);
    CHECK(r.rc != 0 && r.err_lines == 1 && strstr(r.err, "notok/tokenizer.json: not found") &&
              strstr(r.err, "--ids-file"),
          "text without a tokenizer: %s", r.err);
    cli_free(&r);
}

/* Bad input: one line on stderr naming the file and the problem, non-zero status. */
static void expect_error(const char *what, const char *needle1, const char *needle2, cli_result *r) {
    CHECK(r->rc != 0, "%s: status 0", what);
    CHECK(r->err_lines == 1, "%s: %d lines on stderr: %s", what, r->err_lines, r->err);
    CHECK(r->err && strstr(r->err, needle1), "%s: stderr lacks '%s': %s", what, needle1, r->err);
    if (needle2) CHECK(r->err && strstr(r->err, needle2), "%s: stderr lacks '%s': %s", what, needle2, r->err);
    cli_free(r);
}

static void test_errors(void) {
    char ids[96], ids2[96], ids3[96], ref[96], p[96], empty[96], blank[96];
    int32_t t[90], u[90];
    ids_make(t, 90, 1, 384);
    /* chunks of 30 score the targets at positions 16..29: change one target, then one context token */
    memcpy(u, t, sizeof t);
    u[80] = (t[80] + 1) % 384;
    ids_write(tmp_path(ids, sizeof ids, "e.ids"), t, 90);
    ids_write(tmp_path(ids2, sizeof ids2, "e2.ids"), u, 90);
    memcpy(u, t, sizeof t);
    u[70] = (t[70] + 1) % 384;
    ids_write(tmp_path(ids3, sizeof ids3, "e3.ids"), u, 90);
    tmp_path(ref, sizeof ref, "e.logp");
    cli_result r;
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--save-logits", ref, NULL);
    CHECK(r.rc == 0, "save: %s", r.err);
    cli_free(&r);

    cli_run(&r, "-m", FX_A, "-f", "/nonexistent/x.txt", NULL);
    expect_error("missing file", "/nonexistent/x.txt: cannot open", NULL, &r);
    file_write(tmp_path(empty, sizeof empty, "empty.txt"), "", 0);
    cli_run(&r, "-m", FX_A, "-f", empty, NULL);
    expect_error("empty text", "empty.txt: empty text", NULL, &r);
    file_write(tmp_path(blank, sizeof blank, "blank.ids"), " ,\n", 3);
    cli_run(&r, "-m", FX_A, "-f", blank, NULL);
    expect_error("no ids", "blank.ids: no token ids", NULL, &r);
    file_write(tmp_path(p, sizeof p, "two.ids"), "5 6", 3);
    cli_run(&r, "-m", FX_A, "-f", p, NULL);
    expect_error("two tokens", "two.ids: 2 tokens: at least 3", NULL, &r);
    file_write(tmp_path(p, sizeof p, "range.ids"), "5 6 384 7", 9);
    cli_run(&r, "-m", FX_A, "-f", p, NULL);
    expect_error("id out of range", "range.ids: token id 384 at index 2 is out of range (vocabulary of 384)", NULL, &r);
    file_write(tmp_path(p, sizeof p, "bad.ids"), "5 6 seven", 9);
    cli_run(&r, "-m", FX_A, "-f", p, NULL);
    expect_error("bad id", "bad.ids: bad token id 'seven'", NULL, &r);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "2", NULL);
    expect_error("ctx 2", "--ctx needs an integer from 3", NULL, &r);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "1", NULL);
    expect_error("ctx 1", "--ctx needs an integer from 3", NULL, &r);
    cli_run(&r, "-m", FX_A, NULL);
    expect_error("no file", "-f FILE are required", NULL, &r);
    cli_run(&r, "-m", FX_A, "-f", ids, "--save-logits", p, "--kld", ref, NULL);
    expect_error("save and kld", "exclusive", NULL, &r);
    cli_run(&r, "-m", FX_A, "-f", ids, "--bogus", NULL);
    expect_error("unknown option", "unknown option '--bogus'", NULL, &r);
    cli_run(&r, "-m", FX_A, "-f", ids, "--save-logits", "/nonexistent/dir/x.logp", NULL);
    expect_error("unwritable save", "/nonexistent/dir/x.logp: cannot create", NULL, &r);

    /* reference files that do not fit this run */
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--kld", "/nonexistent/ref.logp", NULL);
    expect_error("missing ref", "/nonexistent/ref.logp: cannot open", NULL, &r);
    cli_run(&r, "-m", FX_A, "-f", ids2, "--ctx", "30", "--kld", ref, NULL);
    expect_error("other target", "e.logp: scored position 32 (chunk 2, position 20) has token", NULL, &r);
    cli_run(&r, "-m", FX_A, "-f", ids3, "--ctx", "30", "--kld", ref, NULL);
    expect_error("other context", "e.logp: saved from other tokens", NULL, &r);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "45", "--kld", ref, NULL);
    expect_error("other ctx", "e.logp: saved with 3 chunks of 30 tokens, this run has 2 chunks of 45", NULL, &r);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--max-chunks", "2", "--kld", ref, NULL);
    expect_error("other chunk count", "e.logp: saved with 3 chunks", NULL, &r);

    size_t len;
    char err[256], bad[96];
    char *data = util_read_file(ref, &len, err, sizeof err);
    CHECK(data && len == 40 + 42 * (4 + 4 * 384), "%s: %zu bytes", ref, len);
    if (!data) return;
    tmp_path(bad, sizeof bad, "bad.logp");
    file_write(bad, data, len - 10);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--kld", bad, NULL);
    expect_error("truncated ref", "bad.logp: truncated", NULL, &r);
    file_write(bad, data, 20);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--kld", bad, NULL);
    expect_error("truncated header", "bad.logp: truncated: 20 bytes", NULL, &r);
    char *more = malloc(len + 4);
    memcpy(more, data, len);
    memset(more + len, 0, 4);
    file_write(bad, more, len + 4);
    free(more);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--kld", bad, NULL);
    expect_error("trailing bytes", "bad.logp: 4 bytes after", NULL, &r);
    data[0] = 'X';
    file_write(bad, data, len);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--kld", bad, NULL);
    expect_error("bad magic", "bad.logp: not a flashmoe log-probability file", NULL, &r);
    data[0] = 'F';
    data[8] = 2;
    file_write(bad, data, len);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--kld", bad, NULL);
    expect_error("version", "bad.logp: version 2", NULL, &r);
    data[8] = 1;
    data[24] = 41; /* positions no longer chunks x scored per chunk */
    file_write(bad, data, len);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--kld", bad, NULL);
    expect_error("inconsistent header", "bad.logp: corrupt header", NULL, &r);
    free(data);

    /* another vocabulary: a well-formed file with 100 floats per record */
    ppl_logfile_header h = {100, 30, 3, 42, ppl_tokens_hash(t, 90)};
    ppl_logfile *lf = ppl_logfile_create(bad, &h, err, sizeof err);
    CHECK(lf != NULL, "%s", err);
    float row[100] = {0};
    for (int i = 0; lf && i < 42; i++) CHECK(ppl_logfile_write(lf, t[i], row, err, sizeof err) == 0, "%s", err);
    if (lf) CHECK(ppl_logfile_write(lf, 0, row, err, sizeof err) == -1 && strstr(err, "more records"), "%s", err);
    CHECK(ppl_logfile_close(lf, err, sizeof err) == 0, "%s", err);
    cli_run(&r, "-m", FX_A, "-f", ids, "--ctx", "30", "--kld", bad, NULL);
    expect_error("other vocab", "bad.logp: saved with a vocabulary of 100, this model has 384", NULL, &r);

    /* a writer closed early says so */
    lf = ppl_logfile_create(bad, &h, err, sizeof err);
    CHECK(lf && ppl_logfile_close(lf, err, sizeof err) == -1 && strstr(err, "0 of the 42 promised records"), "%s",
          err);
}

static void test_help(void) {
    cli_result r;
    cli_run(&r, "--help", NULL);
    CHECK(r.rc == 0 && strstr(r.out, "usage: flashmoe perplexity") && strstr(r.out, "N/2 .. N-2") &&
              strstr(r.out, "FMOELOGP"),
          "help: %s", r.out);
    cli_free(&r);
}

static void tmpdir_remove(const char *dir) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "  could not remove %s\n", dir);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/flashmoe_ppl_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN_TEST(test_statistics);
    RUN_TEST(test_parse_ids);
    RUN_TEST(test_plan);
    RUN_TEST(test_ppl_matches_reference);
    RUN_TEST(test_ppl_text);
    RUN_TEST(test_kld_self);
    RUN_TEST(test_kld_fewer_experts);
    RUN_TEST(test_no_tokenizer);
    RUN_TEST(test_errors);
    RUN_TEST(test_help);
    tmpdir_remove(tmpdir);
    TEST_EXIT();
}
