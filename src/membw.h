/* Memory read bandwidth, measured: the rate `flashmoe bench` sets its memory floor with. The floor is a
 * property of the machine, so the probe reads with the widest vector loads the CPU has, whatever kernel
 * level is in use, and keeps the best of a few passes and two prefetch distances. */
#ifndef FLASHMOE_MEMBW_H
#define FLASHMOE_MEMBW_H
#include <stddef.h>
#include <stdint.h>

#include "threadpool.h"

typedef enum { MEMBW_SCALAR, MEMBW_AVX2, MEMBW_AVX512, MEMBW_COUNT } membw_isa;

/* 1 when this build and CPU can run the variant (scalar: always). */
int membw_isa_available(membw_isa isa);
/* The xor of every 64-bit word of p[0, n), read with the variant's loads (4 independent streams of
 * sums) and, when ahead > 0, a software prefetch that many bytes ahead. p is 64-byte aligned and n a
 * multiple of 256. The result depends on every word, so no read can be skipped; tests compare variants. */
uint64_t membw_read(membw_isa isa, const void *p, size_t n, size_t ahead);
/* Bytes per second of a streaming read of a `bytes` buffer split across the pool's threads (NULL: one
 * thread): the best of 3 passes at each prefetch distance, with the best variant available. 0 when the
 * buffer cannot be allocated. */
double membw_measure(pool *p, size_t bytes);

#endif
