/* Available memory from fake /proc trees (meminfo, self/cgroup, self/mountinfo pointing at fake cgroup
 * mounts in a temporary directory), and the --io auto plan that follows from sizes. */
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "memplan.h"
#include "test.h"

#define GiB ((size_t)1 << 30)
#define MiB ((size_t)1 << 20)

static char root[256];

static void put(const char *rel, const char *fmt, ...) {
    char path[512], dir[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *p = path + strlen(root) + 1; (p = strchr(p, '/')); p++) { /* mkdir -p of the parents */
        snprintf(dir, sizeof dir, "%.*s", (int)(p - path), path);
        mkdir(dir, 0755);
    }
    FILE *f = fopen(path, "w");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

/* A fresh fake tree: proc under root/proc, meminfo with 8 GiB available. */
static void fresh(void) {
    char cmd[300];
    if (root[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf %s", root);
        if (system(cmd)) fprintf(stderr, "  cannot remove %s\n", root);
    }
    snprintf(root, sizeof root, "/tmp/flashmoe-memplan-XXXXXX");
    if (!mkdtemp(root)) abort();
    put("proc/meminfo", "MemTotal:       16777216 kB\nMemFree:  100 kB\nMemAvailable:    8388608 kB\n");
}

static int avail(mem_available *a, char *err, size_t errlen) {
    char proc[300];
    snprintf(proc, sizeof proc, "%s/proc", root);
    err[0] = 0;
    return memplan_available(proc, a, err, errlen);
}

static void test_meminfo_only(void) {
    fresh();
    mem_available a;
    char err[512];
    CHECK(avail(&a, err, sizeof err) == 0, "%s", err);
    CHECK(a.bytes == 8 * GiB && !strcmp(a.source, "MemAvailable"), "%zu from %s", a.bytes, a.source);
    put("proc/meminfo", "MemTotal:       4194304 kB\n"); /* old kernels: no MemAvailable */
    CHECK(avail(&a, err, sizeof err) == 0 && a.bytes == 4 * GiB, "%zu %s", a.bytes, err);
}

static void test_cgroup_v1_smallest_ancestor(void) {
    fresh();
    put("proc/self/cgroup", "5:devices:/a/b\n4:memory:/a/b\n1:name=systemd:/a/b\n0::/\n");
    put("proc/self/mountinfo",
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "35 31 0:32 / %s/cg/memory rw,relatime - cgroup cgroup rw,memory\n"
        "36 31 0:33 / %s/cg/devices rw,relatime - cgroup cgroup rw,devices\n",
        root, root);
    put("cg/memory/memory.limit_in_bytes", "9223372036854771712\n"); /* the root: no limit */
    put("cg/memory/a/memory.limit_in_bytes", "%zu\n", 3 * GiB);
    put("cg/memory/a/b/memory.limit_in_bytes", "%zu\n", 5 * GiB);
    mem_available a;
    char err[512];
    CHECK(avail(&a, err, sizeof err) == 0, "%s", err);
    CHECK(a.bytes == 3 * GiB, "%zu", a.bytes);
    CHECK(strstr(a.source, "cgroup v1") && strstr(a.source, "/a/b"), "%s", a.source);
    put("cg/memory/a/b/memory.limit_in_bytes", "%zu\n", 64 * GiB); /* limits above MemAvailable: no effect */
    put("cg/memory/a/memory.limit_in_bytes", "9223372036854771712\n");
    CHECK(avail(&a, err, sizeof err) == 0 && a.bytes == 8 * GiB && !strcmp(a.source, "MemAvailable"), "%zu %s",
          a.bytes, a.source);
}

static void test_cgroup_v2_and_container_root(void) {
    fresh();
    put("proc/self/cgroup", "0::/x/y\n");
    put("proc/self/mountinfo", "30 23 0:26 / %s/cg2 rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n", root);
    put("cg2/x/y/memory.max", "max\n");
    put("cg2/x/memory.max", "%zu\n", 2 * GiB);
    mem_available a;
    char err[512];
    CHECK(avail(&a, err, sizeof err) == 0, "%s", err);
    CHECK(a.bytes == 2 * GiB && strstr(a.source, "cgroup v2"), "%zu %s", a.bytes, a.source);
    /* in a container the cgroup mount's root is the container's own cgroup */
    fresh();
    put("proc/self/cgroup", "0::/docker/c1\n");
    put("proc/self/mountinfo", "30 23 0:26 /docker/c1 %s/cg2 rw,nosuid - cgroup2 cgroup2 rw\n", root);
    put("cg2/memory.max", "%zu\n", 1536 * MiB);
    CHECK(avail(&a, err, sizeof err) == 0 && a.bytes == 1536 * MiB, "%zu %s", a.bytes, err);
    /* a mount point with a space and a backslash, as mountinfo writes them (\040, \134) */
    fresh();
    put("proc/self/cgroup", "0::/x\n");
    put("proc/self/mountinfo", "30 23 0:26 / %s/cg\\040two\\134 rw - cgroup2 cgroup2 rw\n", root);
    put("cg two\\/x/memory.max", "%zu\n", 3 * GiB);
    CHECK(avail(&a, err, sizeof err) == 0 && a.bytes == 3 * GiB, "escaped mount point: %zu %s", a.bytes, err);
    /* no mount for the hierarchy (or no cgroup file): no limit from it */
    put("proc/self/mountinfo", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n");
    CHECK(avail(&a, err, sizeof err) == 0 && a.bytes == 8 * GiB, "%zu %s", a.bytes, err);
}

static void test_bad_files(void) {
    fresh();
    mem_available a;
    char err[512], mi[300];
    snprintf(mi, sizeof mi, "%s/proc/meminfo", root);
    put("proc/meminfo", "Nothing: 1 kB\n");
    CHECK(avail(&a, err, sizeof err) == -1 && strstr(err, mi) && strstr(err, "MemAvailable"), "'%s'", err);
    unlink(mi);
    CHECK(avail(&a, err, sizeof err) == -1 && strstr(err, mi) && strstr(err, "cannot open"), "'%s'", err);
    fresh();
    put("proc/self/cgroup", "garbage\n");
    CHECK(avail(&a, err, sizeof err) == -1 && strstr(err, "self/cgroup") && strstr(err, "malformed"), "'%s'", err);
    put("proc/self/cgroup", "0::/x\n");
    put("proc/self/mountinfo", "30 23 0:26 / %s/cg2 rw - cgroup2 cgroup2 rw\n", root);
    put("cg2/x/memory.max", "lots\n");
    CHECK(avail(&a, err, sizeof err) == -1 && strstr(err, "cg2/x/memory.max") && strstr(err, "not a byte count"),
          "'%s'", err);
}

static void test_choose(void) {
    io_plan p;
    /* fits with the reserve to spare: mapped */
    memplan_choose(20 * GiB, 1 * GiB, 512 * MiB, 24 * GiB, 0, (size_t)-1, &p);
    CHECK(p.mode == EXPERTS_IO_MMAP && p.reserve_bytes == GiB, "mode %d reserve %zu", p.mode, p.reserve_bytes);
    /* fits, but not with the state and the margin: direct, the cache gets what resident + reserve leave */
    memplan_choose(23 * GiB + 512 * MiB, 1 * GiB, 512 * MiB, 24 * GiB, 0, (size_t)-1, &p);
    CHECK(p.mode == EXPERTS_IO_DIRECT && p.cache_bytes == 22 * GiB, "mode %d cache %zu", p.mode, p.cache_bytes);
    /* the 35B geometry under a 4 GiB cap, its state for a context of 4096 taking 334 MiB */
    memplan_choose(19 * GiB, 1323 * MiB, 334 * MiB, 4 * GiB, 0, (size_t)-1, &p);
    CHECK(p.mode == EXPERTS_IO_DIRECT && p.cache_bytes == (4096 - 1323 - 334 - 512) * MiB, "cache %zu", p.cache_bytes);
    /* a long context's state comes out of the cache */
    memplan_choose(19 * GiB, 1323 * MiB, 1334 * MiB, 4 * GiB, 0, (size_t)-1, &p);
    CHECK(p.cache_bytes == (4096 - 1323 - 1334 - 512) * MiB, "cache %zu", p.cache_bytes);
    /* a small limit: the margin is a quarter of it; resident weights larger than the rest: no cache */
    memplan_choose(600 * MiB, 40 * MiB, 8 * MiB, 128 * MiB, 0, (size_t)-1, &p);
    CHECK(p.mode == EXPERTS_IO_DIRECT && p.reserve_bytes == 40 * MiB && p.cache_bytes == 48 * MiB, "%zu %zu",
          p.reserve_bytes, p.cache_bytes);
    memplan_choose(600 * MiB, 200 * MiB, 8 * MiB, 128 * MiB, 0, (size_t)-1, &p);
    CHECK(p.mode == EXPERTS_IO_DIRECT && p.cache_bytes == 0, "cache %zu", p.cache_bytes);
    /* a state larger than the memory: direct, no cache (and no arithmetic wrapping) */
    memplan_choose(1 * MiB, 1 * MiB, 200 * MiB, 128 * MiB, 0, (size_t)-1, &p);
    CHECK(p.mode == EXPERTS_IO_DIRECT && p.cache_bytes == 0, "mode %d cache %zu", p.mode, p.cache_bytes);
    /* the user's --cache-mb is kept; --prefetch needs direct even when the model fits */
    memplan_choose(19 * GiB, 1 * GiB, 0, 4 * GiB, 0, 100 * MiB, &p);
    CHECK(p.mode == EXPERTS_IO_DIRECT && p.cache_bytes == 100 * MiB, "cache %zu", p.cache_bytes);
    memplan_choose(1 * GiB, 100 * MiB, 100 * MiB, 24 * GiB, 1, (size_t)-1, &p);
    CHECK(p.mode == EXPERTS_IO_DIRECT && p.cache_bytes == 924 * MiB, "mode %d cache %zu (all the experts)", p.mode,
          p.cache_bytes);
}

int main(void) {
    RUN_TEST(test_meminfo_only);
    RUN_TEST(test_cgroup_v1_smallest_ancestor);
    RUN_TEST(test_cgroup_v2_and_container_root);
    RUN_TEST(test_bad_files);
    RUN_TEST(test_choose);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd)) fprintf(stderr, "  cannot remove %s\n", root);
    TEST_EXIT();
}
