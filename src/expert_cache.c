/* Expert cache (see expert_cache.h).
 *
 * Slots sit in one arena. slot_of[layer * n_experts + expert] gives the slot holding an expert, or -1.
 * Unpinned slots form a doubly linked list in LRU order: empty slots at the head (used first), the
 * most recently released at the tail; eviction takes the head. Pinned slots are off the list.
 *
 * Prefetch: a slot being read by the prefetch engine is pinned and marked pf_loading; it never belongs to
 * the layer in progress (begin waits for such experts before pinning anything), so a slot is pinned by
 * one owner at a time: at most `working` by the layer and `working` by a prediction's batch, or by a
 * read-ahead's as many as leave 2 x working unpinned (expert_cache_readahead). */
#include "expert_cache.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { SLOT_EMPTY, SLOT_LOADING, SLOT_READY } slot_state;

typedef struct {
    int key; /* layer * n_experts + expert, or -1 */
    slot_state state;
    int pinned;
    int pf_loading; /* being read by the prefetch engine (pinned by it) */
    int pf_unused;  /* read by prefetch and not asked for since */
    int prev, next; /* LRU list links (-1: none) */
    expert_io_req x; /* the expert's pieces, dest pointing into this slot */
} cache_slot;

struct expert_cache {
    expert_io *io;
    expert_cache_config cfg;
    char *arena;
    int n_slots;
    cache_slot *slots;
    int *slot_of; /* n_layers * n_experts */
    int lru_head, lru_tail;
    size_t memory_bytes;

    /* the layer in progress */
    int active;
    int n;             /* experts in it */
    int *item_slot;    /* [working] slot of each expert of the begin list */
    int *hit_items;    /* [working] positions of the hits */
    int *req_item;     /* [working] position of the expert of each engine request */
    expert_io_req *reqs; /* [working] */
    int n_hits, hits_returned, n_misses, misses_returned;

    uint64_t hits, misses, evictions;

    /* prefetch (pf_io NULL: off) */
    expert_io *pf_io;
    int *pf_slot;           /* [pf_max] slot of each request of the prefetch batch */
    expert_io_req *pf_reqs; /* [pf_max] */
    int pf_max;             /* max(working, readahead_max) */
    int pf_n, pf_returned;  /* requests in that batch, and those completed or dropped */
    int pf_layer;           /* the layer of the batch to start (prediction or read-ahead) */
    int pf_ahead;           /* 1: the batch in flight is a read-ahead, not a prediction */
    int pf_ahead_next;      /* the same for the batch to start */
    int pred_layer;         /* the last prediction: layer (-1: none, or already begun) and experts */
    int *pred_ids;          /* [pf_max] */
    int pred_n;
    int pf_pending;         /* 1: the prediction's reads have not been started yet */
    int pred_top;           /* how many of the prediction (the first) are to be read */
    /* prefetch_fit's estimates (0: none yet): seconds from a layer's last read to the next layer's begin,
     * and bytes per second of the layers' reads; and decaying counts of the experts at the top of
     * predictions and of those then used */
    double t_begin, t_reads_done; /* the layer in progress: its begin, when its last read arrived (0: not yet) */
    double window_s, read_bps, top_named, top_used;
    uint64_t predicted_asked, predicted_right, prefetched, prefetch_used, prefetch_failures;
    uint64_t predictions, prediction_top, predictions_skipped, read_ahead;
};

#define PF_EST_GAIN 0.25 /* weight of a new sample in the running estimates */
#define PF_USED_DECAY 0.9 /* per prediction, of the counts of the top's use */


/* ---- LRU list ---- */

static void lru_remove(expert_cache *c, int s) {
    cache_slot *x = &c->slots[s];
    if (x->prev >= 0) c->slots[x->prev].next = x->next; else c->lru_head = x->next;
    if (x->next >= 0) c->slots[x->next].prev = x->prev; else c->lru_tail = x->prev;
    x->prev = x->next = -1;
}

static void lru_push_tail(expert_cache *c, int s) {
    cache_slot *x = &c->slots[s];
    x->prev = c->lru_tail;
    x->next = -1;
    if (c->lru_tail >= 0) c->slots[c->lru_tail].next = s; else c->lru_head = s;
    c->lru_tail = s;
}

static void lru_push_head(expert_cache *c, int s) {
    cache_slot *x = &c->slots[s];
    x->prev = -1;
    x->next = c->lru_head;
    if (c->lru_head >= 0) c->slots[c->lru_head].prev = s; else c->lru_tail = s;
    c->lru_head = s;
}

static void slot_pin(expert_cache *c, int s) {
    lru_remove(c, s);
    c->slots[s].pinned = 1;
}

/* Unpins a slot: a resident expert becomes the most recently used, anything else an empty slot. */
static void slot_unpin(expert_cache *c, int s) {
    cache_slot *x = &c->slots[s];
    x->pinned = 0;
    if (x->state == SLOT_READY) {
        lru_push_tail(c, s);
    } else {
        if (x->key >= 0) c->slot_of[x->key] = -1;
        x->key = -1;
        x->state = SLOT_EMPTY;
        lru_push_head(c, s);
    }
}

/* ---- create / free ---- */

static size_t largest_expert(expert_cache *c, char *err, size_t errlen) {
    size_t most = 0;
    for (int l = 0; l < c->cfg.n_layers; l++)
        for (int e = 0; e < c->cfg.n_experts; e++) {
            expert_io_req x = {0};
            if (c->cfg.locate(c->cfg.locate_ctx, l, e, &x, err, errlen) < 0) return 0;
            size_t room = expert_io_req_room(c->io, &x);
            if (!room) {
                util_err_set(err, errlen, "expert (%d, %d): invalid location (%d pieces, or an unregistered fd)", l,
                        e, x.n_pieces);
                return 0;
            }
            if (room > most) most = room;
        }
    return most;
}

expert_cache *expert_cache_create(expert_io *io, const expert_cache_config *cfg, char *err, size_t errlen) {
    if (!io || !cfg || !cfg->locate || cfg->n_layers < 1 || cfg->n_experts < 1 || cfg->working < 1 ||
        (size_t)cfg->n_layers * (size_t)cfg->n_experts > (size_t)1 << 30) {
        util_err_set(err, errlen, "expert_cache: need an engine, a locate function, n_layers, n_experts and working >= 1");
        return NULL;
    }
    expert_cache *c = calloc(1, sizeof *c);
    if (!c) {
        util_err_set(err, errlen, "expert_cache: out of memory");
        return NULL;
    }
    c->io = io;
    c->cfg = *cfg;
    if (!c->cfg.slot_bytes && !(c->cfg.slot_bytes = largest_expert(c, err, errlen))) goto fail;
    c->cfg.slot_bytes = (c->cfg.slot_bytes + EXPERT_IO_ALIGN - 1) / EXPERT_IO_ALIGN * EXPERT_IO_ALIGN;

    size_t cached = c->cfg.budget_bytes / c->cfg.slot_bytes;
    if (cached > (size_t)1 << 24) {
        util_err_set(err, errlen, "expert_cache: budget of %zu slots is too many", cached);
        goto fail;
    }
    c->pf_io = cfg->prefetch_io;
    if (cfg->prefetch_if_room && cached < (size_t)c->cfg.working) c->pf_io = NULL;
    c->pred_layer = -1;
    /* with prefetch, the `working` slots of its batch come out of the budget, which holds at least them */
    if (c->pf_io && cached < (size_t)c->cfg.working) cached = (size_t)c->cfg.working;
    c->n_slots = (int)cached + c->cfg.working;
    size_t arena_bytes = (size_t)c->n_slots * c->cfg.slot_bytes;
    size_t n_keys = (size_t)c->cfg.n_layers * (size_t)c->cfg.n_experts;
    size_t w = (size_t)c->cfg.working;
    c->pf_max = c->cfg.readahead_max > c->cfg.working ? c->cfg.readahead_max : c->cfg.working;
    size_t pw = (size_t)c->pf_max;
    c->arena = expert_io_buffer_alloc(arena_bytes);
    c->slots = calloc((size_t)c->n_slots, sizeof *c->slots);
    c->slot_of = malloc(n_keys * sizeof *c->slot_of);
    c->item_slot = calloc(w, sizeof *c->item_slot);
    c->hit_items = calloc(w, sizeof *c->hit_items);
    c->req_item = calloc(w, sizeof *c->req_item);
    c->reqs = calloc(w, sizeof *c->reqs);
    c->pf_slot = calloc(pw, sizeof *c->pf_slot);
    c->pf_reqs = calloc(pw, sizeof *c->pf_reqs);
    c->pred_ids = calloc(pw, sizeof *c->pred_ids);
    if (!c->arena || !c->slots || !c->slot_of || !c->item_slot || !c->hit_items || !c->req_item || !c->reqs ||
        !c->pf_slot || !c->pf_reqs || !c->pred_ids) {
        util_err_set(err, errlen, "expert_cache: cannot allocate %d slots of %zu bytes (%zu MiB)", c->n_slots,
                c->cfg.slot_bytes, arena_bytes >> 20);
        goto fail;
    }
    size_t huge = (size_t)2 << 20; /* expert_io_buffer_alloc rounds up to whole huge pages */
    c->memory_bytes = (arena_bytes + huge - 1) / huge * huge + (size_t)c->n_slots * sizeof *c->slots +
                      n_keys * sizeof *c->slot_of + w * (3 * sizeof(int) + sizeof *c->reqs) +
                      pw * (2 * sizeof(int) + sizeof *c->pf_reqs);
    for (size_t k = 0; k < n_keys; k++) c->slot_of[k] = -1;
    c->lru_head = c->lru_tail = -1;
    for (int s = 0; s < c->n_slots; s++) {
        c->slots[s].key = -1;
        lru_push_tail(c, s);
    }
    return c;
fail:
    expert_cache_free(c);
    return NULL;
}

static void pf_drain(expert_cache *c);

void expert_cache_free(expert_cache *c) {
    if (!c) return;
    c->pf_pending = 0;
    expert_cache_end(c);
    if (c->pf_io) pf_drain(c); /* nothing may write into the arena once it is freed */
    expert_io_buffer_free(c->arena);
    free(c->slots);
    free(c->slot_of);
    free(c->item_slot);
    free(c->hit_items);
    free(c->req_item);
    free(c->reqs);
    free(c->pf_slot);
    free(c->pf_reqs);
    free(c->pred_ids);
    free(c);
}

/* ---- prefetch ---- */

/* The prefetch batch failed: the experts still arriving are dropped (read again when asked for). */
static void pf_fail(expert_cache *c, const char *why) {
    for (int m = 0; m < c->pf_n; m++) {
        cache_slot *x = &c->slots[c->pf_slot[m]];
        if (!x->pf_loading) continue;
        x->pf_loading = 0;
        slot_unpin(c, c->pf_slot[m]); /* not ready: the slot becomes empty */
    }
    c->pf_returned = c->pf_n;
    c->prefetch_failures++;
    fprintf(stderr, "flashmoe: prefetch: %s; those experts will be read when needed\n", why);
}

/* Waits for the next read of the prefetch batch: the expert becomes resident (most recently used).
 * Returns 1, or 0 when the batch is over (all completed, or failed and dropped). */
static int pf_wait_one(expert_cache *c) {
    if (c->pf_returned >= c->pf_n) return 0;
    char why[512];
    int m, rc = expert_io_wait_any(c->pf_io, &m, why, sizeof why);
    if (rc != 1) {
        if (rc == 0) snprintf(why, sizeof why, "the engine ended the batch early");
        pf_fail(c, why);
        return 0;
    }
    c->pf_returned++;
    cache_slot *x = &c->slots[c->pf_slot[m]];
    x->state = SLOT_READY;
    x->pf_loading = 0;
    x->pf_unused = !c->pf_ahead;
    if (c->pf_ahead) c->read_ahead++;
    else c->prefetched++;
    slot_unpin(c, c->pf_slot[m]);
    return 1;
}

static void pf_drain(expert_cache *c) {
    while (pf_wait_one(c)) {
    }
}

/* Starts the pending prediction's reads, unless the layer in progress still has reads of its own. */
static void pf_start(expert_cache *c) {
    if (!c->pf_pending || (c->active && c->misses_returned < c->n_misses)) return;
    c->pf_pending = 0;
    pf_drain(c); /* the previous batch: one at a time */
    c->pf_ahead = c->pf_ahead_next;
    int layer = c->pf_layer, base = layer * c->cfg.n_experts, n = 0;
    for (int k = 0; k < c->pred_top && c->lru_head >= 0; k++) {
        int key = base + c->pred_ids[k], s = c->lru_head;
        if (c->slot_of[key] >= 0) continue; /* resident already */
        cache_slot *x = &c->slots[s];
        expert_io_req *r = &c->pf_reqs[n];
        memset(r, 0, sizeof *r);
        char why[384];
        if (c->cfg.locate(c->cfg.locate_ctx, layer, c->pred_ids[k], r, why, sizeof why) < 0 ||
            expert_io_layout(c->pf_io, r, c->arena + (size_t)s * c->cfg.slot_bytes, c->cfg.slot_bytes, why,
                             sizeof why) < 0)
            continue; /* begin will say why, if the expert is asked for */
        slot_pin(c, s);
        if (x->key >= 0) {
            c->slot_of[x->key] = -1;
            c->evictions++;
        }
        x->key = key;
        x->state = SLOT_LOADING;
        x->pf_loading = 1;
        x->pf_unused = 0;
        x->x = *r;
        c->slot_of[key] = s;
        c->pf_slot[n++] = s;
    }
    c->pf_n = n;
    c->pf_returned = 0;
    char why[512];
    if (n && expert_io_submit(c->pf_io, c->pf_reqs, n, why, sizeof why) < 0) pf_fail(c, why);
}

/* The arguments of a prediction or a read-ahead (`who` names the call): a prefetch engine, the layer,
 * at most `most` experts, each in range and listed once. 0, or -1 with the reason in err. */
static int pf_args_check(const expert_cache *c, const char *who, int layer, const int *ids, int n, int most, char *err,
                         size_t errlen) {
    if (!c->pf_io) {
        util_err_set(err, errlen, "%s: the cache has no prefetch engine", who);
        return -1;
    }
    if (layer < 0 || layer >= c->cfg.n_layers || n < 0 || n > most) {
        util_err_set(err, errlen, "%s: layer %d (of %d), %d experts (at most %d)", who, layer, c->cfg.n_layers, n,
                     most);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        int dup = 0;
        for (int j = 0; j < i; j++) dup |= ids[j] == ids[i];
        if (ids[i] < 0 || ids[i] >= c->cfg.n_experts || dup) {
            util_err_set(err, errlen, "%s: expert %d out of range 0..%d or listed twice", who, ids[i],
                         c->cfg.n_experts - 1);
            return -1;
        }
    }
    return 0;
}

int expert_cache_prefetch(expert_cache *c, int layer, const int *ids, int n, char *err, size_t errlen) {
    if (pf_args_check(c, "expert_cache_prefetch", layer, ids, n, c->cfg.working, err, errlen)) return -1;
    memcpy(c->pred_ids, ids, sizeof *ids * (size_t)n);
    c->pred_n = n;
    c->pred_layer = c->pf_layer = layer;
    c->pf_ahead_next = 0;
    c->pred_top = c->cfg.prefetch_fit ? expert_cache_prefetch_count(c->window_s, c->read_bps, c->cfg.slot_bytes, n) : n;
    c->predictions++;
    c->prediction_top += (uint64_t)c->pred_top;
    if (c->cfg.prefetch_fit && c->top_used < 0.5 * c->top_named) { /* scored at begin, not read */
        c->pf_pending = 0;
        c->predictions_skipped++;
        return 0;
    }
    c->pf_pending = 1;
    pf_start(c);
    return 0;
}

int expert_cache_readahead(expert_cache *c, int layer, const int *ids, int n, char *err, size_t errlen) {
    if (pf_args_check(c, "expert_cache_readahead", layer, ids, n, c->pf_max, err, errlen)) return -1;
    /* slots: the read-ahead's stay pinned while they load, and a begin pins up to `working` more (hits
     * waited for first); 2 x working stay free, which also covers a prediction's batch */
    int room = c->n_slots - 2 * c->cfg.working;
    memcpy(c->pred_ids, ids, sizeof *ids * (size_t)n);
    c->pred_n = n;
    c->pred_layer = -1; /* a prediction not yet begun is dropped unscored */
    c->pf_layer = layer;
    c->pf_ahead_next = 1;
    c->pred_top = n < room ? n : room > 0 ? room : 0;
    c->pf_pending = 1;
    pf_start(c);
    return 0;
}

int expert_cache_prefetch_count(double window_s, double bytes_per_s, size_t slot_bytes, int n) {
    if (window_s <= 0 || bytes_per_s <= 0 || !slot_bytes) return (n + 1) / 2;
    double k = window_s * bytes_per_s / (double)slot_bytes + 0.5;
    return k < 1 ? 1 : k >= n ? n : (int)k;
}

int expert_cache_prefetching(const expert_cache *c) { return c->pf_io != NULL; }

static void estimate(double *est, double sample) { *est = *est > 0 ? *est + PF_EST_GAIN * (sample - *est) : sample; }

/* One of the layer's reads has arrived. After the last: the read rate's sample (reads since begin, the
 * disk busy with them) and the time the disk went idle, for prefetch_fit. */
static void miss_arrived(expert_cache *c, int slot) {
    c->misses_returned++;
    c->slots[slot].state = SLOT_READY;
    if (!c->cfg.prefetch_fit || c->misses_returned < c->n_misses) return;
    double now = util_now_seconds();
    if (now > c->t_begin) estimate(&c->read_bps, (double)c->n_misses * (double)c->cfg.slot_bytes / (now - c->t_begin));
    c->t_reads_done = now;
}

/* At begin: experts of the layer still arriving by prefetch are waited for (a failed prefetch leaves
 * them missing); a prediction of this layer is scored, and dropped if its reads never started. */
static void pf_begin(expert_cache *c, int layer, const int *experts, int n) {
    int base = layer * c->cfg.n_experts;
    if (c->pred_layer == layer && c->t_reads_done > 0) /* decoding: the idle time since the last reads */
        estimate(&c->window_s, util_now_seconds() - c->t_reads_done);
    for (int i = 0; i < n; i++) {
        int s;
        while ((s = c->slot_of[base + experts[i]]) >= 0 && c->slots[s].pf_loading && pf_wait_one(c)) {
        }
    }
    if (c->pred_layer != layer) return;
    int top_used = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < c->pred_n; k++) {
            c->predicted_right += c->pred_ids[k] == experts[i];
            top_used += k < c->pred_top && c->pred_ids[k] == experts[i];
        }
    c->predicted_asked += (uint64_t)n;
    c->top_named = PF_USED_DECAY * c->top_named + c->pred_top;
    c->top_used = PF_USED_DECAY * c->top_used + top_used;
    c->pred_layer = -1;
    c->pf_pending = 0;
}

/* ---- one layer ---- */

/* Undoes a begin that failed after pinning: every slot pinned so far is released. */
static void begin_undo(expert_cache *c, int n) {
    for (int i = 0; i < n; i++)
        if (c->item_slot[i] >= 0) slot_unpin(c, c->item_slot[i]);
}

int expert_cache_begin(expert_cache *c, int layer, const int *experts, int n, char *err, size_t errlen) {
    if (c->active) {
        util_err_set(err, errlen, "expert_cache_begin: the previous layer was not ended");
        return -1;
    }
    if (n < 0 || n > c->cfg.working) {
        util_err_set(err, errlen, "expert_cache_begin: %d experts (at most %d at once)", n, c->cfg.working);
        return -1;
    }
    if (layer < 0 || layer >= c->cfg.n_layers) {
        util_err_set(err, errlen, "expert_cache_begin: layer %d out of range 0..%d", layer, c->cfg.n_layers - 1);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (experts[i] < 0 || experts[i] >= c->cfg.n_experts) {
            util_err_set(err, errlen, "expert_cache_begin: expert %d out of range 0..%d", experts[i], c->cfg.n_experts - 1);
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (experts[j] == experts[i]) {
                util_err_set(err, errlen, "expert_cache_begin: expert %d listed twice", experts[i]);
                return -1;
            }
    }

    if (c->pf_io) pf_begin(c, layer, experts, n);
    c->t_begin = c->cfg.prefetch_fit ? util_now_seconds() : 0;
    c->t_reads_done = 0;

    /* the hits first: pinned, no miss can evict them */
    int base = layer * c->cfg.n_experts, n_hits = 0, n_misses = 0;
    for (int i = 0; i < n; i++) {
        int s = c->slot_of[base + experts[i]];
        c->item_slot[i] = s;
        if (s < 0) continue;
        c->prefetch_used += (uint64_t)c->slots[s].pf_unused;
        c->slots[s].pf_unused = 0;
        slot_pin(c, s);
        c->hit_items[n_hits++] = i;
    }
    /* then each miss takes the least recently used unpinned slot; one exists, since at most
     * `working` slots are pinned (2 x working with prefetch) and there are more */
    for (int i = 0; i < n; i++) {
        if (c->item_slot[i] >= 0) continue;
        int s = c->lru_head;
        cache_slot *x = &c->slots[s];
        slot_pin(c, s);
        c->item_slot[i] = s;
        if (x->key >= 0) {
            c->slot_of[x->key] = -1;
            c->evictions++;
        }
        x->key = -1;
        x->state = SLOT_EMPTY;
        x->pf_unused = 0;
        expert_io_req *r = &c->reqs[n_misses];
        memset(r, 0, sizeof *r);
        char why[384];
        if (c->cfg.locate(c->cfg.locate_ctx, layer, experts[i], r, why, sizeof why) < 0 ||
            expert_io_layout(c->io, r, c->arena + (size_t)s * c->cfg.slot_bytes, c->cfg.slot_bytes, why,
                             sizeof why) < 0) {
            util_err_set(err, errlen, "expert (%d, %d): %s", layer, experts[i], why);
            begin_undo(c, n);
            return -1;
        }
        x->key = base + experts[i];
        x->state = SLOT_LOADING;
        x->x = *r;
        c->slot_of[x->key] = s;
        c->req_item[n_misses++] = i;
    }
    if (expert_io_submit(c->io, c->reqs, n_misses, err, errlen) < 0) {
        begin_undo(c, n);
        return -1;
    }
    c->active = 1;
    c->n = n;
    c->n_hits = n_hits;
    c->n_misses = n_misses;
    c->hits_returned = c->misses_returned = 0;
    c->hits += (uint64_t)n_hits;
    c->misses += (uint64_t)n_misses;
    if (c->cfg.prefetch_fit && !n_misses) c->t_reads_done = c->t_begin;
    return n_misses;
}

/* After a read failure: the experts still loading hold nothing valid. */
static void loads_drop(expert_cache *c) {
    for (int i = 0; i < c->n; i++) {
        cache_slot *x = &c->slots[c->item_slot[i]];
        if (x->state != SLOT_LOADING) continue;
        c->slot_of[x->key] = -1;
        x->key = -1;
        x->state = SLOT_EMPTY;
    }
    c->misses_returned = c->n_misses;
}

int expert_cache_next(expert_cache *c, int *i, const expert_io_req **x, char *err, size_t errlen) {
    if (!c->active) return 0;
    if (c->hits_returned < c->n_hits) {
        *i = c->hit_items[c->hits_returned++];
        *x = &c->slots[c->item_slot[*i]].x;
        return 1;
    }
    if (c->misses_returned == c->n_misses) return 0;
    int m, rc = expert_io_wait_any(c->io, &m, err, errlen);
    if (rc < 0) {
        loads_drop(c);
        return -1;
    }
    if (rc == 0) { /* cannot happen: the engine returned fewer requests than were submitted */
        util_err_set(err, errlen, "expert_cache_next: the engine ended the batch early");
        loads_drop(c);
        return -1;
    }
    *i = c->req_item[m];
    miss_arrived(c, c->item_slot[*i]);
    *x = &c->slots[c->item_slot[*i]].x;
    if (c->pf_io) pf_start(c); /* the disk is free once the layer has all its reads */
    return 1;
}

void expert_cache_end(expert_cache *c) {
    if (!c->active) return;
    while (c->misses_returned < c->n_misses) { /* the caller stopped early: finish (or drop) the reads */
        int m;
        if (expert_io_wait_any(c->io, &m, NULL, 0) != 1) {
            loads_drop(c);
            break;
        }
        miss_arrived(c, c->item_slot[c->req_item[m]]);
    }
    for (int i = 0; i < c->n; i++) slot_unpin(c, c->item_slot[i]);
    c->active = 0;
    if (c->pf_io) pf_start(c);
}

const expert_io_req *expert_cache_peek(const expert_cache *c, int layer, int expert) {
    if (layer < 0 || layer >= c->cfg.n_layers || expert < 0 || expert >= c->cfg.n_experts) return NULL;
    int s = c->slot_of[layer * c->cfg.n_experts + expert];
    return s >= 0 && c->slots[s].state == SLOT_READY ? &c->slots[s].x : NULL;
}

void expert_cache_stats_get(const expert_cache *c, expert_cache_stats *out) {
    expert_io_stats io, pf = {0};
    expert_io_stats_get(c->io, &io);
    if (c->pf_io) expert_io_stats_get(c->pf_io, &pf);
    *out = (expert_cache_stats){.hits = c->hits,
                                .misses = c->misses,
                                .evictions = c->evictions,
                                .requests = io.requests + pf.requests,
                                .bytes_read = io.bytes + pf.bytes,
                                .wait_ns = io.wait_ns + pf.wait_ns,
                                .slots = c->n_slots,
                                .slot_bytes = c->cfg.slot_bytes,
                                .memory_bytes = c->memory_bytes,
                                .predicted_asked = c->predicted_asked,
                                .predicted_right = c->predicted_right,
                                .prefetched = c->prefetched,
                                .prefetch_used = c->prefetch_used,
                                .prefetch_failures = c->prefetch_failures,
                                .predictions = c->predictions,
                                .prediction_top = c->prediction_top,
                                .predictions_skipped = c->predictions_skipped, .read_ahead = c->read_ahead};
}
