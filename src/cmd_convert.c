/* `flashmoe convert SRC OUT [--experts T] [--dense T] [--group G] [--force]`: SRC an HF or MLX checkpoint */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "convert.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: flashmoe convert SRC OUT [--experts q8|q4|q3|q2|bf16] [--dense bf16|q8|q4] [--group 64] "
            "[--force] [--quiet]\n"
            "Converts the HF checkpoint SRC into a packed directory OUT: resident weights in one file, the\n"
            "experts of each layer in one file of 4 KiB-aligned records (one contiguous record per expert).\n"
            "Quantization is group-wise affine (bf16 scale and bias per group, MLX layout), each group's\n"
            "scale and bias chosen to minimise its squared error. Routers keep at least 8 bits; a matrix\n"
            "whose rows do not divide into groups stays bf16 (and the converter says so).\n\n"
            "SRC may also be an MLX checkpoint (mlx-community, from mlx-lm or mlx-vlm: language_model.* names,\n"
            "experts in mlp.switch_mlp, 2/3/4/5/6/8-bit affine weights with bits and group per tensor from\n"
            "config.json's \"quantization\"). A weight already at the target's bits and group is copied bit\n"
            "for bit; a target with more bits and the same group keeps its codes, scales and biases (exact);\n"
            "anything else is dequantized and requantized as above (e.g. 4-bit MLX experts to --experts q2).\n"
            "mlx-lm's +1 on the norms and its [C, K, 1] conv kernels are undone. Use --dense q4 (or q8) and\n"
            "the source's --group to keep a quantized MLX model's dense weights as they are.\n\n"
            "  --experts T   expert weights (default q4)\n"
            "  --dense T     non-expert matrices (default bf16); norms and small vectors stay f32\n"
            "  --group G     quantization group: 32, 64 or 128 (default 64)\n"
            "  --force       overwrite OUT if it exists\n"
            "  --quiet       no progress bar\n");
}

static int parse_type(const char *v, int allow_low, dtype *out) {
    static const struct { const char *name; dtype t; int low; } types[] = {
        {"bf16", DTYPE_BF16, 0}, {"q8", DTYPE_Q8, 0}, {"q4", DTYPE_Q4, 0}, {"q3", DTYPE_Q3, 1}, {"q2", DTYPE_Q2, 1}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(v, types[i].name) && (allow_low || !types[i].low)) {
            *out = types[i].t;
            return 0;
        }
    return -1;
}

int cmd_convert(int argc, char **argv) {
    convert_opts o = {.experts = DTYPE_Q4, .dense = DTYPE_BF16, .group = 64};
    const char *pos[2] = {0}, *v;
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--experts") || !strcmp(a, "--dense")) {
            int experts = !strcmp(a, "--experts");
            if (!(v = cli_value("convert", argc, argv, &i))) return 2;
            if (parse_type(v, experts, experts ? &o.experts : &o.dense)) {
                fprintf(stderr, "flashmoe convert: %s takes %s, got '%s'\n", a,
                        experts ? "q8, q4, q3, q2 or bf16" : "bf16, q8 or q4", v);
                return 2;
            }
        } else if (!strcmp(a, "--group")) {
            if (!(v = cli_value("convert", argc, argv, &i)) || cli_int("convert", a, v, 32, 128, &o.group)) return 2;
            if (o.group != 32 && o.group != 64 && o.group != 128) {
                fprintf(stderr, "flashmoe convert: --group takes 32, 64 or 128, got %d\n", o.group);
                return 2;
            }
        } else if (!strcmp(a, "--force")) {
            o.force = 1;
        } else if (!strcmp(a, "--quiet")) {
            o.quiet = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "flashmoe convert: unknown option '%s' (see flashmoe convert --help)\n", a);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "flashmoe convert: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (npos != 2) {
        fprintf(stderr, "flashmoe convert: needs SRC and OUT (see flashmoe convert --help)\n");
        return 2;
    }
    o.src = pos[0];
    o.out = pos[1];
    char err[1024];
    if (convert_run(&o, err, sizeof err)) {
        fprintf(stderr, "flashmoe convert: %s\n", err);
        return 1;
    }
    return 0;
}
