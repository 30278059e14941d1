/* Incremental stop-string matcher; see stopstr.h. */
#include "stopstr.h"

#include <stdlib.h>
#include <string.h>

struct stopstr {
    char **stops;
    size_t *stop_len;
    int n_stops;
    size_t max_len; /* longest stop string */

    /* buf[start, start + held) is the held-back text; a feed appends the piece after it */
    char *buf;
    size_t cap, start, held;
    int hit; /* index of the stop string hit, or -1 */
};

stopstr_status stopstr_create(stopstr **out, const char *const *stops, int n) {
    *out = NULL;
    if (n < 0) return STOPSTR_ERR_ARG;
    for (int i = 0; i < n; i++)
        if (!stops[i] || !stops[i][0]) return STOPSTR_ERR_ARG;
    stopstr *m = calloc(1, sizeof *m);
    if (!m) return STOPSTR_ERR_NOMEM;
    m->hit = -1;
    m->n_stops = n;
    if (n > 0) {
        m->stops = calloc((size_t)n, sizeof *m->stops);
        m->stop_len = calloc((size_t)n, sizeof *m->stop_len);
        if (!m->stops || !m->stop_len) goto nomem;
    }
    for (int i = 0; i < n; i++) {
        m->stop_len[i] = strlen(stops[i]);
        if (!(m->stops[i] = strdup(stops[i]))) goto nomem;
        if (m->stop_len[i] > m->max_len) m->max_len = m->stop_len[i];
    }
    m->cap = 256 + 2 * m->max_len;
    if (!(m->buf = malloc(m->cap))) goto nomem;
    *out = m;
    return STOPSTR_OK;
nomem:
    stopstr_free(m);
    return STOPSTR_ERR_NOMEM;
}

void stopstr_free(stopstr *m) {
    if (!m) return;
    for (int i = 0; i < m->n_stops && m->stops; i++) free(m->stops[i]);
    free(m->stops);
    free(m->stop_len);
    free(m->buf);
    free(m);
}

void stopstr_reset(stopstr *m) {
    m->start = m->held = 0;
    m->hit = -1;
}

int stopstr_which(const stopstr *m) { return m->hit; }

/* Length of the complete UTF-8 prefix of s[0..n): a trailing lead byte whose continuation bytes
 * have not all arrived yet is cut off. Invalid bytes are not held (they will never complete). */
static size_t utf8_complete_len(const char *s, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xc0) == 0x80) continue; /* continuation byte: look further back */
        size_t need = c >= 0xf8 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

stopstr_status stopstr_feed(stopstr *m, const char *piece, size_t len, const char **out, size_t *out_len) {
    *out = m->buf;
    *out_len = 0;
    if (m->hit >= 0) return STOPSTR_HIT;

    /* move the held text to the front, then append the piece */
    if (m->start) memmove(m->buf, m->buf + m->start, m->held);
    m->start = 0;
    if (m->held + len > m->cap) {
        size_t cap = m->cap;
        while (cap < m->held + len) cap *= 2;
        char *b = realloc(m->buf, cap);
        if (!b) return STOPSTR_ERR_NOMEM;
        m->buf = b;
        m->cap = cap;
        *out = b;
    }
    memcpy(m->buf + m->held, piece, len);
    size_t n = m->held + len;
    const char *t = m->buf;

    /* the earliest complete stop string; the held text held none, but one may start inside it */
    for (size_t i = 0; i < n; i++) {
        for (int s = 0; s < m->n_stops; s++) {
            if (m->stop_len[s] <= n - i && !memcmp(t + i, m->stops[s], m->stop_len[s])) {
                m->hit = s;
                m->held = 0;
                *out_len = i;
                return STOPSTR_HIT;
            }
        }
    }

    /* hold back from the earliest position whose tail is a proper prefix of a stop string */
    size_t keep = n;
    size_t first = n > m->max_len ? n - m->max_len : 0;
    for (size_t i = first; i < n && keep == n; i++) {
        for (int s = 0; s < m->n_stops; s++) {
            if (n - i < m->stop_len[s] && !memcmp(t + i, m->stops[s], n - i)) {
                keep = i;
                break;
            }
        }
    }
    keep = utf8_complete_len(t, keep);
    *out_len = keep;
    m->start = keep;
    m->held = n - keep;
    return STOPSTR_OK;
}

void stopstr_flush(stopstr *m, const char **out, size_t *out_len) {
    *out = m->buf + m->start;
    *out_len = m->hit >= 0 ? 0 : m->held;
    m->start = m->held = 0;
}
