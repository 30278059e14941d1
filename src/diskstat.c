/* Block-device I/O counters of the device a file lives on: see diskstat.h. */
#include "diskstat.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "util.h"

enum { FIELD_SECTORS_READ = 2, FIELD_IO_TICKS = 9, FIELDS_NEEDED = 10 };

int diskstat_parse(const char *text, diskstat_sample *s) {
    double f[FIELDS_NEEDED];
    const char *p = text;
    for (int i = 0; i < FIELDS_NEEDED; i++) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p || errno) return -1;
        f[i] = (double)v;
        p = end;
    }
    s->read_bytes = f[FIELD_SECTORS_READ] * 512.0; /* the kernel counts 512-byte sectors whatever the device's */
    s->busy_s = f[FIELD_IO_TICKS] * 1e-3;          /* milliseconds */
    return 0;
}

int diskstat_for_dev(const char *sys_root, unsigned long dev, const char *name, diskstat_dev *d, char *err,
                     size_t errlen) {
    unsigned maj = major(dev), min = minor(dev);
    if (maj == 0) { /* tmpfs, overlayfs, NFS...: an anonymous device with no counters */
        util_err_set(err, errlen, "%s: on a filesystem with no block device (device 0:%u)", name, min);
        return -1;
    }
    int n = snprintf(d->stat_path, sizeof d->stat_path, "%s/dev/block/%u:%u/stat", sys_root, maj, min);
    if (n < 0 || (size_t)n >= sizeof d->stat_path) {
        util_err_set(err, errlen, "%s: path too long", sys_root);
        return -1;
    }
    diskstat_sample s;
    return diskstat_read(d, &s, err, errlen);
}

int diskstat_find(const char *sys_root, const char *file, diskstat_dev *d, char *err, size_t errlen) {
    struct stat st;
    if (stat(file, &st)) {
        util_err_set(err, errlen, "%s: %s", file, strerror(errno));
        return -1;
    }
    return diskstat_for_dev(sys_root, (unsigned long)st.st_dev, file, d, err, errlen);
}

int diskstat_read(const diskstat_dev *d, diskstat_sample *s, char *err, size_t errlen) {
    FILE *f = fopen(d->stat_path, "r");
    if (!f) {
        util_err_set(err, errlen, "%s: %s", d->stat_path, strerror(errno));
        return -1;
    }
    char line[512];
    int ok = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    if (!ok || diskstat_parse(line, s)) {
        util_err_set(err, errlen, "%s: not a block device stat line (fewer than %d numbers)", d->stat_path,
                     FIELDS_NEEDED);
        return -1;
    }
    return 0;
}
