/* flashmoe convert from MLX checkpoints (mlx-community Qwen3.5-MoE, written by mlx-lm or mlx-vlm).
 *
 * The layout, established from public code (repositories as stored by the search index; no
 * mlx-community checkpoint could be downloaded here, so nothing below was checked against one):
 *
 * Names. mlx-lm's qwen3_5_moe Model.sanitize (ml-explore/mlx-lm mlx_lm/models/qwen3_5_moe.py) renames
 *   "model.language_model.X" to "language_model.model.X" and prefixes every other text tensor with
 *   "language_model." (lm_head.weight becomes language_model.lm_head.weight); it drops vision_tower.* and
 *   model.visual.*, and keeps MTP heads as language_model.mtp.*. mlx-vlm (Blaizzy/mlx-vlm
 *   mlx_vlm/models/qwen3_5_moe/qwen3_5_moe.py) gives the same language_model.model.* and
 *   language_model.lm_head names, plus vision_tower.*. save_model (mlx_lm/utils.py) writes
 *   tree_flatten(model.parameters()): module path + ".weight" / ".scales" / ".biases".
 * Experts. _normalize_experts (qwen3_5_moe.py) stacks per-expert or fused HF experts into
 *   mlp.switch_mlp.{gate,up,down}_proj.weight [E, out, in] (a fused gate_up_proj is split in halves,
 *   gate first). SwitchLinear.to_quantized (mlx_lm/models/switch_layers.py) makes weight
 *   [E, out, in * bits / 32] uint32 and scales, biases [E, out, in / group].
 * Quantized layers (ml-explore/mlx python/mlx/nn/layers/quantized.py, mode "affine"): X.weight uint32
 *   [out, in * bits / 32], X.scales and X.biases [out, in / group] in the model's dtype (bf16 for
 *   Qwen3.5); w = scale * q + bias. nn.Embedding is quantized too (embed_tokens), and lm_head.
 * Packing (ml-explore/mlx mlx/backend/cpu/quantized.cpp, extract_bits): 2, 4 and 8 bits hold 32 / bits
 *   values per uint32, LSB first; 3 and 5 bits hold 8 values in 3 and 5 bytes, 6 bits 4 values in 3
 *   bytes, each LSB first. All of them are one contiguous little-endian bit stream: value i occupies
 *   bits [i * b, i * b + b), which is how mlx_unpack reads them.
 * config.json (mlx_lm/utils.py quantize_model, load_model): "quantization" (copied to
 *   "quantization_config") = {"group_size": G, "bits": B, "mode": "affine", "<module path>": {...}, ...}.
 *   A per-module entry is written when the model's quant_predicate returns a dict: for Qwen3.5
 *   (mlx_lm/models/qwen3_5.py) "....mlp.gate" and "....mlp.shared_expert_gate" get
 *   {"group_size": 64, "bits": 8}; mixed recipes add entries with other bits (e.g. 6). Loading passes
 *   the entry to to_quantized(**entry), so a key it lacks takes the mode's default (affine: group 64,
 *   bits 4; _defaults_for_mode in quantized.py), not the global value; an entry false means "not
 *   quantized". A module is quantized iff X.scales exists; matrices whose input size does not divide
 *   into groups stay float. Modes mxfp4 / nvfp4 / mxfp8 (uint8 scales, no biases) are refused here.
 * Norms. TextModel.sanitize (mlx_lm/models/qwen3_5.py) adds 1.0, in the model's dtype, to every 1-D
 *   weight ending in .input_layernorm.weight, .post_attention_layernorm.weight, model.norm.weight,
 *   .q_norm.weight or .k_norm.weight (MLX's RMSNorm computes x * w, HF's Qwen3.5 x * (1 + w)), and does
 *   it when the conv1d weights are still in HF's layout (shape[-1] != 1); mlx-vlm's sanitize adds the
 *   same +1. The delta net's gated norm linear_attn.norm.weight is plain in both and left alone.
 *   (mlx-lm <= 0.31.3 also shifted when mtp.* tensors were present, which double-shifted converted
 *   checkpoints that kept their MTP head when loaded: a loader bug, the files hold one +1.)
 * conv1d. The same pass moves linear_attn.conv1d.weight from HF's [C, 1, K] to MLX's [C, K, 1]
 *   (moveaxis(2, 1)). Row-major, both are the same bytes: only the shape changes back.
 * A_log stays float32 (cast_predicate), dt_bias in the model's dtype; both keep HF's names.
 *
 * So: conv1d weights of shape [C, K, 1] mark a sanitized checkpoint whose listed norms carry +1, undone
 * here exactly (v - 1 in f32 for a bf16 v); [C, 1, K] means HF semantics, nothing to undo; anything else,
 * or both at once, is an error rather than a guess. */
#include "convert_mlx.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels.h"
#include "packed_writer.h"
#include "quant.h"
#include "threadpool.h"
#include "util.h"

#define MLX_CHUNK_ELEMS ((size_t)1 << 22) /* values of a dense tensor converted at a time */

int mlx_bits_supported(int bits) {
    return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
}

void mlx_unpack(const uint32_t *words, size_t first, size_t n, int bits, uint8_t *q) {
    uint32_t mask = (1u << bits) - 1;
    for (size_t i = 0; i < n; i++) {
        size_t bit = (first + i) * (size_t)bits;
        uint64_t chunk = words[bit / 32];
        if (bit % 32 + (size_t)bits > 32) chunk |= (uint64_t)words[bit / 32 + 1] << 32;
        q[i] = (uint8_t)((chunk >> (bit % 32)) & mask);
    }
}

void mlx_pack(uint32_t *words, size_t first, size_t n, int bits, const uint8_t *q) {
    for (size_t i = 0; i < n; i++) {
        size_t bit = (first + i) * (size_t)bits;
        words[bit / 32] |= (uint32_t)q[i] << (bit % 32);
        if (bit % 32 + (size_t)bits > 32) words[bit / 32 + 1] |= (uint32_t)q[i] >> (32 - bit % 32);
    }
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static void shape_str(char *out, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(out, n, "[");
    for (int d = 0; d < ndim && used < n; d++)
        used += (size_t)snprintf(out + used, n - used, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (used < n) snprintf(out + used, n - used, "]");
}

/* ---- config.json's quantization ------------------------------------------------------------------- */

typedef struct {
    cJSON *root;
    const cJSON *q; /* "quantization" (or text_config's, or an MLX "quantization_config"); NULL if none */
    char path[4096];
} mlx_quant;

static const cJSON *quant_object(const cJSON *root) {
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization");
    if (cJSON_IsObject(q)) return q;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    q = cJSON_GetObjectItemCaseSensitive(t, "quantization");
    if (cJSON_IsObject(q)) return q;
    /* mlx-lm writes the same object as quantization_config; other tools' (AWQ, GPTQ, FP8) carry a
     * quant_method and are not MLX's */
    q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (cJSON_IsObject(q) && !cJSON_GetObjectItemCaseSensitive(q, "quant_method")) return q;
    return NULL;
}

static int quant_load(mlx_quant *mq, const char *dir, char *err, size_t errlen) {
    memset(mq, 0, sizeof *mq);
    if (util_path_join(mq->path, sizeof mq->path, dir, "config.json")) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    char *text = util_read_file(mq->path, NULL, err, errlen);
    if (!text) return -1;
    mq->root = cJSON_Parse(text);
    free(text);
    if (!mq->root) {
        snprintf(err, errlen, "%s: not valid JSON", mq->path);
        return -1;
    }
    mq->q = quant_object(mq->root);
    return 0;
}

static void quant_free(mlx_quant *mq) { cJSON_Delete(mq->root); }

static int json_int(const cJSON *o, const char *key, int dflt, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) {
        *out = dflt;
        return dflt < 0 ? -1 : 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble) return -1;
    *out = (int)v->valuedouble;
    return 0;
}

/* Bits and group of MODULE's weight per config.json: a per-module entry (an object, whose missing keys
 * take MLX's affine defaults, 64 and 4; false: not quantized, *bits = 0; true: the global pair) or the
 * global pair. -1 with a message naming the tensor when the config does not say or says something
 * this reader does not take. */
static int quant_params(const mlx_quant *mq, const char *module, const char *where, int *bits, int *group,
                        char *err, size_t errlen) {
    if (!mq->q) {
        snprintf(err, errlen, "%s: tensor '%s.weight' is quantized (U32) but %s has no 'quantization'", where,
                 module, mq->path);
        return -1;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(mq->q, module), *src = mq->q;
    int override = 0;
    if (cJSON_IsFalse(e)) {
        *bits = *group = 0;
        return 0;
    } else if (cJSON_IsObject(e)) {
        src = e;
        override = 1;
    } else if (e && !cJSON_IsTrue(e)) {
        snprintf(err, errlen, "%s: quantization entry for '%s' is neither an object nor a boolean", mq->path, module);
        return -1;
    }
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(src, "mode");
    if (mode && !(cJSON_IsString(mode) && !strcmp(mode->valuestring, "affine"))) {
        snprintf(err, errlen, "%s: tensor '%s.weight': %s gives quantization mode '%s'; only 'affine' is supported",
                 where, module, mq->path, cJSON_IsString(mode) ? mode->valuestring : "?");
        return -1;
    }
    if (json_int(src, "bits", override ? 4 : -1, bits) || json_int(src, "group_size", override ? 64 : -1, group)) {
        snprintf(err, errlen, "%s: tensor '%s.weight': %s lacks an integer 'bits' and 'group_size' for it", where,
                 module, mq->path);
        return -1;
    }
    if (!mlx_bits_supported(*bits)) {
        snprintf(err, errlen, "%s: tensor '%s.weight': %s gives %d bits; MLX affine takes 2, 3, 4, 5, 6 or 8", where,
                 module, mq->path, *bits);
        return -1;
    }
    if (*group != 32 && *group != 64 && *group != 128) {
        snprintf(err, errlen, "%s: tensor '%s.weight': %s gives group size %d; supported are 32, 64 and 128", where,
                 module, mq->path, *group);
        return -1;
    }
    return 0;
}

/* ---- one quantized (or float) matrix ------------------------------------------------------------- */

/* A [rows x cols] matrix of the source: MLX-quantized (bits > 0) or float (f). */
typedef struct {
    int rows, cols, bits, group;
    const uint32_t *words;        /* rows * cols * bits / 32 */
    const void *scales, *biases;  /* rows * cols / group values of sdtype */
    st_dtype sdtype;
    qmat f;                       /* bits == 0 */
} mlx_mat;

static float scalar_f32(const void *p, st_dtype t, size_t i) {
    switch (t) {
    case ST_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    case ST_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

/* Rows [r0, r0 + n) as f32; a quantized value is (float)q * scale + bias, as the kernels read it. */
static void mat_rows_f32(const mlx_mat *m, int r0, int n, float *out) {
    if (!m->bits) {
        for (int r = 0; r < n; r++) kernel_row_f32(out + (size_t)r * m->cols, &m->f, r0 + r);
        return;
    }
    uint8_t q[128];
    size_t g0 = (size_t)r0 * m->cols / m->group, ng = (size_t)n * m->cols / m->group;
    for (size_t g = 0; g < ng; g++) {
        mlx_unpack(m->words, (g0 + g) * m->group, (size_t)m->group, m->bits, q);
        float s = scalar_f32(m->scales, m->sdtype, g0 + g), b = scalar_f32(m->biases, m->sdtype, g0 + g);
        for (int i = 0; i < m->group; i++) out[g * m->group + i] = (float)q[i] * s + b;
    }
}

typedef enum { MLX_REQUANT, MLX_COPY, MLX_WIDEN } mlx_transfer;

/* How m becomes type t with the given group: the same codes, scales and biases when the group is the
 * same and t has at least the source's bits (bf16 scales, as the packed format stores them). */
static mlx_transfer mat_transfer(const mlx_mat *m, dtype t, int group) {
    if (!m->bits || !dtype_is_quant(t) || m->group != group || m->sdtype != ST_BF16) return MLX_REQUANT;
    int tb = dtype_bits(t);
    return tb == m->bits ? MLX_COPY : tb > m->bits ? MLX_WIDEN : MLX_REQUANT;
}

/* Rows [r0, r0 + n) of m as type t (quantized) into words / scales / biases, which point at the place
 * of row r0. scratch holds n * cols floats. */
static void mat_emit_quant(const mlx_mat *m, int r0, int n, dtype t, int group, uint32_t *words, uint16_t *scales,
                           uint16_t *biases, float *scratch, pool *p) {
    size_t vals = (size_t)n * m->cols, first = (size_t)r0 * m->cols;
    switch (mat_transfer(m, t, group)) {
    case MLX_COPY:
        memcpy(words, m->words + first * m->bits / 32, vals * m->bits / 8);
        break;
    case MLX_WIDEN: {
        uint8_t q[128];
        memset(words, 0, quant_words(t, vals) * 4);
        for (size_t i = 0; i < vals; i += 128) {
            size_t k = vals - i < 128 ? vals - i : 128;
            mlx_unpack(m->words, first + i, k, m->bits, q);
            mlx_pack(words, i, k, dtype_bits(t), q);
        }
        break;
    }
    case MLX_REQUANT:
        mat_rows_f32(m, r0, n, scratch);
        quant_rows_mt(p, t, QUANT_MSE, scratch, n, m->cols, group, words, scales, biases);
        return;
    }
    size_t g0 = first / m->group, ng = vals / m->group;
    memcpy(scales, (const uint16_t *)m->scales + g0, 2 * ng);
    memcpy(biases, (const uint16_t *)m->biases + g0, 2 * ng);
}

/* A quantized source tensor: X.weight (U32) with X.scales and X.biases, [rows, ...] or stacked experts
 * [n, rows, ...]. */
typedef struct {
    const st_tensor *w, *s, *b;
    int64_t n; /* matrices stacked (1 for a plain matrix) */
    int rows, cols, bits, group;
} mlx_qtensor;

static mlx_mat qtensor_mat(const mlx_qtensor *q, int64_t i) {
    size_t per = (size_t)q->rows * q->cols, es = st_dtype_size(q->s->dtype);
    return (mlx_mat){.rows = q->rows, .cols = q->cols, .bits = q->bits, .group = q->group,
                     .words = (const uint32_t *)q->w->data + (size_t)i * per * q->bits / 32,
                     .scales = (const char *)q->s->data + (size_t)i * per / q->group * es,
                     .biases = (const char *)q->b->data + (size_t)i * per / q->group * es, .sdtype = q->s->dtype};
}

/* Opens quantized tensor NAME (a U32 X.weight in file f) with `lead` stacking dimensions (0 or 1):
 * bits and group from config.json, every shape checked against them. */
static int qtensor_open(const checkpoint *ck, const mlx_quant *mq, const char *name, const st_tensor *w,
                        const st_file *f, int lead, mlx_qtensor *out, char *err, size_t errlen) {
    char module[512], sname[520], bname[520], got[128], want[128];
    size_t len = strlen(name);
    if (!ends_with(name, ".weight") || len - 7 >= sizeof module) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype U32 but is not a quantized '.weight'", f->path, name);
        return -1;
    }
    snprintf(module, sizeof module, "%.*s", (int)(len - 7), name);
    snprintf(sname, sizeof sname, "%s.scales", module);
    snprintf(bname, sizeof bname, "%s.biases", module);
    memset(out, 0, sizeof *out);
    out->w = w;
    if (quant_params(mq, module, f->path, &out->bits, &out->group, err, errlen)) return -1;
    if (!out->bits) {
        snprintf(err, errlen, "%s: tensor '%s' is quantized (U32) but %s marks '%s' as not quantized", f->path, name,
                 mq->path, module);
        return -1;
    }
    if (w->ndim != 2 + lead) {
        shape_str(got, sizeof got, w->ndim, w->shape);
        snprintf(err, errlen, "%s: quantized tensor '%s' has shape %s, expected %d dimensions", f->path, name, got,
                 2 + lead);
        return -1;
    }
    const st_file *sf = NULL, *bf = NULL;
    out->s = ckpt_find(ck, sname, &sf);
    out->b = ckpt_find(ck, bname, &bf);
    if (!out->s || !out->b) {
        snprintf(err, errlen, "%s: quantized tensor '%s' has no '%s'", f->path, name, out->s ? bname : sname);
        return -1;
    }
    const st_tensor *pair[2] = {out->s, out->b};
    const st_file *pf[2] = {sf, bf};
    for (int k = 0; k < 2; k++)
        if (ckpt_kernel_dtype(pair[k]->dtype) < 0) {
            snprintf(err, errlen, "%s: tensor '%s' has dtype %s, expected BF16, F16 or F32", pf[k]->path,
                     pair[k]->name, st_dtype_name(pair[k]->dtype));
            return -1;
        }
    int64_t words = w->shape[lead + 1];
    int64_t cols = words * 32 % out->bits ? -1 : words * 32 / out->bits;
    if (cols <= 0 || cols % out->group) {
        shape_str(got, sizeof got, w->ndim, w->shape);
        snprintf(err, errlen, "%s: quantized tensor '%s' has shape %s: %lld words per row do not hold whole groups "
                 "of %d at %d bits (%s)", f->path, name, got, (long long)words, out->group, out->bits, mq->path);
        return -1;
    }
    int64_t expect[3];
    for (int d = 0; d <= lead; d++) expect[d] = w->shape[d];
    expect[lead + 1] = cols / out->group;
    for (int k = 0; k < 2; k++) {
        int same = pair[k]->ndim == 2 + lead && pair[k]->dtype == out->s->dtype;
        for (int d = 0; same && d < 2 + lead; d++) same = pair[k]->shape[d] == expect[d];
        if (!same) {
            shape_str(got, sizeof got, pair[k]->ndim, pair[k]->shape);
            shape_str(want, sizeof want, 2 + lead, expect);
            snprintf(err, errlen, "%s: tensor '%s' has shape %s (%s), expected %s %s: '%s' holds %lld columns at %d "
                     "bits in groups of %d (%s)", pf[k]->path, pair[k]->name, got, st_dtype_name(pair[k]->dtype),
                     want, st_dtype_name(out->s->dtype), name, (long long)cols, out->bits, out->group, mq->path);
            return -1;
        }
    }
    if (cols > 1 << 30 || w->shape[lead] > 1 << 30) {
        snprintf(err, errlen, "%s: quantized tensor '%s' is too large", f->path, name);
        return -1;
    }
    out->n = lead ? w->shape[0] : 1;
    out->rows = (int)w->shape[lead];
    out->cols = (int)cols;
    return 0;
}

/* ---- norms and conv kernels ---------------------------------------------------------------------- */

static int is_conv(const char *rest) { return ends_with(rest, "linear_attn.conv1d.weight"); }

/* Whether the checkpoint's norms carry mlx-lm's +1, told by its conv1d layout (see the top). */
static int norms_shifted(const checkpoint *ck, int *shifted, char *err, size_t errlen) {
    const char *mlx = NULL, *hf = NULL;
    const st_file *mlx_f = NULL;
    size_t pl = strlen(ck->prefix);
    for (int f = 0; f < ck->n_files; f++)
        for (int i = 0; i < ck->files[f].n_tensors; i++) {
            const st_tensor *t = &ck->files[f].tensors[i];
            if (strncmp(t->name, ck->prefix, pl) || !is_conv(t->name + pl)) continue;
            if (t->ndim == 3 && t->shape[1] > 1 && t->shape[2] == 1) {
                mlx = t->name;
                mlx_f = &ck->files[f];
            } else if (t->ndim == 3 && t->shape[1] == 1 && t->shape[2] > 1) {
                hf = t->name;
            } else {
                char got[128];
                shape_str(got, sizeof got, t->ndim, t->shape);
                snprintf(err, errlen, "%s: tensor '%s' has shape %s, expected [C, K, 1] (MLX) or [C, 1, K] (HF)",
                         ck->files[f].path, t->name, got);
                return -1;
            }
        }
    if (mlx && hf) {
        snprintf(err, errlen, "%s: conv1d weights in both MLX [C, K, 1] ('%s') and HF [C, 1, K] ('%s') layouts: "
                 "cannot tell whether the norms carry mlx-lm's +1", mlx_f->path, mlx, hf);
        return -1;
    }
    if (!mlx && !hf) {
        snprintf(err, errlen, "%s: no %slayers.*.linear_attn.conv1d.weight: cannot tell whether the norms carry "
                 "mlx-lm's +1", ck->dir, ck->prefix);
        return -1;
    }
    *shifted = mlx != NULL;
    return 0;
}

/* The norms mlx-lm stores as 1 + w (rest: the name after the text model's prefix). */
static int is_shifted_norm(const char *rest) {
    return ends_with(rest, ".input_layernorm.weight") || ends_with(rest, ".post_attention_layernorm.weight") ||
           ends_with(rest, ".q_norm.weight") || ends_with(rest, ".k_norm.weight") || !strcmp(rest, "norm.weight");
}

/* ---- resident tensors ---------------------------------------------------------------------------- */

typedef struct {
    const st_tensor *t;
    const st_file *f;
    mlx_qtensor q;   /* q.w: a quantized source */
    dtype store;
    int minus_one;   /* a norm stored as 1 + w */
    int kept_bf16;   /* columns do not divide into groups: said once everything is checked */
    int ndim;
    int64_t shape[ST_MAX_DIMS]; /* as written */
    char out_name[300];
} res_plan;

/* The packed name of source tensor NAME: "model." + its path in the text model, or "lm_head.*"; 0 for
 * tensors that are not resident weights of the text model (experts, vision tower, MTP head). */
static int resident_name(const checkpoint *ck, const char *name, char *out, size_t n) {
    static const char *heads[] = {"language_model.lm_head.", "lm_head."};
    for (int i = 0; i < 2; i++)
        if (!strncmp(name, heads[i], strlen(heads[i])))
            return snprintf(out, n, "lm_head.%s", name + strlen(heads[i])) < (int)n ? 1 : -1;
    size_t pl = strlen(ck->prefix);
    if (strncmp(name, ck->prefix, pl)) return 0;
    const char *rest = name + pl;
    if (!strncmp(rest, "visual.", 7) || strstr(rest, ".mlp.switch_mlp.") || strstr(rest, ".mlp.experts.")) return 0;
    return snprintf(out, n, "model.%s", rest) < (int)n ? 1 : -1;
}

/* Target of a quantized source matrix: as convert_plan_dtype, except that one-row matrices (the shared
 * expert gate) and routers keep at least 8 bits, as mlx-lm quantizes them, when the dense type is
 * quantized. */
static dtype plan_quantized(const char *name, int rows, int cols, const convert_opts *o, int *kept_bf16) {
    if (o->dense == DTYPE_BF16) return DTYPE_BF16;
    int64_t shape[2] = {rows < 2 ? 2 : rows, cols};
    dtype t = convert_plan_dtype(2, shape, name, o->dense, o->group, kept_bf16);
    if (t != DTYPE_BF16 && ends_with(name, "mlp.shared_expert_gate.weight")) t = DTYPE_Q8;
    return t;
}

static int plan_tensor(const checkpoint *ck, const mlx_quant *mq, const convert_opts *o, int shifted,
                       const st_file *f, const st_tensor *t, res_plan *p, int *skip, char *err, size_t errlen) {
    *skip = 0;
    memset(p, 0, sizeof *p);
    int r = resident_name(ck, t->name, p->out_name, sizeof p->out_name);
    if (r < 0) {
        snprintf(err, errlen, "%s: tensor name '%s' is too long", f->path, t->name);
        return -1;
    }
    if (r == 0) {
        *skip = 1;
        return 0;
    }
    size_t len = strlen(t->name);
    if (ends_with(t->name, ".scales") || ends_with(t->name, ".biases")) {
        char wname[520];
        snprintf(wname, sizeof wname, "%.*s.weight", (int)(len - 7), t->name);
        const st_tensor *w = ckpt_find(ck, wname, NULL);
        if (w && w->dtype == ST_U32) {
            *skip = 1; /* taken with its weight */
            return 0;
        }
        snprintf(err, errlen, "%s: tensor '%s' has no quantized (U32) '%s'", f->path, t->name, wname);
        return -1;
    }
    p->t = t;
    p->f = f;
    p->ndim = t->ndim;
    memcpy(p->shape, t->shape, sizeof p->shape);
    int kept = 0;
    if (t->dtype == ST_U32) {
        if (qtensor_open(ck, mq, t->name, t, f, 0, &p->q, err, errlen)) return -1;
        p->shape[1] = p->q.cols;
        p->store = plan_quantized(t->name, p->q.rows, p->q.cols, o, &kept);
    } else if (ckpt_kernel_dtype(t->dtype) < 0) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s, expected F32, BF16, F16, or U32 with scales and biases",
                 f->path, t->name, st_dtype_name(t->dtype));
        return -1;
    } else {
        const char *rest = p->out_name + strlen("model.");
        if (is_conv(rest) && t->ndim == 3 && t->shape[2] == 1 && t->shape[1] > 1) { /* [C, K, 1] -> [C, 1, K] */
            p->shape[1] = 1;
            p->shape[2] = t->shape[1];
        }
        p->minus_one = shifted && t->ndim == 1 && strncmp(p->out_name, "lm_head.", 8) && is_shifted_norm(rest);
        p->store = convert_plan_dtype(t->ndim, t->shape, t->name, o->dense, o->group, &kept);
    }
    p->kept_bf16 = kept;
    return 0;
}

static int declare(st_writer *w, const res_plan *p, int group, char *err, size_t errlen) {
    if (!dtype_is_quant(p->store))
        return st_writer_add(w, p->out_name, p->store == DTYPE_F32 ? ST_F32 : ST_BF16, p->ndim, p->shape, err,
                             errlen) < 0 ? -1 : 0;
    char name[320];
    size_t len = strlen(p->out_name) - strlen(".weight");
    int64_t wshape[2] = {p->shape[0], p->shape[1] * dtype_bits(p->store) / 32};
    int64_t gshape[2] = {p->shape[0], p->shape[1] / group};
    if (st_writer_add(w, p->out_name, ST_U32, 2, wshape, err, errlen) < 0) return -1;
    snprintf(name, sizeof name, "%.*s.scales", (int)len, p->out_name);
    if (st_writer_add(w, name, ST_BF16, 2, gshape, err, errlen) < 0) return -1;
    snprintf(name, sizeof name, "%.*s.biases", (int)len, p->out_name);
    return st_writer_add(w, name, ST_BF16, 2, gshape, err, errlen) < 0 ? -1 : 0;
}

typedef struct {
    float *x;
    void *out;
    size_t cap; /* values */
} res_buffers;

static int buffers_fit(res_buffers *b, size_t n, const char *path, char *err, size_t errlen) {
    if (n <= b->cap) return 0;
    float *x = realloc(b->x, sizeof(float) * n);
    if (x) b->x = x;
    void *o = realloc(b->out, sizeof(float) * n);
    if (o) b->out = o;
    if (!x || !o) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    b->cap = n;
    return 0;
}

static int write_tensor(st_writer *w, const res_plan *p, int group, res_buffers *b, pool *pl, const char *path,
                        char *err, size_t errlen) {
    if (p->store == DTYPE_F32) { /* vectors and the conv kernel: small, float sources */
        size_t n = (size_t)(p->t->nbytes / st_dtype_size(p->t->dtype));
        if (buffers_fit(b, n, path, err, errlen)) return -1;
        qmat v = {.type = (dtype)ckpt_kernel_dtype(p->t->dtype), .rows = 1, .cols = (int)n, .data = p->t->data};
        kernel_row_f32(b->x, &v, 0);
        if (p->minus_one)
            for (size_t i = 0; i < n; i++) b->x[i] -= 1.0f;
        return st_writer_write(w, b->x, 4 * n, err, errlen);
    }
    int rows = (int)p->shape[0], cols = (int)p->shape[1];
    mlx_mat m = p->q.w ? qtensor_mat(&p->q, 0)
                       : (mlx_mat){.rows = rows, .cols = cols,
                                   .f = {.type = (dtype)ckpt_kernel_dtype(p->t->dtype), .rows = rows, .cols = cols,
                                         .data = p->t->data}};
    int chunk = (int)(MLX_CHUNK_ELEMS / (size_t)cols);
    if (chunk < 1) chunk = 1;
    if (chunk > rows) chunk = rows;
    if (buffers_fit(b, (size_t)chunk * cols, path, err, errlen)) return -1;
    uint16_t *sc = NULL, *bi = NULL;
    size_t groups = dtype_is_quant(p->store) ? (size_t)rows * cols / group : 0;
    if (groups && (!(sc = malloc(2 * groups)) || !(bi = malloc(2 * groups)))) {
        free(sc);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    int rc = 0;
    for (int r0 = 0; rc == 0 && r0 < rows; r0 += chunk) {
        int n = rows - r0 < chunk ? rows - r0 : chunk;
        size_t vals = (size_t)n * cols;
        if (p->store == DTYPE_BF16) {
            uint16_t *o = b->out;
            mat_rows_f32(&m, r0, n, b->x);
            for (size_t i = 0; i < vals; i++) o[i] = f32_to_bf16(b->x[i]);
            rc = st_writer_write(w, o, 2 * vals, err, errlen);
        } else {
            size_t g0 = (size_t)r0 * cols / group;
            if (m.bits)
                mat_emit_quant(&m, r0, n, p->store, group, b->out, sc + g0, bi + g0, b->x, pl);
            else {
                mat_rows_f32(&m, r0, n, b->x);
                quant_rows_mt(pl, p->store, QUANT_MSE, b->x, n, cols, group, b->out, sc + g0, bi + g0);
            }
            rc = st_writer_write(w, b->out, 4 * quant_words(p->store, vals), err, errlen);
        }
    }
    if (rc == 0 && groups)
        rc = st_writer_write(w, sc, 2 * groups, err, errlen) || st_writer_write(w, bi, 2 * groups, err, errlen);
    free(sc);
    free(bi);
    return rc ? -1 : 0;
}

/* Every resident tensor checked and planned, before anything is written. */
static int plan_resident(const checkpoint *ck, const mlx_quant *mq, const convert_opts *o, int shifted,
                         res_plan **plans, int *np, char *err, size_t errlen) {
    int n = 0;
    for (int f = 0; f < ck->n_files; f++) n += ck->files[f].n_tensors;
    res_plan *plan = calloc((size_t)n + 1, sizeof *plan);
    if (!plan) {
        snprintf(err, errlen, "%s: out of memory", ck->dir);
        return -1;
    }
    *np = 0;
    for (int f = 0; f < ck->n_files; f++)
        for (int i = 0; i < ck->files[f].n_tensors; i++) {
            int skip;
            if (plan_tensor(ck, mq, o, shifted, &ck->files[f], &ck->files[f].tensors[i], &plan[*np], &skip, err,
                            errlen)) {
                free(plan);
                return -1;
            }
            *np += !skip;
        }
    *plans = plan;
    return 0;
}

static int write_resident(const res_plan *plan, int np, const convert_opts *o, pool *pl, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", o->out, PACKED_RESIDENT);
    res_buffers b = {0};
    st_writer w = {0};
    int rc = -1;
    if (st_writer_open(&w, path, err, errlen)) goto out;
    for (int i = 0; i < np; i++)
        if (declare(&w, &plan[i], o->group, err, errlen)) goto out;
    if (st_writer_begin_data(&w, "flashmoe-resident", err, errlen)) goto out;
    for (int i = 0; i < np; i++)
        if (write_tensor(&w, &plan[i], o->group, &b, pl, path, err, errlen)) goto out;
    rc = st_writer_close(&w, err, errlen);
out:
    if (w.f) st_writer_abort(&w);
    free(b.x);
    free(b.out);
    return rc;
}

/* ---- experts ------------------------------------------------------------------------------------- */

typedef struct {
    mlx_qtensor q; /* q.w: quantized */
    const st_tensor *t;
    int rows, cols;
} proj_source;

static mlx_mat proj_mat(const proj_source *s, int e) {
    if (s->q.w) return qtensor_mat(&s->q, e);
    size_t es = st_dtype_size(s->t->dtype);
    return (mlx_mat){.rows = s->rows, .cols = s->cols,
                     .f = {.type = (dtype)ckpt_kernel_dtype(s->t->dtype), .rows = s->rows, .cols = s->cols,
                           .data = (const char *)s->t->data + (size_t)e * s->rows * s->cols * es}};
}

/* mlp.switch_mlp.<proj>.weight of layer l: [E, rows, cols] float, or quantized with scales and biases. */
static int proj_open(const checkpoint *ck, const mlx_quant *mq, const model_config *c, int l, const char *proj,
                     int rows, int cols, proj_source *s, char *err, size_t errlen) {
    char name[512];
    snprintf(name, sizeof name, "%slayers.%d.mlp.switch_mlp.%s.weight", ck->prefix, l, proj);
    const st_file *f = NULL;
    const st_tensor *t = ckpt_find(ck, name, &f);
    memset(s, 0, sizeof *s);
    s->rows = rows;
    s->cols = cols;
    if (!t) {
        snprintf(err, errlen, "%s: tensor '%s' not found (an MLX checkpoint stacks its experts as "
                 "mlp.switch_mlp.{gate,up,down}_proj)", ck->dir, name);
        return -1;
    }
    if (t->dtype != ST_U32) {
        int64_t shape[3] = {c->n_experts, rows, cols};
        return ckpt_get(ck, name, 3, shape, &s->t, NULL, err, errlen);
    }
    if (qtensor_open(ck, mq, name, t, f, 1, &s->q, err, errlen)) return -1;
    if (s->q.n != c->n_experts || s->q.rows != rows || s->q.cols != cols) {
        snprintf(err, errlen, "%s: quantized tensor '%s' holds [%lld, %d, %d] at %d bits, expected [%d, %d, %d]",
                 f->path, name, (long long)s->q.n, s->q.rows, s->q.cols, s->q.bits, c->n_experts, rows, cols);
        return -1;
    }
    return 0;
}

static const char *proj_names[3] = {"gate_proj", "up_proj", "down_proj"};

static int write_experts(const checkpoint *ck, const mlx_quant *mq, const model_config *c, const convert_opts *o,
                         const packed_layout *lo, pool *pl, char *err, size_t errlen) {
    int I = c->expert_inter, H = c->hidden_size;
    float *x = malloc(sizeof(float) * (size_t)I * H);
    if (!x) {
        snprintf(err, errlen, "%s: out of memory", o->out);
        return -1;
    }
    const int rows[3] = {I, I, H}, cols[3] = {H, H, I};
    const packed_part *parts[3] = {&lo->gate, &lo->up, &lo->down};
    double t0 = util_now_seconds(), bytes = 0;
    int rc = -1;
    for (int l = 0; l < c->n_layers; l++) {
        convert_progress(o, l, c->n_layers, t0, bytes);
        proj_source src[3];
        for (int p = 0; p < 3; p++)
            if (proj_open(ck, mq, c, l, proj_names[p], rows[p], cols[p], &src[p], err, errlen)) goto out;
        expert_file_writer w;
        if (expert_file_open(&w, o->out, l, c->n_experts, lo, err, errlen)) goto out;
        for (int e = 0; e < c->n_experts; e++) {
            unsigned char *rec = expert_file_record(&w);
            for (int p = 0; p < 3; p++) {
                mlx_mat m = proj_mat(&src[p], e);
                if (lo->type == DTYPE_BF16) {
                    uint16_t *d = (uint16_t *)(rec + parts[p]->data);
                    mat_rows_f32(&m, 0, m.rows, x);
                    for (size_t i = 0; i < (size_t)m.rows * m.cols; i++) d[i] = f32_to_bf16(x[i]);
                } else {
                    mat_emit_quant(&m, 0, m.rows, lo->type, lo->group, (uint32_t *)(rec + parts[p]->data),
                                   (uint16_t *)(rec + parts[p]->scales), (uint16_t *)(rec + parts[p]->biases), x, pl);
                }
            }
            if (expert_file_append(&w, err, errlen)) {
                expert_file_close(&w, err, 0);
                goto out;
            }
            bytes += (double)lo->record_bytes;
        }
        if (expert_file_close(&w, err, errlen)) goto out;
    }
    convert_progress(o, c->n_layers, c->n_layers, t0, bytes);
    rc = 0;
out:
    free(x);
    return rc;
}

/* ---- the whole conversion ------------------------------------------------------------------------ */

int convert_mlx_detect(const char *dir, const checkpoint *ck) {
    char name[512];
    if (!strcmp(ck->prefix, "language_model.model.")) return 1;
    snprintf(name, sizeof name, "%slayers.0.mlp.switch_mlp.gate_proj.weight", ck->prefix);
    if (ckpt_find(ck, name, NULL)) return 1;
    for (int f = 0; f < ck->n_files; f++)
        for (int i = 0; i < ck->files[f].n_tensors; i++)
            if (ck->files[f].tensors[i].dtype == ST_U32) return 1;
    mlx_quant mq;
    char err[16];
    int found = quant_load(&mq, dir, err, sizeof err) == 0 && mq.q;
    quant_free(&mq);
    return found;
}

/* OUT/config.json: the source's, less the quantization entries (they describe the source's tensors). */
static int write_config(const mlx_quant *mq, const char *out, char *err, size_t errlen) {
    char path[4096];
    if (util_path_join(path, sizeof path, out, "config.json")) {
        snprintf(err, errlen, "%s: path too long", out);
        return -1;
    }
    cJSON *root = cJSON_Duplicate(mq->root, 1);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    static const char *keys[] = {"quantization", "quantization_config"};
    for (int k = 0; k < 2; k++) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, keys[k]);
        if (cJSON_IsObject(t)) cJSON_DeleteItemFromObjectCaseSensitive(t, keys[k]);
    }
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    FILE *f = text ? fopen(path, "w") : NULL;
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f)) ok = 0;
    free(text);
    if (!ok) snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    return ok ? 0 : -1;
}

/* The experts of every layer checked (names, dtypes, shapes, bits), before anything is written. */
static int check_experts(const checkpoint *ck, const mlx_quant *mq, const model_config *c, int *bits, char *err,
                         size_t errlen) {
    int I = c->expert_inter, H = c->hidden_size;
    const int rows[3] = {I, I, H}, cols[3] = {H, H, I};
    *bits = -1;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < 3; p++) {
            proj_source s;
            if (proj_open(ck, mq, c, l, proj_names[p], rows[p], cols[p], &s, err, errlen)) return -1;
            int b = s.q.w ? s.q.bits : 16;
            *bits = *bits < 0 || *bits == b ? b : 0; /* 0: mixed */
        }
    return 0;
}

int convert_mlx_write(const checkpoint *ck, const model_config *c, const convert_opts *o, const packed_layout *lo,
                      char *err, size_t errlen) {
    mlx_quant mq;
    res_plan *plan = NULL;
    int shifted, np = 0, ebits, rc = -1;
    if (quant_load(&mq, ck->dir, err, errlen)) {
        quant_free(&mq);
        return -1;
    }
    if (norms_shifted(ck, &shifted, err, errlen) || check_experts(ck, &mq, c, &ebits, err, errlen) ||
        plan_resident(ck, &mq, o, shifted, &plan, &np, err, errlen))
        goto out;
    if (!o->quiet) {
        char eb[32];
        if (ebits == 16) snprintf(eb, sizeof eb, "float");
        else if (ebits) snprintf(eb, sizeof eb, "%d-bit", ebits);
        else snprintf(eb, sizeof eb, "mixed-bit");
        fprintf(stderr, "convert: MLX checkpoint, %s experts; conv1d in %s layout: norms %s\n", eb,
                shifted ? "MLX [C, K, 1]" : "HF [C, 1, K]",
                shifted ? "stored as 1 + w, shifted back" : "taken as stored");
        for (int i = 0; i < np; i++)
            if (plan[i].kept_bf16)
                fprintf(stderr, "convert: %s: %lld columns do not divide into groups of %d: kept in bf16\n",
                        plan[i].t->name, (long long)plan[i].shape[1], o->group);
    }
    if (write_config(&mq, o->out, err, errlen)) goto out;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    pool *pl = pool_create(cpus < 1 ? 1 : cpus > 64 ? 64 : (int)cpus); /* NULL: this thread alone */
    rc = write_resident(plan, np, o, pl, err, errlen) || write_experts(ck, &mq, c, o, lo, pl, err, errlen) ? -1 : 0;
    pool_free(pl);
out:
    free(plan);
    quant_free(&mq);
    return rc;
}
