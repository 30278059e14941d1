/* Minimal test harness. Each test binary runs TEST functions; every CHECK that fails prints where and
 * why. Output is one line per test ("ok NAME" / "not ok NAME"), counted by tests/run.sh. */
#ifndef FLASHMOE_TEST_H
#define FLASHMOE_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failed_checks_;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            test_failed_checks_++;                                             \
            fprintf(stderr, "  %s:%d: check failed: %s: ", __FILE__, __LINE__, \
                    #cond);                                                    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

#define RUN_TEST(fn)                                                            \
    do {                                                                        \
        int before_ = test_failed_checks_;                                      \
        fn();                                                                   \
        printf("%s %s\n", test_failed_checks_ == before_ ? "ok" : "not ok", #fn); \
        fflush(stdout);                                                         \
    } while (0)

#define TEST_EXIT() return test_failed_checks_ ? 1 : 0

#endif
