#!/usr/bin/env python3
"""Writes reference token ids for the tokenizer test corpus with Hugging Face `tokenizers`, in the
format tools/make_tokenizer_refs.mjs writes; tests/test_tokenizer.c compares src/tokenizer.c
against the result.

    python3 tools/make_tokenizer_refs.py build/qwen3-tokenizer/tokenizer.json \\
        tests/data/tokenizer/corpus.txt tests/data/tokenizer/invalid_utf8.bin \\
        > tests/data/tokenizer/qwen3_refs.txt

Corpus: one JSON string per line (lines starting with '#' and blank lines are skipped); case N is
the N-th string. Every other argument after the corpus is a binary case named by its file name;
its bytes are decoded as UTF-8 with U+FFFD for invalid sequences (errors="replace") before
encoding, which is what src/tokenizer.c does with invalid input.

Output: one line per case and mode, "CASE<TAB>MODE<TAB>ids separated by spaces". MODE "text":
added tokens marked special are plain text (encode_special_tokens = True); MODE "special": they
are recognised (the default). The post-processor is not applied (add_special_tokens=False).
"""
import hashlib
import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer


def main(argv):
    if len(argv) < 3:
        sys.exit("usage: make_tokenizer_refs.py TOKENIZER_JSON CORPUS [BINARY_CASE...]")
    tok_path, corpus_path, bin_paths = argv[1], argv[2], argv[3:]
    tok = Tokenizer.from_file(tok_path)

    cases = []
    with open(corpus_path, encoding="utf-8", newline="\n") as f:
        for line in f.read().split("\n"):
            if line == "" or line.startswith("#"):
                continue
            cases.append((str(len(cases)), json.loads(line)))
    for p in bin_paths:
        with open(p, "rb") as f:
            cases.append((os.path.basename(p), f.read().decode("utf-8", errors="replace")))

    with open(tok_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    out = [
        f"# Reference token ids: tools/make_tokenizer_refs.py, tokenizers {tokenizers.__version__}",
        f"# tokenizer.json sha256 {sha}",
        "# CASE<TAB>MODE<TAB>IDS (CASE: corpus string index or binary file name; MODE: text|special)",
    ]
    for name, text in cases:
        for mode, encode_special in (("text", True), ("special", False)):
            tok.encode_special_tokens = encode_special
            ids = tok.encode(text, add_special_tokens=False).ids
            out.append(f"{name}\t{mode}\t{' '.join(map(str, ids))}")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv)
