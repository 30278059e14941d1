/* Expert I/O engine: reads the bytes of the selected experts from disk, as fast as the disk allows, and
 * hands each expert to the caller as soon as all of its bytes have arrived.
 *
 *   expert_io *io = expert_io_create(&(expert_io_config){.backend = EXPERT_IO_URING,
 *                                                        .mode = EXPERT_IO_DIRECT}, err, sizeof err);
 *   int fd = expert_io_open(io, "model/experts.bin", err, sizeof err);
 *   expert_io_req r[K];  ... r[i].piece[0] = (expert_io_piece){fd, offset, length, dest} ...
 *   expert_io_submit(io, r, K, err, sizeof err);
 *   int i;
 *   while ((rc = expert_io_wait_any(io, &i, err, sizeof err)) == 1) compute_on(r[i]);
 *   if (rc < 0) fail(err);               // names the file, offset, length and the reason
 *
 * One request is one expert: up to EXPERT_IO_MAX_PIECES (fd, offset, length, destination) pieces. Large
 * pieces are split into chunks (1 MiB by default) that are read in parallel, so one expert alone keeps
 * the disk's queue full. Short reads are continued until the piece is complete; end of file before
 * the end of a piece, or any read error, fails the batch with a message naming the file.
 *
 * Two back-ends, chosen at creation: a pool of reader threads calling pread, or io_uring (liburing);
 * when io_uring cannot be set up (refused in a sandbox, old kernel), the engine prints one notice
 * and uses the thread pool. With io_uring, reads are issued at submit and kept topped up inside
 * expert_io_wait_any/expert_io_wait_all (the caller's thread); no extra thread is involved.
 *
 * Two modes: EXPERT_IO_CACHED opens files normally (the page cache decides what stays in memory);
 * EXPERT_IO_DIRECT opens them with O_DIRECT (nothing goes through the page cache: the caller keeps
 * what it wants, see expert_cache.h). O_DIRECT reads whole 4 KiB blocks into 4 KiB-aligned memory, so
 * for a direct fd a piece reads the aligned span around [offset, offset + length):
 *
 *     span  = [offset rounded down to 4096, offset + length rounded up to 4096)
 *     bytes land at dest - offset % 4096 (which must be 4096-aligned) up to the end of the span;
 *     the span may run past the end of the file: only [offset, offset + length) must exist.
 *
 * expert_io_layout() places a request's pieces in a buffer following this rule, for either mode.
 * In the packed expert file every record is 4 KiB-aligned, so its span is the record itself.
 *
 * Window: a disk that shares its bandwidth among all the reads in flight (a virtio disk does) finishes
 * every request of a batch at about the same time when they are all in flight, so nothing can be
 * computed until the whole batch has arrived. With config.window = W, chunks of request i are issued only
 * while i < (oldest unfinished request) + W: requests then arrive one after another in batch order,
 * and the caller computes on each while the next W - 1 (or W) are read. W = 1 gives arrival in exactly
 * the batch order.
 *
 * Memory: everything is allocated by expert_io_create (and a name per file at open/register);
 * submitting and waiting allocate nothing. One batch is in flight at a time, and one thread at a
 * time submits and waits (the reader threads are the engine's own).
 *
 * Test hook: FLASHMOE_IO_FAIL_AFTER=N in the environment at creation (or config.fail_after) makes the
 * N-th request submitted to this engine (counting from 1) fail with EIO instead of being read.
 * config.fail_env names another variable to read instead (a second engine can be failed on its own). */
#ifndef FLASHMOE_EXPERT_IO_H
#define FLASHMOE_EXPERT_IO_H
#include <stddef.h>
#include <stdint.h>

enum {
    /* MLX-quantized per-expert tensors give 9 slices per expert: {gate, up, down} x {weight, scales,
     * biases}; bf16 checkpoints give 2 (fused gate_up, down) or 3; the packed file gives 1. */
    EXPERT_IO_MAX_PIECES = 9,
    EXPERT_IO_ALIGN = 4096, /* O_DIRECT alignment of offsets, lengths and memory */
};

typedef enum { EXPERT_IO_THREADS, EXPERT_IO_URING } expert_io_backend;
typedef enum { EXPERT_IO_CACHED, EXPERT_IO_DIRECT } expert_io_mode;

typedef struct {
    expert_io_backend backend;
    expert_io_mode mode;  /* how expert_io_open opens files */
    int threads;          /* reader threads of the thread back-end (also the fallback); 0: 8 */
    int queue_depth;      /* io_uring reads in flight at once; 0: 64 */
    size_t chunk_bytes;   /* pieces are read in chunks of this size, a multiple of 4096; 0: 1 MiB */
    int max_requests;     /* most requests in one batch; 0: 256 */
    long fail_after;      /* test hook, see above; 0: off. FLASHMOE_IO_FAIL_AFTER overrides it */
    const char *fail_env; /* the variable that overrides fail_after; NULL: "FLASHMOE_IO_FAIL_AFTER" */
    int quiet;            /* 1: no notice on stderr when falling back from io_uring to threads */
    size_t read_cap;      /* test hook: each read call asks for at most this many bytes (rounded up
                             to 4096 on O_DIRECT fds), so pieces complete through short reads; 0: off */
    int window;           /* requests whose reads may be in flight at once, counted from the oldest
                             unfinished one of the batch; 0: no limit (see below) */
} expert_io_config;

typedef struct {
    int fd;          /* from expert_io_open, or registered with expert_io_register */
    uint64_t offset; /* in the file */
    size_t length;   /* bytes wanted, > 0 */
    void *dest;      /* where byte `offset` lands (see the O_DIRECT rule above) */
} expert_io_piece;

typedef struct {
    int n_pieces; /* 1 .. EXPERT_IO_MAX_PIECES */
    expert_io_piece piece[EXPERT_IO_MAX_PIECES];
} expert_io_req;

typedef struct {
    uint64_t requests; /* requests completed without error */
    uint64_t bytes;    /* bytes read from files (O_DIRECT spans included) */
    uint64_t reads;    /* read calls issued (pread or io_uring reads) */
    uint64_t failures; /* batches that ended with an error */
    uint64_t wait_ns;  /* time spent inside expert_io_wait_any / expert_io_wait_all */
} expert_io_stats;

typedef struct expert_io expert_io;

/* NULL on failure, with the reason in err. cfg may be NULL (all defaults: threads, cached). */
expert_io *expert_io_create(const expert_io_config *cfg, char *err, size_t errlen);
/* Waits for any batch still in flight, joins the threads, closes the files expert_io_open opened. */
void expert_io_free(expert_io *io);
/* The back-end actually in use (EXPERT_IO_THREADS after a fallback). */
expert_io_backend expert_io_backend_used(const expert_io *io);
const char *expert_io_backend_name(expert_io_backend b);
expert_io_mode expert_io_mode_used(const expert_io *io);

/* Opens path read-only in the engine's mode and registers it; the engine closes it at free.
 * Returns the fd, or -1 with the reason in err. */
int expert_io_open(expert_io *io, const char *path, char *err, size_t errlen);
/* Registers an fd the caller opened (and closes) under a name used in error messages. Whether it is
 * a direct fd is read from its flags. Returns 0, or -1 with the reason in err. */
int expert_io_register(expert_io *io, int fd, const char *name, char *err, size_t errlen);
/* 1 if fd was opened with O_DIRECT, 0 if not, -1 if it is not registered. */
int expert_io_fd_direct(const expert_io *io, int fd);

/* Bytes of buffer one request needs under the O_DIRECT rule (its pieces laid out one after another,
 * each starting 4096-aligned); 0 if a piece names an unregistered fd. */
size_t expert_io_req_room(const expert_io *io, const expert_io_req *req);
/* Sets the dest of every piece of req so that they lie in [base, base + room), base 4096-aligned.
 * Returns 0, or -1 with the reason in err (unknown fd, does not fit). */
int expert_io_layout(const expert_io *io, expert_io_req *req, void *base, size_t room, char *err,
                     size_t errlen);

/* Memory for destinations: `bytes` rounded up to 2 MiB, 2 MiB-aligned, advised to be backed by
 * transparent huge pages. Use it for O_DIRECT: the pages of a huge page are physically contiguous,
 * so a 4 MiB read is a few large segments for the block device instead of 1024 small ones (measured
 * on the virtio disk: 0.6 GB/s with 4 KiB pages, 1.5-2.7 GB/s with huge pages; see bench/io.sh).
 * Every page is faulted in before it returns (reads into fresh memory are slow), so the memory
 * counts as used from the start. NULL if out of memory. Free with expert_io_buffer_free. */
void *expert_io_buffer_alloc(size_t bytes);
void expert_io_buffer_free(void *p);

/* Starts reading n requests (copied: reqs may be reused at once). Fails without reading anything if
 * a batch is still in flight, n exceeds max_requests, or a piece is invalid (unknown fd, empty,
 * misaligned for O_DIRECT). Returns 0 or -1. */
int expert_io_submit(expert_io *io, const expert_io_req *reqs, int n, char *err, size_t errlen);
/* Waits for the next request of the batch to complete, in completion order (not submission order),
 * and sets *index to its position in the batch. Returns 1 when one completed, 0 when every request
 * of the batch has already been returned, -1 on failure: the batch then ends, after every read still
 * in flight has finished or been cancelled, so nothing writes into the caller's memory afterwards.
 * The destinations of requests not returned with 1 hold no valid data. */
int expert_io_wait_any(expert_io *io, int *index, char *err, size_t errlen);
/* Waits for every request not yet returned. Returns 0 or -1 (as above). */
int expert_io_wait_all(expert_io *io, char *err, size_t errlen);

void expert_io_stats_get(const expert_io *io, expert_io_stats *out);

#endif
