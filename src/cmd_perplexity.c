/* `flashmoe perplexity`: perplexity of a model on a text, and KL divergence against a saved reference run.
 *
 *   flashmoe perplexity -m DIR -f TEXT [--ctx N] [--save-logits FILE | --kld FILE] [--ids-file] [--json] ...
 *
 * The method (llama.cpp's convention: chunks of ctx tokens, each from an empty state, the second half of each
 * chunk scored) and the --save-logits file format are described in perplexity.h, which does the work; this
 * file reads the input, loads the model and prints the results.
 *
 * --json prints one object on one line:
 *   model, experts_per_token, input, tokens (in the input), ctx (tokens per chunk), chunks, first_scored
 *   (first chunk position whose logits are scored), scored, evaluated (tokens run), seconds,
 *   tokens_per_second (evaluated / seconds), nll_mean, nll_se, ppl, ppl_se, [save_logits: the file],
 *   [kld: {file, ref_ppl, ref_ppl_se, ln_ppl_ratio, ln_ppl_ratio_se (paired), kl_mean, kl_se, kl_median,
 *          kl_p90, kl_p99, kl_max, top1_agreement, top1_agreement_se, delta_p_mean, delta_p_se}]
 * (natural logs; probabilities as fractions, not percent). */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "model.h"
#include "perplexity.h"
#include "tokenizer.h"
#include "util.h"

#define PPL_DEFAULT_CTX 512

typedef struct {
    const char *dir, *input, *save_path, *kld_path;
    model_opts mo;
    int ctx, max_chunks, ids_file, json;
} ppl_args;

static void perplexity_usage(FILE *f) {
    fprintf(f,
            "usage: flashmoe perplexity -m DIR -f FILE [--ctx N] [--save-logits OUT | --kld REF] [options]\n"
            "Perplexity of the model on a text, with its standard error; with --kld, how far the model's\n"
            "next-token distributions are from a reference run saved with --save-logits.\n"
            "\n"
            "Method (llama.cpp's perplexity convention): the tokens are cut into non-overlapping chunks of\n"
            "N tokens (a tail shorter than N is not used; a text shorter than N is one chunk of all its\n"
            "tokens). Each chunk starts from an empty state. Only its second half is scored: the logits at\n"
            "positions N/2 .. N-2 predict the tokens at N/2+1 .. N-1, so a chunk scores N-1-N/2 tokens\n"
            "(255 for N = 512). PPL = exp(mean NLL), +/- ppl * sd(NLL) / sqrt(n) (delta method).\n"
            "\n"
            "  -m, --model DIR            Hugging Face checkpoint directory\n"
            "  -f, --file FILE            text, tokenized with DIR/tokenizer.json (no special tokens);\n"
            "                             with --ids-file, or a name ending in .ids: token ids separated by\n"
            "                             spaces, newlines or commas\n"
            "  --ids-file                 FILE holds token ids, not text\n"
            "  --ctx N                    tokens per chunk, at least 3 (default %d)\n"
            "  --max-chunks N             score at most N chunks (default: all)\n"
            "  --save-logits OUT          write every scored position's log-probabilities to OUT, for a\n"
            "                             later --kld (4 + 4 x vocab bytes per scored position)\n"
            "  --kld REF                  compare with REF, written by --save-logits from the same tokens,\n"
            "                             --ctx and --max-chunks: KL(ref || this model) per position (mean,\n"
            "                             median, 90th, 99th percentile, max), top-1 agreement, mean change of\n"
            "                             the true token's probability, and both perplexities\n"
            "  --json                     print one JSON object instead of the summary\n"
            "  --experts-per-token K      experts used per token (default: the model's own)\n"
            "  -t, --threads N            threads (default 1)\n"
            "\n"
            "--save-logits file (little-endian): \"FMOELOGP\", u32 version 1, u32 vocab, u32 ctx, u32 chunks,\n"
            "u64 positions, u64 FNV-1a hash of the tokens used; then per scored position: i32 target token\n"
            "id, f32 log_softmax(logits)[vocab].\n",
            PPL_DEFAULT_CTX);
}

/* Returns 0 to run, 1 after --help, 2 on a usage error (reported). */
static int ppl_args_parse(ppl_args *a, int argc, char **argv) {
    const char *cmd = "perplexity", *v;
    memset(a, 0, sizeof *a);
    a->ctx = PPL_DEFAULT_CTX;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            perplexity_usage(stdout);
            return 1;
        } else if (!strcmp(s, "-m") || !strcmp(s, "--model")) {
            if (!(a->dir = cli_value(cmd, argc, argv, &i))) return 2;
        } else if (!strcmp(s, "-f") || !strcmp(s, "--file")) {
            if (!(a->input = cli_value(cmd, argc, argv, &i))) return 2;
        } else if (!strcmp(s, "--save-logits")) {
            if (!(a->save_path = cli_value(cmd, argc, argv, &i))) return 2;
        } else if (!strcmp(s, "--kld")) {
            if (!(a->kld_path = cli_value(cmd, argc, argv, &i))) return 2;
        } else if (!strcmp(s, "--ctx")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, s, v, 3, 1 << 24, &a->ctx)) return 2;
        } else if (!strcmp(s, "--max-chunks")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, s, v, 1, INT32_MAX, &a->max_chunks)) return 2;
        } else if (!strcmp(s, "--experts-per-token")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, s, v, 1, 1 << 20, &a->mo.top_k)) return 2;
        } else if (!strcmp(s, "--threads") || !strcmp(s, "-t")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, s, v, 1, 1024, &a->mo.threads)) return 2;
        } else if (!strcmp(s, "--ids-file")) {
            a->ids_file = 1;
        } else if (!strcmp(s, "--json")) {
            a->json = 1;
        } else {
            fprintf(stderr, "flashmoe perplexity: unknown option '%s' (see flashmoe perplexity --help)\n", s);
            return 2;
        }
    }
    if (!a->dir || !a->input) {
        fprintf(stderr, "flashmoe perplexity: -m DIR and -f FILE are required\n");
        return 2;
    }
    if (a->save_path && a->kld_path) {
        fprintf(stderr, "flashmoe perplexity: --save-logits and --kld are exclusive (save a reference run first)\n");
        return 2;
    }
    size_t len = strlen(a->input);
    if (len >= 4 && !strcmp(a->input + len - 4, ".ids")) a->ids_file = 1;
    return 0;
}

/* The input file as token ids: parsed, or tokenized with DIR/tokenizer.json. Returns 0, or -1 with err. */
static int input_read(const ppl_args *a, int32_t **ids, size_t *n, char *err, size_t errlen) {
    size_t len;
    char *text = util_read_file(a->input, &len, err, errlen);
    if (!text) return -1;
    int rc = -1;
    tokenizer *tok = NULL;
    if (a->ids_file) {
        rc = ppl_parse_ids(a->input, text, ids, n, err, errlen);
    } else {
        char path[4096];
        if (util_path_join(path, sizeof path, a->dir, "tokenizer.json")) {
            snprintf(err, errlen, "%s: path too long", a->dir);
        } else if (!util_file_exists(path)) {
            snprintf(err, errlen, "%s/tokenizer.json: not found (for a model without a tokenizer, give token ids "
                     "with --ids-file)", a->dir);
        } else if ((tok = tokenizer_load(path, err, errlen))) {
            if (tokenizer_encode(tok, text, len, 0, ids, n))
                snprintf(err, errlen, "%s: %s", a->input, tokenizer_error(tok));
            else
                rc = 0;
        }
    }
    tokenizer_free(tok);
    free(text);
    if (rc == 0 && *n == 0) {
        snprintf(err, errlen, "%s: %s", a->input, a->ids_file ? "no token ids" : "empty text (no tokens)");
        rc = -1;
    }
    return rc;
}

typedef struct {
    int shown; /* a progress line is on the terminal */
} progress;

static void progress_chunk(void *user, int chunk, int n_chunks, double ppl) {
    progress *pr = user;
    fprintf(stderr, "\rchunk %d/%d: perplexity so far %.4f", chunk + 1, n_chunks, ppl);
    fflush(stderr);
    pr->shown = 1;
}

static void summary_print(const ppl_args *a, const model *m, size_t n_tokens, const ppl_result *r) {
    const ppl_plan *pl = &r->plan;
    printf("model       %s (experts per token: %d)\n", a->dir, m->top_k);
    printf("input       %s: %zu tokens; %d chunk%s of %d used, %" PRId64 " tokens scored (positions %d..%d of each "
           "chunk predict the next)\n",
           a->input, n_tokens, pl->n_chunks, pl->n_chunks == 1 ? "" : "s", pl->ctx, pl->n_scored, pl->first,
           pl->ctx - 2);
    printf("perplexity  %.4f +/- %.4f  (mean NLL %.5f +/- %.5f nats)\n", r->ppl, r->ppl_se, r->nll.mean,
           ppl_moments_sem(&r->nll));
    printf("speed       %" PRId64 " tokens in %.2f s: %.2f tokens/s\n", r->n_evaluated, r->seconds,
           r->seconds > 0 ? (double)r->n_evaluated / r->seconds : 0.0);
    if (a->save_path)
        printf("saved       %s: %" PRId64 " positions x %d log-probabilities\n", a->save_path, pl->n_scored,
               m->cfg.vocab_size);
    if (!r->has_ref) return;
    printf("reference   %s: perplexity %.4f +/- %.4f\n", a->kld_path, r->ref_ppl, r->ref_ppl_se);
    printf("ln(PPL/ref) %.6f +/- %.6f\n", r->nll_diff.mean, ppl_moments_sem(&r->nll_diff));
    printf("KL(ref||this) mean %.6f +/- %.6f; median %.6f, p90 %.6f, p99 %.6f, max %.6f\n", r->kl.mean,
           ppl_moments_sem(&r->kl), r->kl_median, r->kl_p90, r->kl_p99, r->kl_max);
    printf("top-1 agreement %.3f%% +/- %.3f%%\n", 100 * r->top1.mean, 100 * ppl_moments_sem(&r->top1));
    printf("mean delta p(true token) %+.4f%% +/- %.4f%%\n", 100 * r->dp.mean, 100 * ppl_moments_sem(&r->dp));
}

static int json_print(const ppl_args *a, const model *m, size_t n_tokens, const ppl_result *r) {
    const ppl_plan *pl = &r->plan;
    cJSON *o = cJSON_CreateObject(), *k = NULL;
    if (!o) return -1;
    cJSON_AddStringToObject(o, "model", a->dir);
    cJSON_AddNumberToObject(o, "experts_per_token", m->top_k);
    cJSON_AddStringToObject(o, "input", a->input);
    cJSON_AddNumberToObject(o, "tokens", (double)n_tokens);
    cJSON_AddNumberToObject(o, "ctx", pl->ctx);
    cJSON_AddNumberToObject(o, "chunks", pl->n_chunks);
    cJSON_AddNumberToObject(o, "first_scored", pl->first);
    cJSON_AddNumberToObject(o, "scored", (double)pl->n_scored);
    cJSON_AddNumberToObject(o, "evaluated", (double)r->n_evaluated);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    cJSON_AddNumberToObject(o, "tokens_per_second", r->seconds > 0 ? (double)r->n_evaluated / r->seconds : 0.0);
    cJSON_AddNumberToObject(o, "nll_mean", r->nll.mean);
    cJSON_AddNumberToObject(o, "nll_se", ppl_moments_sem(&r->nll));
    cJSON_AddNumberToObject(o, "ppl", r->ppl);
    cJSON_AddNumberToObject(o, "ppl_se", r->ppl_se);
    if (a->save_path) cJSON_AddStringToObject(o, "save_logits", a->save_path);
    if (r->has_ref) {
        k = cJSON_AddObjectToObject(o, "kld");
        cJSON_AddStringToObject(k, "file", a->kld_path);
        cJSON_AddNumberToObject(k, "ref_ppl", r->ref_ppl);
        cJSON_AddNumberToObject(k, "ref_ppl_se", r->ref_ppl_se);
        cJSON_AddNumberToObject(k, "ln_ppl_ratio", r->nll_diff.mean);
        cJSON_AddNumberToObject(k, "ln_ppl_ratio_se", ppl_moments_sem(&r->nll_diff));
        cJSON_AddNumberToObject(k, "kl_mean", r->kl.mean);
        cJSON_AddNumberToObject(k, "kl_se", ppl_moments_sem(&r->kl));
        cJSON_AddNumberToObject(k, "kl_median", r->kl_median);
        cJSON_AddNumberToObject(k, "kl_p90", r->kl_p90);
        cJSON_AddNumberToObject(k, "kl_p99", r->kl_p99);
        cJSON_AddNumberToObject(k, "kl_max", r->kl_max);
        cJSON_AddNumberToObject(k, "top1_agreement", r->top1.mean);
        cJSON_AddNumberToObject(k, "top1_agreement_se", ppl_moments_sem(&r->top1));
        cJSON_AddNumberToObject(k, "delta_p_mean", r->dp.mean);
        cJSON_AddNumberToObject(k, "delta_p_se", ppl_moments_sem(&r->dp));
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return -1;
    printf("%s\n", s);
    free(s);
    return 0;
}

int cmd_perplexity(int argc, char **argv) {
    ppl_args a;
    int r = ppl_args_parse(&a, argc, argv);
    if (r) return r == 1 ? 0 : 2;

    char err[1024];
    int32_t *ids = NULL;
    size_t n = 0;
    model *m = NULL;
    int rc = 1;
    if (input_read(&a, &ids, &n, err, sizeof err)) goto fail;
    ppl_plan plan; /* checked here, before loading anything, to name the input if it is too short */
    char why[512];
    if (ppl_plan_make(&plan, n, a.ctx, a.max_chunks, why, sizeof why)) {
        snprintf(err, sizeof err, "%s: %s", a.input, why);
        goto fail;
    }
    a.mo.plan_ctx = a.ctx;
    if (!(m = model_load(a.dir, &a.mo, err, sizeof err))) goto fail;
    if (m->io_note[0]) fprintf(stderr, "flashmoe perplexity: %s\n", m->io_note);
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= m->cfg.vocab_size) {
            snprintf(err, sizeof err, "%s: token id %d at index %zu is out of range (vocabulary of %d)", a.input,
                     ids[i], i, m->cfg.vocab_size);
            goto fail;
        }
    progress pr = {0};
    ppl_params p = {.ctx = a.ctx, .max_chunks = a.max_chunks, .save_path = a.save_path, .kld_path = a.kld_path};
    if (isatty(STDERR_FILENO)) {
        p.on_chunk = progress_chunk;
        p.user = &pr;
    }
    ppl_result res;
    int run_rc = ppl_run(m, a.dir, ids, n, &p, &res, err, sizeof err);
    if (pr.shown) fputc('\n', stderr);
    if (run_rc) goto fail;
    if (!a.json) {
        summary_print(&a, m, n, &res);
    } else if (json_print(&a, m, n, &res)) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "flashmoe perplexity: %s\n", err);
done:
    model_free(m);
    free(ids);
    return rc;
}
