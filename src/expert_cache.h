/* In-process expert cache: a fixed set of slots, each holding the bytes of one expert, kept in least-
 * recently-used order, filled through an expert_io engine. Made for direct mode (O_DIRECT: the page
 * cache keeps nothing, so this cache is the only one); it works over a cached-mode engine as well.
 *
 *   expert_cache *c = expert_cache_create(io, &(expert_cache_config){.n_layers = L, .n_experts = E,
 *       .working = K, .budget_bytes = B, .locate = where_is_expert, .locate_ctx = model}, err, sizeof err);
 *   per layer:
 *     expert_cache_begin(c, layer, experts, k, err, sizeof err);  // hits pinned, misses start reading
 *     while ((rc = expert_cache_next(c, &i, &x, err, sizeof err)) == 1)
 *         compute expert experts[i] from x->piece[p].dest / x->piece[p].length;
 *     expert_cache_end(c);                                        // unpins; rc < 0 is an error
 *
 * expert_cache_next returns the hits first, then each miss as soon as its bytes have arrived (in
 * completion order), so compute overlaps the reads of the experts not yet arrived.
 *
 * Memory: working + budget_bytes / slot_bytes slots of slot_bytes each, allocated once at creation
 * (with expert_io_buffer_alloc: huge pages, so up to 2 MiB of rounding, plus small tables):
 * the `working` slots are the in-flight buffers of one layer, the others are the cache proper. With
 * budget_bytes 0 only the working slots exist (and a hit happens only when an expert is asked for
 * again before another layer reuses its slot). Between begin and end the layer's slots are pinned:
 * never evicted, their bytes stay valid. Nothing is allocated after creation.
 *
 * One layer is in progress at a time (begin ... end); a cache and its engine belong to one thread.
 *
 * Prefetch (optional: config.prefetch_io, a second engine of its own): expert_cache_prefetch(c, layer,
 * ids, n) names the experts a later layer is predicted to use. Those not resident are read through the
 * prefetch engine into slots taken from the LRU list, once the layer in progress has all its own reads
 * (so that they do not take the disk from experts needed now); they become ordinary resident experts as
 * they complete. The next begin of a layer whose experts are still arriving by prefetch waits for those
 * first (and turns the rest into misses read as usual). A failed prefetch read prints one notice naming
 * the file and is otherwise harmless: the experts it was reading are read again when asked for. With
 * prefetch, `working` of the slots hold the prefetch reads, taken out of budget_bytes (at least 2 x
 * working slots in all).
 *
 * With config.prefetch_fit, a prediction (ids best first) is read only as far as the disk would
 * otherwise idle: the top expert_cache_prefetch_count of it, from running estimates of the time between
 * a layer's last read and the next layer's begin (the compute no read overlaps) and of the read rate.
 * Reads further down the prediction would compete with the next layer's own reads, where a wrong one
 * costs as much as a right one saves. And while fewer than half of the experts the top of recent
 * predictions named were then used (a decaying count), nothing is read: the prediction is still made and
 * scored, and reading resumes when it improves. */
#ifndef FLASHMOE_EXPERT_CACHE_H
#define FLASHMOE_EXPERT_CACHE_H
#include "expert_io.h"

/* Where expert (layer, expert) lies: fills where->n_pieces and each piece's fd, offset and length
 * (dest is ignored: the cache places the pieces). Returns 0, or -1 with the reason in err. */
typedef int (*expert_locate_fn)(void *ctx, int layer, int expert, expert_io_req *where, char *err,
                                size_t errlen);

typedef struct {
    int n_layers, n_experts;
    int working;         /* most experts one layer uses at once (top-k); at most the engine's max_requests */
    size_t budget_bytes; /* bytes of cached experts kept beyond the working slots; may be 0 */
    size_t slot_bytes;   /* room of one slot; 0: the largest expert_io_req_room of all experts (asks
                            locate about every expert at creation) */
    expert_locate_fn locate;
    void *locate_ctx;
    expert_io *prefetch_io; /* NULL: no prefetch; else an engine (same files, max_requests >= working) that
                               reads only prefetches; it must outlive the cache */
    int prefetch_fit;       /* 1: read only the top of a prediction that fits the disk's idle time (above) */
    int prefetch_if_room;   /* 1: no prefetch (expert_cache_prefetching 0) unless budget_bytes holds the
                               prefetch batch's `working` slots, so that it takes no memory of its own */
    int readahead_max;      /* most experts one expert_cache_readahead names (0: working); the prefetch
                               engine's max_requests must be at least this */
} expert_cache_config;

typedef struct {
    uint64_t hits, misses, evictions; /* evictions: a resident expert dropped to make room */
    uint64_t requests, bytes_read, wait_ns; /* of the engine (see expert_io_stats) */
    int slots;
    size_t slot_bytes;
    size_t memory_bytes; /* everything the cache allocated: slots and tables */
    /* prefetch: of the experts begun in layers that had a prediction (`predicted_asked`), how many were
     * in it (`predicted_right`); experts read by prefetch, those of them asked for before being evicted,
     * and failed prefetch batches. requests, bytes_read and wait_ns include the prefetch engine's. */
    uint64_t predicted_asked, predicted_right, prefetched, prefetch_used, prefetch_failures;
    /* predictions made, how many of their experts were to be read in all (the top of each, before
     * skipping those resident), and predictions not read because too few of the top were being used */
    uint64_t predictions, prediction_top, predictions_skipped;
    uint64_t read_ahead; /* experts read by expert_cache_readahead (not counted in prefetched) */
} expert_cache_stats;

typedef struct expert_cache expert_cache;

/* The engine must outlive the cache. NULL on failure, with the reason in err. */
expert_cache *expert_cache_create(expert_io *io, const expert_cache_config *cfg, char *err, size_t errlen);
void expert_cache_free(expert_cache *c);

/* Starts the experts of one layer (no duplicates, at most `working`): pins those resident, picks
 * slots for the others (evicting the least recently used unpinned experts) and starts reading them.
 * Returns the number of misses, or -1 with the reason in err (nothing is left pinned). */
int expert_cache_begin(expert_cache *c, int layer, const int *experts, int n, char *err, size_t errlen);
/* Next expert of the layer whose bytes are in memory: sets *i (its position in the begin list) and
 * *x (its pieces; dest points at the bytes of each). Returns 1, 0 when all were returned, or -1 on a
 * read failure (the message names the file; the failed experts are not kept). */
int expert_cache_next(expert_cache *c, int *i, const expert_io_req **x, char *err, size_t errlen);
/* Ends the layer: waits for reads still in flight, unpins its slots (most recently used now). */
void expert_cache_end(expert_cache *c);

/* Predicts that `layer` will ask for experts ids[0..n) (n <= working, no duplicates): those not resident
 * start reading through the prefetch engine as soon as the layer in progress has its own reads (at once
 * if none is in progress). Replaces a prediction not yet started. Returns 0, or -1 with the reason in err
 * (no prefetch engine, bad arguments); read failures are not returned (see above). */
int expert_cache_prefetch(expert_cache *c, int layer, const int *ids, int n, char *err, size_t errlen);

/* A certainty rather than a prediction, for prompt chunks, whose routing uses nearly every expert of a
 * layer: experts ids[0..n) of `layer` (n <= readahead_max, no duplicates), in the order the layer will
 * ask for them, start reading through the prefetch engine now (a prompt chunk calls this before the
 * layer's mixer, so the disk works while it runs), into as many free slots as leave 2 x working for the
 * layer's own begins. Not scored, not cut to the disk's idle time; replaces a prediction not yet
 * started. Returns 0, or -1 with the reason in err (no prefetch engine, bad arguments). */
int expert_cache_readahead(expert_cache *c, int layer, const int *ids, int n, char *err, size_t errlen);

/* 1 if the cache reads predictions (a prefetch engine it has room for), else 0. */
int expert_cache_prefetching(const expert_cache *c);
/* prefetch_fit's count: of a prediction of n experts of slot_bytes each, those that the disk reads at
 * bytes_per_s in window_s seconds, rounded to the nearest, and at least 1; (n + 1) / 2 while either
 * estimate is missing (0). */
int expert_cache_prefetch_count(double window_s, double bytes_per_s, size_t slot_bytes, int n);

/* The resident bytes of (layer, expert), or NULL; changes neither statistics nor LRU order. */
const expert_io_req *expert_cache_peek(const expert_cache *c, int layer, int expert);
void expert_cache_stats_get(const expert_cache *c, expert_cache_stats *out);

#endif
