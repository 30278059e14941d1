/* Expert source over a mapped HF checkpoint: every expert is a set of views into the safetensors. */
#include <stdio.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <string.h>

#include "experts.h"
#include "packed.h"

typedef struct {
    expert_source base;
    int n_layers, n_experts;
    expert_view *table; /* [n_layers * n_experts] */
    const int *ids;     /* of the layer in progress */
    int layer, n, next;
    void **maps;        /* packed directories: each layer's expert file, mapped */
    size_t *map_bytes;
} mapped_source;

static int mapped_begin(expert_source *s, int layer, const int *ids, int n, char *err, size_t errlen) {
    mapped_source *m = (mapped_source *)s;
    for (int i = 0; i < n; i++)
        if (layer < 0 || layer >= m->n_layers || ids[i] < 0 || ids[i] >= m->n_experts) {
            snprintf(err, errlen, "expert %d of layer %d does not exist", ids[i], layer);
            return -1;
        }
    m->layer = layer;
    m->ids = ids;
    m->n = n;
    m->next = 0;
    return 0;
}

static int mapped_next(expert_source *s, int *i, expert_view *v, char *err, size_t errlen) {
    (void)err;
    (void)errlen;
    mapped_source *m = (mapped_source *)s;
    if (m->next == m->n) return 0;
    *i = m->next++;
    *v = m->table[(size_t)m->layer * m->n_experts + m->ids[*i]];
    return 1;
}

static void mapped_end(expert_source *s) { ((mapped_source *)s)->n = 0; }

static void mapped_stats(const expert_source *s, experts_stats *out) {
    (void)s;
    memset(out, 0, sizeof *out);
    out->mode = "mmap";
    out->backend = "";
}

static void mapped_free(expert_source *s) {
    mapped_source *m = (mapped_source *)s;
    for (int l = 0; m->maps && l < m->n_layers; l++)
        if (m->maps[l]) munmap(m->maps[l], m->map_bytes[l]);
    free(m->maps);
    free(m->map_bytes);
    free(m->table);
    free(m);
}

static const expert_source_ops mapped_ops = {mapped_begin, mapped_next, mapped_end, mapped_stats, mapped_free};

/* Row slice [r0, r0 + rows) of a 3-D tensor's matrix e, as a view. */
static qmat slice(const st_tensor *t, int e, int r0, int rows) {
    size_t es = st_dtype_size(t->dtype);
    size_t per_expert = (size_t)t->shape[1] * (size_t)t->shape[2] * es;
    const char *base = (const char *)t->data + per_expert * (size_t)e + (size_t)r0 * (size_t)t->shape[2] * es;
    return (qmat){.type = (dtype)ckpt_kernel_dtype(t->dtype), .rows = rows, .cols = (int)t->shape[2], .data = base};
}

static int load_layer(expert_view *row, const checkpoint *ck, const model_config *c, int l, char *err,
                      size_t errlen) {
    char name[512];
    int E = c->n_experts, I = c->expert_inter, H = c->hidden_size;
    snprintf(name, sizeof name, "%slayers.%d.mlp.experts.gate_up_proj", ck->prefix, l);
    if (ckpt_find(ck, name, NULL)) { /* fused */
        const st_tensor *gu, *dn;
        int64_t gu_shape[3] = {E, 2 * I, H}, dn_shape[3] = {E, H, I};
        if (ckpt_get(ck, name, 3, gu_shape, &gu, NULL, err, errlen)) return -1;
        snprintf(name, sizeof name, "%slayers.%d.mlp.experts.down_proj", ck->prefix, l);
        if (ckpt_get(ck, name, 3, dn_shape, &dn, NULL, err, errlen)) return -1;
        for (int e = 0; e < E; e++) {
            row[e].gate = slice(gu, e, 0, I);
            row[e].up = slice(gu, e, I, I);
            row[e].down = slice(dn, e, 0, H);
        }
        return 0;
    }
    for (int e = 0; e < E; e++) {
        snprintf(name, sizeof name, "%slayers.%d.mlp.experts.%d.gate_proj.weight", ck->prefix, l, e);
        if (ckpt_matrix(ck, name, I, H, &row[e].gate, err, errlen)) return -1;
        snprintf(name, sizeof name, "%slayers.%d.mlp.experts.%d.up_proj.weight", ck->prefix, l, e);
        if (ckpt_matrix(ck, name, I, H, &row[e].up, err, errlen)) return -1;
        snprintf(name, sizeof name, "%slayers.%d.mlp.experts.%d.down_proj.weight", ck->prefix, l, e);
        if (ckpt_matrix(ck, name, H, I, &row[e].down, err, errlen)) return -1;
    }
    return 0;
}

expert_source *experts_open_mapped(const checkpoint *ck, const model_config *c, char *err, size_t errlen) {
    mapped_source *m = calloc(1, sizeof *m);
    if (m) m->table = calloc((size_t)c->n_layers * (size_t)c->n_experts, sizeof *m->table);
    if (!m || !m->table) {
        free(m);
        snprintf(err, errlen, "%s: out of memory for the expert table", ck->dir);
        return NULL;
    }
    m->base.ops = &mapped_ops;
    m->base.immediate = 1;
    m->n_layers = c->n_layers;
    m->n_experts = c->n_experts;
    if (experts_table_build(m->table, ck, c, err, errlen)) {
        mapped_free(&m->base);
        return NULL;
    }
    return &m->base;
}

int experts_table_build(expert_view *table, const checkpoint *ck, const model_config *c, char *err, size_t errlen) {
    for (int l = 0; l < c->n_layers; l++)
        if (load_layer(table + (size_t)l * c->n_experts, ck, c, l, err, errlen)) return -1;
    return 0;
}

expert_source *experts_open_mapped_packed(const char *dir, const model_config *c, char *err, size_t errlen) {
    packed_manifest pm;
    if (packed_manifest_load(&pm, dir, err, errlen)) return NULL;
    mapped_source *m = calloc(1, sizeof *m);
    if (m) {
        m->base.ops = &mapped_ops;
        m->base.immediate = 1;
        m->n_layers = c->n_layers;
        m->n_experts = c->n_experts;
        m->table = calloc((size_t)c->n_layers * (size_t)c->n_experts, sizeof *m->table);
        m->maps = calloc((size_t)c->n_layers, sizeof *m->maps);
        m->map_bytes = calloc((size_t)c->n_layers, sizeof *m->map_bytes);
    }
    if (!m || !m->table || !m->maps || !m->map_bytes) {
        snprintf(err, errlen, "%s: out of memory for the expert table", dir);
        goto bad;
    }
    if (pm.n_layers != c->n_layers || pm.n_experts != c->n_experts || pm.layout.hidden != c->hidden_size ||
        pm.layout.inter != c->expert_inter) {
        snprintf(err, errlen, "%s/%s: experts disagree with config.json", dir, PACKED_MANIFEST);
        goto bad;
    }
    for (int l = 0; l < c->n_layers; l++) {
        char path[4096];
        packed_expert_path(path, sizeof path, dir, l);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        m->map_bytes[l] = PACKED_HEADER_BYTES + (size_t)pm.n_experts * pm.layout.record_bytes;
        void *map = fd < 0 ? MAP_FAILED : mmap(NULL, m->map_bytes[l], PROT_READ, MAP_SHARED, fd, 0);
        if (fd >= 0) close(fd);
        if (map == MAP_FAILED) {
            snprintf(err, errlen, "%s: cannot map: %s", path, strerror(errno));
            goto bad;
        }
        m->maps[l] = map;
        for (int e = 0; e < c->n_experts; e++) {
            expert_view *v = &m->table[(size_t)l * c->n_experts + e];
            packed_expert_views(&pm.layout, (char *)map + PACKED_HEADER_BYTES + (size_t)e * pm.layout.record_bytes,
                                &v->gate, &v->up, &v->down);
        }
    }
    return &m->base;
bad:
    if (m) mapped_free(&m->base);
    return NULL;
}
