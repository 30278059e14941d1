/* Text in, text out, against Hugging Face: for each fixture, tools/make_text_refs.py recorded the HF
 * `tokenizers` ids of a prompt (with NFC-sensitive, CJK and emoji text) and the text transformers decodes
 * from its 24-token greedy continuation. `flashmoe run -f PROMPT -n 24 --temp 0 --ignore-eos` must print
 * exactly that text (streamed, whole UTF-8 characters), and `flashmoe tokenize` exactly those ids. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <unistd.h>

#include "test.h"
#include "util.h"

static const char *fixtures[] = {"tests/fixtures/tiny-a-f32", "tests/fixtures/tiny-b-bf16-vl",
                                 "tests/fixtures/tiny-c-f16-sharded"};

/* stdout of a shell command, NUL-terminated (caller frees) */
static char *capture(const char *cmd) {
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += r;
        if (cap - n < 2) buf = realloc(buf, cap *= 2);
    }
    if (buf) buf[n] = 0;
    pclose(p);
    return buf;
}

static void check_fixture(const char *dir, const char *bin) {
    char path[512], err[512], cmd[2048], prompt_path[] = "/tmp/flashmoe_prompt_XXXXXX";
    snprintf(path, sizeof path, "%s/ref/text.json", dir);
    char *text = util_read_file(path, NULL, err, sizeof err);
    CHECK(text != NULL, "%s", err);
    if (!text) return;
    cJSON *j = cJSON_Parse(text);
    free(text);
    const char *prompt = cJSON_GetObjectItem(j, "prompt")->valuestring;
    const char *want = cJSON_GetObjectItem(j, "greedy_text")->valuestring;
    int fd = mkstemp(prompt_path);
    CHECK(fd >= 0 && write(fd, prompt, strlen(prompt)) == (ssize_t)strlen(prompt), "temp file");
    close(fd);

    snprintf(cmd, sizeof cmd, "%s tokenize -m %s -f %s", bin, dir, prompt_path);
    char *ids = capture(cmd), want_ids[4096] = "";
    const cJSON *v;
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(j, "prompt_ids")) {
        size_t l = strlen(want_ids);
        snprintf(want_ids + l, sizeof want_ids - l, l ? " %d" : "%d", v->valueint);
    }
    strcat(want_ids, "\n");
    CHECK(ids && !strcmp(ids, want_ids), "%s: prompt ids\n    ours %s    HF   %s", dir, ids ? ids : "(none)", want_ids);

    snprintf(cmd, sizeof cmd, "%s run -m %s -f %s -n 24 --temp 0 --ignore-eos", bin, dir, prompt_path);
    char *got = capture(cmd);
    size_t wl = strlen(want);
    CHECK(got && strlen(got) == wl + 1 && !memcmp(got, want, wl) && got[wl] == '\n',
          "%s: generated text differs from transformers\n    ours %s    HF   %s", dir, got ? got : "(none)", want);
    free(ids);
    free(got);
    unlink(prompt_path);
    cJSON_Delete(j);
}

static void test_text_matches_transformers(void) {
    char bin[512];
    const char *b = getenv("BUILD");
    snprintf(bin, sizeof bin, "%s/flashmoe", b ? b : "build");
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) check_fixture(fixtures[i], bin);
}

int main(void) {
    RUN_TEST(test_text_matches_transformers);
    TEST_EXIT();
}
