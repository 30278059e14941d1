/* A fixed pool of worker threads for fork-join parallel loops (matvec rows, experts, heads).
 *
 *   pool *p = pool_create(n);          // n threads in all: the caller plus n - 1 workers
 *   pool_run(p, fn, ctx, n_tasks);     // fn(ctx, t, n_tasks) for t in [0, n_tasks), across threads
 *   pool_free(p);
 *
 * pool_run returns when every task is done; the caller runs tasks too. Tasks are handed out one at a
 * time from a shared counter, so uneven tasks balance. No allocation happens per call. Workers spin
 * briefly after each job (calls come hundreds of times per token) and then sleep on a futex.
 * A NULL pool is valid everywhere and means "run on the calling thread". pool_run is not reentrant:
 * one caller thread at a time, and fn must not call pool_run on the same pool. */
#ifndef FLASHMOE_THREADPOOL_H
#define FLASHMOE_THREADPOOL_H

typedef struct pool pool;
typedef void (*pool_task_fn)(void *ctx, int task, int n_tasks);

/* n <= 1 gives a pool with no workers (everything runs on the caller). NULL on failure. */
pool *pool_create(int n);
void pool_free(pool *p);
/* Number of threads that run tasks, caller included (1 for a NULL pool). */
int pool_size(const pool *p);
void pool_run(pool *p, pool_task_fn fn, void *ctx, int n_tasks);

/* n items dealt to at most `tasks` tasks in shares of a multiple of `align` items (the last one shorter):
 * the share, and in *n_tasks how many tasks that makes (0 for no items). */
static inline long pool_per(long n, int tasks, long align, int *n_tasks) {
    long per = (n + tasks - 1) / tasks;
    per = per > 0 ? (per + align - 1) / align * align : align;
    *n_tasks = (int)((n + per - 1) / per);
    return per;
}

/* Task `task`'s share [*a, *b) of n items dealt `per` to a task; 0 if it is empty. */
static inline int pool_share(int task, long per, long n, long *a, long *b) {
    *a = task * per;
    *b = *a + per < n ? *a + per : n;
    return *a < *b;
}

#endif
