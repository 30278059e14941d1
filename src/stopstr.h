/* Incremental stop-string matcher over streamed text.
 *
 * Generated text arrives in pieces (one per token). stopstr_feed takes a piece and returns the text
 * that is safe to print now. It holds back
 *   - the tail that could still grow into a stop string: from the earliest position where the rest
 *     of the text is a proper prefix of some stop string, and
 *   - a trailing incomplete UTF-8 sequence, so a printed chunk never ends inside a character.
 * When a stop string completes, the text before it is returned, the stop string and anything after
 * it are not, and the matcher stays stopped until stopstr_reset. At the end of a generation that
 * did not stop, stopstr_flush returns what was held back.
 *
 * Memory: one buffer for the held-back text plus a piece, allocated at create time; it grows only
 * when a piece is larger than any before, so nothing is allocated per piece otherwise. */
#ifndef FLASHMOE_STOPSTR_H
#define FLASHMOE_STOPSTR_H
#include <stddef.h>

typedef enum {
    STOPSTR_OK = 0,    /* no stop string (yet) */
    STOPSTR_HIT,       /* a stop string completed, in this call or an earlier one */
    STOPSTR_ERR_ARG,   /* create: a NULL or empty stop string */
    STOPSTR_ERR_NOMEM, /* the piece was dropped; the matcher is unchanged */
} stopstr_status;

typedef struct stopstr stopstr;

/* Copies the n stop strings (n may be 0: then only incomplete UTF-8 is held back). */
stopstr_status stopstr_create(stopstr **out, const char *const *stops, int n);
void stopstr_free(stopstr *m);
/* Forgets held text and a hit: ready for the next generation. */
void stopstr_reset(stopstr *m);

/* Feeds len bytes. Sets *out / *out_len to the text to print now; the pointer stays valid until
 * the next call on m. After a hit the output is always empty. */
stopstr_status stopstr_feed(stopstr *m, const char *piece, size_t len, const char **out, size_t *out_len);

/* End of stream: the held-back text (empty after a hit); the matcher is empty afterwards. */
void stopstr_flush(stopstr *m, const char **out, size_t *out_len);

/* Index (in the create-time list) of the stop string that was hit, or -1. */
int stopstr_which(const stopstr *m);

#endif
