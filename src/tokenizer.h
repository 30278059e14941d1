/* Exact byte-level BPE tokenizer read from a Hugging Face tokenizer.json (Qwen3 / GPT-2 family).
 *
 * Encoding follows the `tokenizers` Rust crate step by step, so that ids match
 * `Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids`:
 *
 *   1. added tokens that are not `normalized` are split out of the raw text (leftmost-longest match,
 *      honouring `single_word`, `lstrip`, `rstrip`);
 *   2. each remaining piece is normalised (`normalizer`: null, NFC, NFD, NFKC, NFKD or a `Sequence`
 *      of those) and the `normalized` added tokens are split out of it;
 *   3. each remaining piece is pre-tokenised (`pre_tokenizer`: null, `Split` with a `Regex` or
 *      `String` pattern and any of the five HF behaviours plus `invert`, `ByteLevel` with
 *      `add_prefix_space` and `use_regex`, or a `Sequence` of those); the regex runs with PCRE2
 *      (UTF + UCP, JIT when available) exactly as written in the file;
 *   4. each word goes through the BPE `model` (vocab + merges applied by rank, `ignore_merges`,
 *      `unk_token`/`fuse_unk`, `continuing_subword_prefix`, `end_of_word_suffix`).
 *
 * The `post_processor` is not applied (it only adds template tokens such as BOS, which Qwen3 does
 * not use): callers that want them add the ids themselves. Anything else the loader does not
 * understand (another model type, `byte_fallback`, BPE dropout, another normaliser, pre-tokenizer
 * or decoder) makes tokenizer_load fail with a message naming the file and the field.
 *
 * Input text that is not valid UTF-8 is first repaired: every maximal invalid subsequence becomes
 * U+FFFD, as Python's bytes.decode("utf-8", errors="replace") does (HF tokenizers only ever sees
 * valid UTF-8, since a Python str or Rust &str cannot hold anything else).
 *
 * Regex note: PCRE2's \s also matches U+180E (MONGOLIAN VOWEL SEPARATOR), which Oniguruma (used
 * by HF) no longer treats as a space; that is the one known difference in how a pattern runs.
 *
 * Threads: tokenizer_encode updates a word cache and scratch buffers inside the tokenizer, so one
 * tokenizer must not be used by two encoding threads at once. Everything that takes a const
 * tokenizer (decode, lookups, streams) is safe to call concurrently. */
#ifndef FLASHMOE_TOKENIZER_H
#define FLASHMOE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/* Reads and checks `path`. Returns NULL on failure with a one-line message "PATH: problem" in
 * err (which may be NULL). */
tokenizer *tokenizer_load(const char *path, char *err, size_t errlen);
void tokenizer_free(tokenizer *tok);

/* Encodes len bytes of text into a malloc'd array *ids of *n_ids ids (caller frees; an empty text
 * gives *ids == NULL, *n_ids == 0). allow_special = 0: added tokens marked `special`
 * (<|im_start|>, <|endoftext|>, ...) are not recognised and their text is tokenised as ordinary
 * text, as HF does with encode_special_tokens=True; non-special added tokens (<think>, ...) are
 * still recognised, as in HF. allow_special = 1: every added token is recognised (HF's default).
 * Returns 0, or -1 when out of memory or when the regex engine fails (see tokenizer_error). */
int tokenizer_encode(tokenizer *tok, const char *text, size_t len, int allow_special, int32_t **ids,
                     size_t *n_ids);

/* Why the last tokenizer_encode on this tokenizer failed. */
const char *tokenizer_error(const tokenizer *tok);

/* Decodes ids into a malloc'd, NUL-terminated string *out of *len bytes (caller frees), as HF's
 * decode(ids, skip_special_tokens=False): ByteLevel turns each piece back into bytes and bytes that
 * are not valid UTF-8 become U+FFFD. Returns 0, or -1 if an id has no piece (see tokenizer_piece)
 * or memory runs out. */
int tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n, char **out, size_t *len);

/* Id of a piece as written in the vocabulary or added tokens ("Ġthe", "<|im_end|>"), or -1. */
int32_t tokenizer_token_id(const tokenizer *tok, const char *piece);

/* One past the largest assigned id (model vocabulary and added tokens); ids below it may still be
 * unassigned (tokenizer_piece gives NULL for those). */
int tokenizer_vocab_size(const tokenizer *tok);

/* The piece of an id as stored in the file, or NULL if the id is out of range or unassigned. */
const char *tokenizer_piece(const tokenizer *tok, int32_t id);

/* 1 if id is an added token marked special (skipped by HF's skip_special_tokens), else 0. */
int tokenizer_is_special(const tokenizer *tok, int32_t id);

/* Streaming decoder: feed ids one at a time and get back only whole UTF-8 characters. Bytes of an
 * incomplete character at the end are held back until the next id completes them; bytes that can
 * no longer form a valid character come out as U+FFFD. The concatenation of every push and the
 * final flush equals tokenizer_decode of the same ids. The tokenizer must outlive the stream. */
typedef struct tokdec_stream tokdec_stream;

tokdec_stream *tokdec_stream_new(const tokenizer *tok);
void tokdec_stream_free(tokdec_stream *s);

/* Returns the text completed by id (*len bytes, NUL-terminated, possibly empty), valid until the
 * next call on s; NULL if id has no piece (the stream is then unchanged) or memory runs out. */
const char *tokdec_stream_push(tokdec_stream *s, int32_t id, size_t *len);

/* Returns the held-back bytes as U+FFFD (one per invalid sequence) and resets s for a new text. */
const char *tokdec_stream_flush(tokdec_stream *s, size_t *len);

#endif
