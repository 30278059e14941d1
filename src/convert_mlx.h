/* flashmoe convert from MLX checkpoints (mlx-community: mlx-lm / mlx-vlm, quantized or not) into the
 * packed format, with HF semantics: norms without mlx-lm's +1, conv1d kernels as [C, 1, K]. The
 * layout and where it was established are described at the top of convert_mlx.c. */
#ifndef FLASHMOE_CONVERT_MLX_H
#define FLASHMOE_CONVERT_MLX_H
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "config.h"
#include "convert.h"
#include "packed.h"

/* 1 when DIR holds an MLX checkpoint: config.json has "quantization", tensor names are mlx-lm's
 * (language_model.model.*, mlp.switch_mlp.*), or some tensor is stored quantized (U32); else 0. */
int convert_mlx_detect(const char *dir, const checkpoint *ck);

/* Writes OUT's config.json (the source's, less its "quantization" entries), resident.safetensors and
 * the expert files of layout lo. Quantized source tensors whose bits and group equal the target's are
 * copied bit-exactly; a target with more bits and the same group takes the same codes, scales and
 * biases (exact); anything else is dequantized to f32 and requantized minimising squared error.
 * Returns 0, or -1 with one line in err naming the file and the tensor. */
int convert_mlx_write(const checkpoint *ck, const model_config *c, const convert_opts *o, const packed_layout *lo,
                      char *err, size_t errlen);

/* MLX affine quantization: 2, 3, 4, 5, 6 or 8 bits. */
int mlx_bits_supported(int bits);
/* Values [first, first + n) of a bit stream of bits-wide values packed LSB first into little-endian
 * uint32 words (MLX's packing for every supported width), one per byte of q. */
void mlx_unpack(const uint32_t *words, size_t first, size_t n, int bits, uint8_t *q);
/* The inverse: ORs values into words, which must start zeroed where they are written. */
void mlx_pack(uint32_t *words, size_t first, size_t n, int bits, const uint8_t *q);

#endif
