#!/usr/bin/env python3
"""Checks build/flashmoe against transformers on Qwen3.5-MoE geometries the tests have never seen.

Run on the GPU machine (torch, transformers 5.17), with a flashmoe binary built on the development machine:

    python3 tools/verify_random_geometries.py BINARY N_CASES [SEED]

Each case draws a random geometry (hidden size, layer pattern, heads, head dims, partial RoPE, linear-attention
heads and dims, experts, top-k, shared expert size, dtype, wrapper class, expert layout, tied embeddings),
randomises every parameter as tools/make_fixtures.py does, saves the checkpoint, and compares
`flashmoe logits` (every position of a 40-token prompt) and `flashmoe run --ids` (24 greedy tokens) with
transformers. Prints one line per case and exits non-zero if any case fails.
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from transformers import (  # noqa: E402
    Qwen3_5MoeConfig,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeTextConfig,
)


def draw_geometry(rng):
    n_layers = rng.randint(2, 6)
    types = [rng.choice(["linear_attention", "full_attention"]) for _ in range(n_layers)]
    types[rng.randrange(n_layers)] = "full_attention"
    types[rng.randrange(n_layers)] = "linear_attention"
    if types.count("full_attention") == 0:
        types[0] = "full_attention"
    head_dim = rng.choice([16, 32, 64, 128])
    prf = rng.choice([0.25, 0.5, 1.0])
    rot_half = int(head_dim * prf) // 2
    sec = [rot_half - 2 * (rot_half // 3), rot_half // 3, rot_half // 3]
    n_kv = rng.choice([1, 2, 4])
    hk = rng.choice([1, 2, 4])
    e = rng.choice([4, 6, 8, 12, 16, 32, 64])
    return dict(
        vocab_size=384, hidden_size=rng.choice([32, 48, 64, 96, 128, 256]), num_hidden_layers=n_layers,
        layer_types=types, num_attention_heads=n_kv * rng.choice([1, 2, 3, 4]), num_key_value_heads=n_kv,
        head_dim=head_dim, linear_num_key_heads=hk, linear_num_value_heads=hk * rng.choice([1, 2, 3, 4]),
        linear_key_head_dim=rng.choice([8, 16, 24, 32, 64]), linear_value_head_dim=rng.choice([8, 16, 20, 32, 64]),
        linear_conv_kernel_dim=4, num_experts=e, num_experts_per_tok=rng.randint(1, min(e, 10)),
        moe_intermediate_size=rng.choice([8, 16, 24, 48, 64]),
        shared_expert_intermediate_size=rng.choice([8, 16, 32, 40]), rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": rng.choice([1e4, 1e6, 1e7]),
                         "partial_rotary_factor": prf, "mrope_section": sec, "mrope_interleaved": True},
        max_position_embeddings=512,
    )


def run_case(binary, outdir, idx, rng):
    cfg = draw_geometry(rng)
    dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
    cls = rng.choice([Qwen3_5MoeForCausalLM, Qwen3_5MoeForConditionalGeneration])
    tie = cls is Qwen3_5MoeForCausalLM and rng.random() < 0.3
    cfg["tie_word_embeddings"] = tie
    fused = rng.random() < 0.5
    name = f"case{idx}"
    d = mf.build(outdir, name, cfg, cls, dtype, 100 + idx)
    if fused:
        mf.split_or_fuse_experts(d, d + "-x")
        shutil.rmtree(os.path.join(d + "-x", "ref"), ignore_errors=True)
        shutil.copytree(os.path.join(d, "ref"), os.path.join(d + "-x", "ref"))
        shutil.rmtree(d)
        os.rename(d + "-x", d)
    import json
    ref = json.load(open(os.path.join(d, "ref", "ref.json")))
    ref_logits = np.fromfile(os.path.join(d, "ref", "logits.f32"), dtype="<f4").reshape(len(ref["prompt_ids"]), -1)
    prompt = ",".join(map(str, ref["prompt_ids"]))
    out = os.path.join(d, "ours.f32")
    r = subprocess.run([binary, "logits", "-m", d, "--tokens", prompt, "-o", out], capture_output=True, text=True)
    if r.returncode:
        return False, f"{name}: logits failed: {r.stderr.strip()}"
    ours = np.fromfile(out, dtype="<f4").reshape(ref_logits.shape)
    rel = float(np.abs(ours - ref_logits).max() / np.abs(ref_logits).max())
    r = subprocess.run([binary, "run", "-m", d, "--prompt-ids", prompt, "-n", str(len(ref["greedy_ids"])),
                        "--temp", "0", "--ids", "--ignore-eos"], capture_output=True, text=True)
    ids = [int(x) for x in r.stdout.split()] if r.returncode == 0 else None
    same = ids == ref["greedy_ids"]
    ok = rel <= 1e-4 and same
    desc = (f"{name}: {cls.__name__.replace('Qwen3_5Moe', '')} {str(dtype)[6:]} {'fused' if fused else 'per-expert'}"
            f"{' tied' if tie else ''} H={cfg['hidden_size']} L={''.join('F' if t[0] == 'f' else 'l' for t in cfg['layer_types'])}"
            f" heads={cfg['num_attention_heads']}/{cfg['num_key_value_heads']}x{cfg['head_dim']}"
            f" rope={cfg['rope_parameters']['partial_rotary_factor']}"
            f" lin={cfg['linear_num_key_heads']}x{cfg['linear_key_head_dim']}/{cfg['linear_num_value_heads']}x{cfg['linear_value_head_dim']}"
            f" E={cfg['num_experts']} K={cfg['num_experts_per_tok']} I={cfg['moe_intermediate_size']}"
            f" Is={cfg['shared_expert_intermediate_size']}: max|diff|/max|ref| {rel:.2e}, greedy ids "
            f"{'identical' if same else 'DIFFER'}")
    return ok, desc


def main():
    binary, n = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 7)
    outdir = tempfile.mkdtemp()
    mf.make_tokenizer(384, os.path.join(outdir, "_tokenizer.json"))
    fails = 0
    skipped = 0
    for i in range(n):
        try:
            ok, desc = run_case(binary, outdir, i, rng)
        except SystemExit as e:  # make_fixtures.build found no seed with decisive routing and greedy choices
            skipped += 1
            print(f"SKIP case{i}: {e}", flush=True)
            continue
        fails += not ok
        print(("PASS " if ok else "FAIL ") + desc, flush=True)
    print(f"{n - fails - skipped} passed, {fails} failed, {skipped} skipped (no decisive seed)")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
