/* flashmoe command line: dispatches to one function per command (src/cmd_*.c). */
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"run", cmd_run, "generate tokens from a prompt"},
    {"logits", cmd_logits, "write the logits of every position of a token sequence"},
    {"tokenize", cmd_tokenize, "print the token ids of a text"},
    {"detokenize", cmd_detokenize, "print the text of token ids"},
    {"chat", cmd_chat, "interactive chat"},
    {"perplexity", cmd_perplexity, "perplexity, and KL divergence against a reference run"},
    {"convert", cmd_convert, "convert a checkpoint to flashmoe's packed, quantized format"},
    {"synth", cmd_synth, "write a random-weight model at a real geometry (for benchmarks)"},
    {"bench", cmd_bench, "prefill and decode speed against the hardware's floor"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: flashmoe COMMAND [options]   (flashmoe COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].fn) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name) && commands[i].fn) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "flashmoe: unknown command '%s' (see flashmoe --help)\n", argv[1]);
    return 2;
}
