/* A loaded Qwen3.5-MoE model and the per-conversation state that a forward pass advances.
 *
 *   model *m = model_load(dir, &opts, err, sizeof err);
 *   state *s = state_create(m, max_ctx, err, sizeof err);
 *   model_forward(m, s, ids, n, logits, 0, err, sizeof err);   // logits of the last position
 *   ...                                                         // later calls continue from the cache
 *   state_free(s); model_free(m);
 *
 * Non-expert weights are views into the mapped checkpoint, in their own dtype; small vectors (norms,
 * conv kernels, gates' parameters) are converted to f32 at load. Experts come through expert_source. */
#ifndef FLASHMOE_MODEL_H
#define FLASHMOE_MODEL_H
#include <stdint.h>
#include <stdio.h>

#include "checkpoint.h"
#include "config.h"
#include "experts.h"
#include "tensor.h"
#include "threadpool.h"

/* Prompt positions run together by default. Each expert a chunk routes to is read and unpacked once for
 * all its rows, so a longer chunk gives each expert more rows (a 2048-token chunk of the 35B geometry:
 * about 64 instead of 16) for the same reads: prefill of a 2048-token prompt 76 -> 67 ms per token in
 * four alternating pairs against 512 (BENCHMARKS.md), for about 0.18 MB of state per position there,
 * allocated lazily and counted by --io auto (state_bytes). */
#define MODEL_PREFILL_CHUNK 2048

/* model_opts.prefetch: AUTO (0, the default) when the experts end up read with --io direct and the expert
 * cache has room for the prefetch batch (experts_stream_opts.prefetch 2); ON wants --io direct (AUTO then
 * picks it) and makes room; OFF never. */
enum { MODEL_PREFETCH_OFF = -1, MODEL_PREFETCH_AUTO = 0, MODEL_PREFETCH_ON = 1 };

typedef struct {
    int top_k;   /* experts per token; 0 = the model's own */
    int threads; /* 0 or 1 = single-threaded */
    experts_io_mode io;  /* how experts are read: AUTO (the CLI's default), CACHE (no opts), DIRECT, MMAP */
    size_t cache_bytes;  /* DIRECT: the in-process expert cache's budget */
    int cache_given;     /* cache_bytes was chosen by the user (AUTO then keeps it) */
    int io_threads_only; /* 1: reader threads instead of io_uring */
    int prefill_chunk;   /* positions run together when a prompt is processed; 0: MODEL_PREFILL_CHUNK */
    int prefetch;        /* while decoding, read the experts predicted for the next layer ahead: MODEL_PREFETCH_* */
    int plan_ctx;        /* AUTO: the context the caller will create states for (0: 4096), and how many */
    int plan_states;     /* states (0: 1); their size is kept free of the expert cache */
} model_opts;

typedef struct {
    layer_type type;
    float *input_norm; /* [H], stored as (1 + w): zero-centred RMSNorm */
    float *post_norm;  /* [H], (1 + w) */
    /* gated attention */
    qmat q_proj;  /* [n_heads * head_dim * 2, H]: per head, head_dim query rows then head_dim gate rows */
    qmat k_proj;  /* [n_kv_heads * head_dim, H] */
    qmat v_proj;  /* [n_kv_heads * head_dim, H] */
    qmat o_proj;  /* [H, n_heads * head_dim] */
    float *q_norm, *k_norm; /* [head_dim], (1 + w) */
    /* gated delta net */
    qmat in_qkv;      /* [2 * Hk * dk + Hv * dv, H] */
    qmat in_z;        /* [Hv * dv, H] */
    qmat in_b, in_a;  /* [Hv, H] */
    qmat out_proj;    /* [H, Hv * dv] */
    float *conv_w;    /* [conv_dim, kernel] */
    float *neg_A;     /* [Hv], -exp(A_log) */
    float *dt_bias;   /* [Hv] */
    float *gdn_norm;  /* [dv], plain w (this norm is not zero-centred) */
    /* sparse MoE */
    qmat router;                  /* [E, H] */
    qmat sh_gate, sh_up, sh_down; /* shared expert: [Is, H], [Is, H], [H, Is] */
    qmat sh_expert_gate;          /* [1, H] */
} layer_weights;

typedef struct {
    model_config cfg;
    int top_k; /* in use (opts or native) */
    int prefill_chunk;
    checkpoint ck;
    qmat embed;   /* [V, H] */
    qmat lm_head; /* [V, H] (the embedding when tied) */
    float *final_norm; /* [H], (1 + w) */
    layer_weights *layers;
    expert_source *experts;
    pool *pool;
    float **f32_allocs; /* small converted vectors, freed with the model */
    int n_f32_allocs;
    char io_note[640]; /* with io AUTO: what was chosen and why (one line, for the commands to print) */
} model;

model *model_load(const char *dir, const model_opts *opts, char *err, size_t errlen);
void model_free(model *m);

/* Bytes of a matrix: data plus bf16 scales and biases; 0 for one the layer does not have. */
size_t model_qmat_bytes(const qmat *m);
/* The resident matrices of a layer (those of the other layer type have no data). */
#define LAYER_MATRICES 14
void model_layer_matrices(const layer_weights *w, const qmat *ms[LAYER_MATRICES]);
/* Bytes of every resident matrix: the layers', the embedding and (untied) the lm_head. */
size_t model_resident_bytes(const model *m);

typedef struct state state;

/* KV cache for max_ctx positions, recurrent and conv state, and all scratch: nothing is allocated after. */
state *state_create(const model *m, int max_ctx, char *err, size_t errlen);
/* Bytes state_create allocates for a model of this config with top_k experts per token, prompt chunks of
 * `chunk`, `threads` threads and max_ctx positions (what --io auto keeps free for each state). */
size_t state_bytes(const model_config *c, int top_k, int chunk, int threads, int max_ctx);
void state_free(state *s);
void state_reset(state *s);
int state_pos(const state *s);
/* dst becomes a copy of src (same model; dst's context must hold src's positions): a conversation can be
 * saved at a point and resumed from it. Returns 0, or -1 with a message. */
int state_copy(state *dst, const state *src, char *err, size_t errlen);
/* --timing: collect per-layer times from now on, and print them with the I/O totals. */
void state_set_timing(state *s, int on);
void state_timing_report(const state *s, double wall_seconds, FILE *f);

/* Runs tokens[0..n) from the current position. logits: if all_logits, [n x vocab] (every position);
 * else [vocab] for the last position; may be NULL. Returns 0, or -1 with a message (bad token id,
 * context full, expert read failure). */
int model_forward(model *m, state *s, const int32_t *tokens, int n, float *logits, int all_logits, char *err,
                  size_t errlen);

#endif
