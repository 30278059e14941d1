#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    st_dtype type;
    size_t size;
} dtypes[] = {
    {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"F64", ST_F64, 8},
    {"I64", ST_I64, 8}, {"I32", ST_I32, 4}, {"U32", ST_U32, 4},   {"I16", ST_I16, 2},
    {"I8", ST_I8, 1},   {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1},
};

const char *st_dtype_name(st_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].type == t) return dtypes[i].name;
    return "unsupported";
}

size_t st_dtype_size(st_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].type == t) return dtypes[i].size;
    return 0;
}

static unsigned name_hash(const char *s) { /* FNV-1a */
    unsigned h = 2166136261u;
    while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

static int fail(char *err, size_t errlen, const char *path, const char *fmt, const char *a, long long b, long long c) {
    char msg[256];
    snprintf(msg, sizeof msg, fmt, a, b, c);
    snprintf(err, errlen, "%s: %s", path, msg);
    return -1;
}

/* Reads one tensor entry of the header into t. */
static int parse_entry(st_tensor *t, const cJSON *e, uint64_t data_size, uint64_t data_start, const char *path,
                       char *err, size_t errlen) {
    const char *name = e->string;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return fail(err, errlen, path, "corrupt header: tensor '%s' lacks dtype, shape or data_offsets", name, 0, 0);
    t->dtype = ST_OTHER;
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(dt->valuestring, dtypes[i].name)) t->dtype = dtypes[i].type;
    t->ndim = cJSON_GetArraySize(shape);
    if (t->ndim > ST_MAX_DIMS)
        return fail(err, errlen, path, "corrupt header: tensor '%s' has %lld dimensions", name, t->ndim, 0);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        const cJSON *v = cJSON_GetArrayItem(shape, d);
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9.0e15)
            return fail(err, errlen, path, "corrupt header: tensor '%s' has a bad shape", name, 0, 0);
        t->shape[d] = (int64_t)v->valuedouble;
        if (t->shape[d] && numel > UINT64_MAX / (uint64_t)t->shape[d])
            return fail(err, errlen, path, "corrupt header: tensor '%s' is impossibly large", name, 0, 0);
        numel *= (uint64_t)t->shape[d];
    }
    const cJSON *b = cJSON_GetArrayItem(offs, 0), *en = cJSON_GetArrayItem(offs, 1);
    if (!cJSON_IsNumber(b) || !cJSON_IsNumber(en) || b->valuedouble < 0 || en->valuedouble < b->valuedouble)
        return fail(err, errlen, path, "corrupt header: tensor '%s' has bad data_offsets", name, 0, 0);
    uint64_t begin = (uint64_t)b->valuedouble, end = (uint64_t)en->valuedouble;
    if (end > data_size)
        return fail(err, errlen, path, "truncated: tensor '%s' ends at data byte %lld but the file holds %lld",
                    name, (long long)end, (long long)data_size);
    size_t es = st_dtype_size(t->dtype);
    if (es && numel * es != end - begin)
        return fail(err, errlen, path, "corrupt header: tensor '%s' has %lld bytes for a shape needing %lld", name,
                    (long long)(end - begin), (long long)(numel * es));
    t->offset = data_start + begin;
    t->nbytes = end - begin;
    t->name = strdup(name);
    if (!t->name) return fail(err, errlen, path, "out of memory%s", "", 0, 0);
    return 0;
}

int st_open(st_file *f, const char *path, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->path = strdup(path);
    if (!f->path) return fail(err, errlen, path, "out of memory%s", "", 0, 0);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        fail(err, errlen, path, "cannot open: %s", strerror(errno), 0, 0);
        goto bad;
    }
    struct stat sb;
    if (fstat(f->fd, &sb) != 0) {
        fail(err, errlen, path, "cannot stat: %s", strerror(errno), 0, 0);
        goto bad;
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 8) {
        fail(err, errlen, path, "truncated: %s%lld bytes, too short for a safetensors header", "", (long long)f->size, 0);
        goto bad;
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        fail(err, errlen, path, "cannot map: %s", strerror(errno), 0, 0);
        goto bad;
    }
    uint64_t hlen = 0;
    memcpy(&hlen, f->map, 8); /* little-endian host */
    if (hlen > f->size - 8) {
        fail(err, errlen, path, "truncated: %sheader says %lld bytes but the file has %lld after the length", "",
             (long long)hlen, (long long)(f->size - 8));
        goto bad;
    }
    cJSON *h = cJSON_ParseWithLength((const char *)f->map + 8, hlen);
    if (!h || !cJSON_IsObject(h)) {
        cJSON_Delete(h);
        fail(err, errlen, path, "corrupt header: %snot a JSON object", "", 0, 0);
        goto bad;
    }
    int n = 0;
    for (const cJSON *e = h->child; e; e = e->next) n += strcmp(e->string, "__metadata__") != 0;
    f->tensors = calloc(n ? (size_t)n : 1, sizeof *f->tensors);
    if (!f->tensors) {
        cJSON_Delete(h);
        fail(err, errlen, path, "out of memory%s", "", 0, 0);
        goto bad;
    }
    uint64_t data_start = 8 + hlen, data_size = f->size - data_start;
    for (const cJSON *e = h->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        if (!cJSON_IsObject(e)) {
            fail(err, errlen, path, "corrupt header: entry '%s' is not an object", e->string, 0, 0);
            cJSON_Delete(h);
            goto bad;
        }
        st_tensor *t = &f->tensors[f->n_tensors];
        if (parse_entry(t, e, data_size, data_start, path, err, errlen) != 0) {
            cJSON_Delete(h);
            goto bad;
        }
        t->data = (const char *)f->map + t->offset;
        f->n_tensors++;
    }
    cJSON_Delete(h);
    f->n_slots = 16;
    while (f->n_slots < 2u * (unsigned)f->n_tensors) f->n_slots *= 2;
    f->slots = malloc(sizeof *f->slots * f->n_slots);
    if (!f->slots) {
        fail(err, errlen, path, "out of memory%s", "", 0, 0);
        goto bad;
    }
    memset(f->slots, 0xff, sizeof *f->slots * f->n_slots);
    for (int i = 0; i < f->n_tensors; i++) {
        unsigned s = name_hash(f->tensors[i].name) & (f->n_slots - 1);
        while (f->slots[s] >= 0) {
            if (!strcmp(f->tensors[f->slots[s]].name, f->tensors[i].name)) {
                fail(err, errlen, path, "corrupt header: tensor '%s' appears twice", f->tensors[i].name, 0, 0);
                goto bad;
            }
            s = (s + 1) & (f->n_slots - 1);
        }
        f->slots[s] = i;
    }
    return 0;
bad:
    st_close(f);
    return -1;
}

void st_close(st_file *f) {
    free(f->slots);
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    if (f->map) munmap(f->map, f->size);
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    if (!f->slots) return NULL;
    for (unsigned s = name_hash(name) & (f->n_slots - 1); f->slots[s] >= 0; s = (s + 1) & (f->n_slots - 1))
        if (!strcmp(f->tensors[f->slots[s]].name, name)) return &f->tensors[f->slots[s]];
    return NULL;
}
