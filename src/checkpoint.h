/* A Hugging Face checkpoint directory: one model.safetensors, or shards listed in
 * model.safetensors.index.json. Every tensor is fetched by name with the shape the config implies and a
 * float dtype (F32, BF16, F16); it is used where it lies in the mapping, in its own dtype. */
#ifndef FLASHMOE_CHECKPOINT_H
#define FLASHMOE_CHECKPOINT_H
#include "safetensors.h"
#include "tensor.h"

typedef struct {
    char *dir;
    st_file *files;
    int n_files;
    const char *prefix; /* "model.language_model." (multimodal wrapper) or "model."; with CKPT_MLX_NAMES
                         * also "language_model.model." (mlx-lm / mlx-vlm) */
} checkpoint;

enum {
    CKPT_MLX_NAMES = 1, /* accept mlx-lm's tensor names (language_model.model.*): for the converter only */
};

/* Opens an HF checkpoint for the engine. A checkpoint with mlx-lm's names is refused with a message
 * that says to convert it first (its norms, conv kernels and experts are laid out differently). */
int ckpt_open(checkpoint *ck, const char *dir, char *err, size_t errlen);
int ckpt_open_flags(checkpoint *ck, const char *dir, int flags, char *err, size_t errlen);
void ckpt_close(checkpoint *ck);

/* Finds NAME in any shard; NULL if absent. *file (optional) receives the shard. */
const st_tensor *ckpt_find(const checkpoint *ck, const char *name, const st_file **file);

/* Tensor NAME of exactly the given shape (ndim dims) and a float dtype; -1 with a message naming the
 * file, the tensor, and expected against actual. */
int ckpt_get(const checkpoint *ck, const char *name, int ndim, const int64_t *shape, const st_tensor **t,
             const st_file **file, char *err, size_t errlen);
/* A [rows x cols] matrix as a kernel view onto the mapping. */
int ckpt_matrix(const checkpoint *ck, const char *name, int rows, int cols, qmat *out, char *err, size_t errlen);
/* A vector of n values (any float dtype; trailing dims of size 1 allowed via shape), copied to f32. */
int ckpt_vector_f32(const checkpoint *ck, const char *name, int ndim, const int64_t *shape, float *out, char *err,
                    size_t errlen);

/* F32/BF16/F16 to the kernel dtype; -1 for anything else. */
int ckpt_kernel_dtype(st_dtype t);

#endif
