#!/usr/bin/env python3
"""PyTorch + transformers peer for one training step, on CPU, eager mode.

A step is what the Rust training step does: zero_grad; forward of
LlamaForCausalLM on a (B, T) batch; mean cross-entropy against the shifted
targets; backward; clip_grad_norm_(1.0); torch.optim.AdamW step with the
paper's hyper-parameters (lr 3e-4, betas (0.9, 0.95), eps 1e-5, weight decay
0.1 on matrices and none on the RMSNorm weights; foreach left at torch's
default). float32 throughout. The same random batch every step.

Prints one JSON line:
  {"step_ms_median": X, "tokens_per_s": Y, "threads": N, "torch": "...",
   "attn": "sdpa", ...}
with tokens_per_s = B*T / median step time. Run it in the same command as the
Rust bench it is compared with, on the same machine and thread count.

Usage: /work/pyref/venv/bin/python tools/bench/torch_train_step.py \
           --preset ref-tiny --threads 2 --steps 10 --warmup 2 [--attn eager]
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_presets import PRESETS, llama_config  # noqa: E402

LR = 3e-4
BETAS = (0.9, 0.95)
EPS = 1e-5
WEIGHT_DECAY = 0.1
CLIP = 1.0


def positive(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def non_negative(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def main():
    ap = argparse.ArgumentParser(description="PyTorch CPU training-step peer benchmark")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="ref-tiny", help="model and batch shape")
    ap.add_argument("--threads", type=positive, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--steps", type=positive, default=10, help="timed steps")
    ap.add_argument("--warmup", type=non_negative, default=2, help="untimed steps first")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="transformers attention implementation")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    p = PRESETS[args.preset]
    b, t, v = p["B"], p["T"], p["vocab_size"]
    model = transformers.LlamaForCausalLM._from_config(
        llama_config(args.preset), attn_implementation=args.attn, dtype=torch.float32)
    model.train()
    n_params = sum(x.numel() for x in model.parameters())
    groups = [
        {"params": [x for x in model.parameters() if x.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [x for x in model.parameters() if x.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    tokens = torch.randint(0, v, (b, t + 1))
    inputs, targets = tokens[:, :t], tokens[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return loss.item()  # .item() waits for the step to finish

    for _ in range(args.warmup):
        step()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({
        "step_ms_median": round(med * 1e3, 3),
        "tokens_per_s": round(b * t / med, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "attn": args.attn,
        "transformers": transformers.__version__,
        "preset": args.preset, "B": b, "T": t, "params": n_params,
        "steps": args.steps, "warmup": args.warmup,
        "step_ms_min": round(min(times) * 1e3, 3),
        "step_ms_max": round(max(times) * 1e3, 3),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }))


if __name__ == "__main__":
    main()
