/* Perplexity and KL divergence of a model on a token stream, and the log-probability file that carries a
 * reference run to a later comparison.
 *
 * Method (llama.cpp's `perplexity` convention, so numbers are comparable):
 *   - the tokens are cut into n_chunks = n_tokens / ctx non-overlapping chunks of ctx tokens; a tail shorter
 *     than ctx is not used; a text shorter than ctx is one chunk of all its tokens (ctx = n_tokens);
 *   - each chunk starts from an empty state (no context carried over);
 *   - with first = ctx / 2, the logits at chunk positions j = first .. ctx-2 are scored against the token at
 *     j+1, so each chunk scores ctx - 1 - first tokens (255 with ctx 512); the first half only gives context.
 *     The chunk's last token is only a target: nothing after it is scored, so it is never run;
 *   - NLL_i = -log p(token_{j+1} | tokens_0..j), from a log-softmax computed in double and rounded to float
 *     (the same float values that --save-logits stores, so a comparison against a file is exact);
 *     perplexity = exp(mean NLL); its standard error by the delta method: SE(ppl) = ppl * SE(mean NLL),
 *     SE(mean NLL) = sd(NLL) / sqrt(n), sd with n - 1 (llama.cpp: sqrt((<x^2> - <x>^2) / (n - 1)), the same).
 *
 * Comparison with a reference file (KL divergence, per scored position, summed in double):
 *   KL(ref || cur) = sum_v p_ref(v) (log p_ref(v) - log p_cur(v)), both distributions renormalised in double
 *   from their float log-probabilities (so KL >= 0 up to double rounding, and exactly 0 for identical rows);
 *   top-1 agreement: argmax_v log p_ref == argmax_v log p_cur (lowest index on ties);
 *   delta p: p_cur(true token) - p_ref(true token);
 *   ln(ppl / ref ppl) = mean(NLL_cur - NLL_ref), with the standard error of the paired differences.
 *   Every mean comes with sd / sqrt(n); percentiles of per-position KL interpolate linearly between order
 *   statistics (numpy's default): q-th percentile = sorted[(n - 1) q], interpolated.
 *
 * Log-probability file (--save-logits / --kld), little-endian, written one record per scored position as the
 * run goes (never held in memory):
 *
 *   offset  size  field
 *   0       8     magic "FMOELOGP"
 *   8       4     u32 version = 1
 *   12      4     u32 vocab: floats per record
 *   16      4     u32 ctx: tokens per chunk (after shortening to a short text)
 *   20      4     u32 n_chunks
 *   24      8     u64 n_positions = n_chunks * (ctx - 1 - ctx / 2): records that follow
 *   32      8     u64 tokens_hash: 64-bit FNV-1a of the n_chunks * ctx token ids used, each as 4 little-endian
 *                   bytes (so that a different text is caught even where it differs only in context tokens)
 *   40      ...   n_positions records, in scoring order (chunk by chunk, position by position), each
 *                   i32 token: the id that followed (the target of this position)
 *                   f32 logp[vocab]: natural-log probabilities, log_softmax(logits) over the vocabulary
 *
 * A record is 4 + 4 * vocab bytes (about 1 MB with a 248k vocabulary: 255 MB per 512-token chunk). The file
 * size must be exactly 40 + n_positions * (4 + 4 * vocab); ppl_logfile_open checks it, so a truncated file is
 * reported before any model runs. */
#ifndef FLASHMOE_PERPLEXITY_H
#define FLASHMOE_PERPLEXITY_H
#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* ---- statistics ---- */

/* log_softmax of n logits into logp (float), with the log-sum-exp in double after subtracting the max.
 * Returns the index of the largest logit (lowest on ties), or -1 if a logit is NaN or infinite. */
int ppl_log_softmax(const float *logits, int n, float *logp);

/* Mean and spread of a stream of values (Welford: no cancellation, however long the stream). */
typedef struct {
    int64_t n;
    double mean;
    double m2; /* sum of squared deviations from the mean */
} ppl_moments;

void ppl_moments_add(ppl_moments *a, double x);
/* Sample standard deviation (n - 1); 0 with fewer than two values. */
double ppl_moments_sd(const ppl_moments *a);
/* Standard error of the mean, sd / sqrt(n); 0 with fewer than two values. */
double ppl_moments_sem(const ppl_moments *a);

/* One scored position compared with the reference (see the header comment for the definitions). */
typedef struct {
    double kl;               /* KL(ref || cur), nats */
    double ref_nll, cur_nll; /* -log p(true token) under each, after renormalisation */
    double ref_p, cur_p;     /* p(true token) */
    int ref_top, cur_top;    /* argmax */
} ppl_compare_row;

/* Compares two rows of n float log-probabilities at a position whose true next token is `token`.
 * Returns 0, or -1 if either row holds a NaN or +infinity or has no finite entry. */
int ppl_compare(const float *ref_logp, const float *cur_logp, int n, int token, ppl_compare_row *out);

/* Sorts values[0..n) ascending in place, for ppl_percentile. */
void ppl_sort(float *values, size_t n);
/* q in [0, 1] of sorted values[0..n), linearly interpolated between order statistics. */
double ppl_percentile(const float *sorted, size_t n, double q);

/* ---- the log-probability file ---- */

#define PPL_LOGFILE_MAGIC "FMOELOGP"
#define PPL_LOGFILE_VERSION 1u
#define PPL_LOGFILE_HEADER_BYTES 40

typedef struct {
    uint32_t vocab, ctx, n_chunks;
    uint64_t n_positions;
    uint64_t tokens_hash; /* ppl_tokens_hash of the tokens used */
} ppl_logfile_header;

/* 64-bit FNV-1a of n token ids, each as 4 little-endian bytes. */
uint64_t ppl_tokens_hash(const int32_t *tokens, size_t n);

typedef struct ppl_logfile ppl_logfile;

/* Creates (truncates) path and writes the header. NULL with "PATH: problem" in err. */
ppl_logfile *ppl_logfile_create(const char *path, const ppl_logfile_header *h, char *err, size_t errlen);
/* Appends one record. Returns 0, or -1 with "PATH: problem" (write failed, more records than promised). */
int ppl_logfile_write(ppl_logfile *f, int32_t token, const float *logp, char *err, size_t errlen);
/* Opens path for reading and checks magic, version, fields and the exact file size. */
ppl_logfile *ppl_logfile_open(const char *path, ppl_logfile_header *h, char *err, size_t errlen);
/* Target token of record i, read without moving the sequential position (pread). */
int ppl_logfile_token_at(ppl_logfile *f, uint64_t i, int32_t *token, char *err, size_t errlen);
/* Reads the next record in order into *token and logp[vocab]. */
int ppl_logfile_read(ppl_logfile *f, int32_t *token, float *logp, char *err, size_t errlen);
/* Closes. For a file being written, checks that every promised record was written and that the data
 * reached the file (fclose status); returns 0, or -1 with a message. f may be NULL. */
int ppl_logfile_close(ppl_logfile *f, char *err, size_t errlen);
const char *ppl_logfile_path(const ppl_logfile *f);

/* ---- a whole run ---- */

/* How n_tokens tokens are cut for a requested ctx: effective ctx, chunks, scored positions. Returns 0, or
 * -1 with a message if ctx < 3 or there are fewer than 3 tokens (a chunk of 2 scores nothing). */
typedef struct {
    int ctx, n_chunks, first; /* first: positions before this one in a chunk are context only */
    int64_t n_scored;         /* n_chunks * (ctx - 1 - first) */
    int64_t n_used;           /* n_chunks * ctx tokens of the stream */
} ppl_plan;

int ppl_plan_make(ppl_plan *p, size_t n_tokens, int ctx, int max_chunks, char *err, size_t errlen);

typedef struct {
    int ctx;              /* requested tokens per chunk (>= 3); shortened to a shorter stream */
    int max_chunks;       /* 0: every whole chunk */
    const char *save_path; /* write the log-probability file here (NULL: no) */
    const char *kld_path;  /* compare with this log-probability file (NULL: no) */
    /* called after each chunk with the results so far (NULL: not called) */
    void (*on_chunk)(void *user, int chunk, int n_chunks, double ppl_so_far);
    void *user;
} ppl_params;

typedef struct {
    ppl_plan plan;
    int64_t n_evaluated; /* tokens run through the model */
    double seconds;      /* wall time of the chunks (forward passes and scoring) */
    ppl_moments nll;     /* this model's NLL per scored token */
    double ppl, ppl_se;
    /* only with kld_path */
    int has_ref;
    ppl_moments ref_nll, nll_diff, kl, top1, dp;
    double ref_ppl, ref_ppl_se;
    double kl_median, kl_p90, kl_p99, kl_max;
} ppl_result;

/* Runs the model over tokens as described at the top, writing or comparing with a log-probability file.
 * Checks the reference file (vocab, ctx, chunks, every target token) before running anything. Allocates
 * its buffers once: logits for a batch of positions, two rows of log-probabilities and, with a reference,
 * one float per scored position for the KL percentiles. Returns 0, or -1 with a one-line message naming the
 * file (or the model directory `model_name`) and the problem; a partly written save file is removed. */
int ppl_run(model *m, const char *model_name, const int32_t *tokens, size_t n_tokens, const ppl_params *p,
            ppl_result *r, char *err, size_t errlen);

/* Token ids in text: non-negative integers separated by whitespace and/or commas. On error, err says
 * "NAME: problem" (the first bad item and its byte offset). Empty input gives *n = 0, *ids = NULL. */
int ppl_parse_ids(const char *name, const char *text, int32_t **ids, size_t *n, char *err, size_t errlen);

#endif
