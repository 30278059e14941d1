/* Expert read benchmark (built and run by bench/io.sh, not by the Makefile).
 *
 *   io_bench create FILE MiB           write FILE with MiB of pseudo-random bytes (O_DIRECT)
 *   io_bench read FILE [options]       read random distinct records, K per batch, like a MoE layer
 *     --mode cached|direct  --backend threads|uring  --record MiB (4) | --record-kib KiB  --k N (8)  --bytes MiB (2048)
 *     --threads N  --qd N  --chunk KiB  --seed S  --budget MiB (read through expert_cache with
 *     this budget instead of the bare engine)  --small-pages 1 (buffers of 4 KiB pages, plain
 *     posix_memalign, instead of expert_io_buffer_alloc's huge pages)  --window N (the engine's
 *     window, 0: the whole batch)  --gap-us N (the CPU spins this long between batches, as a layer's
 *     mixer computes between its MoE reads)  --compute-us N (spins this long on each record as it
 *     arrives, as the experts compute)
 *
 * Each record is read at most once per run (a random permutation), so a cold page cache stays cold.
 * Prints one line: backend, mode, sizes, seconds, GB/s (10^9 bytes per second), time spent waiting. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "expert_cache.h"
#include "expert_io.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Keeps the CPU busy for us microseconds (the compute the engine overlaps reads with). */
static void spin(long us) {
    if (us <= 0) return;
    double end = now_s() + (double)us * 1e-6;
    while (now_s() < end) {
    }
}

static int bench_create(const char *path, long mib) {
    size_t block = 4 << 20;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
    if (fd < 0) {
        fprintf(stderr, "io_bench: %s: %s\n", path, strerror(errno));
        return 1;
    }
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, block)) return 1;
    uint64_t s = 88172645463325252u;
    for (long done = 0; done < mib; done += 4) {
        uint64_t *w = buf;
        for (size_t i = 0; i < block / 8; i++) w[i] = rng_next(&s);
        if (write(fd, buf, block) != (ssize_t)block) {
            fprintf(stderr, "io_bench: writing %s: %s\n", path, strerror(errno));
            return 1;
        }
    }
    free(buf);
    return close(fd) ? 1 : 0;
}

typedef struct {
    int fd;
    size_t record;
} locate_ctx;

static int locate_record(void *ctx, int layer, int expert, expert_io_req *where, char *err, size_t errlen) {
    (void)layer, (void)err, (void)errlen;
    locate_ctx *l = ctx;
    where->n_pieces = 1;
    where->piece[0] = (expert_io_piece){l->fd, (uint64_t)expert * l->record, l->record, NULL};
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "create")) return bench_create(argv[2], atol(argv[3]));
    if (argc < 3 || strcmp(argv[1], "read")) {
        fprintf(stderr, "usage: io_bench create FILE MiB | io_bench read FILE [options] (see the source)\n");
        return 2;
    }
    const char *path = argv[2];
    expert_io_config cfg = {0};
    long record_kib = 4096, k = 8, total_mib = 2048, budget_mib = -1;
    uint64_t seed = 1;
    int small_pages = 0;
    long gap_us = 0, compute_us = 0;
    for (int i = 3; i + 1 < argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "--mode")) cfg.mode = !strcmp(v, "direct") ? EXPERT_IO_DIRECT : EXPERT_IO_CACHED;
        else if (!strcmp(o, "--backend")) cfg.backend = !strcmp(v, "uring") ? EXPERT_IO_URING : EXPERT_IO_THREADS;
        else if (!strcmp(o, "--record")) record_kib = atol(v) << 10;
        else if (!strcmp(o, "--record-kib")) record_kib = atol(v);
        else if (!strcmp(o, "--k")) k = atol(v);
        else if (!strcmp(o, "--bytes")) total_mib = atol(v);
        else if (!strcmp(o, "--threads")) cfg.threads = atoi(v);
        else if (!strcmp(o, "--qd")) cfg.queue_depth = atoi(v);
        else if (!strcmp(o, "--chunk")) cfg.chunk_bytes = (size_t)atol(v) << 10;
        else if (!strcmp(o, "--seed")) seed = (uint64_t)atoll(v) | 1;
        else if (!strcmp(o, "--budget")) budget_mib = atol(v);
        else if (!strcmp(o, "--small-pages")) small_pages = atoi(v);
        else if (!strcmp(o, "--window")) cfg.window = atoi(v);
        else if (!strcmp(o, "--gap-us")) gap_us = atol(v);
        else if (!strcmp(o, "--compute-us")) compute_us = atol(v);
        else {
            fprintf(stderr, "io_bench: unknown option %s\n", o);
            return 2;
        }
    }
    size_t record = (size_t)record_kib << 10;
    char err[512];
    expert_io *io = expert_io_create(&cfg, err, sizeof err);
    if (!io) {
        fprintf(stderr, "io_bench: %s\n", err);
        return 1;
    }
    int fd = expert_io_open(io, path, err, sizeof err);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        fprintf(stderr, "io_bench: %s\n", err);
        return 1;
    }
    int n_rec = (int)(st.st_size / (off_t)record);
    long n_reads = (long)(((size_t)total_mib << 20) / record);
    if (n_reads > n_rec) n_reads = n_rec;
    n_reads -= n_reads % k;
    if (n_reads <= 0 || k <= 0) {
        fprintf(stderr, "io_bench: file too small for one batch\n");
        return 1;
    }
    /* a random permutation of the records: each read at most once */
    int *order = malloc((size_t)n_rec * sizeof *order);
    for (int i = 0; i < n_rec; i++) order[i] = i;
    for (int i = n_rec - 1; i > 0; i--) {
        int j = (int)(rng_next(&seed) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }

    locate_ctx loc = {fd, record};
    expert_cache *cache = NULL;
    void *buf = NULL;
    if (budget_mib >= 0) {
        expert_cache_config cc = {.n_layers = 1, .n_experts = n_rec, .working = (int)k, .slot_bytes = record,
                                  .budget_bytes = (size_t)budget_mib << 20, .locate = locate_record,
                                  .locate_ctx = &loc};
        cache = expert_cache_create(io, &cc, err, sizeof err);
        if (!cache) {
            fprintf(stderr, "io_bench: %s\n", err);
            return 1;
        }
    } else if (small_pages ? posix_memalign(&buf, 4096, (size_t)k * record) != 0
                           : !(buf = expert_io_buffer_alloc((size_t)k * record))) {
        return 1;
    }
    expert_io_req *reqs = calloc((size_t)k, sizeof *reqs);
    volatile unsigned char sink = 0;
    double t0 = now_s();
    for (long b = 0; b < n_reads / k; b++) {
        const int *ex = order + b * k;
        int i, rc;
        if (cache) {
            const expert_io_req *x;
            if (expert_cache_begin(cache, 0, ex, (int)k, err, sizeof err) < 0) goto fail;
            while ((rc = expert_cache_next(cache, &i, &x, err, sizeof err)) == 1)
                sink ^= *(unsigned char *)x->piece[0].dest, spin(compute_us); /* "compute" on arrival */
            expert_cache_end(cache);
        } else {
            for (i = 0; i < k; i++)
                reqs[i] = (expert_io_req){1, {{fd, (uint64_t)ex[i] * record, record, (char *)buf + (size_t)i * record}}};
            if (expert_io_submit(io, reqs, (int)k, err, sizeof err) < 0) goto fail;
            while ((rc = expert_io_wait_any(io, &i, err, sizeof err)) == 1)
                sink ^= ((unsigned char *)buf)[(size_t)i * record], spin(compute_us);
        }
        if (rc < 0) goto fail;
        spin(gap_us);
    }
    double dt = now_s() - t0;
    expert_io_stats s;
    expert_io_stats_get(io, &s);
    double bytes = (double)n_reads * (double)record;
    /* reading time: the run less the gaps, in which nothing is in flight */
    double dr = dt - (double)(n_reads / k) * (double)gap_us * 1e-6;
    printf("expert_io backend=%s mode=%s%s k=%ld record=%ldKiB window=%d gap=%ldus compute=%ldus reads=%ld "
           "seconds=%.3f GB/s=%.2f reading_rate=%.2f wait=%.0f%%\n",
           expert_io_backend_name(expert_io_backend_used(io)), cfg.mode == EXPERT_IO_DIRECT ? "direct" : "cached",
           cache ? "+cache" : "", k, record_kib, cfg.window, gap_us, compute_us, n_reads, dt, bytes / dt / 1e9,
           bytes / dr / 1e9, 100.0 * (double)s.wait_ns / 1e9 / dt);
    expert_cache_free(cache);
    expert_io_free(io);
    if (small_pages)
        free(buf);
    else
        expert_io_buffer_free(buf);
    free(reqs);
    free(order);
    return 0;
fail:
    fprintf(stderr, "io_bench: %s\n", err);
    return 1;
}
