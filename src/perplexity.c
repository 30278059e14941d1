/* Perplexity, KL divergence and the log-probability file: see perplexity.h for the method and the format. */
#include "perplexity.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the log-probability file is written with the host's float layout: little-endian hosts only"
#endif

/* Logits held for one batched forward call: at most this many bytes, at most PPL_MAX_BATCH positions. */
#define PPL_BATCH_BYTES ((size_t)32 << 20)
#define PPL_MAX_BATCH 64

/* ---- statistics ---- */

/* Largest entry (lowest index on ties) and log-sum-exp in double. Returns -1 if an entry is NaN or +inf, or
 * if allow_neg_inf is 0 and one is -inf, or if no entry is finite. */
static int row_logsumexp(const float *x, int n, int allow_neg_inf, double *lse, int *top) {
    float mx = -INFINITY;
    int t = -1;
    for (int i = 0; i < n; i++) {
        if (isnan(x[i]) || x[i] == INFINITY || (!allow_neg_inf && x[i] == -INFINITY)) return -1;
        if (x[i] > mx) {
            mx = x[i];
            t = i;
        }
    }
    if (t < 0) return -1;
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
    *lse = mx + log(s);
    *top = t;
    return 0;
}

int ppl_log_softmax(const float *logits, int n, float *logp) {
    double lse;
    int top;
    if (row_logsumexp(logits, n, 0, &lse, &top)) return -1;
    for (int i = 0; i < n; i++) logp[i] = (float)((double)logits[i] - lse);
    return top;
}

void ppl_moments_add(ppl_moments *a, double x) {
    a->n++;
    double d = x - a->mean;
    a->mean += d / (double)a->n;
    a->m2 += d * (x - a->mean);
}

double ppl_moments_sd(const ppl_moments *a) {
    return a->n < 2 ? 0.0 : sqrt(a->m2 / (double)(a->n - 1));
}

double ppl_moments_sem(const ppl_moments *a) {
    return a->n < 2 ? 0.0 : ppl_moments_sd(a) / sqrt((double)a->n);
}

int ppl_compare(const float *ref_logp, const float *cur_logp, int n, int token, ppl_compare_row *out) {
    double lse_ref, lse_cur;
    if (row_logsumexp(ref_logp, n, 1, &lse_ref, &out->ref_top)) return -1;
    if (row_logsumexp(cur_logp, n, 1, &lse_cur, &out->cur_top)) return -1;
    /* lse_* are 0 up to the float rounding of the stored rows; subtracting them makes both distributions
     * sum to 1 in double, which is what makes the sum below non-negative (Gibbs' inequality). */
    double kl = 0;
    for (int v = 0; v < n; v++) {
        double a = (double)ref_logp[v] - lse_ref;
        if (a == -INFINITY) continue; /* p_ref(v) = 0 contributes nothing, whatever p_cur(v) is */
        double b = (double)cur_logp[v] - lse_cur;
        kl += exp(a) * (a - b);
    }
    out->kl = kl;
    out->ref_nll = -(double)ref_logp[token];
    out->cur_nll = -(double)cur_logp[token];
    out->ref_p = exp((double)ref_logp[token]);
    out->cur_p = exp((double)cur_logp[token]);
    return 0;
}

static int float_cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

void ppl_sort(float *values, size_t n) {
    qsort(values, n, sizeof *values, float_cmp);
}

double ppl_percentile(const float *sorted, size_t n, double q) {
    if (n == 0) return NAN;
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)pos, hi = lo + 1 < n ? lo + 1 : n - 1;
    double frac = pos - (double)lo;
    return (double)sorted[lo] + frac * ((double)sorted[hi] - (double)sorted[lo]);
}

/* ---- the log-probability file ---- */

struct ppl_logfile {
    FILE *f;
    char *path;
    ppl_logfile_header h;
    uint64_t done; /* records written or read so far */
    int writing;
};

static uint64_t logfile_record_bytes(const ppl_logfile_header *h) {
    return 4 + 4 * (uint64_t)h->vocab;
}

static uint64_t plan_scored_per_chunk(uint32_t ctx) {
    return ctx - 1 - ctx / 2;
}

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint64_t ppl_tokens_hash(const int32_t *tokens, size_t n) {
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) {
            h ^= ((uint32_t)tokens[i] >> (8 * b)) & 0xff;
            h *= 0x100000001b3u;
        }
    return h;
}

static ppl_logfile *logfile_new(const char *path, const char *mode, char *err, size_t errlen) {
    ppl_logfile *lf = calloc(1, sizeof *lf);
    if (!lf || !(lf->path = strdup(path))) {
        snprintf(err, errlen, "%s: out of memory", path);
        free(lf);
        return NULL;
    }
    if (!(lf->f = fopen(path, mode))) {
        snprintf(err, errlen, "%s: cannot %s: %s", path, mode[0] == 'w' ? "create" : "open", strerror(errno));
        free(lf->path);
        free(lf);
        return NULL;
    }
    return lf;
}

static void logfile_discard(ppl_logfile *lf) {
    fclose(lf->f);
    free(lf->path);
    free(lf);
}

ppl_logfile *ppl_logfile_create(const char *path, const ppl_logfile_header *h, char *err, size_t errlen) {
    ppl_logfile *lf = logfile_new(path, "wb", err, errlen);
    if (!lf) return NULL;
    lf->h = *h;
    lf->writing = 1;
    unsigned char b[PPL_LOGFILE_HEADER_BYTES];
    memcpy(b, PPL_LOGFILE_MAGIC, 8);
    put_u32(b + 8, PPL_LOGFILE_VERSION);
    put_u32(b + 12, h->vocab);
    put_u32(b + 16, h->ctx);
    put_u32(b + 20, h->n_chunks);
    put_u64(b + 24, h->n_positions);
    put_u64(b + 32, h->tokens_hash);
    if (fwrite(b, 1, sizeof b, lf->f) != sizeof b) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        logfile_discard(lf);
        return NULL;
    }
    return lf;
}

int ppl_logfile_write(ppl_logfile *lf, int32_t token, const float *logp, char *err, size_t errlen) {
    if (lf->done >= lf->h.n_positions) {
        snprintf(err, errlen, "%s: more records than the %" PRIu64 " the header promises", lf->path,
                 lf->h.n_positions);
        return -1;
    }
    if (fwrite(&token, sizeof token, 1, lf->f) != 1 || fwrite(logp, sizeof *logp, lf->h.vocab, lf->f) != lf->h.vocab) {
        snprintf(err, errlen, "%s: write failed: %s", lf->path, strerror(errno));
        return -1;
    }
    lf->done++;
    return 0;
}

ppl_logfile *ppl_logfile_open(const char *path, ppl_logfile_header *h, char *err, size_t errlen) {
    ppl_logfile *lf = logfile_new(path, "rb", err, errlen);
    if (!lf) return NULL;
    unsigned char b[PPL_LOGFILE_HEADER_BYTES];
    size_t got = fread(b, 1, sizeof b, lf->f);
    struct stat sb;
    if (fstat(fileno(lf->f), &sb)) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        goto bad;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto bad;
    }
    if (got >= 8 && memcmp(b, PPL_LOGFILE_MAGIC, 8)) {
        snprintf(err, errlen, "%s: not a flashmoe log-probability file (no \"%s\" magic)", path, PPL_LOGFILE_MAGIC);
        goto bad;
    }
    if (got < sizeof b) {
        snprintf(err, errlen, "%s: truncated: %zu bytes, a header needs %d", path, got, PPL_LOGFILE_HEADER_BYTES);
        goto bad;
    }
    uint32_t version = get_u32(b + 8);
    ppl_logfile_header hd = {get_u32(b + 12), get_u32(b + 16), get_u32(b + 20), get_u64(b + 24), get_u64(b + 32)};
    if (version != PPL_LOGFILE_VERSION) {
        snprintf(err, errlen, "%s: version %" PRIu32 ", this build reads version %u", path, version,
                 PPL_LOGFILE_VERSION);
        goto bad;
    }
    if (hd.vocab < 1 || hd.vocab > (1u << 28) || hd.ctx < 3 || hd.n_chunks < 1 ||
        hd.n_positions != (uint64_t)hd.n_chunks * plan_scored_per_chunk(hd.ctx)) {
        snprintf(err, errlen,
                 "%s: corrupt header (vocab %" PRIu32 ", ctx %" PRIu32 ", %" PRIu32 " chunks, %" PRIu64
                 " positions)",
                 path, hd.vocab, hd.ctx, hd.n_chunks, hd.n_positions);
        goto bad;
    }
    /* n_positions <= 2^32 * 2^31 and a record <= 2^30 + 4 bytes: the product can overflow, so divide */
    uint64_t rec = logfile_record_bytes(&hd), size = (uint64_t)sb.st_size, data = size - sizeof b;
    if (data / rec < hd.n_positions) {
        snprintf(err, errlen,
                 "%s: truncated: the header promises %" PRIu64 " records of %" PRIu64 " bytes, the file holds %" PRIu64
                 " whole records",
                 path, hd.n_positions, rec, data / rec);
        goto bad;
    }
    if (data != hd.n_positions * rec) {
        snprintf(err, errlen, "%s: %" PRIu64 " bytes after the %" PRIu64 " records the header promises", path,
                 data - hd.n_positions * rec, hd.n_positions);
        goto bad;
    }
    lf->h = hd;
    *h = hd;
    return lf;
bad:
    logfile_discard(lf);
    return NULL;
}

int ppl_logfile_token_at(ppl_logfile *lf, uint64_t i, int32_t *token, char *err, size_t errlen) {
    off_t off = (off_t)(PPL_LOGFILE_HEADER_BYTES + i * logfile_record_bytes(&lf->h));
    ssize_t got = i < lf->h.n_positions ? pread(fileno(lf->f), token, sizeof *token, off) : 0;
    if (got != (ssize_t)sizeof *token) {
        snprintf(err, errlen, "%s: cannot read record %" PRIu64 ": %s", lf->path, i,
                 got < 0 ? strerror(errno) : "past the end");
        return -1;
    }
    return 0;
}

int ppl_logfile_read(ppl_logfile *lf, int32_t *token, float *logp, char *err, size_t errlen) {
    if (lf->done >= lf->h.n_positions || fread(token, sizeof *token, 1, lf->f) != 1 ||
        fread(logp, sizeof *logp, lf->h.vocab, lf->f) != lf->h.vocab) {
        snprintf(err, errlen, "%s: cannot read record %" PRIu64 ": %s", lf->path, lf->done,
                 ferror(lf->f) ? strerror(errno) : "truncated");
        return -1;
    }
    lf->done++;
    return 0;
}

int ppl_logfile_close(ppl_logfile *lf, char *err, size_t errlen) {
    if (!lf) return 0;
    int rc = 0;
    if (lf->writing && lf->done != lf->h.n_positions) {
        snprintf(err, errlen, "%s: %" PRIu64 " of the %" PRIu64 " promised records written", lf->path, lf->done,
                 lf->h.n_positions);
        rc = -1;
    }
    if (fclose(lf->f) && lf->writing && rc == 0) {
        snprintf(err, errlen, "%s: write failed: %s", lf->path, strerror(errno));
        rc = -1;
    }
    free(lf->path);
    free(lf);
    return rc;
}

const char *ppl_logfile_path(const ppl_logfile *lf) {
    return lf->path;
}

/* ---- a whole run ---- */

int ppl_plan_make(ppl_plan *p, size_t n_tokens, int ctx, int max_chunks, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    if (ctx < 3) {
        snprintf(err, errlen, "a chunk of %d tokens scores nothing: ctx must be at least 3", ctx);
        return -1;
    }
    if (n_tokens < 3) {
        snprintf(err, errlen, "%zu token%s: at least 3 are needed to score one", n_tokens, n_tokens == 1 ? "" : "s");
        return -1;
    }
    size_t c = n_tokens < (size_t)ctx ? n_tokens : (size_t)ctx;
    size_t chunks = n_tokens / c;
    if (max_chunks > 0 && chunks > (size_t)max_chunks) chunks = (size_t)max_chunks;
    if (chunks > INT32_MAX) {
        snprintf(err, errlen, "%zu chunks are too many: use --max-chunks or a larger ctx", chunks);
        return -1;
    }
    p->ctx = (int)c;
    p->n_chunks = (int)chunks;
    p->first = p->ctx / 2;
    p->n_scored = (int64_t)p->n_chunks * (int64_t)plan_scored_per_chunk((uint32_t)p->ctx);
    p->n_used = (int64_t)p->n_chunks * p->ctx;
    return 0;
}

/* Checks the reference file against this run before any work: geometry, then every target token. */
static int reference_check(ppl_logfile *ref, const ppl_logfile_header *h, const ppl_plan *pl, int vocab,
                           const int32_t *tokens, char *err, size_t errlen) {
    const char *path = ppl_logfile_path(ref);
    if (h->vocab != (uint32_t)vocab) {
        snprintf(err, errlen, "%s: saved with a vocabulary of %" PRIu32 ", this model has %d", path, h->vocab,
                 vocab);
        return -1;
    }
    if (h->ctx != (uint32_t)pl->ctx || h->n_chunks != (uint32_t)pl->n_chunks) {
        snprintf(err, errlen,
                 "%s: saved with %" PRIu32 " chunks of %" PRIu32 " tokens, this run has %d chunks of %d "
                 "(use the same text, --ctx and --max-chunks)",
                 path, h->n_chunks, h->ctx, pl->n_chunks, pl->ctx);
        return -1;
    }
    uint64_t k = 0;
    for (int c = 0; c < pl->n_chunks; c++)
        for (int j = pl->first; j <= pl->ctx - 2; j++, k++) {
            int32_t saved, want = tokens[(size_t)c * pl->ctx + j + 1];
            if (ppl_logfile_token_at(ref, k, &saved, err, errlen)) return -1;
            if (saved != want) {
                snprintf(err, errlen,
                         "%s: scored position %" PRIu64 " (chunk %d, position %d) has token %" PRId32
                         ", this text has %" PRId32 " (a different text or tokenizer)",
                         path, k, c, j + 1, saved, want);
                return -1;
            }
        }
    if (h->tokens_hash != ppl_tokens_hash(tokens, (size_t)pl->n_used)) {
        snprintf(err, errlen, "%s: saved from other tokens (the scored targets match, the context tokens differ)",
                 path);
        return -1;
    }
    return 0;
}

int ppl_run(model *m, const char *model_name, const int32_t *tokens, size_t n_tokens, const ppl_params *p,
            ppl_result *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    if (ppl_plan_make(&r->plan, n_tokens, p->ctx, p->max_chunks, err, errlen)) return -1;
    const ppl_plan *pl = &r->plan;
    const int V = m->cfg.vocab_size, per_chunk = pl->ctx - 1 - pl->first;
    int batch = (int)(PPL_BATCH_BYTES / (sizeof(float) * (size_t)V));
    if (batch > PPL_MAX_BATCH) batch = PPL_MAX_BATCH;
    if (batch > per_chunk) batch = per_chunk;
    if (batch < 1) batch = 1;

    int rc = -1;
    state *s = NULL;
    ppl_logfile *ref = NULL, *save = NULL;
    float *logits = malloc(sizeof(float) * (size_t)batch * V), *cur = malloc(sizeof(float) * (size_t)V);
    float *ref_row = NULL, *kl_values = NULL;
    char ferr[512];
    if (!logits || !cur) goto oom;
    if (p->kld_path) {
        ppl_logfile_header h;
        if (!(ref = ppl_logfile_open(p->kld_path, &h, err, errlen))) goto done;
        if (reference_check(ref, &h, pl, V, tokens, err, errlen)) goto done;
        ref_row = malloc(sizeof(float) * (size_t)V);
        kl_values = malloc(sizeof(float) * (size_t)pl->n_scored);
        if (!ref_row || !kl_values) goto oom;
        r->has_ref = 1;
    }
    if (!(s = state_create(m, pl->ctx, ferr, sizeof ferr))) goto forward_failed;
    if (p->save_path) {
        ppl_logfile_header h = {(uint32_t)V, (uint32_t)pl->ctx, (uint32_t)pl->n_chunks, (uint64_t)pl->n_scored,
                                ppl_tokens_hash(tokens, (size_t)pl->n_used)};
        if (!(save = ppl_logfile_create(p->save_path, &h, err, errlen))) goto done;
    }

    int64_t k = 0; /* scored positions so far */
    double t0 = util_now_seconds();
    for (int c = 0; c < pl->n_chunks; c++) {
        const int32_t *chunk = tokens + (size_t)c * pl->ctx;
        state_reset(s);
        /* context only: no logits wanted */
        if (model_forward(m, s, chunk, pl->first, NULL, 0, ferr, sizeof ferr)) goto forward_failed;
        for (int j = pl->first; j <= pl->ctx - 2; j += batch) {
            int nb = pl->ctx - 1 - j < batch ? pl->ctx - 1 - j : batch;
            if (model_forward(m, s, chunk + j, nb, logits, 1, ferr, sizeof ferr)) goto forward_failed;
            for (int b = 0; b < nb; b++, k++) {
                int32_t target = chunk[j + b + 1];
                if (ppl_log_softmax(logits + (size_t)b * V, V, cur) < 0) {
                    snprintf(err, errlen, "%s: non-finite logit at chunk %d, position %d", model_name, c, j + b);
                    goto done;
                }
                ppl_moments_add(&r->nll, -(double)cur[target]);
                if (save && ppl_logfile_write(save, target, cur, err, errlen)) goto done;
                if (ref) {
                    int32_t ref_target;
                    ppl_compare_row row;
                    if (ppl_logfile_read(ref, &ref_target, ref_row, err, errlen)) goto done;
                    if (ref_target != target) { /* checked before the run: only if the file changed since */
                        snprintf(err, errlen, "%s: record %" PRId64 " changed during the run", p->kld_path, k);
                        goto done;
                    }
                    if (ppl_compare(ref_row, cur, V, target, &row)) {
                        snprintf(err, errlen, "%s: record %" PRId64 " holds a NaN or infinite log-probability",
                                 p->kld_path, k);
                        goto done;
                    }
                    kl_values[k] = (float)row.kl;
                    ppl_moments_add(&r->kl, row.kl);
                    ppl_moments_add(&r->ref_nll, row.ref_nll);
                    ppl_moments_add(&r->nll_diff, row.cur_nll - row.ref_nll);
                    ppl_moments_add(&r->top1, row.ref_top == row.cur_top ? 1.0 : 0.0);
                    ppl_moments_add(&r->dp, row.cur_p - row.ref_p);
                }
            }
        }
        r->n_evaluated += pl->ctx - 1;
        if (p->on_chunk) p->on_chunk(p->user, c, pl->n_chunks, exp(r->nll.mean));
    }
    r->seconds = util_now_seconds() - t0;
    r->ppl = exp(r->nll.mean);
    r->ppl_se = r->ppl * ppl_moments_sem(&r->nll);
    if (ref) {
        r->ref_ppl = exp(r->ref_nll.mean);
        r->ref_ppl_se = r->ref_ppl * ppl_moments_sem(&r->ref_nll);
        ppl_sort(kl_values, (size_t)pl->n_scored);
        r->kl_median = ppl_percentile(kl_values, (size_t)pl->n_scored, 0.5);
        r->kl_p90 = ppl_percentile(kl_values, (size_t)pl->n_scored, 0.9);
        r->kl_p99 = ppl_percentile(kl_values, (size_t)pl->n_scored, 0.99);
        r->kl_max = kl_values[pl->n_scored - 1];
    }
    rc = ppl_logfile_close(save, err, errlen);
    save = NULL;
    if (rc && p->save_path) unlink(p->save_path);
    goto done;
forward_failed: /* the model's own message, with the model named */
    snprintf(err, errlen, "%s: %s", model_name, ferr);
    goto done;
oom:
    snprintf(err, errlen, "%s: out of memory for %d-token chunks", model_name, pl->ctx);
done:
    if (save) { /* failed part-way: the file would promise records it lacks */
        ppl_logfile_close(save, ferr, sizeof ferr);
        unlink(p->save_path);
    }
    ppl_logfile_close(ref, ferr, sizeof ferr); /* a reader's close has nothing to report */
    state_free(s);
    free(logits);
    free(cur);
    free(ref_row);
    free(kl_values);
    return rc;
}

int ppl_parse_ids(const char *name, const char *text, int32_t **ids, size_t *n, char *err, size_t errlen) {
    size_t count = 0, cap = 0;
    int32_t *a = NULL;
    const char *p = text;
    *ids = NULL;
    *n = 0;
    for (;;) {
        while (*p == ',' || isspace((unsigned char)*p)) p++;
        if (!*p) break;
        const char *start = p;
        int64_t v = 0;
        while (isdigit((unsigned char)*p) && v <= INT32_MAX) v = v * 10 + (*p++ - '0');
        if (p == start || v > INT32_MAX || (*p && *p != ',' && !isspace((unsigned char)*p))) {
            int len = 0;
            while (start[len] && start[len] != ',' && !isspace((unsigned char)start[len]) && len < 20) len++;
            snprintf(err, errlen, "%s: bad token id '%.*s' at byte %zu (ids are integers from 0 to %d, "
                     "separated by spaces or commas)", name, len, start, (size_t)(start - text), INT32_MAX);
            free(a);
            return -1;
        }
        if (count == cap) {
            cap = cap ? 2 * cap : 1024;
            int32_t *na = realloc(a, sizeof *a * cap);
            if (!na) {
                snprintf(err, errlen, "%s: out of memory", name);
                free(a);
                return -1;
            }
            a = na;
        }
        a[count++] = (int32_t)v;
    }
    *ids = a;
    *n = count;
    return 0;
}
