/* How much memory this process may use, and, from that, how to read a model's experts (`--io auto`).
 *
 * Available memory is the smaller of /proc/meminfo's MemAvailable (free memory plus what the kernel can
 * reclaim, the page cache included) and the memory limit of every cgroup this process is in, from its own
 * cgroup up to the hierarchy's root (cgroup v1 memory.limit_in_bytes, cgroup v2 memory.max; the
 * hierarchies are found in /proc/self/mountinfo, so both mount layouts and the hybrid one work). A cap
 * counts the page cache, as `tools/run_capped.sh` and `flashmoe bench --cap-mb` set it.
 *
 * The plan: a model whose files fit in that memory, with its state and a margin to spare, is mapped (`--io mmap`:
 * after the first touch every expert comes from the page cache without a copy). A larger one is read with
 * O_DIRECT (`--io direct`), because the page cache would evict experts in whatever order the kernel likes
 * and fault them back 4 KiB-page by page (measured: 3x slower decoding under a 4 GiB cap, BENCHMARKS.md);
 * its in-process expert cache gets what is left after the resident weights, the state and the margin. */
#ifndef FLASHMOE_MEMPLAN_H
#define FLASHMOE_MEMPLAN_H
#include <stddef.h>

#include "experts.h"

/* Kept free of experts besides the model's state (KV cache, recurrent state, a prompt chunk's
 * activations: state_bytes), for I/O buffers, the page cache's own working set and the rest of the
 * process: 512 MiB, or a quarter of the available memory when that is less. */
#define MEMPLAN_MARGIN_MAX ((size_t)512 << 20)

typedef struct {
    size_t bytes;      /* available to this process */
    char source[200];  /* what limits it, e.g. "MemAvailable" or "cgroup v1 limit of /a/b" */
} mem_available;

/* Reads proc_root/meminfo, proc_root/self/cgroup and proc_root/self/mountinfo (proc_root is "/proc"
 * outside tests), and the limit files under the mount points found there. 0, or -1 with a one-line
 * message naming the file in err (meminfo unreadable or without MemAvailable/MemTotal, a malformed
 * cgroup or limit file). Missing cgroup files are not errors: they mean no limit there. */
int memplan_available(const char *proc_root, mem_available *out, char *err, size_t errlen);

typedef struct {
    experts_io_mode mode; /* EXPERTS_IO_MMAP or EXPERTS_IO_DIRECT */
    size_t cache_bytes;   /* DIRECT: the expert cache's budget */
    size_t reserve_bytes;
} io_plan;

/* The plan for a model of model_bytes on disk, resident_bytes of them always in memory, whose states
 * take state_bytes, given avail bytes. need_direct: an option that only --io direct serves was given
 * (--prefetch). cache_bytes: the user's --cache-mb, or (size_t)-1 to size the cache from what is left.
 * reserve_bytes = state_bytes + the margin. */
void memplan_choose(size_t model_bytes, size_t resident_bytes, size_t state_bytes, size_t avail, int need_direct,
                    size_t cache_bytes, io_plan *out);

#endif
