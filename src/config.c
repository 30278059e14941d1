#include "config.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* An integer field: absent -> def (def < 0: required); present -> must be an integer in [lo, INT_MAX]. */
static int get_int(const cJSON *o, const char *key, int def, int lo, int *out, const char *path, char *err,
                   size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (def < 0) {
            snprintf(err, errlen, "%s: missing required field '%s'", path, key);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(long long)v->valuedouble || v->valuedouble < lo ||
        v->valuedouble > INT_MAX) {
        snprintf(err, errlen, "%s: field '%s' must be an integer >= %d", path, key, lo);
        return -1;
    }
    *out = (int)v->valuedouble;
    return 0;
}

static int get_double(const cJSON *o, const char *key, double def, double *out, const char *path, char *err,
                      size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) {
        snprintf(err, errlen, "%s: field '%s' must be a number", path, key);
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

static int parse_layer_types(model_config *c, const cJSON *t, const char *path, char *err, size_t errlen) {
    c->layer_types = calloc((size_t)c->n_layers, sizeof *c->layer_types);
    if (!c->layer_types) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(t, "layer_types");
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->n_layers) {
            snprintf(err, errlen, "%s: 'layer_types' must list %d layers", path, c->n_layers);
            return -1;
        }
        for (int i = 0; i < c->n_layers; i++) {
            const cJSON *v = cJSON_GetArrayItem(lt, i);
            if (cJSON_IsString(v) && !strcmp(v->valuestring, "linear_attention"))
                c->layer_types[i] = LAYER_LINEAR_ATTENTION;
            else if (cJSON_IsString(v) && !strcmp(v->valuestring, "full_attention"))
                c->layer_types[i] = LAYER_FULL_ATTENTION;
            else {
                snprintf(err, errlen, "%s: layer_types[%d] is not 'linear_attention' or 'full_attention'", path, i);
                return -1;
            }
        }
        return 0;
    }
    int interval;
    if (get_int(t, "full_attention_interval", 4, 1, &interval, path, err, errlen)) return -1;
    for (int i = 0; i < c->n_layers; i++)
        c->layer_types[i] = (i + 1) % interval ? LAYER_LINEAR_ATTENTION : LAYER_FULL_ATTENTION;
    return 0;
}

static int parse_rope(model_config *c, const cJSON *t, const char *path, char *err, size_t errlen) {
    /* rope_parameters (transformers 5) wins over the legacy top-level keys */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(t, "rope_parameters");
    if (rp && !cJSON_IsNull(rp) && !cJSON_IsObject(rp)) {
        snprintf(err, errlen, "%s: 'rope_parameters' must be an object", path);
        return -1;
    }
    double theta, factor;
    if (get_double(t, "rope_theta", 10000.0, &theta, path, err, errlen) ||
        get_double(t, "partial_rotary_factor", 0.25, &factor, path, err, errlen))
        return -1;
    if (cJSON_IsObject(rp)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
        if (cJSON_IsString(type) && strcmp(type->valuestring, "default")) {
            snprintf(err, errlen, "%s: unsupported rope_type '%s' (only 'default')", path, type->valuestring);
            return -1;
        }
        if (get_double(rp, "rope_theta", theta, &theta, path, err, errlen) ||
            get_double(rp, "partial_rotary_factor", factor, &factor, path, err, errlen))
            return -1;
    }
    c->rope_theta = theta;
    c->rope_dim = (int)(c->head_dim * factor);
    if (factor <= 0 || factor > 1 || c->rope_dim % 2 || theta <= 0) {
        snprintf(err, errlen, "%s: bad RoPE settings (theta %g, partial_rotary_factor %g)", path, theta, factor);
        return -1;
    }
    if (c->rope_dim > CONFIG_MAX_ROPE_DIM) {
        snprintf(err, errlen, "%s: RoPE dimension %d (head_dim x partial_rotary_factor) exceeds %d", path, c->rope_dim,
                 CONFIG_MAX_ROPE_DIM);
        return -1;
    }
    return 0;
}

static int parse_generation_config(model_config *c, const char *dir, char *err, size_t errlen) {
    char path[4096];
    if (util_path_join(path, sizeof path, dir, "generation_config.json") || !util_file_exists(path)) return 0;
    char *text = util_read_file(path, NULL, err, errlen);
    if (!text) return -1;
    cJSON *g = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(g)) {
        cJSON_Delete(g);
        snprintf(err, errlen, "%s: malformed JSON", path);
        return -1;
    }
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(g, "eos_token_id");
    int rc = 0;
    if (cJSON_IsNumber(eos)) {
        c->eos_ids[c->n_eos++] = (int)eos->valuedouble;
    } else if (cJSON_IsArray(eos)) {
        const cJSON *v;
        cJSON_ArrayForEach(v, eos) {
            if (!cJSON_IsNumber(v) || c->n_eos == CONFIG_MAX_EOS) {
                snprintf(err, errlen, "%s: 'eos_token_id' must be up to %d integers", path, CONFIG_MAX_EOS);
                rc = -1;
                break;
            }
            c->eos_ids[c->n_eos++] = (int)v->valuedouble;
        }
    } else if (eos && !cJSON_IsNull(eos)) {
        snprintf(err, errlen, "%s: 'eos_token_id' must be an integer or a list", path);
        rc = -1;
    }
    cJSON_Delete(g);
    return rc;
}

static int parse_text_config(model_config *c, const cJSON *t, const char *path, char *err, size_t errlen) {
    double eps;
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(t, "tie_word_embeddings");
    c->tie_embeddings = cJSON_IsTrue(tie);
    if (get_int(t, "vocab_size", -1, 1, &c->vocab_size, path, err, errlen) ||
        get_int(t, "hidden_size", -1, 1, &c->hidden_size, path, err, errlen) ||
        get_int(t, "num_hidden_layers", -1, 1, &c->n_layers, path, err, errlen) ||
        get_int(t, "num_attention_heads", -1, 1, &c->n_heads, path, err, errlen) ||
        get_int(t, "num_key_value_heads", -1, 1, &c->n_kv_heads, path, err, errlen) ||
        get_int(t, "head_dim", 256, 2, &c->head_dim, path, err, errlen) ||
        get_int(t, "linear_num_key_heads", 16, 1, &c->lin_k_heads, path, err, errlen) ||
        get_int(t, "linear_num_value_heads", 32, 1, &c->lin_v_heads, path, err, errlen) ||
        get_int(t, "linear_key_head_dim", 128, 1, &c->lin_k_dim, path, err, errlen) ||
        get_int(t, "linear_value_head_dim", 128, 1, &c->lin_v_dim, path, err, errlen) ||
        get_int(t, "linear_conv_kernel_dim", 4, 1, &c->conv_kernel, path, err, errlen) ||
        get_int(t, "num_experts", -1, 1, &c->n_experts, path, err, errlen) ||
        get_int(t, "num_experts_per_tok", -1, 1, &c->top_k, path, err, errlen) ||
        get_int(t, "moe_intermediate_size", -1, 1, &c->expert_inter, path, err, errlen) ||
        get_int(t, "shared_expert_intermediate_size", 512, 1, &c->shared_inter, path, err, errlen) ||
        get_int(t, "max_position_embeddings", 32768, 1, &c->max_position_embeddings, path, err, errlen) ||
        get_double(t, "rms_norm_eps", 1e-6, &eps, path, err, errlen))
        return -1;
    c->norm_eps = (float)eps;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(t, "hidden_act");
    if (act && !(cJSON_IsString(act) && !strcmp(act->valuestring, "silu"))) {
        snprintf(err, errlen, "%s: unsupported hidden_act (only 'silu')", path);
        return -1;
    }
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(t, "attention_bias");
    if (cJSON_IsTrue(bias)) {
        snprintf(err, errlen, "%s: attention_bias=true is not supported by qwen3_5_moe", path);
        return -1;
    }
    if (c->n_heads % c->n_kv_heads || c->lin_v_heads % c->lin_k_heads || c->top_k > c->n_experts) {
        snprintf(err, errlen, "%s: inconsistent heads or experts (heads %d/%d, linear heads %d/%d, top-k %d of %d)",
                 path, c->n_heads, c->n_kv_heads, c->lin_k_heads, c->lin_v_heads, c->top_k, c->n_experts);
        return -1;
    }
    if (c->lin_v_dim > 1024 || c->lin_k_dim > 1024 || c->conv_kernel > 9) {
        snprintf(err, errlen,
                 "%s: linear heads of dims %d/%d or a conv kernel of %d are larger than this build supports "
                 "(1024, 1024, 9)", path, c->lin_k_dim, c->lin_v_dim, c->conv_kernel);
        return -1;
    }
    if (parse_rope(c, t, path, err, errlen)) return -1;
    return parse_layer_types(c, t, path, err, errlen);
}

int config_load(model_config *c, const char *dir, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    char path[4096];
    if (util_path_join(path, sizeof path, dir, "config.json")) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    char *text = util_read_file(path, NULL, err, errlen);
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: malformed JSON", path);
        goto out;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const cJSON *text_cfg = root;
    if (!cJSON_IsString(mt)) {
        snprintf(err, errlen, "%s: no 'model_type'", path);
        goto out;
    }
    if (!strcmp(mt->valuestring, "qwen3_5_moe")) {
        text_cfg = cJSON_GetObjectItemCaseSensitive(root, "text_config");
        if (!cJSON_IsObject(text_cfg)) {
            snprintf(err, errlen, "%s: model_type 'qwen3_5_moe' needs a 'text_config' object", path);
            goto out;
        }
        /* the wrapper's tie flag governs the language model head */
        const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
        if (parse_text_config(c, text_cfg, path, err, errlen)) goto out;
        if (tie) c->tie_embeddings = cJSON_IsTrue(tie);
    } else if (!strcmp(mt->valuestring, "qwen3_5_moe_text")) {
        if (parse_text_config(c, text_cfg, path, err, errlen)) goto out;
    } else {
        snprintf(err, errlen, "%s: unknown model_type '%s' (supported: qwen3_5_moe, qwen3_5_moe_text)", path,
                 mt->valuestring);
        goto out;
    }
    rc = parse_generation_config(c, dir, err, errlen);
out:
    cJSON_Delete(root);
    if (rc) config_free(c);
    return rc;
}

void config_free(model_config *c) {
    free(c->layer_types);
    c->layer_types = NULL;
}
