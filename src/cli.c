#include "cli.h"

#include <errno.h>
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
