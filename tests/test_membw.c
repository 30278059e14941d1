/* The memory bandwidth probe (src/membw.c): every variant reads every word, and the measurement gives a
 * rate. */
#include <math.h>
#include <stdint.h>

#include "membw.h"
#include "test.h"

static uint64_t fold(const uint64_t *w, size_t n) {
    uint64_t r = 0;
    for (size_t i = 0; i < n; i++) r ^= w[i];
    return r;
}

/* The loads of each kernel level available here, with and without prefetch, give the xor of every word;
 * flipping any one word (first, last, a stream boundary) changes it. */
static void test_levels_read_every_word(void) {
    const size_t n = 256 * 37; /* bytes: not a multiple of the vector loops' 512 */
    uint64_t *w = aligned_alloc(64, n);
    uint64_t x = 0x243f6a8885a308d3ull;
    for (size_t i = 0; i < n / 8; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        w[i] = x;
    }
    int tried = 0;
    for (int v = 0; v < KERNEL_LEVEL_COUNT; v++) {
        if (!kernel_level_available((kernel_level)v)) continue;
        tried++;
        for (size_t ahead = 0; ahead <= 4096; ahead += 4096) {
            CHECK(membw_read((kernel_level)v, w, n, ahead) == fold(w, n / 8), "level %s, ahead %zu",
                  kernel_level_name((kernel_level)v), ahead);
            const size_t at[] = {0, 3, 4, 7, 31, 32, n / 8 - 1};
            for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
                w[at[k]] ^= 1ull << (k * 9);
                CHECK(membw_read((kernel_level)v, w, n, ahead) == fold(w, n / 8), "level %s, word %zu flipped",
                      kernel_level_name((kernel_level)v), at[k]);
                w[at[k]] ^= 1ull << (k * 9);
            }
        }
    }
    CHECK(tried >= 1, "the scalar level is always available");
    free(w);
}

static void test_measure_gives_a_rate(void) {
    double one = membw_measure(NULL, (size_t)16 << 20);
    CHECK(one > 1e8 && isfinite(one), "one thread: %g bytes/s", one);
    pool *p = pool_create(2);
    double two = membw_measure(p, (size_t)16 << 20);
    CHECK(two > 1e8 && isfinite(two), "two threads: %g bytes/s", two);
    pool_free(p);
}

int main(void) {
    RUN_TEST(test_levels_read_every_word);
    RUN_TEST(test_measure_gives_a_rate);
    TEST_EXIT();
}
