/* Loading a Qwen3.5-MoE checkpoint: every weight fetched by name with the shape the config implies. */
#include "model.h"
#include "memplan.h"
#include "packed.h"

#include <math.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    model *m;
    char *err;
    size_t errlen;
    char name[512];
} loader;

/* name = prefix + "layers.<l>." + suffix (l < 0: no layer part) */
static const char *wname(loader *ld, int l, const char *suffix) {
    if (l >= 0)
        snprintf(ld->name, sizeof ld->name, "%slayers.%d.%s", ld->m->ck.prefix, l, suffix);
    else
        snprintf(ld->name, sizeof ld->name, "%s%s", ld->m->ck.prefix, suffix);
    return ld->name;
}

static int matrix(loader *ld, int l, const char *suffix, int rows, int cols, qmat *out) {
    return ckpt_matrix(&ld->m->ck, wname(ld, l, suffix), rows, cols, out, ld->err, ld->errlen);
}

/* A float vector converted to f32 (shape given explicitly, e.g. [C, 1, K] for the conv kernel). */
static float *vector(loader *ld, int l, const char *suffix, int ndim, const int64_t *shape) {
    model *m = ld->m;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    float *v = malloc(sizeof(float) * (size_t)n);
    float **list = realloc(m->f32_allocs, sizeof *list * (size_t)(m->n_f32_allocs + 1));
    if (!v || !list) {
        free(v);
        if (list) m->f32_allocs = list;
        snprintf(ld->err, ld->errlen, "%s: out of memory", m->ck.dir);
        return NULL;
    }
    m->f32_allocs = list;
    m->f32_allocs[m->n_f32_allocs++] = v;
    if (ckpt_vector_f32(&m->ck, wname(ld, l, suffix), ndim, shape, v, ld->err, ld->errlen)) return NULL;
    return v;
}

/* A zero-centred RMSNorm weight, stored as (1 + w). */
static float *norm_weight(loader *ld, int l, const char *suffix, int n) {
    int64_t shape[1] = {n};
    float *v = vector(ld, l, suffix, 1, shape);
    if (v)
        for (int i = 0; i < n; i++) v[i] += 1.0f;
    return v;
}

static int load_attention(loader *ld, int l, layer_weights *w) {
    const model_config *c = &ld->m->cfg;
    int H = c->hidden_size, hd = c->head_dim;
    if (matrix(ld, l, "self_attn.q_proj.weight", c->n_heads * hd * 2, H, &w->q_proj) ||
        matrix(ld, l, "self_attn.k_proj.weight", c->n_kv_heads * hd, H, &w->k_proj) ||
        matrix(ld, l, "self_attn.v_proj.weight", c->n_kv_heads * hd, H, &w->v_proj) ||
        matrix(ld, l, "self_attn.o_proj.weight", H, c->n_heads * hd, &w->o_proj))
        return -1;
    w->q_norm = norm_weight(ld, l, "self_attn.q_norm.weight", hd);
    if (!w->q_norm) return -1;
    w->k_norm = norm_weight(ld, l, "self_attn.k_norm.weight", hd);
    return w->k_norm ? 0 : -1;
}

static int load_delta_net(loader *ld, int l, layer_weights *w) {
    const model_config *c = &ld->m->cfg;
    int H = c->hidden_size, Hv = c->lin_v_heads;
    int key_dim = c->lin_k_heads * c->lin_k_dim, value_dim = Hv * c->lin_v_dim;
    int conv_dim = 2 * key_dim + value_dim;
    if (matrix(ld, l, "linear_attn.in_proj_qkv.weight", conv_dim, H, &w->in_qkv) ||
        matrix(ld, l, "linear_attn.in_proj_z.weight", value_dim, H, &w->in_z) ||
        matrix(ld, l, "linear_attn.in_proj_b.weight", Hv, H, &w->in_b) ||
        matrix(ld, l, "linear_attn.in_proj_a.weight", Hv, H, &w->in_a) ||
        matrix(ld, l, "linear_attn.out_proj.weight", H, value_dim, &w->out_proj))
        return -1;
    int64_t conv_shape[3] = {conv_dim, 1, c->conv_kernel}, hv_shape[1] = {Hv}, dv_shape[1] = {c->lin_v_dim};
    if (!(w->conv_w = vector(ld, l, "linear_attn.conv1d.weight", 3, conv_shape))) return -1;
    if (!(w->neg_A = vector(ld, l, "linear_attn.A_log", 1, hv_shape))) return -1;
    for (int h = 0; h < Hv; h++) w->neg_A[h] = -expf(w->neg_A[h]);
    if (!(w->dt_bias = vector(ld, l, "linear_attn.dt_bias", 1, hv_shape))) return -1;
    if (!(w->gdn_norm = vector(ld, l, "linear_attn.norm.weight", 1, dv_shape))) return -1;
    return 0;
}

static int load_moe(loader *ld, int l, layer_weights *w) {
    const model_config *c = &ld->m->cfg;
    int H = c->hidden_size, Is = c->shared_inter;
    return matrix(ld, l, "mlp.gate.weight", c->n_experts, H, &w->router) ||
           matrix(ld, l, "mlp.shared_expert.gate_proj.weight", Is, H, &w->sh_gate) ||
           matrix(ld, l, "mlp.shared_expert.up_proj.weight", Is, H, &w->sh_up) ||
           matrix(ld, l, "mlp.shared_expert.down_proj.weight", H, Is, &w->sh_down) ||
           matrix(ld, l, "mlp.shared_expert_gate.weight", 1, H, &w->sh_expert_gate);
}

static int load_weights(loader *ld) {
    model *m = ld->m;
    const model_config *c = &m->cfg;
    int H = c->hidden_size, V = c->vocab_size;
    if (matrix(ld, -1, "embed_tokens.weight", V, H, &m->embed)) return -1;
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    else if (ckpt_matrix(&m->ck, "lm_head.weight", V, H, &m->lm_head, ld->err, ld->errlen))
        return -1;
    if (!(m->final_norm = norm_weight(ld, -1, "norm.weight", H))) return -1;
    for (int l = 0; l < c->n_layers; l++) {
        layer_weights *w = &m->layers[l];
        w->type = c->layer_types[l];
        if (!(w->input_norm = norm_weight(ld, l, "input_layernorm.weight", H))) return -1;
        if (!(w->post_norm = norm_weight(ld, l, "post_attention_layernorm.weight", H))) return -1;
        int rc = w->type == LAYER_FULL_ATTENTION ? load_attention(ld, l, w) : load_delta_net(ld, l, w);
        if (rc || load_moe(ld, l, w)) return -1;
    }
    return 0;
}

size_t model_qmat_bytes(const qmat *m) { return m->data ? qmat_data_bytes(m) + 4 * qmat_group_count(m) : 0; }

void model_layer_matrices(const layer_weights *w, const qmat *ms[LAYER_MATRICES]) {
    const qmat *all[LAYER_MATRICES] = {&w->q_proj, &w->k_proj, &w->v_proj, &w->o_proj, &w->in_qkv,
                                       &w->in_z,   &w->in_b,   &w->in_a,   &w->out_proj, &w->router,
                                       &w->sh_gate, &w->sh_up, &w->sh_down, &w->sh_expert_gate};
    memcpy(ms, all, sizeof all);
}

size_t model_resident_bytes(const model *m) {
    size_t b = model_qmat_bytes(&m->embed);
    if (m->lm_head.data != m->embed.data) b += model_qmat_bytes(&m->lm_head);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const qmat *ms[LAYER_MATRICES];
        model_layer_matrices(&m->layers[l], ms);
        for (int i = 0; i < LAYER_MATRICES; i++) b += model_qmat_bytes(ms[i]);
    }
    return b;
}

/* Bytes of the model's files: the checkpoint's safetensors and, in a packed directory, the expert files. */
static size_t model_disk_bytes(const model *m, const char *dir) {
    size_t b = 0;
    for (int i = 0; i < m->ck.n_files; i++) b += m->ck.files[i].size;
    if (packed_is_dir(dir))
        for (int l = 0; l < m->cfg.n_layers; l++) {
            char path[4096];
            struct stat st;
            packed_expert_path(path, sizeof path, dir, l);
            if (!stat(path, &st)) b += (size_t)st.st_size; /* a missing one: opening the experts says so */
        }
    return b;
}

/* --io auto: mapped if the model fits in the available memory, else O_DIRECT with the cache sized from
 * what is left (memplan.h); m->io_note says which when it is direct. */
static int plan_io(model *m, const char *dir, const model_opts *opts, experts_io_mode *io, size_t *cache_bytes,
                   char *err, size_t errlen) {
    mem_available av;
    size_t disk = model_disk_bytes(m, dir), resident = model_resident_bytes(m);
    if (memplan_available("/proc", &av, err, errlen)) return -1;
    int ctx = opts->plan_ctx > 0 ? opts->plan_ctx : 4096, states = opts->plan_states > 0 ? opts->plan_states : 1;
    size_t state = (size_t)states * state_bytes(&m->cfg, m->top_k, m->prefill_chunk, opts->threads, ctx);
    io_plan p;
    int pf_on = opts->prefetch == MODEL_PREFETCH_ON;
    memplan_choose(disk, resident, state, av.bytes, pf_on, opts->cache_given ? opts->cache_bytes : (size_t)-1,
                   &p);
    *io = p.mode;
    *cache_bytes = p.cache_bytes;
    const double MiB = 1048576.0;
    if (p.mode == EXPERTS_IO_DIRECT) /* a model that fits is mapped silently, as other engines do */
        snprintf(m->io_note, sizeof m->io_note,
                 "--io auto: the model (%.0f MiB) %s the %.0f MiB available (%s): --io direct, expert cache %.0f "
                 "MiB (resident weights %.0f MiB, kept free %.0f MiB: the state for a context of %d, %.0f MiB, and a "
                 "margin)",
                 disk / MiB,
                 pf_on && p.reserve_bytes <= av.bytes && disk <= av.bytes - p.reserve_bytes
                     ? "fits (--prefetch wants direct) in"
                 : disk <= av.bytes ? "with its state and a margin exceeds"
                                    : "exceeds",
                 av.bytes / MiB, av.source, p.cache_bytes / MiB, resident / MiB, p.reserve_bytes / MiB, ctx, state / MiB);
    return 0;
}

model *model_load(const char *dir, const model_opts *opts, char *err, size_t errlen) {
    model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return NULL;
    }
    if (config_load(&m->cfg, dir, err, errlen)) {
        free(m);
        return NULL;
    }
    m->top_k = opts && opts->top_k > 0 ? opts->top_k : m->cfg.top_k;
    m->prefill_chunk = opts && opts->prefill_chunk > 0 ? opts->prefill_chunk : MODEL_PREFILL_CHUNK;
    if (m->top_k > m->cfg.n_experts) {
        snprintf(err, errlen, "%s: --experts-per-token %d exceeds the model's %d experts", dir, m->top_k,
                 m->cfg.n_experts);
        goto bad;
    }
    if (ckpt_open(&m->ck, dir, err, errlen)) goto bad;
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers);
    if (!m->layers) {
        snprintf(err, errlen, "%s: out of memory", dir);
        goto bad;
    }
    loader ld = {.m = m, .err = err, .errlen = errlen};
    if (load_weights(&ld)) goto bad;
    experts_io_mode io = opts ? opts->io : EXPERTS_IO_CACHE;
    size_t cache_bytes = opts ? opts->cache_bytes : 0;
    if (io == EXPERTS_IO_AUTO && plan_io(m, dir, opts, &io, &cache_bytes, err, errlen)) goto bad;
    int pf = opts ? opts->prefetch : MODEL_PREFETCH_OFF;
    if (pf == MODEL_PREFETCH_ON && io != EXPERTS_IO_DIRECT) {
        snprintf(err, errlen, "--prefetch needs --io direct");
        goto bad;
    }
    if (io == EXPERTS_IO_MMAP) {
        m->experts = packed_is_dir(dir) ? experts_open_mapped_packed(dir, &m->cfg, err, errlen)
                                        : experts_open_mapped(&m->ck, &m->cfg, err, errlen);
    } else {
        experts_stream_opts so = {.mode = io, .cache_bytes = cache_bytes,
                                  .uring = !(opts && opts->io_threads_only), .top_k = m->top_k,
                                  .prefetch = pf == MODEL_PREFETCH_ON ? 1 : pf == MODEL_PREFETCH_AUTO ? 2 : 0};
        m->experts = experts_open_stream(dir, &m->ck, &m->cfg, &so, err, errlen);
    }
    if (!m->experts) goto bad;
    if (opts && opts->threads > 1 && !(m->pool = pool_create(opts->threads))) {
        snprintf(err, errlen, "cannot start %d threads", opts->threads);
        goto bad;
    }
    return m;
bad:
    model_free(m);
    return NULL;
}

void model_free(model *m) {
    if (!m) return;
    experts_free(m->experts);
    pool_free(m->pool);
    for (int i = 0; i < m->n_f32_allocs; i++) free(m->f32_allocs[i]);
    free(m->f32_allocs);
    free(m->layers);
    ckpt_close(&m->ck);
    config_free(&m->cfg);
    free(m);
}
