/* The model's settings, read from an HF checkpoint's config.json (and generation_config.json).
 *
 * Accepted: model_type "qwen3_5_moe" with the text settings under "text_config" (released checkpoints,
 * which also carry a vision tower that we ignore), or "qwen3_5_moe_text" at the top level. Fields absent
 * from the file take the defaults of transformers' Qwen3_5MoeTextConfig, as transformers itself does; every
 * shape is later checked against the tensors, so a wrong value is reported, never silently used. */
#ifndef FLASHMOE_CONFIG_H
#define FLASHMOE_CONFIG_H
#include <stddef.h>

#define CONFIG_MAX_EOS 8
/* Largest RoPE dimension (head_dim x partial_rotary_factor) accepted; attention keeps its frequencies on the stack. */
#define CONFIG_MAX_ROPE_DIM 1024

typedef enum { LAYER_LINEAR_ATTENTION, LAYER_FULL_ATTENTION } layer_type;

typedef struct {
    int vocab_size;
    int hidden_size;
    int n_layers;
    layer_type *layer_types; /* [n_layers] */
    /* gated attention (full-attention layers) */
    int n_heads, n_kv_heads, head_dim;
    int rope_dim; /* rotated dims at the front of each head: head_dim * partial_rotary_factor */
    double rope_theta;
    /* gated delta net (linear-attention layers) */
    int lin_k_heads, lin_v_heads, lin_k_dim, lin_v_dim, conv_kernel;
    /* sparse MoE */
    int n_experts, top_k, expert_inter, shared_inter;
    float norm_eps;
    int tie_embeddings;
    int max_position_embeddings;
    /* from generation_config.json (absent file: none) */
    int eos_ids[CONFIG_MAX_EOS];
    int n_eos;
} model_config;

/* Reads DIR/config.json and DIR/generation_config.json. Returns 0, or -1 with a one-line message in err. */
int config_load(model_config *c, const char *dir, char *err, size_t errlen);
void config_free(model_config *c);

#endif
