/* flashmoe's packed model directory (written by `flashmoe convert` and `flashmoe synth`).
 *
 *   DIR/flashmoe.json          manifest: format name, version, expert layout, list of files with sizes
 *   DIR/resident.safetensors   every non-expert weight, HF names with the "model." prefix; quantized
 *                              dense weights MLX-style: X.weight (U32 words), X.scales, X.biases (BF16)
 *   DIR/experts-LLL.bin        the experts of layer LLL (one file per layer)
 *   DIR/config.json, generation_config.json, tokenizer*.json   copied from the source
 *
 * An expert file is a 4096-byte header followed by n_experts records of record_bytes each (a multiple of
 * 4096, so that every record can be read with O_DIRECT in one request):
 *
 *   offset  size  field
 *   0       8     magic "FMOEXPRT"
 *   8       4     version (PACKED_VERSION)
 *   12      4     layer
 *   16      4     n_experts
 *   20      4     dtype (tensor.h dtype: BF16, Q8, Q4, Q3, Q2)
 *   24      4     group (quantized) or 0
 *   28      4     hidden
 *   32      4     inter
 *   36      4     reserved (0)
 *   40      8     record_bytes
 *   48      8     offset of the first record (4096)
 *   56..4095      zero
 *
 * One record holds one expert: gate [inter x hidden], up [inter x hidden], down [hidden x inter], each as
 * its data (bf16 values, or uint32 words) followed, when quantized, by bf16 scales and bf16 biases; every
 * part starts at a multiple of 64 bytes within the record. packed_layout() computes the offsets; all
 * little-endian. */
#ifndef FLASHMOE_PACKED_H
#define FLASHMOE_PACKED_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

#define PACKED_MAGIC "FMOEXPRT"
#define PACKED_VERSION 1
#define PACKED_MANIFEST "flashmoe.json"
#define PACKED_RESIDENT "resident.safetensors"
#define PACKED_HEADER_BYTES 4096
#define PACKED_ALIGN 4096

/* Where the parts of one matrix lie in a record (bytes from the record's start). */
typedef struct {
    size_t data, scales, biases; /* scales/biases: 0 when not quantized */
} packed_part;

typedef struct {
    dtype type;
    int group, hidden, inter;
    packed_part gate, up, down;
    size_t record_bytes;
} packed_layout;

/* Offsets of the parts for experts of the given type and shape; -1 if the type/group cannot hold them
 * (group must divide hidden and inter for quantized types). */
int packed_layout_make(packed_layout *lo, dtype type, int group, int hidden, int inter);

/* Views of one expert's matrices over a record in memory. */
void packed_expert_views(const packed_layout *lo, const void *record, qmat *gate, qmat *up, qmat *down);

typedef struct {
    uint32_t version, layer, n_experts, type, group, hidden, inter;
    uint64_t record_bytes, first_record;
} packed_file_header;

void packed_header_encode(const packed_file_header *h, unsigned char out[PACKED_HEADER_BYTES]);
/* Decodes and checks magic and version; -1 with "PATH: ..." in err. */
int packed_header_decode(packed_file_header *h, const unsigned char in[PACKED_HEADER_BYTES], const char *path,
                         char *err, size_t errlen);

/* The parsed manifest of a packed directory, checked against its expert files (sizes and headers). */
typedef struct {
    int n_layers, n_experts;
    packed_layout layout;
    char dense[16]; /* dense weights' type as written ("bf16", "q8", ...) */
} packed_manifest;

int packed_is_dir(const char *dir); /* DIR/flashmoe.json exists */
int packed_manifest_load(packed_manifest *m, const char *dir, char *err, size_t errlen);
/* DIR/experts-LLL.bin */
void packed_expert_path(char *out, size_t n, const char *dir, int layer);

#endif
