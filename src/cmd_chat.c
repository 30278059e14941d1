/* `flashmoe chat`: interactive chat in the terminal.
 *
 * Each turn renders the whole conversation with the Qwen chat template (chat_template.h) and
 * tokenizes it. The state keeps the tokens it has already run; when they are a prefix of the new
 * prompt only the rest is run, otherwise the state is reset and the prompt run from the start. With
 * the Qwen3.5 template a previous answer is rendered without its thinking, which is not what was
 * generated, so in practice every turn runs the conversation again (the state of a linear-attention
 * layer cannot be rewound to the common prefix; see the report on state snapshots).
 *
 * Output: the thinking is shown faint (ANSI) or hidden (--hide-think), the answer plain; stop
 * strings (--stop) apply to the answer. Ctrl-C during an answer stops it; Ctrl-D or /quit exits.
 *
 * Signals: SIGINT is blocked in every thread (it is blocked before the model starts its thread
 * pool, which inherits the mask) and polled between tokens with sigpending, so no handler and no
 * global flag are needed; it is unblocked only while waiting for input. */
#include <editline/readline.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat_template.h"
#include "cli.h"
#include "commands.h"
#include "model.h"
#include "sampler.h"
#include "stopstr.h"
#include "tokenizer.h"
#include "util.h"

#define CHAT_DEFAULT_CTX 4096
#define CHAT_MAX_STOPS 16
#define PREFILL_CHUNK 64 /* tokens per forward call while running a prompt (Ctrl-C is checked between) */

#define ANSI_FAINT "\033[2m"
#define ANSI_RESET "\033[0m"

typedef struct {
    const char *dir;
    model_opts mo;
    int ctx;
    sampler_params sp;
    bool seed_given;
    int think_budget; /* < 0: none */
    const char *system;
    int max_tokens;
    bool no_reuse; /* run the whole conversation every turn */
    bool thinking, hide_think;
    chat_template_flavor flavor;
    const char *stops[CHAT_MAX_STOPS];
    int n_stops;
} chat_opts;

/* The conversation: messages own their strings. */
typedef struct {
    chat_message *msgs;
    int n, cap;
} conversation;

typedef struct {
    int prompt_tokens; /* tokens of the rendered prompt */
    int reused;        /* of which were already in the state */
    double prompt_s;
    int gen_tokens, think_tokens;
    double gen_s;
} turn_stats;

typedef struct {
    chat_opts o;
    model *m;
    state *st;
    tokenizer *tok;
    sampler *smp;
    stopstr *stop;
    tokdec_stream *dec;
    float *logits;
    int vocab, max_ctx;
    bool color;

    /* the tokens the state has run, in order */
    int32_t *ctx_tokens;
    int n_ctx;
    /* a copy of the state after the conversation's history (everything before the generation prompt of
     * the last turn), with its tokens: the next turn resumes from it, since the template re-renders
     * earlier answers without their thinking and the live state therefore is not a prefix */
    state *saved;
    int32_t *saved_tokens;
    int n_saved;
    /* the tokens generated in the current turn (including a last one that was not run) */
    int32_t *gen_ids;
    int n_gen;

    int think_open, think_close; /* ids of <think> and </think>, or -1 */
    int eos[CONFIG_MAX_EOS + 2];
    int n_eos;
    int32_t *close_ids; /* tokens of THINK_BUDGET_CLOSE_TEXT */
    size_t n_close;

    conversation conv;
    turn_stats last;
    int turns;
    long total_prompt, total_gen;
} chat;

/* ---- conversation ---- */

static char *str_dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

static void message_free(chat_message *m) {
    free((char *)m->content);
    free((char *)m->reasoning);
}

/* Appends a message, copying the strings (reasoning may be NULL). Returns 0 or -1. */
static int conv_add(conversation *c, chat_role role, const char *content, size_t len, const char *reasoning) {
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        chat_message *m = realloc(c->msgs, (size_t)cap * sizeof *m);
        if (!m) return -1;
        c->msgs = m;
        c->cap = cap;
    }
    chat_message m = {role, str_dup_n(content, len), reasoning ? strdup(reasoning) : NULL};
    if (!m.content || (reasoning && !m.reasoning)) {
        message_free(&m);
        return -1;
    }
    c->msgs[c->n++] = m;
    return 0;
}

static void conv_pop(conversation *c) {
    if (c->n > 0) message_free(&c->msgs[--c->n]);
}

/* Drops every message except a leading system message. */
static void conv_clear(conversation *c) {
    int keep = c->n > 0 && c->msgs[0].role == CHAT_ROLE_SYSTEM;
    while (c->n > keep) conv_pop(c);
}

/* Sets, replaces or (text NULL) removes the leading system message. */
static int conv_set_system(conversation *c, const char *text) {
    bool has = c->n > 0 && c->msgs[0].role == CHAT_ROLE_SYSTEM;
    if (!text) {
        if (has) {
            message_free(&c->msgs[0]);
            memmove(c->msgs, c->msgs + 1, (size_t)(c->n - 1) * sizeof *c->msgs);
            c->n--;
        }
        return 0;
    }
    char *s = strdup(text);
    if (!s) return -1;
    if (has) {
        free((char *)c->msgs[0].content);
        c->msgs[0].content = s;
        return 0;
    }
    if (conv_add(c, CHAT_ROLE_SYSTEM, s, strlen(s), NULL)) {
        free(s);
        return -1;
    }
    free(s);
    chat_message sys = c->msgs[c->n - 1];
    memmove(c->msgs + 1, c->msgs, (size_t)(c->n - 1) * sizeof *c->msgs);
    c->msgs[0] = sys;
    return 0;
}

static void conv_free(conversation *c) {
    while (c->n) conv_pop(c);
    free(c->msgs);
}

/* ---- signals ---- */

/* True (and the signal consumed) if Ctrl-C was pressed since the last check. */
static bool interrupt_pending(void) {
    sigset_t pending, only;
    if (sigpending(&pending) || !sigismember(&pending, SIGINT)) return false;
    sigemptyset(&only);
    sigaddset(&only, SIGINT);
    int sig;
    sigwait(&only, &sig);
    return true;
}

static void sigint_block(bool block) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &s, NULL);
}

/* ---- output ---- */

typedef enum { SHOW_NONE, SHOW_THINK, SHOW_ANSWER } show_mode;

typedef struct {
    show_mode mode;
    bool faint;         /* the terminal is in faint mode */
    bool section_start; /* nothing printed yet in this section: leading newlines are skipped */
    bool line_start;    /* the last character printed was a newline */
} screen;

static void screen_faint(chat *c, screen *s, bool on) {
    if (!c->color || s->faint == on) return;
    fputs(on ? ANSI_FAINT : ANSI_RESET, stdout);
    s->faint = on;
}

static void screen_section(chat *c, screen *s, show_mode mode) {
    if (s->mode == mode) return;
    if (s->mode == SHOW_THINK && !c->o.hide_think && !s->line_start) {
        /* end the thinking on its own line */
        fputc('\n', stdout);
        s->line_start = true;
    }
    s->mode = mode;
    s->section_start = true;
    screen_faint(c, s, mode == SHOW_THINK);
}

static void screen_write(chat *c, screen *s, const char *text, size_t n) {
    if (!n || (s->mode == SHOW_THINK && c->o.hide_think)) return;
    if (s->section_start) {
        while (n && (*text == '\n' || *text == '\r')) text++, n--;
        if (!n) return;
        s->section_start = false;
    }
    if (c->color) {
        /* on a terminal, control characters other than tab and newline (a model can produce ESC)
         * are shown as U+FFFD instead of being interpreted */
        size_t from = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)text[i];
            if ((ch < 0x20 && ch != '\n' && ch != '\t') || ch == 0x7f) {
                fwrite(text + from, 1, i - from, stdout);
                fputs("\xef\xbf\xbd", stdout);
                from = i + 1;
            }
        }
        fwrite(text + from, 1, n - from, stdout);
    } else {
        fwrite(text, 1, n, stdout);
    }
    s->line_start = text[n - 1] == '\n';
    fflush(stdout);
}

static void screen_end(chat *c, screen *s) {
    screen_faint(c, s, false);
    if (!s->line_start) fputc('\n', stdout);
    s->line_start = true;
    fflush(stdout);
}

/* Prints a status line (faint when coloured). */
static void chat_note(chat *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void chat_note(chat *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (c->color) fputs(ANSI_FAINT, stdout);
    vprintf(fmt, ap);
    if (c->color) fputs(ANSI_RESET, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(ap);
}

/* ---- engine ---- */

static bool chat_is_eos(const chat *c, int id) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos[i] == id) return true;
    return false;
}

/* Runs tokens through the model, appending them to ctx_tokens; the logits of the last one land in
 * c->logits. Returns 0, 1 if interrupted (some tokens ran), -1 on error (message printed). */
static int chat_feed(chat *c, const int32_t *ids, int n, bool interruptible) {
    char err[512];
    for (int i = 0; i < n;) {
        int k = n - i < PREFILL_CHUNK ? n - i : PREFILL_CHUNK;
        if (c->n_ctx + k > c->max_ctx) {
            fprintf(stderr, "flashmoe chat: the context is full (%d tokens); /clear starts over\n", c->max_ctx);
            return -1;
        }
        if (model_forward(c->m, c->st, ids + i, k, c->logits, 0, err, sizeof err)) {
            fprintf(stderr, "flashmoe chat: %s\n", err);
            return -1;
        }
        memcpy(c->ctx_tokens + c->n_ctx, ids + i, (size_t)k * sizeof *ids);
        c->n_ctx += k;
        i += k;
        if (interruptible && i < n && interrupt_pending()) return 1;
    }
    return 0;
}

static void chat_reset_state(chat *c) {
    state_reset(c->st);
    c->n_ctx = 0;
}

/* Tokens of the conversation rendered without the generation prompt, if they are a prefix of ids
 * (special tokens split the text at every turn, so they should be); 0 otherwise. */
static int chat_history_tokens(chat *c, const int32_t *ids, int n_ids) {
    char *text = NULL;
    size_t len, n = 0;
    int32_t *hist = NULL;
    if (chat_template_render(c->o.flavor, c->conv.msgs, c->conv.n, false, c->o.thinking, &text, &len) !=
        CHAT_TEMPLATE_OK)
        return 0;
    int enc = tokenizer_encode(c->tok, text, len, 1, &hist, &n);
    free(text);
    int ok = !enc && (int)n < n_ids && !memcmp(hist, ids, n * sizeof *ids);
    free(hist);
    return ok ? (int)n : 0;
}

/* Decodes ids[0..n) into a malloc'd string (NULL on error). */
static char *chat_decode(chat *c, const int32_t *ids, int n) {
    char *out = NULL;
    size_t len;
    if (n <= 0) return strdup("");
    if (tokenizer_decode(c->tok, ids, (size_t)n, &out, &len)) return NULL;
    return out;
}

/* Renders the conversation (which ends with the new user message), tokenizes it and runs what the
 * state has not run yet; the sampler's penalty history becomes the prompt. Returns 0, 1 if Ctrl-C
 * interrupted it, -1 on an error (message printed). */
static int chat_run_prompt(chat *c, turn_stats *ts) {
    char *text = NULL;
    size_t text_len;
    chat_template_status cs =
        chat_template_render(c->o.flavor, c->conv.msgs, c->conv.n, true, c->o.thinking, &text, &text_len);
    if (cs != CHAT_TEMPLATE_OK) {
        fprintf(stderr, "flashmoe chat: chat template: %s\n", chat_template_status_string(cs));
        return -1;
    }
    /* special tokens in the text are recognised, as HF's apply_chat_template(tokenize=True) does */
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int enc = tokenizer_encode(c->tok, text, text_len, 1, &ids, &n_ids);
    free(text);
    if (enc) {
        fprintf(stderr, "flashmoe chat: tokenizer: %s\n", tokenizer_error(c->tok));
        return -1;
    }
    if ((int)n_ids >= c->max_ctx) {
        fprintf(stderr, "flashmoe chat: the prompt has %zu tokens, the context %d; /clear starts over\n", n_ids,
                c->max_ctx);
        free(ids);
        return -1;
    }
    /* reuse the state when what it ran is a prefix of the prompt (and leaves a token to run), else the
     * saved history when that is one, else start over */
    char err[256];
    bool prefix = !c->o.no_reuse && c->n_ctx < (int)n_ids && !memcmp(c->ctx_tokens, ids, (size_t)c->n_ctx * sizeof *ids);
    bool saved = !c->o.no_reuse && c->n_saved > (prefix ? c->n_ctx : 0) && c->n_saved < (int)n_ids &&
                 !memcmp(c->saved_tokens, ids, (size_t)c->n_saved * sizeof *ids);
    if (saved && state_copy(c->st, c->saved, err, sizeof err) == 0) {
        memcpy(c->ctx_tokens, c->saved_tokens, (size_t)c->n_saved * sizeof *ids);
        c->n_ctx = c->n_saved;
    } else if (!prefix) {
        chat_reset_state(c);
    }
    *ts = (turn_stats){.prompt_tokens = (int)n_ids, .reused = c->n_ctx};

    /* run the history, save the state there, then the generation prompt */
    int n_hist = chat_history_tokens(c, ids, (int)n_ids);
    double t0 = util_now_seconds();
    int r = 0;
    if (n_hist > c->n_ctx) {
        r = chat_feed(c, ids + c->n_ctx, n_hist - c->n_ctx, true);
        if (r == 0 && state_copy(c->saved, c->st, err, sizeof err) == 0) {
            memcpy(c->saved_tokens, ids, (size_t)n_hist * sizeof *ids);
            c->n_saved = n_hist;
        }
    }
    if (r == 0) r = chat_feed(c, ids + c->n_ctx, (int)n_ids - c->n_ctx, true);
    ts->prompt_s = util_now_seconds() - t0;
    if (r) {
        chat_reset_state(c); /* a partly run prompt is of no use to the next turn */
    } else {
        sampler_reset(c->smp);
        for (size_t i = 0; i < n_ids; i++) sampler_accept(c->smp, ids[i]);
    }
    free(ids);
    return r;
}

/* Where the parts of an answer are in gen_ids, and how it ended. */
typedef struct {
    int think_start, think_end, answer_start; /* -1: not begun */
    bool stopped;                             /* by a stop string */
    const char *why;                          /* why generation ended early, or NULL */
} gen_result;

/* Generates the answer after the prompt, showing it as it comes: sampled tokens, or the closing
 * text when the thinking budget is spent, until an end-of-sequence id, a stop string, -n, a full
 * context or Ctrl-C. */
static void chat_generate(chat *c, turn_stats *ts, gen_result *g) {
    think_budget tb;
    bool starts_in_think = c->o.thinking && c->o.flavor == CHAT_TEMPLATE_QWEN3_5;
    think_budget_init(&tb, c->think_open, c->think_close, c->o.think_budget, starts_in_think);
    *g = (gen_result){.think_start = starts_in_think ? 0 : -1, .think_end = -1, .answer_start = starts_in_think ? -1 : 0};
    screen sc = {.mode = SHOW_NONE, .line_start = true};
    screen_section(c, &sc, starts_in_think ? SHOW_THINK : SHOW_ANSWER);
    stopstr_reset(c->stop);
    c->n_gen = 0;
    double t0 = util_now_seconds();
    while (!g->stopped && !g->why) {
        if (c->n_gen >= c->o.max_tokens) {
            g->why = "token limit";
            break;
        }
        if (interrupt_pending()) {
            g->why = "interrupted";
            break;
        }
        int32_t one;
        const int32_t *next = &one;
        int n_next = 1;
        if (think_budget_exhausted(&tb) && c->n_close > 0) {
            next = c->close_ids;
            n_next = (int)c->n_close;
        } else {
            one = sampler_sample(c->smp, c->logits);
            if (chat_is_eos(c, one)) break;
        }
        for (int i = 0; i < n_next && !g->stopped; i++) {
            int32_t t = next[i];
            if (tb.in_think && next == &one) ts->think_tokens++; /* sampled thinking tokens */
            think_budget_feed(&tb, t);
            sampler_accept(c->smp, t);
            c->gen_ids[c->n_gen++] = t;
            size_t len;
            if (t == c->think_open || t == c->think_close) {
                const char *rest = tokdec_stream_flush(c->dec, &len); /* bytes held before the tag */
                screen_write(c, &sc, rest, len);
                if (t == c->think_open) {
                    g->think_start = c->n_gen;
                    g->answer_start = -1;
                } else {
                    g->think_end = c->n_gen - 1;
                    g->answer_start = c->n_gen;
                }
                screen_section(c, &sc, tb.in_think ? SHOW_THINK : SHOW_ANSWER);
                continue;
            }
            const char *piece = tokdec_stream_push(c->dec, t, &len);
            if (!piece || !len) continue;
            if (tb.in_think) {
                screen_write(c, &sc, piece, len);
            } else {
                const char *out;
                size_t out_len;
                g->stopped = stopstr_feed(c->stop, piece, len, &out, &out_len) == STOPSTR_HIT;
                screen_write(c, &sc, out, out_len);
            }
        }
        if (g->stopped) break;
        if (c->n_ctx + n_next >= c->max_ctx)
            g->why = "context full";
        else if (chat_feed(c, next, n_next, false))
            g->why = "stopped by an error";
    }
    ts->gen_tokens = c->n_gen;
    ts->gen_s = util_now_seconds() - t0;

    /* what the decoder and the stop matcher still hold */
    size_t len;
    const char *rest = tokdec_stream_flush(c->dec, &len);
    if (!g->stopped) {
        const char *out = rest;
        size_t out_len = len;
        if (!tb.in_think) {
            g->stopped = stopstr_feed(c->stop, rest, len, &out, &out_len) == STOPSTR_HIT;
            screen_write(c, &sc, out, out_len);
            stopstr_flush(c->stop, &out, &out_len);
        }
        screen_write(c, &sc, out, out_len);
    }
    screen_end(c, &sc);
    if (g->stopped) g->why = "stop string";
    if (g->think_start >= 0 && g->think_end < g->think_start) g->think_end = c->n_gen;
}

/* Adds the answer to the conversation: the text that was generated, cut at a stop string, with the
 * thinking as its reasoning (the template leaves that out of later prompts). */
static int chat_record(chat *c, const gen_result *g) {
    char *thinking = g->think_start >= 0 ? chat_decode(c, c->gen_ids + g->think_start, g->think_end - g->think_start) : NULL;
    char *answer = g->answer_start >= 0 ? chat_decode(c, c->gen_ids + g->answer_start, c->n_gen - g->answer_start)
                                        : strdup("");
    if (answer && g->stopped) {
        char *cut = NULL;
        for (int i = 0; i < c->o.n_stops; i++) {
            char *f = strstr(answer, c->o.stops[i]);
            if (f && (!cut || f < cut)) cut = f;
        }
        if (cut) *cut = 0;
    }
    int rc = 0;
    if ((g->think_start >= 0 && !thinking) || !answer ||
        conv_add(&c->conv, CHAT_ROLE_ASSISTANT, answer, strlen(answer), thinking)) {
        fprintf(stderr, "flashmoe chat: out of memory\n");
        rc = -1;
    }
    free(thinking);
    free(answer);
    return rc;
}

/* One user turn: run the prompt, generate and show the answer, add both to the conversation and
 * print the speeds. On an error or an interrupted prompt the conversation stays as it was. */
static void chat_turn(chat *c, const char *user) {
    if (conv_add(&c->conv, CHAT_ROLE_USER, user, strlen(user), NULL)) {
        fprintf(stderr, "flashmoe chat: out of memory\n");
        return;
    }
    turn_stats ts = {0};
    int r = chat_run_prompt(c, &ts);
    if (r) {
        if (r > 0) chat_note(c, "(interrupted)");
        conv_pop(&c->conv);
        return;
    }
    gen_result g;
    chat_generate(c, &ts, &g);
    if (chat_record(c, &g)) conv_pop(&c->conv); /* the question goes with its lost answer */

    c->last = ts;
    c->turns++;
    c->total_prompt += ts.prompt_tokens - ts.reused;
    c->total_gen += ts.gen_tokens;
    double pps = ts.prompt_s > 0 ? (ts.prompt_tokens - ts.reused) / ts.prompt_s : 0;
    double gps = ts.gen_s > 0 ? ts.gen_tokens / ts.gen_s : 0;
    chat_note(c, "[prompt %d tokens (%d reused), %.1f tok/s | generated %d tokens%s%s, %.1f tok/s]", ts.prompt_tokens,
              ts.reused, pps, ts.gen_tokens, g.why ? ", " : "", g.why ? g.why : "", gps);
}

/* ---- commands ---- */

static void chat_help(chat *c) {
    chat_note(c, "commands: /clear (forget the conversation), /system TEXT (set the system prompt; /system alone "
                 "shows it, /system - removes it), /think on|off, /stats, /quit.\n"
                 "A line ending in \\ continues on the next line; \"\"\" starts and ends a block of lines.");
}

static void chat_stats(chat *c) {
    const turn_stats *t = &c->last;
    const sampler_params *p = sampler_get_params(c->smp);
    int n_user = 0;
    for (int i = 0; i < c->conv.n; i++) n_user += c->conv.msgs[i].role == CHAT_ROLE_USER;
    printf("context: %d of %d tokens in use; conversation: %d messages, %d turns\n", c->n_ctx, c->max_ctx,
           c->conv.n, n_user);
    if (c->turns) {
        int ran = t->prompt_tokens - t->reused;
        printf("last turn: prompt %d tokens (%d reused, %d run in %.2f s, %.1f tok/s); "
               "generated %d tokens (%d thinking) in %.2f s, %.1f tok/s\n",
               t->prompt_tokens, t->reused, ran, t->prompt_s, t->prompt_s > 0 ? ran / t->prompt_s : 0.0, t->gen_tokens,
               t->think_tokens, t->gen_s, t->gen_s > 0 ? t->gen_tokens / t->gen_s : 0.0);
    }
    printf("session: %d answers, %ld prompt tokens run, %ld tokens generated\n", c->turns, c->total_prompt, c->total_gen);
    experts_stats st;
    experts_stats_get(c->m->experts, &st);
    uint64_t asked = st.hits + st.misses;
    if (!strcmp(st.mode, "mmap"))
        printf("experts: --io mmap (mapped; the page cache holds them)\n");
    else {
        printf("experts: --io %s, %.2f GB read, cache hits %.1f%% of %llu", st.mode, st.bytes_read / 1e9,
               asked ? 100.0 * st.hits / asked : 0.0, (unsigned long long)asked);
        if (st.predicted_asked) {
            printf("; prefetch: next-layer prediction right for %.1f%% of experts, ",
                   100.0 * st.predicted_right / st.predicted_asked);
            if (st.prefetched)
                printf("%.1f%% of the %llu read ahead used", 100.0 * st.prefetch_used / st.prefetched,
                       (unsigned long long)st.prefetched);
            else
                printf("none read ahead (the predicted ones were resident)");
        }
        printf("\n");
    }
    printf("sampling: temp %g, top-k %d, top-p %g, min-p %g, repeat-penalty %g, presence-penalty %g, "
           "frequency-penalty %g, seed %llu\n",
           p->temperature, p->top_k, p->top_p, p->min_p, p->repeat_penalty, p->presence_penalty,
           p->frequency_penalty, (unsigned long long)p->seed);
    if (c->o.think_budget >= 0)
        printf("thinking: %s, budget %d tokens; template %s\n", c->o.thinking ? "on" : "off", c->o.think_budget,
               c->o.flavor == CHAT_TEMPLATE_QWEN3 ? "qwen3" : "qwen3.5");
    else
        printf("thinking: %s, no budget; template %s\n", c->o.thinking ? "on" : "off",
               c->o.flavor == CHAT_TEMPLATE_QWEN3 ? "qwen3" : "qwen3.5");
    fflush(stdout);
}

/* Handles a /command. Returns 1 to quit, 0 otherwise. */
static int chat_command(chat *c, const char *line) {
    const char *arg = line + strcspn(line, " \t");
    while (*arg == ' ' || *arg == '\t') arg++;
    size_t cmd_len = strcspn(line, " \t");
#define IS(name) (cmd_len == strlen(name) && !strncmp(line, name, cmd_len))
    if (IS("/quit") || IS("/exit")) return 1;
    if (IS("/clear")) {
        c->n_saved = 0;
        conv_clear(&c->conv);
        chat_reset_state(c);
        sampler_reset(c->smp);
        chat_note(c, "(conversation cleared)");
    } else if (IS("/system")) {
        if (!*arg) {
            bool has = c->conv.n > 0 && c->conv.msgs[0].role == CHAT_ROLE_SYSTEM;
            chat_note(c, "system prompt: %s", has ? c->conv.msgs[0].content : "(none)");
        } else if (conv_set_system(&c->conv, strcmp(arg, "-") ? arg : NULL)) {
            fprintf(stderr, "flashmoe chat: out of memory\n");
        } else {
            chat_note(c, strcmp(arg, "-") ? "(system prompt set)" : "(system prompt removed)");
        }
    } else if (IS("/think")) {
        if (!strcmp(arg, "on") || !strcmp(arg, "off"))
            c->o.thinking = !strcmp(arg, "on");
        else if (*arg)
            chat_note(c, "usage: /think on|off");
        chat_note(c, "(thinking %s)", c->o.thinking ? "on" : "off");
    } else if (IS("/stats")) {
        chat_stats(c);
    } else if (IS("/help") || IS("/?")) {
        chat_help(c);
    } else {
        chat_note(c, "unknown command %.*s", (int)cmd_len, line);
        chat_help(c);
    }
#undef IS
    return 0;
}

/* ---- input ---- */

/* One line without its newline (malloc'd), or NULL at end of input. SIGINT is deliverable (its
 * default action ends the program) only while waiting here. */
static char *input_line(bool tty, const char *prompt) {
    char *line = NULL;
    sigint_block(false);
    if (tty) {
        line = readline(prompt);
    } else {
        size_t cap = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            free(line);
            line = NULL;
        } else if (n > 0 && line[n - 1] == '\n') {
            line[n - 1] = 0;
        }
    }
    sigint_block(true);
    return line;
}

typedef struct {
    char *p;
    size_t n, cap;
} text_buf;

static int text_append(text_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* One message: a line; lines joined while they end in '\'; or the lines between two """ marks.
 * Returns a malloc'd string, or NULL at end of input. */
static char *input_message(bool tty) {
    char *line = input_line(tty, ">>> ");
    if (!line) return NULL;
    text_buf b = {0};
    int bad = 0;
    if (!strncmp(line, "\"\"\"", 3)) {
        /* block: text after the opening mark, then whole lines until one ending in """ */
        const char *first = line + 3;
        size_t n = strlen(first);
        bool closed = n >= 3 && !strcmp(first + n - 3, "\"\"\"");
        bad |= text_append(&b, first, closed ? n - 3 : n);
        free(line);
        while (!closed) {
            if (!(line = input_line(tty, "... "))) break;
            n = strlen(line);
            closed = n >= 3 && !strcmp(line + n - 3, "\"\"\"");
            if (b.n) bad |= text_append(&b, "\n", 1);
            bad |= text_append(&b, line, closed ? n - 3 : n);
            free(line);
        }
    } else {
        for (;;) {
            size_t n = strlen(line);
            bool more = n > 0 && line[n - 1] == '\\';
            bad |= text_append(&b, line, more ? n - 1 : n);
            free(line);
            if (!more) break;
            bad |= text_append(&b, "\n", 1);
            if (!(line = input_line(tty, "... "))) break;
        }
    }
    if (bad || !b.p) {
        free(b.p);
        return strdup("");
    }
    if (tty && b.n) add_history(b.p);
    return b.p;
}

/* ---- setup ---- */

static void chat_usage(FILE *f) {
    fprintf(f,
            "usage: flashmoe chat -m DIR [options]\n"
            "Interactive chat with the Qwen chat template. Commands: /clear, /system TEXT, /think on|off, /stats,\n"
            "/quit. A line ending in \\ continues; \"\"\" starts and ends a block of lines.\n\n"
            "  -m, --model DIR            checkpoint directory (config.json, safetensors, tokenizer.json)\n"
            "  --experts-per-token K      experts used per token (default: the model's own)\n"
            "  -t, --threads N            threads (default 1)\n"
            "  --ctx N                    context length (default %d, at most the model's maximum)\n"
            "  --io cache|direct|mmap     expert reads: page cache (default), O_DIRECT with an in-process\n"
            "                             LRU cache of --cache-mb MiB, or mapped (HF checkpoints only)\n"
            "  --cache-mb N               expert cache budget for --io direct (default 0)\n"
            "  --io-threads               read with a pool of pread threads instead of io_uring\n"
            "  -n N                       most tokens per answer, thinking included (default 4096)\n"
            "  --system TEXT              system prompt\n"
            "  --no-think                 start with thinking off (/think on|off switches)\n"
            "  --think-budget N           at most N thinking tokens, then \"\\n</think>\\n\\n\" is inserted\n"
            "  --hide-think               do not show the thinking (shown faint by default)\n"
            "  --no-reuse                 run the whole conversation again every turn instead of resuming from\n"
            "                             the saved state (slower; the answers are the same)\n"
            "  --stop STR                 stop the answer at STR (repeatable, up to %d)\n"
            "  --template qwen3.5|qwen3   chat template flavour (default qwen3.5)\n"
            "  --temp T                   temperature, 0 = greedy (default 0.6)\n"
            "  --top-k K                  (default 20)\n"
            "  --top-p P                  (default 0.95)\n"
            "  --min-p P                  (default 0)\n"
            "  --repeat-penalty R         HF repetition penalty (default 1 = off)\n"
            "  --presence-penalty P, --frequency-penalty P   OpenAI penalties (default 0)\n"
            "  --seed S                   sampling seed (default: from the clock, shown by /stats)\n",
            CHAT_DEFAULT_CTX, CHAT_MAX_STOPS);
}

/* Returns 0 to run, 1 for --help, -1 on a bad option (message printed). */
static int chat_parse(chat_opts *o, int argc, char **argv) {
    const char *cmd = "chat", *v;
    *o = (chat_opts){.sp = sampler_params_default(), .think_budget = -1, .max_tokens = 4096, .thinking = true};
    o->sp.temperature = 0.6f;
    o->sp.top_k = 20;
    o->sp.top_p = 0.95f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define VALUE() (v = cli_value(cmd, argc, argv, &i))
        engine_args ea = {.dir = o->dir, .mo = o->mo, .ctx = o->ctx};
        int r = cli_engine_arg(cmd, &ea, argc, argv, &i);
        if (r < 0) return -1;
        if (r > 0) { /* the engine options shared with flashmoe run */
            o->dir = ea.dir;
            o->mo = ea.mo;
            o->ctx = ea.ctx;
            continue;
        }
        int seed_given = o->seed_given;
        if ((r = cli_sampler_arg(cmd, &o->sp, &seed_given, argc, argv, &i)) < 0) return -1;
        o->seed_given = seed_given;
        if (r > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            return 1;
        } else if (!strcmp(a, "-n")) {
            if (!VALUE() || cli_int(cmd, a, v, 1, 1 << 24, &o->max_tokens)) return -1;
        } else if (!strcmp(a, "--system")) {
            if (!(o->system = VALUE())) return -1;
        } else if (!strcmp(a, "--no-think")) {
            o->thinking = false;
        } else if (!strcmp(a, "--think-budget")) {
            if (!VALUE() || cli_int(cmd, a, v, 0, 1 << 24, &o->think_budget)) return -1;
        } else if (!strcmp(a, "--hide-think")) {
            o->hide_think = true;
        } else if (!strcmp(a, "--no-reuse")) {
            o->no_reuse = true;
        } else if (!strcmp(a, "--stop")) {
            if (!VALUE()) return -1;
            if (!*v || o->n_stops == CHAT_MAX_STOPS) {
                fprintf(stderr, "flashmoe chat: --stop needs a non-empty string (at most %d)\n", CHAT_MAX_STOPS);
                return -1;
            }
            o->stops[o->n_stops++] = v;
        } else if (!strcmp(a, "--template")) {
            if (!VALUE()) return -1;
            if (!strcmp(v, "qwen3.5") || !strcmp(v, "qwen3_5"))
                o->flavor = CHAT_TEMPLATE_QWEN3_5;
            else if (!strcmp(v, "qwen3"))
                o->flavor = CHAT_TEMPLATE_QWEN3;
            else {
                fprintf(stderr, "flashmoe chat: --template is qwen3.5 or qwen3, got '%s'\n", v);
                return -1;
            }
        } else {
            fprintf(stderr, "flashmoe chat: unknown option '%s' (see flashmoe chat --help)\n", a);
            return -1;
        }
#undef VALUE
    }
    if (!o->dir) {
        fprintf(stderr, "flashmoe chat: -m DIR is required\n");
        return -1;
    }
    if (!o->seed_given) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        o->sp.seed = ((uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec) & 0x7fffffff;
    }
    return 0;
}

static void chat_close(chat *c) {
    conv_free(&c->conv);
    free(c->close_ids);
    free(c->ctx_tokens);
    free(c->gen_ids);
    free(c->logits);
    tokdec_stream_free(c->dec);
    stopstr_free(c->stop);
    sampler_free(c->smp);
    tokenizer_free(c->tok);
    state_free(c->st);
    state_free(c->saved);
    free(c->saved_tokens);
    model_free(c->m);
}

static int chat_open(chat *c) {
    char err[1024], path[4096];
    const char *cmd = "flashmoe chat";
    if (util_path_join(path, sizeof path, c->o.dir, "tokenizer.json")) {
        fprintf(stderr, "%s: %s: path too long\n", cmd, c->o.dir);
        return -1;
    }
    if (!(c->tok = tokenizer_load(path, err, sizeof err))) {
        fprintf(stderr, "%s: %s\n", cmd, err);
        return -1;
    }
    c->o.mo.plan_ctx = c->o.ctx ? c->o.ctx : CHAT_DEFAULT_CTX; /* an upper bound: the model may cap it below */
    c->o.mo.plan_states = 2;                                      /* the conversation and its saved copy */
    if (!(c->m = model_load(c->o.dir, &c->o.mo, err, sizeof err))) {
        fprintf(stderr, "%s: %s\n", cmd, err);
        return -1;
    }
    if (c->m->io_note[0]) fprintf(stderr, "%s: %s\n", cmd, c->m->io_note);
    c->vocab = c->m->cfg.vocab_size;
    int model_max = c->m->cfg.max_position_embeddings;
    c->max_ctx = c->o.ctx ? c->o.ctx : CHAT_DEFAULT_CTX;
    if (model_max > 0 && c->max_ctx > model_max) c->max_ctx = model_max;
    if (!(c->st = state_create(c->m, c->max_ctx, err, sizeof err)) ||
        !(c->saved = state_create(c->m, c->max_ctx, err, sizeof err))) {
        fprintf(stderr, "%s: %s\n", cmd, err);
        return -1;
    }
    sampler_status ss = sampler_create(&c->smp, c->vocab, &c->o.sp);
    if (ss != SAMPLER_OK) {
        fprintf(stderr, "%s: sampler: %s\n", cmd, sampler_status_string(ss));
        return -1;
    }
    if (stopstr_create(&c->stop, c->o.stops, c->o.n_stops) != STOPSTR_OK || !(c->dec = tokdec_stream_new(c->tok)) ||
        !(c->logits = malloc((size_t)c->vocab * sizeof *c->logits)) ||
        !(c->ctx_tokens = malloc((size_t)c->max_ctx * sizeof *c->ctx_tokens)) ||
        !(c->saved_tokens = malloc((size_t)c->max_ctx * sizeof *c->saved_tokens)) ||
        !(c->gen_ids = malloc((size_t)c->max_ctx * sizeof *c->gen_ids))) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return -1;
    }

    /* special ids: thinking tags, and the end of an answer (generation_config.json's eos ids, plus
     * <|im_end|> and <|endoftext|> in case the file is missing) */
    c->think_open = tokenizer_token_id(c->tok, "<think>");
    c->think_close = tokenizer_token_id(c->tok, "</think>");
    for (int i = 0; i < c->m->cfg.n_eos; i++) c->eos[c->n_eos++] = c->m->cfg.eos_ids[i];
    const char *ends[] = {"<|im_end|>", "<|endoftext|>"};
    for (int i = 0; i < 2; i++) {
        int id = tokenizer_token_id(c->tok, ends[i]);
        if (id >= 0 && !chat_is_eos(c, id)) c->eos[c->n_eos++] = id;
    }
    if (c->think_close >= 0 &&
        tokenizer_encode(c->tok, THINK_BUDGET_CLOSE_TEXT, strlen(THINK_BUDGET_CLOSE_TEXT), 1, &c->close_ids, &c->n_close)) {
        fprintf(stderr, "%s: tokenizer: %s\n", cmd, tokenizer_error(c->tok));
        return -1;
    }
    if (c->o.think_budget >= 0 && c->think_close < 0)
        fprintf(stderr, "%s: warning: the tokenizer has no </think>; --think-budget is ignored\n", cmd);
    if (c->o.system && conv_set_system(&c->conv, c->o.system)) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return -1;
    }
    return 0;
}

int cmd_chat(int argc, char **argv) {
    chat c = {0};
    int pr = chat_parse(&c.o, argc, argv);
    if (pr) {
        if (pr > 0) chat_usage(stdout);
        return pr > 0 ? 0 : 2;
    }
    /* before the model starts its threads, so that they inherit the blocked SIGINT */
    sigint_block(true);
    if (chat_open(&c)) {
        chat_close(&c);
        return 1;
    }
    bool tty = isatty(STDIN_FILENO);
    c.color = isatty(STDOUT_FILENO);
    if (tty) using_history();
    chat_note(&c, "flashmoe chat: %s, context %d tokens, thinking %s. /help for commands, /quit or Ctrl-D to exit.",
              c.o.dir, c.max_ctx, c.o.thinking ? "on" : "off");
    for (;;) {
        char *msg = input_message(tty);
        if (!msg) break;
        int quit = 0;
        if (msg[0] == '/')
            quit = chat_command(&c, msg);
        else if (msg[strspn(msg, " \t\n")])
            chat_turn(&c, msg);
        free(msg);
        if (quit) break;
    }
    if (tty) clear_history();
    chat_close(&c);
    return 0;
}
