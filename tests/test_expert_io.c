/* Expert I/O engine and expert cache: every byte read matches the file in both back-ends and both
 * modes, completions come back in completion order with the right index, the LRU cache evicts in
 * order and never evicts a pinned expert, a truncated file or an injected EIO gives an error naming
 * the file, and memory stays within the budget with nothing allocated per layer. */
#include "expert_cache.h"
#include "expert_io.h"
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum {
    N_REC = 64,                  /* records in the test file */
    REC = 512 << 10,             /* record size: 4 KiB-aligned, like the packed expert file */
    SMALL_CHUNK = 64 << 10,      /* chunk size in tests, so one record is 8 chunks */
    K = 8,                       /* experts per batch */
};

/* ---- fixture: a directory under /tmp with a file of N_REC random records ---- */

typedef struct {
    char dir[64];
    char path[128];
    unsigned char *data; /* the file's bytes */
    size_t size;
} fixture;

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = fwrite(data, 1, size, f);
    return fclose(f) == 0 && n == size ? 0 : -1;
}

static int fixture_make(fixture *fx) {
    memset(fx, 0, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/flashmoe_eio.XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    snprintf(fx->path, sizeof fx->path, "%s/experts.bin", fx->dir);
    fx->size = (size_t)N_REC * REC;
    fx->data = malloc(fx->size);
    if (!fx->data) return -1;
    uint64_t s = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < fx->size; i += 8) {
        uint64_t v = rng_next(&s);
        memcpy(fx->data + i, &v, 8);
    }
    return write_file(fx->path, fx->data, fx->size);
}

static void fixture_free(fixture *fx) {
    char cmd[128];
    free(fx->data);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    if (system(cmd) != 0) fprintf(stderr, "  could not remove %s\n", fx->dir);
}

static const char *mode_name(expert_io_mode m) { return m == EXPERT_IO_DIRECT ? "direct" : "cached"; }

static expert_io *engine_make_capped(expert_io_backend b, expert_io_mode m, size_t chunk, size_t read_cap) {
    char err[512];
    expert_io_config cfg = {.backend = b, .mode = m, .chunk_bytes = chunk, .threads = 4, .queue_depth = 32,
                            .read_cap = read_cap};
    expert_io *io = expert_io_create(&cfg, err, sizeof err);
    CHECK(io != NULL, "expert_io_create(%s, %s): %s", expert_io_backend_name(b), mode_name(m), err);
    return io;
}

static expert_io *engine_make(expert_io_backend b, expert_io_mode m, size_t chunk) {
    return engine_make_capped(b, m, chunk, 0);
}

/* K distinct random records */
static void pick_distinct(uint64_t *s, int *out, int k, int n) {
    for (int i = 0; i < k; i++) {
        int again;
        do {
            out[i] = (int)(rng_next(s) % (uint64_t)n);
            again = 0;
            for (int j = 0; j < i; j++) again |= out[j] == out[i];
        } while (again);
    }
}

static void *aligned(size_t n) {
    void *p = NULL;
    return posix_memalign(&p, EXPERT_IO_ALIGN, n) ? NULL : p;
}

/* ---- engine: bytes, order, chunking ---- */

/* Random batches of whole records, consumed with wait_any (and every third with wait_all). With
 * read_cap, every read call returns at most that many bytes, so records complete through short reads. */
static void check_batches(fixture *fx, expert_io_backend b, expert_io_mode m, size_t chunk, size_t read_cap) {
    char err[512];
    expert_io *io = engine_make_capped(b, m, chunk, read_cap);
    if (!io) return;
    int fd = expert_io_open(io, fx->path, err, sizeof err);
    CHECK(fd >= 0, "%s", err);
    CHECK(expert_io_fd_direct(io, fd) == (m == EXPERT_IO_DIRECT), "fd direct flag %d", expert_io_fd_direct(io, fd));
    unsigned char *buf = aligned((size_t)K * REC);
    uint64_t s = 12345;
    for (int round = 0; round < 12 && fd >= 0; round++) {
        int rec[K], seen[K] = {0};
        expert_io_req r[K];
        pick_distinct(&s, rec, K, N_REC);
        memset(buf, 0xAA, (size_t)K * REC);
        for (int i = 0; i < K; i++)
            r[i] = (expert_io_req){1, {{fd, (uint64_t)rec[i] * REC, REC, buf + (size_t)i * REC}}};
        CHECK(expert_io_submit(io, r, K, err, sizeof err) == 0, "submit: %s", err);
        if (round % 3 == 2) {
            CHECK(expert_io_wait_all(io, err, sizeof err) == 0, "wait_all: %s", err);
            for (int i = 0; i < K; i++) seen[i] = 1;
        } else {
            int idx, rc, got = 0;
            while ((rc = expert_io_wait_any(io, &idx, err, sizeof err)) == 1) {
                CHECK(idx >= 0 && idx < K && !seen[idx], "index %d returned twice or out of range", idx);
                if (idx < 0 || idx >= K) break;
                seen[idx] = 1;
                got++;
                /* the caller may compute on it now: its bytes must be complete already */
                CHECK(!memcmp(buf + (size_t)idx * REC, fx->data + (size_t)rec[idx] * REC, REC),
                      "%s/%s: record %d differs on arrival", expert_io_backend_name(b), mode_name(m), rec[idx]);
            }
            CHECK(rc == 0 && got == K, "wait_any ended with %d after %d of %d: %s", rc, got, K, err);
        }
        for (int i = 0; i < K; i++)
            CHECK(seen[i] && !memcmp(buf + (size_t)i * REC, fx->data + (size_t)rec[i] * REC, REC),
                  "%s/%s chunk %zu: record %d differs", expert_io_backend_name(b), mode_name(m), chunk, rec[i]);
    }
    expert_io_stats st;
    expert_io_stats_get(io, &st);
    CHECK(st.requests == 12 * K, "requests %llu", (unsigned long long)st.requests);
    CHECK(st.bytes == (uint64_t)12 * K * REC, "bytes %llu", (unsigned long long)st.bytes);
    size_t per_read = chunk ? chunk : 1 << 20;
    if (read_cap) per_read = m == EXPERT_IO_DIRECT ? (read_cap + 4095) / 4096 * 4096 : read_cap;
    uint64_t reads_per_rec = (REC + per_read - 1) / per_read;
    CHECK(st.reads >= (uint64_t)12 * K * reads_per_rec, "%llu reads, expected at least %llu",
          (unsigned long long)st.reads, (unsigned long long)(12 * K * reads_per_rec));
    free(buf);
    expert_io_free(io);
}

static fixture g_fx;

static void test_batches_all_backends_and_modes(void) {
    for (int b = 0; b < 2; b++)
        for (int m = 0; m < 2; m++) {
            check_batches(&g_fx, (expert_io_backend)b, (expert_io_mode)m, SMALL_CHUNK, 0);
            check_batches(&g_fx, (expert_io_backend)b, (expert_io_mode)m, 0, 0); /* default 1 MiB: one chunk */
            check_batches(&g_fx, (expert_io_backend)b, (expert_io_mode)m, SMALL_CHUNK, 1000); /* short reads */
        }
}

/* Safetensors-like experts: 3 slices at arbitrary offsets, laid out by expert_io_layout. */
static void test_unaligned_pieces(void) {
    char err[512];
    for (int b = 0; b < 2; b++)
        for (int m = 0; m < 2; m++) {
            expert_io *io = engine_make((expert_io_backend)b, (expert_io_mode)m, SMALL_CHUNK);
            if (!io) continue;
            int fd = expert_io_open(io, g_fx.path, err, sizeof err);
            CHECK(fd >= 0, "%s", err);
            size_t room = 3 * (REC / 3 + 2 * EXPERT_IO_ALIGN) / EXPERT_IO_ALIGN * EXPERT_IO_ALIGN;
            int laid_out = 1;
            unsigned char *buf = aligned((size_t)K * room);
            expert_io_req r[K];
            for (int i = 0; i < K; i++) {
                int e = (i * 7 + 3) % (N_REC - 1);
                r[i].n_pieces = 3;
                for (int j = 0; j < 3; j++)
                    r[i].piece[j] = (expert_io_piece){fd, (uint64_t)e * REC + 123 + (uint64_t)j * (REC / 3) + (uint64_t)i,
                                                      (size_t)(REC / 3 - 500 - 11 * j), NULL};
                CHECK(expert_io_req_room(io, &r[i]) <= room, "room %zu > %zu", expert_io_req_room(io, &r[i]), room);
                int rc = expert_io_layout(io, &r[i], buf + (size_t)i * room, room, err, sizeof err);
                CHECK(rc == 0, "%s", err);
                laid_out &= rc == 0;
            }
            int rc = laid_out ? expert_io_submit(io, r, K, err, sizeof err) : -1;
            CHECK(rc == 0, "%s", err);
            rc = rc ? rc : expert_io_wait_all(io, err, sizeof err);
            CHECK(rc == 0, "%s", err);
            for (int i = 0; i < K && rc == 0; i++)
                for (int j = 0; j < 3; j++) {
                    const expert_io_piece *p = &r[i].piece[j];
                    CHECK(!memcmp(p->dest, g_fx.data + p->offset, p->length), "%s/%s: request %d piece %d differs",
                          expert_io_backend_name((expert_io_backend)b), mode_name((expert_io_mode)m), i, j);
                }
            free(buf);
            expert_io_free(io);
        }
}

/* A big request from disk (O_DIRECT) submitted first and a tiny one from the page cache second: the
 * tiny one completes first, and its index says so. Checked over a few trials since it is a race the
 * disk almost always loses; correctness of the indices is checked in every trial. */
/* With a window of W requests, request i is read only once every request up to i - W has finished, so
 * it can only arrive after them (W = 1: exactly the batch order); the bytes are complete on arrival.
 * Request 0 is 8 MiB (8 chunks) and the others one 4 KiB block each: without the window the small ones
 * would all be in flight with it and arrive first. */
static void test_window_order(void) {
    char err[512];
    const size_t big = (size_t)16 * REC, small = 4096;
    expert_io *bad = expert_io_create(&(expert_io_config){.window = -1}, err, sizeof err);
    CHECK(!bad && strstr(err, "window -1"), "a negative window was accepted (%s)", bad ? "created" : err);
    expert_io_free(bad);
    for (int b = 0; b < 2; b++)
        for (int w = 1; w <= 3; w++) {
            expert_io_config cfg = {.backend = (expert_io_backend)b, .mode = EXPERT_IO_DIRECT, .threads = 4,
                                    .queue_depth = 32, .window = w};
            expert_io *io = expert_io_create(&cfg, err, sizeof err);
            CHECK(io != NULL, "expert_io_create: %s", err);
            if (!io) continue;
            int fd = expert_io_open(io, g_fx.path, err, sizeof err);
            CHECK(fd >= 0, "%s", err);
            unsigned char *buf = aligned(big + (size_t)K * small);
            uint64_t s = 777 + (uint64_t)w, off[K];
            size_t len[K];
            for (int round = 0; round < 6 && fd >= 0; round++) {
                int seen[K] = {0}, idx, rc, got = 0;
                expert_io_req r[K];
                for (int i = 0; i < K; i++) {
                    off[i] = i == 0 ? rng_next(&s) % (N_REC - 16) * REC : rng_next(&s) % (g_fx.size / small) * small;
                    len[i] = i == 0 ? big : small;
                    r[i] = (expert_io_req){1, {{fd, off[i], len[i], buf + (i ? big + (size_t)(i - 1) * small : 0)}}};
                }
                CHECK(expert_io_submit(io, r, K, err, sizeof err) == 0, "submit: %s", err);
                while ((rc = expert_io_wait_any(io, &idx, err, sizeof err)) == 1 && idx >= 0 && idx < K) {
                    for (int j = 0; j <= idx - w; j++)
                        CHECK(seen[j], "%s, window %d: request %d arrived before request %d",
                              expert_io_backend_name((expert_io_backend)b), w, idx, j);
                    CHECK(!memcmp(r[idx].piece[0].dest, g_fx.data + off[idx], len[idx]),
                          "window %d: request %d differs on arrival", w, idx);
                    seen[idx] = 1;
                    got++;
                }
                CHECK(rc == 0 && got == K, "wait_any ended with %d after %d of %d: %s", rc, got, K, err);
            }
            free(buf);
            expert_io_free(io);
        }
}

static void test_out_of_order_completion(void) {
    char err[512];
    for (int b = 0; b < 2; b++) {
        expert_io *io = engine_make((expert_io_backend)b, EXPERT_IO_CACHED, 0);
        if (!io) continue;
        int cached = expert_io_open(io, g_fx.path, err, sizeof err);
        int direct = open(g_fx.path, O_RDONLY | O_DIRECT);
        CHECK(cached >= 0 && direct >= 0, "open: %s", err);
        CHECK(expert_io_register(io, direct, g_fx.path, err, sizeof err) == 0, "%s", err);
        CHECK(expert_io_fd_direct(io, direct) == 1, "registered O_DIRECT fd not seen as direct");
        size_t big = (size_t)32 * REC;
        unsigned char *buf = aligned(big + REC), tiny[100];
        int out_of_order = 0;
        for (int trial = 0; trial < 8; trial++) {
            expert_io_req r[2] = {{1, {{direct, 0, big, buf}}}, {1, {{cached, 40 * (uint64_t)REC + 7, sizeof tiny, tiny}}}};
            memset(tiny, 0, sizeof tiny);
            CHECK(expert_io_submit(io, r, 2, err, sizeof err) == 0, "%s", err);
            int first, second, rc3, rest;
            int rc1 = expert_io_wait_any(io, &first, err, sizeof err);
            int rc2 = expert_io_wait_any(io, &second, err, sizeof err);
            rc3 = expert_io_wait_any(io, &rest, err, sizeof err);
            CHECK(rc1 == 1 && rc2 == 1 && rc3 == 0 && first + second == 1, "rc %d %d %d, indices %d %d", rc1, rc2,
                  rc3, first, second);
            if (rc1 == 1 && first == 1) {
                out_of_order++;
                CHECK(!memcmp(tiny, g_fx.data + 40 * (size_t)REC + 7, sizeof tiny), "tiny request differs on arrival");
            }
            CHECK(!memcmp(buf, g_fx.data, big), "big request differs");
            CHECK(!memcmp(tiny, g_fx.data + 40 * (size_t)REC + 7, sizeof tiny), "tiny request differs");
        }
        CHECK(out_of_order > 0, "%s: the tiny request never completed before the big one in 8 trials",
              expert_io_backend_name((expert_io_backend)b));
        free(buf);
        expert_io_free(io);
        close(direct);
    }
}

/* Files that end early: EOF inside a piece fails with the file's name; a direct read whose aligned span
 * runs past the end (but whose piece does not) succeeds. */
static void test_truncated_file(void) {
    char err[512], path[160];
    snprintf(path, sizeof path, "%s/truncated.bin", g_fx.dir);
    size_t size = 10000; /* not a multiple of 4096 */
    CHECK(write_file(path, g_fx.data, size) == 0, "cannot write %s", path);
    for (int b = 0; b < 2; b++)
        for (int m = 0; m < 2; m++) {
            const char *what = m ? "direct" : "cached";
            expert_io *io = engine_make((expert_io_backend)b, (expert_io_mode)m, 4096);
            if (!io) continue;
            int fd = expert_io_open(io, path, err, sizeof err);
            CHECK(fd >= 0, "%s", err);
            unsigned char *buf = aligned(4 * 16384);
            /* ends exactly at EOF: fine */
            expert_io_req ok = {1, {{fd, 4096, size - 4096, buf}}};
            CHECK(expert_io_submit(io, &ok, 1, err, sizeof err) == 0, "%s", err);
            CHECK(expert_io_wait_all(io, err, sizeof err) == 0, "%s: read up to EOF failed: %s", what, err);
            CHECK(!memcmp(buf, g_fx.data + 4096, size - 4096), "%s: bytes up to EOF differ", what);
            /* one good request, then one past EOF: the batch fails, naming the file */
            expert_io_req r[2] = {{1, {{fd, 0, 4096, buf}}}, {1, {{fd, 8192, 8192, buf + 16384}}}};
            CHECK(expert_io_submit(io, r, 2, err, sizeof err) == 0, "%s", err);
            int idx, rc;
            err[0] = 0;
            while ((rc = expert_io_wait_any(io, &idx, err, sizeof err)) == 1)
                CHECK(idx == 0, "%s: the request past EOF was returned as complete", what);
            CHECK(rc == -1, "%s: reading past EOF gave %d", what, rc);
            CHECK(strstr(err, path) && strstr(err, "offset 8192") && strstr(err, "8192 bytes") &&
                      strstr(err, "ends at offset"),
                  "%s: message does not name file, offset, length and EOF: '%s'", what, err);
            /* the engine is usable afterwards */
            CHECK(expert_io_submit(io, &ok, 1, err, sizeof err) == 0, "%s", err);
            CHECK(expert_io_wait_all(io, err, sizeof err) == 0, "%s: after a failure: %s", what, err);
            expert_io_stats st;
            expert_io_stats_get(io, &st);
            CHECK(st.failures == 1, "failures %llu", (unsigned long long)st.failures);
            free(buf);
            expert_io_free(io);
        }
}

/* FLASHMOE_IO_FAIL_AFTER=3: the third request submitted fails with EIO, once. */
static void test_injected_failure(void) {
    char err[512];
    for (int b = 0; b < 2; b++) {
        setenv("FLASHMOE_IO_FAIL_AFTER", "3", 1);
        expert_io *io = engine_make((expert_io_backend)b, EXPERT_IO_DIRECT, SMALL_CHUNK);
        unsetenv("FLASHMOE_IO_FAIL_AFTER");
        if (!io) continue;
        int fd = expert_io_open(io, g_fx.path, err, sizeof err);
        unsigned char *buf = aligned((size_t)K * REC);
        expert_io_req r[K];
        for (int i = 0; i < K; i++) r[i] = (expert_io_req){1, {{fd, (uint64_t)i * REC, REC, buf + (size_t)i * REC}}};
        CHECK(expert_io_submit(io, r, K, err, sizeof err) == 0, "%s", err);
        int idx, rc, got = 0;
        err[0] = 0;
        while ((rc = expert_io_wait_any(io, &idx, err, sizeof err)) == 1) {
            CHECK(idx != 2, "the injected request was returned as complete");
            got++;
        }
        CHECK(rc == -1 && got < K, "injected failure not reported (rc %d, %d returned)", rc, got);
        CHECK(strstr(err, g_fx.path) && strstr(err, strerror(EIO)) && strstr(err, "injected"),
              "message: '%s'", err);
        /* only the third request fails: the next batch is fine */
        CHECK(expert_io_submit(io, r, K, err, sizeof err) == 0, "%s", err);
        CHECK(expert_io_wait_all(io, err, sizeof err) == 0, "after the injected failure: %s", err);
        CHECK(!memcmp(buf, g_fx.data, (size_t)K * REC), "bytes differ after the injected failure");
        free(buf);
        expert_io_free(io);
    }
    setenv("FLASHMOE_IO_FAIL_AFTER", "x3", 1);
    char e2[256];
    expert_io *io = expert_io_create(NULL, e2, sizeof e2);
    unsetenv("FLASHMOE_IO_FAIL_AFTER");
    CHECK(!io && strstr(e2, "FLASHMOE_IO_FAIL_AFTER"), "a malformed FLASHMOE_IO_FAIL_AFTER was accepted");
    expert_io_free(io);
}

static void test_invalid_requests(void) {
    char err[512];
    expert_io *io = engine_make(EXPERT_IO_THREADS, EXPERT_IO_DIRECT, 0);
    if (!io) return;
    int fd = expert_io_open(io, g_fx.path, err, sizeof err);
    unsigned char *buf = aligned(2 * REC);
    expert_io_req bad = {1, {{fd, 0, REC, buf + 512}}};
    CHECK(expert_io_submit(io, &bad, 1, err, sizeof err) < 0 && strstr(err, "O_DIRECT"), "misaligned dest accepted");
    bad = (expert_io_req){1, {{fd + 100, 0, REC, buf}}};
    CHECK(expert_io_submit(io, &bad, 1, err, sizeof err) < 0 && strstr(err, "not registered"), "unknown fd accepted");
    bad = (expert_io_req){1, {{fd, 0, 0, buf}}};
    CHECK(expert_io_submit(io, &bad, 1, err, sizeof err) < 0, "empty piece accepted");
    bad = (expert_io_req){0, {{fd, 0, REC, buf}}};
    CHECK(expert_io_submit(io, &bad, 1, err, sizeof err) < 0, "zero pieces accepted");
    CHECK(expert_io_open(io, "/nonexistent/flashmoe", err, sizeof err) < 0 && strstr(err, "/nonexistent/flashmoe"),
          "open of a missing file: '%s'", err);
    expert_io_req ok = {1, {{fd, 0, REC, buf}}};
    CHECK(expert_io_submit(io, &ok, 1, err, sizeof err) == 0, "%s", err);
    CHECK(expert_io_submit(io, &ok, 1, err, sizeof err) < 0, "a second batch was accepted while one is in flight");
    CHECK(expert_io_wait_all(io, err, sizeof err) == 0, "%s", err);
    CHECK(expert_io_submit(io, &ok, 0, err, sizeof err) == 0, "an empty batch failed: %s", err);
    int idx;
    CHECK(expert_io_wait_any(io, &idx, err, sizeof err) == 0, "wait_any on an empty batch");
    free(buf);
    expert_io_free(io); /* also: free with nothing in flight */

    /* free with a batch still in flight waits for it */
    io = engine_make(EXPERT_IO_URING, EXPERT_IO_DIRECT, SMALL_CHUNK);
    if (!io) return;
    fd = expert_io_open(io, g_fx.path, err, sizeof err);
    buf = aligned(4 * REC);
    expert_io_req r[4];
    for (int i = 0; i < 4; i++) r[i] = (expert_io_req){1, {{fd, (uint64_t)i * REC, REC, buf + (size_t)i * REC}}};
    CHECK(expert_io_submit(io, r, 4, err, sizeof err) == 0, "%s", err);
    expert_io_free(io);
    free(buf);
}

/* io_uring refused (as in a sandbox): the engine falls back to threads and still reads correctly. */
static void test_uring_fallback(void) {
    pid_t pid = fork();
    if (pid == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {sizeof f / sizeof f[0], f};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) _exit(3);
        char err[512];
        expert_io *io = expert_io_create(&(expert_io_config){.backend = EXPERT_IO_URING}, err, sizeof err);
        if (!io || expert_io_backend_used(io) != EXPERT_IO_THREADS) _exit(4);
        int fd = expert_io_open(io, g_fx.path, err, sizeof err);
        unsigned char *buf = malloc(REC);
        expert_io_req r = {1, {{fd, 5 * (uint64_t)REC, REC, buf}}};
        if (expert_io_submit(io, &r, 1, err, sizeof err) || expert_io_wait_all(io, err, sizeof err)) _exit(5);
        int same = !memcmp(buf, g_fx.data + 5 * (size_t)REC, REC);
        expert_io_free(io);
        _exit(same ? 0 : 6);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fallback child exited with %d (3: seccomp refused, "
          "4: no fallback, 5: read failed, 6: bytes differ)", WEXITSTATUS(status));
}

/* ---- cache ---- */

typedef struct {
    int fd;
    int n_experts;
    int split; /* 1: three unaligned slices per expert, like a safetensors checkpoint */
} locate_ctx;

static int locate_record(void *ctx, int layer, int expert, expert_io_req *where, char *err, size_t errlen) {
    locate_ctx *l = ctx;
    uint64_t base = (uint64_t)(layer * l->n_experts + expert) * REC;
    if (base >= (uint64_t)N_REC * REC) {
        snprintf(err, errlen, "no such expert");
        return -1;
    }
    if (!l->split) {
        where->n_pieces = 1;
        where->piece[0] = (expert_io_piece){l->fd, base, REC, NULL};
    } else {
        where->n_pieces = 3;
        for (int j = 0; j < 3; j++)
            where->piece[j] = (expert_io_piece){l->fd, base + 100 + (uint64_t)j * (REC / 3), REC / 3 - 200, NULL};
    }
    return 0;
}

/* The view's bytes are those of (layer, expert). */
static int view_matches(const expert_io_req *x, int layer, int expert, int n_experts) {
    size_t base = (size_t)(layer * n_experts + expert) * REC;
    for (int j = 0; j < x->n_pieces; j++) {
        const expert_io_piece *p = &x->piece[j];
        if (p->offset < base || p->offset + p->length > base + REC) return 0;
        if (memcmp(p->dest, g_fx.data + p->offset, p->length)) return 0;
    }
    return x->n_pieces > 0;
}

/* One layer through the cache; checks each view; returns misses or -1. */
static int run_layer(expert_cache *c, int layer, const int *experts, int n, int n_experts) {
    char err[512];
    int misses = expert_cache_begin(c, layer, experts, n, err, sizeof err);
    CHECK(misses >= 0, "begin: %s", err);
    if (misses < 0) return -1;
    int i, rc, got = 0, seen[64] = {0};
    const expert_io_req *x;
    while ((rc = expert_cache_next(c, &i, &x, err, sizeof err)) == 1) {
        CHECK(i >= 0 && i < n && !seen[i], "position %d twice or out of range", i);
        seen[i] = 1;
        got++;
        CHECK(view_matches(x, layer, experts[i], n_experts), "expert (%d, %d) bytes differ", layer, experts[i]);
    }
    CHECK(rc == 0 && got == n, "next ended with %d after %d of %d: %s", rc, got, n, err);
    expert_cache_end(c);
    return misses;
}

typedef struct {
    expert_io *io;
    expert_cache *cache;
    locate_ctx loc;
} cache_rig;

static int rig_make(cache_rig *r, expert_io_backend b, expert_io_mode m, int n_experts, int working, size_t budget,
                    int split) {
    char err[512];
    memset(r, 0, sizeof *r);
    r->io = engine_make(b, m, SMALL_CHUNK);
    if (!r->io) return -1;
    r->loc = (locate_ctx){expert_io_open(r->io, g_fx.path, err, sizeof err), n_experts, split};
    CHECK(r->loc.fd >= 0, "%s", err);
    expert_cache_config cfg = {.n_layers = N_REC / n_experts, .n_experts = n_experts, .working = working,
                               .budget_bytes = budget, .locate = locate_record, .locate_ctx = &r->loc};
    r->cache = expert_cache_create(r->io, &cfg, err, sizeof err);
    CHECK(r->cache != NULL, "expert_cache_create: %s", err);
    return r->cache ? 0 : -1;
}

static void rig_free(cache_rig *r) {
    expert_cache_free(r->cache);
    expert_io_free(r->io);
}

static void stats_expect(expert_cache *c, uint64_t hits, uint64_t misses, uint64_t evictions, const char *when) {
    expert_cache_stats st;
    expert_cache_stats_get(c, &st);
    CHECK(st.hits == hits && st.misses == misses && st.evictions == evictions,
          "%s: hits/misses/evictions %llu/%llu/%llu, expected %llu/%llu/%llu", when, (unsigned long long)st.hits,
          (unsigned long long)st.misses, (unsigned long long)st.evictions, (unsigned long long)hits,
          (unsigned long long)misses, (unsigned long long)evictions);
}

/* 3 cached slots + 2 working = 5 slots; experts 0..7 of layer 0. */
static void test_cache_lru_order(void) {
    for (int m = 0; m < 2; m++) {
        cache_rig r;
        if (rig_make(&r, EXPERT_IO_URING, (expert_io_mode)m, 8, 2, 3 * (size_t)REC, 0) < 0) {
            rig_free(&r);
            continue;
        }
        expert_cache *c = r.cache;
        expert_cache_stats st;
        expert_cache_stats_get(c, &st);
        CHECK(st.slots == 5 && st.slot_bytes == REC, "slots %d of %zu bytes", st.slots, st.slot_bytes);
        run_layer(c, 0, (int[]){0, 1}, 2, 8); /* LRU order after: 0 1 */
        run_layer(c, 0, (int[]){2, 3}, 2, 8); /* 0 1 2 3 */
        run_layer(c, 0, (int[]){4}, 1, 8);    /* 0 1 2 3 4: all 5 slots full */
        stats_expect(c, 0, 5, 0, "filling");
        CHECK(run_layer(c, 0, (int[]){5}, 1, 8) == 1, "5 should miss"); /* evicts 0 */
        stats_expect(c, 0, 6, 1, "first eviction");
        CHECK(!expert_cache_peek(c, 0, 0), "expert 0 (least recently used) was not evicted");
        CHECK(expert_cache_peek(c, 0, 1) != NULL, "expert 1 was evicted out of order");
        CHECK(run_layer(c, 0, (int[]){1}, 1, 8) == 0, "1 should hit"); /* 2 3 4 5 1 */
        stats_expect(c, 1, 6, 1, "hit");
        run_layer(c, 0, (int[]){6, 7}, 2, 8); /* evicts 2 and 3 */
        stats_expect(c, 1, 8, 3, "two more evictions");
        CHECK(!expert_cache_peek(c, 0, 2) && !expert_cache_peek(c, 0, 3), "2 and 3 should be gone");
        for (int e = 4; e < 8; e++) CHECK(expert_cache_peek(c, 0, e) != NULL, "expert %d should be resident", e);
        CHECK(expert_cache_peek(c, 0, 1) != NULL, "expert 1 (recently hit) was evicted");
        /* a peeked view holds the right bytes */
        const expert_io_req *x = expert_cache_peek(c, 0, 5);
        CHECK(x && view_matches(x, 0, 5, 8), "peeked bytes of expert 5 differ");
        /* same expert in another layer is another key */
        CHECK(run_layer(c, 1, (int[]){5}, 1, 8) == 1, "(1, 5) should miss");
        expert_cache_stats_get(c, &st);
        CHECK(st.requests == st.misses && st.bytes_read == st.misses * (uint64_t)REC, "requests %llu bytes %llu",
              (unsigned long long)st.requests, (unsigned long long)st.bytes_read);
        rig_free(&r);
    }
}

/* A resident expert pinned by the current layer is not evicted even when it is the least recently used. */
static void test_cache_pinned_not_evicted(void) {
    char err[512];
    cache_rig r;
    if (rig_make(&r, EXPERT_IO_THREADS, EXPERT_IO_DIRECT, 8, 2, (size_t)REC, 0) < 0) { /* 3 slots */
        rig_free(&r);
        return;
    }
    expert_cache *c = r.cache;
    run_layer(c, 0, (int[]){0, 1}, 2, 8);
    run_layer(c, 0, (int[]){2}, 1, 8); /* LRU: 0 1 2 */
    /* 0 is the LRU but is asked for again: pinned; 3 must evict 1 instead */
    int misses = expert_cache_begin(c, 0, (int[]){0, 3}, 2, err, sizeof err);
    CHECK(misses == 1, "begin [0 3]: %d misses: %s", misses, err);
    const expert_io_req *views[2] = {0};
    int i, rc;
    const expert_io_req *x;
    while ((rc = expert_cache_next(c, &i, &x, err, sizeof err)) == 1) views[i] = x;
    CHECK(rc == 0 && views[0] && views[1], "next: %s", err);
    CHECK(expert_cache_peek(c, 0, 0) != NULL && !expert_cache_peek(c, 0, 1), "pinned LRU expert 0 was evicted");
    /* while pinned, both views stay intact, and a second begin is refused */
    CHECK(expert_cache_begin(c, 0, (int[]){4, 5}, 2, err, sizeof err) < 0, "begin while a layer is active");
    CHECK(views[0] && view_matches(views[0], 0, 0, 8) && views[1] && view_matches(views[1], 0, 3, 8),
          "pinned views changed");
    expert_cache_end(c);
    /* with budget 0 (working slots only), every expert of a layer stays intact until the end */
    rig_free(&r);
    if (rig_make(&r, EXPERT_IO_URING, EXPERT_IO_DIRECT, 8, 4, 0, 1) < 0) {
        rig_free(&r);
        return;
    }
    c = r.cache;
    for (int layer = 0; layer < 8; layer++) {
        int ex[4] = {layer % 8, (layer + 3) % 8, (layer + 5) % 8, (layer + 6) % 8};
        const expert_io_req *v[4] = {0};
        CHECK(expert_cache_begin(c, layer, ex, 4, err, sizeof err) >= 0, "%s", err);
        while ((rc = expert_cache_next(c, &i, &x, err, sizeof err)) == 1) v[i] = x;
        for (int k = 0; k < 4; k++)
            CHECK(v[k] && view_matches(v[k], layer, ex[k], 8), "layer %d expert %d overwritten while pinned", layer,
                  ex[k]);
        expert_cache_end(c);
    }
    expert_cache_stats st;
    expert_cache_stats_get(c, &st);
    CHECK(st.slots == 4 && st.hits == 0 && st.misses == 32, "budget 0: %d slots, %llu hits, %llu misses", st.slots,
          (unsigned long long)st.hits, (unsigned long long)st.misses);
    rig_free(&r);
}

/* Random layers in every backend and mode (split experts in direct mode test the O_DIRECT layout). */
static void test_cache_random_layers(void) {
    for (int b = 0; b < 2; b++)
        for (int m = 0; m < 2; m++)
            for (int split = 0; split < 2; split++) {
                cache_rig r;
                if (rig_make(&r, (expert_io_backend)b, (expert_io_mode)m, 16, 4, 6 * (size_t)REC, split) < 0) {
                    rig_free(&r);
                    continue;
                }
                uint64_t s = 777 + (uint64_t)split;
                int hits = 0, total = 0;
                for (int t = 0; t < 40; t++) {
                    int ex[4], layer = (int)(rng_next(&s) % 4);
                    pick_distinct(&s, ex, 4, 16);
                    int misses = run_layer(r.cache, layer, ex, 4, 16);
                    hits += 4 - misses;
                    total += 4;
                }
                expert_cache_stats st;
                expert_cache_stats_get(r.cache, &st);
                CHECK(st.hits == (uint64_t)hits && st.hits + st.misses == (uint64_t)total, "hits %llu misses %llu",
                      (unsigned long long)st.hits, (unsigned long long)st.misses);
                CHECK(st.wait_ns > 0, "no wait time recorded");
                rig_free(&r);
            }
}

/* Read failures through the cache: the message names the file and the failed expert is not kept. */
static void test_cache_failures(void) {
    char err[512], path[160];
    snprintf(path, sizeof path, "%s/short_experts.bin", g_fx.dir);
    CHECK(write_file(path, g_fx.data, 3 * (size_t)REC + 1000) == 0, "cannot write %s", path);
    for (int b = 0; b < 2; b++) {
        cache_rig r;
        memset(&r, 0, sizeof r);
        r.io = engine_make((expert_io_backend)b, EXPERT_IO_DIRECT, SMALL_CHUNK);
        if (!r.io) continue;
        r.loc = (locate_ctx){expert_io_open(r.io, path, err, sizeof err), 8, 0};
        expert_cache_config cfg = {.n_layers = 1, .n_experts = 8, .working = 4, .budget_bytes = 4 * (size_t)REC,
                                   .slot_bytes = REC, .locate = locate_record, .locate_ctx = &r.loc};
        r.cache = expert_cache_create(r.io, &cfg, err, sizeof err);
        CHECK(r.cache != NULL, "%s", err);
        if (!r.cache) {
            rig_free(&r);
            continue;
        }
        int n_ok = 0, rc, i;
        const expert_io_req *x;
        CHECK(expert_cache_begin(r.cache, 0, (int[]){0, 1, 3, 2}, 4, err, sizeof err) == 4, "%s", err);
        while ((rc = expert_cache_next(r.cache, &i, &x, err, sizeof err)) == 1) n_ok++;
        CHECK(rc == -1 && strstr(err, path) && strstr(err, "ends at offset"), "expert past EOF: rc %d '%s'", rc, err);
        expert_cache_end(r.cache);
        CHECK(!expert_cache_peek(r.cache, 0, 3), "the expert that failed to read is resident");
        /* the cache and engine still work */
        run_layer(r.cache, 0, (int[]){0, 2}, 2, 8);
        rig_free(&r);
    }
    /* injected failure through the cache */
    setenv("FLASHMOE_IO_FAIL_AFTER", "2", 1);
    cache_rig r;
    int made = rig_make(&r, EXPERT_IO_URING, EXPERT_IO_DIRECT, 8, 4, 0, 0);
    unsetenv("FLASHMOE_IO_FAIL_AFTER");
    if (made == 0) {
        int i, rc;
        const expert_io_req *x;
        CHECK(expert_cache_begin(r.cache, 1, (int[]){4, 5, 6}, 3, err, sizeof err) == 3, "%s", err);
        while ((rc = expert_cache_next(r.cache, &i, &x, err, sizeof err)) == 1) CHECK(i != 1, "failed expert returned");
        CHECK(rc == -1 && strstr(err, "Input/output error"), "injected failure: rc %d '%s'", rc, err);
        expert_cache_end(r.cache);
        CHECK(!expert_cache_peek(r.cache, 1, 5), "the injected failure left expert 5 resident");
        CHECK(run_layer(r.cache, 1, (int[]){4, 5, 6}, 3, 8) >= 1, "after the failure");
    }
    rig_free(&r);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MALLINFO_COUNTS 0
#else
#define MALLINFO_COUNTS 1
#endif

static size_t heap_bytes(void) {
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

/* Memory: the cache allocates working + budget / slot slots and nothing per layer. */
static void test_cache_budget(void) {
    for (int b = 0; b < 2; b++) {
        size_t budget = 10 * (size_t)REC + 12345; /* 10 slots' worth and change */
        size_t before = heap_bytes();
        cache_rig r;
        if (rig_make(&r, (expert_io_backend)b, EXPERT_IO_DIRECT, 16, 4, budget, 0) < 0) {
            rig_free(&r);
            continue;
        }
        size_t after_create = heap_bytes();
        expert_cache_stats st;
        expert_cache_stats_get(r.cache, &st);
        size_t slots_bytes = (size_t)st.slots * st.slot_bytes;
        CHECK(st.slots == 14, "slots %d (10 cached + 4 working expected)", st.slots);
        CHECK(slots_bytes <= budget + 4 * st.slot_bytes, "slot memory %zu over budget %zu + working", slots_bytes, budget);
        /* the slot arena is rounded up to whole 2 MiB huge pages */
        CHECK(st.memory_bytes >= slots_bytes && st.memory_bytes < slots_bytes + (2 << 20) + 64 * 1024,
              "memory_bytes %zu for %zu of slots", st.memory_bytes, slots_bytes);
        /* everything the engine and cache allocated, counted by malloc: slots + small tables (a
         * sanitizer's malloc does not feed mallinfo2: there, only memory_bytes above is checked) */
        size_t allocated = after_create - before;
        CHECK(MALLINFO_COUNTS == 0 || (allocated >= slots_bytes && allocated < slots_bytes + (4 << 20) + 256 * 1024),
              "allocated %zu bytes at creation for %zu of slots", allocated, slots_bytes);
        uint64_t s = 99;
        run_layer(r.cache, 0, (int[]){0, 1, 2, 3}, 4, 16); /* first use may settle lazy allocations */
        size_t steady = heap_bytes();
        for (int t = 0; t < 200; t++) {
            int ex[4];
            pick_distinct(&s, ex, 4, 16);
            run_layer(r.cache, (int)(rng_next(&s) % 4), ex, 4, 16);
        }
        CHECK(heap_bytes() == steady, "heap grew by %zd bytes over 200 layers", (ssize_t)(heap_bytes() - steady));
        rig_free(&r);
    }
}

/* A rig for the prefetch tests: the main engine (backend b) with the fixture open in r->loc, and a
 * prefetch engine (read failures injected through fail_env, if set) with the fixture registered.
 * Returns the prefetch engine, or NULL (everything freed) if either engine could not be made. */
static expert_io *prefetch_rig(cache_rig *r, expert_io_backend b, const char *fail_env) {
    char err[512];
    expert_io_config pc = {.backend = b, .mode = EXPERT_IO_DIRECT, .chunk_bytes = SMALL_CHUNK, .threads = 4,
                           .queue_depth = 64, .quiet = 1, .fail_env = fail_env};
    expert_io *pf = expert_io_create(&pc, err, sizeof err);
    CHECK(pf != NULL, "prefetch engine: %s", err);
    memset(r, 0, sizeof *r);
    r->io = engine_make(b, EXPERT_IO_DIRECT, SMALL_CHUNK);
    if (!pf || !r->io) {
        expert_io_free(pf);
        rig_free(r);
        return NULL;
    }
    r->loc = (locate_ctx){expert_io_open(r->io, g_fx.path, err, sizeof err), 8, 0};
    CHECK(expert_io_register(pf, r->loc.fd, g_fx.path, err, sizeof err) == 0, "%s", err);
    return pf;
}

/* A cache of 8 x 8 records with a prefetch engine (whose first read fails when `fail`), `working` and
 * `budget` records, read-ahead of up to `ahead` experts. NULL (nothing to free) when it cannot be made. */
static expert_io *prefetch_cache(cache_rig *r, int b, int fail, int working, int budget, int ahead) {
    char err[512];
    if (fail) setenv("FLASHMOE_TEST_PREFETCH_FAIL", "1", 1);
    expert_io *pf = prefetch_rig(r, (expert_io_backend)b, "FLASHMOE_TEST_PREFETCH_FAIL");
    unsetenv("FLASHMOE_TEST_PREFETCH_FAIL");
    if (!pf) return NULL;
    expert_cache_config cfg = {.n_layers = 8, .n_experts = 8, .working = working,
                               .budget_bytes = (size_t)budget * REC, .slot_bytes = REC, .locate = locate_record,
                               .locate_ctx = &r->loc, .prefetch_io = pf, .readahead_max = ahead};
    r->cache = expert_cache_create(r->io, &cfg, err, sizeof err);
    CHECK(r->cache != NULL, "%s", err);
    if (!r->cache) {
        rig_free(r);
        expert_io_free(pf);
        return NULL;
    }
    return pf;
}

/* Prefetch through a second engine: predicted experts become hits with the right bytes, a prediction
 * made during a layer starts once that layer has its reads, and a failed prefetch read only costs a miss. */
static void test_cache_prefetch(void) {
    char err[512];
    for (int b = 0; b < 2; b++)
        for (int fail = 0; fail < 2; fail++) {
            cache_rig r;
            expert_io *pf = prefetch_cache(&r, b, fail, 4, 4, 0);
            if (!pf) continue;
            expert_cache_stats st;
            expert_cache_stats_get(r.cache, &st);
            CHECK(st.slots == 8, "%d slots: the prefetch slots come out of the budget", st.slots);
            /* no layer in progress: the reads start at once */
            CHECK(expert_cache_prefetch(r.cache, 1, (int[]){0, 1, 2, 3}, 4, err, sizeof err) == 0, "%s", err);
            int misses = run_layer(r.cache, 1, (int[]){0, 1, 5, 6}, 4, 8);
            expert_cache_stats_get(r.cache, &st);
            CHECK(st.predicted_asked == 4 && st.predicted_right == 2, "predicted %llu of %llu",
                  (unsigned long long)st.predicted_right, (unsigned long long)st.predicted_asked);
            if (!fail)
                CHECK(misses == 2 && st.prefetch_used == 2 && st.prefetch_failures == 0,
                      "misses %d, used %llu", misses, (unsigned long long)st.prefetch_used);
            else
                CHECK(misses >= 3 && st.prefetch_failures == 1, "after a failed prefetch: misses %d, failures %llu",
                      misses, (unsigned long long)st.prefetch_failures);
            /* made during a layer: started when that layer's reads are in, hits in the next */
            CHECK(expert_cache_begin(r.cache, 2, (int[]){0, 1}, 2, err, sizeof err) >= 0, "%s", err);
            CHECK(expert_cache_prefetch(r.cache, 3, (int[]){4, 5}, 2, err, sizeof err) == 0, "%s", err);
            int i, rc;
            const expert_io_req *x;
            while ((rc = expert_cache_next(r.cache, &i, &x, err, sizeof err)) == 1)
                CHECK(view_matches(x, 2, i == 0 ? 0 : 1, 8), "layer 2 bytes differ");
            CHECK(rc == 0, "%s", err);
            expert_cache_end(r.cache);
            CHECK(run_layer(r.cache, 3, (int[]){4, 5}, 2, 8) == 0, "prefetched experts missed");
            /* bad arguments */
            CHECK(expert_cache_prefetch(r.cache, 8, (int[]){0}, 1, err, sizeof err) < 0, "layer 8 accepted");
            CHECK(expert_cache_prefetch(r.cache, 0, (int[]){1, 1}, 2, err, sizeof err) < 0, "duplicate accepted");
            /* a prediction left in flight at free */
            CHECK(expert_cache_prefetch(r.cache, 4, (int[]){0, 1, 2, 3}, 4, err, sizeof err) == 0, "%s", err);
            rig_free(&r);
            expert_io_free(pf);
        }
}

/* Read-ahead (prompt chunks): a layer's experts named in order are read through the prefetch engine into
 * as many slots as leave 2 x working free, become hits with the right bytes, are counted apart from
 * predictions, and a failed read only costs misses; a begin of another layer while they load still finds
 * free slots. */
static void test_cache_readahead(void) {
    char err[512];
    const int all[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int b = 0; b < 2; b++)
        for (int fail = 0; fail < 2; fail++) {
            cache_rig r;
            expert_io *pf = prefetch_cache(&r, b, fail, 2, 8, 8); /* 8 + 2 slots, 2 x 2 stay free: 6 read ahead */
            if (!pf) continue;
            CHECK(expert_cache_readahead(r.cache, 1, all, 8, err, sizeof err) == 0, "%s", err);
            int misses = 0;
            for (int k = 0; k < 8; k += 2) misses += run_layer(r.cache, 1, all + k, 2, 8);
            expert_cache_stats st;
            expert_cache_stats_get(r.cache, &st);
            if (!fail)
                CHECK(misses == 2 && st.read_ahead == 6 && st.hits == 6, "misses %d, read ahead %llu, hits %llu",
                      misses, (unsigned long long)st.read_ahead, (unsigned long long)st.hits);
            else
                CHECK(misses >= 3 && st.prefetch_failures == 1, "after a failed read-ahead: misses %d, failures %llu",
                      misses, (unsigned long long)st.prefetch_failures);
            CHECK(st.prefetched == 0 && st.prefetch_used == 0 && st.predictions == 0 && st.predicted_asked == 0,
                  "a read-ahead counted as a prediction");
            /* another layer begins while a read-ahead loads: its misses find slots, its bytes are right */
            CHECK(expert_cache_readahead(r.cache, 2, all, 8, err, sizeof err) == 0, "%s", err);
            CHECK(run_layer(r.cache, 3, (int[]){6, 7}, 2, 8) == 2, "layer 3: both missed");
            int m2 = run_layer(r.cache, 2, (int[]){0, 5}, 2, 8);
            CHECK(fail || m2 == 0, "layer 2 after its read-ahead: %d misses", m2); /* the injected failure is spent */
            /* bad arguments */
            CHECK(expert_cache_readahead(r.cache, 8, all, 1, err, sizeof err) < 0, "layer 8 accepted");
            CHECK(expert_cache_readahead(r.cache, 0, (int[]){1, 1}, 2, err, sizeof err) < 0, "duplicate accepted");
            CHECK(expert_cache_readahead(r.cache, 0, (int[]){0, 1, 2, 3, 4, 5, 6, 7, 0}, 9, err, sizeof err) < 0,
                  "more than readahead_max accepted");
            /* left in flight at free */
            CHECK(expert_cache_readahead(r.cache, 4, all, 8, err, sizeof err) == 0, "%s", err);
            rig_free(&r);
            expert_io_free(pf);
        }
    /* no prefetch engine: refused */
    cache_rig r;
    memset(&r, 0, sizeof r);
    r.io = engine_make(EXPERT_IO_THREADS, EXPERT_IO_DIRECT, SMALL_CHUNK);
    if (r.io) {
        r.loc = (locate_ctx){expert_io_open(r.io, g_fx.path, err, sizeof err), 8, 0};
        expert_cache_config cfg = {.n_layers = 8, .n_experts = 8, .working = 2, .budget_bytes = 4 * (size_t)REC,
                                   .slot_bytes = REC, .locate = locate_record, .locate_ctx = &r.loc};
        r.cache = expert_cache_create(r.io, &cfg, err, sizeof err);
        CHECK(r.cache && expert_cache_readahead(r.cache, 0, all, 2, err, sizeof err) < 0, "read-ahead without an engine");
    }
    rig_free(&r);
}

/* prefetch_fit: how much of a prediction is read (what the disk reads in the idle window), no prefetch
 * without room for its batch (prefetch_if_room), and no reads while the top of the predictions is mostly
 * wrong, resuming once it is right again. */
static void test_cache_prefetch_fit(void) {
    CHECK(expert_cache_prefetch_count(0, 3e9, 1 << 20, 8) == 4 && expert_cache_prefetch_count(2e-3, 0, 1 << 20, 7) == 4,
          "no estimates: half of the prediction");
    CHECK(expert_cache_prefetch_count(2.4e-3, 2.5e9, 1770000, 8) == 3, "2.4 ms at 2.5 GB/s, 1.77 MB each: %d",
          expert_cache_prefetch_count(2.4e-3, 2.5e9, 1770000, 8));
    CHECK(expert_cache_prefetch_count(1e-6, 1e9, 1 << 20, 8) == 1, "a tiny window still reads the top one");
    CHECK(expert_cache_prefetch_count(1.0, 1e9, 1 << 20, 8) == 8, "a long window reads the whole prediction");
    char err[512];
    for (int room = 0; room < 2; room++) {
        cache_rig r;
        expert_io *pf = prefetch_rig(&r, EXPERT_IO_THREADS, NULL);
        if (!pf) continue;
        expert_cache_config cfg = {.n_layers = 8, .n_experts = 8, .working = 4,
                                   .budget_bytes = (size_t)(room ? 4 : 3) * REC, .slot_bytes = REC,
                                   .locate = locate_record, .locate_ctx = &r.loc, .prefetch_io = pf,
                                   .prefetch_fit = 1, .prefetch_if_room = 1};
        r.cache = expert_cache_create(r.io, &cfg, err, sizeof err);
        CHECK(r.cache != NULL, "%s", err);
        if (r.cache && !room) {
            expert_cache_stats st;
            expert_cache_stats_get(r.cache, &st);
            CHECK(!expert_cache_prefetching(r.cache) && st.slots == 3 + 4,
                  "budget of 3 slots, batch of 4: prefetching %d with %d slots", expert_cache_prefetching(r.cache),
                  st.slots);
            CHECK(expert_cache_prefetch(r.cache, 1, (int[]){0}, 1, err, sizeof err) < 0, "prefetch without room");
        }
        if (r.cache && room) {
            CHECK(expert_cache_prefetching(r.cache), "budget of 4 slots, batch of 4: no prefetch");
            /* decoding: each layer predicts the next; wrong predictions (experts 4..7, it uses 0..3) */
            expert_cache_stats st, before;
            int layer = 0;
            run_layer(r.cache, 0, (int[]){0, 1, 2, 3}, 4, 8);
            for (int k = 0; k < 6; k++, layer = (layer + 1) % 7) {
                CHECK(expert_cache_prefetch(r.cache, layer + 1, (int[]){4, 5, 6, 7}, 4, err, sizeof err) == 0, "%s", err);
                run_layer(r.cache, layer + 1, (int[]){0, 1, 2, 3}, 4, 8);
            }
            expert_cache_stats_get(r.cache, &before);
            CHECK(before.predictions == 6 && before.predictions_skipped == 5 && before.prefetch_used == 0,
                  "wrong predictions: %llu of %llu skipped, %llu used", (unsigned long long)before.predictions_skipped,
                  (unsigned long long)before.predictions, (unsigned long long)before.prefetch_used);
            /* right ones (the top of {3, 0, 1, 2}): scored while skipped, then read again */
            for (int k = 0; k < 6; k++, layer = (layer + 1) % 7) {
                CHECK(expert_cache_prefetch(r.cache, layer + 1, (int[]){3, 0, 1, 2}, 4, err, sizeof err) == 0, "%s", err);
                run_layer(r.cache, layer + 1, (int[]){0, 1, 2, 3}, 4, 8);
            }
            expert_cache_stats_get(r.cache, &st);
            CHECK(st.predictions_skipped < before.predictions_skipped + 6 && st.prefetched > before.prefetched &&
                      st.prefetch_used > 0 && st.prediction_top >= 12 && st.prediction_top <= 4 * 12,
                  "right predictions: %llu skipped, %llu read ahead, %llu used, top %llu",
                  (unsigned long long)(st.predictions_skipped - before.predictions_skipped),
                  (unsigned long long)(st.prefetched - before.prefetched), (unsigned long long)st.prefetch_used,
                  (unsigned long long)st.prediction_top);
        }
        rig_free(&r);
        expert_io_free(pf);
    }
}

int main(void) {
    if (fixture_make(&g_fx) < 0) {
        printf("not ok fixture (cannot create the test file in /tmp)\n");
        return 1;
    }
    RUN_TEST(test_batches_all_backends_and_modes);
    RUN_TEST(test_unaligned_pieces);
    RUN_TEST(test_out_of_order_completion);
    RUN_TEST(test_window_order);
    RUN_TEST(test_truncated_file);
    RUN_TEST(test_injected_failure);
    RUN_TEST(test_invalid_requests);
    RUN_TEST(test_uring_fallback);
    RUN_TEST(test_cache_lru_order);
    RUN_TEST(test_cache_pinned_not_evicted);
    RUN_TEST(test_cache_random_layers);
    RUN_TEST(test_cache_failures);
    RUN_TEST(test_cache_budget);
    RUN_TEST(test_cache_prefetch);
    RUN_TEST(test_cache_prefetch_fit);
    RUN_TEST(test_cache_readahead);
    fixture_free(&g_fx);
    TEST_EXIT();
}
