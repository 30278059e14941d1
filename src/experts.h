/* The one seam between the layer math and where expert weights come from.
 *
 * The MoE block asks for "experts ids[0..n) of layer l" and gets a view of each expert's three matrices:
 * gate [inter x hidden], up [inter x hidden], down [hidden x inter]. Sources differ in where the bytes
 * live: views into the mmapped safetensors (here), or buffers filled from disk by the streaming engine.
 * The views stay valid until the next fetch on the same source. */
#ifndef FLASHMOE_EXPERTS_H
#define FLASHMOE_EXPERTS_H
#include <stddef.h>

#include "checkpoint.h"
#include "config.h"
#include "tensor.h"

typedef struct {
    qmat gate, up, down;
} expert_view;

typedef struct expert_source expert_source;
typedef struct {
    /* Fills out[i] for ids[i], i < n. Returns 0, or -1 with a one-line message in err. */
    int (*fetch)(expert_source *s, int layer, const int *ids, int n, expert_view *out, char *err, size_t errlen);
    void (*free)(expert_source *s);
} expert_source_ops;

struct expert_source {
    const expert_source_ops *ops;
};

static inline int experts_fetch(expert_source *s, int layer, const int *ids, int n, expert_view *out, char *err,
                                size_t errlen) {
    return s->ops->fetch(s, layer, ids, n, out, err, errlen);
}
static inline void experts_free(expert_source *s) {
    if (s) s->ops->free(s);
}

/* Experts of an HF checkpoint, per expert (mlp.experts.E.{gate,up,down}_proj.weight) or fused
 * (mlp.experts.gate_up_proj [E, 2I, H], gate rows first; mlp.experts.down_proj [E, H, I]), used in place.
 * Every expert's shapes and dtypes are checked here, at load. */
expert_source *experts_open_mapped(const checkpoint *ck, const model_config *c, char *err, size_t errlen);

#endif
