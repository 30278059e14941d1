/* Byte-level BPE tokenizer read from a Hugging Face tokenizer.json: loading, encoding, decoding.
 * The pipeline and its limits are described in tokenizer.h; each stage below names the function
 * of the `tokenizers` crate (tokenizers/src/...) whose behaviour it reproduces. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

enum {
    TOK_ERRLEN = 320,
    TOK_MAX_ID = 1 << 24,          /* ids above this are rejected (tables are sized by the largest id) */
    CACHE_SLOTS = 1 << 16,         /* word cache: hash slots (power of two) */
    CACHE_MAX_WORDS = 1 << 15,     /* ... words kept before the cache is emptied */
    CACHE_MAX_WORD_BYTES = 255,    /* ... longer words are not cached */
    CACHE_MAX_KEY_BYTES = 4 << 20, /* ... bytes of words kept before the cache is emptied */
    SMALL_CHARS = 0x800,           /* one-character pieces below U+0800 have a direct id table */
    BYTE_CHARS = 0x144,            /* ByteLevel stand-ins are all below U+0144 */
};

/* The regex ByteLevel applies when use_regex is true (pre_tokenizers/byte_level.rs). */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ------------------------------------------------------------------------------------------------
 * Growable arrays */

typedef struct {
    char *p;
    size_t len, cap;
} bytebuf;

typedef struct {
    int32_t *p;
    size_t len, cap;
} idvec;

/* Reallocates p to hold at least `need` elements of `elem` bytes, doubling; updates *cap on
 * success, returns NULL (p untouched) on failure. */
static void *array_grow(void *p, size_t *cap, size_t need, size_t elem) {
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem) return NULL;
        c *= 2;
    }
    void *q = realloc(p, c * elem);
    if (q) *cap = c;
    return q;
}

static int bytes_reserve(bytebuf *b, size_t need) {
    if (need <= b->cap) return 0;
    char *p = array_grow(b->p, &b->cap, need, 1);
    if (!p) return -1;
    b->p = p;
    return 0;
}

static int bytes_append(bytebuf *b, const void *src, size_t n) {
    if (bytes_reserve(b, b->len + n + 1)) return -1; /* +1: room for a terminating NUL */
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static int ids_reserve(idvec *v, size_t need) {
    if (need <= v->cap) return 0;
    int32_t *p = array_grow(v->p, &v->cap, need, sizeof *p);
    if (!p) return -1;
    v->p = p;
    return 0;
}

static int ids_push(idvec *v, int32_t id) {
    if (ids_reserve(v, v->len + 1)) return -1;
    v->p[v->len++] = id;
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Hashing */

static uint64_t hash_bytes(const char *s, size_t n) { /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) { /* murmur3 finaliser */
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n) {
    size_t p = 16;
    while (p < n) p *= 2;
    return p;
}

/* ------------------------------------------------------------------------------------------------
 * UTF-8 */

/* Decodes the character at s[0..n), n >= 1. Returns its length and sets *cp; for bytes that do
 * not start a well-formed sequence (Unicode table 3-7) returns the length of the maximal
 * ill-formed subpart, which is replaced by one U+FFFD, sets *cp = -1, and sets *truncated when
 * that subpart is a valid prefix cut short by the end of the buffer. */
static size_t utf8_decode(const char *str, size_t n, int32_t *cp, bool *truncated) {
    const uint8_t *s = (const uint8_t *)str;
    *truncated = false;
    *cp = -1;
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    int32_t c;
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1, c = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 2, c = b & 0x0F;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F; /* no surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3, c = b & 0x07;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        return 1;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n) {
            *truncated = true;
            return i;
        }
        if (s[i] < lo || s[i] > hi) return i;
        c = (c << 6) | (s[i] & 0x3F);
        lo = 0x80, hi = 0xBF;
    }
    *cp = c;
    return need + 1;
}

/* Length of the character starting with byte b of valid UTF-8. */
static size_t utf8_len(uint8_t b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }

static size_t utf8_encode(int32_t c, char *out) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18));
    out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

static bool utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        if ((uint8_t)s[i] < 0x80) {
            i++;
            continue;
        }
        int32_t cp;
        bool truncated;
        size_t k = utf8_decode(s + i, n - i, &cp, &truncated);
        if (cp < 0) return false;
        i += k;
    }
    return true;
}

/* Appends s[0..n) to dst with every maximal ill-formed subsequence replaced by U+FFFD (Rust's
 * String::from_utf8_lossy, Python's errors="replace"). Unless `final`, an incomplete character at
 * the end is left unconsumed. Returns the number of bytes consumed, or (size_t)-1 when out of
 * memory. */
static size_t utf8_lossy_append(bytebuf *dst, const char *s, size_t n, bool final) {
    static const char replacement[] = "\xEF\xBF\xBD";
    if (bytes_reserve(dst, dst->len + n * 3 + 1)) return (size_t)-1; /* worst case: all bytes bad */
    size_t i = 0;
    while (i < n) {
        int32_t cp;
        bool truncated;
        size_t k = utf8_decode(s + i, n - i, &cp, &truncated);
        if (cp >= 0) {
            memcpy(dst->p + dst->len, s + i, k);
            dst->len += k;
        } else {
            if (truncated && !final) break;
            memcpy(dst->p + dst->len, replacement, 3);
            dst->len += 3;
        }
        i += k;
    }
    dst->p[dst->len] = '\0';
    return i;
}

/* Unicode White_Space: \s of the Rust regex crate, which HF uses for lstrip/rstrip. */
static bool cp_is_space(int32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* \w of the Rust regex crate (Alphabetic, marks, decimal digits, connector punctuation, joiners),
 * which HF uses for single_word. The Alphabetic letters outside L, M and Nl are the enclosed and
 * squared Latin letters listed at the end. */
static bool cp_is_word(int32_t c) {
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return c == 0x200C || c == 0x200D || (c >= 0x24B6 && c <= 0x24E9) ||
               (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
               (c >= 0x1F170 && c <= 0x1F189);
    }
}

/* The code point of the character that ends at s[end] (exclusive) in valid UTF-8, and its start. */
static int32_t utf8_before(const char *s, size_t end, size_t *start) {
    size_t k = end - 1;
    while (k > 0 && ((uint8_t)s[k] & 0xC0) == 0x80) k--;
    int32_t cp;
    bool truncated;
    utf8_decode(s + k, end - k, &cp, &truncated);
    *start = k;
    return cp;
}

static int32_t utf8_at(const char *s, size_t n) {
    int32_t cp;
    bool truncated;
    utf8_decode(s, n, &cp, &truncated);
    return cp;
}

/* ------------------------------------------------------------------------------------------------
 * The tokenizer */

enum { TOKEN_ADDED = 1, TOKEN_SPECIAL = 2 };

typedef enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD } norm_form;

typedef enum {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_WITH_PREVIOUS,
    SPLIT_MERGED_WITH_NEXT,
    SPLIT_CONTIGUOUS,
} split_behavior;

typedef enum { PRETOK_SPLIT, PRETOK_BYTE_LEVEL } pretok_kind;

typedef struct {
    pretok_kind kind;
    pcre2_code *re;         /* Split: the pattern; ByteLevel: GPT2_PATTERN if use_regex, else NULL */
    pcre2_match_data *md;   /* match scratch for re */
    split_behavior behavior; /* Split */
    bool invert;            /* Split */
    bool add_prefix_space;  /* ByteLevel */
} pretok_step;

typedef struct {
    uint32_t content_off, content_len; /* the text of the token, in tok->strings */
    uint32_t match_off, match_len;     /* what is searched for: content, or content normalised */
    int32_t id;
    bool special, single_word, lstrip, rstrip, normalized;
} added_token;

/* The added tokens searched in one pass (non-normalised ones in the raw text, normalised ones in
 * the normalised text), ordered by first byte and, within one first byte, longest first. */
typedef struct {
    uint32_t *order;     /* indices into tok->added */
    uint32_t first[257]; /* order[first[b] .. first[b + 1]) start with byte b */
    int only_first;      /* the first byte of every token when they all share one, else -1 */
} added_set;

typedef struct {
    uint64_t pair; /* left id << 32 | right id; UINT64_MAX = empty slot */
    int32_t rank, new_id;
} merge_slot;

typedef struct {
    int32_t id, prev, next, len; /* len = 0: merged into the symbol on its left */
} bpe_symbol;

typedef struct {
    int32_t rank, pos, new_id;
} bpe_merge;

typedef struct {
    uint32_t hash; /* the top half of the word's hash; 0 = empty slot */
    uint32_t key_off, val_off; /* the word in keys, its ids in vals */
    uint16_t key_len, val_len;
} cache_slot;

typedef struct {
    cache_slot *slot;
    size_t count;
    bytebuf keys;
    idvec vals;
} word_cache;

typedef struct {
    bytebuf prefixed; /* ByteLevel: the piece after add_prefix_space */
    bytebuf mapped;   /* ByteLevel: one piece with its bytes mapped */
} pretok_scratch;

typedef struct { /* scratch space reused by every tokenizer_encode */
    bytebuf clean;        /* the input with invalid UTF-8 replaced */
    bytebuf norm;         /* one normalised piece */
    bytebuf norm_tmp;     /* between two forms of a normaliser Sequence */
    int32_t *cps;         /* utf8proc work buffer */
    size_t cps_cap;
    pretok_scratch *level; /* one per pre-tokenizer step */
    bytebuf tmp;          /* continuing_subword_prefix / end_of_word_suffix lookups */
    bpe_symbol *sym;
    size_t sym_cap;
    bpe_merge *heap;
    size_t heap_cap;
    word_cache cache;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
} encoder;

typedef enum { DECODER_JOIN_SPACE, DECODER_BYTE_LEVEL } decoder_kind;

struct tokenizer {
    /* every piece (model vocabulary and added tokens) by id */
    int32_t n_ids;
    uint32_t *piece_off; /* in strings; UINT32_MAX where the id is unassigned */
    uint32_t *piece_len;
    uint8_t *piece_flags; /* TOKEN_ADDED, TOKEN_SPECIAL */
    bytebuf strings;      /* NUL-terminated texts of pieces and added tokens */

    /* BPE model */
    int32_t *vocab_slot; /* open addressing: model piece -> id; -1 = empty */
    size_t vocab_mask;
    merge_slot *merge; /* open addressing: pair -> (rank, merged id) */
    size_t merge_mask;
    int32_t char_id[SMALL_CHARS]; /* id of the one-character piece of each code point, or -1 */
    int32_t unk_id;               /* -1: characters missing from the vocab are dropped, as in HF */
    bool fuse_unk, ignore_merges;
    uint32_t prefix_off, prefix_len; /* continuing_subword_prefix */
    uint32_t suffix_off, suffix_len; /* end_of_word_suffix */

    norm_form *norm;
    size_t n_norm;
    pretok_step *pretok;
    size_t n_pretok;
    added_token *added;
    size_t n_added;
    added_set raw_set, norm_set;
    decoder_kind decoder;

    uint16_t byte_char[256];     /* ByteLevel: byte -> stand-in code point */
    char byte_utf8[256][2];      /* ... and its UTF-8 (every stand-in is below U+0800) */
    uint8_t byte_utf8_len[256];
    int16_t char_byte[BYTE_CHARS]; /* stand-in code point -> byte, or -1 */

    encoder enc;
    char err[TOK_ERRLEN];
};

static const char *tok_str(const tokenizer *tok, uint32_t off) { return tok->strings.p + off; }

/* Stores a copy of s[0..n) (NUL-terminated) in tok->strings; returns its offset via *off. */
static int strings_add(tokenizer *tok, const char *s, size_t n, uint32_t *off) {
    if (tok->strings.len + n + 1 > UINT32_MAX - 1) return -1;
    *off = (uint32_t)tok->strings.len;
    if (bytes_append(&tok->strings, s, n)) return -1;
    tok->strings.p[tok->strings.len++] = '\0';
    return 0;
}

static int fail(char *msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(char *msg, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, TOK_ERRLEN, fmt, ap);
    va_end(ap);
    return -1;
}

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for U+0100 up. */
static void byte_level_init(tokenizer *tok) {
    int next = 0x100;
    for (int i = 0; i < BYTE_CHARS; i++) tok->char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        tok->byte_char[b] = (uint16_t)(printable ? b : next++);
        tok->char_byte[tok->byte_char[b]] = (int16_t)b;
        char buf[4];
        tok->byte_utf8_len[b] = (uint8_t)utf8_encode(tok->byte_char[b], buf);
        memcpy(tok->byte_utf8[b], buf, 2);
    }
}

/* ------------------------------------------------------------------------------------------------
 * Vocabulary and merges */

static int32_t vocab_find(const tokenizer *tok, const char *s, size_t n) {
    if (!tok->vocab_slot) return -1;
    for (size_t i = hash_bytes(s, n) & tok->vocab_mask;; i = (i + 1) & tok->vocab_mask) {
        int32_t id = tok->vocab_slot[i];
        if (id < 0) return -1;
        if (tok->piece_len[id] == n && !memcmp(tok_str(tok, tok->piece_off[id]), s, n)) return id;
    }
}

static const merge_slot *merge_find(const tokenizer *tok, int32_t left, int32_t right) {
    uint64_t pair = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = hash_u64(pair) & tok->merge_mask;; i = (i + 1) & tok->merge_mask) {
        const merge_slot *m = &tok->merge[i];
        if (m->pair == pair) return m;
        if (m->pair == UINT64_MAX) return NULL;
    }
}

/* Inserts or overwrites (a later duplicate merge wins, as when HF collects them into a map). */
static void merge_put(tokenizer *tok, int32_t left, int32_t right, int32_t rank, int32_t new_id) {
    uint64_t pair = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t i = hash_u64(pair) & tok->merge_mask;
    while (tok->merge[i].pair != UINT64_MAX && tok->merge[i].pair != pair) i = (i + 1) & tok->merge_mask;
    tok->merge[i] = (merge_slot){pair, rank, new_id};
}

/* ------------------------------------------------------------------------------------------------
 * Loading: JSON helpers */

static bool json_is_null(const cJSON *v) { return !v || cJSON_IsNull(v); }

/* *out = obj[key] as a bool; dflt when absent or null. */
static int json_bool(const cJSON *obj, const char *where, const char *key, bool dflt, bool *out, char *msg) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(v)) return fail(msg, "%s.%s must be true or false", where, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* *out = obj[key] as a string, NULL when absent or null. */
static int json_str(const cJSON *obj, const char *where, const char *key, const char **out, char *msg) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (json_is_null(v)) return 0;
    if (!cJSON_IsString(v)) return fail(msg, "%s.%s must be a string", where, key);
    *out = v->valuestring;
    return 0;
}

static int json_id(const cJSON *v, const char *where, const char *name, int32_t *id, char *msg) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TOK_MAX_ID ||
        v->valuedouble != floor(v->valuedouble))
        return fail(msg, "%s: id of '%s' must be an integer in [0, %d)", where, name, TOK_MAX_ID);
    *id = (int32_t)v->valuedouble;
    return 0;
}

static const char *json_type(const cJSON *obj) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* ------------------------------------------------------------------------------------------------
 * Loading: normaliser */

static int norm_add(tokenizer *tok, norm_form f, char *msg) {
    norm_form *p = realloc(tok->norm, (tok->n_norm + 1) * sizeof *p);
    if (!p) return fail(msg, "out of memory");
    tok->norm = p;
    tok->norm[tok->n_norm++] = f;
    return 0;
}

static int normalizer_load(tokenizer *tok, const cJSON *j, int depth, char *msg) {
    if (json_is_null(j)) return 0;
    const char *type = cJSON_IsObject(j) ? json_type(j) : NULL;
    if (!type) return fail(msg, "normalizer: expected an object with a \"type\"");
    if (!strcmp(type, "NFC")) return norm_add(tok, NORM_NFC, msg);
    if (!strcmp(type, "NFD")) return norm_add(tok, NORM_NFD, msg);
    if (!strcmp(type, "NFKC")) return norm_add(tok, NORM_NFKC, msg);
    if (!strcmp(type, "NFKD")) return norm_add(tok, NORM_NFKD, msg);
    if (!strcmp(type, "Sequence") && depth < 8) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "normalizers");
        if (!cJSON_IsArray(list)) return fail(msg, "normalizer: Sequence needs a \"normalizers\" array");
        const cJSON *item;
        cJSON_ArrayForEach(item, list) if (normalizer_load(tok, item, depth + 1, msg)) return -1;
        return 0;
    }
    return fail(msg, "normalizer type '%s' is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence)",
                type);
}

/* Appends form(s[0..n)) (valid UTF-8) to dst, through utf8proc. */
static int normalize_utf8proc(tokenizer *tok, norm_form form, const char *s, size_t n, bytebuf *dst) {
    static const utf8proc_option_t opts[] = {
        [NORM_NFC] = UTF8PROC_STABLE | UTF8PROC_COMPOSE,
        [NORM_NFD] = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE,
        [NORM_NFKC] = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT,
        [NORM_NFKD] = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT,
    };
    encoder *e = &tok->enc;
    size_t need = n + 16; /* code points; most text does not grow */
    for (;;) {
        if (e->cps_cap < need) { /* +1: utf8proc_reencode writes a NUL after the text */
            size_t cap = 0;
            int32_t *p = array_grow(NULL, &cap, need + 1, sizeof *p);
            if (!p) return -1;
            free(e->cps);
            e->cps = p;
            e->cps_cap = cap - 1;
        }
        utf8proc_ssize_t m = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, e->cps,
                                                (utf8proc_ssize_t)e->cps_cap, opts[form]);
        if (m >= 0 && (size_t)m > e->cps_cap) { /* the decomposition is longer: grow and retry */
            need = (size_t)m;
            continue;
        }
        if (m >= 0) m = utf8proc_reencode(e->cps, m, opts[form]);
        if (m < 0) {
            snprintf(tok->err, sizeof tok->err, "normalisation failed: %s", utf8proc_errmsg(m));
            return -1;
        }
        return bytes_append(dst, e->cps, (size_t)m);
    }
}

/* Appends form(s[0..n)) to dst. The position before an ASCII character is a boundary in all four
 * forms (ASCII characters are starters that never compose with what precedes them), so only each
 * stretch of non-ASCII characters, with the ASCII character before it, goes through utf8proc. */
static int normalize_form(tokenizer *tok, norm_form form, const char *s, size_t n, bytebuf *dst) {
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && (uint8_t)s[j] < 0x80) j++;
        size_t start = j > i ? j - 1 : j, end = j;
        while (end < n && (uint8_t)s[end] >= 0x80) end++;
        if (bytes_append(dst, s + i, start - i)) return -1;
        if (end > start && normalize_utf8proc(tok, form, s + start, end - start, dst)) return -1;
        i = end;
    }
    return 0;
}

/* Normalises s[0..n) (valid UTF-8) with every form of the chain, in order, into dst. */
static int normalize_apply(tokenizer *tok, const char *s, size_t n, bytebuf *dst) {
    bytebuf *tmp = &tok->enc.norm_tmp;
    dst->len = 0;
    if (!tok->n_norm) return bytes_append(dst, s, n);
    if (normalize_form(tok, tok->norm[0], s, n, dst)) return -1;
    for (size_t k = 1; k < tok->n_norm; k++) {
        tmp->len = 0;
        if (normalize_form(tok, tok->norm[k], dst->p, dst->len, tmp)) return -1;
        bytebuf t = *dst; /* the result becomes dst, the old dst the next scratch */
        *dst = *tmp, *tmp = t;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Loading: pre-tokenizer */

/* literal: the pattern is a plain string (Split's {"String": ...}). */
static int regex_compile(const char *pattern, bool literal, pcre2_code **re, char *msg) {
    int code;
    PCRE2_SIZE at;
    uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP); /* LITERAL refuses UCP */
    *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, options, &code, &at, NULL);
    if (!*re) {
        PCRE2_UCHAR text[160];
        pcre2_get_error_message(code, text, sizeof text);
        return fail(msg, "pre_tokenizer: cannot compile pattern /%.80s/ at offset %zu: %s", pattern,
                    (size_t)at, (const char *)text);
    }
    pcre2_jit_compile(*re, PCRE2_JIT_COMPLETE); /* pcre2_match uses the JIT code when this worked */
    return 0;
}

static int pretok_add(tokenizer *tok, pretok_step st, char *msg) {
    if (st.re && !(st.md = pcre2_match_data_create_from_pattern(st.re, NULL))) {
        pcre2_code_free(st.re);
        return fail(msg, "out of memory");
    }
    pretok_step *p = realloc(tok->pretok, (tok->n_pretok + 1) * sizeof *p);
    if (!p) {
        pcre2_match_data_free(st.md);
        pcre2_code_free(st.re);
        return fail(msg, "out of memory");
    }
    tok->pretok = p;
    tok->pretok[tok->n_pretok++] = st;
    return 0;
}

static int split_load(tokenizer *tok, const cJSON *j, char *msg) {
    static const struct {
        const char *name;
        split_behavior b;
    } behaviors[] = {
        {"Removed", SPLIT_REMOVED},
        {"Isolated", SPLIT_ISOLATED},
        {"MergedWithPrevious", SPLIT_MERGED_WITH_PREVIOUS},
        {"MergedWithNext", SPLIT_MERGED_WITH_NEXT},
        {"Contiguous", SPLIT_CONTIGUOUS},
    };
    pretok_step st = {.kind = PRETOK_SPLIT};
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(j, "pattern");
    const char *regex = NULL, *literal = NULL;
    if (cJSON_IsObject(pat)) {
        if (json_str(pat, "pre_tokenizer.Split.pattern", "Regex", &regex, msg)) return -1;
        if (json_str(pat, "pre_tokenizer.Split.pattern", "String", &literal, msg)) return -1;
    }
    if (!regex == !literal)
        return fail(msg, "pre_tokenizer: Split.pattern must be {\"Regex\": ...} or {\"String\": ...}");
    const char *beh;
    if (json_str(j, "pre_tokenizer.Split", "behavior", &beh, msg)) return -1;
    if (!beh) return fail(msg, "pre_tokenizer: Split needs a \"behavior\"");
    size_t k = 0, nb = sizeof behaviors / sizeof behaviors[0];
    while (k < nb && strcmp(behaviors[k].name, beh)) k++;
    if (k == nb)
        return fail(msg, "pre_tokenizer: Split behavior '%s' is not one of Removed, Isolated, "
                         "MergedWithPrevious, MergedWithNext, Contiguous", beh);
    st.behavior = behaviors[k].b;
    if (json_bool(j, "pre_tokenizer.Split", "invert", false, &st.invert, msg)) return -1;
    if (regex_compile(regex ? regex : literal, !regex, &st.re, msg)) return -1;
    return pretok_add(tok, st, msg);
}

static int pretokenizer_load(tokenizer *tok, const cJSON *j, int depth, char *msg) {
    if (json_is_null(j)) return 0;
    const char *type = cJSON_IsObject(j) ? json_type(j) : NULL;
    if (!type) return fail(msg, "pre_tokenizer: expected an object with a \"type\"");
    if (!strcmp(type, "Split")) return split_load(tok, j, msg);
    if (!strcmp(type, "ByteLevel")) {
        pretok_step st = {.kind = PRETOK_BYTE_LEVEL};
        bool use_regex;
        if (json_bool(j, "pre_tokenizer.ByteLevel", "add_prefix_space", true, &st.add_prefix_space, msg) ||
            json_bool(j, "pre_tokenizer.ByteLevel", "use_regex", true, &use_regex, msg))
            return -1;
        if (use_regex && regex_compile(GPT2_PATTERN, false, &st.re, msg)) return -1;
        return pretok_add(tok, st, msg);
    }
    if (!strcmp(type, "Sequence") && depth < 8) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers");
        if (!cJSON_IsArray(list)) return fail(msg, "pre_tokenizer: Sequence needs a \"pretokenizers\" array");
        const cJSON *item;
        cJSON_ArrayForEach(item, list) if (pretokenizer_load(tok, item, depth + 1, msg)) return -1;
        return 0;
    }
    return fail(msg, "pre_tokenizer type '%s' is not supported (supported: Split, ByteLevel, Sequence)",
                type);
}

/* ------------------------------------------------------------------------------------------------
 * Loading: BPE model and added tokens */

/* Checks the model options this implementation does not carry out. */
static int model_options_load(tokenizer *tok, const cJSON *m, char *msg) {
    const char *type = json_type(m);
    if (type && strcmp(type, "BPE"))
        return fail(msg, "model type '%s' is not supported (only BPE)", type);
    if (!type) return fail(msg, "model.type is missing (only BPE is supported)");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (!json_is_null(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return fail(msg, "model.dropout is not supported (BPE dropout makes encoding random)");
    bool byte_fallback;
    if (json_bool(m, "model", "byte_fallback", false, &byte_fallback, msg) ||
        json_bool(m, "model", "fuse_unk", false, &tok->fuse_unk, msg) ||
        json_bool(m, "model", "ignore_merges", false, &tok->ignore_merges, msg))
        return -1;
    if (byte_fallback) return fail(msg, "model.byte_fallback is not supported");
    const char *prefix, *suffix;
    if (json_str(m, "model", "continuing_subword_prefix", &prefix, msg) ||
        json_str(m, "model", "end_of_word_suffix", &suffix, msg))
        return -1;
    if ((prefix && strings_add(tok, prefix, strlen(prefix), &tok->prefix_off)) ||
        (suffix && strings_add(tok, suffix, strlen(suffix), &tok->suffix_off)))
        return fail(msg, "out of memory");
    tok->prefix_len = prefix ? (uint32_t)strlen(prefix) : 0;
    tok->suffix_len = suffix ? (uint32_t)strlen(suffix) : 0;
    return 0;
}

/* Gives id the piece s; fails if the id already holds another piece. */
static int piece_set(tokenizer *tok, int32_t id, const char *s, size_t n, const char *where, char *msg) {
    if (tok->piece_off[id] != UINT32_MAX) {
        if (tok->piece_len[id] == n && !memcmp(tok_str(tok, tok->piece_off[id]), s, n)) return 0;
        return fail(msg, "%s: id %d is given to both '%s' and '%s'", where, (int)id,
                    tok_str(tok, tok->piece_off[id]), s);
    }
    if (strings_add(tok, s, n, &tok->piece_off[id])) return fail(msg, "out of memory");
    tok->piece_len[id] = (uint32_t)n;
    return 0;
}

static int vocab_load(tokenizer *tok, const cJSON *vocab, int32_t max_id, char *msg) {
    size_t n = (size_t)cJSON_GetArraySize(vocab);
    tok->n_ids = max_id + 1;
    tok->piece_off = malloc((size_t)tok->n_ids * sizeof *tok->piece_off);
    tok->piece_len = calloc((size_t)tok->n_ids, sizeof *tok->piece_len);
    tok->piece_flags = calloc((size_t)tok->n_ids, 1);
    tok->vocab_mask = pow2_at_least(2 * n) - 1;
    tok->vocab_slot = malloc((tok->vocab_mask + 1) * sizeof *tok->vocab_slot);
    if (!tok->piece_off || !tok->piece_len || !tok->piece_flags || !tok->vocab_slot)
        return fail(msg, "out of memory");
    memset(tok->piece_off, 0xFF, (size_t)tok->n_ids * sizeof *tok->piece_off);
    memset(tok->vocab_slot, 0xFF, (tok->vocab_mask + 1) * sizeof *tok->vocab_slot);
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        int32_t id;
        size_t len = strlen(v->string);
        if (json_id(v, "model.vocab", v->string, &id, msg)) return -1;
        if (vocab_find(tok, v->string, len) >= 0)
            return fail(msg, "model.vocab: '%s' appears twice", v->string);
        if (piece_set(tok, id, v->string, len, "model.vocab", msg)) return -1;
        size_t i = hash_bytes(v->string, len) & tok->vocab_mask;
        while (tok->vocab_slot[i] >= 0) i = (i + 1) & tok->vocab_mask;
        tok->vocab_slot[i] = id;
    }
    for (int32_t c = 0; c < SMALL_CHARS; c++) {
        char buf[4];
        tok->char_id[c] = vocab_find(tok, buf, utf8_encode(c, buf));
    }
    return 0;
}

/* Splits one merge ("a b" or ["a", "b"]) into its two pieces. */
static int merge_parts(const cJSON *item, size_t rank, char *buf, size_t buflen, const char **a,
                       const char **b, char *msg) {
    if (cJSON_IsString(item)) { /* models/bpe/serialization.rs: exactly two parts split on ' ' */
        const char *s = item->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ') || strlen(s) >= buflen)
            return fail(msg, "model.merges[%zu]: '%s' is not two pieces separated by one space", rank, s);
        memcpy(buf, s, strlen(s) + 1);
        buf[sp - s] = '\0';
        *a = buf, *b = buf + (sp - s) + 1;
        return 0;
    }
    if (cJSON_IsArray(item) && cJSON_GetArraySize(item) == 2 && cJSON_IsString(item->child) &&
        cJSON_IsString(item->child->next)) {
        *a = item->child->valuestring, *b = item->child->next->valuestring;
        return 0;
    }
    return fail(msg, "model.merges[%zu] must be \"a b\" or [\"a\", \"b\"]", rank);
}

static int merges_load(tokenizer *tok, const cJSON *merges, char *msg) {
    size_t n = (size_t)cJSON_GetArraySize(merges);
    tok->merge_mask = pow2_at_least(2 * n) - 1;
    tok->merge = malloc((tok->merge_mask + 1) * sizeof *tok->merge);
    if (!tok->merge) return fail(msg, "out of memory");
    memset(tok->merge, 0xFF, (tok->merge_mask + 1) * sizeof *tok->merge);
    bytebuf joined = {0}, split = {0};
    size_t rank = 0;
    int rc = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, merges) {
        if (cJSON_IsString(item) && !strncmp(item->valuestring, "#version", 8)) continue;
        const char *a = NULL, *b = NULL;
        size_t need = cJSON_IsString(item) ? strlen(item->valuestring) + 1 : 1;
        if (bytes_reserve(&split, need)) {
            rc = fail(msg, "out of memory");
            break;
        }
        if ((rc = merge_parts(item, rank, split.p, split.cap, &a, &b, msg))) break;
        int32_t ia = vocab_find(tok, a, strlen(a)), ib = vocab_find(tok, b, strlen(b));
        if (ia < 0 || ib < 0) {
            rc = fail(msg, "model.merges[%zu]: '%s' is not in the vocab", rank, ia < 0 ? a : b);
            break;
        }
        size_t lb = strlen(b);
        if (lb < tok->prefix_len) { /* the merged piece drops b's continuing_subword_prefix */
            rc = fail(msg, "model.merges[%zu]: '%s' is shorter than continuing_subword_prefix", rank, b);
            break;
        }
        joined.len = 0;
        if (bytes_append(&joined, a, strlen(a)) ||
            bytes_append(&joined, b + tok->prefix_len, lb - tok->prefix_len)) {
            rc = fail(msg, "out of memory");
            break;
        }
        joined.p[joined.len] = '\0';
        int32_t merged = vocab_find(tok, joined.p, joined.len);
        if (merged < 0) {
            rc = fail(msg, "model.merges[%zu]: merged piece '%s' is not in the vocab", rank, joined.p);
            break;
        }
        merge_put(tok, ia, ib, (int32_t)rank, merged);
        rank++;
    }
    free(joined.p);
    free(split.p);
    return rc;
}

/* Reads added_tokens; ids follow AddedVocabulary::add_tokens: a content already in the model
 * vocab keeps its vocab id; anything else takes the next id after the largest added id so far, or
 * the model's vocabulary size (its number of entries) for the first one. HF ignores the id written
 * in the file (it only warns when they differ), so we do too. */
static int added_load(tokenizer *tok, const cJSON *list, int32_t vocab_size, char *msg) {
    int32_t max_added = -1;
    size_t n = (size_t)cJSON_GetArraySize(list);
    if (!n) return 0;
    tok->added = calloc(n, sizeof *tok->added);
    if (!tok->added) return fail(msg, "out of memory");
    size_t i = 0;
    const cJSON *j;
    cJSON_ArrayForEach(j, list) {
        char where[48];
        snprintf(where, sizeof where, "added_tokens[%zu]", i++);
        added_token t = {0};
        const char *content;
        if (json_str(j, where, "content", &content, msg)) return -1;
        if (!content) return fail(msg, "%s: \"content\" is missing", where);
        if (!*content) continue; /* HF ignores empty added tokens */
        if (json_bool(j, where, "special", false, &t.special, msg) ||
            json_bool(j, where, "single_word", false, &t.single_word, msg) ||
            json_bool(j, where, "lstrip", false, &t.lstrip, msg) ||
            json_bool(j, where, "rstrip", false, &t.rstrip, msg) ||
            json_bool(j, where, "normalized", !t.special, &t.normalized, msg))
            return -1;
        size_t len = strlen(content);
        bool duplicate = false;
        for (size_t k = 0; k < tok->n_added && !duplicate; k++) {
            const added_token *o = &tok->added[k];
            if (o->content_len != len || memcmp(tok_str(tok, o->content_off), content, len)) continue;
            if (o->special != t.special || o->single_word != t.single_word || o->lstrip != t.lstrip ||
                o->rstrip != t.rstrip || o->normalized != t.normalized)
                return fail(msg, "%s: '%s' is listed twice with different flags", where, content);
            duplicate = true;
        }
        if (duplicate) continue;
        t.id = vocab_find(tok, content, len);
        if (t.id < 0) {
            int32_t declared;
            if (json_id(cJSON_GetObjectItemCaseSensitive(j, "id"), where, content, &declared, msg)) return -1;
            t.id = max_added < 0 ? vocab_size : max_added >= vocab_size || vocab_size == 0 ? max_added + 1 : vocab_size;
            if (piece_set(tok, t.id, content, len, where, msg)) return -1;
        }
        if (t.id > max_added) max_added = t.id;
        if (strings_add(tok, content, len, &t.content_off)) return fail(msg, "out of memory");
        t.content_len = (uint32_t)len;
        t.match_off = t.content_off, t.match_len = t.content_len;
        tok->piece_flags[t.id] |= TOKEN_ADDED | (t.special ? TOKEN_SPECIAL : 0);
        tok->added[tok->n_added++] = t;
    }
    return 0;
}

static const added_token *set_token(const tokenizer *tok, const added_set *set, uint32_t k) {
    return &tok->added[set->order[k]];
}

/* Builds the search order of the added tokens whose `normalized` flag equals `normalized`. */
static int added_set_build(tokenizer *tok, added_set *set, bool normalized, char *msg) {
    uint32_t count[257] = {0};
    size_t n = 0;
    for (size_t k = 0; k < tok->n_added; k++) {
        const added_token *t = &tok->added[k];
        if (t->normalized == normalized && t->match_len) count[(uint8_t)tok_str(tok, t->match_off)[0]]++, n++;
    }
    set->only_first = -1;
    for (int b = 0; b < 256; b++)
        if (count[b] == n && n) set->only_first = b;
    set->order = malloc((n ? n : 1) * sizeof *set->order);
    if (!set->order) return fail(msg, "out of memory");
    set->first[0] = 0;
    for (int b = 0; b < 256; b++) set->first[b + 1] = set->first[b] + count[b];
    uint32_t fill[256];
    memcpy(fill, set->first, sizeof fill);
    for (size_t k = 0; k < tok->n_added; k++) {
        const added_token *t = &tok->added[k];
        if (t->normalized != normalized || !t->match_len) continue;
        uint8_t b = (uint8_t)tok_str(tok, t->match_off)[0];
        /* insertion keeps each first-byte group longest first, then in file order */
        uint32_t at = fill[b]++;
        while (at > set->first[b] && tok->added[set->order[at - 1]].match_len < t->match_len) {
            set->order[at] = set->order[at - 1];
            at--;
        }
        set->order[at] = (uint32_t)k;
    }
    return 0;
}

/* Normalised added tokens are searched for in their normalised form
 * (AddedVocabulary::refresh_added_tokens). */
static int added_normalize(tokenizer *tok, char *msg) {
    bytebuf out = {0};
    for (size_t k = 0; k < tok->n_added; k++) {
        added_token *t = &tok->added[k];
        if (!t->normalized || !tok->n_norm) continue;
        if (normalize_apply(tok, tok_str(tok, t->content_off), t->content_len, &out) ||
            strings_add(tok, out.p, out.len, &t->match_off)) {
            free(out.p);
            return fail(msg, "added_tokens: cannot normalise '%s'", tok_str(tok, t->content_off));
        }
        t->match_len = (uint32_t)out.len;
    }
    free(out.p);
    return 0;
}

static int model_load(tokenizer *tok, const cJSON *root, char *msg) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(m)) return fail(msg, "\"model\" is missing");
    if (model_options_load(tok, m, msg)) return -1;
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab)) return fail(msg, "model.vocab must be an object");
    if (!json_is_null(merges) && !cJSON_IsArray(merges)) return fail(msg, "model.merges must be an array");
    if (!json_is_null(added) && !cJSON_IsArray(added)) return fail(msg, "added_tokens must be an array");

    int32_t max_id = -1, id; /* tables are indexed by id: find the largest first */
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        if (json_id(v, "model.vocab", v->string, &id, msg)) return -1;
        if (id > max_id) max_id = id;
    }
    if (cJSON_IsArray(added)) cJSON_ArrayForEach(v, added) {
        const cJSON *jid = cJSON_GetObjectItemCaseSensitive(v, "id");
        if (cJSON_IsNumber(jid) && jid->valuedouble > max_id && jid->valuedouble < TOK_MAX_ID)
            max_id = (int32_t)jid->valuedouble;
    }
    if (max_id < 0) return fail(msg, "model.vocab is empty");
    int32_t vocab_size = cJSON_GetArraySize(vocab), n_added_json = cJSON_IsArray(added) ? cJSON_GetArraySize(added) : 0;
    if (vocab_size + n_added_json - 1 > max_id) max_id = vocab_size + n_added_json - 1; /* room for assigned ids */
    if (vocab_load(tok, vocab, max_id, msg)) return -1;
    if (cJSON_IsArray(merges) && merges_load(tok, merges, msg)) return -1;
    if (!tok->merge && merges_load(tok, NULL, msg)) return -1; /* an empty table keeps lookups simple */

    const char *unk;
    if (json_str(m, "model", "unk_token", &unk, msg)) return -1;
    tok->unk_id = unk ? vocab_find(tok, unk, strlen(unk)) : -1;
    if (unk && tok->unk_id < 0) return fail(msg, "model.unk_token '%s' is not in the vocab", unk);

    if (cJSON_IsArray(added) && added_load(tok, added, vocab_size, msg)) return -1;
    while (tok->n_ids > 1 && tok->piece_off[tok->n_ids - 1] == UINT32_MAX)
        tok->n_ids--; /* the file's id of an added token that kept its vocab id */
    if (added_normalize(tok, msg)) return -1;
    if (added_set_build(tok, &tok->raw_set, false, msg) || added_set_build(tok, &tok->norm_set, true, msg))
        return -1;
    return 0;
}

static int decoder_load(tokenizer *tok, const cJSON *j, char *msg) {
    if (json_is_null(j)) {
        tok->decoder = DECODER_JOIN_SPACE; /* HF joins the pieces with spaces when there is no decoder */
        return 0;
    }
    const char *type = cJSON_IsObject(j) ? json_type(j) : NULL;
    if (type && !strcmp(type, "ByteLevel")) {
        tok->decoder = DECODER_BYTE_LEVEL;
        return 0;
    }
    return fail(msg, "decoder type '%s' is not supported (only ByteLevel)", type ? type : "?");
}

static int encoder_init(encoder *e, char *msg) {
    e->mctx = pcre2_match_context_create(NULL);
    e->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!e->mctx) return fail(msg, "out of memory");
    if (e->jit_stack) pcre2_jit_stack_assign(e->mctx, NULL, e->jit_stack);
    return 0;
}

static char *file_read(const char *path, size_t *len, char *msg) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail(msg, "cannot open: %s", strerror(errno));
        return NULL;
    }
    bytebuf b = {0};
    for (;;) {
        if (bytes_reserve(&b, b.len + 65536 + 1)) {
            fail(msg, "out of memory");
            break;
        }
        size_t got = fread(b.p + b.len, 1, b.cap - b.len - 1, f);
        b.len += got;
        if (got == 0) {
            if (ferror(f)) fail(msg, "cannot read: %s", strerror(errno));
            else {
                fclose(f);
                b.p[b.len] = '\0';
                *len = b.len;
                return b.p;
            }
            break;
        }
    }
    fclose(f);
    free(b.p);
    return NULL;
}

static int json_error_position(const char *text, const char *at, int *col) {
    int line = 1;
    const char *line_start = text;
    for (const char *p = text; p < at; p++)
        if (*p == '\n') line++, line_start = p + 1;
    *col = (int)(at - line_start) + 1;
    return line;
}

tokenizer *tokenizer_load(const char *path, char *err, size_t errlen) {
    char msg[TOK_ERRLEN] = "";
    size_t len = 0;
    tokenizer *tok = NULL;
    cJSON *root = NULL;
    char *text = file_read(path, &len, msg);
    if (!text) goto fail;
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root || !cJSON_IsObject(root)) {
        if (!root) {
            int col, line = json_error_position(text, end ? end : text, &col);
            fail(msg, "malformed JSON near line %d, column %d", line, col);
        } else {
            fail(msg, "expected a JSON object at the top level");
        }
        goto fail;
    }
    tok = calloc(1, sizeof *tok);
    if (!tok) {
        fail(msg, "out of memory");
        goto fail;
    }
    byte_level_init(tok);
    if (normalizer_load(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), 0, msg) ||
        encoder_init(&tok->enc, msg) || model_load(tok, root, msg) ||
        pretokenizer_load(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), 0, msg) ||
        decoder_load(tok, cJSON_GetObjectItemCaseSensitive(root, "decoder"), msg))
        goto fail;
    tok->enc.level = calloc(tok->n_pretok + 1, sizeof *tok->enc.level);
    if (!tok->enc.level) {
        fail(msg, "out of memory");
        goto fail;
    }
    cJSON_Delete(root);
    free(text);
    return tok;
fail:
    if (err && errlen) snprintf(err, errlen, "%s: %s", path, msg);
    tokenizer_free(tok);
    cJSON_Delete(root);
    free(text);
    return NULL;
}

static void word_cache_free(word_cache *c) {
    free(c->slot);
    free(c->keys.p);
    free(c->vals.p);
}

void tokenizer_free(tokenizer *tok) {
    if (!tok) return;
    encoder *e = &tok->enc;
    free(e->clean.p);
    free(e->norm.p);
    free(e->norm_tmp.p);
    free(e->cps);
    free(e->tmp.p);
    for (size_t k = 0; e->level && k < tok->n_pretok; k++) {
        free(e->level[k].prefixed.p);
        free(e->level[k].mapped.p);
    }
    free(e->level);
    free(e->sym);
    free(e->heap);
    word_cache_free(&e->cache);
    pcre2_match_context_free(e->mctx);
    pcre2_jit_stack_free(e->jit_stack);
    for (size_t k = 0; k < tok->n_pretok; k++) {
        pcre2_match_data_free(tok->pretok[k].md);
        pcre2_code_free(tok->pretok[k].re);
    }
    free(tok->pretok);
    free(tok->norm);
    free(tok->added);
    free(tok->raw_set.order);
    free(tok->norm_set.order);
    free(tok->piece_off);
    free(tok->piece_len);
    free(tok->piece_flags);
    free(tok->vocab_slot);
    free(tok->merge);
    free(tok->strings.p);
    free(tok);
}

/* ------------------------------------------------------------------------------------------------
 * Encoding: BPE (models/bpe/model.rs merge_word, models/bpe/word.rs merge_all) */

static int bpe_reserve(encoder *e, size_t n) {
    if (n > INT32_MAX / 4) return -1;
    if (n > e->sym_cap) {
        bpe_symbol *p = array_grow(e->sym, &e->sym_cap, n, sizeof *p);
        if (!p) return -1;
        e->sym = p;
    }
    if (3 * n > e->heap_cap) { /* n - 1 initial pairs, then at most two per merge */
        bpe_merge *p = array_grow(e->heap, &e->heap_cap, 3 * n, sizeof *p);
        if (!p) return -1;
        e->heap = p;
    }
    return 0;
}

static bool merge_before(bpe_merge a, bpe_merge b) { /* lowest rank first, then leftmost */
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static void heap_push(bpe_merge *h, size_t *n, bpe_merge m) {
    size_t i = (*n)++;
    while (i > 0 && merge_before(m, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = m;
}

static bpe_merge heap_pop(bpe_merge *h, size_t *n) {
    bpe_merge top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && merge_before(h[c + 1], h[c])) c++;
        if (!merge_before(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* Queues the merge of symbol pos with the symbol after it, if the pair has one. */
static void bpe_queue(const tokenizer *tok, encoder *e, size_t *nheap, int32_t pos) {
    int32_t next = e->sym[pos].next;
    if (next < 0) return;
    const merge_slot *m = merge_find(tok, e->sym[pos].id, e->sym[next].id);
    if (m) heap_push(e->heap, nheap, (bpe_merge){m->rank, pos, m->new_id});
}

static void bpe_merge_all(const tokenizer *tok, encoder *e, size_t nsym) {
    size_t nheap = 0;
    for (size_t i = 0; i + 1 < nsym; i++) bpe_queue(tok, e, &nheap, (int32_t)i);
    while (nheap) {
        bpe_merge top = heap_pop(e->heap, &nheap);
        bpe_symbol *s = &e->sym[top.pos];
        if (s->len == 0 || s->next < 0) continue;
        bpe_symbol right = e->sym[s->next];
        const merge_slot *m = merge_find(tok, s->id, right.id);
        if (!m || m->new_id != top.new_id) continue; /* stale: a neighbour changed since */
        e->sym[s->next].len = 0;
        s->id = top.new_id;
        s->len += right.len;
        s->next = right.next;
        if (right.next >= 0) e->sym[right.next].prev = top.pos;
        if (s->prev >= 0) bpe_queue(tok, e, &nheap, s->prev);
        bpe_queue(tok, e, &nheap, top.pos);
    }
}

/* Model id of the character c[0..n) of a word, with continuing_subword_prefix / end_of_word_suffix
 * added as HF does; -1 if the vocab has no such piece. */
static int32_t bpe_char_id(tokenizer *tok, const char *c, size_t n, bool first, bool last) {
    bool pre = !first && tok->prefix_len, suf = last && tok->suffix_len;
    if (!pre && !suf) {
        int32_t cp = n == 1 ? (uint8_t)c[0] : n == 2 ? utf8_at(c, n) : SMALL_CHARS;
        return cp < SMALL_CHARS ? tok->char_id[cp] : vocab_find(tok, c, n);
    }
    bytebuf *t = &tok->enc.tmp;
    t->len = 0;
    if ((pre && bytes_append(t, tok_str(tok, tok->prefix_off), tok->prefix_len)) || bytes_append(t, c, n) ||
        (suf && bytes_append(t, tok_str(tok, tok->suffix_off), tok->suffix_len)))
        return -2;
    return vocab_find(tok, t->p, t->len);
}

static void sym_add(encoder *e, size_t *nsym, int32_t id, int32_t len) {
    e->sym[*nsym] = (bpe_symbol){id, (int32_t)*nsym - 1, -1, len};
    if (*nsym) e->sym[*nsym - 1].next = (int32_t)*nsym;
    ++*nsym;
}

/* Appends the ids of one word (valid UTF-8) to out. */
static int bpe_encode(tokenizer *tok, const char *w, size_t n, idvec *out) {
    encoder *e = &tok->enc;
    if (bpe_reserve(e, n)) return -1;
    size_t nsym = 0;
    int32_t unk_len = 0; /* bytes of a pending unknown symbol (fuse_unk grows it) */
    for (size_t i = 0; i < n;) {
        size_t cl = utf8_len((uint8_t)w[i]);
        int32_t id = bpe_char_id(tok, w + i, cl, i == 0, i + cl == n);
        if (id == -2) return -1;
        if (id >= 0) {
            if (unk_len) sym_add(e, &nsym, tok->unk_id, unk_len);
            unk_len = 0;
            sym_add(e, &nsym, id, (int32_t)cl);
        } else if (tok->unk_id >= 0) { /* without unk_token the character is dropped, as in HF */
            if (unk_len && !tok->fuse_unk) {
                sym_add(e, &nsym, tok->unk_id, unk_len);
                unk_len = 0;
            }
            unk_len += (int32_t)cl;
        }
        i += cl;
    }
    if (unk_len) sym_add(e, &nsym, tok->unk_id, unk_len);
    bpe_merge_all(tok, e, nsym);
    if (ids_reserve(out, out->len + nsym)) return -1;
    for (size_t i = 0; i < nsym; i++)
        if (e->sym[i].len) out->p[out->len++] = e->sym[i].id;
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Encoding: word cache (a pre-tokenised word -> its ids; emptied when full) */

/* The cached ids of w, or NULL. */
static const int32_t *word_cache_get(const word_cache *c, uint64_t h, const char *w, size_t n, size_t *count) {
    if (!c->slot) return NULL;
    uint32_t tag = (uint32_t)(h >> 32) | 1;
    for (size_t i = h & (CACHE_SLOTS - 1); c->slot[i].hash; i = (i + 1) & (CACHE_SLOTS - 1)) {
        const cache_slot *sl = &c->slot[i];
        if (sl->hash == tag && sl->key_len == n && !memcmp(c->keys.p + sl->key_off, w, n)) {
            *count = sl->val_len;
            return c->vals.p + sl->val_off;
        }
    }
    return NULL;
}

/* Remembers the ids of w; silently does nothing when memory is short (the cache only saves time). */
static void word_cache_put(word_cache *c, uint64_t h, const char *w, size_t n, const int32_t *ids,
                           size_t count) {
    if (n > CACHE_MAX_WORD_BYTES || count > n) return;
    if (!c->slot && !(c->slot = calloc(CACHE_SLOTS, sizeof *c->slot))) return;
    if (c->count >= CACHE_MAX_WORDS || c->keys.len + n > CACHE_MAX_KEY_BYTES) {
        memset(c->slot, 0, CACHE_SLOTS * sizeof *c->slot);
        c->count = c->keys.len = c->vals.len = 0;
    }
    if (bytes_reserve(&c->keys, c->keys.len + n) || ids_reserve(&c->vals, c->vals.len + count)) return;
    size_t i = h & (CACHE_SLOTS - 1);
    while (c->slot[i].hash) i = (i + 1) & (CACHE_SLOTS - 1);
    c->slot[i] = (cache_slot){(uint32_t)(h >> 32) | 1, (uint32_t)c->keys.len, (uint32_t)c->vals.len,
                              (uint16_t)n, (uint16_t)count};
    memcpy(c->keys.p + c->keys.len, w, n);
    memcpy(c->vals.p + c->vals.len, ids, count * sizeof *ids);
    c->keys.len += n, c->vals.len += count;
    c->count++;
}

/* Appends the ids of one pre-tokenised word (models/bpe/model.rs tokenize_with_cache). */
static int word_encode(tokenizer *tok, const char *w, size_t n, idvec *out) {
    if (tok->ignore_merges) {
        int32_t id = vocab_find(tok, w, n);
        if (id >= 0) return ids_push(out, id);
    }
    uint64_t h = hash_bytes(w, n);
    size_t count;
    const int32_t *hit = word_cache_get(&tok->enc.cache, h, w, n, &count);
    if (hit) {
        if (ids_reserve(out, out->len + count)) return -1;
        memcpy(out->p + out->len, hit, count * sizeof *hit);
        out->len += count;
        return 0;
    }
    size_t first = out->len;
    if (bpe_encode(tok, w, n, out)) return -1;
    word_cache_put(&tok->enc.cache, h, w, n, out->p + first, out->len - first);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Encoding: pre-tokenizers (pre_tokenizers/split.rs, byte_level.rs; NormalizedString::split).
 * Depth first: each piece a step cuts goes through the later steps and the BPE before the step
 * looks for its next piece, so memory stays bounded by the longest word. */

static int pretokenize(tokenizer *tok, size_t step, const char *s, size_t n, idvec *out);

/* A string being cut by one step: receives its matches and the text between them in order and
 * passes on the pieces the split behaviour makes of them. */
typedef struct {
    tokenizer *tok;
    size_t step;      /* the step cutting */
    const char *base; /* the string; offsets are relative to it */
    idvec *out;
    split_behavior behavior;
    bool invert;
    bool prev_match;  /* whether the previous cut was a match */
    bool held;        /* a piece that the next cut may still extend: [held_start, held_end) */
    size_t held_start, held_end;
} splitter;

/* Passes a piece on: to the next step, through the byte mapping first for ByteLevel. Empty
 * pieces are dropped, as PreTokenizedString::split does. */
static int byte_level_map(tokenizer *tok, size_t step, const char *s, size_t n, idvec *out);

static int splitter_emit(splitter *sp, size_t start, size_t end) {
    if (end <= start) return 0;
    if (sp->tok->pretok[sp->step].kind == PRETOK_BYTE_LEVEL)
        return byte_level_map(sp->tok, sp->step, sp->base + start, end - start, sp->out);
    return pretokenize(sp->tok, sp->step + 1, sp->base + start, end - start, sp->out);
}

/* Holds [start, end) back until the next cut shows whether it must be extended. */
static int splitter_hold(splitter *sp, size_t start, size_t end) {
    int rc = sp->held ? splitter_emit(sp, sp->held_start, sp->held_end) : 0;
    sp->held = true, sp->held_start = start, sp->held_end = end;
    return rc;
}

/* The next cut, in order: a match or the text between two matches. */
static int splitter_feed(splitter *sp, size_t start, size_t end, bool is_match) {
    is_match ^= sp->invert;
    bool prev_match = sp->prev_match;
    sp->prev_match = is_match;
    switch (sp->behavior) {
    case SPLIT_ISOLATED:
        return splitter_emit(sp, start, end);
    case SPLIT_REMOVED:
        return is_match ? 0 : splitter_emit(sp, start, end);
    case SPLIT_MERGED_WITH_PREVIOUS: /* a match joins the piece before it, unless that is a match */
        if (is_match && !prev_match && sp->held) {
            sp->held_end = end;
            return 0;
        }
        return splitter_hold(sp, start, end);
    case SPLIT_CONTIGUOUS: /* consecutive matches form one piece */
        if (is_match == prev_match && sp->held) {
            sp->held_end = end;
            return 0;
        }
        return splitter_hold(sp, start, end);
    case SPLIT_MERGED_WITH_NEXT: /* a match joins the piece after it, unless that is a match */
        if (is_match) return splitter_hold(sp, start, end);
        if (sp->held) start = sp->held_start;
        sp->held = false;
        return splitter_emit(sp, start, end);
    }
    return 0;
}

static int splitter_finish(splitter *sp) {
    int rc = sp->held ? splitter_emit(sp, sp->held_start, sp->held_end) : 0;
    sp->held = false;
    return rc;
}

/* Cuts s[0..n) at the matches of re, as SysRegex::find_matches over Oniguruma's find_iter: an
 * empty match right where the previous match ended is skipped by moving on one character. */
static int regex_split(tokenizer *tok, const pretok_step *st, const char *s, size_t n, splitter *sp) {
    size_t pos = 0, prev = 0, last_end = SIZE_MAX;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
    while (pos <= n) {
        int rc = pcre2_match(st->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, st->md, tok->enc.mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR text[120];
            pcre2_get_error_message(rc, text, sizeof text);
            snprintf(tok->err, sizeof tok->err, "pre-tokenizer regex failed: %s", (const char *)text);
            return -1;
        }
        size_t ms = ov[0], me = ov[1];
        if (ms == me && me == last_end) {
            if (pos >= n) break;
            pos += utf8_len((uint8_t)s[pos]);
            continue;
        }
        if (ms > prev && splitter_feed(sp, prev, ms, false)) return -1;
        if (splitter_feed(sp, ms, me, true)) return -1;
        prev = pos = last_end = me;
    }
    if (prev < n && splitter_feed(sp, prev, n, false)) return -1;
    return splitter_finish(sp);
}

/* ByteLevel's last part: every byte of the piece replaced by its stand-in character. */
static int byte_level_map(tokenizer *tok, size_t step, const char *s, size_t n, idvec *out) {
    bytebuf *dst = &tok->enc.level[step].mapped;
    if (bytes_reserve(dst, 2 * n + 1)) return -1;
    dst->len = 0;
    char *o = dst->p;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        memcpy(o, tok->byte_utf8[b], 2); /* the second byte is overwritten or unused */
        o += tok->byte_utf8_len[b];
    }
    dst->len = (size_t)(o - dst->p);
    return pretokenize(tok, step + 1, dst->p, dst->len, out);
}

/* Runs the pre-tokenizer steps from `step` on the piece s[0..n) (non-empty) and encodes the
 * words that come out. */
static int pretokenize(tokenizer *tok, size_t step, const char *s, size_t n, idvec *out) {
    if (step == tok->n_pretok) return word_encode(tok, s, n, out);
    const pretok_step *st = &tok->pretok[step];
    splitter sp = {.tok = tok, .step = step, .base = s, .out = out};
    sp.behavior = st->behavior, sp.invert = st->invert;
    if (st->kind == PRETOK_SPLIT) return regex_split(tok, st, s, n, &sp);
    if (st->add_prefix_space && s[0] != ' ') {
        bytebuf *pre = &tok->enc.level[step].prefixed;
        pre->len = 0;
        if (bytes_append(pre, " ", 1) || bytes_append(pre, s, n)) return -1;
        sp.base = s = pre->p, n = pre->len;
    }
    if (!st->re) return byte_level_map(tok, step, s, n, out);
    sp.behavior = SPLIT_ISOLATED, sp.invert = false;
    return regex_split(tok, st, s, n, &sp);
}

/* ------------------------------------------------------------------------------------------------
 * Encoding: added tokens (AddedVocabulary::find_matches, extract_and_normalize) */

typedef struct {
    size_t start, stop; /* bytes the token takes, whitespace eaten by lstrip/rstrip included */
    int32_t id;
} added_match;

/* Finds the next added token of set in s[0..n), searching from *pos (leftmost, then longest, as
 * aho-corasick's LeftmostLongest) and applying the token's flags; done is where the previous
 * token ended. Returns false when there is none. */
static bool added_next(const tokenizer *tok, const added_set *set, const char *s, size_t n, size_t *pos,
                       size_t done, bool allow_special, added_match *m) {
    for (size_t i = *pos; i < n; i++) {
        if (set->only_first >= 0) { /* jump to the next possible start */
            const char *p = memchr(s + i, set->only_first, n - i);
            if (!p) break;
            i = (size_t)(p - s);
        }
        uint8_t b = (uint8_t)s[i];
        const added_token *t = NULL;
        for (uint32_t k = set->first[b]; k < set->first[b + 1] && !t; k++) {
            const added_token *c = set_token(tok, set, k);
            if (c->match_len <= n - i && !memcmp(s + i, tok_str(tok, c->match_off), c->match_len)) t = c;
        }
        if (!t) continue;
        size_t start = i, stop = i + t->match_len;
        *pos = stop; /* the search goes on after this match even if it is rejected below */
        i = stop - 1;
        if (t->special && !allow_special) continue;
        if (t->single_word) {
            size_t k;
            bool word_before = start > 0 && cp_is_word(utf8_before(s, start, &k));
            bool word_after = stop < n && cp_is_word(utf8_at(s + stop, n - stop));
            if (word_before || word_after) continue;
        }
        if (t->lstrip) {
            size_t k = start;
            while (k > 0) {
                size_t before;
                if (!cp_is_space(utf8_before(s, k, &before))) break;
                k = before;
            }
            start = k > done ? k : done; /* spaces a previous token took stay with it */
        }
        if (t->rstrip)
            while (stop < n) {
                int32_t cp = utf8_at(s + stop, n - stop);
                if (!cp_is_space(cp)) break;
                stop += utf8_len((uint8_t)s[stop]);
            }
        *m = (added_match){start, stop, t->id};
        return true;
    }
    *pos = n;
    return false;
}

typedef int (*encode_stage)(tokenizer *tok, const char *s, size_t n, bool allow_special, idvec *out);

/* Splits the added tokens of set out of s, and passes the text between them to next. */
static int added_split(tokenizer *tok, const added_set *set, const char *s, size_t n, bool allow_special,
                       idvec *out, encode_stage next) {
    if (set->first[256] == 0) return next(tok, s, n, allow_special, out); /* no tokens to find */
    size_t pos = 0, done = 0;
    added_match m;
    while (added_next(tok, set, s, n, &pos, done, allow_special, &m)) {
        if (m.start > done && next(tok, s + done, m.start - done, allow_special, out)) return -1;
        if (ids_push(out, m.id)) return -1;
        done = m.stop;
    }
    if (done < n && next(tok, s + done, n - done, allow_special, out)) return -1;
    return 0;
}

static int words_stage(tokenizer *tok, const char *s, size_t n, bool allow_special, idvec *out) {
    (void)allow_special;
    return n ? pretokenize(tok, 0, s, n, out) : 0;
}

static bool is_ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)s[i] >= 0x80) return false;
    return true;
}

/* Normalises a piece of raw text, then splits out the normalised added tokens. ASCII text is left
 * as it is: it is invariant under all four normalisation forms. */
static int normalize_stage(tokenizer *tok, const char *s, size_t n, bool allow_special, idvec *out) {
    if (tok->n_norm && !is_ascii(s, n)) { /* ASCII is the same in every normalisation form */
        if (normalize_apply(tok, s, n, &tok->enc.norm)) return -1;
        s = tok->enc.norm.p, n = tok->enc.norm.len;
    }
    return added_split(tok, &tok->norm_set, s, n, allow_special, out, words_stage);
}

/* Copies s to e->clean with each maximal invalid UTF-8 subsequence replaced by U+FFFD. */
static int utf8_repair(encoder *e, const char *s, size_t n) {
    e->clean.len = 0;
    return utf8_lossy_append(&e->clean, s, n, true) == (size_t)-1 ? -1 : 0;
}

int tokenizer_encode(tokenizer *tok, const char *text, size_t len, int allow_special, int32_t **ids,
                     size_t *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    tok->err[0] = '\0';
    idvec out = {0};
    if (!utf8_valid(text, len)) {
        if (utf8_repair(&tok->enc, text, len)) goto oom;
        text = tok->enc.clean.p, len = tok->enc.clean.len;
    }
    if (added_split(tok, &tok->raw_set, text, len, allow_special != 0, &out, normalize_stage)) {
        free(out.p);
        if (!tok->err[0]) goto oom;
        return -1;
    }
    *ids = out.p;
    *n_ids = out.len;
    return 0;
oom:
    snprintf(tok->err, sizeof tok->err, "out of memory");
    return -1;
}

const char *tokenizer_error(const tokenizer *tok) { return tok->err; }

/* ------------------------------------------------------------------------------------------------
 * Decoding (decoders/byte_level.rs; TokenizerImpl::decode) */

/* Appends the bytes of id: ByteLevel maps each character of the piece back to its byte, unless
 * one of them is not a byte stand-in, in which case the piece's own UTF-8 is used. */
static int piece_bytes(const tokenizer *tok, int32_t id, bool first, bytebuf *dst) {
    const char *p = tok_str(tok, tok->piece_off[id]);
    size_t n = tok->piece_len[id];
    if (tok->decoder == DECODER_JOIN_SPACE)
        return (!first && bytes_append(dst, " ", 1)) || bytes_append(dst, p, n) ? -1 : 0;
    if (bytes_reserve(dst, dst->len + n + 1)) return -1;
    size_t start = dst->len;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        bool truncated;
        size_t k = utf8_decode(p + i, n - i, &cp, &truncated);
        if (cp < 0 || cp >= BYTE_CHARS || tok->char_byte[cp] < 0) {
            dst->len = start;
            return bytes_append(dst, p, n);
        }
        dst->p[dst->len++] = (char)tok->char_byte[cp];
        i += k;
    }
    return 0;
}

static bool id_valid(const tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_ids && tok->piece_off[id] != UINT32_MAX;
}

int tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    for (size_t i = 0; i < n; i++)
        if (!id_valid(tok, ids[i])) return -1;
    bytebuf raw = {0}, text = {0};
    for (size_t i = 0; i < n; i++)
        if (piece_bytes(tok, ids[i], i == 0, &raw)) goto fail;
    if (utf8_lossy_append(&text, raw.p ? raw.p : "", raw.len, true) == (size_t)-1) goto fail;
    free(raw.p);
    *out = text.p;
    *len = text.len;
    return 0;
fail:
    free(raw.p);
    free(text.p);
    return -1;
}

int32_t tokenizer_token_id(const tokenizer *tok, const char *piece) {
    size_t n = strlen(piece);
    for (size_t k = 0; k < tok->n_added; k++) {
        const added_token *t = &tok->added[k];
        if (t->content_len == n && !memcmp(tok_str(tok, t->content_off), piece, n)) return t->id;
    }
    return vocab_find(tok, piece, n);
}

int tokenizer_vocab_size(const tokenizer *tok) { return tok->n_ids; }

const char *tokenizer_piece(const tokenizer *tok, int32_t id) {
    return id_valid(tok, id) ? tok_str(tok, tok->piece_off[id]) : NULL;
}

int tokenizer_is_special(const tokenizer *tok, int32_t id) {
    return id_valid(tok, id) && (tok->piece_flags[id] & TOKEN_SPECIAL);
}

/* ------------------------------------------------------------------------------------------------
 * Streaming decoding */

struct tokdec_stream {
    const tokenizer *tok;
    bytebuf pending; /* bytes of an incomplete character, at most 3 */
    bytebuf out;     /* what the last call returns */
    bool started;    /* a piece was pushed since the last flush (for the join-with-space decoder) */
};

tokdec_stream *tokdec_stream_new(const tokenizer *tok) {
    tokdec_stream *s = calloc(1, sizeof *s);
    if (s) s->tok = tok;
    return s;
}

void tokdec_stream_free(tokdec_stream *s) {
    if (!s) return;
    free(s->pending.p);
    free(s->out.p);
    free(s);
}

const char *tokdec_stream_push(tokdec_stream *s, int32_t id, size_t *len) {
    *len = 0;
    if (!id_valid(s->tok, id)) return NULL;
    size_t keep = s->pending.len;
    if (piece_bytes(s->tok, id, !s->started, &s->pending)) {
        s->pending.len = keep;
        return NULL;
    }
    s->started = true;
    s->out.len = 0;
    size_t used = utf8_lossy_append(&s->out, s->pending.p, s->pending.len, false);
    if (used == (size_t)-1) return NULL;
    memmove(s->pending.p, s->pending.p + used, s->pending.len - used);
    s->pending.len -= used;
    *len = s->out.len;
    return s->out.p;
}

const char *tokdec_stream_flush(tokdec_stream *s, size_t *len) {
    *len = 0;
    s->out.len = 0;
    if (utf8_lossy_append(&s->out, s->pending.p ? s->pending.p : "", s->pending.len, true) == (size_t)-1)
        return NULL;
    s->pending.len = 0;
    s->started = false;
    *len = s->out.len;
    return s->out.p;
}
