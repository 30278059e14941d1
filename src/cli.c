#include "cli.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *cli_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "flashmoe %s: option %s needs a value\n", cmd, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int cli_int(const char *cmd, const char *flag, const char *v, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "flashmoe %s: %s needs an integer from %ld to %ld, got '%s'\n", cmd, flag, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

int cli_float(const char *cmd, const char *flag, const char *v, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "flashmoe %s: %s needs a number from %g to %g, got '%s'\n", cmd, flag, lo, hi, v);
        return -1;
    }
    *out = (float)x;
    return 0;
}

int cli_ids(const char *cmd, const char *flag, const char *v, int32_t **ids, int *n) {
    size_t cap = 16, count = 0;
    int32_t *a = malloc(sizeof *a * cap);
    const char *p = v;
    if (!a) goto oom;
    while (*p) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX || (*end && !strchr(", \t\n", *end))) {
            fprintf(stderr, "flashmoe %s: %s takes token ids like 1,2,3; bad id at '%.20s'\n", cmd, flag, p);
            free(a);
            return -1;
        }
        if (count == cap) {
            int32_t *na = realloc(a, sizeof *a * (cap *= 2));
            if (!na) goto oom;
            a = na;
        }
        a[count++] = (int32_t)x;
        p = end;
    }
    if (count == 0) {
        fprintf(stderr, "flashmoe %s: %s is empty\n", cmd, flag);
        free(a);
        return -1;
    }
    *ids = a;
    *n = (int)count;
    return 0;
oom:
    free(a);
    fprintf(stderr, "flashmoe %s: out of memory\n", cmd);
    return -1;
}

/* Options every model-running command takes. Returns 1 if argv[*i] was one, 0 if not, -1 on error. */
int cli_engine_arg(const char *cmd, engine_args *ea, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
        if (!(ea->dir = cli_value(cmd, argc, argv, i))) return -1;
    } else if (!strcmp(a, "--experts-per-token")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, 1, 1 << 20, &ea->mo.top_k)) return -1;
    } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, 1, 1024, &ea->mo.threads)) return -1;
    } else if (!strcmp(a, "--io")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        if (!strcmp(v, "auto")) ea->mo.io = EXPERTS_IO_AUTO;
        else if (!strcmp(v, "cache")) ea->mo.io = EXPERTS_IO_CACHE;
        else if (!strcmp(v, "direct")) ea->mo.io = EXPERTS_IO_DIRECT;
        else if (!strcmp(v, "mmap")) ea->mo.io = EXPERTS_IO_MMAP;
        else {
            fprintf(stderr, "flashmoe %s: --io takes auto, cache, direct or mmap, got '%s'\n", cmd, v);
            return -1;
        }
    } else if (!strcmp(a, "--cache-mb")) {
        int mb;
        if (!(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, 0, 1 << 30, &mb)) return -1;
        ea->mo.cache_bytes = (size_t)mb << 20;
        ea->mo.cache_given = 1;
    } else if (!strcmp(a, "--io-threads")) {
        ea->mo.io_threads_only = 1;
    } else if (!strcmp(a, "--prefetch")) {
        ea->mo.prefetch = MODEL_PREFETCH_ON;
    } else if (!strcmp(a, "--no-prefetch")) {
        ea->mo.prefetch = MODEL_PREFETCH_OFF;
    } else if (!strcmp(a, "--prefill-chunk")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, 1, 65536, &ea->mo.prefill_chunk)) return -1;
    } else if (!strcmp(a, "--timing")) {
        ea->timing = 1;
    } else if (!strcmp(a, "--ctx")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, 1, 1 << 24, &ea->ctx)) return -1;
    } else {
        return 0;
    }
    return 1;
}

int cli_sampler_arg(const char *cmd, sampler_params *sp, int *seed_given, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    static const struct {
        const char *flag;
        double lo, hi;
        size_t offset;
    } floats[] = {
        {"--temp", 0, 100, offsetof(sampler_params, temperature)},
        {"--top-p", 0, 1, offsetof(sampler_params, top_p)},
        {"--min-p", 0, 1, offsetof(sampler_params, min_p)},
        {"--repeat-penalty", 1e-6, 100, offsetof(sampler_params, repeat_penalty)},
        {"--presence-penalty", -100, 100, offsetof(sampler_params, presence_penalty)},
        {"--frequency-penalty", -100, 100, offsetof(sampler_params, frequency_penalty)},
    };
    for (size_t k = 0; k < sizeof floats / sizeof floats[0]; k++)
        if (!strcmp(a, floats[k].flag)) {
            float *dst = (float *)((char *)sp + floats[k].offset);
            return !(v = cli_value(cmd, argc, argv, i)) || cli_float(cmd, a, v, floats[k].lo, floats[k].hi, dst) ? -1 : 1;
        }
    if (!strcmp(a, "--top-k"))
        return !(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, 0, 1 << 30, &sp->top_k) ? -1 : 1;
    if (!strcmp(a, "--seed")) {
        int seed;
        if (!(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, 0, 2147483647, &seed)) return -1;
        sp->seed = (uint64_t)seed;
        if (seed_given) *seed_given = 1;
        return 1;
    }
    return 0;
}
