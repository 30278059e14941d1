/* Qwen chat templates and the thinking budget; the rules are in chat_template.h. The code follows
 * the Jinja templates statement by statement, with the Jinja expression in the comments. */
#include "chat_template.h"

#include <stdlib.h>
#include <string.h>

/* ---- string views ---- */

typedef struct {
    const char *p;
    size_t n;
} sv;

static sv sv_of(const char *s) { return (sv){s ? s : "", s ? strlen(s) : 0}; }

/* Length of the whitespace character starting at s[0..n), or 0. Whitespace is what Python's
 * str.isspace() accepts (Jinja's trim is str.strip()): U+0009-000D, U+001C-001F, U+0020, U+0085,
 * U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000. */
static size_t space_len_at(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3) {
        if (s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80) return 3; /* U+1680 */
        if (s[0] == 0xe2 && s[1] == 0x80 &&
            ((s[2] >= 0x80 && s[2] <= 0x8a) || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf))
            return 3;                                                                  /* U+2000-200A, U+2028, U+2029, U+202F */
        if (s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f) return 3; /* U+205F */
        if (s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80) return 3; /* U+3000 */
    }
    return 0;
}

/* Length of the whitespace character ending at s[n), or 0. Continuation bytes cannot start a
 * character, so looking back 1, 2 and 3 bytes is unambiguous for valid UTF-8. */
static size_t space_len_before(const unsigned char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++)
        if (space_len_at(s + n - k, k) == k) return k;
    return 0;
}

/* Jinja `|trim` (Python str.strip()). */
static sv sv_trim(sv s) {
    size_t k;
    while ((k = space_len_at((const unsigned char *)s.p, s.n))) s.p += k, s.n -= k;
    while ((k = space_len_before((const unsigned char *)s.p, s.n))) s.n -= k;
    return s;
}

/* str.lstrip('\n') and str.rstrip('\n') */
static sv sv_lstrip_nl(sv s) {
    while (s.n && s.p[0] == '\n') s.p++, s.n--;
    return s;
}
static sv sv_rstrip_nl(sv s) {
    while (s.n && s.p[s.n - 1] == '\n') s.n--;
    return s;
}

/* Offset of the first / last occurrence of needle in s, or -1. */
static long sv_find(sv s, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= s.n; i++)
        if (!memcmp(s.p + i, needle, m)) return (long)i;
    return -1;
}
static long sv_rfind(sv s, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = s.n >= m ? s.n - m + 1 : 0; i-- > 0;)
        if (!memcmp(s.p + i, needle, m)) return (long)i;
    return -1;
}

static bool sv_starts(sv s, const char *pre) {
    size_t m = strlen(pre);
    return s.n >= m && !memcmp(s.p, pre, m);
}
static bool sv_ends(sv s, const char *suf) {
    size_t m = strlen(suf);
    return s.n >= m && !memcmp(s.p + s.n - m, suf, m);
}

/* ---- output buffer ---- */

typedef struct {
    char *p;
    size_t n, cap;
    bool failed;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_sv(strbuf *b, sv s) { sb_put(b, s.p, s.n); }

/* ---- template ---- */

const char *chat_template_status_string(chat_template_status st) {
    switch (st) {
    case CHAT_TEMPLATE_OK: return "ok";
    case CHAT_TEMPLATE_ERR_EMPTY: return "no messages provided";
    case CHAT_TEMPLATE_ERR_NO_USER: return "no user query found in messages";
    case CHAT_TEMPLATE_ERR_SYSTEM_NOT_FIRST: return "system message must be at the beginning";
    case CHAT_TEMPLATE_ERR_ROLE: return "unexpected message role";
    case CHAT_TEMPLATE_ERR_NOMEM: return "out of memory";
    }
    return "unknown chat template status";
}

static const char *role_name(chat_role r) {
    return r == CHAT_ROLE_SYSTEM ? "system" : r == CHAT_ROLE_USER ? "user" : "assistant";
}

/* The content of a message as the template sees it: `render_content(message.content)|trim` (3.5)
 * or `message.content` (3). */
static sv message_content(chat_template_flavor f, const chat_message *m) {
    sv c = sv_of(m->content);
    return f == CHAT_TEMPLATE_QWEN3_5 ? sv_trim(c) : c;
}

/* Index of the last user message that is a query (not a wrapped tool response), or -1. */
static int last_query_index(chat_template_flavor f, const chat_message *msgs, int n) {
    for (int i = n - 1; i >= 0; i--) {
        if (msgs[i].role != CHAT_ROLE_USER) continue;
        sv c = message_content(f, &msgs[i]);
        if (!(sv_starts(c, "<tool_response>") && sv_ends(c, "</tool_response>"))) return i;
    }
    return -1;
}

/* {%- if '</think>' in content %}
 *     reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
 *     content = content.split('</think>')[-1].lstrip('\n')                                      */
static void split_thinking(sv *content, sv *reasoning) {
    long first_close = sv_find(*content, "</think>");
    if (first_close < 0) return;
    sv before = sv_rstrip_nl((sv){content->p, (size_t)first_close});
    long open = sv_rfind(before, "<think>");
    if (open >= 0) before = (sv){before.p + open + 7, before.n - (size_t)open - 7};
    *reasoning = sv_lstrip_nl(before);
    size_t after = (size_t)sv_rfind(*content, "</think>") + 8;
    *content = sv_lstrip_nl((sv){content->p + after, content->n - after});
}

static void render_assistant(strbuf *b, chat_template_flavor f, const chat_message *m, bool after_query,
                             bool is_last) {
    sv content = message_content(f, m), reasoning = {"", 0};
    if (m->reasoning)
        reasoning = sv_of(m->reasoning);
    else
        split_thinking(&content, &reasoning);

    bool with_think;
    if (f == CHAT_TEMPLATE_QWEN3_5) {
        reasoning = sv_trim(reasoning);
        with_think = after_query;
    } else {
        /* {%- if loop.last or (not loop.last and reasoning_content) %}: reasoning.strip('\n') */
        with_think = after_query && (is_last || reasoning.n > 0);
        reasoning = sv_lstrip_nl(sv_rstrip_nl(reasoning));
        if (with_think) content = sv_lstrip_nl(content);
    }
    sb_str(b, "<|im_start|>assistant\n");
    if (with_think) {
        sb_str(b, "<think>\n");
        sb_sv(b, reasoning);
        sb_str(b, "\n</think>\n\n");
    }
    sb_sv(b, content);
    sb_str(b, "<|im_end|>\n");
}

chat_template_status chat_template_render(chat_template_flavor flavor, const chat_message *msgs, int n,
                                          bool add_generation_prompt, bool enable_thinking, char **out,
                                          size_t *out_len) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (n <= 0) return CHAT_TEMPLATE_ERR_EMPTY;
    for (int i = 0; i < n; i++) {
        if (msgs[i].role != CHAT_ROLE_SYSTEM && msgs[i].role != CHAT_ROLE_USER && msgs[i].role != CHAT_ROLE_ASSISTANT)
            return CHAT_TEMPLATE_ERR_ROLE;
        if (flavor == CHAT_TEMPLATE_QWEN3_5 && i > 0 && msgs[i].role == CHAT_ROLE_SYSTEM)
            return CHAT_TEMPLATE_ERR_SYSTEM_NOT_FIRST;
    }
    int last_query = last_query_index(flavor, msgs, n);
    if (last_query < 0) {
        if (flavor == CHAT_TEMPLATE_QWEN3_5) return CHAT_TEMPLATE_ERR_NO_USER;
        last_query = n - 1; /* Qwen3: namespace default, messages|length - 1 */
    }

    strbuf b = {0};
    for (int i = 0; i < n; i++) {
        const chat_message *m = &msgs[i];
        if (m->role == CHAT_ROLE_ASSISTANT) {
            render_assistant(&b, flavor, m, i > last_query, i == n - 1);
        } else {
            /* the first system message, then every user message (and, in Qwen3, later system
             * messages): '<|im_start|>' + role + '\n' + content + '<|im_end|>\n' */
            sb_str(&b, "<|im_start|>");
            sb_str(&b, role_name(m->role));
            sb_str(&b, "\n");
            sb_sv(&b, message_content(flavor, m));
            sb_str(&b, "<|im_end|>\n");
        }
    }
    if (add_generation_prompt) {
        sb_str(&b, "<|im_start|>assistant\n");
        if (!enable_thinking)
            sb_str(&b, "<think>\n\n</think>\n\n");
        else if (flavor == CHAT_TEMPLATE_QWEN3_5)
            sb_str(&b, "<think>\n");
    }
    if (b.failed || !b.p) {
        free(b.p);
        return CHAT_TEMPLATE_ERR_NOMEM;
    }
    *out = b.p;
    if (out_len) *out_len = b.n;
    return CHAT_TEMPLATE_OK;
}

/* ---- thinking budget ---- */

void think_budget_init(think_budget *b, int open_id, int close_id, int budget, bool in_think) {
    *b = (think_budget){.open_id = open_id, .close_id = close_id, .budget = budget, .in_think = in_think};
}

void think_budget_feed(think_budget *b, int token) {
    if (token == b->close_id)
        b->in_think = false;
    else if (token == b->open_id)
        b->in_think = true;
    else if (b->in_think)
        b->n_thinking++;
}

bool think_budget_exhausted(const think_budget *b) {
    return b->in_think && b->budget >= 0 && b->n_thinking >= b->budget;
}
