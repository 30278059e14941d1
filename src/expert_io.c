/* Expert I/O engine (see expert_io.h).
 *
 * A batch is an array of requests; each request is a list of pieces; each piece is read as a run of
 * chunks. A cursor (request, piece, position) hands out the next chunk to whichever reader is free:
 * a reader thread (thread back-end) or a free io_uring slot (io_uring back-end). When the last chunk
 * of a request completes, its index is appended to done[], which expert_io_wait_any consumes in
 * order. Nothing here is allocated after expert_io_create except the file table (at open/register). */
#include "expert_io.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    DEFAULT_THREADS = 8,
    DEFAULT_QUEUE_DEPTH = 64,
    DEFAULT_MAX_REQUESTS = 256,
    DEFAULT_CHUNK = 1 << 20,
    MAX_CHUNK = 64 << 20,
    PIECE_ALIGN_CACHED = 64, /* where expert_io_layout starts a piece of a non-direct fd */
};

typedef struct {
    char *name; /* NULL: fd not registered */
    int direct;
    int owned; /* opened by expert_io_open: closed at free */
} io_file;

/* Part of one piece, read by one reader. */
typedef struct {
    int req, piece;
    int fd, direct;
    uint64_t off; /* file offset of the chunk's first byte */
    char *dst;
    size_t len;   /* bytes to read */
    size_t need;  /* bytes of them that must exist; the rest is O_DIRECT padding past the piece */
    size_t done;  /* bytes read so far */
    int calls;    /* read calls issued for it */
} io_chunk;

typedef enum { CHUNK_MORE, CHUNK_DONE, CHUNK_EOF, CHUNK_ERROR } chunk_status;

typedef struct {
    expert_io_req req;
    int chunks_left;
    int inject_fail; /* test hook: fail this request with EIO instead of reading it */
} io_request;

struct expert_io {
    expert_io_config cfg;
    expert_io_backend backend;
    io_file *files; /* indexed by fd */
    int n_files;

    /* the batch */
    io_request *reqs; /* cfg.max_requests */
    int *done;        /* indices of completed requests, in completion order */
    int n_reqs, n_completed, n_returned;
    int cur_req, cur_piece; /* cursor: next chunk to hand out */
    int oldest;             /* lowest request index with chunks not finished (for cfg.window) */
    uint64_t cur_pos;       /* bytes of the current piece's span already handed out */
    int inflight;           /* chunks handed out and not finished */
    int failed;             /* the batch failed: no new chunks; ends once inflight == 0 */
    char fail_msg[512];
    long submitted; /* requests submitted since creation (for fail_after) */
    expert_io_stats stats;

    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* readers wait for chunks */
    pthread_cond_t done_cv; /* the caller waits for completions */

    /* thread back-end */
    pthread_t *threads;
    int n_threads;
    int stop;

    /* io_uring back-end: one slot per read in flight; user_data is the slot index */
    struct io_uring ring;
    int ring_ok;
    int ring_dead; /* io_uring failed beyond recovery: the engine refuses new batches */
    io_chunk *slots;
    int *free_slots;
    int n_free;
};


static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

const char *expert_io_backend_name(expert_io_backend b) {
    return b == EXPERT_IO_URING ? "io_uring" : "threads";
}

expert_io_backend expert_io_backend_used(const expert_io *io) { return io->backend; }
expert_io_mode expert_io_mode_used(const expert_io *io) { return io->cfg.mode; }

/* ---- files ---- */

static const io_file *file_get(const expert_io *io, int fd) {
    if (fd < 0 || fd >= io->n_files || !io->files[fd].name) return NULL;
    return &io->files[fd];
}

static int file_add(expert_io *io, int fd, const char *name, int owned, char *err, size_t errlen) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) {
        util_err_set(err, errlen, "%s: not an open file descriptor (%d): %s", name, fd, strerror(errno));
        return -1;
    }
    if (fd >= io->n_files) {
        int n = fd + 16;
        io_file *f = realloc(io->files, (size_t)n * sizeof *f);
        if (!f) {
            util_err_set(err, errlen, "out of memory registering %s", name);
            return -1;
        }
        memset(f + io->n_files, 0, (size_t)(n - io->n_files) * sizeof *f);
        io->files = f;
        io->n_files = n;
    }
    char *copy = strdup(name);
    if (!copy) {
        util_err_set(err, errlen, "out of memory registering %s", name);
        return -1;
    }
    io_file *f = &io->files[fd];
    free(f->name);
    f->name = copy;
    f->direct = (fl & O_DIRECT) != 0;
    f->owned = owned;
    return 0;
}

int expert_io_register(expert_io *io, int fd, const char *name, char *err, size_t errlen) {
    return file_add(io, fd, name ? name : "(unnamed fd)", 0, err, errlen);
}

int expert_io_open(expert_io *io, const char *path, char *err, size_t errlen) {
    int direct = io->cfg.mode == EXPERT_IO_DIRECT;
    int fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
    if (fd < 0) {
        if (direct && errno == EINVAL)
            util_err_set(err, errlen, "%s: cannot open with O_DIRECT (not supported by this file system?): %s",
                    path, strerror(errno));
        else
            util_err_set(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (file_add(io, fd, path, 1, err, errlen) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int expert_io_fd_direct(const expert_io *io, int fd) {
    const io_file *f = file_get(io, fd);
    return f ? f->direct : -1;
}

/* ---- layout ---- */

/* The file range a piece reads: for a direct fd, the 4096-aligned span around it. */
static void piece_span(const expert_io_piece *p, int direct, uint64_t *start, uint64_t *end) {
    if (direct) {
        *start = p->offset / EXPERT_IO_ALIGN * EXPERT_IO_ALIGN;
        *end = round_up(p->offset + p->length, EXPERT_IO_ALIGN);
    } else {
        *start = p->offset;
        *end = p->offset + p->length;
    }
}

/* Lays out req's pieces from position 0 of a buffer; sets dests relative to base when base is not
 * NULL. Returns the bytes used, or 0 if a piece's fd is unknown. */
static size_t layout_pieces(const expert_io *io, expert_io_req *req, char *base) {
    size_t pos = 0;
    for (int i = 0; i < req->n_pieces; i++) {
        expert_io_piece *p = &req->piece[i];
        const io_file *f = file_get(io, p->fd);
        if (!f) return 0;
        if (f->direct) {
            uint64_t start, end;
            piece_span(p, 1, &start, &end);
            pos = round_up(pos, EXPERT_IO_ALIGN);
            if (base) p->dest = base + pos + (p->offset - start);
            pos += end - start;
        } else {
            pos = round_up(pos, PIECE_ALIGN_CACHED);
            if (base) p->dest = base + pos;
            pos += p->length;
        }
    }
    return round_up(pos, EXPERT_IO_ALIGN);
}

size_t expert_io_req_room(const expert_io *io, const expert_io_req *req) {
    expert_io_req copy = *req;
    if (copy.n_pieces < 1 || copy.n_pieces > EXPERT_IO_MAX_PIECES) return 0;
    return layout_pieces(io, &copy, NULL);
}

int expert_io_layout(const expert_io *io, expert_io_req *req, void *base, size_t room, char *err,
                     size_t errlen) {
    if ((uintptr_t)base % EXPERT_IO_ALIGN) {
        util_err_set(err, errlen, "expert_io_layout: buffer %p is not %d-aligned", base, EXPERT_IO_ALIGN);
        return -1;
    }
    if (req->n_pieces < 1 || req->n_pieces > EXPERT_IO_MAX_PIECES) {
        util_err_set(err, errlen, "expert_io_layout: %d pieces (1..%d allowed)", req->n_pieces, EXPERT_IO_MAX_PIECES);
        return -1;
    }
    size_t need = expert_io_req_room(io, req);
    if (!need) {
        util_err_set(err, errlen, "expert_io_layout: a piece names an fd not registered with the engine");
        return -1;
    }
    if (need > room) {
        util_err_set(err, errlen, "expert_io_layout: request needs %zu bytes, buffer holds %zu", need, room);
        return -1;
    }
    layout_pieces(io, req, base);
    return 0;
}

/* ---- destination memory ---- */

void *expert_io_buffer_alloc(size_t bytes) {
    size_t huge = (size_t)2 << 20, size = (size_t)round_up(bytes, huge);
    void *p = NULL;
    if (!bytes || posix_memalign(&p, huge, size)) return NULL;
    madvise(p, size, MADV_HUGEPAGE); /* advice: fails harmlessly without THP */
    /* Fault every page in now: a read into untouched memory pays for allocating and zeroing it
     * inside the submit call (measured: a 288 MiB cache filling for the first time read at
     * 0.7 GB/s instead of 1.5). The memory is committed here, once, like everything else. */
#ifdef MADV_POPULATE_WRITE
    if (madvise(p, size, MADV_POPULATE_WRITE) == 0) return p;
#endif
    for (size_t i = 0; i < size; i += 4096) ((volatile char *)p)[i] = 0;
    return p;
}

void expert_io_buffer_free(void *p) { free(p); }

/* ---- batch bookkeeping (thread back-end: called with mu held) ---- */

static int chunk_count(const expert_io_piece *p, int direct, size_t chunk) {
    uint64_t start, end;
    piece_span(p, direct, &start, &end);
    return (int)((end - start + chunk - 1) / chunk);
}

/* Hands out the next chunk of the batch. Returns 0 when there is none (or the batch failed). */
static int batch_take(expert_io *io, io_chunk *c) {
    if (io->failed) return 0;
    while (io->cur_req < io->n_reqs && (!io->cfg.window || io->cur_req < io->oldest + io->cfg.window)) {
        const expert_io_req *r = &io->reqs[io->cur_req].req;
        if (io->cur_piece >= r->n_pieces) {
            io->cur_req++;
            io->cur_piece = 0;
            io->cur_pos = 0;
            continue;
        }
        const expert_io_piece *p = &r->piece[io->cur_piece];
        int direct = io->files[p->fd].direct;
        uint64_t start, end;
        piece_span(p, direct, &start, &end);
        if (start + io->cur_pos >= end) {
            io->cur_piece++;
            io->cur_pos = 0;
            continue;
        }
        uint64_t need_end = p->offset + p->length;
        *c = (io_chunk){.req = io->cur_req, .piece = io->cur_piece, .fd = p->fd, .direct = direct};
        c->off = start + io->cur_pos;
        c->len = end - c->off < io->cfg.chunk_bytes ? (size_t)(end - c->off) : io->cfg.chunk_bytes;
        c->need = c->off >= need_end ? 0 : need_end - c->off < c->len ? (size_t)(need_end - c->off) : c->len;
        c->dst = (char *)p->dest - (p->offset - start) + io->cur_pos;
        io->cur_pos += c->len;
        return 1;
    }
    return 0;
}

/* Accounts the result of one read call (res bytes, >= 0) to the chunk. */
static chunk_status chunk_account(io_chunk *c, size_t res) {
    if (res == 0) return c->done >= c->need ? CHUNK_DONE : CHUNK_EOF;
    c->done += res;
    if (c->done >= c->len) return CHUNK_DONE;
    /* O_DIRECT reads whole blocks; a read ending inside one stopped at the end of the file */
    if (c->direct && c->done % EXPERT_IO_ALIGN) return c->done >= c->need ? CHUNK_DONE : CHUNK_EOF;
    return CHUNK_MORE;
}

/* Records a finished chunk: its bytes, and for the first failure of the batch, the message. */
static void batch_finish(expert_io *io, const io_chunk *c, chunk_status st, int err_no) {
    io->stats.bytes += c->done;
    io->stats.reads += (uint64_t)c->calls;
    io_request *r = &io->reqs[c->req];
    if (st != CHUNK_DONE && !io->failed) {
        const expert_io_piece *p = &r->req.piece[c->piece];
        const char *name = io->files[p->fd].name;
        io->failed = 1;
        if (st == CHUNK_EOF)
            snprintf(io->fail_msg, sizeof io->fail_msg,
                     "%s: cannot read %zu bytes at offset %" PRIu64 ": the file ends at offset %" PRIu64, name,
                     p->length, p->offset, c->off + c->done);
        else
            snprintf(io->fail_msg, sizeof io->fail_msg, "%s: cannot read %zu bytes at offset %" PRIu64 ": %s%s%s%s",
                     name, p->length, p->offset, strerror(err_no), r->inject_fail ? " (injected by " : "",
                     r->inject_fail ? (io->cfg.fail_env ? io->cfg.fail_env : "FLASHMOE_IO_FAIL_AFTER") : "",
                     r->inject_fail ? ")" : "");
    }
    if (--r->chunks_left == 0 && !io->failed) io->done[io->n_completed++] = c->req;
    while (io->oldest < io->n_reqs && io->reqs[io->oldest].chunks_left == 0) io->oldest++;
}

static void batch_reset(expert_io *io) {
    io->n_reqs = io->n_completed = io->n_returned = 0;
    io->cur_req = io->cur_piece = io->oldest = 0;
    io->cur_pos = 0;
    io->failed = 0;
}

/* ---- thread back-end ---- */

/* Bytes the next read call of the chunk asks for (fewer only under the read_cap test hook). */
static size_t chunk_ask(const expert_io *io, const io_chunk *c) {
    size_t left = c->len - c->done, cap = io->cfg.read_cap;
    if (cap && c->direct) cap = (size_t)round_up(cap, EXPERT_IO_ALIGN);
    return cap && cap < left ? cap : left;
}

/* Reads the chunk with pread until complete, continuing after short reads. */
static chunk_status chunk_pread(const expert_io *io, io_chunk *c, int *err_no) {
    for (;;) {
        c->calls++;
        ssize_t n = pread(c->fd, c->dst + c->done, chunk_ask(io, c), (off_t)(c->off + c->done));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            *err_no = errno;
            return CHUNK_ERROR;
        }
        chunk_status st = chunk_account(c, (size_t)n);
        if (st != CHUNK_MORE) return st;
    }
}

static void *reader_main(void *arg) {
    expert_io *io = arg;
    pthread_mutex_lock(&io->mu);
    for (;;) {
        io_chunk c;
        while (!io->stop && !batch_take(io, &c)) pthread_cond_wait(&io->work_cv, &io->mu);
        if (io->stop) break;
        io->inflight++;
        int inject = io->reqs[c.req].inject_fail;
        pthread_mutex_unlock(&io->mu);

        int err_no = EIO;
        chunk_status st = inject ? CHUNK_ERROR : chunk_pread(io, &c, &err_no);

        pthread_mutex_lock(&io->mu);
        io->inflight--;
        batch_finish(io, &c, st, err_no);
        pthread_cond_signal(&io->done_cv);
        if (io->cfg.window) pthread_cond_broadcast(&io->work_cv); /* the window may have moved */
    }
    pthread_mutex_unlock(&io->mu);
    return NULL;
}

/* ---- io_uring back-end (runs on the caller's thread only) ---- */

static void uring_queue(expert_io *io, int s) {
    io_chunk *c = &io->slots[s];
    /* never NULL: the submission queue has as many entries as there are slots */
    struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
    io_uring_prep_read(sqe, c->fd, c->dst + c->done, (unsigned)chunk_ask(io, c), c->off + c->done);
    io_uring_sqe_set_data64(sqe, (uint64_t)s);
    /* A buffered read of pages not in the cache would otherwise run inside io_uring_submit, holding
     * the caller there for most of the read (measured: 40-85% of the time); hand it to io_uring's
     * workers so the caller computes meanwhile. O_DIRECT reads only queue the I/O: kept inline. */
    if (!c->direct) io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
    c->calls++;
}

static void uring_release(expert_io *io, int s, chunk_status st, int err_no) {
    io->inflight--;
    batch_finish(io, &io->slots[s], st, err_no);
    io->free_slots[io->n_free++] = s;
}

/* Fills free slots with new chunks (nothing new once the batch failed). */
static void uring_issue(expert_io *io) {
    io_chunk c;
    while (io->n_free > 0 && batch_take(io, &c)) {
        if (io->reqs[c.req].inject_fail) {
            batch_finish(io, &c, CHUNK_ERROR, EIO);
            continue;
        }
        int s = io->free_slots[--io->n_free];
        io->slots[s] = c;
        io->inflight++;
        uring_queue(io, s);
    }
}

/* Processes every completion ready now; short reads are queued again. Returns how many. */
static int uring_reap(expert_io *io) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&io->ring, head, cqe) {
        int s = (int)io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        n++;
        if (res == -EAGAIN || res == -EINTR) {
            uring_queue(io, s);
        } else if (res < 0) {
            uring_release(io, s, CHUNK_ERROR, -res);
        } else {
            chunk_status st = chunk_account(&io->slots[s], (size_t)res);
            if (st == CHUNK_MORE)
                uring_queue(io, s);
            else
                uring_release(io, s, st, 0);
        }
    }
    io_uring_cq_advance(&io->ring, n);
    return (int)n;
}

/* Hands the queued reads to the kernel; with wait, also blocks until one read completes. Returns 0,
 * or -1 when io_uring failed beyond recovery: the batch fails and the engine takes no new batches. */
static int uring_submit(expert_io *io, int wait) {
    for (;;) {
        int ret = wait ? io_uring_submit_and_wait(&io->ring, 1) : io_uring_submit(&io->ring);
        if (ret >= 0 || ret == -EINTR) return 0;
        if (ret == -EAGAIN || ret == -EBUSY) { /* out of resources: make room, then retry */
            if (uring_reap(io) == 0) nanosleep(&(struct timespec){0, 100000}, NULL);
            continue;
        }
        /* cannot happen with valid arguments; reads already in the kernel still complete */
        if (!io->failed) snprintf(io->fail_msg, sizeof io->fail_msg, "io_uring_submit: %s", strerror(-ret));
        io->failed = 1;
        io->ring_dead = 1;
        io->inflight -= (int)io_uring_sq_ready(&io->ring); /* queued, never to be read */
        return -1;
    }
}

/* Keeps the ring full: issues new chunks, submits, and processes completions until none is ready.
 * With wait (and reads in flight), first blocks until at least one read completes. */
static void uring_pump(expert_io *io, int wait) {
    if (io->ring_dead) { /* only collect the reads the kernel already has */
        struct io_uring_cqe *cqe;
        if (wait && io->inflight > 0 && io_uring_wait_cqe(&io->ring, &cqe) < 0) io->inflight = 0;
        uring_reap(io);
        return;
    }
    do {
        uring_issue(io);
        if (uring_submit(io, wait && io->inflight > 0) < 0) return;
        wait = 0;
    } while (uring_reap(io) > 0);
}

/* ---- create / free ---- */

static int config_check(expert_io_config *c, char *err, size_t errlen) {
    if (!c->threads) c->threads = DEFAULT_THREADS;
    if (!c->queue_depth) c->queue_depth = DEFAULT_QUEUE_DEPTH;
    if (!c->chunk_bytes) c->chunk_bytes = DEFAULT_CHUNK;
    if (!c->max_requests) c->max_requests = DEFAULT_MAX_REQUESTS;
    if (c->threads < 1 || c->threads > 256) {
        util_err_set(err, errlen, "expert_io: threads %d out of range 1..256", c->threads);
        return -1;
    }
    if (c->queue_depth < 1 || c->queue_depth > 4096) {
        util_err_set(err, errlen, "expert_io: queue_depth %d out of range 1..4096", c->queue_depth);
        return -1;
    }
    if (c->chunk_bytes % EXPERT_IO_ALIGN || c->chunk_bytes > MAX_CHUNK) {
        util_err_set(err, errlen, "expert_io: chunk_bytes %zu must be a multiple of %d, at most %d", c->chunk_bytes,
                EXPERT_IO_ALIGN, MAX_CHUNK);
        return -1;
    }
    if (c->window < 0) {
        util_err_set(err, errlen, "expert_io: window %d is negative", c->window);
        return -1;
    }
    if (c->max_requests < 1) {
        util_err_set(err, errlen, "expert_io: max_requests %d must be positive", c->max_requests);
        return -1;
    }
    const char *var = c->fail_env ? c->fail_env : "FLASHMOE_IO_FAIL_AFTER", *env = getenv(var);
    if (env && *env) {
        char *end;
        errno = 0;
        long n = strtol(env, &end, 10);
        if (errno || *end || n < 0) {
            util_err_set(err, errlen, "%s='%s' is not a number of requests", var, env);
            return -1;
        }
        c->fail_after = n;
    }
    return 0;
}

static void threads_stop(expert_io *io) {
    pthread_mutex_lock(&io->mu);
    io->stop = 1;
    pthread_cond_broadcast(&io->work_cv);
    pthread_mutex_unlock(&io->mu);
    for (int i = 0; i < io->n_threads; i++) pthread_join(io->threads[i], NULL);
    io->n_threads = 0;
}

static int threads_start(expert_io *io, char *err, size_t errlen) {
    io->threads = calloc((size_t)io->cfg.threads, sizeof *io->threads);
    if (!io->threads) {
        util_err_set(err, errlen, "expert_io: out of memory");
        return -1;
    }
    for (int i = 0; i < io->cfg.threads; i++) {
        int rc = pthread_create(&io->threads[i], NULL, reader_main, io);
        if (rc) {
            util_err_set(err, errlen, "expert_io: cannot start reader thread %d: %s", i, strerror(rc));
            return -1;
        }
        io->n_threads++;
    }
    return 0;
}

static int uring_start(expert_io *io, char *err, size_t errlen) {
    int qd = io->cfg.queue_depth;
    int rc = io_uring_queue_init((unsigned)qd, &io->ring, 0);
    if (rc < 0) {
        util_err_set(err, errlen, "%s", strerror(-rc));
        return -1;
    }
    io->ring_ok = 1;
    io->slots = calloc((size_t)qd, sizeof *io->slots);
    io->free_slots = calloc((size_t)qd, sizeof *io->free_slots);
    if (!io->slots || !io->free_slots) {
        util_err_set(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < qd; i++) io->free_slots[io->n_free++] = qd - 1 - i;
    return 0;
}

expert_io *expert_io_create(const expert_io_config *cfg, char *err, size_t errlen) {
    expert_io *io = calloc(1, sizeof *io);
    if (!io) {
        util_err_set(err, errlen, "expert_io: out of memory");
        return NULL;
    }
    if (cfg) io->cfg = *cfg;
    pthread_mutex_init(&io->mu, NULL);
    pthread_cond_init(&io->work_cv, NULL);
    pthread_cond_init(&io->done_cv, NULL);
    if (config_check(&io->cfg, err, errlen) < 0) goto fail;
    io->reqs = calloc((size_t)io->cfg.max_requests, sizeof *io->reqs);
    io->done = calloc((size_t)io->cfg.max_requests, sizeof *io->done);
    if (!io->reqs || !io->done) {
        util_err_set(err, errlen, "expert_io: out of memory");
        goto fail;
    }
    io->backend = io->cfg.backend;
    if (io->backend == EXPERT_IO_URING) {
        char why[256];
        if (uring_start(io, why, sizeof why) < 0) {
            if (!io->cfg.quiet)
                fprintf(stderr, "expert_io: io_uring unavailable (%s); using %d reader threads\n", why,
                        io->cfg.threads);
            if (io->ring_ok) io_uring_queue_exit(&io->ring);
            io->ring_ok = 0;
            io->backend = EXPERT_IO_THREADS;
        }
    }
    if (io->backend == EXPERT_IO_THREADS && threads_start(io, err, errlen) < 0) goto fail;
    return io;
fail:
    expert_io_free(io);
    return NULL;
}

void expert_io_free(expert_io *io) {
    if (!io) return;
    if (io->n_reqs) expert_io_wait_all(io, NULL, 0);
    if (io->n_threads) threads_stop(io);
    if (io->ring_ok) io_uring_queue_exit(&io->ring);
    for (int fd = 0; fd < io->n_files; fd++) {
        if (io->files[fd].owned) close(fd);
        free(io->files[fd].name);
    }
    free(io->files);
    free(io->threads);
    free(io->slots);
    free(io->free_slots);
    free(io->reqs);
    free(io->done);
    pthread_mutex_destroy(&io->mu);
    pthread_cond_destroy(&io->work_cv);
    pthread_cond_destroy(&io->done_cv);
    free(io);
}

/* ---- submit / wait ---- */

static int req_check(const expert_io *io, const expert_io_req *r, int index, char *err, size_t errlen) {
    if (r->n_pieces < 1 || r->n_pieces > EXPERT_IO_MAX_PIECES) {
        util_err_set(err, errlen, "request %d: %d pieces (1..%d allowed)", index, r->n_pieces, EXPERT_IO_MAX_PIECES);
        return -1;
    }
    for (int i = 0; i < r->n_pieces; i++) {
        const expert_io_piece *p = &r->piece[i];
        const io_file *f = file_get(io, p->fd);
        if (!f) {
            util_err_set(err, errlen, "request %d piece %d: fd %d is not registered with the engine", index, i, p->fd);
            return -1;
        }
        if (!p->length || !p->dest || p->offset + p->length < p->offset) {
            util_err_set(err, errlen, "%s: request %d piece %d: invalid range (offset %" PRIu64 ", length %zu, dest %p)",
                    f->name, index, i, p->offset, p->length, p->dest);
            return -1;
        }
        if (f->direct && ((uintptr_t)p->dest - p->offset % EXPERT_IO_ALIGN) % EXPERT_IO_ALIGN) {
            util_err_set(err, errlen,
                    "%s: request %d piece %d: O_DIRECT needs dest - offset %% %d to be %d-aligned "
                    "(use expert_io_layout)",
                    f->name, index, i, EXPERT_IO_ALIGN, EXPERT_IO_ALIGN);
            return -1;
        }
    }
    return 0;
}

int expert_io_submit(expert_io *io, const expert_io_req *reqs, int n, char *err, size_t errlen) {
    if (io->ring_dead) {
        util_err_set(err, errlen, "expert_io: unusable after an earlier io_uring failure");
        return -1;
    }
    if (io->n_reqs) {
        util_err_set(err, errlen, "expert_io_submit: a batch is still in flight (wait for it first)");
        return -1;
    }
    if (n < 0 || n > io->cfg.max_requests) {
        util_err_set(err, errlen, "expert_io_submit: %d requests (at most %d per batch)", n, io->cfg.max_requests);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (req_check(io, &reqs[i], i, err, errlen) < 0) return -1;
    if (!n) return 0;

    pthread_mutex_lock(&io->mu);
    for (int i = 0; i < n; i++) {
        io_request *r = &io->reqs[i];
        r->req = reqs[i];
        r->chunks_left = 0;
        for (int j = 0; j < r->req.n_pieces; j++) {
            const expert_io_piece *p = &r->req.piece[j];
            r->chunks_left += chunk_count(p, io->files[p->fd].direct, io->cfg.chunk_bytes);
        }
        r->inject_fail = ++io->submitted == io->cfg.fail_after;
    }
    batch_reset(io);
    io->n_reqs = n;
    if (io->backend == EXPERT_IO_THREADS)
        pthread_cond_broadcast(&io->work_cv);
    else
        uring_pump(io, 0);
    pthread_mutex_unlock(&io->mu);
    return 0;
}

int expert_io_wait_any(expert_io *io, int *index, char *err, size_t errlen) {
    uint64_t t0 = now_ns();
    int rc;
    pthread_mutex_lock(&io->mu);
    for (;;) {
        if (io->failed) {
            if (io->inflight == 0) {
                util_err_set(err, errlen, "%s", io->fail_msg);
                io->stats.failures++;
                batch_reset(io);
                rc = -1;
                break;
            }
        } else if (io->n_returned < io->n_completed) {
            *index = io->done[io->n_returned++];
            io->stats.requests++;
            if (io->n_returned == io->n_reqs) batch_reset(io);
            rc = 1;
            break;
        } else if (io->n_returned == io->n_reqs) {
            rc = 0;
            break;
        }
        if (io->backend == EXPERT_IO_THREADS)
            pthread_cond_wait(&io->done_cv, &io->mu);
        else
            uring_pump(io, 1);
    }
    if (rc == 1 && io->backend == EXPERT_IO_URING && io->n_reqs) uring_pump(io, 0); /* keep the disk busy */
    io->stats.wait_ns += now_ns() - t0;
    pthread_mutex_unlock(&io->mu);
    return rc;
}

int expert_io_wait_all(expert_io *io, char *err, size_t errlen) {
    int index, rc;
    while ((rc = expert_io_wait_any(io, &index, err, errlen)) == 1) {
    }
    return rc;
}

void expert_io_stats_get(const expert_io *io, expert_io_stats *out) {
    expert_io *m = (expert_io *)io; /* the lock only guards the read */
    pthread_mutex_lock(&m->mu);
    *out = io->stats;
    pthread_mutex_unlock(&m->mu);
}
