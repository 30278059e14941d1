#!/usr/bin/env python3
"""Writes tiny Qwen3.5-MoE checkpoints with every parameter randomised, and transformers' outputs on them.

Run on the GPU machine (it has torch, transformers 5.17, tokenizers, safetensors):

    python3 tools/make_fixtures.py OUTDIR

For each model OUTDIR/<name>/ holds the checkpoint as save_pretrained wrote it (config.json,
generation_config.json, safetensors, tokenizer.json) and a `ref/` folder:
    ref/ref.json     prompt ids, greedy continuation ids, shapes, the margins that make the test decisive
    ref/logits.f32   little-endian float32 [n_prompt x vocab]: logits of every prompt position (no cache)
    ref/hidden.f32   float32 [(layers + 1) x n_prompt x hidden]: hidden states after the embedding and each
                     layer (for locating a divergence; the tests compare logits and ids)

References are computed on the CPU in float32 from the weights as saved (bf16/f16 weights are upcast), with
eager attention, so they are the exact function the C engine must reproduce.

Default initialisation leaves norms at 0, routers at 0 and gates flat, which would hide bugs; here every
tensor is drawn at a scale that keeps activations O(1), routers are scaled up so that top-k selection is
decisive, and a seed is accepted only if the k-th/(k+1)-th router logit gap and the greedy top-1/top-2 gap
are comfortably larger than float32 rounding everywhere.
"""
import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
import transformers
from transformers import (
    Qwen3_5MoeConfig,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeTextConfig,
)

N_PROMPT = 40
N_GEN = 24
ROUTER_GAP_MIN = 2e-3  # logit units; our f32 error on router logits is ~1e-5
GREEDY_GAP_MIN = 2e-3  # relative to max |logit|

QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2026 and we're running models from disk.",
    "Mixture-of-experts models route each token to a few experts; only those weights are read.",
    "def forward(x):\n    return down(silu(gate(x)) * up(x))\n",
    "Hello, world! How are you today? I'm fine, thanks. 12345 + 678 = 13023.",
    "Flash storage is slow compared to DRAM, but large contiguous reads make it fast enough.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Paris is the capital of France. Berlin is the capital of Germany. Tokyo is in Japan.",
    "naïve café résumé — “quotes” and ‘apostrophes’ … 東京 日本語 中文 한국어 😀",
]


def make_tokenizer(vocab_size, path):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(path)
    return tok


def randomise(model, gen):
    """Every parameter drawn at a scale that keeps activations O(1) through all layers."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            def normal(std):
                return torch.randn(shape, generator=gen) * std
            if name.endswith("A_log"):
                v = torch.log(torch.rand(shape, generator=gen) * 7.5 + 0.5)
            elif name.endswith("dt_bias"):
                v = normal(0.5)
            elif "linear_attn.norm" in name:  # gated RMSNorm: plain weight
                v = 1.0 + normal(0.3)
            elif "norm" in name and p.dim() == 1:  # zero-centred RMSNorm: (1 + w)
                v = normal(0.3)
            elif "conv1d" in name:
                v = normal(0.4)
            elif name.endswith("mlp.gate.weight"):  # router: decisive
                v = normal(4.0 / math.sqrt(shape[-1]))
            elif "embed_tokens" in name:
                v = normal(1.0)
            elif "experts.gate_up_proj" in name or "experts.down_proj" in name:
                v = normal(1.0 / math.sqrt(shape[-1]))
            elif p.dim() >= 2:
                v = normal(1.0 / math.sqrt(shape[-1]))
            else:
                v = normal(0.5)
            p.copy_(v.to(p.dtype))


def text_model(model):
    return model.model.language_model if hasattr(model.model, "language_model") else model.model


def check_margins(model, ids, k):
    """Smallest k-th/(k+1)-th router logit gap over all layers and positions."""
    gaps = []
    hooks = []
    for layer in text_model(model).layers:
        def hook(mod, inp, out):
            logits = out[0] if isinstance(out, tuple) else out
            s = torch.sort(logits.float(), dim=-1, descending=True).values
            gaps.append((s[:, k - 1] - s[:, k]).min().item() if k < s.shape[-1] else float("inf"))
        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return min(gaps)


def reference(model, prompt, n_layers):
    with torch.no_grad():
        out = model(input_ids=prompt, output_hidden_states=True, use_cache=False)
        logits = out.logits[0].float()
        hidden = torch.stack([h[0].float() for h in out.hidden_states])  # [(L+1), T, H]
        gen = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=N_GEN,
            min_new_tokens=N_GEN,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            eos_token_id=None,
            pad_token_id=0,
        )
    new_ids = gen.sequences[0, prompt.shape[1]:].tolist()
    greedy_gap = 1e9
    for s in gen.scores:
        s = s[0].float()
        top = torch.topk(s, 2).values
        greedy_gap = min(greedy_gap, ((top[0] - top[1]) / s.abs().max()).item())
    assert hidden.shape[0] == n_layers + 1, hidden.shape
    return logits, hidden, new_ids, greedy_gap


def split_or_fuse_experts(src_dir, dst_dir):
    """Rewrites a single-file checkpoint with the other expert layout (fused <-> per expert)."""
    shutil.copytree(src_dir, dst_dir, ignore=shutil.ignore_patterns("ref"))
    st = load_file(os.path.join(src_dir, "model.safetensors"))
    out = {}
    fused = any(k.endswith("experts.gate_up_proj") for k in st)
    per = {}
    for k, v in st.items():
        if fused and k.endswith("experts.gate_up_proj"):
            pre = k[: -len("gate_up_proj")]
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{pre}{e}.gate_proj.weight"] = v[e, :inter].clone()
                out[f"{pre}{e}.up_proj.weight"] = v[e, inter:].clone()
        elif fused and k.endswith("experts.down_proj"):
            pre = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{pre}{e}.down_proj.weight"] = v[e].clone()
        elif not fused and ".experts." in k:
            pre, rest = k.split(".experts.")
            e, proj = rest.split(".")[0:2]
            per.setdefault(pre, {}).setdefault(int(e), {})[proj] = v
        else:
            out[k] = v
    for pre, experts in per.items():
        n = len(experts)
        out[f"{pre}.experts.gate_up_proj"] = torch.stack(
            [torch.cat([experts[e]["gate_proj"], experts[e]["up_proj"]]) for e in range(n)]
        )
        out[f"{pre}.experts.down_proj"] = torch.stack([experts[e]["down_proj"] for e in range(n)])
    save_file(out, os.path.join(dst_dir, "model.safetensors"), metadata={"format": "pt"})
    return "per-expert" if fused else "fused"


def build(outdir, name, cfg, cls, save_dtype, seed, shard=None):
    tok_path = os.path.join(outdir, "_tokenizer.json")
    vocab = cfg["vocab_size"]
    k = cfg["num_experts_per_tok"]
    d = os.path.join(outdir, name)
    for attempt in range(200):
        s = seed + 1000 * attempt
        torch.manual_seed(s)
        if cls is Qwen3_5MoeForConditionalGeneration:
            vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=cfg["hidden_size"],
                          patch_size=4, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16)
            config = Qwen3_5MoeConfig(text_config=dict(cfg), vision_config=vision, tie_word_embeddings=False)
        else:
            config = Qwen3_5MoeTextConfig(**cfg)
        config._attn_implementation = "eager"
        model = cls(config).float().eval()
        randomise(model, torch.Generator().manual_seed(s))
        # round the weights (not the rotary buffers) to the dtype they will be saved in; compute in float32
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(save_dtype).float())
        g = torch.Generator().manual_seed(s + 1)
        prompt = torch.randint(0, vocab, (1, N_PROMPT), generator=g)
        router_gap = check_margins(model, prompt, k)
        logits, hidden, new_ids, greedy_gap = reference(model, prompt, cfg["num_hidden_layers"])
        full = torch.cat([prompt, torch.tensor([new_ids])], dim=1)
        router_gap = min(router_gap, check_margins(model, full, k))
        ok = router_gap > ROUTER_GAP_MIN and greedy_gap > GREEDY_GAP_MIN and torch.isfinite(logits).all()
        print(f"{name}: seed {s}: router gap {router_gap:.4g}, greedy gap {greedy_gap:.4g}, "
              f"max|logit| {logits.abs().max():.3g}, distinct gen ids {len(set(new_ids))}", flush=True)
        if ok and len(set(new_ids)) > 3:
            break
    else:
        raise SystemExit(f"{name}: no decisive seed found")

    if os.path.exists(d):
        shutil.rmtree(d)
    saved = cls(config).eval()
    saved.load_state_dict(model.state_dict())
    saved = saved.to(save_dtype)
    saved.save_pretrained(d, max_shard_size=shard) if shard else saved.save_pretrained(d)
    shutil.copy(tok_path, os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": None, "eos_token_id": [vocab_special(tok_path, "<|im_end|>"),
                                                          vocab_special(tok_path, "<|endoftext|>")],
                   "do_sample": False}, f, indent=1)

    # the checkpoint as saved must reproduce the reference when transformers reloads it
    reloaded = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        again = reloaded(input_ids=prompt, use_cache=False).logits[0].float()
    diff = (again - logits).abs().max().item()
    if diff != 0.0:
        mine = dict(model.named_parameters())
        for pn, pv in reloaded.named_parameters():
            if pn not in mine:
                print("  not in original:", pn)
            elif not torch.equal(pv.float(), mine[pn].float()):
                print("  differs:", pn, (pv.float() - mine[pn].float()).abs().max().item())
        for pn in mine:
            if pn not in dict(reloaded.named_parameters()):
                print("  not reloaded:", pn)
    assert diff == 0.0, f"{name}: reloaded checkpoint differs by {diff}"

    r = os.path.join(d, "ref")
    os.makedirs(r)
    logits.numpy().astype("<f4").tofile(os.path.join(r, "logits.f32"))
    hidden.numpy().astype("<f4").tofile(os.path.join(r, "hidden.f32"))
    with open(os.path.join(r, "ref.json"), "w") as f:
        json.dump({
            "model": name, "class": cls.__name__, "saved_dtype": str(save_dtype).replace("torch.", ""),
            "transformers": transformers.__version__, "torch": torch.__version__, "seed": s,
            "prompt_ids": prompt[0].tolist(), "greedy_ids": new_ids,
            "vocab_size": vocab, "hidden_size": cfg["hidden_size"], "num_layers": cfg["num_hidden_layers"],
            "max_abs_logit": logits.abs().max().item(),
            "router_gap": router_gap, "greedy_gap": greedy_gap,
        }, f, indent=1)
    return d


def vocab_special(tok_path, s):
    with open(tok_path) as f:
        t = json.load(f)
    for a in t["added_tokens"]:
        if a["content"] == s:
            return a["id"]
    raise KeyError(s)


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(8)
    vocab = 384
    tok = make_tokenizer(vocab, os.path.join(outdir, "_tokenizer.json"))
    assert tok.get_vocab_size() <= vocab, tok.get_vocab_size()

    rope = lambda theta, prf, sec: {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": prf,
                                    "mrope_section": sec, "mrope_interleaved": True}
    # A: text-only class, f32, 4 layers (every 4th full attention), key dim != value dim, 2 value heads per key head
    a = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
             linear_value_head_dim=24, linear_conv_kernel_dim=4, num_experts=8, num_experts_per_tok=3,
             moe_intermediate_size=32, shared_expert_intermediate_size=48, rms_norm_eps=1e-6,
             rope_parameters=rope(10000.0, 0.25, [2, 1, 1]), max_position_embeddings=512)
    # B: multimodal wrapper (released layout), bf16, explicit layer_types, 3 value heads per key head, top-5 of 10
    b = dict(vocab_size=vocab, hidden_size=96, num_hidden_layers=5, num_attention_heads=6, num_key_value_heads=2,
             head_dim=16, linear_num_key_heads=2, linear_num_value_heads=6, linear_key_head_dim=32,
             linear_value_head_dim=16, linear_conv_kernel_dim=4, num_experts=10, num_experts_per_tok=5,
             moe_intermediate_size=24, shared_expert_intermediate_size=40, rms_norm_eps=1e-6,
             layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention",
                          "full_attention"],
             rope_parameters=rope(1000000.0, 0.5, [2, 1, 1]), max_position_embeddings=512)
    # C: f16, sharded with an index, GQA 4:1, top-3 of 6
    c = dict(vocab_size=vocab, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
             head_dim=24, linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=12,
             linear_value_head_dim=20, linear_conv_kernel_dim=4, num_experts=6, num_experts_per_tok=3,
             moe_intermediate_size=20, shared_expert_intermediate_size=16, rms_norm_eps=1e-6,
             rope_parameters=rope(10000.0, 0.25, [2, 1, 0]), max_position_embeddings=512)

    da = build(outdir, "tiny-a-f32", a, Qwen3_5MoeForCausalLM, torch.float32, 1)
    build(outdir, "tiny-b-bf16-vl", b, Qwen3_5MoeForConditionalGeneration, torch.bfloat16, 2)
    build(outdir, "tiny-c-f16-sharded", c, Qwen3_5MoeForCausalLM, torch.float16, 3, shard="200KB")
    layout = split_or_fuse_experts(da, os.path.join(outdir, "tiny-a-f32-other-experts"))
    shutil.copytree(os.path.join(da, "ref"), os.path.join(outdir, "tiny-a-f32-other-experts", "ref"))
    print("tiny-a-f32-other-experts: experts rewritten as", layout)
    # the layout save_pretrained chose, for the record
    keys = sorted(load_file(os.path.join(da, "model.safetensors")).keys())
    print("\n".join(keys[:60]))


if __name__ == "__main__":
    main()
