/* Converting a checkpoint into the packed directory format (packed.h), streaming tensor by tensor so
 * that memory stays bounded by one expert's worth of buffers whatever the model's size. */
#ifndef FLASHMOE_CONVERT_H
#define FLASHMOE_CONVERT_H
#include <stddef.h>

#include "tensor.h"

typedef struct {
    const char *src, *out;
    dtype experts; /* BF16, Q8, Q4, Q3, Q2 */
    dtype dense;   /* BF16, Q8, Q4 */
    int group;     /* 32, 64, 128 */
    int force;     /* overwrite an existing OUT */
    int quiet;     /* no progress output */
} convert_opts;

int convert_run(const convert_opts *o, char *err, size_t errlen);

#endif
