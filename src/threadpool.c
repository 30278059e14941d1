/* Fork-join thread pool: one job at a time, tasks claimed from a shared counter.
 *
 * Protocol. A job is published by storing `claim` = (generation << 32) | tasks_left, then bumping the
 * futex word `seq`. A thread claims a task by a compare-and-swap that decrements tasks_left while the
 * generation still matches; only after a successful claim does it read fn/ctx/n_tasks, which cannot
 * change then: the caller rewrites them only after `done` reached n_tasks, and the claimed task has not
 * been counted yet. So a worker that wakes late and sees a stale or finished job claims nothing. */
#include "threadpool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long an idle worker (and a waiting caller) spins before sleeping (yielding): long enough to
 * cover the gap between consecutive kernels of one token, short enough not to burn a shared core. */
#ifndef POOL_SPIN_NS
#define POOL_SPIN_NS 100000
#endif

struct pool {
    int n_workers;
    pthread_t *threads;
    _Atomic uint64_t claim;     /* generation << 32 | tasks not yet claimed */
    _Atomic uint32_t seq;       /* futex word: the generation of the latest job */
    _Atomic int done;           /* tasks finished in the current job */
    _Atomic int sleepers;       /* workers blocked (or about to block) on seq */
    _Atomic int stop;
    uint32_t gen;               /* caller-only: generation of the latest job */
    pool_task_fn fn;            /* the current job; see the protocol above */
    void *ctx;
    int n_tasks;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Claim and run tasks of generation gen until none are left. */
static void pool_work(pool *p, uint32_t gen) {
    uint64_t v = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        uint32_t left = (uint32_t)v;
        if ((uint32_t)(v >> 32) != gen || left == 0) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &v, v - 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue; /* v was reloaded */
        int n = p->n_tasks;
        p->fn(p->ctx, n - (int)left, n);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        v = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

/* Wait until seq differs from seen: spin for POOL_SPIN_NS, then sleep on the futex. */
static uint32_t pool_wait_job(pool *p, uint32_t seen) {
    uint64_t start = now_ns();
    for (unsigned i = 1;; i++) {
        uint32_t s = atomic_load_explicit(&p->seq, memory_order_acquire);
        if (s != seen) return s;
        cpu_relax();
        if (i % 64 == 0 && now_ns() - start > POOL_SPIN_NS) break;
    }
    atomic_fetch_add(&p->sleepers, 1); /* seq_cst: pairs with the caller's seq store + sleepers load */
    uint32_t s;
    while ((s = atomic_load(&p->seq)) == seen) futex_wait(&p->seq, seen);
    atomic_fetch_sub(&p->sleepers, 1);
    return s;
}

static void *pool_worker(void *arg) {
    pool *p = arg;
    uint32_t seen = 0;
    for (;;) {
        seen = pool_wait_job(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
        pool_work(p, seen);
    }
}

pool *pool_create(int n) {
    pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    int want = n > 1 ? n - 1 : 0;
    if (want) {
        p->threads = calloc((size_t)want, sizeof *p->threads);
        if (!p->threads) { free(p); return NULL; }
    }
    for (int i = 0; i < want; i++) {
        if (pthread_create(&p->threads[i], NULL, pool_worker, p) != 0) {
            pool_free(p); /* joins the ones already started */
            return NULL;
        }
        p->n_workers++;
    }
    return p;
}

void pool_free(pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->seq, 1);
    futex_wake_all(&p->seq);
    for (int i = 0; i < p->n_workers; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    free(p);
}

int pool_size(const pool *p) { return p ? p->n_workers + 1 : 1; }

void pool_run(pool *p, pool_task_fn fn, void *ctx, int n_tasks) {
    if (n_tasks <= 0) return;
    if (!p || p->n_workers == 0 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, n_tasks);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint32_t gen = ++p->gen;
    atomic_store_explicit(&p->claim, (uint64_t)gen << 32 | (uint32_t)n_tasks, memory_order_release);
    atomic_store(&p->seq, gen); /* seq_cst: a worker about to sleep either sees it or is counted */
    if (atomic_load(&p->sleepers) > 0) futex_wake_all(&p->seq);

    pool_work(p, gen);

    uint64_t start = 0;
    for (unsigned i = 1; atomic_load_explicit(&p->done, memory_order_acquire) != n_tasks; i++) {
        cpu_relax();
        if (i % 64 == 0) { /* past the spin budget, give the core to a worker that may need it */
            if (!start) start = now_ns();
            else if (now_ns() - start > POOL_SPIN_NS) sched_yield();
        }
    }
}
