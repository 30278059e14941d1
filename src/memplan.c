/* Available memory (MemAvailable and cgroup limits) and the I/O plan that follows from it: see memplan.h. */
#include "memplan.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads "MemAvailable:" (or, on kernels without it, "MemTotal:") in kB from meminfo. */
static int read_meminfo(const char *path, size_t *bytes, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char line[256];
    unsigned long long avail = 0, total = 0;
    int have_avail = 0, have_total = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &avail) == 1) have_avail = 1;
        else if (sscanf(line, "MemTotal: %llu kB", &total) == 1) have_total = 1;
    }
    fclose(f);
    if (!have_avail && !have_total) {
        snprintf(err, errlen, "%s: no MemAvailable or MemTotal line", path);
        return -1;
    }
    *bytes = (size_t)(have_avail ? avail : total) * 1024;
    return 0;
}

/* One limit file: a byte count, or "max" (v2: no limit). 1 with *v set, 0 if absent or unlimited, -1 if
 * malformed. v1 writes "no limit" as a huge number (page-rounded LLONG_MAX), taken as none. */
static int read_limit(const char *path, size_t *v, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    if (!strncmp(buf, "max", 3)) return 0;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(buf, &end, 10);
    if (end == buf || errno || (*end && *end != '\n')) {
        snprintf(err, errlen, "%s: not a byte count: '%.*s'", path, (int)strcspn(buf, "\n"), buf);
        return -1;
    }
    if (x >= (1ull << 62)) return 0;
    *v = (size_t)x;
    return 1;
}

/* mountinfo's escapes, in place: the kernel writes space, tab, newline and backslash in paths as \ooo. */
static void unescape_octal(char *s) {
    char *o = s;
    for (; *s; s++, o++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
            *o = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else
            *o = *s;
    }
    *o = 0;
}

/* The mount point and root of the hierarchy for `want` ("cgroup2", or "memory" for the v1 controller)
 * from mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPEROPTS". */
static int find_mount(const char *mountinfo, const char *want, char *point, size_t plen, char *root, size_t rlen) {
    FILE *f = fopen(mountinfo, "r");
    if (!f) return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        char r[1024], mp[1024], fstype[64], super[1024] = "";
        const char *dash = strstr(line, " - ");
        if (!dash || sscanf(line, "%*s %*s %*s %1023s %1023s", r, mp) != 2 ||
            sscanf(dash + 3, "%63s %*s %1023s", fstype, super) < 1)
            continue;
        if (!strcmp(want, "cgroup2")) found = !strcmp(fstype, "cgroup2");
        else if (!strcmp(fstype, "cgroup"))
            for (char *sv, *tok = strtok_r(super, ",", &sv); tok && !found; tok = strtok_r(NULL, ",", &sv)) found = !strcmp(tok, want);
        if (found) {
            unescape_octal(mp);
            unescape_octal(r);
            snprintf(point, plen, "%s", mp);
            snprintf(root, rlen, "%s", r);
        }
    }
    fclose(f);
    return found;
}

/* The smallest limit from dir/<path> up to dir (the hierarchy's root), file `name` in each. */
static int walk_limits(const char *mount, const char *path, const char *name, size_t *best, int *limited,
                       char *err, size_t errlen) {
    char rel[1024], file[2200];
    snprintf(rel, sizeof rel, "%s", path);
    for (;;) {
        size_t v;
        snprintf(file, sizeof file, "%s%s%s/%s", mount, rel[0] == '/' ? "" : "/", rel, name);
        int rc = read_limit(file, &v, err, errlen);
        if (rc < 0) return -1;
        if (rc && (!*limited || v < *best)) *best = v, *limited = 1;
        char *slash = strrchr(rel, '/');
        if (!slash || (slash == rel && !rel[1])) break;
        if (slash == rel) rel[1] = 0;
        else *slash = 0;
    }
    return 0;
}

int memplan_available(const char *proc_root, mem_available *out, char *err, size_t errlen) {
    char path[1024], mountinfo[1024];
    snprintf(path, sizeof path, "%s/meminfo", proc_root);
    if (read_meminfo(path, &out->bytes, err, errlen)) return -1;
    snprintf(out->source, sizeof out->source, "MemAvailable");
    snprintf(mountinfo, sizeof mountinfo, "%s/self/mountinfo", proc_root);
    snprintf(path, sizeof path, "%s/self/cgroup", proc_root);
    FILE *f = fopen(path, "r");
    if (!f) return 0; /* no cgroups: the machine's memory is the limit */
    char line[1200];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) {
            snprintf(err, errlen, "%s: malformed line '%s'", path, line);
            fclose(f);
            return -1;
        }
        *c2 = 0;
        const char *controllers = c1 + 1, *cg = c2 + 1, *want = NULL, *limit_file = NULL;
        int v2 = !*controllers;
        if (v2) want = "cgroup2", limit_file = "memory.max";
        else {
            char list[256];
            snprintf(list, sizeof list, "%s", controllers);
            for (char *sv, *tok = strtok_r(list, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv))
                if (!strcmp(tok, "memory")) want = "memory", limit_file = "memory.limit_in_bytes";
        }
        char mount[1024], root[1024];
        if (!want || !find_mount(mountinfo, want, mount, sizeof mount, root, sizeof root)) continue;
        /* inside a container the mount's root is the container's cgroup: the path is relative to it */
        size_t rl = strlen(root);
        const char *rel = strcmp(root, "/") && !strncmp(cg, root, rl) ? cg + rl : cg;
        size_t lim = 0;
        int limited = 0;
        if (walk_limits(mount, *rel ? rel : "/", limit_file, &lim, &limited, err, errlen)) {
            fclose(f);
            return -1;
        }
        if (limited && lim < out->bytes) {
            out->bytes = lim;
            snprintf(out->source, sizeof out->source, "cgroup %s limit of %s", v2 ? "v2" : "v1", cg);
        }
    }
    fclose(f);
    return 0;
}

void memplan_choose(size_t model_bytes, size_t resident_bytes, size_t state_bytes, size_t avail, int need_direct,
                    size_t cache_bytes, io_plan *out) {
    size_t reserve = state_bytes + (avail / 4 < MEMPLAN_MARGIN_MAX ? avail / 4 : MEMPLAN_MARGIN_MAX);
    out->reserve_bytes = reserve;
    if (!need_direct && reserve <= avail && model_bytes <= avail - reserve) {
        out->mode = EXPERTS_IO_MMAP;
        out->cache_bytes = 0;
        return;
    }
    out->mode = EXPERTS_IO_DIRECT;
    if (cache_bytes != (size_t)-1) {
        out->cache_bytes = cache_bytes;
        return;
    }
    size_t left = avail > resident_bytes + reserve ? avail - resident_bytes - reserve : 0;
    size_t experts = model_bytes > resident_bytes ? model_bytes - resident_bytes : 0;
    out->cache_bytes = left < experts ? left : experts;
}
