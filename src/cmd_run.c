/* `flashmoe run` (generate) and `flashmoe logits` (score every position). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "model.h"
#include "sampler.h"
#include "util.h"

#define DEFAULT_CTX 4096

static int engine_open(const char *cmd, engine_args *ea, model **m, state **s, int need_ctx) {
    char err[1024];
    if (!ea->dir) {
        fprintf(stderr, "flashmoe %s: -m DIR is required\n", cmd);
        return -1;
    }
    if (!(*m = model_load(ea->dir, &ea->mo, err, sizeof err))) {
        fprintf(stderr, "flashmoe %s: %s\n", cmd, err);
        return -1;
    }
    int ctx = ea->ctx ? ea->ctx : (need_ctx > DEFAULT_CTX ? need_ctx : DEFAULT_CTX);
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
            "usage: flashmoe run -m DIR --prompt-ids IDS [-n N] [options]\n"
            "Generates up to N tokens after the prompt and prints their ids on one line.\n\n"
            "  --prompt-ids IDS           prompt token ids, e.g. 1,2,3\n"
            "  -n N                       tokens to generate (default 64)\n"
            "  --ids                      print token ids (the only output until a tokenizer is loaded)\n"
            "  --ignore-eos               keep generating past end-of-sequence ids\n"
            "  --temp T                   temperature; 0 = greedy (default 0)\n"
            "  --top-k K, --top-p P, --min-p P, --repeat-penalty R, --presence-penalty P,\n"
            "  --frequency-penalty P, --seed S   sampling options\n" CLI_ENGINE_HELP);
}

int cmd_run(int argc, char **argv) {
    const char *cmd = "run", *v;
    engine_args ea = {0};
    sampler_params sp = sampler_params_default();
    sp.temperature = 0.0f;
    int n_gen = 64, ignore_eos = 0, n_prompt = 0;
    int32_t *prompt = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_engine_arg(cmd, &ea, argc, argv, &i);
        if (r < 0) goto fail;
        if (r > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            run_usage(stdout);
            free(prompt);
            return 0;
        } else if (!strcmp(a, "--prompt-ids")) {
            free(prompt);
            prompt = NULL;
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_ids(cmd, a, v, &prompt, &n_prompt)) goto fail;
        } else if (!strcmp(a, "-n")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1 << 24, &n_gen)) goto fail;
        } else if (!strcmp(a, "--ids")) {
            /* ids are the output format */
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = 1;
        } else if (!strcmp(a, "--temp")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_float(cmd, a, v, 0, 100, &sp.temperature)) goto fail;
        } else if (!strcmp(a, "--top-k")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1 << 30, &sp.top_k)) goto fail;
        } else if (!strcmp(a, "--top-p")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_float(cmd, a, v, 0, 1, &sp.top_p)) goto fail;
        } else if (!strcmp(a, "--min-p")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_float(cmd, a, v, 0, 1, &sp.min_p)) goto fail;
        } else if (!strcmp(a, "--repeat-penalty")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_float(cmd, a, v, 1e-6, 100, &sp.repeat_penalty))
                goto fail;
        } else if (!strcmp(a, "--presence-penalty")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_float(cmd, a, v, -100, 100, &sp.presence_penalty))
                goto fail;
        } else if (!strcmp(a, "--frequency-penalty")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_float(cmd, a, v, -100, 100, &sp.frequency_penalty))
                goto fail;
        } else if (!strcmp(a, "--seed")) {
            int seed;
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 2147483647, &seed)) goto fail;
            sp.seed = (uint64_t)seed;
        } else {
            fprintf(stderr, "flashmoe run: unknown option '%s' (see flashmoe run --help)\n", a);
            goto fail;
        }
    }
    if (!prompt) {
        fprintf(stderr, "flashmoe run: --prompt-ids is required\n");
        goto fail;
    }
    model *m;
    state *s;
    if (engine_open(cmd, &ea, &m, &s, n_prompt + n_gen)) goto fail;
    char err[1024];
    int rc = 1, V = m->cfg.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)V);
    sampler *smp = NULL;
    sampler_status st = sampler_create(&smp, V, &sp);
    if (!logits || st != SAMPLER_OK) {
        fprintf(stderr, "flashmoe run: %s\n", logits ? sampler_status_string(st) : "out of memory");
        goto done;
    }
    for (int i = 0; i < n_prompt; i++) sampler_accept(smp, prompt[i]);
    double t_start = util_now_seconds();
    if (model_forward(m, s, prompt, n_prompt, logits, 0, err, sizeof err)) {
        fprintf(stderr, "flashmoe run: %s: %s\n", ea.dir, err);
        goto done;
    }
    for (int t = 0; t < n_gen; t++) {
        int32_t id = sampler_sample(smp, logits);
        sampler_accept(smp, id);
        printf(t ? " %d" : "%d", id);
        fflush(stdout);
        if ((!ignore_eos && is_eos(m, id)) || t + 1 == n_gen) break;
        if (model_forward(m, s, &id, 1, logits, 0, err, sizeof err)) {
            printf("\n");
            fprintf(stderr, "flashmoe run: %s: %s\n", ea.dir, err);
            goto done;
        }
    }
    printf("\n");
    if (ea.timing) state_timing_report(s, util_now_seconds() - t_start, stderr);
    rc = 0;
done:
    sampler_free(smp);
    free(logits);
    state_free(s);
    model_free(m);
    free(prompt);
    return rc;
fail:
    free(prompt);
    return 2;
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
