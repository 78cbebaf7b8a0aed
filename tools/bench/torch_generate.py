#!/usr/bin/env python3
"""PyTorch + transformers peer for greedy decoding with a KV cache, on CPU.

model.generate(do_sample=False, use_cache=True) of LlamaForCausalLM (random
weights, float32) from a one-token prompt (BOS, as llama2.c's run.c starts),
exactly --new-tokens new tokens (EOS disabled so it never stops early).

Prints one JSON line {"tokens_per_s": X, ...} with X = new tokens / median
wall time of one generate() call (prefill of the 1-token prompt included, as
in llama2.c's own count up to its first-token timer).

Usage: /work/pyref/venv/bin/python tools/bench/torch_generate.py \
           --preset ref-tiny --threads 2 [--new-tokens 256] [--repeats 3] [--attn eager]
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_presets import PRESETS, llama_config  # noqa: E402


def positive(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def main():
    ap = argparse.ArgumentParser(description="PyTorch CPU greedy-decoding peer benchmark")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="ref-tiny", help="model shape")
    ap.add_argument("--threads", type=positive, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--new-tokens", type=positive, default=256, help="tokens to generate")
    ap.add_argument("--repeats", type=positive, default=3, help="timed generate() calls (median)")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="transformers attention implementation")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    n = args.new_tokens
    cfg = llama_config(args.preset, max_position_embeddings=max(n + 1, 512))
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation=args.attn, dtype=torch.float32)
    model.eval()
    # generate() merges the call's config with model.generation_config; clear
    # the model's EOS too, or decoding would stop at the first id 2.
    model.generation_config = transformers.GenerationConfig(eos_token_id=None, pad_token_id=0)
    gc = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                       use_cache=True, eos_token_id=None, pad_token_id=0)
    prompt = torch.tensor([[1]])
    mask = torch.ones_like(prompt)

    def run():
        with torch.inference_mode():
            out = model.generate(input_ids=prompt, attention_mask=mask, generation_config=gc)
        assert out.shape[1] == 1 + n, out.shape
        return out

    run()  # warm-up (allocator, lazy init)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({
        "tokens_per_s": round(n / med, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn": args.attn,
        "preset": args.preset,
        "new_tokens": n,
        "repeats": args.repeats,
        "seconds_median": round(med, 4),
    }))


if __name__ == "__main__":
    main()
