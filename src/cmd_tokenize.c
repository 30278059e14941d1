/* flashmoe tokenize / detokenize: text to token ids and back, with a model's tokenizer.json. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tokenizer.h"

static void tokenize_usage(FILE *f) {
    fprintf(f,
            "usage: flashmoe tokenize (-m DIR | -t TOKENIZER_JSON) [--special] (-f FILE | TEXT)\n"
            "Prints the token ids of TEXT (or of the bytes of FILE; '-' reads stdin) on one line.\n"
            "  -m DIR      model directory holding tokenizer.json\n"
            "  -t FILE     a tokenizer.json\n"
            "  --special   recognise special tokens such as <|im_start|> written in the text\n"
            "              (by default they are tokenised as plain text)\n"
            "  -f FILE     read the text from FILE\n");
}

static void detokenize_usage(FILE *f) {
    fprintf(f,
            "usage: flashmoe detokenize (-m DIR | -t TOKENIZER_JSON) IDS...\n"
            "Prints the text of the token ids IDS (separated by commas and/or spaces, e.g. '1,2,3'\n"
            "or \"1 2 3\"), followed by a newline.\n"
            "  -m DIR      model directory holding tokenizer.json\n"
            "  -t FILE     a tokenizer.json\n");
}

/* Options shared by both commands. */
typedef struct {
    const char *model_dir, *tokenizer_json;
    const char *positional[64];
    int n_positional;
    const char *input_file;
    int special;
} tok_args;

/* Parses argv; returns 0 to go on, 1 after --help, 2 on a usage error (already reported). */
static int tok_args_parse(int argc, char **argv, int is_tokenize, tok_args *a) {
    const char *cmd = argv[0];
    memset(a, 0, sizeof *a);
    int only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int takes_value = !strcmp(s, "-m") || !strcmp(s, "-t") || (is_tokenize && !strcmp(s, "-f"));
        if (only_positional || s[0] != '-' || !s[1]) {
            if (a->n_positional == (int)(sizeof a->positional / sizeof a->positional[0])) {
                fprintf(stderr, "flashmoe %s: too many arguments\n", cmd);
                return 2;
            }
            a->positional[a->n_positional++] = s;
        } else if (!strcmp(s, "--")) {
            only_positional = 1;
        } else if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            (is_tokenize ? tokenize_usage : detokenize_usage)(stdout);
            return 1;
        } else if (is_tokenize && !strcmp(s, "--special")) {
            a->special = 1;
        } else if (takes_value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "flashmoe %s: %s needs a value\n", cmd, s);
                return 2;
            }
            const char *v = argv[++i];
            if (s[1] == 'm') a->model_dir = v;
            else if (s[1] == 't') a->tokenizer_json = v;
            else a->input_file = v;
        } else {
            fprintf(stderr, "flashmoe %s: unknown option '%s' (see flashmoe %s --help)\n", cmd, s, cmd);
            return 2;
        }
    }
    if (!a->model_dir == !a->tokenizer_json) {
        fprintf(stderr, "flashmoe %s: give exactly one of -m DIR or -t TOKENIZER_JSON\n", cmd);
        return 2;
    }
    return 0;
}

static tokenizer *tok_args_load(const tok_args *a, const char *cmd) {
    char path[4096], err[512];
    if (a->model_dir) {
        if ((size_t)snprintf(path, sizeof path, "%s/tokenizer.json", a->model_dir) >= sizeof path) {
            fprintf(stderr, "flashmoe %s: model directory path is too long\n", cmd);
            return NULL;
        }
    } else {
        snprintf(path, sizeof path, "%s", a->tokenizer_json);
    }
    tokenizer *tok = tokenizer_load(path, err, sizeof err);
    if (!tok) fprintf(stderr, "flashmoe %s: %s\n", cmd, err);
    return tok;
}

/* Reads all of path ("-" = stdin) into a malloc'd buffer. */
static char *read_all(const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *bigger = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            buf = NULL;
            errno = ENOMEM;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    if (f != stdin) fclose(f);
    *len = n;
    return buf;
}

/* Prints ids space-separated on one line (a hand-rolled formatter: printf per id is a large part
 * of the time for big inputs). */
static int ids_print(const int32_t *ids, size_t n) {
    char buf[1 << 16];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char digits[12];
        int k = 0;
        uint32_t v = (uint32_t)ids[i];
        do digits[k++] = (char)('0' + v % 10);
        while (v /= 10);
        if (i) buf[o++] = ' ';
        while (k) buf[o++] = digits[--k];
        if (o > sizeof buf - 16) {
            if (fwrite(buf, 1, o, stdout) != o) return -1;
            o = 0;
        }
    }
    buf[o++] = '\n';
    return fwrite(buf, 1, o, stdout) != o || fflush(stdout) ? -1 : 0;
}

int cmd_tokenize(int argc, char **argv) {
    tok_args a;
    int rc = tok_args_parse(argc, argv, 1, &a);
    if (rc) return rc == 1 ? 0 : 2;
    if ((a.input_file != NULL) + a.n_positional != 1) {
        fprintf(stderr, "flashmoe tokenize: give exactly one TEXT or -f FILE (see --help)\n");
        return 2;
    }
    size_t len;
    char *text;
    if (a.input_file) {
        text = read_all(a.input_file, &len);
        if (!text) {
            fprintf(stderr, "flashmoe tokenize: %s: cannot read: %s\n", a.input_file, strerror(errno));
            return 1;
        }
    } else {
        len = strlen(a.positional[0]);
        text = malloc(len + 1);
        if (!text) {
            fprintf(stderr, "flashmoe tokenize: out of memory\n");
            return 1;
        }
        memcpy(text, a.positional[0], len + 1);
    }
    tokenizer *tok = tok_args_load(&a, "tokenize");
    int32_t *ids = NULL;
    size_t n = 0;
    rc = 1;
    if (tok) {
        if (tokenizer_encode(tok, text, len, a.special, &ids, &n)) {
            fprintf(stderr, "flashmoe tokenize: %s\n", tokenizer_error(tok));
        } else {
            rc = ids_print(ids, n) ? 1 : 0;
        }
    }
    free(ids);
    free(text);
    tokenizer_free(tok);
    return rc;
}

/* Parses ids separated by commas and/or whitespace from every positional argument. */
static int ids_parse(const tok_args *a, int32_t **ids, size_t *n) {
    size_t cap = 0;
    *ids = NULL;
    *n = 0;
    for (int k = 0; k < a->n_positional; k++) {
        const char *s = a->positional[k];
        while (*s) {
            if (*s == ',' || *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') {
                s++;
                continue;
            }
            char *end;
            errno = 0;
            long v = *s >= '0' && *s <= '9' ? strtol(s, &end, 10) : -1;
            if (v < 0 || errno || v > INT32_MAX || (*end && !strchr(", \t\r\n", *end))) {
                size_t w = strcspn(s, ", \t\r\n");
                fprintf(stderr, "flashmoe detokenize: '%.*s' is not a token id\n", (int)w, s);
                return -1;
            }
            if (*n == cap) {
                cap = cap ? 2 * cap : 64;
                int32_t *p = realloc(*ids, cap * sizeof *p);
                if (!p) {
                    fprintf(stderr, "flashmoe detokenize: out of memory\n");
                    return -1;
                }
                *ids = p;
            }
            (*ids)[(*n)++] = (int32_t)v;
            s = end;
        }
    }
    return 0;
}

int cmd_detokenize(int argc, char **argv) {
    tok_args a;
    int rc = tok_args_parse(argc, argv, 0, &a);
    if (rc) return rc == 1 ? 0 : 2;
    if (a.n_positional == 0) {
        fprintf(stderr, "flashmoe detokenize: no token ids given (see --help)\n");
        return 2;
    }
    int32_t *ids;
    size_t n;
    if (ids_parse(&a, &ids, &n)) {
        free(ids);
        return 2;
    }
    tokenizer *tok = tok_args_load(&a, "detokenize");
    rc = 1;
    char *text = NULL;
    size_t len = 0;
    if (tok) {
        size_t bad = n;
        for (size_t i = 0; i < n && bad == n; i++)
            if (!tokenizer_piece(tok, ids[i])) bad = i;
        if (bad < n)
            fprintf(stderr, "flashmoe detokenize: id %d is not in the vocabulary (ids go up to %d)\n",
                    (int)ids[bad], tokenizer_vocab_size(tok) - 1);
        else if (tokenizer_decode(tok, ids, n, &text, &len))
            fprintf(stderr, "flashmoe detokenize: out of memory\n");
        else if (fwrite(text, 1, len, stdout) == len && putchar('\n') != EOF && !fflush(stdout))
            rc = 0;
    }
    free(text);
    free(ids);
    tokenizer_free(tok);
    return rc;
}
