#!/usr/bin/env python3
"""Golden fixtures for batched generation, made with Hugging Face
transformers (eager attention, float32, CPU).

Writes tests/fixtures/gen/ (config.json, generation_config.json,
model.safetensors, reference.safetensors): a small LlamaForCausalLM (GQA)
and, for 16 prompts of lengths 1 to 200, the greedy continuation that
transformers' `model.generate(do_sample=False)` makes for each prompt ALONE
(batch 1, no padding), stopping at EOS (id 2) or after NEW_TOKENS tokens.
The Rust test (tests/generate.rs) decodes all 16 prompts in one batch and
must reproduce every continuation token for token.

The prompts are drawn from ids 3..V (never PAD 0, BOS 1 or EOS 2) after a
BOS; each is redrawn until every greedy step (checked with a plain
full-forward loop, which must agree with generate()) has a top-1/top-2
logit gap of at least GREEDY_MIN_MARGIN, so the committed tokens are robust
to float32 summation order (ours differs from torch's).

Weights: as make_fixtures.py (Linear N(0, 1/in), embedding N(0, 1),
RMSNorm weights 1 + 0.1 N(0, 1)), so logits are ~1 and greedy decoding has
clear winners; the EOS column of lm_head is scaled up (EOS_BOOST) so that a
few of the continuations end with EOS, which exercises the stop.

Usage (from the repository root):

    /work/pyref/venv/bin/python tools/scripts/make_gen_fixtures.py
"""

import json
import math
import os
import platform

import numpy
import safetensors
import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "gen")
SEED = 20240610
SPEC = dict(vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5)
MAX_POS = 256
LENGTHS = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 100, 120, 144, 160, 181, 200]
NEW_TOKENS = 24
BOS, EOS, PAD = 1, 2, 0
# see make_fixtures.py: a smaller gap could flip under float32 reordering
GREEDY_MIN_MARGIN = 1e-3
PROMPT_TRIES = 100
# lm_head row of EOS times this: EOS becomes the argmax now and then
EOS_BOOST = 2.0


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__,
            "numpy": numpy.__version__}


def build_model():
    cfg = LlamaConfig(**SPEC, max_position_embeddings=MAX_POS,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
        model.lm_head.weight[EOS] *= EOS_BOOST
    model.eval()
    return model, gen


def greedy_loop(model, prompt):
    """Full forward each step, argmax of the last logits, stop at EOS.
    Returns the new ids and the smallest top-1/top-2 gap."""
    ids, out, margin = prompt.clone(), [], float("inf")
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            last = model(input_ids=ids[None]).logits[0, -1]
            top2 = torch.topk(last, 2).values
            margin = min(margin, float(top2[0] - top2[1]))
            nxt = int(torch.argmax(last))
            out.append(nxt)
            if nxt == EOS:
                break
            ids = torch.cat([ids, torch.tensor([nxt], dtype=ids.dtype)])
    return out, margin


def greedy_generate(model, prompt):
    """model.generate (KV cache), one prompt, no padding, stops at EOS."""
    gc = transformers.GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, use_cache=True,
                                       eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS)
    with torch.no_grad():
        out = model.generate(input_ids=prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             generation_config=gc)
    return out[0, len(prompt):].tolist()


def main():
    torch.manual_seed(SEED)
    model, gen = build_model()
    os.makedirs(OUT, exist_ok=True)
    tensors, meta = {}, []
    for i, n in enumerate(LENGTHS):
        for attempt in range(PROMPT_TRIES):
            prompt = torch.cat([torch.tensor([BOS]), torch.randint(3, SPEC["vocab_size"], (n - 1,), generator=gen)])
            loop, margin = greedy_loop(model, prompt)
            if margin >= GREEDY_MIN_MARGIN:
                break
        else:
            raise SystemExit(f"prompt {i}: no draw with greedy margin >= {GREEDY_MIN_MARGIN}")
        ids = greedy_generate(model, prompt)
        assert ids == loop, f"prompt {i}: generate() {ids} differs from the plain loop {loop}"
        tensors[f"prompt.{i}"] = prompt.to(torch.int32).contiguous()
        tensors[f"greedy.{i}"] = torch.tensor(ids, dtype=torch.int32)
        meta.append({"index": i, "length": n, "new": len(ids), "eos": ids[-1] == EOS, "margin": margin, "draws": attempt + 1})
        print(f"prompt {i}: length {n}, {len(ids)} new tokens{' (EOS)' if ids[-1] == EOS else ''}, margin {margin:.3e}")
    model.save_pretrained(OUT, safe_serialization=True)
    save_file(tensors, os.path.join(OUT, "reference.safetensors"),
              metadata={"new_tokens": str(NEW_TOKENS), "prompts": json.dumps(meta), "versions": json.dumps(versions()),
                        "seed": str(SEED), "script": "tools/scripts/make_gen_fixtures.py"})
    print(f"wrote {OUT}: {sum(m['eos'] for m in meta)} of {len(meta)} continuations end with EOS; "
          f"min margin {min(m['margin'] for m in meta):.3e}")


if __name__ == "__main__":
    main()
