/* Memory read bandwidth, measured: the rate `flashmoe bench` sets its memory floor with. The floor is a
 * property of the machine, so the probe reads with the widest vector loads the CPU has, whatever kernel
 * level is in use, and keeps the best of a few passes and two prefetch distances. */
#ifndef FLASHMOE_MEMBW_H
#define FLASHMOE_MEMBW_H
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "threadpool.h"

/* The xor of every 64-bit word of p[0, n), read with the vector loads of kernel level `lv` (scalar: 64-bit
 * words; avx2: 256-bit; avx512 and amx: 512-bit), 4 independent streams of sums, and, when ahead > 0, a
 * software prefetch that many bytes ahead. lv must be available (kernel_level_available); p is 64-byte
 * aligned and n a multiple of 256. The result depends on every word, so no read can be skipped; tests
 * compare the levels. */
uint64_t membw_read(kernel_level lv, const void *p, size_t n, size_t ahead);
/* Bytes per second of a streaming read of a `bytes` buffer split across the pool's threads (NULL: one
 * thread): the best of 3 passes at each prefetch distance, with the widest loads of any level available.
 * 0 when the buffer cannot be allocated. */
double membw_measure(pool *p, size_t bytes);

#endif
