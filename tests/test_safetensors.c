/* The safetensors parser: reads the fixtures correctly, and never crashes or hands out a tensor outside
 * the file whatever the header says (random corruption of real files). */
#include <stdint.h>
#include <unistd.h>

#include "safetensors.h"
#include "test.h"
#include "util.h"

static const char *FILE_A = "tests/fixtures/tiny-a-f32/model.safetensors";

static void test_reads_fixture(void) {
    st_file f;
    char err[512];
    CHECK(st_open(&f, FILE_A, err, sizeof err) == 0, "%s", err);
    const st_tensor *t = st_find(&f, "model.embed_tokens.weight");
    CHECK(t && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == 384 && t->shape[1] == 64 &&
              t->nbytes == 384 * 64 * 4, "embed_tokens");
    CHECK(st_find(&f, "model.embed_tokens") == NULL, "prefix must not match");
    for (int i = 0; i < f.n_tensors; i++)
        CHECK(st_find(&f, f.tensors[i].name) == &f.tensors[i], "lookup of %s", f.tensors[i].name);
    st_close(&f);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_random_corruption_is_caught(void) {
    char err[512], path[] = "/tmp/flashmoe_st_XXXXXX";
    size_t len;
    char *orig = util_read_file(FILE_A, &len, err, sizeof err);
    CHECK(orig != NULL, "%s", err);
    if (!orig) return;
    uint64_t hlen;
    memcpy(&hlen, orig, 8);
    char *buf = malloc(len);
    int fd = mkstemp(path);
    int opened = 0, rejected = 0;
    for (int it = 0; it < 1500; it++) {
        memcpy(buf, orig, len);
        size_t n = len;
        int kind = (int)(next() % 3);
        if (kind == 0) { /* flip bytes in the header */
            for (int k = 0; k < 1 + (int)(next() % 4); k++) buf[8 + next() % hlen] = (char)next();
        } else if (kind == 1) { /* truncate anywhere */
            n = (size_t)(next() % len);
        } else { /* a wild header length */
            uint64_t h = next() % (len * 2);
            memcpy(buf, &h, 8);
        }
        if (ftruncate(fd, 0) || pwrite(fd, buf, n, 0) != (ssize_t)n) break;
        st_file f;
        if (st_open(&f, path, err, sizeof err) == 0) {
            opened++;
            for (int i = 0; i < f.n_tensors; i++)
                CHECK(f.tensors[i].offset + f.tensors[i].nbytes <= f.size, "tensor outside the file");
            st_close(&f);
        } else {
            rejected++;
            CHECK(strncmp(err, path, strlen(path)) == 0, "error does not name the file: %s", err);
        }
    }
    printf("  %d corrupted files rejected, %d still valid (harmless flips)\n", rejected, opened);
    CHECK(rejected > 500, "too few rejections: %d", rejected);
    close(fd);
    unlink(path);
    free(buf);
    free(orig);
}

int main(void) {
    RUN_TEST(test_reads_fixture);
    RUN_TEST(test_random_corruption_is_caught);
    TEST_EXIT();
}
