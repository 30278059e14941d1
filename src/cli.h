/* Helpers shared by the commands' option parsing. Each prints a one-line error naming the command and
 * the option, and returns -1. */
#ifndef FLASHMOE_CLI_H
#define FLASHMOE_CLI_H
#include <stdint.h>

#include "model.h"
#include "sampler.h"

/* argv[*i] is a flag taking a value: advances *i and returns the value, or NULL (error printed). */
const char *cli_value(const char *cmd, int argc, char **argv, int *i);
int cli_int(const char *cmd, const char *flag, const char *v, long lo, long hi, int *out);
int cli_float(const char *cmd, const char *flag, const char *v, double lo, double hi, float *out);
/* "1,2,3" or "1 2 3" into a new array of ids (free with free); each a non-negative integer. */
int cli_ids(const char *cmd, const char *flag, const char *v, int32_t **ids, int *n);

/* The options of every model-running command: -m, --experts-per-token, --threads, --io, --cache-mb,
 * --io-threads, --prefetch, --no-prefetch, --timing, --ctx. */
typedef struct {
    const char *dir;
    model_opts mo;
    int ctx;
    int timing;
} engine_args;

/* The sampling options of run and chat: --temp, --top-k, --top-p, --min-p, --repeat-penalty,
 * --presence-penalty, --frequency-penalty, --seed. 1 if argv[*i] was one (consumed; *seed_given set for
 * --seed), 0 if not, -1 on error (printed). */
int cli_sampler_arg(const char *cmd, sampler_params *sp, int *seed_given, int argc, char **argv, int *i);

/* 1 if argv[*i] was one of them (consumed, with its value), 0 if not, -1 on error (printed). */
int cli_engine_arg(const char *cmd, engine_args *ea, int argc, char **argv, int *i);

#define CLI_ENGINE_HELP                                                                   \
    "  -m, --model DIR            Hugging Face checkpoint directory (config.json + safetensors)\n" \
    "  --experts-per-token K      experts used per token (default: the model's own)\n"       \
    "  -t, --threads N            threads (default 1)\n"                                     \
    "  --ctx N                    context length to allocate (default 4096)\n"              \
    "  --io auto|cache|direct|mmap  expert reads (default auto: mmap if the model fits in the available\n" \
    "                             memory, cgroup limits included, else direct): page cache, O_DIRECT with\n" \
    "                             an in-process LRU cache of --cache-mb MiB, or mapped\n"    \
    "  --cache-mb N               expert cache budget for --io direct (default 0; with auto, what the\n" \
    "                             resident weights, the state for --ctx and a margin leave)\n"              \
    "  --io-threads               read with a pool of pread threads instead of io_uring\n"     \
    "  --prefetch, --no-prefetch  while decoding with --io direct, read the top of the experts the next\n" \
    "                             layer's router predicts, as many as the disk would otherwise idle for;\n" \
    "                             for a prompt chunk that routes to nearly every expert, read each\n" \
    "                             layer's experts while its mixer runs (default: on when the expert\n" \
    "                             cache has room; --prefetch wants direct)\n" \
    "  --prefill-chunk N          prompt positions run together, each expert read once per chunk (2048)\n" \
    "  --timing                   print where each layer's time goes, and the I/O totals\n"

#endif
