/* Expert source that reads only the selected experts from disk, through the I/O engine and the expert
 * cache: from a packed directory (one 4 KiB-aligned record per expert) or from the safetensors slices of
 * an HF checkpoint (three slices per expert: gate, up, down). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expert_cache.h"
#include "experts.h"
#include "packed.h"

/* Experts read at once by the main engine (expert_io_config.window): two keep a virtio disk at its
 * bandwidth, and make the experts of a layer arrive one after another, each computed while the next are
 * read (with the whole layer in flight they all arrived together at the end; measured on the 35B q4
 * geometry under a 4 GiB cap: io wait per token 200 -> 171 ms, 4 alternating pairs). */
#ifndef STREAM_IO_WINDOW
#define STREAM_IO_WINDOW 2
#endif
#ifndef STREAM_IO_CHUNK /* bytes per read call; 0: the engine's default (1 MiB) */
#define STREAM_IO_CHUNK 0
#endif

typedef struct {
    int fd;
    uint64_t offset;
    size_t length;
} slice;

typedef struct {
    expert_source base;
    expert_io *io;
    expert_io *pf_io; /* prefetch reads (NULL: off) */
    expert_cache *cache;
    experts_io_mode mode;
    int n_layers, n_experts;
    int packed;
    /* packed: one fd per layer, and the record layout */
    int *layer_fd;
    packed_layout lo;
    /* HF: every expert's matrices as mapped views (types and shapes; data pointers give file offsets),
     * and the gate, up, down slice of each in the files the engine opened */
    expert_view *table;
    slice *slices; /* [n_layers * n_experts * 3] */
    /* layer in progress */
    int layer;
    const int *ids;
} stream_source;

static int locate(void *ctx, int layer, int expert, expert_io_req *where, char *err, size_t errlen) {
    stream_source *s = ctx;
    if (layer < 0 || layer >= s->n_layers || expert < 0 || expert >= s->n_experts) {
        snprintf(err, errlen, "expert %d of layer %d does not exist", expert, layer);
        return -1;
    }
    if (s->packed) {
        where->n_pieces = 1;
        where->piece[0] = (expert_io_piece){.fd = s->layer_fd[layer],
                                            .offset = PACKED_HEADER_BYTES + (uint64_t)expert * s->lo.record_bytes,
                                            .length = s->lo.record_bytes};
        return 0;
    }
    const slice *sl = &s->slices[((size_t)layer * s->n_experts + expert) * 3];
    where->n_pieces = 3;
    for (int p = 0; p < 3; p++)
        where->piece[p] = (expert_io_piece){.fd = sl[p].fd, .offset = sl[p].offset, .length = sl[p].length};
    return 0;
}

static int stream_begin(expert_source *src, int layer, const int *ids, int n, char *err, size_t errlen) {
    stream_source *s = (stream_source *)src;
    s->layer = layer;
    s->ids = ids;
    return expert_cache_begin(s->cache, layer, ids, n, err, errlen) < 0 ? -1 : 0;
}

static int stream_next(expert_source *src, int *i, expert_view *v, char *err, size_t errlen) {
    stream_source *s = (stream_source *)src;
    const expert_io_req *x;
    int rc = expert_cache_next(s->cache, i, &x, err, errlen);
    if (rc != 1) return rc;
    if (s->packed) {
        packed_expert_views(&s->lo, x->piece[0].dest, &v->gate, &v->up, &v->down);
    } else {
        *v = s->table[(size_t)s->layer * s->n_experts + s->ids[*i]];
        v->gate.data = x->piece[0].dest;
        v->up.data = x->piece[1].dest;
        v->down.data = x->piece[2].dest;
    }
    return 1;
}

static void stream_end(expert_source *src) { expert_cache_end(((stream_source *)src)->cache); }

static int stream_prefetch(expert_source *src, int layer, const int *ids, int n, char *err, size_t errlen) {
    return expert_cache_prefetch(((stream_source *)src)->cache, layer, ids, n, err, errlen);
}

static int stream_readahead(expert_source *src, int layer, const int *ids, int n, char *err, size_t errlen) {
    return expert_cache_readahead(((stream_source *)src)->cache, layer, ids, n, err, errlen);
}

static void stream_stats(const expert_source *src, experts_stats *out) {
    const stream_source *s = (const stream_source *)src;
    expert_cache_stats cs;
    expert_cache_stats_get(s->cache, &cs);
    *out = (experts_stats){.hits = cs.hits, .misses = cs.misses, .bytes_read = cs.bytes_read,
                           .requests = cs.requests, .wait_ns = cs.wait_ns, .memory_bytes = cs.memory_bytes,
                           .mode = s->mode == EXPERTS_IO_DIRECT ? "direct" : "cache",
                           .backend = expert_io_backend_name(expert_io_backend_used(s->io)),
                           .predicted_asked = cs.predicted_asked, .predicted_right = cs.predicted_right,
                           .prefetched = cs.prefetched, .prefetch_used = cs.prefetch_used,
                           .predictions = cs.predictions, .prediction_top = cs.prediction_top,
                           .predictions_skipped = cs.predictions_skipped, .read_ahead = cs.read_ahead};
}

static void stream_free(expert_source *src) {
    stream_source *s = (stream_source *)src;
    expert_cache_free(s->cache);
    expert_io_free(s->pf_io); /* its files are the main engine's */
    expert_io_free(s->io); /* closes the files it opened */
    free(s->layer_fd);
    free(s->table);
    free(s->slices);
    free(s);
}

static const expert_source_ops stream_ops = {stream_begin, stream_next, stream_end, stream_stats, stream_free};

/* Opens a file of experts in the engine, and registers it in the prefetch engine if there is one. */
static int open_file(stream_source *s, const char *path, char *err, size_t errlen) {
    int fd = expert_io_open(s->io, path, err, errlen);
    if (fd >= 0 && s->pf_io && expert_io_register(s->pf_io, fd, path, err, errlen)) return -1;
    return fd;
}

/* The engine's fd for a shard, opened once. */
static int shard_fd(stream_source *s, const checkpoint *ck, int *fds, const void *ptr, uint64_t *offset, char *err,
                    size_t errlen) {
    for (int f = 0; f < ck->n_files; f++) {
        const char *base = ck->files[f].map;
        if ((const char *)ptr >= base && (const char *)ptr < base + ck->files[f].size) {
            if (fds[f] < 0 && (fds[f] = open_file(s, ck->files[f].path, err, errlen)) < 0) return -1;
            *offset = (uint64_t)((const char *)ptr - base);
            return fds[f];
        }
    }
    snprintf(err, errlen, "%s: expert weights outside every shard", ck->dir);
    return -1;
}

static int open_hf(stream_source *s, const checkpoint *ck, const model_config *c, char *err, size_t errlen) {
    size_t n = (size_t)c->n_layers * c->n_experts;
    s->table = calloc(n, sizeof *s->table);
    s->slices = calloc(n * 3, sizeof *s->slices);
    int *fds = malloc(sizeof(int) * (size_t)(ck->n_files ? ck->n_files : 1));
    int rc = -1;
    if (!s->table || !s->slices || !fds) {
        snprintf(err, errlen, "%s: out of memory for the expert table", ck->dir);
        goto out;
    }
    for (int f = 0; f < ck->n_files; f++) fds[f] = -1;
    if (experts_table_build(s->table, ck, c, err, errlen)) goto out;
    for (size_t e = 0; e < n; e++) {
        const qmat *m[3] = {&s->table[e].gate, &s->table[e].up, &s->table[e].down};
        for (int p = 0; p < 3; p++) {
            slice *sl = &s->slices[e * 3 + p];
            if ((sl->fd = shard_fd(s, ck, fds, m[p]->data, &sl->offset, err, errlen)) < 0) goto out;
            sl->length = qmat_data_bytes(m[p]); /* HF experts: F32/BF16/F16 only */
        }
    }
    rc = 0;
out:
    free(fds);
    return rc;
}

static int open_packed(stream_source *s, const char *dir, const model_config *c, char *err, size_t errlen) {
    packed_manifest pm;
    if (packed_manifest_load(&pm, dir, err, errlen)) return -1;
    if (pm.n_layers != c->n_layers || pm.n_experts != c->n_experts || pm.layout.hidden != c->hidden_size ||
        pm.layout.inter != c->expert_inter) {
        snprintf(err, errlen, "%s/%s: experts (%d layers x %d, %dx%d) disagree with config.json (%d x %d, %dx%d)",
                 dir, PACKED_MANIFEST, pm.n_layers, pm.n_experts, pm.layout.hidden, pm.layout.inter, c->n_layers,
                 c->n_experts, c->hidden_size, c->expert_inter);
        return -1;
    }
    s->lo = pm.layout;
    s->layer_fd = malloc(sizeof(int) * (size_t)c->n_layers);
    if (!s->layer_fd) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return -1;
    }
    for (int l = 0; l < c->n_layers; l++) {
        char path[4096];
        packed_expert_path(path, sizeof path, dir, l);
        if ((s->layer_fd[l] = open_file(s, path, err, errlen)) < 0) return -1;
    }
    return 0;
}

expert_source *experts_open_stream(const char *dir, const checkpoint *ck, const model_config *c,
                                   const experts_stream_opts *o, char *err, size_t errlen) {
    stream_source *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return NULL;
    }
    s->base.ops = &stream_ops;
    s->mode = o->mode;
    s->n_layers = c->n_layers;
    s->n_experts = c->n_experts;
    s->packed = packed_is_dir(dir);
    expert_io_config ioc = {.backend = o->uring ? EXPERT_IO_URING : EXPERT_IO_THREADS,
                            .mode = o->mode == EXPERTS_IO_DIRECT ? EXPERT_IO_DIRECT : EXPERT_IO_CACHED,
                            .max_requests = o->top_k, .window = STREAM_IO_WINDOW,
                            .chunk_bytes = STREAM_IO_CHUNK};
    if (!(s->io = expert_io_create(&ioc, err, sizeof(char) * errlen))) goto bad;
    if (o->prefetch && o->mode == EXPERTS_IO_DIRECT) {
        /* the prefetch engine: the same settings and files (registered: the main engine closes them),
         * deep enough that a whole prediction is in flight at submit, since it is topped up only when
         * waited on. FLASHMOE_PREFETCH_FAIL_AFTER injects a read failure into it alone. */
        expert_io_config pc = ioc;
        pc.fail_env = "FLASHMOE_PREFETCH_FAIL_AFTER";
        pc.quiet = 1; /* the main engine has said so if io_uring is refused */
        pc.queue_depth = o->top_k > 128 ? 4096 : 32 * o->top_k;
        pc.window = 0;
        pc.max_requests = c->n_experts > o->top_k ? c->n_experts : o->top_k; /* a whole layer read ahead */
        if (!(s->pf_io = expert_io_create(&pc, err, errlen))) {
            if (o->prefetch != 2) goto bad;
            fprintf(stderr, "flashmoe: reading experts without prefetch: %s\n", err); /* it was optional */
        }
    }
    if (s->packed ? open_packed(s, dir, c, err, errlen) : open_hf(s, ck, c, err, errlen)) goto bad;
    expert_cache_config cc = {.n_layers = c->n_layers, .n_experts = c->n_experts, .working = o->top_k,
                              .budget_bytes = o->mode == EXPERTS_IO_DIRECT ? o->cache_bytes : 0,
                              .slot_bytes = s->packed ? s->lo.record_bytes : 0, .locate = locate, .locate_ctx = s,
                              .prefetch_io = s->pf_io, .prefetch_fit = 1, .prefetch_if_room = o->prefetch == 2,
                              .readahead_max = c->n_experts};
    if (!(s->cache = expert_cache_create(s->io, &cc, err, errlen))) goto bad;
    if (s->pf_io && !expert_cache_prefetching(s->cache)) { /* no room for it */
        expert_io_free(s->pf_io);
        s->pf_io = NULL;
    }
    if (s->pf_io) s->base.prefetch = stream_prefetch, s->base.readahead = stream_readahead;
    return &s->base;
bad:
    stream_free(&s->base);
    return NULL;
}
