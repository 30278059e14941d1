/* safetensors files, mapped read-only and used in place.
 *
 * On disk:  u64 (little-endian) N | N bytes of JSON header | data
 * header:   { "NAME": {"dtype": "F32"|"F16"|"BF16"|..., "shape": [d0, d1, ...],
 *                      "data_offsets": [begin, end]}, ..., "__metadata__": {...} }
 * Offsets are relative to the first data byte; end - begin must equal the product of the shape times
 * the element size. Every header field is checked against the file before a tensor is handed out. */
#ifndef FLASHMOE_SAFETENSORS_H
#define FLASHMOE_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum { ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_U32, ST_I16, ST_I8, ST_U8, ST_BOOL, ST_OTHER } st_dtype;

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t offset; /* absolute byte offset in the file */
    uint64_t nbytes;
    const void *data; /* inside the mapping */
} st_tensor;

typedef struct {
    char *path;
    int fd;
    void *map;
    size_t size;
    st_tensor *tensors;
    int n_tensors;
    int *slots; /* open-addressing hash of tensor indices by name (-1 empty) */
    unsigned n_slots;
} st_file;

/* Maps and validates PATH. Returns 0, or -1 with a one-line message naming the file in err. */
int st_open(st_file *f, const char *path, char *err, size_t errlen);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
const char *st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);

#endif
