#!/usr/bin/env python3
"""PyTorch + transformers peer for one reward-model training step, on CPU,
eager mode.

A step is what `train-tool bench rm-step` does: zero_grad; forward of
LlamaForSequenceClassification (num_labels 1) on the 2P sequences of P pairs
(chosen rows first, every sequence T tokens of real ids, so the pooled score
is the last token's); the paper's margin ranking loss
-logsigmoid(r_c - r_r - m).mean() with the small margins of Table 27 cycling
over the pairs (1, 2/3, 1/3, 0); backward; clip_grad_norm_(1.0);
torch.optim.AdamW (lr 1e-5, betas (0.9, 0.95), eps 1e-5, weight decay 0.1 on
matrices, none on RMSNorm weights). float32 throughout, the same batch every
step.

Prints one JSON line: {"step_ms_median": X, "cpu_ms_median": C, "tokens_per_s": Y, ...}
(C: CPU time of the process, every thread, per step: unlike wall time it does
not grow when other jobs hold the cores, but it counts OpenMP's spin-waiting). Run it
in the same command as the Rust bench, same machine, same threads
(tools/bench/rm_step_vs_torch.sh).

Usage: /work/pyref/venv/bin/python tools/bench/torch_rm_step.py \
           --preset ref-small --pairs 8 --seq-len 256 --threads 2 --steps 5 --warmup 1
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

LR = 1e-5
BETAS = (0.9, 0.95)
EPS = 1e-5
WEIGHT_DECAY = 0.1
CLIP = 1.0
SMALL_MARGINS = [1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0]
PAD = 0  # never drawn: ids come from 3..V


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
    ap = argparse.ArgumentParser(description="PyTorch CPU reward-model training-step peer benchmark")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="ref-small", help="trunk shape")
    ap.add_argument("--pairs", type=positive, default=8, help="pairs per step (2x sequences)")
    ap.add_argument("--seq-len", type=positive, default=256, help="tokens per sequence")
    ap.add_argument("--threads", type=positive, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--steps", type=positive, default=5, help="timed steps")
    ap.add_argument("--warmup", type=non_negative, default=1, help="untimed steps first")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="transformers attention implementation")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    p, t = args.pairs, args.seq_len
    cfg = llama_config(args.preset, max_position_embeddings=max(t, 512))
    cfg.num_labels = 1
    cfg.pad_token_id = PAD
    model = transformers.LlamaForSequenceClassification._from_config(cfg, attn_implementation=args.attn, dtype=torch.float32)
    model.train()
    n_params = sum(x.numel() for x in model.parameters())
    groups = [
        {"params": [x for x in model.parameters() if x.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [x for x in model.parameters() if x.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    ids = torch.randint(3, cfg.vocab_size, (2 * p, t))
    margins = torch.tensor([SMALL_MARGINS[i % 4] for i in range(p)])

    def step():
        opt.zero_grad(set_to_none=True)
        scores = model(input_ids=ids).logits[:, 0]  # (2P,) pooled at the last token
        loss = -F.logsigmoid(scores[:p] - scores[p:] - margins).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times, cpu, losses = [], [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    print(json.dumps({
        "step_ms_median": round(med * 1e3, 3),
        "step_ms_all": [round(x * 1e3, 3) for x in times],
        "cpu_ms_median": round(statistics.median(cpu) * 1e3, 3),
        "tokens_per_s": round(2 * p * t / med, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "attn": args.attn,
        "preset": args.preset, "pairs": p, "seq_len": t, "params": n_params,
        "steps": args.steps, "warmup": args.warmup,
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }))


if __name__ == "__main__":
    main()
