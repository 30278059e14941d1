#include "packed_writer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

const char *packed_dtype_name(dtype t) {
    switch (t) {
    case DTYPE_BF16: return "bf16";
    case DTYPE_Q8: return "q8";
    case DTYPE_Q4: return "q4";
    case DTYPE_Q3: return "q3";
    case DTYPE_Q2: return "q2";
    default: return "?";
    }
}

static int io_fail(char *err, size_t errlen, const char *path, const char *what) {
    snprintf(err, errlen, "%s: %s: %s", path, what, strerror(errno ? errno : EIO));
    return -1;
}

int st_writer_open(st_writer *w, const char *path, char *err, size_t errlen) {
    memset(w, 0, sizeof *w);
    w->path = strdup(path);
    w->f = fopen(path, "wb");
    if (!w->f || !w->path) {
        io_fail(err, errlen, path, "cannot create");
        st_writer_abort(w);
        return -1;
    }
    return 0;
}

int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape, char *err,
                  size_t errlen) {
    if (w->n == w->cap) {
        int cap = w->cap ? w->cap * 2 : 64;
        st_spec *ns = realloc(w->specs, sizeof *ns * (size_t)cap);
        if (!ns) {
            snprintf(err, errlen, "%s: out of memory", w->path);
            return -1;
        }
        w->specs = ns;
        w->cap = cap;
    }
    st_spec *s = &w->specs[w->n];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->dtype = dtype;
    s->ndim = ndim;
    memcpy(s->shape, shape, sizeof(int64_t) * (size_t)ndim);
    return w->n++;
}

static uint64_t spec_bytes(const st_spec *s) {
    uint64_t n = st_dtype_size(s->dtype);
    for (int d = 0; d < s->ndim; d++) n *= (uint64_t)s->shape[d];
    return n;
}

int st_writer_begin_data(st_writer *w, const char *format_tag, char *err, size_t errlen) {
    cJSON *h = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", format_tag);
    uint64_t at = 0;
    for (int i = 0; i < w->n; i++) {
        const st_spec *s = &w->specs[i];
        cJSON *t = cJSON_AddObjectToObject(h, s->name), *shape = cJSON_AddArrayToObject(t, "shape");
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddStringToObject(t, "dtype", st_dtype_name(s->dtype));
        for (int d = 0; d < s->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)s->shape[d]));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)at));
        at += spec_bytes(s);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)at));
    }
    char *text = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!text) {
        snprintf(err, errlen, "%s: out of memory", w->path);
        return -1;
    }
    /* pad the header with spaces so that the data starts 64-byte aligned */
    uint64_t len = strlen(text), padded = (8 + len + 63) / 64 * 64 - 8;
    int ok = fwrite(&padded, 8, 1, w->f) == 1 && fwrite(text, 1, len, w->f) == len;
    for (uint64_t i = len; ok && i < padded; i++) ok = fputc(' ', w->f) != EOF;
    free(text);
    return ok ? 0 : io_fail(err, errlen, w->path, "write failed");
}

int st_writer_write(st_writer *w, const void *data, size_t nbytes, char *err, size_t errlen) {
    if (w->next >= w->n || w->part + nbytes > spec_bytes(&w->specs[w->next])) {
        snprintf(err, errlen, "%s: internal error: tensor %d written with %zu bytes", w->path, w->next, nbytes);
        return -1;
    }
    if (fwrite(data, 1, nbytes, w->f) != nbytes) return io_fail(err, errlen, w->path, "write failed");
    w->written += nbytes;
    w->part += nbytes;
    if (w->part == spec_bytes(&w->specs[w->next])) {
        w->next++;
        w->part = 0;
    }
    return 0;
}

int st_writer_close(st_writer *w, char *err, size_t errlen) {
    int rc = 0;
    if (w->next != w->n) {
        snprintf(err, errlen, "%s: internal error: %d of %d tensors written", w->path, w->next, w->n);
        rc = -1;
    }
    if (fclose(w->f) && rc == 0) rc = io_fail(err, errlen, w->path, "write failed");
    w->f = NULL;
    st_writer_abort(w);
    return rc;
}

void st_writer_abort(st_writer *w) {
    if (w->f) fclose(w->f);
    free(w->specs);
    free(w->path);
    memset(w, 0, sizeof *w);
}

int expert_file_open(expert_file_writer *w, const char *dir, int layer, int n_experts, const packed_layout *lo,
                     char *err, size_t errlen) {
    memset(w, 0, sizeof *w);
    packed_expert_path(w->path, sizeof w->path, dir, layer);
    w->layer = layer;
    w->n_experts = n_experts;
    w->lo = *lo;
    w->record = aligned_alloc(PACKED_ALIGN, lo->record_bytes);
    if (!w->record) {
        snprintf(err, errlen, "%s: out of memory", w->path);
        return -1;
    }
    if (!(w->f = fopen(w->path, "wb"))) {
        free(w->record);
        return io_fail(err, errlen, w->path, "cannot create");
    }
    packed_file_header h = {.version = PACKED_VERSION, .layer = (uint32_t)layer, .n_experts = (uint32_t)n_experts,
                            .type = (uint32_t)lo->type, .group = (uint32_t)lo->group, .hidden = (uint32_t)lo->hidden,
                            .inter = (uint32_t)lo->inter, .record_bytes = lo->record_bytes,
                            .first_record = PACKED_HEADER_BYTES};
    unsigned char hdr[PACKED_HEADER_BYTES];
    packed_header_encode(&h, hdr);
    if (fwrite(hdr, 1, sizeof hdr, w->f) != sizeof hdr) {
        fclose(w->f);
        free(w->record);
        return io_fail(err, errlen, w->path, "write failed");
    }
    memset(w->record, 0, lo->record_bytes);
    return 0;
}

unsigned char *expert_file_record(expert_file_writer *w) { return w->record; }

int expert_file_append(expert_file_writer *w, char *err, size_t errlen) {
    if (fwrite(w->record, 1, w->lo.record_bytes, w->f) != w->lo.record_bytes)
        return io_fail(err, errlen, w->path, "write failed");
    memset(w->record, 0, w->lo.record_bytes);
    w->written++;
    return 0;
}

int expert_file_close(expert_file_writer *w, char *err, size_t errlen) {
    int rc = 0;
    if (w->written != w->n_experts) {
        snprintf(err, errlen, "%s: internal error: %d of %d experts written", w->path, w->written, w->n_experts);
        rc = -1;
    }
    if (fclose(w->f) && rc == 0) rc = io_fail(err, errlen, w->path, "write failed");
    free(w->record);
    return rc;
}

void packed_fill_part(pool *p, const packed_layout *lo, const packed_part *part, unsigned char *record,
                      const float *x, int rows, int cols) {
    if (lo->type == DTYPE_BF16) {
        uint16_t *d = (uint16_t *)(record + part->data);
        for (size_t i = 0; i < (size_t)rows * cols; i++) d[i] = f32_to_bf16(x[i]);
        return;
    }
    quant_rows_mt(p, lo->type, QUANT_MSE, x, rows, cols, lo->group, (uint32_t *)(record + part->data),
                  (uint16_t *)(record + part->scales), (uint16_t *)(record + part->biases));
}

int packed_write_manifest(const char *dir, const packed_layout *lo, int n_layers, int n_experts,
                          const char *dense, const char *source, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, PACKED_MANIFEST);
    cJSON *root = cJSON_CreateObject(), *ex = cJSON_CreateObject(), *dn = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "flashmoe-packed");
    cJSON_AddNumberToObject(root, "version", PACKED_VERSION);
    cJSON_AddStringToObject(root, "source", source);
    cJSON_AddStringToObject(ex, "dtype", packed_dtype_name(lo->type));
    cJSON_AddNumberToObject(ex, "group", lo->group);
    cJSON_AddNumberToObject(ex, "n_layers", n_layers);
    cJSON_AddNumberToObject(ex, "n_experts", n_experts);
    cJSON_AddNumberToObject(ex, "hidden", lo->hidden);
    cJSON_AddNumberToObject(ex, "inter", lo->inter);
    cJSON_AddNumberToObject(ex, "record_bytes", (double)lo->record_bytes);
    cJSON_AddStringToObject(ex, "files", "experts-LLL.bin, one per layer");
    cJSON_AddItemToObject(root, "experts", ex);
    cJSON_AddStringToObject(dn, "dtype", dense);
    cJSON_AddStringToObject(dn, "file", PACKED_RESIDENT);
    cJSON_AddItemToObject(root, "dense", dn);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    FILE *f = fopen(path, "w");
    int ok = text && f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f)) ok = 0;
    free(text);
    return ok ? 0 : io_fail(err, errlen, path, "cannot write");
}
