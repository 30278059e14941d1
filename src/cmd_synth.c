/* `flashmoe synth`: a packed model with random weights at a real geometry, written at about disk speed,
 * for benchmarks and memory-cap tests without downloads.
 *
 * Values are drawn so that a forward pass stays in range through every layer: each matrix's values have
 * standard deviation 1/sqrt(cols) (quantized ones: uniform codes with scale and bias chosen for that
 * spread, written directly rather than quantized, hence disk speed), zero-centred norm weights near 0,
 * the delta net's gated norm near 1, decays exp(-exp(A_log) softplus(a + dt_bias)) spread over (0, 1). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "config.h"
#include "packed_writer.h"
#include "quant.h"
#include "util.h"

typedef struct {
    const char *name;
    int hidden, layers, heads, kv_heads, lin_k_heads, lin_v_heads, experts, top_k, inter, shared;
} preset;

static const preset presets[] = {
    {"qwen3.5-397b-a17b", 4096, 60, 32, 2, 16, 64, 512, 10, 1024, 1024},
    {"qwen3.5-122b-a10b", 3072, 48, 32, 2, 16, 64, 256, 8, 1024, 1024},
    {"qwen3.5-35b-a3b", 2048, 40, 16, 2, 16, 32, 256, 8, 512, 512},
};

typedef struct {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r) { /* xorshift64* */
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ull;
}

/* uniform in [-a, a] */
static float rng_sym(rng *r, float a) { return a * ((float)(rng_next(r) >> 40) / (float)(1 << 24) * 2.0f - 1.0f); }

#define CHUNK (1 << 20) /* values generated per write */

/* A random [rows x cols] matrix with std 1/sqrt(cols): bf16 values, or quantized codes + scales/biases. */
static int write_matrix(st_writer *w, rng *r, dtype t, int group, int64_t rows, int64_t cols, void *buf, char *err,
                        size_t errlen) {
    float sd = 1.0f / sqrtf((float)cols);
    uint64_t n = (uint64_t)rows * cols;
    if (t == DTYPE_BF16) {
        uint16_t *b = buf;
        for (uint64_t done = 0; done < n;) {
            size_t k = n - done < CHUNK ? (size_t)(n - done) : CHUNK;
            for (size_t i = 0; i < k; i++) b[i] = f32_to_bf16(rng_sym(r, sd * 1.7320508f));
            if (st_writer_write(w, b, 2 * k, err, errlen)) return -1;
            done += k;
        }
        return 0;
    }
    int bits = dtype_bits(t);
    uint64_t words = n * bits / 32, groups = n / group;
    uint32_t *q = buf;
    for (uint64_t done = 0; done < words;) { /* uniform codes: every bit random */
        size_t k = words - done < CHUNK ? (size_t)(words - done) : CHUNK;
        for (size_t i = 0; i < k; i++) q[i] = (uint32_t)(rng_next(r) >> 32);
        if (st_writer_write(w, q, 4 * k, err, errlen)) return -1;
        done += k;
    }
    /* uniform q in [0, 2^b - 1] has std 2^b/sqrt(12): scale for std sd, bias centres the values */
    float levels = (float)((1 << bits) - 1), scale = sd * sqrtf(12.0f) / (levels + 1.0f);
    uint16_t *g = buf;
    for (int part = 0; part < 2; part++)
        for (uint64_t done = 0; done < groups;) {
            size_t k = groups - done < CHUNK ? (size_t)(groups - done) : CHUNK;
            for (size_t i = 0; i < k; i++) {
                float s = scale * (1.0f + rng_sym(r, 0.1f));
                g[i] = f32_to_bf16(part == 0 ? s : -s * levels / 2.0f);
            }
            if (st_writer_write(w, g, 2 * k, err, errlen)) return -1;
            done += k;
        }
    return 0;
}

typedef enum { V_ZERO_NORM, V_GATED_NORM, V_A_LOG, V_DT_BIAS, V_CONV } vector_kind;

static int write_vector(st_writer *w, rng *r, vector_kind kind, int64_t n, int conv_kernel, float *buf, char *err,
                        size_t errlen) {
    for (int64_t i = 0; i < n; i++) {
        switch (kind) {
        case V_ZERO_NORM: buf[i] = rng_sym(r, 0.1f); break;
        case V_GATED_NORM: buf[i] = 1.0f + rng_sym(r, 0.1f); break;
        case V_A_LOG: buf[i] = logf(1.0f + 7.5f * (rng_sym(r, 1.0f) + 1.0f)); break;
        case V_DT_BIAS: buf[i] = rng_sym(r, 1.0f); break;
        case V_CONV: buf[i] = rng_sym(r, 1.0f / sqrtf((float)conv_kernel)); break;
        }
    }
    return st_writer_write(w, buf, sizeof(float) * (size_t)n, err, errlen);
}

/* One weight of the resident file: a matrix (possibly quantized) or an f32 vector. */
typedef struct {
    char name[200];
    int64_t rows, cols; /* matrix, or rows = n for a vector (cols 0) */
    int ndim;
    int64_t shape[3];
    dtype type;
    vector_kind kind;
} weight_spec;

typedef struct {
    weight_spec *w;
    int n, cap;
} weight_list;

static weight_spec *add(weight_list *l, const char *name) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        weight_spec *nw = realloc(l->w, sizeof *nw * (size_t)l->cap);
        if (!nw) return NULL;
        l->w = nw;
    }
    weight_spec *s = &l->w[l->n++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    return s;
}

static int add_matrix(weight_list *l, const char *name, int64_t rows, int64_t cols, dtype dense, int group) {
    weight_spec *s = add(l, name);
    if (!s) return -1;
    s->rows = rows;
    s->cols = cols;
    s->type = dense != DTYPE_BF16 && cols % group == 0 && rows > 1 ? dense : DTYPE_BF16;
    if (strstr(name, "mlp.gate.weight") && s->type != DTYPE_BF16) s->type = DTYPE_Q8;
    return 0;
}

static int add_vector(weight_list *l, const char *name, int ndim, const int64_t *shape, vector_kind kind) {
    weight_spec *s = add(l, name);
    if (!s) return -1;
    s->ndim = ndim;
    memcpy(s->shape, shape, sizeof(int64_t) * (size_t)ndim);
    s->kind = kind;
    s->rows = 1;
    for (int d = 0; d < ndim; d++) s->rows *= shape[d];
    return 0;
}

static int list_weights(weight_list *l, const model_config *c, dtype dense, int group) {
    char n[200];
    int H = c->hidden_size, rc = 0;
    int64_t hshape[1] = {H};
    rc |= add_matrix(l, "model.embed_tokens.weight", c->vocab_size, H, dense, group);
    rc |= add_matrix(l, "lm_head.weight", c->vocab_size, H, dense, group);
    rc |= add_vector(l, "model.norm.weight", 1, hshape, V_ZERO_NORM);
    for (int i = 0; i < c->n_layers && !rc; i++) {
#define P(fmt) (snprintf(n, sizeof n, "model.layers.%d." fmt, i), n)
        rc |= add_vector(l, P("input_layernorm.weight"), 1, hshape, V_ZERO_NORM);
        rc |= add_vector(l, P("post_attention_layernorm.weight"), 1, hshape, V_ZERO_NORM);
        if (c->layer_types[i] == LAYER_FULL_ATTENTION) {
            int hd = c->head_dim;
            int64_t hdshape[1] = {hd};
            rc |= add_matrix(l, P("self_attn.q_proj.weight"), (int64_t)c->n_heads * hd * 2, H, dense, group);
            rc |= add_matrix(l, P("self_attn.k_proj.weight"), (int64_t)c->n_kv_heads * hd, H, dense, group);
            rc |= add_matrix(l, P("self_attn.v_proj.weight"), (int64_t)c->n_kv_heads * hd, H, dense, group);
            rc |= add_matrix(l, P("self_attn.o_proj.weight"), H, (int64_t)c->n_heads * hd, dense, group);
            rc |= add_vector(l, P("self_attn.q_norm.weight"), 1, hdshape, V_ZERO_NORM);
            rc |= add_vector(l, P("self_attn.k_norm.weight"), 1, hdshape, V_ZERO_NORM);
        } else {
            int64_t kd = (int64_t)c->lin_k_heads * c->lin_k_dim, vd = (int64_t)c->lin_v_heads * c->lin_v_dim;
            int64_t conv[3] = {2 * kd + vd, 1, c->conv_kernel}, hv[1] = {c->lin_v_heads}, dv[1] = {c->lin_v_dim};
            rc |= add_matrix(l, P("linear_attn.in_proj_qkv.weight"), 2 * kd + vd, H, dense, group);
            rc |= add_matrix(l, P("linear_attn.in_proj_z.weight"), vd, H, dense, group);
            rc |= add_matrix(l, P("linear_attn.in_proj_b.weight"), c->lin_v_heads, H, dense, group);
            rc |= add_matrix(l, P("linear_attn.in_proj_a.weight"), c->lin_v_heads, H, dense, group);
            rc |= add_matrix(l, P("linear_attn.out_proj.weight"), H, vd, dense, group);
            rc |= add_vector(l, P("linear_attn.conv1d.weight"), 3, conv, V_CONV);
            rc |= add_vector(l, P("linear_attn.A_log"), 1, hv, V_A_LOG);
            rc |= add_vector(l, P("linear_attn.dt_bias"), 1, hv, V_DT_BIAS);
            rc |= add_vector(l, P("linear_attn.norm.weight"), 1, dv, V_GATED_NORM);
        }
        rc |= add_matrix(l, P("mlp.gate.weight"), c->n_experts, H, dense, group);
        rc |= add_matrix(l, P("mlp.shared_expert.gate_proj.weight"), c->shared_inter, H, dense, group);
        rc |= add_matrix(l, P("mlp.shared_expert.up_proj.weight"), c->shared_inter, H, dense, group);
        rc |= add_matrix(l, P("mlp.shared_expert.down_proj.weight"), H, c->shared_inter, dense, group);
        rc |= add_matrix(l, P("mlp.shared_expert_gate.weight"), 1, H, dense, group);
#undef P
    }
    return rc;
}

static int write_resident(const char *dir, const model_config *c, dtype dense, int group, rng *r, char *err,
                          size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, PACKED_RESIDENT);
    weight_list l = {0};
    st_writer w;
    void *buf = malloc(4 * (size_t)CHUNK);
    int rc = -1;
    if (!buf || list_weights(&l, c, dense, group)) {
        snprintf(err, errlen, "%s: out of memory", path);
        free(buf);
        free(l.w);
        return -1;
    }
    if (st_writer_open(&w, path, err, errlen)) goto out;
    for (int i = 0; i < l.n; i++) {
        weight_spec *s = &l.w[i];
        if (s->cols == 0) {
            if (st_writer_add(&w, s->name, ST_F32, s->ndim, s->shape, err, errlen) < 0) goto fail;
        } else if (s->type == DTYPE_BF16) {
            int64_t shape[2] = {s->rows, s->cols};
            if (st_writer_add(&w, s->name, ST_BF16, 2, shape, err, errlen) < 0) goto fail;
        } else {
            char aux[220];
            size_t base = strlen(s->name) - strlen(".weight");
            int64_t wshape[2] = {s->rows, s->cols * dtype_bits(s->type) / 32}, gshape[2] = {s->rows, s->cols / group};
            if (st_writer_add(&w, s->name, ST_U32, 2, wshape, err, errlen) < 0) goto fail;
            snprintf(aux, sizeof aux, "%.*s.scales", (int)base, s->name);
            if (st_writer_add(&w, aux, ST_BF16, 2, gshape, err, errlen) < 0) goto fail;
            snprintf(aux, sizeof aux, "%.*s.biases", (int)base, s->name);
            if (st_writer_add(&w, aux, ST_BF16, 2, gshape, err, errlen) < 0) goto fail;
        }
    }
    if (st_writer_begin_data(&w, "flashmoe-resident", err, errlen)) goto fail;
    for (int i = 0; i < l.n; i++) {
        weight_spec *s = &l.w[i];
        int bad = s->cols == 0 ? write_vector(&w, r, s->kind, s->rows, c->conv_kernel, buf, err, errlen)
                               : write_matrix(&w, r, s->type, group, s->rows, s->cols, buf, err, errlen);
        if (bad) goto fail;
    }
    rc = st_writer_close(&w, err, errlen);
    goto out;
fail:
    st_writer_abort(&w);
out:
    free(buf);
    free(l.w);
    return rc;
}

/* A random expert record: each part as write_matrix draws it, straight into the record. */
static void fill_record(unsigned char *rec, const packed_layout *lo, rng *r) {
    const packed_part *parts[3] = {&lo->gate, &lo->up, &lo->down};
    int rows[3] = {lo->inter, lo->inter, lo->hidden}, cols[3] = {lo->hidden, lo->hidden, lo->inter};
    for (int p = 0; p < 3; p++) {
        float sd = 1.0f / sqrtf((float)cols[p]);
        size_t n = (size_t)rows[p] * cols[p];
        if (lo->type == DTYPE_BF16) {
            uint16_t *b = (uint16_t *)(rec + parts[p]->data);
            for (size_t i = 0; i < n; i++) b[i] = f32_to_bf16(rng_sym(r, sd * 1.7320508f));
            continue;
        }
        int bits = dtype_bits(lo->type);
        uint32_t *q = (uint32_t *)(rec + parts[p]->data);
        for (size_t i = 0; i < n * bits / 32; i++) q[i] = (uint32_t)(rng_next(r) >> 32);
        float levels = (float)((1 << bits) - 1), scale = sd * sqrtf(12.0f) / (levels + 1.0f);
        uint16_t *sc = (uint16_t *)(rec + parts[p]->scales), *bi = (uint16_t *)(rec + parts[p]->biases);
        for (size_t g = 0; g < n / lo->group; g++) {
            float s = scale * (1.0f + rng_sym(r, 0.1f));
            sc[g] = f32_to_bf16(s);
            bi[g] = f32_to_bf16(-s * levels / 2.0f);
        }
    }
}

static int write_config(const char *dir, const preset *p, int layers, cJSON *overrides, char *err, size_t errlen) {
    cJSON *c = cJSON_CreateObject(), *rope = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "model_type", "qwen3_5_moe_text");
    cJSON_AddStringToObject(c, "flashmoe_synth", p->name);
    cJSON_AddNumberToObject(c, "vocab_size", 248320);
    cJSON_AddNumberToObject(c, "hidden_size", p->hidden);
    cJSON_AddNumberToObject(c, "num_hidden_layers", layers);
    cJSON_AddNumberToObject(c, "num_attention_heads", p->heads);
    cJSON_AddNumberToObject(c, "num_key_value_heads", p->kv_heads);
    cJSON_AddNumberToObject(c, "head_dim", 256);
    cJSON_AddNumberToObject(c, "linear_num_key_heads", p->lin_k_heads);
    cJSON_AddNumberToObject(c, "linear_num_value_heads", p->lin_v_heads);
    cJSON_AddNumberToObject(c, "linear_key_head_dim", 128);
    cJSON_AddNumberToObject(c, "linear_value_head_dim", 128);
    cJSON_AddNumberToObject(c, "linear_conv_kernel_dim", 4);
    cJSON_AddNumberToObject(c, "num_experts", p->experts);
    cJSON_AddNumberToObject(c, "num_experts_per_tok", p->top_k);
    cJSON_AddNumberToObject(c, "moe_intermediate_size", p->inter);
    cJSON_AddNumberToObject(c, "shared_expert_intermediate_size", p->shared);
    cJSON_AddNumberToObject(c, "rms_norm_eps", 1e-6);
    cJSON_AddNumberToObject(c, "max_position_embeddings", 262144);
    cJSON_AddStringToObject(rope, "rope_type", "default");
    cJSON_AddNumberToObject(rope, "rope_theta", 1e7);
    cJSON_AddNumberToObject(rope, "partial_rotary_factor", 0.25);
    cJSON_AddItemToObject(c, "rope_parameters", rope);
    for (cJSON *o = overrides ? overrides->child : NULL; o; o = o->next) {
        cJSON_DeleteItemFromObjectCaseSensitive(c, o->string);
        cJSON_AddItemToObject(c, o->string, cJSON_Duplicate(o, 1));
    }
    char path[4096], *text = cJSON_Print(c);
    cJSON_Delete(c);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    int ok = text && f && fputs(text, f) >= 0;
    if (f && fclose(f)) ok = 0;
    free(text);
    if (!ok) snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    return ok ? 0 : -1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: flashmoe synth --like NAME -o DIR [--layers N] [--experts q4] [--dense bf16] [--group 64]\n"
            "                      [--set FIELD=VALUE ...] [--seed S] [--force]\n"
            "Writes a packed model with random weights at a real geometry (for benchmarks and memory caps).\n"
            "NAME: qwen3.5-35b-a3b, qwen3.5-122b-a10b, qwen3.5-397b-a17b. --set overrides an integer config.json\n"
            "field (e.g. --set num_experts=64). --experts q8|q4|q3|q2|bf16, --dense bf16|q8|q4.\n");
}

static int parse_dtype(const char *v, dtype *t) {
    const char *names[] = {"bf16", "q8", "q4", "q3", "q2"};
    dtype types[] = {DTYPE_BF16, DTYPE_Q8, DTYPE_Q4, DTYPE_Q3, DTYPE_Q2};
    for (int i = 0; i < 5; i++)
        if (!strcmp(v, names[i])) {
            *t = types[i];
            return 0;
        }
    return -1;
}

int cmd_synth(int argc, char **argv) {
    const char *like = NULL, *out = NULL, *v;
    int layers = 0, group = 64, force = 0, seed = 1;
    dtype et = DTYPE_Q4, dense = DTYPE_BF16;
    cJSON *overrides = cJSON_CreateObject();
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            rc = 0;
            goto done;
        } else if (!strcmp(a, "--like")) {
            if (!(like = cli_value("synth", argc, argv, &i))) goto done;
        } else if (!strcmp(a, "-o")) {
            if (!(out = cli_value("synth", argc, argv, &i))) goto done;
        } else if (!strcmp(a, "--layers")) {
            if (!(v = cli_value("synth", argc, argv, &i)) || cli_int("synth", a, v, 1, 1000, &layers)) goto done;
        } else if (!strcmp(a, "--group")) {
            if (!(v = cli_value("synth", argc, argv, &i)) || cli_int("synth", a, v, 32, 128, &group)) goto done;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = cli_value("synth", argc, argv, &i)) || cli_int("synth", a, v, 0, 1 << 30, &seed)) goto done;
        } else if (!strcmp(a, "--experts") || !strcmp(a, "--dense")) {
            if (!(v = cli_value("synth", argc, argv, &i))) goto done;
            if (parse_dtype(v, a[2] == 'e' ? &et : &dense) || (a[2] == 'd' && dense >= DTYPE_Q3)) {
                fprintf(stderr, "flashmoe synth: bad %s '%s'\n", a, v);
                goto done;
            }
        } else if (!strcmp(a, "--set")) {
            if (!(v = cli_value("synth", argc, argv, &i))) goto done;
            const char *eq = strchr(v, '=');
            int val;
            char key[128];
            if (!eq || eq == v || (size_t)(eq - v) >= sizeof key) {
                fprintf(stderr, "flashmoe synth: --set takes FIELD=VALUE, got '%s'\n", v);
                goto done;
            }
            snprintf(key, sizeof key, "%.*s", (int)(eq - v), v);
            if (cli_int("synth", "--set", eq + 1, 0, 1 << 30, &val)) goto done;
            cJSON_AddNumberToObject(overrides, key, val);
        } else if (!strcmp(a, "--force")) {
            force = 1;
        } else {
            fprintf(stderr, "flashmoe synth: unknown option '%s' (see flashmoe synth --help)\n", a);
            goto done;
        }
    }
    const preset *p = NULL;
    for (size_t i = 0; like && i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(like, presets[i].name)) p = &presets[i];
    if (!p || !out) {
        fprintf(stderr, "flashmoe synth: needs --like (qwen3.5-35b-a3b, qwen3.5-122b-a10b, qwen3.5-397b-a17b) and -o\n");
        goto done;
    }
    struct stat sb;
    char err[8192];
    rc = 1;
    if (stat(out, &sb) == 0 && !force) {
        fprintf(stderr, "flashmoe synth: %s: already exists (use --force to overwrite)\n", out);
        goto done;
    }
    if (stat(out, &sb) != 0 && mkdir(out, 0755)) {
        fprintf(stderr, "flashmoe synth: %s: cannot create: %s\n", out, strerror(errno));
        goto done;
    }
    char manifest[4096];
    snprintf(manifest, sizeof manifest, "%s/%s", out, PACKED_MANIFEST);
    unlink(manifest);
    model_config c;
    if (write_config(out, p, layers ? layers : p->layers, overrides, err, sizeof err) ||
        config_load(&c, out, err, sizeof err)) {
        fprintf(stderr, "flashmoe synth: %s\n", err);
        goto done;
    }
    packed_layout lo;
    if (packed_layout_make(&lo, et, group, c.hidden_size, c.expert_inter)) {
        fprintf(stderr, "flashmoe synth: experts %dx%d do not divide into groups of %d\n", c.hidden_size,
                c.expert_inter, group);
        config_free(&c);
        goto done;
    }
    rng r = {.s = 0x9e3779b97f4a7c15ull ^ (uint64_t)seed};
    double t0 = util_now_seconds(), bytes = 0;
    if (write_resident(out, &c, dense, group, &r, err, sizeof err)) goto fail;
    for (int l = 0; l < c.n_layers; l++) {
        expert_file_writer w;
        if (expert_file_open(&w, out, l, c.n_experts, &lo, err, sizeof err)) goto fail;
        for (int e = 0; e < c.n_experts; e++) {
            fill_record(expert_file_record(&w), &lo, &r);
            if (expert_file_append(&w, err, sizeof err)) {
                expert_file_close(&w, err, 0);
                goto fail;
            }
        }
        if (expert_file_close(&w, err, sizeof err)) goto fail;
        bytes += (double)c.n_experts * lo.record_bytes;
        if (isatty(2))
            fprintf(stderr, "\rsynth: layer %d/%d, %.2f GB of experts, %.0f MB/s   ", l + 1, c.n_layers, bytes / 1e9,
                    bytes / (util_now_seconds() - t0) / 1e6);
    }
    if (packed_write_manifest(out, &lo, c.n_layers, c.n_experts, packed_dtype_name(dense), p->name, err, sizeof err))
        goto fail;
    fprintf(stderr, "%ssynth: %s: %d layers, %.2f GB of experts (%s), %.1f s\n", isatty(2) ? "\n" : "", out,
            c.n_layers, bytes / 1e9, packed_dtype_name(et), util_now_seconds() - t0);
    rc = 0;
    config_free(&c);
    goto done;
fail:
    fprintf(stderr, "flashmoe synth: %s\n", err);
    config_free(&c);
done:
    cJSON_Delete(overrides);
    return rc;
}
