#include "packed.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"
#include "util.h"

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Bytes of the data of a [rows x cols] matrix of type t. */
static size_t data_bytes(dtype t, int rows, int cols) {
    size_t n = (size_t)rows * cols;
    if (t == DTYPE_BF16 || t == DTYPE_F16) return 2 * n;
    if (t == DTYPE_F32) return 4 * n;
    return 4 * quant_words(t, n);
}

static size_t place(packed_part *p, dtype t, int group, int rows, int cols, size_t at) {
    p->data = at;
    at = round_up(at + data_bytes(t, rows, cols), 64);
    if (t >= DTYPE_Q8) {
        size_t groups = (size_t)rows * cols / group;
        p->scales = at;
        at = round_up(at + 2 * groups, 64);
        p->biases = at;
        at = round_up(at + 2 * groups, 64);
    } else {
        p->scales = p->biases = 0;
    }
    return at;
}

int packed_layout_make(packed_layout *lo, dtype type, int group, int hidden, int inter) {
    memset(lo, 0, sizeof *lo);
    if (type != DTYPE_BF16 && type != DTYPE_Q8 && type != DTYPE_Q4 && type != DTYPE_Q3 && type != DTYPE_Q2)
        return -1;
    if (type >= DTYPE_Q8 && (group <= 0 || hidden % group || inter % group || group % 32)) return -1;
    lo->type = type;
    lo->group = type >= DTYPE_Q8 ? group : 0;
    lo->hidden = hidden;
    lo->inter = inter;
    size_t at = place(&lo->gate, type, group, inter, hidden, 0);
    at = place(&lo->up, type, group, inter, hidden, at);
    at = place(&lo->down, type, group, hidden, inter, at);
    lo->record_bytes = round_up(at, PACKED_ALIGN);
    return 0;
}

static qmat view(const packed_layout *lo, const packed_part *p, const char *rec, int rows, int cols) {
    qmat m = {.type = lo->type, .rows = rows, .cols = cols, .data = rec + p->data, .group = lo->group};
    if (lo->type >= DTYPE_Q8) {
        m.scales = (const uint16_t *)(rec + p->scales);
        m.biases = (const uint16_t *)(rec + p->biases);
    }
    return m;
}

void packed_expert_views(const packed_layout *lo, const void *record, qmat *gate, qmat *up, qmat *down) {
    const char *rec = record;
    *gate = view(lo, &lo->gate, rec, lo->inter, lo->hidden);
    *up = view(lo, &lo->up, rec, lo->inter, lo->hidden);
    *down = view(lo, &lo->down, rec, lo->hidden, lo->inter);
}

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

void packed_header_encode(const packed_file_header *h, unsigned char out[PACKED_HEADER_BYTES]) {
    memset(out, 0, PACKED_HEADER_BYTES);
    memcpy(out, PACKED_MAGIC, 8);
    put32(out + 8, h->version);
    put32(out + 12, h->layer);
    put32(out + 16, h->n_experts);
    put32(out + 20, h->type);
    put32(out + 24, h->group);
    put32(out + 28, h->hidden);
    put32(out + 32, h->inter);
    put64(out + 40, h->record_bytes);
    put64(out + 48, h->first_record);
}

int packed_header_decode(packed_file_header *h, const unsigned char in[PACKED_HEADER_BYTES], const char *path,
                         char *err, size_t errlen) {
    if (memcmp(in, PACKED_MAGIC, 8)) {
        snprintf(err, errlen, "%s: not a flashmoe expert file (bad magic)", path);
        return -1;
    }
    h->version = get32(in + 8);
    if (h->version != PACKED_VERSION) {
        snprintf(err, errlen, "%s: expert file version %u, this build reads version %d", path, h->version,
                 PACKED_VERSION);
        return -1;
    }
    h->layer = get32(in + 12);
    h->n_experts = get32(in + 16);
    h->type = get32(in + 20);
    h->group = get32(in + 24);
    h->hidden = get32(in + 28);
    h->inter = get32(in + 32);
    h->record_bytes = get64(in + 40);
    h->first_record = get64(in + 48);
    return 0;
}

int packed_is_dir(const char *dir) {
    char path[4096];
    return util_path_join(path, sizeof path, dir, PACKED_MANIFEST) == 0 && util_file_exists(path);
}

void packed_expert_path(char *out, size_t n, const char *dir, int layer) {
    snprintf(out, n, "%s/experts-%03d.bin", dir, layer);
}

static dtype dtype_from_name(const char *s) {
    static const struct { const char *name; dtype t; } names[] = {
        {"bf16", DTYPE_BF16}, {"q8", DTYPE_Q8}, {"q4", DTYPE_Q4}, {"q3", DTYPE_Q3}, {"q2", DTYPE_Q2}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name)) return names[i].t;
    return DTYPE_COUNT;
}

/* Checks one expert file against the manifest: size, magic, version, and every header field. */
static int check_expert_file(const packed_manifest *m, const char *dir, int layer, char *err, size_t errlen) {
    char path[4096];
    packed_expert_path(path, sizeof path, dir, layer);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    unsigned char hdr[PACKED_HEADER_BYTES];
    struct stat sb;
    int rc = -1;
    ssize_t got = pread(fd, hdr, sizeof hdr, 0);
    if (fstat(fd, &sb) || got != (ssize_t)sizeof hdr) {
        snprintf(err, errlen, "%s: truncated: no complete header", path);
        goto out;
    }
    packed_file_header h;
    if (packed_header_decode(&h, hdr, path, err, errlen)) goto out;
    const packed_layout *lo = &m->layout;
    if (h.layer != (uint32_t)layer || h.n_experts != (uint32_t)m->n_experts || h.type != (uint32_t)lo->type ||
        h.group != (uint32_t)lo->group || h.hidden != (uint32_t)lo->hidden || h.inter != (uint32_t)lo->inter ||
        h.record_bytes != lo->record_bytes || h.first_record != PACKED_HEADER_BYTES) {
        snprintf(err, errlen, "%s: header disagrees with %s (layer %u, %u experts, %s, group %u, %ux%u, record %llu)",
                 path, PACKED_MANIFEST, h.layer, h.n_experts, dtype_name((dtype)h.type), h.group, h.hidden, h.inter,
                 (unsigned long long)h.record_bytes);
        goto out;
    }
    uint64_t want = PACKED_HEADER_BYTES + (uint64_t)m->n_experts * lo->record_bytes;
    if ((uint64_t)sb.st_size != want) {
        snprintf(err, errlen, "%s: %s: %llu bytes, expected %llu", path,
                 (uint64_t)sb.st_size < want ? "truncated" : "too long", (unsigned long long)sb.st_size,
                 (unsigned long long)want);
        goto out;
    }
    rc = 0;
out:
    close(fd);
    return rc;
}

static int json_int(const cJSON *o, const char *key, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e9) return -1;
    *out = (int)v->valuedouble;
    return 0;
}

int packed_manifest_load(packed_manifest *m, const char *dir, char *err, size_t errlen) {
    char path[4096];
    memset(m, 0, sizeof *m);
    snprintf(path, sizeof path, "%s/%s", dir, PACKED_MANIFEST);
    char *text = util_read_file(path, NULL, err, errlen);
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    int rc = -1, version = -1, group = 0, hidden = 0, inter = 0, record = 0;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(root, "experts");
    const cJSON *dense = cJSON_GetObjectItemCaseSensitive(root, "dense");
    const cJSON *et = cJSON_GetObjectItemCaseSensitive(ex, "dtype");
    if (!cJSON_IsObject(root) || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "flashmoe-packed")) {
        snprintf(err, errlen, "%s: not a flashmoe manifest (malformed JSON or wrong 'format')", path);
        goto out;
    }
    if (json_int(root, "version", &version) || version != PACKED_VERSION) {
        snprintf(err, errlen, "%s: manifest version %d, this build reads version %d", path, version, PACKED_VERSION);
        goto out;
    }
    if (!cJSON_IsObject(ex) || !cJSON_IsString(et) || json_int(ex, "n_layers", &m->n_layers) ||
        json_int(ex, "n_experts", &m->n_experts) || json_int(ex, "group", &group) || json_int(ex, "hidden", &hidden) ||
        json_int(ex, "inter", &inter) || json_int(ex, "record_bytes", &record)) {
        snprintf(err, errlen, "%s: manifest lacks expert fields (dtype, n_layers, n_experts, group, hidden, "
                 "inter, record_bytes)", path);
        goto out;
    }
    if (packed_layout_make(&m->layout, dtype_from_name(et->valuestring), group, hidden, inter) ||
        m->layout.record_bytes != (size_t)record) {
        snprintf(err, errlen, "%s: inconsistent expert layout (%s, group %d, %dx%d, record %d bytes)", path,
                 et->valuestring, group, hidden, inter, record);
        goto out;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(dense, "dtype");
    snprintf(m->dense, sizeof m->dense, "%s", cJSON_IsString(dt) ? dt->valuestring : "?");
    for (int l = 0; l < m->n_layers; l++)
        if (check_expert_file(m, dir, l, err, errlen)) goto out;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}
