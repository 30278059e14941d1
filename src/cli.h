/* Helpers shared by the commands' option parsing. Each prints a one-line error naming the command and
 * the option, and returns -1. */
#ifndef FLASHMOE_CLI_H
#define FLASHMOE_CLI_H
#include <stdint.h>

/* argv[*i] is a flag taking a value: advances *i and returns the value, or NULL (error printed). */
const char *cli_value(const char *cmd, int argc, char **argv, int *i);
int cli_int(const char *cmd, const char *flag, const char *v, long lo, long hi, int *out);
int cli_float(const char *cmd, const char *flag, const char *v, double lo, double hi, float *out);
/* "1,2,3" or "1 2 3" into a new array of ids (free with free); each a non-negative integer. */
int cli_ids(const char *cmd, const char *flag, const char *v, int32_t **ids, int *n);

#endif
