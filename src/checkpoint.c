#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "util.h"

int ckpt_kernel_dtype(st_dtype t) {
    switch (t) {
    case ST_F32: return DTYPE_F32;
    case ST_BF16: return DTYPE_BF16;
    case ST_F16: return DTYPE_F16;
    default: return -1;
    }
}

static int add_file(checkpoint *ck, const char *name, char *err, size_t errlen) {
    char path[4096];
    if (util_path_join(path, sizeof path, ck->dir, name)) {
        snprintf(err, errlen, "%s: path too long", ck->dir);
        return -1;
    }
    for (int i = 0; i < ck->n_files; i++)
        if (!strcmp(ck->files[i].path, path)) return 0;
    st_file *nf = realloc(ck->files, sizeof *nf * (size_t)(ck->n_files + 1));
    if (!nf) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    ck->files = nf;
    if (st_open(&ck->files[ck->n_files], path, err, errlen)) return -1;
    ck->n_files++;
    return 0;
}

/* Opens every shard named in the index, and checks that each listed tensor is in its shard. */
static int open_index(checkpoint *ck, const char *index_path, char *err, size_t errlen) {
    char *text = util_read_file(index_path, NULL, err, errlen);
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    int rc = -1;
    if (!cJSON_IsObject(map)) {
        snprintf(err, errlen, "%s: malformed index (no 'weight_map' object)", index_path);
        goto out;
    }
    for (const cJSON *e = map->child; e; e = e->next) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            snprintf(err, errlen, "%s: bad shard name for '%s'", index_path, e->string);
            goto out;
        }
        if (add_file(ck, e->valuestring, err, errlen)) goto out;
        const st_file *f = NULL;
        for (int i = 0; i < ck->n_files; i++)
            if (strlen(ck->files[i].path) >= strlen(e->valuestring) &&
                !strcmp(ck->files[i].path + strlen(ck->files[i].path) - strlen(e->valuestring), e->valuestring))
                f = &ck->files[i];
        if (!f || !st_find(f, e->string)) {
            snprintf(err, errlen, "%s: tensor '%s' listed in %s is missing from it", f ? f->path : index_path,
                     e->string, index_path);
            goto out;
        }
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int ckpt_open(checkpoint *ck, const char *dir, char *err, size_t errlen) {
    return ckpt_open_flags(ck, dir, 0, err, errlen);
}

int ckpt_open_flags(checkpoint *ck, const char *dir, int flags, char *err, size_t errlen) {
    memset(ck, 0, sizeof *ck);
    ck->dir = strdup(dir);
    if (!ck->dir) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return -1;
    }
    char path[4096];
    if (util_path_join(path, sizeof path, dir, "flashmoe.json") == 0 && util_file_exists(path)) {
        if (add_file(ck, "resident.safetensors", err, errlen)) goto bad; /* a packed directory */
    } else if (util_path_join(path, sizeof path, dir, "model.safetensors.index.json") == 0 &&
               util_file_exists(path)) {
        if (open_index(ck, path, err, errlen)) goto bad;
    } else if (util_path_join(path, sizeof path, dir, "model.safetensors") == 0 && util_file_exists(path)) {
        if (add_file(ck, "model.safetensors", err, errlen)) goto bad;
    } else {
        snprintf(err, errlen, "%s: no model.safetensors or model.safetensors.index.json", dir);
        goto bad;
    }
    if (ckpt_find(ck, "model.language_model.embed_tokens.weight", NULL))
        ck->prefix = "model.language_model.";
    else if (ckpt_find(ck, "model.embed_tokens.weight", NULL))
        ck->prefix = "model.";
    else if (ckpt_find(ck, "language_model.model.embed_tokens.weight", NULL)) {
        if (!(flags & CKPT_MLX_NAMES)) {
            snprintf(err, errlen, "%s: an MLX checkpoint (language_model.model.* tensors): convert it first with "
                     "flashmoe convert", dir);
            goto bad;
        }
        ck->prefix = "language_model.model.";
    } else {
        snprintf(err, errlen, "%s: no embedding tensor (model.language_model.embed_tokens.weight or "
                 "model.embed_tokens.weight)", dir);
        goto bad;
    }
    return 0;
bad:
    ckpt_close(ck);
    return -1;
}

void ckpt_close(checkpoint *ck) {
    for (int i = 0; i < ck->n_files; i++) st_close(&ck->files[i]);
    free(ck->files);
    free(ck->dir);
    memset(ck, 0, sizeof *ck);
}

const st_tensor *ckpt_find(const checkpoint *ck, const char *name, const st_file **file) {
    for (int i = 0; i < ck->n_files; i++) {
        const st_tensor *t = st_find(&ck->files[i], name);
        if (t) {
            if (file) *file = &ck->files[i];
            return t;
        }
    }
    return NULL;
}

static void shape_str(char *out, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(out, n, "[");
    for (int d = 0; d < ndim && used < n; d++)
        used += (size_t)snprintf(out + used, n - used, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (used < n) snprintf(out + used, n - used, "]");
}

int ckpt_get(const checkpoint *ck, const char *name, int ndim, const int64_t *shape, const st_tensor **tp,
             const st_file **fp, char *err, size_t errlen) {
    const st_file *f = NULL;
    const st_tensor *t = ckpt_find(ck, name, &f);
    if (!t) {
        snprintf(err, errlen, "%s: tensor '%s' not found", ck->dir, name);
        return -1;
    }
    if (ckpt_kernel_dtype(t->dtype) < 0) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s, expected F32, BF16 or F16", f->path, name,
                 st_dtype_name(t->dtype));
        return -1;
    }
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char want[128], got[128];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        snprintf(err, errlen, "%s: tensor '%s' has shape %s, expected %s", f->path, name, got, want);
        return -1;
    }
    *tp = t;
    if (fp) *fp = f;
    return 0;
}

/* X.weight stored MLX-style: uint32 words [rows, cols * bits / 32] with bf16 X.scales and X.biases
 * [rows, cols / group]. Bits and group follow from the shapes. */
static int quantized_matrix(const checkpoint *ck, const char *name, const st_tensor *w, const st_file *f, int rows,
                            int cols, qmat *out, char *err, size_t errlen) {
    char sname[512], bname[512];
    size_t n = strlen(name);
    if (n < 7 || strcmp(name + n - 7, ".weight") || n + 1 > sizeof sname) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype U32 but is not a quantized '.weight'", f->path, name);
        return -1;
    }
    snprintf(sname, sizeof sname, "%.*s.scales", (int)(n - 7), name);
    snprintf(bname, sizeof bname, "%.*s.biases", (int)(n - 7), name);
    const st_tensor *sc = ckpt_find(ck, sname, NULL), *bi = ckpt_find(ck, bname, NULL);
    if (!sc || !bi || sc->dtype != ST_BF16 || bi->dtype != ST_BF16 || sc->ndim != 2 || bi->ndim != 2 ||
        sc->shape[0] != rows || bi->shape[0] != rows || sc->shape[1] != bi->shape[1] || sc->shape[1] == 0) {
        snprintf(err, errlen, "%s: quantized tensor '%s' needs bf16 '%s' and '%s' of shape [%d, groups]", f->path,
                 name, sname, bname, rows);
        return -1;
    }
    int64_t groups = sc->shape[1], words = w->ndim == 2 ? w->shape[1] : -1;
    int bits = words > 0 && (words * 32) % cols == 0 ? (int)(words * 32 / cols) : 0;
    dtype t = bits == 8 ? DTYPE_Q8 : bits == 4 ? DTYPE_Q4 : bits == 3 ? DTYPE_Q3 : bits == 2 ? DTYPE_Q2 : DTYPE_COUNT;
    if (w->ndim != 2 || w->shape[0] != rows || t == DTYPE_COUNT || cols % groups) {
        snprintf(err, errlen, "%s: quantized tensor '%s' does not hold a [%d, %d] matrix at 2, 3, 4 or 8 bits",
                 f->path, name, rows, cols);
        return -1;
    }
    *out = (qmat){.type = t, .rows = rows, .cols = cols, .data = w->data, .scales = sc->data, .biases = bi->data,
                  .group = (int)(cols / groups)};
    return 0;
}

int ckpt_matrix(const checkpoint *ck, const char *name, int rows, int cols, qmat *out, char *err, size_t errlen) {
    const st_tensor *t;
    const st_file *f;
    int64_t shape[2] = {rows, cols};
    if ((t = ckpt_find(ck, name, &f)) && t->dtype == ST_U32)
        return quantized_matrix(ck, name, t, f, rows, cols, out, err, errlen);
    if (ckpt_get(ck, name, 2, shape, &t, NULL, err, errlen)) return -1;
    *out = (qmat){.type = (dtype)ckpt_kernel_dtype(t->dtype), .rows = rows, .cols = cols, .data = t->data};
    return 0;
}

int ckpt_vector_f32(const checkpoint *ck, const char *name, int ndim, const int64_t *shape, float *out, char *err,
                    size_t errlen) {
    const st_tensor *t;
    if (ckpt_get(ck, name, ndim, shape, &t, NULL, err, errlen)) return -1;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    qmat row = {.type = (dtype)ckpt_kernel_dtype(t->dtype), .rows = 1, .cols = (int)n, .data = t->data};
    kernel_row_f32(out, &row, 0);
    return 0;
}
