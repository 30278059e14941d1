/* The one seam between the layer math and where expert weights come from.
 *
 * The MoE block asks for "experts ids[0..n) of layer l" and then takes them one by one as they become
 * available, so that compute overlaps the reads of the experts still in flight:
 *
 *   experts_begin(src, layer, ids, n, err, errlen);     // starts whatever reading is needed
 *   ... compute something else (the shared expert) ...
 *   while ((rc = experts_next(src, &i, &view, err, errlen)) == 1) compute expert ids[i] with view;
 *   experts_end(src);                                    // rc < 0: a read failed, err says why
 *
 * A source may also take a hint: experts_prefetch(src, layer, ids, n) predicts the experts a later layer
 * will ask for, so that their reads can start early (a no-op for sources without prefetch).
 *
 * A view holds each expert's three matrices: gate [inter x hidden], up [inter x hidden],
 * down [hidden x inter], in whatever weight type the source stores. Views stay valid until experts_end.
 * Sources: views into the mmapped safetensors (experts_open_mapped), or buffers filled from disk by the
 * I/O engine, from an HF checkpoint's safetensors slices or a packed directory (experts_open_stream). */
#ifndef FLASHMOE_EXPERTS_H
#define FLASHMOE_EXPERTS_H
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "config.h"
#include "tensor.h"

typedef struct {
    qmat gate, up, down;
} expert_view;

typedef struct {
    uint64_t hits, misses, bytes_read, requests, wait_ns;
    size_t memory_bytes; /* buffers and cache held by the source */
    const char *mode;    /* "mmap", "cache", "direct" */
    const char *backend; /* "threads", "io_uring", or "" */
    /* prefetch (see expert_cache_stats): experts asked for in layers that had a prediction, and how many
     * of them were predicted; experts read by prefetch, and how many of those were then used */
    uint64_t predicted_asked, predicted_right, prefetched, prefetch_used;
    uint64_t predictions, prediction_top, predictions_skipped; /* see expert_cache_stats */
    uint64_t read_ahead; /* experts read by readahead */
} experts_stats;

typedef struct expert_source expert_source;
typedef struct {
    int (*begin)(expert_source *s, int layer, const int *ids, int n, char *err, size_t errlen);
    /* 1: *i and *v set; 0: all n returned; -1: failure (message in err) */
    int (*next)(expert_source *s, int *i, expert_view *v, char *err, size_t errlen);
    void (*end)(expert_source *s);
    void (*stats)(const expert_source *s, experts_stats *out);
    void (*free)(expert_source *s);
} expert_source_ops;

struct expert_source {
    const expert_source_ops *ops;
    /* 1: every expert is in memory and next never waits (the mapped sources), so a caller may take a
     * whole batch before computing any of it */
    int immediate;
    /* NULL: no prefetch. 0, or -1 with a message for bad arguments (read failures are not errors) */
    int (*prefetch)(expert_source *s, int layer, const int *ids, int n, char *err, size_t errlen);
    /* NULL: no read-ahead. Experts ids[0..n) of `layer` will be asked for, in this order: read them now,
     * as far as the source has room (expert_cache_readahead). Same returns as prefetch. */
    int (*readahead)(expert_source *s, int layer, const int *ids, int n, char *err, size_t errlen);
};

static inline int experts_begin(expert_source *s, int layer, const int *ids, int n, char *err, size_t errlen) {
    return s->ops->begin(s, layer, ids, n, err, errlen);
}
static inline int experts_next(expert_source *s, int *i, expert_view *v, char *err, size_t errlen) {
    return s->ops->next(s, i, v, err, errlen);
}
static inline void experts_end(expert_source *s) { s->ops->end(s); }
static inline int experts_prefetch(expert_source *s, int layer, const int *ids, int n, char *err, size_t errlen) {
    return s->prefetch ? s->prefetch(s, layer, ids, n, err, errlen) : 0;
}
static inline int experts_readahead(expert_source *s, int layer, const int *ids, int n, char *err, size_t errlen) {
    return s->readahead ? s->readahead(s, layer, ids, n, err, errlen) : 0;
}
/* Whether a chunk of T positions reads each layer's experts ahead: its routing will use nearly every
 * expert ((1 - K/E)^T < 5% unused), so they are read while the layer's mixer runs (otherwise the disk
 * would idle through it), and a batch of them is resident, or nearly, by the time it is asked for. */
static inline int experts_chunk_reads_ahead(const expert_source *s, int T, int K, int E) {
    return s->readahead && T * K >= 3 * E;
}
static inline void experts_stats_get(const expert_source *s, experts_stats *out) { s->ops->stats(s, out); }
static inline void experts_free(expert_source *s) {
    if (s) s->ops->free(s);
}

/* Experts of an HF checkpoint, per expert (mlp.experts.E.{gate,up,down}_proj.weight) or fused
 * (mlp.experts.gate_up_proj [E, 2I, H], gate rows first; mlp.experts.down_proj [E, H, I]), used in place
 * through the mapping. Every expert's shapes and dtypes are checked here, at load. */
expert_source *experts_open_mapped(const checkpoint *ck, const model_config *c, char *err, size_t errlen);

/* The expert files of a packed directory, mapped: the page cache holds what stays in memory. */
expert_source *experts_open_mapped_packed(const char *dir, const model_config *c, char *err, size_t errlen);

/* Locating every expert of a checkpoint (for the streaming source): views into the mapping, from which
 * file offsets follow. table is [n_layers * n_experts]. */
int experts_table_build(expert_view *table, const checkpoint *ck, const model_config *c, char *err, size_t errlen);

/* AUTO (model_load only): MMAP or DIRECT from the model's size and the available memory (memplan.h). */
typedef enum { EXPERTS_IO_AUTO, EXPERTS_IO_CACHE, EXPERTS_IO_DIRECT, EXPERTS_IO_MMAP } experts_io_mode;

typedef struct {
    experts_io_mode mode; /* CACHE: page-cache reads; DIRECT: O_DIRECT + in-process LRU cache */
    size_t cache_bytes;   /* DIRECT: budget of the in-process cache */
    int uring;            /* 1: io_uring (falls back to threads when refused); 0: reader threads */
    int top_k;            /* most experts asked for at once */
    int prefetch;         /* DIRECT: a second engine reads predicted experts ahead (experts_prefetch), as much
                             of each prediction as the disk's idle time fits; 2: the same only if cache_bytes
                             holds the prefetch batch's slots (so it takes no memory of its own) */
} experts_stream_opts;

/* Experts read from disk through the I/O engine: from a packed directory (dir has flashmoe.json) or from
 * the safetensors slices of an HF checkpoint (ck). */
expert_source *experts_open_stream(const char *dir, const checkpoint *ck, const model_config *c,
                                   const experts_stream_opts *o, char *err, size_t errlen);

#endif
