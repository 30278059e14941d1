/* Block-device counters (diskstat.c): the stat line's fields, the device found from a device number in a
 * fake /sys tree, and the errors for a file that does not exist, an anonymous device, a missing or
 * malformed stat file. */
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "diskstat.h"
#include "test.h"

static char root[128];

static void put_stat(const char *majmin, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/dev", root);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/dev/block", root);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/dev/block/%s", root, majmin);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/dev/block/%s/stat", root, majmin);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_parse(void) {
    diskstat_sample s;
    /* a real line (kernel 6.x: 17 fields), as the kernel pads it */
    CHECK(diskstat_parse(" 11757739  6549851 16753038954 45199895   406629    84329 792182320  3572293        0  "
                         "6893416 49295307   278745       82 694247488   452028     1653    71090\n", &s) == 0, "parse");
    CHECK(s.read_bytes == 16753038954.0 * 512, "read bytes %g", s.read_bytes);
    CHECK(s.busy_s > 6893.4159 && s.busy_s < 6893.4161, "busy %g", s.busy_s);
    /* the older 11-field format */
    CHECK(diskstat_parse("1 2 8 4 5 6 7 8 0 250 11\n", &s) == 0 && s.read_bytes == 4096 && s.busy_s == 0.25, "11 fields");
    CHECK(diskstat_parse("1 2 3 4 5 6 7 8 9\n", &s) == -1, "9 fields");
    CHECK(diskstat_parse("", &s) == -1, "empty");
    CHECK(diskstat_parse("1 2 x 4 5 6 7 8 9 10\n", &s) == -1, "not a number");
}

static void test_find(void) {
    char err[512];
    diskstat_dev d;
    diskstat_sample s;
    snprintf(root, sizeof root, "/tmp/flashmoe-diskstat-XXXXXX");
    if (!mkdtemp(root)) abort();
    put_stat("254:1", "100 0 2048 0 0 0 0 0 0 1500 0\n");
    CHECK(diskstat_for_dev(root, (unsigned long)makedev(254, 1), "m/e.bin", &d, err, sizeof err) == 0, "%s", err);
    CHECK(diskstat_read(&d, &s, err, sizeof err) == 0 && s.read_bytes == 2048.0 * 512 && s.busy_s == 1.5, "%s", err);
    /* counters move: a second sample sees them */
    put_stat("254:1", "100 0 4096 0 0 0 0 0 0 2000 0\n");
    CHECK(diskstat_read(&d, &s, err, sizeof err) == 0 && s.read_bytes == 4096.0 * 512 && s.busy_s == 2.0, "%s", err);

    /* an anonymous device (tmpfs, overlayfs): no counters, said with the file's name */
    CHECK(diskstat_for_dev(root, (unsigned long)makedev(0, 45), "m/e.bin", &d, err, sizeof err) == -1, "anonymous");
    CHECK(strstr(err, "m/e.bin") && strstr(err, "no block device"), "%s", err);
    /* a device with no stat file */
    CHECK(diskstat_for_dev(root, (unsigned long)makedev(8, 3), "m/e.bin", &d, err, sizeof err) == -1, "missing");
    CHECK(strstr(err, "8:3/stat"), "%s", err);
    /* a malformed one */
    put_stat("8:16", "garbage\n");
    CHECK(diskstat_for_dev(root, (unsigned long)makedev(8, 16), "m/e.bin", &d, err, sizeof err) == -1, "malformed");
    CHECK(strstr(err, "8:16/stat") && strstr(err, "not a block device stat line"), "%s", err);
    /* a file that does not exist */
    CHECK(diskstat_find(root, "/nonexistent/flashmoe/file", &d, err, sizeof err) == -1, "no file");
    CHECK(strstr(err, "/nonexistent/flashmoe/file"), "%s", err);

    /* a real file: found through its st_dev (the fake tree stands in for /sys) */
    char file[200];
    snprintf(file, sizeof file, "%s/f", root);
    FILE *f = fopen(file, "w");
    fclose(f);
    struct stat st;
    CHECK(stat(file, &st) == 0, "stat");
    char mm[32];
    snprintf(mm, sizeof mm, "%u:%u", major(st.st_dev), minor(st.st_dev));
    put_stat(mm, "1 0 10 0 0 0 0 0 0 7 0\n");
    int rc = diskstat_find(root, file, &d, err, sizeof err);
    if (major(st.st_dev)) CHECK(rc == 0 && diskstat_read(&d, &s, err, sizeof err) == 0 && s.busy_s == 0.007, "%s", err);
    else CHECK(rc == -1 && strstr(err, "no block device"), "anonymous /tmp: %s", err);

    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd)) fprintf(stderr, "  cannot remove %s\n", root);
}

int main(void) {
    RUN_TEST(test_parse);
    RUN_TEST(test_find);
    TEST_EXIT();
}
