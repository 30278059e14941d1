#!/usr/bin/env python3
"""End-to-end text references for the fixture models: prompt text -> HF tokenizers ids -> transformers
greedy continuation -> decoded text. Run on the GPU machine after tools/make_fixtures.py:

    python3 tools/make_text_refs.py tests/fixtures/tiny-a-f32 [...]

Writes DIR/ref/text.json: {"prompt", "prompt_ids", "greedy_ids", "greedy_text"}; the test runs
`flashmoe run -m DIR -p PROMPT -n 24 --temp 0 --ignore-eos` and compares the text.
"""
import json
import os
import sys

import torch
from tokenizers import Tokenizer
import transformers

PROMPT = "The quick brown fox jumps over the lazy dog. Flash storage, naïve café 東京 😀"


def main():
    for d in sys.argv[1:]:
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        ids = tok.encode(PROMPT, add_special_tokens=False).ids
        arch = json.load(open(os.path.join(d, "config.json")))["architectures"][0]
        cls = getattr(transformers, arch)
        model = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=24, min_new_tokens=24, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
        new = out[0, len(ids):].tolist()
        ref = {"prompt": PROMPT, "prompt_ids": ids, "greedy_ids": new,
               "greedy_text": tok.decode(new, skip_special_tokens=False)}
        with open(os.path.join(d, "ref", "text.json"), "w") as f:
            json.dump(ref, f, ensure_ascii=False, indent=1)
        print(d, len(ids), "prompt ids;", repr(ref["greedy_text"]))


if __name__ == "__main__":
    main()
