/* Tokenizer tests. With the real Qwen3 tokenizer.json (tools/fetch_qwen3_tokenizer.sh puts it in
 * build/qwen3-tokenizer/; the tests that need it fail when it is missing): exact ids against the
 * committed references (tests/data/tokenizer/qwen3_refs.txt, from tools/make_tokenizer_refs.*),
 * decode(encode(x)) == NFC(x), streaming decode. With small hand-made tokenizers in
 * tests/data/tokenizer/: added-token flags, normalisers, pre-tokenizer behaviours, BPE options and
 * load errors. Runs from the repository root. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

#include "test.h"
#include "tokenizer.h"

static const char QWEN3_JSON[] = "build/qwen3-tokenizer/tokenizer.json";
static const char CORPUS[] = "tests/data/tokenizer/corpus.txt";
static const char INVALID_UTF8[] = "tests/data/tokenizer/invalid_utf8.bin";
static const char REFS[] = "tests/data/tokenizer/qwen3_refs.txt";
static const char TINY[] = "tests/data/tokenizer/tiny.json";
static const char TINY_STRING_MERGES[] = "tests/data/tokenizer/tiny_string_merges.json";
static const char TINY_CHARS[] = "tests/data/tokenizer/tiny_chars.json";
static const char TINY_CORPUS[] = "tests/data/tokenizer/tiny_corpus.txt";
static const char TINY_REFS[] = "tests/data/tokenizer/tiny_refs.txt";

/* What invalid_utf8.bin becomes with each maximal ill-formed subsequence replaced by U+FFFD
 * (worked out by hand from Unicode table 3-7). */
#define R "\xEF\xBF\xBD"
static const char INVALID_UTF8_REPAIRED[] =
    "valid start " R R " bytes " R "( " R " lone-cont " R R " surrogate " R R R " overlong " R R " " R R R
    " too-big " R R R R " " R " caf\xC3\xA9 emoji-cut " R " <|im_end|>" R "<|im_end|> end " R;
#undef R

static tokenizer *qwen3; /* loaded once in main */
static char qwen3_err[512];

/* ------------------------------------------------------------------------------------------------
 * Helpers */

static char *file_read(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = '\0', *len = (size_t)n;
    return buf;
}

static int hex4(const char *s) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Decodes one JSON string literal (a corpus line) into a malloc'd buffer; NUL bytes allowed. */
static char *json_string_decode(const char *s, size_t *len) {
    size_t n = strlen(s);
    char *out = malloc(n + 1), *o = out;
    if (!out || s[0] != '"') goto bad;
    for (size_t i = 1; i < n; i++) {
        if (s[i] == '"') {
            *o = '\0';
            *len = (size_t)(o - out);
            return out;
        }
        if (s[i] != '\\') {
            *o++ = s[i];
            continue;
        }
        char e = s[++i];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (simple && e) {
            *o++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            continue;
        }
        if (e != 'u' || i + 4 >= n) goto bad;
        int cp = hex4(s + i + 1);
        i += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && s[i + 1] == '\\' && s[i + 2] == 'u') {
            int lo = hex4(s + i + 3);
            if (lo < 0xDC00 || lo > 0xDFFF) goto bad;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
        }
        if (cp < 0) goto bad;
        o += utf8proc_encode_char(cp, (utf8proc_uint8_t *)o);
    }
bad:
    free(out);
    return NULL;
}

typedef struct {
    char name[64];
    char *text;
    size_t len;
} tcase;

/* The strings of a corpus (named by index) and, unless binary is NULL, one binary case named by
 * its file name. */
static size_t cases_load(const char *corpus_path, const char *binary, tcase **out) {
    size_t len, n = 0;
    char *corpus = file_read(corpus_path, &len);
    CHECK(corpus, "cannot read %s", corpus_path);
    *out = NULL;
    if (!corpus) return 0;
    tcase *cases = calloc(len + 2, sizeof *cases);
    for (char *line = strtok(corpus, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || !line[0]) continue;
        tcase *c = &cases[n];
        snprintf(c->name, sizeof c->name, "%zu", n);
        c->text = json_string_decode(line, &c->len);
        CHECK(c->text, "%s: case %zu is not a JSON string", corpus_path, n);
        if (c->text) n++;
    }
    free(corpus);
    if (binary) {
        const char *base = strrchr(binary, '/');
        snprintf(cases[n].name, sizeof cases[n].name, "%s", base ? base + 1 : binary);
        cases[n].text = file_read(binary, &cases[n].len);
        CHECK(cases[n].text, "cannot read %s", binary);
        if (cases[n].text) n++;
    }
    *out = cases;
    return n;
}

static void cases_free(tcase *cases, size_t n) {
    for (size_t i = 0; i < n; i++) free(cases[i].text);
    free(cases);
}

typedef struct {
    char name[64];
    int special;
    int32_t *ids;
    size_t n;
} tref;

static size_t refs_load(const char *path, tref **out) {
    size_t len, n = 0;
    char *text = file_read(path, &len);
    CHECK(text, "cannot read %s", path);
    *out = NULL;
    if (!text) return 0;
    tref *refs = calloc(len / 4 + 1, sizeof *refs);
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') continue;
        char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        CHECK(t2, "%s: bad line '%.40s'", path, line);
        if (!t2) continue;
        tref *r = &refs[n++];
        snprintf(r->name, sizeof r->name, "%.*s", (int)(t1 - line), line);
        r->special = !strncmp(t1 + 1, "special", 7);
        r->ids = malloc((strlen(t2) / 2 + 1) * sizeof *r->ids);
        for (char *p = t2 + 1, *end; *p; p = end) {
            long v = strtol(p, &end, 10);
            if (end == p) break;
            r->ids[r->n++] = (int32_t)v;
        }
    }
    free(text);
    *out = refs;
    return n;
}

static const tref *ref_find(const tref *refs, size_t n, const char *name, int special) {
    for (size_t i = 0; i < n; i++)
        if (refs[i].special == special && !strcmp(refs[i].name, name)) return &refs[i];
    return NULL;
}

/* "piece|piece|..." for ids[from .. from + count), for messages and expectations. */
static void pieces_join(const tokenizer *tok, const int32_t *ids, size_t n, size_t from, size_t count,
                        char *buf, size_t buflen) {
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = from; i < n && i < from + count && o < buflen; i++) {
        const char *p = tokenizer_piece(tok, ids[i]);
        o += (size_t)snprintf(buf + o, buflen - o, "%s%s", i > from ? "|" : "", p ? p : "(null)");
    }
}

static char *nfc(const char *s, size_t n, size_t *len) {
    utf8proc_uint8_t *out = NULL;
    utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &out,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    *len = m < 0 ? 0 : (size_t)m;
    return (char *)out;
}

static int utf8_ok(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) return 0;
        i += (size_t)k;
    }
    return 1;
}

/* Writes json to a temporary file and loads it. */
static tokenizer *load_json_text(const char *json, char *err, size_t errlen) {
    char path[] = "/tmp/flashmoe_tok_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    size_t n = strlen(json);
    int ok = write(fd, json, n) == (ssize_t)n;
    close(fd);
    tokenizer *tok = ok ? tokenizer_load(path, err, errlen) : NULL;
    unlink(path);
    return tok;
}

/* Loads base_path with fields replaced: kv holds key, value pairs and ends with NULL; a key is
 * "name" (top level) or "model.name", a value is JSON text. */
static tokenizer *load_variant(const char *base_path, const char *const *kv, char *err, size_t errlen) {
    size_t len;
    char *text = file_read(base_path, &len);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!root) return NULL;
    for (; kv[0]; kv += 2) {
        cJSON *obj = root;
        const char *key = kv[0];
        if (!strncmp(key, "model.", 6)) obj = cJSON_GetObjectItemCaseSensitive(root, "model"), key += 6;
        cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
        cJSON_AddItemToObject(obj, key, cJSON_Parse(kv[1]));
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    tokenizer *tok = out ? load_json_text(out, err, errlen) : NULL;
    free(out);
    return tok;
}

#define KV(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Checks that text encodes to the pieces in want ("a|Ġ|b"). */
static void expect_pieces(const tokenizer *ctok, const char *text, int special, const char *want) {
    tokenizer *tok = (tokenizer *)ctok;
    int32_t *ids;
    size_t n;
    char got[1024];
    CHECK(tokenizer_encode(tok, text, strlen(text), special, &ids, &n) == 0, "encode '%s'", text);
    pieces_join(tok, ids, n, 0, n, got, sizeof got);
    CHECK(!strcmp(got, want), "encode '%s' (special %d): got %s, want %s", text, special, got, want);
    free(ids);
}

static void expect_ids(tokenizer *tok, const char *text, const int32_t *want, size_t nwant, const char *what) {
    int32_t *ids;
    size_t n;
    CHECK(tokenizer_encode(tok, text, strlen(text), 1, &ids, &n) == 0, "%s: encode", what);
    int same = n == nwant && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    char got[256] = "";
    for (size_t i = 0, o = 0; i < n && o < sizeof got; i++)
        o += (size_t)snprintf(got + o, sizeof got - o, " %d", (int)ids[i]);
    CHECK(same, "%s: '%s' gave ids%s", what, text, got);
    free(ids);
}

/* Checks that two tokenizers give the same ids for text a and text b respectively. */
static void expect_same_ids(tokenizer *ta, const char *a, tokenizer *tb, const char *b, const char *what) {
    int32_t *ia, *ib;
    size_t na, nb;
    CHECK(tokenizer_encode(ta, a, strlen(a), 1, &ia, &na) == 0, "%s: encode", what);
    CHECK(tokenizer_encode(tb, b, strlen(b), 1, &ib, &nb) == 0, "%s: encode", what);
    CHECK(na == nb && (na == 0 || !memcmp(ia, ib, na * sizeof *ia)), "%s: %zu ids vs %zu ids", what, na, nb);
    free(ia);
    free(ib);
}

/* ------------------------------------------------------------------------------------------------
 * Qwen3 tokenizer */

static void test_qwen3_loaded(void) {
    CHECK(qwen3 != NULL, "%s (run tools/fetch_qwen3_tokenizer.sh)", qwen3_err);
    if (!qwen3) return;
    CHECK(tokenizer_vocab_size(qwen3) == 151669, "vocab size %d", tokenizer_vocab_size(qwen3));
    CHECK(tokenizer_token_id(qwen3, "<|im_end|>") == 151645, "<|im_end|> id");
    CHECK(tokenizer_token_id(qwen3, "<think>") == 151667, "<think> id");
    CHECK(tokenizer_token_id(qwen3, "Ġthe") == 279, "Ġthe id");
    CHECK(tokenizer_token_id(qwen3, "no such piece") == -1, "missing piece");
    CHECK(tokenizer_is_special(qwen3, 151645) && !tokenizer_is_special(qwen3, 151667) &&
              !tokenizer_is_special(qwen3, 279),
          "special flags");
    CHECK(!strcmp(tokenizer_piece(qwen3, 151643), "<|endoftext|>"), "piece 151643");
    CHECK(!tokenizer_piece(qwen3, -1) && !tokenizer_piece(qwen3, 151669) && !tokenizer_piece(qwen3, 1 << 30),
          "out-of-range pieces");
}

/* Every case of the corpus (and binary case), special tokens off and on, gives exactly the ids
 * in refs_path. */
static void expect_reference_ids(tokenizer *tok, const char *corpus, const char *binary, const char *refs_path) {
    tcase *cases;
    tref *refs;
    size_t nc = cases_load(corpus, binary, &cases), nr = refs_load(refs_path, &refs), checked = 0;
    CHECK(nr == 2 * nc, "%s has %zu lines for %zu cases x 2 modes: regenerate it", refs_path, nr, nc);
    for (size_t c = 0; c < nc; c++)
        for (int special = 0; special <= 1; special++) {
            const tref *r = ref_find(refs, nr, cases[c].name, special);
            const char *mode = special ? "special" : "text";
            CHECK(r, "%s: no reference for case %s (%s)", refs_path, cases[c].name, mode);
            int32_t *ids;
            size_t n;
            CHECK(tokenizer_encode(tok, cases[c].text, cases[c].len, special, &ids, &n) == 0, "encode");
            if (!r) continue;
            size_t d = 0;
            while (d < n && d < r->n && ids[d] == r->ids[d]) d++;
            if (d < n || d < r->n) {
                char got[256], want[256];
                size_t from = d > 2 ? d - 2 : 0;
                pieces_join(tok, ids, n, from, 6, got, sizeof got);
                pieces_join(tok, r->ids, r->n, from, 6, want, sizeof want);
                CHECK(0, "%s case %s (%s): %zu ids vs %zu reference ids, first difference at %zu: got %s, want %s",
                      corpus, cases[c].name, mode, n, r->n, d, got, want);
            }
            checked++;
            free(ids);
        }
    CHECK(checked == 2 * nc && nc > 0, "checked %zu of %zu", checked, 2 * nc);
    for (size_t i = 0; i < nr; i++) free(refs[i].ids);
    free(refs);
    cases_free(cases, nc);
}

static void test_qwen3_reference_ids(void) {
    CHECK(qwen3, "Qwen3 tokenizer not loaded");
    if (!qwen3) return;
    expect_reference_ids(qwen3, CORPUS, INVALID_UTF8, REFS);
}

/* decode(encode(x)) == NFC(x) for valid UTF-8, and == the repaired text for invalid UTF-8. */
static void test_qwen3_round_trip(void) {
    CHECK(qwen3, "Qwen3 tokenizer not loaded");
    if (!qwen3) return;
    tcase *cases;
    size_t nc = cases_load(CORPUS, INVALID_UTF8, &cases);
    for (size_t c = 0; c < nc; c++) {
        int valid = utf8_ok(cases[c].text, cases[c].len);
        const char *src = valid ? cases[c].text : INVALID_UTF8_REPAIRED;
        size_t srclen = valid ? cases[c].len : strlen(INVALID_UTF8_REPAIRED), want_len;
        char *want = nfc(src, srclen, &want_len);
        for (int special = 0; special <= 1; special++) {
            int32_t *ids;
            size_t n, len;
            char *text;
            CHECK(tokenizer_encode(qwen3, cases[c].text, cases[c].len, special, &ids, &n) == 0, "encode");
            CHECK(tokenizer_decode(qwen3, ids, n, &text, &len) == 0, "decode");
            CHECK(len == want_len && !memcmp(text, want, len), "case %s (special %d): round trip gives '%.60s'",
                  cases[c].name, special, text);
            free(ids);
            free(text);
        }
        free(want);
    }
    cases_free(cases, nc);
}

/* Invalid UTF-8 is tokenised as the text with U+FFFD in place of each bad sequence. */
static void test_qwen3_invalid_utf8(void) {
    CHECK(qwen3, "Qwen3 tokenizer not loaded");
    if (!qwen3) return;
    size_t len, n1, n2;
    char *bad = file_read(INVALID_UTF8, &len);
    CHECK(bad && !utf8_ok(bad, len), "%s must hold invalid UTF-8", INVALID_UTF8);
    if (!bad) return;
    int32_t *a, *b;
    CHECK(tokenizer_encode(qwen3, bad, len, 0, &a, &n1) == 0, "encode invalid");
    CHECK(tokenizer_encode(qwen3, INVALID_UTF8_REPAIRED, strlen(INVALID_UTF8_REPAIRED), 0, &b, &n2) == 0,
          "encode repaired");
    CHECK(n1 == n2 && !memcmp(a, b, n1 * sizeof *a), "invalid bytes are not encoded as U+FFFD");
    free(a);
    free(b);
    free(bad);
    const char lone[] = "\xC3";
    int32_t *ids;
    size_t n;
    char *text;
    CHECK(tokenizer_encode(qwen3, lone, 1, 0, &ids, &n) == 0 && tokenizer_decode(qwen3, ids, n, &text, &len) == 0,
          "lone lead byte");
    CHECK(!strcmp(text, "\xEF\xBF\xBD"), "lone lead byte decodes to '%s'", text);
    free(ids);
    free(text);
}

/* Code points of GPT-2's byte stand-ins, for building byte tokens by hand. */
static int byte_stand_in(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) n++;
    return 256 + n;
}

static int32_t byte_token(const tokenizer *tok, uint8_t b) {
    char piece[5] = {0};
    utf8proc_encode_char(byte_stand_in(b), (utf8proc_uint8_t *)piece);
    return tokenizer_token_id(tok, piece);
}

/* Feeding ids one by one never yields part of a character, and adds up to the batch decode. */
static void test_qwen3_stream_decode(void) {
    CHECK(qwen3, "Qwen3 tokenizer not loaded");
    if (!qwen3) return;
    tokdec_stream *s = tokdec_stream_new(qwen3);
    CHECK(s, "stream");
    if (!s) return;
    /* one byte per token: each character must come out whole, on its last byte */
    const char text[] = "a\xE4\xBD\xA0\xF0\x9F\x98\x80\xC3\xA9z";
    const char *want[] = {"a", "", "", "\xE4\xBD\xA0", "", "", "", "\xF0\x9F\x98\x80", "", "\xC3\xA9", "z"};
    for (size_t i = 0; i < sizeof text - 1; i++) {
        size_t len;
        const char *out = tokdec_stream_push(s, byte_token(qwen3, (uint8_t)text[i]), &len);
        CHECK(out && len == strlen(want[i]) && !memcmp(out, want[i], len), "byte %zu: got '%s', want '%s'", i,
              out ? out : "(null)", want[i]);
    }
    size_t len;
    const char *out = tokdec_stream_flush(s, &len);
    CHECK(out && len == 0, "flush after complete text: %zu bytes", len);
    /* a character cut short: U+FFFD as soon as it cannot be completed, and at the flush */
    const uint8_t cut[] = {0xE4, 0xBD, 'x', 0xF0, 0x9F};
    const char *cut_want[] = {"", "", "\xEF\xBF\xBDx", "", ""};
    for (size_t i = 0; i < sizeof cut; i++) {
        out = tokdec_stream_push(s, byte_token(qwen3, cut[i]), &len);
        CHECK(out && len == strlen(cut_want[i]) && !memcmp(out, cut_want[i], len), "cut byte %zu: got '%s'", i,
              out ? out : "(null)");
    }
    out = tokdec_stream_flush(s, &len);
    CHECK(out && !strcmp(out, "\xEF\xBF\xBD"), "flush of a cut character: '%s'", out ? out : "(null)");
    CHECK(!tokdec_stream_push(s, -5, &len) && !tokdec_stream_push(s, 151669, &len), "bad ids are refused");

    /* every corpus case */
    tcase *cases;
    size_t nc = cases_load(CORPUS, INVALID_UTF8, &cases);
    for (size_t c = 0; c < nc; c++) {
        int32_t *ids;
        size_t n, batch_len, total = 0;
        char *batch, *joined = malloc(4 * cases[c].len + 16);
        CHECK(tokenizer_encode(qwen3, cases[c].text, cases[c].len, 1, &ids, &n) == 0, "encode");
        CHECK(tokenizer_decode(qwen3, ids, n, &batch, &batch_len) == 0, "decode");
        for (size_t i = 0; i <= n; i++) {
            out = i < n ? tokdec_stream_push(s, ids[i], &len) : tokdec_stream_flush(s, &len);
            CHECK(out && utf8_ok(out, len), "case %s: token %zu gives partial UTF-8", cases[c].name, i);
            if (!out || total + len > 4 * cases[c].len + 16) break;
            memcpy(joined + total, out, len);
            total += len;
        }
        CHECK(total == batch_len && !memcmp(joined, batch, total), "case %s: stream differs from batch decode",
              cases[c].name);
        free(joined);
        free(batch);
        free(ids);
    }
    cases_free(cases, nc);
    tokdec_stream_free(s);
}

/* Long runs of one class of character: 256 KiB regex matches and BPE words (a long word costs
 * O(n log n), as in HF, so the test keeps them to a size that runs in a fraction of a second). */
static void test_qwen3_long_input(void) {
    CHECK(qwen3, "Qwen3 tokenizer not loaded");
    if (!qwen3) return;
    const char fill[] = {'a', ' ', '\n', '7', '!'};
    size_t n = 1 << 18;
    char *text = malloc(n);
    for (size_t f = 0; f < sizeof fill; f++) {
        memset(text, fill[f], n);
        int32_t *ids;
        size_t nid, len;
        char *back;
        CHECK(tokenizer_encode(qwen3, text, n, 0, &ids, &nid) == 0, "encode 256 KiB of '%c': %s", fill[f],
              tokenizer_error(qwen3));
        CHECK(tokenizer_decode(qwen3, ids, nid, &back, &len) == 0 && len == n && !memcmp(back, text, n),
              "256 KiB of '%c' do not round-trip", fill[f]);
        free(ids);
        free(back);
    }
    free(text);
}

/* ------------------------------------------------------------------------------------------------
 * Small hand-made tokenizers */

/* Added-token flags, normalised tokens, merges: tiny_corpus.txt against tiny_refs.txt. */
static void test_tiny_reference_ids(void) {
    char err[512];
    tokenizer *t = tokenizer_load(TINY, err, sizeof err);
    CHECK(t, "%s", err);
    if (!t) return;
    expect_reference_ids(t, TINY_CORPUS, NULL, TINY_REFS);
    tokenizer_free(t);
}

static void test_tiny_string_merges(void) {
    char err[512];
    tokenizer *t = tokenizer_load(TINY, err, sizeof err);
    tokenizer *s = tokenizer_load(TINY_STRING_MERGES, err, sizeof err);
    CHECK(t && s, "%s", err);
    const char *texts[] = {"hello world", "aaaaa", "café", "a cat", "x [LR] y"};
    for (size_t i = 0; t && s && i < sizeof texts / sizeof texts[0]; i++)
        expect_same_ids(t, texts[i], s, texts[i], "\"a b\" merges vs [\"a\", \"b\"] merges");
    tokenizer_free(t);
    tokenizer_free(s);
}

static void test_tiny_lookups(void) {
    char err[512];
    tokenizer *t = tokenizer_load(TINY, err, sizeof err);
    CHECK(t, "%s", err);
    if (!t) return;
    int32_t hello = tokenizer_token_id(t, "hello");
    CHECK(hello >= 0 && hello < 256 + 14, "an added token already in the vocab keeps its vocab id (%d)", hello);
    CHECK(!tokenizer_piece(t, 308), "id 308 (the file's id for 'hello') stays unassigned");
    CHECK(tokenizer_is_special(t, tokenizer_token_id(t, "<s>")), "<s> is special");
    CHECK(!tokenizer_is_special(t, tokenizer_token_id(t, "[L]")), "[L] is not special");
    /* HF (AddedVocabulary::add_tokens) gives added tokens missing from the vocab the ids after it, in
     * file order (270..276 here), whatever ids the file declares (300..307): checked against tokenizers
     * 0.23.2 with tools/make_tokenizer_refs.py */
    CHECK(tokenizer_token_id(t, "<s>") == 270, "<s> takes the first id after the vocab: %d", tokenizer_token_id(t, "<s>"));
    CHECK(!tokenizer_piece(t, 300), "the file's id 300 stays unassigned");
    CHECK(tokenizer_vocab_size(t) == 277, "vocab size %d", tokenizer_vocab_size(t));
    int32_t *ids;
    size_t n, len;
    char *text;
    CHECK(tokenizer_encode(t, "a [L] b<s>", 10, 1, &ids, &n) == 0, "encode");
    CHECK(tokenizer_decode(t, ids, n, &text, &len) == 0, "decode");
    CHECK(!strcmp(text, "a[L] b<s>"), "decode gives '%s'", text);
    free(ids);
    free(text);
    tokenizer_free(t);
}

static void test_tiny_normalizers(void) {
    char err[512];
    tokenizer *none = load_variant(TINY, KV("normalizer", "null"), err, sizeof err);
    tokenizer *nfd = load_variant(TINY, KV("normalizer", "{\"type\": \"NFD\"}"), err, sizeof err);
    tokenizer *nfkc = load_variant(TINY, KV("normalizer", "{\"type\": \"NFKC\"}"), err, sizeof err);
    tokenizer *nfkd = load_variant(TINY, KV("normalizer", "{\"type\": \"NFKD\"}"), err, sizeof err);
    tokenizer *seq = tokenizer_load(TINY, err, sizeof err); /* Sequence [NFD, NFC] */
    CHECK(none && nfd && nfkc && nfkd && seq, "%s", err);
    if (none && nfd && nfkc && nfkd && seq) {
        expect_same_ids(nfd, "caf\xC3\xA9", none, "cafe\xCC\x81", "NFD");
        expect_same_ids(seq, "cafe\xCC\x81", none, "caf\xC3\xA9", "Sequence [NFD, NFC]");
        expect_same_ids(nfkc, "\xEF\xAC\x81 e\xCC\x81", none, "fi \xC3\xA9", "NFKC");
        expect_same_ids(nfkd, "\xEF\xAC\x81 \xC3\xA9", none, "fi e\xCC\x81", "NFKD");
        expect_same_ids(none, "caf\xC3\xA9", seq, "caf\xC3\xA9", "no normaliser");
        expect_pieces(none, "e\xCC\x81!", 1, "e|Ì|ģ|!"); /* without NFC the normalized token is not found */
    }
    tokenizer_free(none);
    tokenizer_free(nfd);
    tokenizer_free(nfkc);
    tokenizer_free(nfkd);
    tokenizer_free(seq);
}

/* Normalising only the non-ASCII stretches gives what normalising the whole text gives: random
 * strings of starters, marks, Hangul jamo and compatibility characters, with each form and a
 * Sequence, against a tokenizer without normaliser fed the text normalised at once by utf8proc. */
static void test_normalizer_chunks(void) {
    static const char *alphabet[] = {"a", "e", "n", "A", " ", "x", ".", "\xCC\x81", "\xCC\x83", "\xCC\x88",
                                     "\xCC\xA3", "\xCC\x82", "\xC3\xA9", "\xC3\xB1", "\xE1\x84\x80",
                                     "\xE1\x85\xA1", "\xE1\x86\xA8", "\xEA\xB0\x80", "\xEF\xAC\x81",
                                     "\xC2\xBD", "\xC3\x85", "\xE2\x84\xAB", "\xE1\xB8\x8B", "\xC7\x85",
                                     "\xC2\xA8", "\xE0\xBD\xB3", "\xCD\x84", "\xE4\xB8\xAD"};
    static const struct {
        const char *json;
        utf8proc_option_t opts[2];
    } forms[] = {
        {"{\"type\": \"NFC\"}", {UTF8PROC_STABLE | UTF8PROC_COMPOSE, 0}},
        {"{\"type\": \"NFD\"}", {UTF8PROC_STABLE | UTF8PROC_DECOMPOSE, 0}},
        {"{\"type\": \"NFKC\"}", {UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT, 0}},
        {"{\"type\": \"NFKD\"}", {UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, 0}},
        {"{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFKD\"}, {\"type\": \"NFC\"}]}",
         {UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, UTF8PROC_STABLE | UTF8PROC_COMPOSE}},
    };
    char err[512];
    tokenizer *plain = load_variant(TINY, KV("normalizer", "null", "added_tokens", "[]"), err, sizeof err);
    CHECK(plain, "%s", err);
    uint32_t seed = 12345;
    for (size_t f = 0; plain && f < sizeof forms / sizeof forms[0]; f++) {
        tokenizer *t = load_variant(TINY, KV("normalizer", forms[f].json, "added_tokens", "[]"), err, sizeof err);
        CHECK(t, "%s", err);
        for (int iter = 0; t && iter < 400; iter++) {
            char text[512] = "";
            int len = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 24;
            for (int k = 0; k < len; k++) {
                seed = seed * 1103515245u + 12345u;
                strcat(text, alphabet[(seed >> 16) % (sizeof alphabet / sizeof alphabet[0])]);
            }
            utf8proc_uint8_t *once = NULL, *twice = NULL;
            utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)strlen(text), &once, forms[f].opts[0]);
            if (forms[f].opts[1])
                utf8proc_map(once, (utf8proc_ssize_t)strlen((char *)once), &twice, forms[f].opts[1]);
            char what[96];
            snprintf(what, sizeof what, "%s on random text %d", forms[f].json, iter);
            expect_same_ids(t, text, plain, (const char *)(twice ? twice : once), what);
            free(once);
            free(twice);
        }
        tokenizer_free(t);
    }
    tokenizer_free(plain);
}

/* A BPE over "a", "b", "-" whose merges show where the pre-tokenizer cut: a-b is one piece only
 * when nothing cuts it. */
static tokenizer *dash_tokenizer(const char *pre_tokenizer, char *err, size_t errlen) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"-\": 2, \"a-\": 3, \"-b\": 4, "
             "\"--\": 5, \"a-b\": 6}, \"merges\": [\"a -\", \"- b\", \"- -\", \"a- b\"]}, \"pre_tokenizer\": %s}",
             pre_tokenizer);
    return load_json_text(json, err, errlen);
}

static void test_split_behaviors(void) {
    static const struct {
        const char *pattern; /* Split pattern ({"String": "-"} ...), or NULL: the whole pre_tokenizer */
        const char *behavior_or_pretok, *text;
        int invert;
        int32_t ids[4];
        size_t n;
    } cases[] = {
        {NULL, "null", "a-b", 0, {6}, 1},
        {"{\"String\": \"-\"}", "Isolated", "a-b", 0, {0, 2, 1}, 3},
        {"{\"String\": \"-\"}", "Isolated", "a--b", 0, {0, 2, 2, 1}, 4},
        {"{\"String\": \"-\"}", "Removed", "a-b", 0, {0, 1}, 2},
        {"{\"String\": \"-\"}", "MergedWithPrevious", "a-b", 0, {3, 1}, 2},
        {"{\"String\": \"-\"}", "MergedWithNext", "a-b", 0, {0, 4}, 2},
        {"{\"String\": \"-\"}", "Contiguous", "a--b", 0, {0, 5, 1}, 3},
        {"{\"String\": \"-\"}", "Removed", "a-b", 1, {2}, 1},
        {"{\"Regex\": \"-+\"}", "Isolated", "a--b", 0, {0, 5, 1}, 3},
        {"{\"Regex\": \"x*\"}", "Isolated", "ab", 0, {0, 1}, 2}, /* empty matches */
        {"{\"Regex\": \"[.]\"}", "Isolated", "a-b", 0, {6}, 1},   /* no match */
        {NULL,
         "{\"type\": \"Sequence\", \"pretokenizers\": ["
         "{\"type\": \"Split\", \"pattern\": {\"String\": \"-\"}, \"behavior\": \"MergedWithNext\"}, "
         "{\"type\": \"Split\", \"pattern\": {\"String\": \"b\"}, \"behavior\": \"Removed\"}]}",
         "a-b", 0, {0, 2}, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512], what[64], pretok[512];
        if (cases[i].pattern)
            snprintf(pretok, sizeof pretok,
                     "{\"type\": \"Split\", \"pattern\": %s, \"behavior\": \"%s\", \"invert\": %s}",
                     cases[i].pattern, cases[i].behavior_or_pretok, cases[i].invert ? "true" : "false");
        else
            snprintf(pretok, sizeof pretok, "%s", cases[i].behavior_or_pretok);
        tokenizer *t = dash_tokenizer(pretok, err, sizeof err);
        CHECK(t, "case %zu: %s", i, err);
        if (!t) continue;
        snprintf(what, sizeof what, "split case %zu", i);
        expect_ids(t, cases[i].text, cases[i].ids, cases[i].n, what);
        tokenizer_free(t);
    }
}

static void test_byte_level_options(void) {
    char err[512];
    const char *byte_level = "{\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"use_regex\": true}";
    tokenizer *t = load_variant(TINY, KV("pre_tokenizer", byte_level), err, sizeof err);
    CHECK(t, "%s", err);
    if (!t) return;
    expect_pieces(t, "ca world", 1, "Ġ|ca|Ġworld");
    expect_pieces(t, " world", 1, "Ġworld");                   /* already starts with a space */
    expect_pieces(t, "a<s>b", 1, "Ġ|a|<s>|Ġ|b");               /* every piece gets the space */
    expect_pieces(t, "hello world", 1, "hello|Ġworld");         /* "hello" is an added token */
    expect_pieces(t, "a  b", 1, "Ġ|a|Ġ|Ġ|b");                     /* \s+(?!\S) leaves one space for b */
    tokenizer_free(t);
}

static void test_bpe_options(void) {
    char err[512];
    tokenizer *t = tokenizer_load(TINY_CHARS, err, sizeof err);
    tokenizer *nofuse = load_variant(TINY_CHARS, KV("model.fuse_unk", "false"), err, sizeof err);
    tokenizer *ignore = load_variant(TINY_CHARS, KV("model.ignore_merges", "true"), err, sizeof err);
    tokenizer *suffix = load_json_text(
        "{\"model\": {\"type\": \"BPE\", \"end_of_word_suffix\": \"</w>\", \"vocab\": {\"a\": 0, \"b</w>\": 1, "
        "\"ab</w>\": 2, \"b\": 3}, \"merges\": [[\"a\", \"b</w>\"]]}}",
        err, sizeof err);
    CHECK(t && nofuse && ignore && suffix, "%s", err);
    if (t && nofuse && ignore && suffix) {
        expect_ids(t, "abxyab", (const int32_t[]){5, 0, 6}, 3, "continuing_subword_prefix + fuse_unk");
        expect_ids(nofuse, "abxyab", (const int32_t[]){5, 0, 0, 6}, 4, "unk without fuse_unk");
        expect_ids(t, "abab", (const int32_t[]){5, 6}, 2, "merges");
        expect_ids(ignore, "abab", (const int32_t[]){7}, 1, "ignore_merges");
        expect_ids(ignore, "aba", (const int32_t[]){5, 2}, 2, "ignore_merges, word not in vocab");
        expect_ids(suffix, "ab", (const int32_t[]){2}, 1, "end_of_word_suffix");
        expect_ids(suffix, "bab", (const int32_t[]){3, 2}, 2, "end_of_word_suffix");
        char *text;
        size_t len;
        CHECK(tokenizer_decode(t, (const int32_t[]){5, 0, 6}, 3, &text, &len) == 0, "decode");
        CHECK(!strcmp(text, "ab <unk> ##ab"), "no decoder: pieces joined by spaces, got '%s'", text);
        free(text);
    }
    tokenizer_free(t);
    tokenizer_free(nofuse);
    tokenizer_free(ignore);
    tokenizer_free(suffix);
}

/* A load error names the file and the problem. */
static void expect_load_error(tokenizer *t, const char *err, const char *path, const char *problem) {
    CHECK(!t, "loading should fail (%s)", problem);
    tokenizer_free(t);
    CHECK((!path || strstr(err, path)) && strstr(err, problem), "error '%s' should name %s and say '%s'", err,
          path ? path : "the file", problem);
}

static void test_load_errors(void) {
    char err[512];
    static const struct {
        const char *key, *value, *problem;
    } variants[] = {
        {"model.type", "\"WordPiece\"", "model type 'WordPiece' is not supported"},
        {"model.byte_fallback", "true", "byte_fallback is not supported"},
        {"model.dropout", "0.1", "dropout is not supported"},
        {"model.merges", "[[\"h\", \"zz\"]]", "'zz' is not in the vocab"},
        {"model.merges", "[\"h e l\"]", "is not two pieces"},
        {"model.vocab", "{\"a\": -1}", "must be an integer"},
        {"model.unk_token", "\"<nope>\"", "unk_token '<nope>' is not in the vocab"},
        {"normalizer", "{\"type\": \"Lowercase\"}", "normalizer type 'Lowercase' is not supported"},
        {"pre_tokenizer", "{\"type\": \"Metaspace\"}", "pre_tokenizer type 'Metaspace' is not supported"},
        {"pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}",
         "cannot compile pattern"},
        {"pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Sideways\"}",
         "behavior 'Sideways'"},
        {"decoder", "{\"type\": \"WordPiece\"}", "decoder type 'WordPiece' is not supported"},
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        tokenizer *t = load_variant(TINY, KV(variants[i].key, variants[i].value), err, sizeof err);
        expect_load_error(t, err, "/tmp/flashmoe_tok_", variants[i].problem);
    }
    expect_load_error(tokenizer_load("tests/data/tokenizer/no-such-file.json", err, sizeof err), err,
                      "tests/data/tokenizer/no-such-file.json", "cannot open");
    expect_load_error(tokenizer_load("tests/data/tokenizer/malformed.json", err, sizeof err), err,
                      "tests/data/tokenizer/malformed.json", "malformed JSON near line 3");
    expect_load_error(tokenizer_load("tests/data/tokenizer/wordpiece.json", err, sizeof err), err,
                      "tests/data/tokenizer/wordpiece.json", "model type 'WordPiece' is not supported");
    expect_load_error(tokenizer_load("tests/data/tokenizer", err, sizeof err), err, "tests/data/tokenizer", "");
    expect_load_error(load_json_text("[1, 2]", err, sizeof err), err, NULL, "expected a JSON object");
    expect_load_error(load_json_text("", err, sizeof err), err, NULL, "malformed JSON");
    expect_load_error(load_json_text("{}", err, sizeof err), err, NULL, "\"model\" is missing");
    CHECK(tokenizer_load("tests/data/tokenizer/no-such-file.json", NULL, 0) == NULL, "NULL err is allowed");
    tokenizer_free(NULL);
}

int main(void) {
    qwen3 = tokenizer_load(QWEN3_JSON, qwen3_err, sizeof qwen3_err);
    RUN_TEST(test_qwen3_loaded);
    RUN_TEST(test_qwen3_reference_ids);
    RUN_TEST(test_qwen3_round_trip);
    RUN_TEST(test_qwen3_invalid_utf8);
    RUN_TEST(test_qwen3_stream_decode);
    RUN_TEST(test_qwen3_long_input);
    RUN_TEST(test_tiny_reference_ids);
    RUN_TEST(test_tiny_string_merges);
    RUN_TEST(test_tiny_lookups);
    RUN_TEST(test_tiny_normalizers);
    RUN_TEST(test_normalizer_chunks);
    RUN_TEST(test_split_behaviors);
    RUN_TEST(test_byte_level_options);
    RUN_TEST(test_bpe_options);
    RUN_TEST(test_load_errors);
    tokenizer_free(qwen3);
    TEST_EXIT();
}
