/* The block device a file lives on, and its I/O counters: how many bytes it read and how long it had
 * requests in flight, from sys_root/dev/block/MAJ:MIN/stat (sys_root "/sys" outside tests).
 *
 * `flashmoe bench` samples them around the decode phase to split the distance to the disk floor in
 * two: time the device sat idle (the engine did not keep a read in flight) and a read rate while busy
 * below the measured bandwidth (the device serves this access pattern more slowly than the
 * back-to-back batches the bandwidth is measured with). The counters are the device's, so they
 * include any other process's I/O to it in the same interval.
 *
 *   diskstat_dev d;
 *   if (diskstat_find("/sys", "model/experts-000.bin", &d, err, sizeof err) == 0) {
 *       diskstat_sample a, b;
 *       diskstat_read(&d, &a, err, sizeof err); ... work ... diskstat_read(&d, &b, err, sizeof err);
 *       busy seconds: b.busy_s - a.busy_s; bytes read: b.read_bytes - a.read_bytes
 *   }
 *
 * A file on a filesystem with no block device of its own (tmpfs, overlayfs, NFS: major number 0)
 * has no counters: diskstat_find says so and returns -1. */
#ifndef FLASHMOE_DISKSTAT_H
#define FLASHMOE_DISKSTAT_H
#include <stddef.h>

typedef struct {
    char stat_path[256]; /* sys_root/dev/block/MAJ:MIN/stat */
} diskstat_dev;

typedef struct {
    double read_bytes; /* sectors read x 512 */
    double busy_s;     /* io_ticks: time with at least one request in flight */
} diskstat_sample;

/* The device holding `file`; 0, or -1 with the reason in err. */
int diskstat_find(const char *sys_root, const char *file, diskstat_dev *d, char *err, size_t errlen);
/* The same for device number dev (st_dev), `name` the file in messages. */
int diskstat_for_dev(const char *sys_root, unsigned long dev, const char *name, diskstat_dev *d, char *err,
                     size_t errlen);
/* The counters now; 0, or -1 with the reason in err. */
int diskstat_read(const diskstat_dev *d, diskstat_sample *s, char *err, size_t errlen);
/* Parses the text of a stat file (fields as in the kernel's Documentation/block/stat.rst: reads,
 * read merges, sectors read, read ticks, writes, write merges, sectors written, write ticks, in flight,
 * io_ticks, ...); 0, or -1 when it has fewer than 10 numeric fields. */
int diskstat_parse(const char *text, diskstat_sample *s);

#endif
