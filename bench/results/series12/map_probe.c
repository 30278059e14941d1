/* Experiment (series 12): the product's Q4 matrix-vector kernel (kernel_matvec, one thread) over 512 MB of
 * 512 x 2048 Q4 matrices (the 35B experts' gate/up shape) held three ways: malloc, a MAP_SHARED mapping of
 * a file in the page cache (how flashmoe reads resident weights, and experts with --io mmap), and
 * anonymous memory with MADV_HUGEPAGE. GB/s of weights (scales and biases included).
 *   cc -O2 -std=c11 -D_GNU_SOURCE -pthread -Isrc bench/results/series12/map_probe.c src/kernels*.c \
 *      src/threadpool.c src/quant.c src/util.c -o /tmp/map_probe -lm && /tmp/map_probe /tmp/map_probe.bin */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels.h"
#include "util.h"

#define R 512
#define C 2048
#define G 64

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/tmp/map_probe.bin";
    const size_t data = (size_t)R * C / 2, ng = (size_t)R * C / G, one = data + 4 * ng; /* codes, scales, biases */
    const int copies = (int)((512u << 20) / one);
    const size_t total = (size_t)copies * one;
    unsigned char *heap = malloc(total);
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < total; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        heap[i] = (unsigned char)s;
    }
    for (int k = 0; k < copies; k++) /* sane scales and biases (bf16 0.001 and -0.008) */
        for (size_t g = 0; g < ng; g++) {
            uint16_t *sb = (uint16_t *)(heap + (size_t)k * one + data);
            sb[g] = 0x3a83, sb[ng + g] = 0xbc03;
        }
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, heap, total) != (ssize_t)total) {
        fprintf(stderr, "map_probe: cannot write %s\n", path);
        return 1;
    }
    unsigned char *mapped = mmap(NULL, total, PROT_READ, MAP_SHARED, fd, 0);
    unsigned char *huge = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(huge, total, MADV_HUGEPAGE);
    memcpy(huge, heap, total);
    for (size_t i = 0; i < total; i += 4096) (void)*(volatile unsigned char *)(mapped + i); /* map every page */
    float x[C], y[R];
    for (int c = 0; c < C; c++) x[c] = (float)((c * 37) % 101 - 50) * 0.01f;
    const char *names[3] = {"malloc", "file mapping (MAP_SHARED, page cache)", "anonymous, MADV_HUGEPAGE"};
    unsigned char *bases[3] = {heap, mapped, huge};
    printf("level %s, %d copies of Q4 %dx%d g%d, one thread\n", kernel_level_name(kernel_level_active()), copies, R,
           C, G);
    for (int round = 0; round < 3; round++)
        for (int v = 0; v < 3; v++) {
            int calls = 0, i = 0;
            double t0 = util_now_seconds(), t;
            do {
                for (int k = 0; k < 16; k++) {
                    unsigned char *b = bases[v] + (size_t)i * one;
                    qmat w = {.type = DTYPE_Q4, .rows = R, .cols = C, .group = G, .data = b,
                              .scales = (const uint16_t *)(b + data), .biases = (const uint16_t *)(b + data) + ng};
                    kernel_matvec(y, &w, x);
                    i = (i + 1) % copies;
                    calls++;
                }
                t = util_now_seconds() - t0;
            } while (t < 1.0);
            printf("round %d %-40s %.2f GB/s\n", round, names[v], (double)calls * one / t / 1e9);
        }
    unlink(path);
    return 0;
}
