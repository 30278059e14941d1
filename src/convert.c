/* flashmoe convert: HF checkpoint (F32/BF16/F16, per-expert or fused experts) -> packed directory.
 * mlx-community (MLX quantized) checkpoints are detected here and converted by convert_mlx.c. */
#include "convert.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "config.h"
#include "convert_mlx.h"
#include "experts.h"
#include "kernels.h"
#include "packed_writer.h"
#include "quant.h"
#include "threadpool.h"
#include "util.h"

static int copy_file(const char *from, const char *to, char *err, size_t errlen) {
    size_t len;
    char *data = util_read_file(from, &len, err, errlen);
    if (!data) return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(data, 1, len, f) == len;
    if (f && fclose(f)) ok = 0;
    free(data);
    if (!ok) snprintf(err, errlen, "%s: cannot write: %s", to, strerror(errno));
    return ok ? 0 : -1;
}

/* config, generation config, tokenizer and the like: every regular file but the weights */
static int copy_side_files(const char *src, const char *out, char *err, size_t errlen) {
    DIR *d = opendir(src);
    if (!d) {
        snprintf(err, errlen, "%s: cannot list: %s", src, strerror(errno));
        return -1;
    }
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (n[0] == '.' || (len > 12 && !strcmp(n + len - 12, ".safetensors")) ||
            !strcmp(n, "model.safetensors.index.json"))
            continue;
        char from[4096], to[4096];
        struct stat sb;
        if (util_path_join(from, sizeof from, src, n) || util_path_join(to, sizeof to, out, n)) continue;
        if (stat(from, &sb) || !S_ISREG(sb.st_mode)) continue;
        rc = copy_file(from, to, err, errlen);
    }
    closedir(d);
    return rc;
}

/* The non-expert tensors of the text model, and how each is stored. */
static int is_resident(const checkpoint *ck, const char *name) {
    if (!strcmp(name, "lm_head.weight")) return 1;
    if (strncmp(name, ck->prefix, strlen(ck->prefix))) return 0;
    const char *rest = name + strlen(ck->prefix);
    return strncmp(rest, "visual.", 7) && !strstr(rest, ".mlp.experts.");
}

typedef struct {
    const st_tensor *t;
    dtype store; /* F32 (vectors), BF16, or a quantized type */
    char out_name[300];
} resident_plan;

dtype convert_plan_dtype(int ndim, const int64_t *shape, const char *name, dtype dense, int group, int *kept_bf16) {
    if (ndim != 2 || shape[0] < 2) return ndim == 2 ? DTYPE_BF16 : DTYPE_F32;
    dtype want = dense;
    if (strstr(name, "mlp.gate.weight") && dense != DTYPE_BF16) want = DTYPE_Q8; /* routers keep 8 bits */
    if (want != DTYPE_BF16 && shape[1] % group) {
        *kept_bf16 = 1;
        return DTYPE_BF16;
    }
    return want;
}

static int write_resident(const checkpoint *ck, const convert_opts *o, pool *pl, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", o->out, PACKED_RESIDENT);
    int n = 0;
    for (int f = 0; f < ck->n_files; f++) n += ck->files[f].n_tensors;
    resident_plan *plan = calloc((size_t)n + 1, sizeof *plan);
    if (!plan) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    st_writer w;
    int np = 0, rc = -1;
    size_t max_elems = 0;
    if (st_writer_open(&w, path, err, errlen)) goto out;
    for (int f = 0; f < ck->n_files; f++)
        for (int i = 0; i < ck->files[f].n_tensors; i++) {
            const st_tensor *t = &ck->files[f].tensors[i];
            if (!is_resident(ck, t->name)) continue;
            if (ckpt_kernel_dtype(t->dtype) < 0) {
                snprintf(err, errlen, "%s: tensor '%s' has dtype %s, expected F32, BF16 or F16", ck->files[f].path,
                         t->name, st_dtype_name(t->dtype));
                goto out;
            }
            resident_plan *p = &plan[np++];
            int kept = 0;
            p->t = t;
            p->store = convert_plan_dtype(t->ndim, t->shape, t->name, o->dense, o->group, &kept);
            if (kept && !o->quiet)
                fprintf(stderr, "convert: %s: %lld columns do not divide into groups of %d: kept in bf16\n",
                        t->name, (long long)t->shape[1], o->group);
            if (strcmp(t->name, "lm_head.weight"))
                snprintf(p->out_name, sizeof p->out_name, "model.%s", t->name + strlen(ck->prefix));
            else
                snprintf(p->out_name, sizeof p->out_name, "%s", t->name);
            size_t elems = (size_t)(t->nbytes / st_dtype_size(t->dtype));
            max_elems = elems > max_elems ? elems : max_elems;
            if (p->store == DTYPE_F32) {
                if (st_writer_add(&w, p->out_name, ST_F32, t->ndim, t->shape, err, errlen) < 0) goto out;
            } else if (p->store == DTYPE_BF16) {
                if (st_writer_add(&w, p->out_name, ST_BF16, 2, t->shape, err, errlen) < 0) goto out;
            } else {
                char base[300];
                size_t len = strlen(p->out_name) - strlen(".weight");
                int64_t wshape[2] = {t->shape[0], t->shape[1] * dtype_bits(p->store) / 32};
                int64_t gshape[2] = {t->shape[0], t->shape[1] / o->group};
                snprintf(base, sizeof base, "%.*s.scales", (int)len, p->out_name);
                if (st_writer_add(&w, p->out_name, ST_U32, 2, wshape, err, errlen) < 0 ||
                    st_writer_add(&w, base, ST_BF16, 2, gshape, err, errlen) < 0)
                    goto out;
                snprintf(base, sizeof base, "%.*s.biases", (int)len, p->out_name);
                if (st_writer_add(&w, base, ST_BF16, 2, gshape, err, errlen) < 0) goto out;
            }
        }
    if (st_writer_begin_data(&w, "flashmoe-resident", err, errlen)) goto out;
    float *x = malloc(sizeof(float) * (max_elems ? max_elems : 1));
    void *buf = malloc(4 * (max_elems ? max_elems : 1));
    if (!x || !buf) {
        free(x);
        free(buf);
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < np; i++) {
        const st_tensor *t = plan[i].t;
        size_t elems = (size_t)(t->nbytes / st_dtype_size(t->dtype));
        qmat src = {.type = (dtype)ckpt_kernel_dtype(t->dtype), .rows = 1, .cols = (int)elems, .data = t->data};
        kernel_row_f32(x, &src, 0);
        int fail = 0;
        if (plan[i].store == DTYPE_F32) {
            fail = st_writer_write(&w, x, 4 * elems, err, errlen);
        } else if (plan[i].store == DTYPE_BF16) {
            uint16_t *b = buf;
            for (size_t k = 0; k < elems; k++) b[k] = f32_to_bf16(x[k]);
            fail = st_writer_write(&w, b, 2 * elems, err, errlen);
        } else {
            int rows = (int)t->shape[0], cols = (int)t->shape[1];
            size_t words = quant_words(plan[i].store, elems), groups = elems / o->group;
            uint32_t *q = buf;
            uint16_t *sc = malloc(2 * groups), *bi = malloc(2 * groups);
            fail = !sc || !bi ||
                   quant_rows_mt(pl, plan[i].store, QUANT_MSE, x, rows, cols, o->group, q, sc, bi) ||
                   st_writer_write(&w, q, 4 * words, err, errlen) || st_writer_write(&w, sc, 2 * groups, err, errlen) ||
                   st_writer_write(&w, bi, 2 * groups, err, errlen);
            if ((!sc || !bi) && fail) snprintf(err, errlen, "%s: out of memory", path);
            free(sc);
            free(bi);
        }
        if (fail) {
            free(x);
            free(buf);
            goto out;
        }
    }
    free(x);
    free(buf);
    rc = st_writer_close(&w, err, errlen);
out:
    if (w.f) st_writer_abort(&w);
    free(plan);
    return rc;
}

void convert_progress(const convert_opts *o, int layer, int n_layers, double t0, double bytes) {
    if (o->quiet) return;
    double dt = util_now_seconds() - t0, frac = (double)layer / n_layers;
    double eta = frac > 0 ? dt * (1 - frac) / frac : 0;
    int width = 30, done = (int)(frac * width), tty = isatty(2);
    if (!tty && layer != n_layers) return; /* a log gets the summary line only */
    fprintf(stderr, "%sconvert: [%.*s%*s] layer %d/%d, %.2f GB written, %.0f MB/s, ETA %.0fs   ", tty ? "\r" : "",
            done, "##############################", width - done, "", layer, n_layers, bytes / 1e9,
            dt > 0 ? bytes / dt / 1e6 : 0.0, eta);
    if (layer == n_layers) fputc('\n', stderr);
}

static int write_experts(const checkpoint *ck, const model_config *c, const convert_opts *o,
                         const packed_layout *lo, pool *pl, char *err, size_t errlen) {
    size_t n = (size_t)c->n_layers * c->n_experts;
    expert_view *table = calloc(n, sizeof *table);
    size_t mat = (size_t)c->expert_inter * c->hidden_size;
    float *x = malloc(sizeof(float) * mat);
    int rc = -1;
    if (!table || !x) {
        snprintf(err, errlen, "%s: out of memory", o->out);
        goto out;
    }
    if (experts_table_build(table, ck, c, err, errlen)) goto out;
    double t0 = util_now_seconds(), bytes = 0;
    for (int l = 0; l < c->n_layers; l++) {
        convert_progress(o, l, c->n_layers, t0, bytes);
        expert_file_writer w;
        if (expert_file_open(&w, o->out, l, c->n_experts, lo, err, errlen)) goto out;
        for (int e = 0; e < c->n_experts; e++) {
            const expert_view *v = &table[(size_t)l * c->n_experts + e];
            const qmat *m[3] = {&v->gate, &v->up, &v->down};
            const packed_part *parts[3] = {&lo->gate, &lo->up, &lo->down};
            unsigned char *rec = expert_file_record(&w);
            for (int p = 0; p < 3; p++) {
                for (int r = 0; r < m[p]->rows; r++) kernel_row_f32(x + (size_t)r * m[p]->cols, m[p], r);
                packed_fill_part(pl, lo, parts[p], rec, x, m[p]->rows, m[p]->cols);
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
    free(table);
    free(x);
    return rc;
}

int convert_run(const convert_opts *o, char *err, size_t errlen) {
    model_config c;
    checkpoint ck;
    struct stat sb;
    if (packed_is_dir(o->src)) {
        snprintf(err, errlen, "%s: already a packed flashmoe directory", o->src);
        return -1;
    }
    if (config_load(&c, o->src, err, errlen)) return -1;
    if (ckpt_open_flags(&ck, o->src, CKPT_MLX_NAMES, err, errlen)) {
        config_free(&c);
        return -1;
    }
    int rc = -1, mlx = convert_mlx_detect(o->src, &ck);
    packed_layout lo;
    dtype et = o->experts;
    if (packed_layout_make(&lo, et, o->group, c.hidden_size, c.expert_inter)) {
        if (!o->quiet)
            fprintf(stderr, "convert: experts (%d x %d) do not divide into groups of %d: kept in bf16\n",
                    c.hidden_size, c.expert_inter, o->group);
        et = DTYPE_BF16;
        packed_layout_make(&lo, et, o->group, c.hidden_size, c.expert_inter);
    }
    if (stat(o->out, &sb) == 0) {
        if (!o->force) {
            snprintf(err, errlen, "%s: already exists (use --force to overwrite)", o->out);
            goto out;
        }
        char manifest[4096];
        snprintf(manifest, sizeof manifest, "%s/%s", o->out, PACKED_MANIFEST);
        unlink(manifest); /* until the new one is written, the directory reads as incomplete */
    } else if (mkdir(o->out, 0755)) {
        snprintf(err, errlen, "%s: cannot create: %s", o->out, strerror(errno));
        goto out;
    }
    if (copy_side_files(o->src, o->out, err, errlen)) goto out;
    if (mlx) {
        if (convert_mlx_write(&ck, &c, o, &lo, err, errlen)) goto out;
    } else {
        /* quantization spreads rows over every core (the output does not depend on how many) */
        pool *pl = pool_create((int)sysconf(_SC_NPROCESSORS_ONLN));
        int bad = write_resident(&ck, o, pl, err, errlen) || write_experts(&ck, &c, o, &lo, pl, err, errlen);
        pool_free(pl);
        if (bad) goto out;
    }
    char dense[8];
    snprintf(dense, sizeof dense, "%s", packed_dtype_name(o->dense));
    rc = packed_write_manifest(o->out, &lo, c.n_layers, c.n_experts, dense, o->src, err, errlen);
out:
    ckpt_close(&ck);
    config_free(&c);
    return rc;
}
