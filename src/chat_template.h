/* The Qwen chat template (ChatML with thinking), rendered in C, and the thinking-budget state
 * machine.
 *
 * chat_template_render produces the same string as the model's Jinja chat_template with
 * add_generation_prompt and enable_thinking set, for conversations of system / user / assistant
 * messages (tools, tool calls and images are not supported). Two flavours:
 *
 * CHAT_TEMPLATE_QWEN3_5 (Qwen3.5 checkpoints; the default):
 *   - every content is trimmed (Jinja `|trim`, i.e. Python str.strip(): Unicode whitespace);
 *   - a system message may only come first: "<|im_start|>system\n" + content + "<|im_end|>\n";
 *   - user: "<|im_start|>user\n" + content + "<|im_end|>\n";
 *   - assistant: its thinking is `reasoning` when given, else it is cut out of the content: the text
 *     before the first "</think>" (right-stripped of '\n', then after the last "<think>", then
 *     left-stripped of '\n') is the thinking, and the text after the last "</think>" (left-stripped
 *     of '\n') the content; the thinking is trimmed. An assistant message after the last user
 *     message renders "<|im_start|>assistant\n<think>\n" + thinking + "\n</think>\n\n" + content;
 *     one before it (a previous turn) drops the thinking: "<|im_start|>assistant\n" + content.
 *     Both end with "<|im_end|>\n";
 *   - generation prompt: "<|im_start|>assistant\n<think>\n" (thinking) or
 *     "<|im_start|>assistant\n<think>\n\n</think>\n\n" (no thinking);
 *   - at least one user message is required, as the Jinja template raises otherwise.
 *
 * CHAT_TEMPLATE_QWEN3 (Qwen3, as in its tokenizer_config.json):
 *   - contents are used as they are (no trim); a system message that is not first is rendered as a
 *     turn like a user message;
 *   - the thinking is cut out of an assistant content the same way; an assistant message after the
 *     last user message keeps a think block ("<|im_start|>assistant\n<think>\n" + thinking
 *     stripped of '\n' + "\n</think>\n\n" + content left-stripped of '\n') only if it is the last
 *     message or its thinking is not empty; otherwise, and for previous turns,
 *     "<|im_start|>assistant\n" + content; then "<|im_end|>\n";
 *   - generation prompt: "<|im_start|>assistant\n" (thinking: the model opens <think> itself) or
 *     "<|im_start|>assistant\n<think>\n\n</think>\n\n" (no thinking).
 *
 * In both, a user message counts as a query unless its (trimmed, for 3.5) content starts with
 * "<tool_response>" and ends with "</tool_response>". */
#ifndef FLASHMOE_CHAT_TEMPLATE_H
#define FLASHMOE_CHAT_TEMPLATE_H
#include <stdbool.h>
#include <stddef.h>

typedef enum { CHAT_ROLE_SYSTEM, CHAT_ROLE_USER, CHAT_ROLE_ASSISTANT } chat_role;

typedef struct {
    chat_role role;
    const char *content;   /* UTF-8, NUL-terminated; NULL is treated as "" */
    const char *reasoning; /* assistant only: the thinking text (Jinja `reasoning_content`), or NULL
                              to take it out of content at "</think>" */
} chat_message;

typedef enum { CHAT_TEMPLATE_QWEN3_5, CHAT_TEMPLATE_QWEN3 } chat_template_flavor;

typedef enum {
    CHAT_TEMPLATE_OK = 0,
    CHAT_TEMPLATE_ERR_EMPTY,            /* no messages (3.5: "No messages provided.") */
    CHAT_TEMPLATE_ERR_NO_USER,          /* 3.5: "No user query found in messages." */
    CHAT_TEMPLATE_ERR_SYSTEM_NOT_FIRST, /* 3.5: "System message must be at the beginning." */
    CHAT_TEMPLATE_ERR_ROLE,             /* a role outside chat_role */
    CHAT_TEMPLATE_ERR_NOMEM,
} chat_template_status;

const char *chat_template_status_string(chat_template_status st);

/* Renders n messages into a malloc'd NUL-terminated string *out (caller frees) of *out_len bytes;
 * add_generation_prompt appends the assistant prompt, with or without thinking. On error *out is
 * NULL. */
chat_template_status chat_template_render(chat_template_flavor flavor, const chat_message *msgs, int n,
                                          bool add_generation_prompt, bool enable_thinking, char **out,
                                          size_t *out_len);

/* ---- thinking budget ----
 *
 * Counts the tokens generated inside a <think> block and says when the budget is spent. Protocol
 * for the generation loop:
 *   think_budget_init(&b, id("<think>"), id("</think>"), budget, prompt_ends_inside_think);
 *   before sampling each token: if think_budget_exhausted(&b), do not sample: tokenize
 *     THINK_BUDGET_CLOSE_TEXT ("\n</think>\n\n", i.e. the ids of "\n", "</think>", "\n\n"), feed
 *     those tokens to the model as if generated (they count against -n and are shown as the end of
 *     the thinking) and pass each of them to think_budget_feed;
 *   after sampling (or forcing) each token: think_budget_feed(&b, token).
 * A token counts as thinking when it is generated while the block is open and is not "</think>"
 * itself; "</think>" closes the block (whether the model or the closing text produced it), and
 * "<think>" opens one. A budget of 0 closes the block before the first thinking token; a negative
 * budget never forces anything. With thinking on, the Qwen3.5 prompt ends inside the block (its
 * generation prompt ends with "<think>\n"). */
#define THINK_BUDGET_CLOSE_TEXT "\n</think>\n\n"

typedef struct {
    int open_id, close_id; /* token ids of "<think>" and "</think>" */
    int budget;            /* < 0: unlimited */
    int n_thinking;        /* thinking tokens so far (all blocks of this generation) */
    bool in_think;
} think_budget;

void think_budget_init(think_budget *b, int open_id, int close_id, int budget, bool in_think);
void think_budget_feed(think_budget *b, int token);
/* True when the block is open and budget thinking tokens have been produced. */
bool think_budget_exhausted(const think_budget *b);

#endif
