/* Token sampler: turns one row of logits into a token id.
 *
 * A sampler is created once for a vocabulary size; every buffer it needs is allocated then, so
 * sampler_sample allocates nothing.
 *
 * Order of operations in sampler_sample (the llama.cpp / HF order):
 *   1. penalties, on the tokens recorded by sampler_accept (within the last penalty_last_n of them,
 *      or all of them when penalty_last_n is 0):
 *        repetition (HF): logit > 0 ? logit / repeat_penalty : logit * repeat_penalty
 *        then frequency and presence (OpenAI): logit -= count * frequency_penalty
 *                                                       + (count > 0) * presence_penalty
 *   2. temperature <= 0: greedy, the argmax of the penalised logits (lowest id on ties); stop here.
 *   3. top-k: keep the top_k highest logits (top_k <= 0: all).
 *   4. temperature: logits / temperature, then softmax over the kept tokens.
 *   5. top-p: keep the smallest prefix, in order of decreasing probability, whose probability mass
 *      (of the distribution after step 4) is >= top_p (top_p >= 1: all).
 *      min-p: keep tokens whose probability is >= min_p * (highest probability) (min_p <= 0: all).
 *      Both are applied (min-p after top-p, as HF and llama.cpp do; since min-p compares each
 *      probability with the largest one, which top-p always keeps, the result is the intersection).
 *   6. draw from the kept tokens in proportion to their probabilities (xoshiro256** PRNG).
 * Ties in the ordering are broken by the lower token id, so the result is deterministic. */
#ifndef FLASHMOE_SAMPLER_H
#define FLASHMOE_SAMPLER_H
#include <stdint.h>

typedef struct {
    float temperature;       /* <= 0: greedy */
    int top_k;               /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off; > 0 */
    float presence_penalty;  /* 0: off */
    float frequency_penalty; /* 0: off */
    int penalty_last_n;      /* penalties look at the last N accepted tokens; 0: all of them */
    uint64_t seed;
} sampler_params;

/* temperature 1, everything else off, penalty_last_n 0, seed 0. */
sampler_params sampler_params_default(void);

typedef enum {
    SAMPLER_OK = 0,
    SAMPLER_ERR_ARG,   /* vocab_size < 1, repeat_penalty <= 0, penalty_last_n < 0, NaN parameter */
    SAMPLER_ERR_NOMEM,
} sampler_status;

typedef struct sampler sampler;

/* Creates a sampler for vocab_size tokens. On error *out is NULL. */
sampler_status sampler_create(sampler **out, int vocab_size, const sampler_params *params);
void sampler_free(sampler *s);

const char *sampler_status_string(sampler_status st);

/* Forgets the accepted tokens (a new conversation); the PRNG stream continues. */
void sampler_reset(sampler *s);
/* Restarts the PRNG stream from seed. */
void sampler_set_seed(sampler *s, uint64_t seed);
/* Parameters can change between calls (e.g. a command in a chat); penalty_last_n is fixed at
 * create time and ignored here. Returns SAMPLER_ERR_ARG (and changes nothing) on a bad value. */
sampler_status sampler_set_params(sampler *s, const sampler_params *params);
const sampler_params *sampler_get_params(const sampler *s);

/* Records a token for the penalties (prompt tokens and generated tokens alike: HF applies the
 * repetition penalty to the whole input). Ids outside [0, vocab) are ignored. */
void sampler_accept(sampler *s, int token);

/* Picks the next token from logits[vocab_size], which is not modified. */
int sampler_sample(sampler *s, const float *logits);

/* The tokens that survived the filters in the last sampler_sample (not for greedy), with their
 * probabilities renormalised over the kept set, in no particular order. Valid until the next
 * sampler_sample. Returns the count. */
int sampler_kept(const sampler *s, const int **ids, const float **probs);

#endif
