/* `flashmoe run` (generate) and `flashmoe logits` (score every position). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "model.h"
#include "sampler.h"
#include "stopstr.h"
#include "tokenizer.h"
#include "util.h"

#define DEFAULT_CTX 4096

static int engine_open(const char *cmd, engine_args *ea, model **m, state **s, int need_ctx) {
    char err[1024];
    if (!ea->dir) {
        fprintf(stderr, "flashmoe %s: -m DIR is required\n", cmd);
        return -1;
    }
    int ctx = ea->ctx ? ea->ctx : (need_ctx > DEFAULT_CTX ? need_ctx : DEFAULT_CTX);
    ea->mo.plan_ctx = ctx;
    if (!(*m = model_load(ea->dir, &ea->mo, err, sizeof err))) {
        fprintf(stderr, "flashmoe %s: %s\n", cmd, err);
        return -1;
    }
    if ((*m)->io_note[0]) fprintf(stderr, "flashmoe %s: %s\n", cmd, (*m)->io_note);
    if (!(*s = state_create(*m, ctx, err, sizeof err))) {
        fprintf(stderr, "flashmoe %s: %s\n", cmd, err);
        model_free(*m);
        return -1;
    }
    state_set_timing(*s, ea->timing);
    return 0;
}

static int is_eos(const model *m, int id) {
    for (int i = 0; i < m->cfg.n_eos; i++)
        if (m->cfg.eos_ids[i] == id) return 1;
    return 0;
}

static void run_usage(FILE *f) {
    fprintf(f,
            "usage: flashmoe run -m DIR (-p TEXT | --prompt-ids IDS) [-n N] [options]\n"
            "Generates up to N tokens after the prompt. Output is text when DIR has a tokenizer.json and\n"
            "--ids is not given; otherwise the generated ids, space-separated on one line.\n\n"
            "  -p, --prompt TEXT          prompt text (encoded with DIR/tokenizer.json)\n"
            "  -f, --file FILE            prompt text from a file\n"
            "  --special                  recognise special-token strings (<|im_start|>...) in the prompt\n"
            "  --prompt-ids IDS           prompt token ids, e.g. 1,2,3\n"
            "  -n N                       tokens to generate (default 64)\n"
            "  --ids                      print token ids instead of text\n"
            "  --ignore-eos               keep generating past end-of-sequence ids\n"
            "  --stop STR                 stop when the text contains STR (repeatable)\n"
            "  --temp T                   temperature; 0 = greedy (default 0)\n"
            "  --top-k K, --top-p P, --min-p P, --repeat-penalty R, --presence-penalty P,\n"
            "  --frequency-penalty P, --seed S   sampling options\n" CLI_ENGINE_HELP);
}

#define RUN_MAX_STOPS 16

typedef struct {
    engine_args ea;
    sampler_params sp;
    int n_gen, ignore_eos, ids_out, special;
    int32_t *prompt;
    int n_prompt;
    const char *text, *file;
    const char *stops[RUN_MAX_STOPS];
    int n_stops;
} run_args;

/* 0 ok, 1 help printed, -1 error printed */
static int run_parse(run_args *ra, int argc, char **argv) {
    const char *cmd = "run", *v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_engine_arg(cmd, &ra->ea, argc, argv, &i);
        if (r < 0) return -1;
        if (r > 0) continue;
        if ((r = cli_sampler_arg(cmd, &ra->sp, NULL, argc, argv, &i)) < 0) return -1;
        if (r > 0) continue;
#define VAL() (v = cli_value(cmd, argc, argv, &i))
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            run_usage(stdout);
            return 1;
        } else if (!strcmp(a, "--prompt-ids")) {
            free(ra->prompt);
            ra->prompt = NULL;
            if (!VAL() || cli_ids(cmd, a, v, &ra->prompt, &ra->n_prompt)) return -1;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!(ra->text = VAL())) return -1;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (!(ra->file = VAL())) return -1;
        } else if (!strcmp(a, "--special")) {
            ra->special = 1;
        } else if (!strcmp(a, "-n")) {
            if (!VAL() || cli_int(cmd, a, v, 0, 1 << 24, &ra->n_gen)) return -1;
        } else if (!strcmp(a, "--ids")) {
            ra->ids_out = 1;
        } else if (!strcmp(a, "--ignore-eos")) {
            ra->ignore_eos = 1;
        } else if (!strcmp(a, "--stop")) {
            if (!VAL()) return -1;
            if (!*v || ra->n_stops == RUN_MAX_STOPS) {
                fprintf(stderr, "flashmoe run: --stop needs a non-empty string (at most %d)\n", RUN_MAX_STOPS);
                return -1;
            }
            ra->stops[ra->n_stops++] = v;
        } else {
            fprintf(stderr, "flashmoe run: unknown option '%s' (see flashmoe run --help)\n", a);
            return -1;
        }
#undef VAL
    }
    if (!!ra->prompt + !!ra->text + !!ra->file != 1) {
        fprintf(stderr, "flashmoe run: give exactly one of -p TEXT, -f FILE or --prompt-ids IDS\n");
        return -1;
    }
    return 0;
}

/* The tokenizer of DIR, if it has one (NULL and no error when absent; NULL with err when broken). */
static tokenizer *open_tokenizer(const char *dir, int required, char *err, size_t errlen) {
    char path[4096];
    err[0] = 0;
    if (util_path_join(path, sizeof path, dir, "tokenizer.json") || !util_file_exists(path)) {
        if (required) snprintf(err, errlen, "%s: no tokenizer.json (give --prompt-ids instead)", dir);
        return NULL;
    }
    return tokenizer_load(path, err, errlen);
}

/* Prints generated text as it completes: whole UTF-8 characters only, stop strings held back. */
typedef struct {
    tokdec_stream *dec;
    stopstr *stop;
    int stopped;
} text_out;

static void text_emit(text_out *o, const char *piece, size_t len) {
    const char *out;
    size_t n;
    if (o->stopped || !len) return;
    if (o->stop) {
        if (stopstr_feed(o->stop, piece, len, &out, &n) == STOPSTR_HIT) o->stopped = 1;
        fwrite(out, 1, n, stdout);
    } else {
        fwrite(piece, 1, len, stdout);
    }
    fflush(stdout);
}

int cmd_run(int argc, char **argv) {
    run_args ra = {.sp = sampler_params_default(), .n_gen = 64};
    ra.sp.temperature = 0.0f;
    int pr = run_parse(&ra, argc, argv);
    if (pr) {
        free(ra.prompt);
        return pr > 0 ? 0 : 2;
    }
    char err[8192];
    int rc = 1;
    model *m = NULL;
    state *s = NULL;
    float *logits = NULL;
    sampler *smp = NULL;
    text_out to = {0};
    tokenizer *tok = NULL;
    if (!ra.ea.dir) {
        fprintf(stderr, "flashmoe run: -m DIR is required\n");
        goto done;
    }
    tok = open_tokenizer(ra.ea.dir, ra.text || ra.file, err, sizeof err);
    if (!tok && err[0]) {
        fprintf(stderr, "flashmoe run: %s\n", err);
        goto done;
    }
    if (ra.text || ra.file) {
        size_t len, n;
        char *owned = NULL;
        const char *text = ra.text;
        if (ra.file && !(text = owned = util_read_file(ra.file, &len, err, sizeof err))) {
            fprintf(stderr, "flashmoe run: %s\n", err);
            goto done;
        }
        int bad = tokenizer_encode(tok, text, strlen(text), ra.special, &ra.prompt, &n);
        free(owned);
        if (bad || n == 0) {
            fprintf(stderr, "flashmoe run: %s\n", bad ? tokenizer_error(tok) : "the prompt is empty");
            goto done;
        }
        ra.n_prompt = (int)n;
    }
    int text_mode = tok && !ra.ids_out;
    if (engine_open("run", &ra.ea, &m, &s, ra.n_prompt + ra.n_gen)) goto done;
    int V = m->cfg.vocab_size;
    logits = malloc(sizeof(float) * (size_t)V);
    sampler_status st = sampler_create(&smp, V, &ra.sp);
    if (!logits || st != SAMPLER_OK) {
        fprintf(stderr, "flashmoe run: %s\n", logits ? sampler_status_string(st) : "out of memory");
        goto done;
    }
    if (text_mode && (!(to.dec = tokdec_stream_new(tok)) ||
                      (ra.n_stops && stopstr_create(&to.stop, ra.stops, ra.n_stops) != STOPSTR_OK))) {
        fprintf(stderr, "flashmoe run: out of memory\n");
        goto done;
    }
    for (int i = 0; i < ra.n_prompt; i++) sampler_accept(smp, ra.prompt[i]);
    double t_start = util_now_seconds();
    if (model_forward(m, s, ra.prompt, ra.n_prompt, logits, 0, err, sizeof err)) {
        fprintf(stderr, "flashmoe run: %s: %s\n", ra.ea.dir, err);
        goto done;
    }
    for (int t = 0; t < ra.n_gen && !to.stopped; t++) {
        int32_t id = sampler_sample(smp, logits);
        sampler_accept(smp, id);
        int eos = !ra.ignore_eos && is_eos(m, id);
        if (!text_mode) {
            printf(t ? " %d" : "%d", id);
            fflush(stdout);
        } else if (!eos) {
            size_t len;
            const char *piece = tokdec_stream_push(to.dec, id, &len);
            if (piece) text_emit(&to, piece, len);
        }
        if (eos || t + 1 == ra.n_gen) break;
        if (model_forward(m, s, &id, 1, logits, 0, err, sizeof err)) {
            printf("\n");
            fprintf(stderr, "flashmoe run: %s: %s\n", ra.ea.dir, err);
            goto done;
        }
    }
    if (text_mode) {
        size_t len;
        const char *rest = tokdec_stream_flush(to.dec, &len);
        text_emit(&to, rest, len);
        if (to.stop && !to.stopped) {
            stopstr_flush(to.stop, &rest, &len);
            fwrite(rest, 1, len, stdout);
        }
    }
    printf("\n");
    if (ra.ea.timing) state_timing_report(s, util_now_seconds() - t_start, stderr);
    rc = 0;
done:
    stopstr_free(to.stop);
    tokdec_stream_free(to.dec);
    tokenizer_free(tok);
    sampler_free(smp);
    free(logits);
    state_free(s);
    model_free(m);
    free(ra.prompt);
    return rc;
}

static void logits_usage(FILE *f) {
    fprintf(f,
            "usage: flashmoe logits -m DIR --tokens IDS -o FILE [options]\n"
            "Runs the tokens and writes little-endian float32 logits [n_tokens x vocab], one row per position.\n\n"
            "  --tokens IDS               token ids, e.g. 1,2,3\n"
            "  -o FILE                    output file\n" CLI_ENGINE_HELP);
}

int cmd_logits(int argc, char **argv) {
    const char *cmd = "logits", *v, *out_path = NULL;
    engine_args ea = {0};
    int32_t *tokens = NULL;
    int n = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_engine_arg(cmd, &ea, argc, argv, &i);
        if (r < 0) goto fail;
        if (r > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            logits_usage(stdout);
            free(tokens);
            return 0;
        } else if (!strcmp(a, "--tokens")) {
            free(tokens);
            tokens = NULL;
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_ids(cmd, a, v, &tokens, &n)) goto fail;
        } else if (!strcmp(a, "-o")) {
            if (!(out_path = cli_value(cmd, argc, argv, &i))) goto fail;
        } else {
            fprintf(stderr, "flashmoe logits: unknown option '%s' (see flashmoe logits --help)\n", a);
            goto fail;
        }
    }
    if (!tokens || !out_path) {
        fprintf(stderr, "flashmoe logits: --tokens and -o are required\n");
        goto fail;
    }
    model *m;
    state *s;
    if (engine_open(cmd, &ea, &m, &s, n)) goto fail;
    int rc = 1, V = m->cfg.vocab_size;
    char err[1024];
    float *logits = malloc(sizeof(float) * (size_t)V);
    FILE *f = NULL;
    if (!logits) {
        fprintf(stderr, "flashmoe logits: out of memory\n");
        goto done;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] >= V) {
            fprintf(stderr, "flashmoe logits: %s: token id %d is out of range (vocabulary of %d)\n", ea.dir,
                    tokens[i], V);
            goto done;
        }
    if (!(f = fopen(out_path, "wb"))) {
        fprintf(stderr, "flashmoe logits: %s: cannot create: %s\n", out_path, strerror(errno));
        goto done;
    }
    double t_start = util_now_seconds();
    for (int i = 0; i < n; i++) { /* one row at a time: memory stays [vocab], whatever n is */
        if (model_forward(m, s, &tokens[i], 1, logits, 0, err, sizeof err)) {
            fprintf(stderr, "flashmoe logits: %s: %s\n", ea.dir, err);
            goto done;
        }
        if (fwrite(logits, sizeof(float), (size_t)V, f) != (size_t)V) {
            fprintf(stderr, "flashmoe logits: %s: write failed: %s\n", out_path, strerror(errno));
            goto done;
        }
    }
    if (fclose(f)) {
        f = NULL;
        fprintf(stderr, "flashmoe logits: %s: write failed: %s\n", out_path, strerror(errno));
        goto done;
    }
    f = NULL;
    if (ea.timing) state_timing_report(s, util_now_seconds() - t_start, stderr);
    rc = 0;
done:
    if (f) fclose(f);
    free(logits);
    state_free(s);
    model_free(m);
    free(tokens);
    return rc;
fail:
    free(tokens);
    return 2;
}
