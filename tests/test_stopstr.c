/* Stop-string matcher tests: what gets printed, and when, for text fed in pieces. */
#include <stdint.h>

#include "stopstr.h"
#include "test.h"

/* Collects everything the matcher lets through. */
typedef struct {
    char text[4096];
    size_t len;
    int chunks_ending_mid_char; /* printed chunks that end inside a UTF-8 sequence */
} printed;

static int ends_mid_char(const char *s, size_t n) {
    /* walk the chunk: a lead byte announcing more bytes than remain means a split character */
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        if (i + need > n) return 1;
        i += need;
    }
    return 0;
}

static void printed_add(printed *p, const char *s, size_t n) {
    if (n && ends_mid_char(s, n)) p->chunks_ending_mid_char++;
    memcpy(p->text + p->len, s, n);
    p->len += n;
    p->text[p->len] = 0;
}

static stopstr *make(const char *const *stops, int n) {
    stopstr *m = NULL;
    stopstr_status st = stopstr_create(&m, stops, n);
    CHECK(st == STOPSTR_OK, "stopstr_create failed (%d)", st);
    return m;
}

/* Feeds one piece, appends what comes out to p and returns the status. */
static stopstr_status feed(stopstr *m, printed *p, const char *piece) {
    const char *out;
    size_t n;
    stopstr_status st = stopstr_feed(m, piece, strlen(piece), &out, &n);
    printed_add(p, out, n);
    return st;
}

static void flush(stopstr *m, printed *p) {
    const char *out;
    size_t n;
    stopstr_flush(m, &out, &n);
    printed_add(p, out, n);
}

static void test_stop_in_one_piece(void) {
    const char *stops[] = {"<|im_end|>"};
    stopstr *m = make(stops, 1);
    printed p = {0};
    CHECK(feed(m, &p, "Hello<|im_end|>world") == STOPSTR_HIT, "no hit");
    CHECK(!strcmp(p.text, "Hello"), "printed '%s'", p.text);
    CHECK(stopstr_which(m) == 0, "which %d", stopstr_which(m));
    /* stopped: nothing more comes out, not even on flush */
    CHECK(feed(m, &p, "more") == STOPSTR_HIT, "hit forgotten");
    flush(m, &p);
    CHECK(!strcmp(p.text, "Hello"), "printed '%s' after the hit", p.text);
    stopstr_free(m);
}

static void test_stop_split_across_pieces(void) {
    const char *stops[] = {"<|im_end|>"};
    stopstr *m = make(stops, 1);
    printed p = {0};
    CHECK(feed(m, &p, "Hel") == STOPSTR_OK, "early hit");
    CHECK(!strcmp(p.text, "Hel"), "plain text held back: '%s'", p.text);
    CHECK(feed(m, &p, "lo <|im") == STOPSTR_OK, "early hit");
    CHECK(!strcmp(p.text, "Hello "), "'<|im' must be held back, printed '%s'", p.text);
    CHECK(feed(m, &p, "_en") == STOPSTR_OK, "early hit");
    CHECK(!strcmp(p.text, "Hello "), "printed '%s'", p.text);
    CHECK(feed(m, &p, "d|>tail") == STOPSTR_HIT, "stop split over three pieces not found");
    CHECK(!strcmp(p.text, "Hello "), "printed '%s'", p.text);
    stopstr_free(m);
}

static void test_false_alarm_released(void) {
    const char *stops[] = {"<|im_end|>"};
    stopstr *m = make(stops, 1);
    printed p = {0};
    feed(m, &p, "a <|i");
    CHECK(!strcmp(p.text, "a "), "printed '%s'", p.text);
    CHECK(feed(m, &p, "x") == STOPSTR_OK, "false hit");
    CHECK(!strcmp(p.text, "a <|ix"), "held text not released: '%s'", p.text);
    /* a held prefix at the very end comes out on flush */
    feed(m, &p, " <|im_e");
    CHECK(!strcmp(p.text, "a <|ix "), "printed '%s'", p.text);
    flush(m, &p);
    CHECK(!strcmp(p.text, "a <|ix <|im_e"), "flush lost text: '%s'", p.text);
    stopstr_free(m);
}

static void test_overlapping_prefixes(void) {
    /* "aab" inside "aaab": the candidate starting at the first 'a' fails, the next one succeeds */
    const char *stops[] = {"aab"};
    stopstr *m = make(stops, 1);
    printed p = {0};
    const char *pieces[] = {"a", "a", "a", "b"};
    stopstr_status st = STOPSTR_OK;
    for (int i = 0; i < 4; i++) st = feed(m, &p, pieces[i]);
    CHECK(st == STOPSTR_HIT, "aab in aaab not found");
    CHECK(!strcmp(p.text, "a"), "printed '%s'", p.text);
    stopstr_free(m);

    /* several stop strings: the earliest occurrence wins, whichever it is */
    const char *two[] = {"\nUser:", "\n\n"};
    m = make(two, 2);
    memset(&p, 0, sizeof p);
    feed(m, &p, "A\nB\n");
    CHECK(feed(m, &p, "\nUser: C") == STOPSTR_HIT, "no hit");
    CHECK(!strcmp(p.text, "A\nB"), "printed '%s'", p.text);
    CHECK(stopstr_which(m) == 1, "which %d, want 1 (\\n\\n starts first)", stopstr_which(m));
    stopstr_reset(m);
    memset(&p, 0, sizeof p);
    CHECK(feed(m, &p, "x\nUs") == STOPSTR_OK && feed(m, &p, "er: y") == STOPSTR_HIT, "reset matcher did not stop");
    CHECK(!strcmp(p.text, "x") && stopstr_which(m) == 0, "printed '%s', which %d", p.text, stopstr_which(m));
    stopstr_free(m);
}

/* Multibyte text fed one byte at a time: no chunk ends inside a character, and a multibyte stop
 * string split anywhere is found. */
static void test_multibyte_bytewise(void) {
    const char *stops[] = {"終わり"};
    stopstr *m = make(stops, 1);
    printed p = {0};
    const char *text = "これで終わりです";
    stopstr_status st = STOPSTR_OK;
    for (size_t i = 0; text[i] && st == STOPSTR_OK; i++) {
        const char *out;
        size_t n;
        st = stopstr_feed(m, text + i, 1, &out, &n);
        printed_add(&p, out, n);
    }
    CHECK(st == STOPSTR_HIT, "multibyte stop not found");
    CHECK(!strcmp(p.text, "これで"), "printed '%s'", p.text);
    CHECK(p.chunks_ending_mid_char == 0, "%d chunks split a character", p.chunks_ending_mid_char);
    stopstr_free(m);

    /* no stop strings at all: only incomplete characters are held */
    m = make(NULL, 0);
    memset(&p, 0, sizeof p);
    const char *mixed = "héllo, 世界 🙂!";
    for (size_t i = 0; mixed[i]; i++) {
        const char *out;
        size_t n;
        stopstr_feed(m, mixed + i, 1, &out, &n);
        printed_add(&p, out, n);
    }
    flush(m, &p);
    CHECK(!strcmp(p.text, mixed), "printed '%s'", p.text);
    CHECK(p.chunks_ending_mid_char == 0, "%d chunks split a character", p.chunks_ending_mid_char);
    stopstr_free(m);

    /* a stop string that shares a lead byte with the text: "é" vs "è" (C3 A9 vs C3 A8) */
    const char *acc[] = {"é"};
    m = make(acc, 1);
    memset(&p, 0, sizeof p);
    feed(m, &p, "caf\xc3");
    CHECK(p.len == 3, "the lead byte must be held, printed %zu bytes", p.len);
    CHECK(feed(m, &p, "\xa8 ok") == STOPSTR_OK, "è matched é");
    CHECK(!strcmp(p.text, "cafè ok"), "printed '%s'", p.text);
    stopstr_free(m);
}

static uint64_t rng = 88172645463325252ull;
static unsigned next_rand(unsigned n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

/* Random texts over a small alphabet (so stop strings occur often), split at random byte
 * positions: what is printed must be exactly the text before the first occurrence of any stop
 * string, and the whole text when there is none. */
static void test_random_against_strstr(void) {
    static const char *alphabet[] = {"a", "b", "<", "|", "é", "\n"};
    const char *stops[] = {"ab<", "|é|", "\n\n", "bb"};
    stopstr *m = make(stops, 4);
    int hits = 0, misses = 0;
    for (int trial = 0; trial < 3000; trial++) {
        char text[128];
        size_t len = 0;
        int nsym = 1 + (int)next_rand(30);
        for (int i = 0; i < nsym; i++) {
            const char *sym = alphabet[next_rand(6)];
            memcpy(text + len, sym, strlen(sym));
            len += strlen(sym);
        }
        text[len] = 0;
        /* reference: the earliest occurrence of any stop */
        size_t want = len;
        int want_hit = 0;
        for (int s = 0; s < 4; s++) {
            const char *f = strstr(text, stops[s]);
            if (f && (size_t)(f - text) <= want) {
                want = (size_t)(f - text);
                want_hit = 1;
            }
        }
        stopstr_reset(m);
        printed p = {0};
        stopstr_status st = STOPSTR_OK;
        for (size_t i = 0; i < len && st == STOPSTR_OK;) {
            size_t n = 1 + next_rand(4);
            if (n > len - i) n = len - i;
            const char *out;
            size_t olen;
            st = stopstr_feed(m, text + i, n, &out, &olen);
            printed_add(&p, out, olen);
            i += n;
        }
        if (st == STOPSTR_OK) flush(m, &p);
        int ok = (st == STOPSTR_HIT) == want_hit && p.len == want && !memcmp(p.text, text, want) &&
                 p.chunks_ending_mid_char == 0;
        CHECK(ok, "trial %d text '%s': printed '%s' (hit %d), want %zu bytes (hit %d)", trial, text, p.text,
              st == STOPSTR_HIT, want, want_hit);
        if (!ok) break;
        hits += want_hit;
        misses += !want_hit;
    }
    CHECK(hits > 500 && misses > 500, "the random cases should mix hits (%d) and misses (%d)", hits, misses);
    stopstr_free(m);
}

static void test_large_piece_and_bad_args(void) {
    const char *stops[] = {"STOP"};
    stopstr *m = make(stops, 1);
    static char big[3000];
    memset(big, 'x', sizeof big - 1);
    memcpy(big + 2500, "STOP", 4);
    printed p = {0};
    CHECK(feed(m, &p, big) == STOPSTR_HIT, "stop in a piece larger than the buffer not found");
    CHECK(p.len == 2500, "printed %zu bytes, want 2500", p.len);
    stopstr_free(m);

    stopstr *bad = NULL;
    const char *empty[] = {""};
    CHECK(stopstr_create(&bad, empty, 1) == STOPSTR_ERR_ARG && !bad, "empty stop string accepted");
}

int main(void) {
    RUN_TEST(test_stop_in_one_piece);
    RUN_TEST(test_stop_split_across_pieces);
    RUN_TEST(test_false_alarm_released);
    RUN_TEST(test_overlapping_prefixes);
    RUN_TEST(test_multibyte_bytewise);
    RUN_TEST(test_random_against_strstr);
    RUN_TEST(test_large_piece_and_bad_args);
    TEST_EXIT();
}
