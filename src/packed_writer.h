/* Writing a packed model directory (see packed.h): the resident safetensors file, the per-layer expert
 * files and the manifest. Everything streams: a tensor or a record at a time. */
#ifndef FLASHMOE_PACKED_WRITER_H
#define FLASHMOE_PACKED_WRITER_H
#include <stdint.h>
#include <stdio.h>

#include "packed.h"
#include "safetensors.h"
#include "threadpool.h"

/* A safetensors writer: every tensor is declared first (name, dtype, shape), then the header is
 * written, then each tensor's bytes in declaration order. */
typedef struct {
    char name[256];
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} st_spec;

typedef struct {
    FILE *f;
    char *path;
    st_spec *specs;
    int n, cap, next;
    uint64_t written; /* data bytes written so far */
    uint64_t part;    /* bytes of the current tensor written so far */
} st_writer;

int st_writer_open(st_writer *w, const char *path, char *err, size_t errlen);
/* Declares a tensor; returns its index, or -1. */
int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape, char *err,
                  size_t errlen);
/* Writes the header (after every add). */
int st_writer_begin_data(st_writer *w, const char *format_tag, char *err, size_t errlen);
/* Bytes of the tensors in declaration order: a tensor may be written in several calls. */
int st_writer_write(st_writer *w, const void *data, size_t nbytes, char *err, size_t errlen);
int st_writer_close(st_writer *w, char *err, size_t errlen); /* checks every tensor was written */
void st_writer_abort(st_writer *w);

/* One layer's expert file. */
typedef struct {
    FILE *f;
    char path[4096];
    int layer, n_experts, written;
    packed_layout lo;
    unsigned char *record; /* one record of scratch, zeroed padding */
} expert_file_writer;

int expert_file_open(expert_file_writer *w, const char *dir, int layer, int n_experts, const packed_layout *lo,
                     char *err, size_t errlen);
/* The record buffer to fill for the next expert (record_bytes, zeroed), and its write. */
unsigned char *expert_file_record(expert_file_writer *w);
int expert_file_append(expert_file_writer *w, char *err, size_t errlen);
int expert_file_close(expert_file_writer *w, char *err, size_t errlen);

/* Fills one part (data, scales, biases) of a record from f32 values [rows x cols]: converted to bf16, or
 * quantized with the layout's group, minimising each group's error (rows spread over the pool; the
 * output does not depend on the number of threads). */
void packed_fill_part(pool *p, const packed_layout *lo, const packed_part *part, unsigned char *record,
                      const float *x, int rows, int cols);

/* flashmoe.json, written last: a directory without it is an incomplete conversion. */
int packed_write_manifest(const char *dir, const packed_layout *lo, int n_layers, int n_experts,
                          const char *dense, const char *source, char *err, size_t errlen);

const char *packed_dtype_name(dtype t); /* "bf16", "q8", ... */

#endif
